//! Chain commands: staking, validator and inference-node registration, model registration,
//! governance and account queries. Each transaction command signs with `--key`, submits
//! through `--node`, optionally waits for inclusion (`--wait`), prints JSON and exits non-zero
//! with the node's reason when the transaction is refused or its action fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chain::{Action, Address, ModelId, ProposalKind, VerificationMode, VoteOption};
use serde_json::{Value, json};

use crate::submit::{agent, api_error, domain_of, get, post};

/// How to reach a node and sign.
#[derive(clap::Args, Clone)]
pub struct TxArgs {
    /// Any node's HTTP URL, e.g. http://127.0.0.1:7480
    #[arg(long)]
    pub node: String,
    /// The sender's private key file (hex).
    #[arg(long)]
    pub key: PathBuf,
    /// Most to pay as the fee, base units (default: the chain's fee now).
    #[arg(long)]
    pub max_fee: Option<u128>,
    /// Wait until a block includes the transaction and print its outcome.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

#[derive(clap::Subcommand)]
pub enum StakeCommand {
    /// Bond stake (locked tokens may be bonded).
    Bond {
        /// Base units, or OPG with a suffix: `1000opg`, `2.5OPG`.
        #[arg(long, value_parser = parse_amount)]
        amount: u128,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Start unbonding stake; `withdraw` returns it after the unbonding period.
    Unbond {
        #[arg(long, value_parser = parse_amount)]
        amount: u128,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Return every matured unbonding entry to the balance.
    Withdraw {
        #[command(flatten)]
        tx: TxArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum ValidatorCommand {
    /// Register the key's account as a validator (it must have the minimum stake bonded);
    /// it joins the set at the next epoch if its stake ranks.
    Register {
        /// The validator node's libp2p peer id (or give --home).
        #[arg(long)]
        peer_id: Option<String>,
        /// The validator node's home: its peer id is read from its libp2p key.
        #[arg(long)]
        home: Option<PathBuf>,
        #[arg(long)]
        moniker: String,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Leave jail after the jail period.
    Unjail {
        #[command(flatten)]
        tx: TxArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum NodeCommand {
    /// Register the key's account as an inference node serving `--model`s.
    Register {
        #[arg(long)]
        peer_id: Option<String>,
        #[arg(long)]
        home: Option<PathBuf>,
        /// A model id it serves (repeatable).
        #[arg(long = "model", required = true)]
        models: Vec<ModelId>,
        /// The SEV-SNP chip its records are attested by (0x + 64 hex digits).
        #[arg(long)]
        tee_chip: Option<chain::B256>,
        #[command(flatten)]
        tx: TxArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Put a model into HOME's models directory (after checking that it loads here) and print
    /// its id and manifest: PATH is a model directory (config.json, …), a directory holding
    /// model.gguf, or a .gguf file. Adding the same model again changes nothing.
    Add {
        path: PathBuf,
        #[arg(long)]
        home: PathBuf,
        /// Directory name under the models directory (default: PATH's name, without .gguf).
        #[arg(long)]
        name: Option<String>,
    },
    /// Ask the node at --node (on this machine: an admin endpoint) to fetch a model by id or
    /// registered name from the peers that provide it; every file is checked against the id's
    /// manifest before the node loads and serves it. Prints what was moved.
    Fetch {
        model: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
        /// Seconds to wait for the fetch.
        #[arg(long, default_value = "900")]
        timeout: u64,
    },
    /// Register the model in DIR (it must load here: config, weights and tokenizer); the key's
    /// account becomes its owner.
    Register {
        dir: PathBuf,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_parser = parse_amount)]
        price_per_job: u128,
        /// Per unit: per prompt and completion token of a generating model, per input byte of
        /// the others.
        #[arg(long, value_parser = parse_amount, default_value = "0")]
        price_per_unit: u128,
        /// reexec, tee or tee+reexec.
        #[arg(long, default_value = "reexec", value_parser = parse_mode)]
        mode: VerificationMode,
        #[command(flatten)]
        tx: TxArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum GovCommand {
    /// Submit a proposal with a deposit.
    Propose {
        /// params, tee-allow, tee-revoke, model-activate, model-deactivate or text.
        #[arg(long)]
        kind: String,
        /// For `params`: NAME=VALUE (repeatable), e.g. `--set executor_bps=6000`.
        #[arg(long = "set")]
        set: Vec<String>,
        /// For `tee-allow` / `tee-revoke`: the launch measurement (96 hex digits).
        #[arg(long)]
        measurement: Option<String>,
        /// For `model-activate` / `model-deactivate`.
        #[arg(long)]
        model: Option<ModelId>,
        /// For `text`.
        #[arg(long)]
        title: Option<String>,
        #[arg(long, default_value = "")]
        body: String,
        #[arg(long, value_parser = parse_amount)]
        deposit: u128,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Vote on a proposal (the last vote counts).
    Vote {
        #[arg(long)]
        proposal: u64,
        /// yes, no, abstain or veto.
        #[arg(long)]
        option: VoteOption,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// List proposals.
    List {
        #[arg(long)]
        node: String,
    },
    /// Show one proposal.
    Show {
        id: u64,
        #[arg(long)]
        node: String,
    },
}

#[derive(clap::Subcommand)]
pub enum AccountCommand {
    /// Balance, locked, vested, bonded, unbonding and nonce of an account.
    Show {
        address: Address,
        #[arg(long)]
        node: String,
    },
}

/// An amount: base units (`1500`), or OPG with a suffix (`2.5opg`, `1000 OPG`), exactly.
pub fn parse_amount(s: &str) -> Result<u128, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let Some(opg) = lower.strip_suffix("opg") else {
        return t
            .parse::<u128>()
            .map_err(|e| format!("{s:?} is not an amount in base units or OPG ({e})"));
    };
    let opg = opg.trim();
    let (whole, frac) = opg.split_once('.').unwrap_or((opg, ""));
    if frac.len() > 18 || (whole.is_empty() && frac.is_empty()) {
        return Err(format!("{s:?}: at most 18 decimals of OPG"));
    }
    let digits = |d: &str| d.is_empty() || d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(frac) {
        return Err(format!("{s:?} is not a decimal amount of OPG"));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|e| format!("{s:?}: {e}"))?
    };
    let frac_units: u128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<18}")
            .parse()
            .map_err(|e| format!("{s:?}: {e}"))?
    };
    whole
        .checked_mul(10u128.pow(18))
        .and_then(|w| w.checked_add(frac_units))
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_mode(s: &str) -> Result<VerificationMode, String> {
    serde_json::from_value(json!(s)).map_err(|_| format!("{s:?} is not reexec, tee or tee+reexec"))
}

/// The peer id from `--peer-id`, or from the libp2p key of the node home `--home`.
fn peer_id_of(peer_id: Option<String>, home: Option<&Path>) -> Result<String> {
    match (peer_id, home) {
        (Some(p), None) => Ok(p),
        (None, Some(home)) => {
            let config = crate::config::Config::load(home)?;
            let bytes = std::fs::read(home.join(&config.p2p_key))
                .with_context(|| format!("reading the libp2p key of {}", home.display()))?;
            let key = libp2p::identity::Keypair::from_protobuf_encoding(&bytes)
                .context("decoding the libp2p key")?;
            Ok(key.public().to_peer_id().to_string())
        }
        _ => bail!("give exactly one of --peer-id and --home"),
    }
}

pub fn stake(cmd: StakeCommand) -> Result<()> {
    match cmd {
        StakeCommand::Bond { amount, tx } => send(&tx, Action::Bond { amount }),
        StakeCommand::Unbond { amount, tx } => send(&tx, Action::Unbond { amount }),
        StakeCommand::Withdraw { tx } => send(&tx, Action::Withdraw),
    }
}

pub fn validator(cmd: ValidatorCommand) -> Result<()> {
    match cmd {
        ValidatorCommand::Register {
            peer_id,
            home,
            moniker,
            tx,
        } => {
            let peer_id = peer_id_of(peer_id, home.as_deref())?;
            send(&tx, Action::RegisterValidator { peer_id, moniker })
        }
        ValidatorCommand::Unjail { tx } => send(&tx, Action::Unjail),
    }
}

pub fn node(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Register {
            peer_id,
            home,
            models,
            tee_chip,
            tx,
        } => {
            let peer_id = peer_id_of(peer_id, home.as_deref())?;
            send(
                &tx,
                Action::RegisterInferenceNode {
                    peer_id,
                    models,
                    tee_chip,
                },
            )
        }
    }
}

/// The files of the model at `path` a node loads: `(name in the model directory, source)`.
fn model_files(path: &Path) -> Vec<(String, PathBuf)> {
    if path.is_file() {
        return vec![("model.gguf".into(), path.to_path_buf())];
    }
    kernels::MODEL_FILES
        .iter()
        .map(|f| (f.to_string(), path.join(f)))
        .filter(|(_, p)| p.is_file())
        .collect()
}

fn model_add(path: &Path, home: &Path, name: Option<String>) -> Result<()> {
    let config = crate::config::Config::load(home)?;
    let model = kernels::Model::load(path)
        .with_context(|| format!("loading the model at {}", path.display()))?;
    let (manifest, id) = kernels::manifest(path)?;
    let name = match name {
        Some(n) => n,
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
            .context("give --name")?,
    };
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("--name {name:?} is not a directory name");
    }
    let dest = home.join(&config.inference.models_dir).join(&name);
    let status = if dest.exists() {
        let existing = kernels::manifest(&dest)
            .with_context(|| format!("reading the model already in {}", dest.display()))?
            .1;
        if existing != id {
            bail!(
                "{} already holds another model ({existing}); choose another --name",
                dest.display()
            );
        }
        "present"
    } else {
        // Into a fresh directory, renamed into place once whole.
        let partial = dest.with_file_name(format!(".{name}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        for (file, src) in model_files(path) {
            let to = partial.join(&file);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if std::fs::hard_link(&src, &to).is_err() {
                std::fs::copy(&src, &to)
                    .with_context(|| format!("copying {} to {}", src.display(), to.display()))?;
            }
        }
        if kernels::manifest(&partial)?.1 != id {
            let _ = std::fs::remove_dir_all(&partial);
            bail!("the copy in {} does not hash to {id}", partial.display());
        }
        std::fs::rename(&partial, &dest)
            .with_context(|| format!("moving the model into {}", dest.display()))?;
        "added"
    };
    let manifest: Value = serde_json::from_slice(&manifest)?;
    println!(
        "{}",
        json!({
            "model_id": id.to_string(),
            "name": name,
            "architecture": model.architecture(),
            "path": dest,
            "status": status,
            "manifest": manifest,
        })
    );
    Ok(())
}

pub fn model(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Add { path, home, name } => model_add(&path, &home, name),
        ModelCommand::Fetch {
            model,
            node,
            timeout,
        } => model_fetch(&model, &node, timeout),
        ModelCommand::Register {
            dir,
            name,
            price_per_job,
            price_per_unit,
            mode,
            tx,
        } => model_register(dir, name, (price_per_job, price_per_unit), mode, &tx),
    }
}

fn model_fetch(model: &str, node: &str, timeout: u64) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(timeout)))
        .build()
        .into();
    let node = node.trim_end_matches('/');
    let (status, body) = crate::submit::post(
        &agent,
        &format!("{node}/v1/admin/models/{model}/fetch"),
        &serde_json::json!({}),
    )?;
    if status != 200 {
        return Err(crate::submit::api_error(status, &body));
    }
    let mib = body["bytes"].as_f64().unwrap_or(0.0) / f64::from(1 << 20);
    let secs = body["seconds"].as_f64().unwrap_or(0.0);
    if body["already_held"] == true {
        eprintln!("the node holds model {} already", body["model_id"]);
    } else {
        eprintln!(
            "fetched {mib:.1} MiB in {secs:.1} s ({:.1} MiB/s) from {} provider(s); {} part(s) refused",
            mib / secs.max(1e-3),
            body["providers"],
            body["rejected_parts"]
        );
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

fn model_register(
    dir: PathBuf,
    name: Option<String>,
    (price_per_job, price_per_unit): (u128, u128),
    mode: VerificationMode,
    tx: &TxArgs,
) -> Result<()> {
    // Servable: it loads here, as an inference node would load it.
    kernels::Model::load(&dir)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    let (manifest, model_id) = kernels::manifest(&dir)
        .with_context(|| format!("reading the model files in {}", dir.display()))?;
    let manifest = String::from_utf8(manifest).context("the manifest is not UTF-8")?;
    let name = match name {
        Some(n) => n,
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("give --name")?,
    };
    send(
        tx,
        Action::RegisterModel {
            model_id,
            name,
            manifest,
            mode,
            price_per_job,
            price_per_unit,
        },
    )
}

pub fn gov(cmd: GovCommand) -> Result<()> {
    match cmd {
        GovCommand::Propose {
            kind,
            set,
            measurement,
            model,
            title,
            body,
            deposit,
            tx,
        } => {
            let need_model = || model.context("this kind needs --model");
            let need_measurement = || measurement.clone().context("this kind needs --measurement");
            let kind = match kind.as_str() {
                "params" => {
                    let mut changes = std::collections::BTreeMap::new();
                    for s in &set {
                        let (k, v) = s
                            .split_once('=')
                            .ok_or_else(|| anyhow!("--set {s:?} is not NAME=VALUE"))?;
                        changes.insert(k.trim().to_string(), v.trim().to_string());
                    }
                    ProposalKind::Params(changes)
                }
                "tee-allow" => ProposalKind::TeeAllow(need_measurement()?),
                "tee-revoke" => ProposalKind::TeeRevoke(need_measurement()?),
                "model-activate" => ProposalKind::ModelActivate(need_model()?),
                "model-deactivate" => ProposalKind::ModelDeactivate(need_model()?),
                "text" => ProposalKind::Text {
                    title: title.context("a text proposal needs --title")?,
                    body,
                },
                other => bail!(
                    "--kind {other:?}: one of params, tee-allow, tee-revoke, model-activate, model-deactivate, text"
                ),
            };
            send(&tx, Action::Propose { kind, deposit })
        }
        GovCommand::Vote {
            proposal,
            option,
            tx,
        } => send(&tx, Action::Vote { proposal, option }),
        GovCommand::List { node } => show(&format!("{}/v1/proposals", trim(&node))),
        GovCommand::Show { id, node } => show(&format!("{}/v1/proposals/{id}", trim(&node))),
    }
}

pub fn account(cmd: AccountCommand) -> Result<()> {
    let AccountCommand::Show { address, node } = cmd;
    show(&format!("{}/v1/accounts/{address}", trim(&node)))
}

pub(crate) fn trim(node: &str) -> &str {
    node.trim_end_matches('/')
}

fn show(url: &str) -> Result<()> {
    let (st, body) = get(&agent(), url)?;
    if st != 200 {
        return Err(api_error(st, &body));
    }
    println!("{body}");
    Ok(())
}

/// Signs `action` at the sender's next nonce (after its transactions pending at that node),
/// submits it, and with `--wait` waits for its outcome.
pub fn send(a: &TxArgs, action: Action) -> Result<()> {
    let body = submit_action(a, action)?;
    println!("{body}");
    Ok(())
}

/// Signs `action` at the sender's next nonce, submits it and, with `--wait`, waits for its
/// block: the node's answer (with `--wait`, the outcome; a failed action is an error).
pub fn submit_action(a: &TxArgs, action: Action) -> Result<Value> {
    let agent = agent();
    let node = trim(&a.node);
    let key = chain::signing::load_key(&a.key)?;
    let (st, status) = get(&agent, &format!("{node}/v1/status"))?;
    if st != 200 {
        return Err(api_error(st, &status));
    }
    let domain = domain_of(&status)?;
    let (st, acct) = get(&agent, &format!("{node}/v1/accounts/{}", key.address()))?;
    if st != 200 {
        return Err(api_error(st, &acct));
    }
    let nonce = acct["next_nonce"]
        .as_u64()
        .or_else(|| acct["nonce"].as_u64())
        .context("account has no nonce")?;
    let max_fee = match a.max_fee {
        Some(f) => f,
        None => status["tx_fee"]
            .as_str()
            .and_then(|f| f.parse().ok())
            .context("status has no tx_fee")?,
    };
    let tx = chain::UnsignedTx {
        from: key.address(),
        nonce,
        max_fee,
        action,
    }
    .sign(&key, &domain)?;
    let (st, mut body) = post(
        &agent,
        &format!("{node}/v1/txs"),
        &serde_json::to_value(&tx)?,
    )?;
    // 202: queued behind an earlier nonce of this sender, pending at that node elsewhere.
    if !(200..300).contains(&st) {
        return Err(api_error(st, &body));
    }
    if a.wait {
        let hash = body["hash"]
            .as_str()
            .context("reply has no hash")?
            .to_string();
        let outcome = wait_included(&agent, node, &hash, Duration::from_secs(a.timeout))?;
        body = outcome;
        if body["ok"] == json!(false) {
            println!("{body}");
            bail!(
                "transaction {hash} was included at height {} but failed: {}",
                body["height"],
                body["reason"].as_str().unwrap_or("")
            );
        }
    }
    Ok(body)
}

/// Polls `GET /v1/txs/{hash}` until a block includes the transaction.
fn wait_included(agent: &ureq::Agent, node: &str, hash: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let (st, body) = get(agent, &format!("{node}/v1/txs/{hash}"))?;
        if st == 200 && body["status"] == "included" {
            return Ok(body);
        }
        if st != 200 && st != 404 {
            return Err(api_error(st, &body));
        }
        if Instant::now() > deadline {
            bail!(
                "transaction {hash} not included after {} s (last: {})",
                timeout.as_secs(),
                body
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(parse_amount("1500"), Ok(1500));
        assert_eq!(parse_amount("1opg"), Ok(10u128.pow(18)));
        assert_eq!(parse_amount("2.5 OPG"), Ok(25 * 10u128.pow(17)));
        assert_eq!(parse_amount(".000000000000000001opg"), Ok(1));
        assert_eq!(
            parse_amount("1000000000OPG"),
            Ok(chain::TOTAL_SUPPLY),
            "the whole supply"
        );
        for bad in [
            "",
            "opg",
            "1.0000000000000000001opg",
            "1e3",
            "-1",
            "1,5opg",
            "x",
            "1.2.3opg",
            "999999999999999999999999999999999999999opg",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?}");
        }
    }
}
