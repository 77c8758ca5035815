//! `proofmesh verify RECEIPT.json`: checks a job receipt (`GET /v1/receipts/{job}`) step by
//! step without trusting the node that gave it: the client's and executor's signatures, a TEE
//! proof against the genesis roots and chip binding (`--genesis`), the output by bit-exact
//! re-execution (`--model-dir`), the record's Merkle path to its block's
//! records root, the block hash from the header, the commit certificate against the validator
//! set (checked against the genesis set with `--genesis`), and with `--evm-rpc` that the
//! settlement contract's `verifyInference` accepts the record under its anchor. Prints JSON;
//! exits 1 naming the first step that failed.

use std::path::PathBuf;
use std::time::Duration;

use alloy::sol_types::SolCall;
use anyhow::{Context, Result, bail};
use chain::block::{BlockHeader, CommitCertificate, validator_set_hash};
use chain::signing::Domain;
use chain::{Address, B256, InferenceRecord};
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest receipt read.
const MAX_RECEIPT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// A receipt from `GET /v1/receipts/{job}`.
    receipt: PathBuf,
    /// Re-execute the job with the model in DIR and compare the output hash bit for bit.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// The network's genesis: the receipt's chain id and genesis hash must be its, and a block
    /// decided by the genesis set is checked against it.
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// An EVM JSON-RPC URL: check the anchor with the settlement contract.
    #[arg(long, requires = "settlement")]
    evm_rpc: Option<String>,
    /// The settlement contract's address.
    #[arg(long)]
    settlement: Option<Address>,
}

#[derive(Deserialize)]
struct Receipt {
    job_id: B256,
    chain_id: u64,
    genesis_hash: B256,
    height: u64,
    block_hash: B256,
    leaf: B256,
    proof: Vec<B256>,
    signed_record: InferenceRecord,
    header: BlockHeader,
    commit: Option<CommitCertificate>,
    validators: Option<Vec<(Address, u64)>>,
    anchor: Option<Anchor>,
    /// Where the network's x402 payments settle (its genesis `evm`): a job paid by x402 is
    /// authorized by the payment's signature.
    #[serde(default)]
    evm_payments: Option<chain::signing::EvmPayments>,
}

#[derive(Deserialize)]
struct Anchor {
    height: u64,
    proof: Vec<B256>,
}

/// The checks, in order; the first that fails ends the run.
struct Steps(Vec<Value>);

impl Steps {
    fn pass(&mut self, step: &str, detail: impl Into<String>) {
        self.0
            .push(json!({"step": step, "ok": true, "detail": detail.into()}));
    }

    fn fail(&mut self, step: &str, reason: impl Into<String>) -> Result<()> {
        let reason = reason.into();
        self.0
            .push(json!({"step": step, "ok": false, "detail": reason}));
        println!(
            "{}",
            json!({"ok": false, "failed": step, "reason": reason, "steps": self.0})
        );
        bail!("verification failed at {step}: {reason}")
    }
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    use std::io::Read;
    let file = std::fs::File::open(&a.receipt)
        .with_context(|| format!("opening {}", a.receipt.display()))?;
    let mut text = Vec::new();
    file.take(MAX_RECEIPT_BYTES + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_RECEIPT_BYTES {
        bail!(
            "{} is larger than {MAX_RECEIPT_BYTES} bytes",
            a.receipt.display()
        );
    }
    let r: Receipt = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a receipt", a.receipt.display()))?;
    let mut domain = Domain {
        chain_id: r.chain_id,
        salt: r.genesis_hash,
        payments: r.evm_payments,
    };
    let mut steps = Steps(Vec::new());

    let genesis = match &a.genesis {
        Some(path) => {
            let g = chain::Genesis::load(path).context("loading the genesis")?;
            // The genesis, checked by its hash, says where payments settle; not the receipt.
            domain.payments = g.evm;
            if g.domain() != domain {
                return steps.fail(
                    "genesis",
                    format!(
                        "the receipt is for chain {} / genesis {}, the genesis file for {} / {}",
                        r.chain_id,
                        r.genesis_hash,
                        g.chain_id,
                        g.hash()
                    ),
                );
            }
            steps.pass(
                "genesis",
                format!("chain {} genesis {}", r.chain_id, r.genesis_hash),
            );
            Some(g)
        }
        None => None,
    };

    let record = &r.signed_record;
    match record.verify_signatures(&domain) {
        Ok(id) if id.0 == r.job_id => steps.pass(
            "record_signatures",
            format!(
                "client {} and executor {}",
                record.job.request.client, record.executor
            ),
        ),
        Ok(id) => {
            return steps.fail(
                "record_signatures",
                format!("the record is job {id}, not {}", r.job_id),
            );
        }
        Err(e) => return steps.fail("record_signatures", e.to_string()),
    }

    if let (chain::Proof::Tee(proof), Some(g)) = (&record.proof, &genesis) {
        let Some(tee) = &g.tee else {
            return steps.fail("tee_proof", "the genesis names no TEE roots");
        };
        let verifier = tee.verifier().context("the genesis TEE section")?;
        let verified = match verifier.verify_leaf(
            &proof.report,
            &proof.vcek,
            &proof.path,
            &record.leaf(&domain),
            &record.executor,
        ) {
            Ok(v) => v,
            Err(e) => return steps.fail("tee_proof", e.to_string()),
        };
        let attested = chain::record::chip_binding(&verified.chip_id);
        let bound = g
            .inference_nodes
            .iter()
            .find(|n| n.address == record.executor)
            .and_then(|n| n.tee_chip);
        let binding = match bound {
            Some(b) if b != attested => {
                return steps.fail(
                    "tee_proof",
                    format!("attested by chip {attested}, the executor bound chip {b} at genesis"),
                );
            }
            Some(_) => "the chip the executor bound at genesis",
            None => "a chip the genesis does not bind (registered later: not checkable offline)",
        };
        steps.pass(
            "tee_proof",
            format!(
                "SEV-SNP report verified to {} (measurement {}), by {binding}",
                verified.roots,
                hex::encode(verified.measurement)
            ),
        );
    }

    if let Some(dir) = &a.model_dir {
        let (_, model_id) =
            kernels::manifest(dir).with_context(|| format!("reading {}", dir.display()))?;
        if model_id != record.job.request.model_id {
            return steps.fail(
                "reexecution",
                format!(
                    "{} holds model {model_id}, the job ran {}",
                    dir.display(),
                    record.job.request.model_id
                ),
            );
        }
        let model =
            kernels::Model::load(dir).with_context(|| format!("loading {}", dir.display()))?;
        let backend = kernels::select("cpu")?;
        let output = model
            .run(backend.as_ref(), record.input.as_bytes())
            .context("re-executing the job")?;
        let hash = B256::from(output.hash());
        if hash != record.output_hash {
            return steps.fail(
                "reexecution",
                format!(
                    "re-execution gives {hash}, the record says {}",
                    record.output_hash
                ),
            );
        }
        steps.pass("reexecution", format!("output {hash}, bit for bit"));
    }

    let leaf = record.leaf(&domain);
    if leaf != r.leaf || !chain::merkle::verify(&r.proof, &r.header.records_root, &leaf) {
        return steps.fail(
            "records_merkle_path",
            format!(
                "leaf {leaf} is not under records root {}",
                r.header.records_root
            ),
        );
    }
    steps.pass(
        "records_merkle_path",
        format!("leaf {leaf} under {}", r.header.records_root),
    );

    let hash = r.header.hash();
    if hash != r.block_hash || r.header.height != r.height {
        return steps.fail(
            "block_hash",
            format!(
                "the header hashes to {hash} at height {}, the receipt says {} at {}",
                r.header.height, r.block_hash, r.height
            ),
        );
    }
    steps.pass("block_hash", format!("block {} = {hash}", r.height));

    let (Some(commit), Some(validators)) = (&r.commit, &r.validators) else {
        return steps.fail(
            "commit_certificate",
            "the receipt has no commit certificate or validator set",
        );
    };
    if commit.block_hash != hash || commit.height != r.height {
        return steps.fail("commit_certificate", "the certificate is for another block");
    }
    if let Err(e) = commit.verify(validators, &domain) {
        return steps.fail("commit_certificate", e.to_string());
    }
    let set_note = match &genesis {
        Some(g) => {
            let genesis_set = chain::Ledger::from_genesis(g).next_validators().to_vec();
            if validator_set_hash(validators) == validator_set_hash(&genesis_set) {
                "the genesis set"
            } else {
                "a set the node reports (it changed since genesis; --evm-rpc checks it through the anchor)"
            }
        }
        None => "the set the node reports (give --genesis or --evm-rpc to check it)",
    };
    steps.pass(
        "commit_certificate",
        format!("{} precommits of {set_note}", commit.votes.len()),
    );

    if let (Some(url), Some(settlement)) = (&a.evm_rpc, a.settlement) {
        let Some(anchor) = &r.anchor else {
            return steps.fail("anchor", "the receipt names no anchor yet");
        };
        let call = evm::contracts::ISettlement::verifyInferenceCall {
            leaf,
            proof: anchor.proof.clone(),
            height: anchor.height,
        };
        let rpc = evm::Rpc::new(url, Duration::from_secs(10));
        let out = rpc
            .eth_call(settlement, call.abi_encode().into(), "latest")
            .context("calling verifyInference")?;
        let ok = evm::contracts::ISettlement::verifyInferenceCall::abi_decode_returns(&out)
            .context("decoding verifyInference")?;
        if !ok {
            return steps.fail(
                "anchor",
                format!(
                    "verifyInference is false under the anchor at height {}",
                    anchor.height
                ),
            );
        }
        steps.pass(
            "anchor",
            format!(
                "verifyInference true under the anchor at height {}",
                anchor.height
            ),
        );
    }

    println!(
        "{}",
        json!({"ok": true, "job_id": r.job_id, "steps": steps.0})
    );
    Ok(())
}
