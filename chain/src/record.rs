//! Job requests and inference records, and the checks a record passes before a node keeps it.

use std::sync::Arc;

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::signing::{self, Domain, PrivateKeySigner, typed};
use crate::types::{JobId, ModelId, Sig, amount};

/// Largest job input (bytes) a record may carry.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// What a client signs to buy one inference (EIP-712 struct `JobRequest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    pub client: Address,
    pub model_id: ModelId,
    /// keccak256 of the input bytes.
    pub input_hash: B256,
    /// The most the client pays, in OPG base units; the model's price is charged.
    #[serde(with = "amount")]
    pub max_fee: u128,
    /// Any value not used before by this client (unordered nonces, as EIP-3009), so jobs sent
    /// concurrently through different gateways do not race.
    pub nonce: u64,
    /// Unix seconds after which the job may not be included.
    pub expiry: u64,
}

impl JobRequest {
    fn typed(&self) -> typed::JobRequest {
        typed::JobRequest {
            client: self.client,
            modelId: B256::from(self.model_id.0),
            inputHash: self.input_hash,
            maxFee: self.max_fee,
            nonce: self.nonce,
            expiry: self.expiry,
        }
    }

    /// The job id: the EIP-712 signing hash.
    pub fn id(&self, domain: &Domain) -> JobId {
        JobId(signing::signing_hash(&self.typed(), domain))
    }

    /// Signs the request with the client's key.
    pub fn sign(self, key: &PrivateKeySigner, domain: &Domain) -> Result<SignedJobRequest> {
        let signature = signing::sign(key, &self.id(domain).0)?;
        Ok(SignedJobRequest {
            request: self,
            signature,
            payment: None,
            grant: None,
        })
    }

    /// The API-key form of [`JobRequest::sign`]: signed by the grant's delegate key, on the
    /// account of the grant's client.
    pub fn sign_granted(
        self,
        delegate: &PrivateKeySigner,
        grant: SignedGrant,
        domain: &Domain,
    ) -> Result<SignedJobRequest> {
        let signature = signing::sign(delegate, &self.id(domain).0)?;
        Ok(SignedJobRequest {
            request: self,
            signature,
            payment: None,
            grant: Some(grant),
        })
    }

    /// The x402 form of [`JobRequest::sign`]: the client's EIP-3009 authorization of `value`
    /// OPG to the bridge, valid in (`valid_after`, `valid_before`), nonce = the job id.
    pub fn sign_payment(
        self,
        key: &PrivateKeySigner,
        domain: &Domain,
        payment: Payment,
    ) -> Result<SignedJobRequest> {
        let payments = domain.payments.ok_or_else(|| Error::Invalid {
            field: "payment",
            reason: "this network takes no x402 payments".into(),
        })?;
        let digest = payments.authorization_digest(
            self.client,
            payment.value,
            payment.valid_after,
            payment.valid_before,
            self.id(domain).0,
        );
        Ok(SignedJobRequest {
            signature: signing::sign(key, &digest)?,
            request: self,
            payment: Some(payment),
            grant: None,
        })
    }
}

/// The terms of an x402 payment that authorizes a job (see [`signing::EvmPayments`]): the
/// rest of the signed EIP-3009 authorization is the job's client (`from`), the bridge (`to`)
/// and the job id (`nonce`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    #[serde(with = "amount")]
    pub value: u128,
    pub valid_after: u64,
    pub valid_before: u64,
}

/// Most models an API grant may name.
pub const MAX_GRANT_MODELS: usize = 16;

/// An API key's grant (EIP-712 struct `ApiGrant`): `client` lets whoever holds the key of
/// `delegate` buy jobs on its account, up to `cap` OPG base units in all, until `expiry` (unix
/// seconds), for `models` (any model when empty). The ledger counts what each grant spent and
/// refuses a job past its cap or expiry.
///
/// Records are public, so the grant a record carries is public: what makes it a key is the
/// delegate's private key, which only the key's holder has (see `proofmesh key create`). A
/// grant alone, read from a block, buys nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiGrant {
    pub client: Address,
    pub delegate: Address,
    #[serde(with = "amount")]
    pub cap: u128,
    pub expiry: u64,
    #[serde(default)]
    pub models: Vec<ModelId>,
}

impl ApiGrant {
    fn typed(&self) -> typed::ApiGrant {
        typed::ApiGrant {
            client: self.client,
            delegate: self.delegate,
            cap: self.cap,
            expiry: self.expiry,
            models: self.models.iter().map(|m| B256::from(m.0)).collect(),
        }
    }

    /// The grant id: the EIP-712 signing hash, the key of its spending in the ledger.
    pub fn id(&self, domain: &Domain) -> B256 {
        signing::signing_hash(&self.typed(), domain)
    }

    /// Signs the grant with the client's key.
    pub fn sign(self, key: &PrivateKeySigner, domain: &Domain) -> Result<SignedGrant> {
        let signature = signing::sign(key, &self.id(domain))?;
        Ok(SignedGrant {
            grant: self,
            signature,
        })
    }

    /// Whether the grant lets its holder buy jobs of `model`.
    pub fn allows(&self, model: &ModelId) -> bool {
        self.models.is_empty() || self.models.contains(model)
    }
}

/// A grant with its client's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedGrant {
    pub grant: ApiGrant,
    pub signature: Sig,
}

impl SignedGrant {
    /// Checks the model list's size and the client's signature; returns the grant id.
    pub fn verify(&self, domain: &Domain) -> Result<B256> {
        if self.grant.models.len() > MAX_GRANT_MODELS {
            return Err(Error::Invalid {
                field: "grant.models",
                reason: format!(
                    "{} models, at most {MAX_GRANT_MODELS}",
                    self.grant.models.len()
                ),
            });
        }
        let id = self.grant.id(domain);
        signing::verify(&self.signature, &id, self.grant.client)?;
        Ok(id)
    }
}

/// A job request with the client's authorization: its EIP-712 signature of the request; or,
/// with `payment`, its signature of an x402 payment bound to the job; or, with `grant`, its
/// signed API grant and the grant delegate's signature of the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedJobRequest {
    pub request: JobRequest,
    pub signature: Sig,
    #[serde(default)]
    pub payment: Option<Payment>,
    #[serde(default)]
    pub grant: Option<SignedGrant>,
}

impl SignedJobRequest {
    /// Checks the client's authorization and returns the job id.
    pub fn verify(&self, domain: &Domain) -> Result<JobId> {
        let id = self.request.id(domain);
        if let Some(g) = &self.grant {
            if self.payment.is_some() {
                return Err(Error::Invalid {
                    field: "payment",
                    reason: "a job is paid through a grant or a payment, not both".into(),
                });
            }
            g.verify(domain)?;
            if g.grant.client != self.request.client {
                return Err(Error::Invalid {
                    field: "grant.client",
                    reason: format!(
                        "the grant is {}'s, the job is {}'s",
                        g.grant.client, self.request.client
                    ),
                });
            }
            if !g.grant.allows(&self.request.model_id) {
                return Err(Error::Invalid {
                    field: "grant.models",
                    reason: format!("the grant does not cover model {}", self.request.model_id),
                });
            }
            signing::verify(&self.signature, &id.0, g.grant.delegate)?;
            return Ok(id);
        }
        let digest = match &self.payment {
            None => id.0,
            Some(p) => {
                let payments = domain.payments.ok_or_else(|| Error::Invalid {
                    field: "payment",
                    reason: "this network takes no x402 payments".into(),
                })?;
                if p.value < self.request.max_fee {
                    return Err(Error::Invalid {
                        field: "payment",
                        reason: format!(
                            "the payment of {} is less than the job's max_fee {}",
                            p.value, self.request.max_fee
                        ),
                    });
                }
                payments.authorization_digest(
                    self.request.client,
                    p.value,
                    p.valid_after,
                    p.valid_before,
                    id.0,
                )
            }
        };
        signing::verify(&self.signature, &digest, self.request.client)?;
        Ok(id)
    }
}

/// How a record proves its output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proof {
    /// Output hash commitment only; validators re-execute (deterministic kernels) and compare.
    Reexec,
    /// An SEV-SNP attestation report over the batch the record was run in.
    Tee(TeeProof),
}

/// A batched TEE proof: one report proves a batch of records. Its `report_data` is the Merkle
/// root of the batch's record leaves ([`InferenceRecord::leaf`]) and the executor's address
/// ([`crate::attestation::report_data`]); `path` leads from this record's leaf to that root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeeProof {
    /// The raw SNP attestation report (0x4A0 bytes).
    #[serde(with = "crate::types::bytes_hex")]
    pub report: Vec<u8>,
    /// The VCEK certificate (DER) of the chip that signed it.
    #[serde(with = "crate::types::bytes_hex")]
    pub vcek: Vec<u8>,
    /// Merkle siblings from the record's leaf to the batch root.
    pub path: Vec<B256>,
}

/// The Merkle leaf of a record: `keccak(job_id ‖ model_id ‖ input_hash ‖ output_hash ‖
/// units (u64 BE) ‖ executor)`. Known before the record is signed, so a TEE can prove it
/// first.
pub fn leaf(
    request: &JobRequest,
    (output_hash, units): (&B256, u64),
    executor: &Address,
    domain: &Domain,
) -> B256 {
    let mut buf = Vec::with_capacity(32 * 4 + 8 + 20);
    buf.extend_from_slice(request.id(domain).0.as_slice());
    buf.extend_from_slice(&request.model_id.0);
    buf.extend_from_slice(request.input_hash.as_slice());
    buf.extend_from_slice(output_hash.as_slice());
    buf.extend_from_slice(&units.to_be_bytes());
    buf.extend_from_slice(executor.as_slice());
    keccak256(&buf)
}

/// A proven inference: the signed request, the input, the output commitment and the executor's
/// signature over the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceRecord {
    pub job: SignedJobRequest,
    /// The job input (UTF-8, usually JSON), needed by validators to re-execute.
    pub input: String,
    pub output_hash: B256,
    /// What the job is priced by, as the executor counted it: a generation's prompt plus
    /// completion tokens, other models' input bytes. Signed with the output and re-counted by
    /// validators that re-execute.
    pub units: u64,
    pub executor: Address,
    pub proof: Proof,
    /// The executor's signature over the EIP-712 `InferenceResult`.
    pub signature: Sig,
}

impl InferenceRecord {
    fn result(&self, domain: &Domain) -> typed::InferenceResult {
        typed::InferenceResult {
            jobId: self.job.request.id(domain).0,
            modelId: B256::from(self.job.request.model_id.0),
            inputHash: self.job.request.input_hash,
            outputHash: self.output_hash,
            units: self.units,
            executor: self.executor,
        }
    }

    /// Builds and signs a record on the inference node.
    pub fn create(
        job: SignedJobRequest,
        input: String,
        (output_hash, units): (B256, u64),
        proof: Proof,
        key: &PrivateKeySigner,
        domain: &Domain,
    ) -> Result<Self> {
        let mut record = InferenceRecord {
            job,
            input,
            output_hash,
            units,
            executor: key.address(),
            proof,
            signature: Sig([0; 65]),
        };
        record.signature =
            signing::sign(key, &signing::signing_hash(&record.result(domain), domain))?;
        Ok(record)
    }

    pub fn job_id(&self, domain: &Domain) -> JobId {
        self.job.request.id(domain)
    }

    /// The Merkle leaf of this record (see [`leaf`]).
    pub fn leaf(&self, domain: &Domain) -> B256 {
        leaf(
            &self.job.request,
            (&self.output_hash, self.units),
            &self.executor,
            domain,
        )
    }

    /// Stateless checks: input size and hash, units within the input's bound
    /// ([`kernels::units_bound`]), the client's and the executor's signatures. Returns the job id.
    pub fn verify_signatures(&self, domain: &Domain) -> Result<JobId> {
        if self.input.len() > MAX_INPUT_BYTES {
            return Err(Error::TooLarge {
                size: self.input.len(),
                limit: MAX_INPUT_BYTES,
            });
        }
        if keccak256(self.input.as_bytes()) != self.job.request.input_hash {
            return Err(Error::Invalid {
                field: "input",
                reason: "keccak256(input) differs from the request's input_hash".into(),
            });
        }
        let bound = kernels::units_bound(self.input.as_bytes());
        if self.units > bound {
            return Err(Error::Invalid {
                field: "units",
                reason: format!(
                    "{} units; a job with this input takes at most {bound}",
                    self.units
                ),
            });
        }
        let id = self.job.verify(domain)?;
        let digest = signing::signing_hash(&self.result(domain), domain);
        signing::verify(&self.signature, &digest, self.executor)?;
        Ok(id)
    }
}

/// The chip binding of an SEV-SNP chip: keccak of its 64-byte CHIP_ID (stable across the
/// firmware updates that re-issue its VCEK).
pub fn chip_binding(chip_id: &[u8; 64]) -> B256 {
    keccak256(chip_id)
}

/// Checks the proof a record's model requires (its [`crate::VerificationMode`]): for `tee` and
/// `tee+reexec`, that a report verified by `tee` proves this record's leaf and executor, from
/// the chip the executor bound at registration (`bound_chip`, see [`chip_binding`]).
/// Re-execution, the other half of `reexec` modes, needs the model and is the caller's.
pub fn check_tee_proof(
    record: &InferenceRecord,
    mode: crate::VerificationMode,
    tee: Option<&crate::attestation::TeeVerifier>,
    bound_chip: Option<B256>,
    domain: &Domain,
) -> std::result::Result<(), crate::attestation::AttestationError> {
    use crate::attestation::AttestationError;
    if !mode.needs_tee() {
        return Ok(());
    }
    let Proof::Tee(proof) = &record.proof else {
        return Err(AttestationError::MissingProof);
    };
    let Some(tee) = tee else {
        return Err(AttestationError::BadRoots(
            "the genesis names no TEE roots for a model that requires attestation".into(),
        ));
    };
    let verified = tee.verify_leaf(
        &proof.report,
        &proof.vcek,
        &proof.path,
        &record.leaf(domain),
        &record.executor,
    )?;
    let attested = chip_binding(&verified.chip_id);
    if bound_chip != Some(attested) {
        return Err(AttestationError::WrongChip {
            bound: bound_chip.map_or_else(|| "no chip".to_string(), |b| b.to_string()),
            attested: attested.to_string(),
        });
    }
    Ok(())
}

/// Why a record fails [`Admission::check`].
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("{0}")]
    Chain(#[from] Error),
    #[error("invalid TEE proof: {0}")]
    Attestation(#[from] crate::attestation::AttestationError),
    /// The executor or the model may not serve jobs now (jailed, unbonded, deactivated).
    #[error("{0}")]
    Refused(String),
}

/// What admission needs of the chain's state: the registries and the bonded stake of each
/// registered inference node, at one height.
#[derive(Clone, Debug, Default)]
pub struct Registrations {
    pub height: crate::types::Height,
    pub registry: Arc<crate::state::Registry>,
    pub node_bonded: std::collections::BTreeMap<Address, u128>,
}

impl Registrations {
    pub fn of(ledger: &crate::state::Ledger) -> Registrations {
        let registry = ledger.registry().clone();
        let node_bonded = registry
            .nodes
            .keys()
            .map(|a| (*a, ledger.account(a).bonded))
            .collect();
        Registrations {
            height: ledger.height,
            registry,
            node_bonded,
        }
    }

    /// Why `executor` may not serve or settle a job of `model`, or `None`.
    pub fn refuse_executor(&self, executor: &Address, model: &ModelId) -> Option<String> {
        let bonded = self.node_bonded.get(executor).copied().unwrap_or(0);
        self.registry.refuse_executor(executor, model, bonded)
    }
}

/// The rules every node applies to a record before it keeps, relays or proposes it: the ones
/// that need no model. One per node, shared by the actors that admit records; the node's
/// settlement keeps its [`Registrations`] at the tip ([`Admission::update`]).
#[derive(Clone)]
pub struct Admission {
    genesis: Arc<crate::Genesis>,
    domain: Domain,
    /// The TEE verifier, and the measurement allowlist it was built for: governance changes
    /// the allowlist, and [`Admission::update`] builds it again.
    tee: Arc<std::sync::RwLock<TeeState>>,
    live: Arc<std::sync::RwLock<Arc<Registrations>>>,
}

#[derive(Default)]
struct TeeState {
    verifier: Option<Arc<crate::attestation::TeeVerifier>>,
    measurements: std::collections::BTreeSet<String>,
}

impl Admission {
    /// `tee` verifies the proofs of `tee` models (`None`: such records are refused). The
    /// registrations start as the genesis has them.
    pub fn new(
        genesis: Arc<crate::Genesis>,
        tee: Option<Arc<crate::attestation::TeeVerifier>>,
    ) -> Self {
        let live = Registrations::of(&crate::state::Ledger::from_genesis(&genesis));
        let tee = TeeState {
            verifier: tee,
            measurements: live.registry.measurements.clone(),
        };
        Admission {
            domain: genesis.domain(),
            genesis,
            tee: Arc::new(std::sync::RwLock::new(tee)),
            live: Arc::new(std::sync::RwLock::new(Arc::new(live))),
        }
    }

    pub fn genesis(&self) -> &Arc<crate::Genesis> {
        &self.genesis
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The registrations at the tip, as the settlement last published them.
    pub fn registrations(&self) -> Arc<Registrations> {
        match self.live.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Publishes the registrations of a new tip (every clone of this admission sees them).
    pub fn update(&self, r: Registrations) {
        self.follow_allowlist(&r.registry.measurements);
        let r = Arc::new(r);
        match self.live.write() {
            Ok(mut g) => *g = r,
            Err(poisoned) => *poisoned.into_inner() = r,
        }
    }

    fn tee_verifier(&self) -> Option<Arc<crate::attestation::TeeVerifier>> {
        match self.tee.read() {
            Ok(t) => t.verifier.clone(),
            Err(poisoned) => poisoned.into_inner().verifier.clone(),
        }
    }

    /// Builds the TEE verifier again when the chain's allowlist differs from the one it was
    /// built for (a governance proposal added or removed a measurement): the genesis roots and
    /// TCB with the allowlist now.
    fn follow_allowlist(&self, measurements: &std::collections::BTreeSet<String>) {
        let Some(params) = &self.genesis.tee else {
            return;
        };
        // Every commit calls this; the allowlist rarely changes: a read lock decides.
        let unchanged = match self.tee.read() {
            Ok(t) => t.measurements == *measurements,
            Err(poisoned) => poisoned.into_inner().measurements == *measurements,
        };
        if unchanged {
            return;
        }
        let mut t = match self.tee.write() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if t.measurements == *measurements {
            return;
        }
        let params = crate::genesis::TeeParams {
            measurements: measurements.iter().cloned().collect(),
            ..params.clone()
        };
        // An empty allowlist approves nothing: no verifier, so TEE records are refused.
        t.verifier = params.verifier().ok().map(Arc::new);
        t.measurements = measurements.clone();
    }

    /// The input's size and hash, the client's and the executor's signatures (canonical, over
    /// this network's domain), a known and active model, an executor registered for it,
    /// bonded and not jailed, and the TEE proof where the model's mode requires one, in that
    /// order: the cheapest refusal first.
    pub fn check(
        &self,
        record: Arc<InferenceRecord>,
    ) -> std::result::Result<VerifiedRecord, AdmissionError> {
        let id = record.verify_signatures(&self.domain)?;
        let live = self.registrations();
        let model_id = record.job.request.model_id;
        let mode = match live.registry.active_model(&model_id) {
            Ok(m) => m.mode,
            Err(_) if !live.registry.models.contains_key(&model_id) => {
                return Err(Error::UnknownModel(model_id).into());
            }
            Err(e) => return Err(AdmissionError::Refused(e)),
        };
        if !live.registry.nodes.contains_key(&record.executor) {
            return Err(Error::UnknownExecutor(record.executor).into());
        }
        if let Some(e) = live.refuse_executor(&record.executor, &model_id) {
            return Err(AdmissionError::Refused(e));
        }
        let bound = live
            .registry
            .nodes
            .get(&record.executor)
            .and_then(|n| n.tee_chip);
        let tee = self.tee_verifier();
        check_tee_proof(&record, mode, tee.as_deref(), bound, &self.domain)?;
        Ok(VerifiedRecord { id, record })
    }
}

/// A record that passed [`Admission::check`], the only way to make one: what takes a
/// `VerifiedRecord` (the mempool, block building) cannot be handed an unchecked record.
/// Re-execution, which needs the model, is a further check for validators.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedRecord {
    id: JobId,
    record: Arc<InferenceRecord>,
}

impl VerifiedRecord {
    /// A record taken as checked, for the ledger's tests (which check registrations against
    /// a ledger, not a genesis).
    #[cfg(test)]
    pub(crate) fn for_tests(id: JobId, record: InferenceRecord) -> Self {
        VerifiedRecord {
            id,
            record: Arc::new(record),
        }
    }

    /// The job id, computed by the check.
    pub fn id(&self) -> JobId {
        self.id
    }

    pub fn record(&self) -> &InferenceRecord {
        &self.record
    }

    /// The record, copied only if it is shared.
    pub fn into_record(self) -> InferenceRecord {
        Arc::try_unwrap(self.record).unwrap_or_else(|shared| (*shared).clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::signing::seeded_key;

    pub(crate) const D7: Domain = Domain {
        chain_id: 7,
        salt: B256::ZERO,
        payments: None,
    };

    /// A job authorized by an x402 payment (the client's EIP-3009 signature whose nonce is the
    /// job id) verifies on the network whose payments it names, and nowhere else; its terms
    /// are signed (a changed value or window fails), and it must cover the job's max_fee.
    #[test]
    fn a_job_paid_by_x402_verifies_only_on_its_network() {
        let client = seeded_key(1, 1);
        let payments = crate::signing::EvmPayments {
            chain_id: 31_337,
            opg: Address::repeat_byte(0xa),
            settlement: Address::repeat_byte(0xb),
        };
        let d = Domain {
            payments: Some(payments),
            ..D7
        };
        let request = JobRequest {
            client: client.address(),
            model_id: ModelId([4; 32]),
            input_hash: keccak256(b"in"),
            max_fee: 100,
            nonce: 5,
            expiry: 1_000,
        };
        let terms = Payment {
            value: 100,
            valid_after: 5,
            valid_before: 1_000,
        };
        let job = request.clone().sign_payment(&client, &d, terms).unwrap();
        assert_eq!(job.verify(&d).unwrap(), request.id(&d));
        assert!(job.verify(&D7).is_err(), "a network without x402");
        let elsewhere = Domain {
            payments: Some(crate::signing::EvmPayments {
                settlement: Address::repeat_byte(0xc),
                ..payments
            }),
            ..D7
        };
        assert!(job.verify(&elsewhere).is_err(), "another bridge");
        for changed in [
            Payment {
                value: 101,
                ..terms
            },
            Payment {
                valid_after: 4,
                ..terms
            },
            Payment {
                valid_before: 999,
                ..terms
            },
        ] {
            let mut j = job.clone();
            j.payment = Some(changed);
            assert!(j.verify(&d).is_err(), "{changed:?}");
        }
        let short = JobRequest {
            max_fee: 101,
            ..request
        }
        .sign_payment(&client, &d, terms)
        .unwrap();
        let e = short.verify(&d).unwrap_err().to_string();
        assert!(e.contains("less than the job's max_fee"), "{e}");
        // A native signature is not a payment's, nor the other way round.
        let mut native_as_paid = request.clone().sign(&client, &d).unwrap();
        native_as_paid.payment = Some(terms);
        assert!(native_as_paid.verify(&d).is_err());
    }

    pub(crate) fn sample_record(domain: &Domain) -> InferenceRecord {
        let client = seeded_key(1, 1);
        let exec = seeded_key(1, 2);
        let input = "{\"inputs\":[[1.0]]}".to_string();
        let req = JobRequest {
            client: client.address(),
            model_id: ModelId([5; 32]),
            input_hash: keccak256(input.as_bytes()),
            max_fee: 10,
            nonce: 1,
            expiry: 2_000_000_000,
        };
        let job = req.sign(&client, domain).unwrap();
        let units = input.len() as u64;
        InferenceRecord::create(
            job,
            input,
            (B256::repeat_byte(9), units),
            Proof::Reexec,
            &exec,
            domain,
        )
        .unwrap()
    }

    #[test]
    fn record_verifies_and_tampering_is_caught() {
        let r = sample_record(&D7);
        assert_eq!(r.verify_signatures(&D7).unwrap(), r.job_id(&D7));
        // Another chain id, or the same chain id on another network (genesis): the client's
        // signature no longer matches.
        for other in [
            Domain { chain_id: 8, ..D7 },
            Domain {
                salt: B256::repeat_byte(1),
                ..D7
            },
        ] {
            assert!(r.verify_signatures(&other).is_err());
        }
        let mut t = r.clone();
        t.output_hash = B256::repeat_byte(1);
        assert!(matches!(
            t.verify_signatures(&D7),
            Err(Error::WrongSigner { .. })
        ));
        let mut t = r.clone();
        t.input.push(' ');
        assert!(matches!(
            t.verify_signatures(&D7),
            Err(Error::Invalid { .. })
        ));
        let mut t = r.clone();
        t.job.request.max_fee = 11;
        assert!(t.verify_signatures(&D7).is_err());
        let mut t = r;
        t.input = "x".repeat(MAX_INPUT_BYTES + 1);
        assert!(matches!(
            t.verify_signatures(&D7),
            Err(Error::TooLarge { .. })
        ));
    }

    /// Admission runs every model-free check, and only a record that passes them all becomes a
    /// `VerifiedRecord` (with the job id of its own domain).
    #[test]
    fn admission_refuses_each_failing_check() {
        use crate::attestation::AttestationError;
        use crate::genesis::{
            GenesisAccount, GenesisInferenceNode, ModelEntry, Params, VerificationMode,
        };
        let exec = seeded_key(1, 2).address();
        let mut genesis = crate::Genesis {
            chain_id: 7,
            genesis_time_ms: 0,
            accounts: vec![GenesisAccount {
                address: exec,
                balance: 0,
                stake: Params::default().min_inference_stake,
                label: String::new(),
                vesting: None,
            }],
            pools: Default::default(),
            validators: vec![],
            inference_nodes: vec![GenesisInferenceNode::new(exec)],
            models: vec![ModelEntry {
                id: ModelId([5; 32]),
                name: "m".into(),
                owner: Address::ZERO,
                price_per_job: 1,
                price_per_unit: 0,
                mode: VerificationMode::Reexec,
            }],
            params: Params::default(),
            tee: None,
            evm: None,
        };
        let admit = |g: &crate::Genesis, r: &InferenceRecord| {
            Admission::new(Arc::new(g.clone()), None).check(Arc::new(r.clone()))
        };
        let domain = genesis.domain();
        let r = sample_record(&domain);
        let ok = admit(&genesis, &r).unwrap();
        assert_eq!(ok.id(), r.job_id(&domain));
        assert_eq!(ok.record(), &r);

        // Signed for another network.
        assert!(matches!(
            admit(&genesis, &sample_record(&D7)),
            Err(AdmissionError::Chain(Error::WrongSigner { .. }))
        ));
        let mut tampered = r.clone();
        tampered.output_hash = B256::repeat_byte(2);
        assert!(matches!(
            admit(&genesis, &tampered),
            Err(AdmissionError::Chain(Error::WrongSigner { .. }))
        ));
        // The record's domain is the genesis hash: changing the genesis changes it, so each
        // variant below is signed again for its own genesis.
        let mut g = genesis.clone();
        g.inference_nodes.clear();
        assert!(matches!(
            admit(&g, &sample_record(&g.domain())),
            Err(AdmissionError::Chain(Error::UnknownExecutor(_)))
        ));
        let mut g = genesis.clone();
        g.models[0].id = ModelId([6; 32]);
        assert!(matches!(
            admit(&g, &sample_record(&g.domain())),
            Err(AdmissionError::Chain(Error::UnknownModel(_)))
        ));
        // A `tee` model: a record without a proof, and a network without TEE roots.
        genesis.models[0].mode = VerificationMode::Tee;
        let d = genesis.domain();
        assert!(matches!(
            admit(&genesis, &sample_record(&d)),
            Err(AdmissionError::Attestation(AttestationError::MissingProof))
        ));
        let mut with_proof = sample_record(&d);
        with_proof.proof = Proof::Tee(TeeProof {
            report: vec![1],
            vcek: vec![2],
            path: vec![],
        });
        assert!(matches!(
            admit(&genesis, &with_proof),
            Err(AdmissionError::Attestation(AttestationError::BadRoots(_)))
        ));
    }

    #[test]
    fn tee_proofs_round_trip_in_json_and_on_the_wire() {
        let mut r = sample_record(&D7);
        r.proof = Proof::Tee(TeeProof {
            report: vec![1, 2, 3],
            vcek: vec![0xff; 5],
            path: vec![B256::repeat_byte(4)],
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["proof"]["tee"]["report"], "0x010203");
        let back: InferenceRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let wire = crate::codec::encode(&r);
        let back: InferenceRecord = crate::codec::decode(&wire, 1 << 20).unwrap();
        assert_eq!(back, r);
        // Garbage and truncations of the wire form are errors, not panics.
        for cut in [1, wire.len() / 2, wire.len() - 1] {
            assert!(crate::codec::decode::<InferenceRecord>(&wire[..cut], 1 << 20).is_err());
        }
        let mut bad = serde_json::to_value(&r).unwrap();
        bad["proof"]["tee"]["report"] = "0xzz".into();
        assert!(serde_json::from_value::<InferenceRecord>(bad).is_err());
    }

    /// A job bought through an API grant round-trips in JSON and on the wire, verifies, and
    /// every truncation of its wire form is an error.
    #[test]
    fn granted_jobs_round_trip_and_verify() {
        let client = signing::seeded_key(7, 1);
        let delegate = signing::seeded_key(7, 2);
        let grant = ApiGrant {
            client: client.address(),
            delegate: delegate.address(),
            cap: 10u128.pow(20),
            expiry: 4_000_000_000,
            models: vec![ModelId([5; 32])],
        }
        .sign(&client, &D7)
        .unwrap();
        let job = JobRequest {
            client: client.address(),
            model_id: ModelId([5; 32]),
            input_hash: keccak256(b"{}"),
            max_fee: 1,
            nonce: 3,
            expiry: 4_000_000_000,
        }
        .sign_granted(&delegate, grant.clone(), &D7)
        .unwrap();
        assert_eq!(job.verify(&D7).unwrap(), job.request.id(&D7));
        let v = serde_json::to_value(&job).unwrap();
        assert!(v["grant"]["grant"]["cap"].is_string());
        assert_eq!(serde_json::from_value::<SignedJobRequest>(v).unwrap(), job);
        let wire = crate::codec::encode(&job);
        assert_eq!(
            crate::codec::decode::<SignedJobRequest>(&wire, 1 << 20).unwrap(),
            job
        );
        for cut in 0..wire.len() {
            assert!(crate::codec::decode::<SignedJobRequest>(&wire[..cut], 1 << 20).is_err());
        }
        // The grant's id is bound to the network: another domain's verification fails.
        let mut other = D7;
        other.chain_id += 1;
        assert!(job.verify(&other).is_err());
        assert_ne!(grant.grant.id(&D7), grant.grant.id(&other));
    }

    #[test]
    fn json_shape_is_stable() {
        let r = sample_record(&D7);
        let v = serde_json::to_value(&r.job).unwrap();
        assert!(v["request"]["max_fee"].is_string());
        assert!(v["signature"].as_str().unwrap().starts_with("0x"));
        let back: SignedJobRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, r.job);
    }
}
