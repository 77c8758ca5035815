//! Creating, starting, stopping and describing a local testnet (`DIR/testnet.json`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chain::attestation::Tcb;
use chain::attestation::sim::{SimRoot, measure_file};
use chain::genesis::{
    GenesisAccount, GenesisInferenceNode, GenesisValidator, ModelEntry, Params, TeeParams,
    VerificationMode, Vesting,
};
use chain::{Address, Genesis, TOTAL_SUPPLY};
use serde::{Deserialize, Serialize};

use crate::client::Client;

pub const OPG: u128 = 1_000_000_000_000_000_000;

/// The TCB of the testnet's simulated chips, and the genesis minimum.
const TESTNET_TCB: Tcb = Tcb {
    bootloader: 3,
    tee: 0,
    snp: 14,
    microcode: 209,
};

/// One node of a testnet, as `testnet.json` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub role: String,
    pub http: String,
    pub p2p: String,
    pub peer_id: String,
    pub address: Address,
    pub pid: u32,
    pub home: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub name: String,
    pub example_input: PathBuf,
    /// Per job, OPG base units.
    pub price: String,
    /// Per unit (a generation's tokens, other models' input bytes), OPG base units.
    #[serde(default = "zero")]
    pub price_per_unit: String,
    /// Verification mode: "reexec", "tee" or "tee+reexec".
    #[serde(default = "reexec")]
    pub mode: VerificationMode,
}

fn zero() -> String {
    "0".into()
}

impl ModelInfo {
    /// The most a job with `input` can cost: what a client signs as its `max_fee` (the ledger
    /// charges the units the job took).
    pub fn max_fee(&self, input: &str) -> Result<u128> {
        let per_job: u128 = self.price.parse()?;
        let per_unit: u128 = self.price_per_unit.parse()?;
        Ok(per_unit
            .saturating_mul(kernels::units_bound(input.as_bytes()) as u128)
            .saturating_add(per_job))
    }
}

fn reexec() -> VerificationMode {
    VerificationMode::Reexec
}

/// SmolLM2's price per prompt or completion token on the testnet (0.00001 OPG).
pub const SMOLLM2_PRICE_PER_TOKEN: u128 = OPG / 100_000;

/// The demo model whose records are proven by (simulated) SEV-SNP reports only.
pub const TEE_MODEL: &str = "mlp-tee";

/// `DIR/testnet.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Testnet {
    pub dir: PathBuf,
    /// What signatures on this testnet are bound to: its chain id and genesis hash.
    pub domain: chain::signing::Domain,
    pub nodes: Vec<NodeInfo>,
    pub client_key: PathBuf,
    pub client_address: Address,
    pub models: Vec<ModelInfo>,
    /// The `proofmesh` binary the nodes run.
    pub bin: PathBuf,
    /// The EVM chain (anvil) the testnet anchors to; `None` with `--no-evm`.
    #[serde(default)]
    pub evm: Option<crate::evmnet::EvmInfo>,
}

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub dir: PathBuf,
    pub validators: usize,
    pub inference: usize,
    pub seed: u64,
    /// The chain id; `None` picks a random one, so that a signature made for one testnet is
    /// not valid on another (EIP-712 domains carry the chain id).
    pub chain_id: Option<u64>,
    pub bin: PathBuf,
    /// Inference nodes (by index among inference nodes) that sign wrong outputs.
    pub faulty_inference: Vec<usize>,
    pub ready_timeout: Duration,
    /// An all-MiniLM-L6-v2 directory (from `scripts/fetch-minilm`) to serve as the first, default
    /// model; `None` serves only the seeded demo MLPs.
    pub minilm_dir: Option<PathBuf>,
    /// A SmolLM2-135M-Instruct directory (holding `model.gguf`, from `scripts/fetch-smollm2`) to
    /// serve as a text-generation model, re-executed by validators; `None` serves none.
    pub smollm2_dir: Option<PathBuf>,
    /// A simulated TEE root (`root.json` from `proofmesh attest simulate root`) to reuse;
    /// `None` makes a new one (two RSA-4096 keys: seconds).
    pub tee_root: Option<PathBuf>,
    /// Inference nodes (by index) whose TEE proofs are forged (not signed by their chip).
    pub forging_inference: Vec<usize>,
    /// Inference nodes (by index) that attach their first TEE proof to every record.
    pub replaying_inference: Vec<usize>,
    /// Validators (by index) that publish undecodable bytes in place of their proposals.
    pub garbage_proposers: Vec<usize>,
    /// Validators (by index) that follow each prevote for a block with a nil prevote.
    pub double_voters: Vec<usize>,
    /// Start anvil, deploy the contracts and give every node an `[evm]` section.
    pub evm: bool,
    /// Only the first inference node starts with the models' files; every other node starts
    /// with an empty model directory and fetches the registered models over the mesh
    /// (`/proofmesh/model/1`), each file checked against the model id.
    pub single_holder: bool,
    /// Inference nodes (by index) that also start with the files but serve them to peers
    /// with a byte flipped in each chunk (with `single_holder`).
    pub corrupt_providers: Vec<usize>,
    /// Nodes (by index among all nodes) that do not fetch missing models by themselves (an
    /// operator fetches them: `proofmesh model fetch`).
    pub no_fetch: Vec<usize>,
}

/// Where `scripts/fetch-minilm` keeps all-MiniLM-L6-v2: `$PROOFMESH_MODEL_CACHE` or
/// `~/.cache/proofmesh/models`, then `all-minilm-l6-v2`.
pub fn default_minilm_dir() -> PathBuf {
    let cache = match std::env::var_os("PROOFMESH_MODEL_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/proofmesh/models"),
    };
    cache.join(MINILM)
}

/// The name the testnet serves SmolLM2-135M-Instruct under.
pub const SMOLLM2: &str = "smollm2-135m-instruct";
/// The same SmolLM2 weights under another id (`proofmesh.variant = "tee"` in the GGUF's
/// metadata), registered with mode `tee`: its records carry an SEV-SNP proof instead of being
/// re-executed.
pub const SMOLLM2_TEE: &str = "smollm2-135m-instruct-tee";

/// Where `scripts/fetch-smollm2` keeps SmolLM2-135M-Instruct, as [`default_minilm_dir`].
pub fn default_smollm2_dir() -> PathBuf {
    default_minilm_dir().with_file_name(SMOLLM2)
}

/// The name the testnet serves all-MiniLM-L6-v2 under.
pub const MINILM: &str = "all-minilm-l6-v2";

/// Links (or, across file systems, copies) a model's files from `src` into `dst`.
fn install_model(src: &Path, dst: &Path) -> Result<()> {
    // The files the model id covers (others are not copied).
    for f in kernels::MODEL_FILES {
        let from = src.join(f);
        if !from.is_file() {
            continue;
        }
        let to = dst.join(f);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

/// The `proofmesh` binary next to the running executable (cargo puts both in target/<profile>),
/// or `PROOFMESH_BIN`.
pub fn default_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PROOFMESH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("proofmesh")
}

/// Free ports on 127.0.0.1, distinct from each other: every listener stays open until all are
/// picked (a port released at once could be handed out again by the next bind).
/// `n` free ports on 127.0.0.1 for the nodes, below Linux's ephemeral range (32768–60999): a
/// port from that range can be taken, between this check and the node's bind, as the local
/// end of an outgoing connection (deploying the EVM contracts makes many RPC calls).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Processes (parallel test binaries) start at different places, calls within one move on.
    let start = std::process::id()
        .wrapping_mul(7_919)
        .wrapping_add(NEXT.fetch_add(64, Ordering::Relaxed));
    let mut listeners = Vec::with_capacity(n);
    for k in 0..SPAN {
        if listeners.len() == n {
            break;
        }
        let port = (LOW + start.wrapping_add(k) % SPAN) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(l);
        }
    }
    if listeners.len() < n {
        bail!("fewer than {n} free ports in {LOW}..{}", LOW + SPAN);
    }
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn run_init(
    bin: &Path,
    home: &Path,
    role: &str,
    http: u16,
    p2p: u16,
    models: &Path,
) -> Result<serde_json::Value> {
    let out = Command::new(bin)
        .arg("init")
        .arg("--home")
        .arg(home)
        .args([
            "--role",
            role,
            "--http",
            &format!("127.0.0.1:{http}"),
            "--listen",
            &format!("/ip4/127.0.0.1/tcp/{p2p}"),
        ])
        .arg("--models-dir")
        .arg(models)
        .output()
        .with_context(|| format!("running {} init", bin.display()))?;
    if !out.status.success() {
        bail!(
            "proofmesh init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Starts `proofmesh run` on `home` in its own session (it outlives `up`), logging to
/// `home/node.log`. Returns the pid.
pub fn start_node(bin: &Path, home: &Path) -> Result<u32> {
    let _ = std::fs::remove_file(home.join("run.json"));
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--home").arg(home);
    spawn_detached(cmd, &home.join("node.log"))
}

/// Spawns `cmd` in its own session (it outlives `up`) with stdout and stderr appended to
/// `log`. Returns the pid.
pub fn spawn_detached(mut cmd: Command, log: &Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    Ok(child.id())
}

/// Whether `pid` is a live `proofmesh` process (guards against pid reuse).
pub fn is_ours(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    process_state(pid).is_some_and(|state| state != 'Z')
        && String::from_utf8_lossy(&cmdline).contains("proofmesh")
}

/// The state letter of `pid` in `/proc/PID/stat` (`R`, `S`, `Z`, ...); `None` without a process.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// The last `n` lines of a log file (empty if it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for l in &lines[lines.len().saturating_sub(n)..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Whether `pid` still holds its resources. Unlike [`is_ours`] this does not read the
/// command line: the kernel releases a dying process's memory (its command line reads empty
/// from then on) before it closes its files, so a node whose command line is gone may still
/// hold its listening sockets and RocksDB's lock. Nor is a zombie main thread enough: the
/// other threads share the open files and may still be exiting (seen: a restarted node found
/// RocksDB's lock held). Only a gone process, or a zombie with no thread left, has let go.
fn holds_resources(pid: u32) -> bool {
    let Some(state) = process_state(pid) else {
        return false;
    };
    let zombie = state == 'Z' || state == 'X';
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    !zombie || threads > 1
}

/// Waits until a signalled node has let go of its files and ports, reaping it if it is our
/// child; false if it still holds them after `timeout`.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        reap(pid);
        if !holds_resources(pid) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to `pid` if it is one of our nodes.
pub fn signal(pid: u32, signal: i32) -> bool {
    if !is_ours(pid) {
        return false;
    }
    // SAFETY: kill(2) with a pid we started.
    unsafe { libc::kill(pid as i32, signal) == 0 }
}

/// SIGTERM, then SIGKILL after `grace`.
pub fn stop_pid(pid: u32, grace: Duration) {
    if !signal(pid, libc::SIGTERM) {
        return;
    }
    if !wait_gone(pid, grace) && signal(pid, libc::SIGKILL) {
        wait_gone(pid, Duration::from_secs(10));
    }
}

fn reap(pid: u32) {
    // SAFETY: non-blocking waitpid on a child pid; harmless if it is not our child.
    unsafe {
        let mut status = 0;
        libc::waitpid(pid as i32, &mut status, libc::WNOHANG);
    }
}

impl Testnet {
    pub fn load(dir: &Path) -> Result<Testnet> {
        let path = dir.join("testnet.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a testnet description", path.display()))
    }

    pub fn save(&self) -> Result<()> {
        std::fs::write(
            self.dir.join("testnet.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(())
    }

    pub fn validators(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.role == "validator")
    }

    pub fn inference(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.role == "inference")
    }

    pub fn client_key(&self) -> Result<chain::PrivateKeySigner> {
        Ok(chain::signing::load_key(&self.client_key)?)
    }

    /// Creates keys, genesis and the demo model, starts every node and waits until they are
    /// connected and finalizing blocks.
    pub fn up(o: &UpOptions) -> Result<Testnet> {
        if o.validators == 0 {
            bail!("a testnet needs at least one validator");
        }
        if o.dir.join("testnet.json").exists() {
            bail!(
                "{} already holds a testnet; run `down` first or use another --dir",
                o.dir.display()
            );
        }
        if !o.bin.is_file() {
            bail!(
                "node binary {} not found; build it with `cargo build --bin proofmesh` or pass --bin",
                o.bin.display()
            );
        }
        std::fs::create_dir_all(&o.dir)?;
        let dir = std::fs::canonicalize(&o.dir)?;
        let models_dir = dir.join("models");
        let spec = kernels::MlpSpec {
            input_dim: 16,
            hidden_dims: vec![64, 64],
            num_classes: 8,
        };
        let price = OPG / 100;
        let mut models = Vec::new();
        if let Some(src) = &o.minilm_dir {
            if !src.join("model.safetensors").is_file() {
                bail!(
                    "no all-MiniLM-L6-v2 in {}: run scripts/fetch-minilm, pass --minilm-dir, or \
                     --no-minilm",
                    src.display()
                );
            }
            install_model(src, &models_dir.join(MINILM))?;
        } else {
            std::fs::create_dir_all(&models_dir)?;
        }
        let mlp_dir = models_dir.join("mlp-demo");
        kernels::write_seeded_mlp(&mlp_dir, "mlp-demo", o.seed, &spec)?;
        // Same shape, other weights: another model id, registered with mode `tee`.
        kernels::write_seeded_mlp(
            &models_dir.join(TEE_MODEL),
            TEE_MODEL,
            o.seed.wrapping_add(1_000_003),
            &spec,
        )?;
        let mut names: Vec<&str> = if o.minilm_dir.is_some() {
            vec![MINILM, "mlp-demo", TEE_MODEL]
        } else {
            vec!["mlp-demo", TEE_MODEL]
        };
        if let Some(src) = &o.smollm2_dir {
            if !src.join("model.gguf").is_file() {
                bail!(
                    "no SmolLM2 model.gguf in {}: run scripts/fetch-smollm2 or pass its directory",
                    src.display()
                );
            }
            install_model(src, &models_dir.join(SMOLLM2))?;
            let original = std::fs::read(src.join("model.gguf"))?;
            let variant = kernels::gguf_with_metadata(&original, "proofmesh.variant", "tee")
                .context("writing the TEE variant of SmolLM2")?;
            std::fs::create_dir_all(models_dir.join(SMOLLM2_TEE))?;
            std::fs::write(models_dir.join(SMOLLM2_TEE).join("model.gguf"), variant)?;
            names.extend([SMOLLM2, SMOLLM2_TEE]);
        }
        for name in names {
            let model = kernels::Model::load(&models_dir.join(name))
                .with_context(|| format!("loading model {name}"))?;
            let example = dir.join(format!("{name}.input.json"));
            std::fs::write(&example, model.example_input())?;
            models.push(ModelInfo {
                id: model.id().to_string(),
                name: name.to_string(),
                example_input: example,
                price: price.to_string(),
                // A generation pays per token too, so long answers cost more.
                price_per_unit: if name == SMOLLM2 || name == SMOLLM2_TEE {
                    SMOLLM2_PRICE_PER_TOKEN.to_string()
                } else {
                    "0".into()
                },
                mode: if name == TEE_MODEL || name == SMOLLM2_TEE {
                    VerificationMode::Tee
                } else {
                    VerificationMode::Reexec
                },
            });
        }

        let ports = free_ports(2 * (o.validators + o.inference))?;
        let mut nodes = Vec::new();
        let roles = std::iter::repeat_n("validator", o.validators)
            .chain(std::iter::repeat_n("inference", o.inference));
        let (mut vi, mut ii) = (0, 0);
        for role in roles {
            let name = if role == "validator" {
                vi += 1;
                format!("validator-{}", vi - 1)
            } else {
                ii += 1;
                format!("inference-{}", ii - 1)
            };
            let home = dir.join("nodes").join(&name);
            let (http, p2p) = (ports[2 * nodes.len()], ports[2 * nodes.len() + 1]);
            let init = run_init(&o.bin, &home, role, http, p2p, &models_dir)?;
            let address: Address = init["address"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .context("init printed no address")?;
            let peer_id = init["peer_id"].as_str().unwrap_or_default().to_string();
            nodes.push(NodeInfo {
                name,
                role: role.into(),
                http: format!("http://127.0.0.1:{http}"),
                p2p: format!("/ip4/127.0.0.1/tcp/{p2p}/p2p/{peer_id}"),
                peer_id,
                address,
                pid: 0,
                home,
            });
        }

        let client = chain::PrivateKeySigner::random();
        let client_key = dir.join("client.key");
        chain::signing::write_key(&client_key, &client)?;
        let ecosystem = chain::PrivateKeySigner::random();
        chain::signing::write_key(&dir.join("ecosystem.key"), &ecosystem)?;
        let team = chain::PrivateKeySigner::random();
        chain::signing::write_key(&dir.join("team.key"), &team)?;
        let investors = chain::PrivateKeySigner::random();
        chain::signing::write_key(&dir.join("investors.key"), &investors)?;
        let vesting_demo = chain::PrivateKeySigner::random();
        chain::signing::write_key(&dir.join("vesting-demo.key"), &vesting_demo)?;
        let chain_id = o.chain_id.unwrap_or_else(random_chain_id);
        // The testnet's root of trust: a simulated SEV-SNP root the genesis declares, one chip
        // per inference node, and the node binary's SHA-384 as the one approved measurement.
        let tee_dir = dir.join("tee");
        let root = match &o.tee_root {
            Some(p) => SimRoot::from_json(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )?,
            None => SimRoot::generate()?,
        };
        std::fs::create_dir_all(&tee_dir)?;
        std::fs::write(tee_dir.join("root.json"), root.to_json()?)?;
        let roots_pem = root.roots_pem()?;
        std::fs::write(tee_dir.join("roots.pem"), &roots_pem)?;
        let measurement = measure_file(&o.bin)?;
        let tee = TeeParams {
            product: None,
            roots_pem: Some(roots_pem),
            measurements: vec![hex::encode(measurement)],
            min_tcb: TESTNET_TCB,
        };
        // One simulated chip per inference node, bound to it in the genesis: records attested
        // by any other chip are refused.
        let mut chips = std::collections::BTreeMap::new();
        for n in nodes.iter().filter(|n| n.role == "inference") {
            chips.insert(n.address, root.issue_chip(TESTNET_TCB)?);
        }
        let bindings = chips
            .iter()
            .map(|(a, c)| (*a, chain::record::chip_binding(c.chip_id())))
            .collect();
        // The EVM deployer's key comes first: its contracts' addresses (its first two
        // creations) go into the genesis, where x402 payments settle.
        let deployer = o.evm.then(chain::PrivateKeySigner::random);
        let payments = deployer
            .as_ref()
            .map(|d| crate::evmnet::payments_of(d.address()));
        let mut genesis = make_genesis(
            chain_id,
            chain::types::now_ms(),
            &nodes,
            &bindings,
            &GenesisKeys {
                client: client.address(),
                ecosystem: ecosystem.address(),
                team: team.address(),
                investors: investors.address(),
                vesting_demo: vesting_demo.address(),
            },
            &models,
            tee,
        )?;
        genesis.evm = payments;
        let genesis_json = genesis.to_json();
        std::fs::write(dir.join("genesis.json"), &genesis_json)?;

        let evm = match deployer {
            Some(deployer) => {
                let port = free_ports(1)?[0];
                // Every node may send to the EVM: validators anchor, gateways settle x402.
                let senders: Vec<Address> = nodes.iter().map(|n| n.address).collect();
                Some(
                    crate::evmnet::up(&dir, port, &genesis, &senders, client.address(), deployer)
                        .context("starting the EVM chain")?,
                )
            }
            None => None,
        };

        // Like a real network: every node knows two bootstrap peers (the first two validators)
        // and finds the rest through Kademlia.
        let bootstrap: Vec<String> = nodes.iter().take(2).map(|n| n.p2p.clone()).collect();
        let mut inference_index = 0;
        let mut validator_index = 0;
        let fast_kernels: Vec<kernels::CpuKernel> = kernels::CpuKernel::ALL
            .into_iter()
            .rev()
            .filter(|k| k.available() && *k != kernels::CpuKernel::Portable)
            .collect();
        for (node_index, n) in nodes.iter().enumerate() {
            std::fs::write(n.home.join("genesis.json"), &genesis_json)?;
            let path = n.home.join("node.toml");
            let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?)?;
            if o.single_holder
                && let Some(inf) = cfg.get_mut("inference").and_then(|v| v.as_table_mut())
            {
                let index = node_index.checked_sub(o.validators);
                let holder = index == Some(0);
                let corrupt = index.is_some_and(|i| o.corrupt_providers.contains(&i));
                if corrupt {
                    inf.insert("corrupt_model_files".into(), true.into());
                }
                if !holder && !corrupt {
                    std::fs::create_dir_all(n.home.join("models"))?;
                    inf.insert("models_dir".into(), "models".into());
                }
                if o.no_fetch.contains(&node_index) {
                    inf.insert("fetch_models".into(), false.into());
                }
            }
            let others: Vec<toml::Value> = bootstrap
                .iter()
                .filter(|b| **b != n.p2p)
                .map(|b| toml::Value::String(b.clone()))
                .collect();
            if let Some(net) = cfg.get_mut("network").and_then(|v| v.as_table_mut()) {
                net.insert("bootstrap".into(), toml::Value::Array(others));
            }
            // Every node's log filter, for a run being debugged (e.g.
            // `info,actors::consensus=debug`).
            if let Ok(filter) = std::env::var("PROOFMESH_NODE_LOG") {
                cfg.insert("log".into(), filter.into());
            }
            if let Some(info) = &evm {
                cfg.insert(
                    "evm".into(),
                    toml::Value::Table(crate::evmnet::node_section(info)),
                );
            }
            if n.role == "validator" {
                let fault = if o.garbage_proposers.contains(&validator_index) {
                    Some("garbage-proposals")
                } else if o.double_voters.contains(&validator_index) {
                    Some("double-vote")
                } else {
                    None
                };
                if let Some(fault) = fault
                    && let Some(c) = cfg
                        .entry("consensus")
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                        .as_table_mut()
                {
                    c.insert("byzantine".into(), fault.into());
                }
                // Validators take turns on the fast CPU kernel variants this machine runs
                // (AVX-512, AVX2), inference nodes pick the fastest: every re-executed job is
                // then checked bit for bit across variants.
                if let Some(&kernel) = fast_kernels.get(validator_index % fast_kernels.len().max(1))
                    && let Some(inf) = cfg.get_mut("inference").and_then(|v| v.as_table_mut())
                {
                    inf.insert("cpu_kernel".into(), kernel.name().into());
                }
                validator_index += 1;
            }
            if n.role == "inference" {
                if o.faulty_inference.contains(&inference_index)
                    && let Some(inf) = cfg.get_mut("inference").and_then(|v| v.as_table_mut())
                {
                    inf.insert("faulty".into(), toml::Value::Boolean(true));
                }
                let chip = chips
                    .get(&n.address)
                    .context("no chip issued for an inference node")?;
                std::fs::write(n.home.join("chip.json"), chip.to_json()?)?;
                let mut att = toml::Table::new();
                att.insert("tee".into(), "simulated".into());
                att.insert("chip".into(), "chip.json".into());
                if o.forging_inference.contains(&inference_index) {
                    att.insert("byzantine".into(), "forge".into());
                } else if o.replaying_inference.contains(&inference_index) {
                    att.insert("byzantine".into(), "replay".into());
                }
                cfg.insert("attestation".into(), toml::Value::Table(att));
                inference_index += 1;
            }
            std::fs::write(&path, toml::to_string_pretty(&cfg)?)?;
        }

        let mut net = Testnet {
            dir: dir.clone(),
            domain: genesis.domain(),
            nodes,
            client_key,
            client_address: client.address(),
            models,
            bin: o.bin.clone(),
            evm,
        };
        for i in 0..net.nodes.len() {
            net.nodes[i].pid = start_node(&o.bin, &net.nodes[i].home)?;
        }
        net.save()?;
        if let Err(e) = net.wait_ready(o.ready_timeout, 2) {
            let logs = net.log_tails(20);
            net.down();
            return Err(e.context(logs));
        }
        Ok(net)
    }

    /// The model called `name` (ASCII case ignored: `all-MiniLM-L6-v2` is `all-minilm-l6-v2`),
    /// or the first (default) model for `None`.
    pub fn model(&self, name: Option<&str>) -> Result<&ModelInfo> {
        match name {
            None => self.models.first().context("testnet has no model"),
            Some(n) => self
                .models
                .iter()
                .find(|m| m.name.eq_ignore_ascii_case(n))
                .with_context(|| {
                    let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                    format!("no model {n:?} in this testnet; it serves {names:?}")
                }),
        }
    }

    /// Waits until every running node answers, sees a peer, reaches `min_height` and (when the
    /// testnet has inference nodes) can route jobs for every model.
    pub fn wait_ready(&self, timeout: Duration, min_height: u64) -> Result<()> {
        let client = Client::new();
        let deadline = Instant::now() + timeout;
        let has_inference = self
            .nodes
            .iter()
            .any(|n| n.role == "inference" && is_ours(n.pid));
        for n in &self.nodes {
            loop {
                let ok = client
                    .get(&format!("{}/v1/status", n.http))
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|r| {
                        r.body["peers"].as_u64().unwrap_or(0) >= 1
                            && r.body["height"].as_u64().unwrap_or(0) >= min_height
                    })
                    .unwrap_or(false)
                    && (!has_inference || self.routes_jobs(&client, &n.http));
                if ok {
                    break;
                }
                if !is_ours(n.pid) {
                    bail!(
                        "node {} (pid {}) exited; the end of {}/node.log:\n{}",
                        n.name,
                        n.pid,
                        n.home.display(),
                        tail(&n.home.join("node.log"), 15)
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} not ready (connected, height ≥ {min_height}) after {timeout:?}",
                        n.name
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Whether the node at `http` knows an inference node for every model.
    fn routes_jobs(&self, client: &Client, http: &str) -> bool {
        let Ok(r) = client.get(&format!("{http}/v1/models")) else {
            return false;
        };
        r.body["data"]
            .as_array()
            .is_some_and(|ms| ms.iter().all(|m| m["executors"].as_u64().unwrap_or(0) >= 1))
    }

    /// Last `n` lines of every node's log, for error reports.
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!("--- {} ---\n", node.name));
            out.push_str(&tail(&node.home.join("node.log"), n));
        }
        out
    }

    /// Stops every node by pid.
    pub fn down(&self) {
        for n in &self.nodes {
            let _ = signal(n.pid, libc::SIGTERM);
        }
        for n in &self.nodes {
            stop_pid(n.pid, Duration::from_secs(10));
        }
        if let Some(e) = &self.evm {
            crate::evmnet::stop_anvil(e.anvil_pid, Duration::from_secs(10));
        }
    }

    /// SIGKILLs node `i` (a crash) and waits (up to 10 s) until it is gone, so that a restart
    /// finds its RocksDB lock released.
    pub fn kill(&self, i: usize) {
        let pid = self.nodes[i].pid;
        if signal(pid, libc::SIGKILL) && !wait_gone(pid, Duration::from_secs(10)) {
            tracing::warn!(pid, "node still holds its files 10 s after SIGKILL");
        }
    }

    /// Splits the network: every node blocks every node outside its group (a node in no group
    /// blocks everyone), through its operator endpoint. Connections across are closed at once
    /// and refused until [`Testnet::heal`].
    pub fn partition(&self, groups: &[&[usize]]) -> Result<()> {
        let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
        for (i, node) in self.nodes.iter().enumerate() {
            for (j, other) in self.nodes.iter().enumerate() {
                if i != j && (group_of(i).is_none() || group_of(i) != group_of(j)) {
                    self.set_blocked(node, other, true)?;
                }
            }
        }
        Ok(())
    }

    /// Ends every partition: each node unblocks every other.
    pub fn heal(&self) -> Result<()> {
        for node in &self.nodes {
            for other in &self.nodes {
                if node.peer_id != other.peer_id {
                    self.set_blocked(node, other, false)?;
                }
            }
        }
        Ok(())
    }

    fn set_blocked(&self, node: &NodeInfo, other: &NodeInfo, blocked: bool) -> Result<()> {
        let action = if blocked { "block" } else { "unblock" };
        let url = format!("{}/v1/admin/peers/{}/{action}", node.http, other.peer_id);
        let r = Client::new().post(&url, &serde_json::json!({}))?;
        if r.status != 200 {
            bail!(
                "{}: {action} {}: {} {}",
                node.name,
                other.name,
                r.status,
                r.body
            );
        }
        Ok(())
    }

    /// A new node that is not in the genesis, as a community operator starts one: `proofmesh
    /// init`, this testnet's genesis, the first two validators as bootstrap peers; an inference
    /// node gets a simulated SEV-SNP chip of this testnet's root. It starts and syncs; joining
    /// the validator set or serving jobs takes stake and a registration (transactions).
    /// Returns its index.
    pub fn add_node(&mut self, role: &str) -> Result<usize> {
        let n = self.nodes.iter().filter(|n| n.role == role).count();
        let name = format!("{role}-{n}");
        let home = self.dir.join("nodes").join(&name);
        let ports = free_ports(2)?;
        let init = run_init(
            &self.bin,
            &home,
            role,
            ports[0],
            ports[1],
            &self.dir.join("models"),
        )?;
        let address: Address = init["address"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .context("init printed no address")?;
        let peer_id = init["peer_id"].as_str().unwrap_or_default().to_string();
        std::fs::copy(self.dir.join("genesis.json"), home.join("genesis.json"))?;
        let path = home.join("node.toml");
        let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?)?;
        let bootstrap: Vec<toml::Value> = self
            .nodes
            .iter()
            .take(2)
            .map(|b| toml::Value::String(b.p2p.clone()))
            .collect();
        if let Some(net) = cfg.get_mut("network").and_then(|v| v.as_table_mut()) {
            net.insert("bootstrap".into(), toml::Value::Array(bootstrap));
        }
        if let Ok(filter) = std::env::var("PROOFMESH_NODE_LOG") {
            cfg.insert("log".into(), filter.into());
        }
        if role == "inference" {
            let root = SimRoot::from_json(&std::fs::read_to_string(
                self.dir.join("tee").join("root.json"),
            )?)?;
            let chip = root.issue_chip(TESTNET_TCB)?;
            std::fs::write(home.join("chip.json"), chip.to_json()?)?;
            let mut att = toml::Table::new();
            att.insert("tee".into(), "simulated".into());
            att.insert("chip".into(), "chip.json".into());
            cfg.insert("attestation".into(), toml::Value::Table(att));
        }
        std::fs::write(&path, toml::to_string_pretty(&cfg)?)?;
        let pid = start_node(&self.bin, &home)?;
        self.nodes.push(NodeInfo {
            name,
            role: role.into(),
            http: format!("http://127.0.0.1:{}", ports[0]),
            p2p: format!("/ip4/127.0.0.1/tcp/{}/p2p/{peer_id}", ports[1]),
            peer_id,
            address,
            pid,
            home,
        });
        self.save()?;
        let i = self.nodes.len() - 1;
        let client = Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let target = client.height(&self.nodes[0].http).unwrap_or(0);
        while client.height(&self.nodes[i].http).unwrap_or(0) < target {
            if !is_ours(self.nodes[i].pid) {
                bail!(
                    "{} exited: {}",
                    self.nodes[i].name,
                    tail(&self.nodes[i].home.join("node.log"), 15)
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not sync to height {target}", self.nodes[i].name);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(i)
    }

    /// Restarts validator `i` with the consensus fault `fault` (`double-vote`,
    /// `garbage-proposals`), or without one.
    pub fn set_byzantine(&mut self, i: usize, fault: Option<&str>) -> Result<()> {
        let path = self.nodes[i].home.join("node.toml");
        let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?)?;
        let c = cfg
            .entry("consensus")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .context("[consensus] is not a table")?;
        match fault {
            Some(f) => {
                c.insert("byzantine".into(), f.into());
            }
            None => {
                c.remove("byzantine");
            }
        }
        std::fs::write(&path, toml::to_string_pretty(&cfg)?)?;
        stop_pid(self.nodes[i].pid, Duration::from_secs(10));
        self.restart(i)?;
        // Until it answers again.
        let client = Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.height(&self.nodes[i].http).is_none() {
            if Instant::now() > deadline || !is_ours(self.nodes[i].pid) {
                bail!(
                    "{} did not come back: {}",
                    self.nodes[i].name,
                    tail(&self.nodes[i].home.join("node.log"), 15)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Restarts node `i` on its home dir.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let pid = start_node(&self.bin, &self.nodes[i].home)?;
        self.nodes[i].pid = pid;
        self.save()
    }
}

/// A chain id from a fresh key's entropy, in [100 000, 2^32): clear of the well-known chains'
/// small ids and within every wallet's range.
fn random_chain_id() -> u64 {
    let entropy = chain::PrivateKeySigner::random().address();
    let x = u64::from_be_bytes(entropy.0[..8].try_into().unwrap_or_default());
    100_000 + x % ((1u64 << 32) - 100_000)
}

/// How a testnet's genesis divides the supply, in basis points of 1,000,000,000 OPG. The
/// validators' and inference nodes' stakes and the client's funds come out of the faucet share.
pub const ALLOCATION_BPS: [(&str, u32); 6] = [
    ("ecosystem", 4_000),
    ("team", 1_500),
    ("investors", 1_500),
    ("rewards_pool", 2_000),
    ("community_pool", 500),
    ("testnet_faucet", 500),
];

/// A year, for vesting schedules.
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

/// Parameters of a local testnet: the chain's defaults with periods short enough to watch
/// (blocks come every ~0.3 s).
pub fn testnet_params() -> Params {
    Params {
        epoch_blocks: 20,
        voting_blocks: 30,
        unbonding_blocks: 120,
        evidence_max_age_blocks: 100,
        jail_blocks: 30,
        // An anchor every ~3 s.
        anchor_interval: 10,
        ..Params::default()
    }
}

/// Keys the genesis allocates to besides the nodes: the testnet client, the ecosystem fund
/// (it owns the testnet's models), and the vesting team and investor accounts.
pub struct GenesisKeys {
    pub client: Address,
    pub ecosystem: Address,
    pub team: Address,
    pub investors: Address,
    /// A small account that vests within minutes of genesis (`scenario vesting`).
    pub vesting_demo: Address,
}

/// The vesting demo account: 1,000 OPG from the faucet share, nothing before 45 s after
/// genesis, all after 90 s.
pub const VESTING_DEMO: (u128, u64, u64) = (1_000 * OPG, 45_000, 90_000);

fn make_genesis(
    chain_id: u64,
    genesis_time_ms: u64,
    nodes: &[NodeInfo],
    tee_chips: &std::collections::BTreeMap<Address, chain::B256>,
    keys: &GenesisKeys,
    models: &[ModelInfo],
    tee: TeeParams,
) -> Result<Genesis> {
    let share = |name: &str| -> u128 {
        let bps = ALLOCATION_BPS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, b)| *b);
        TOTAL_SUPPLY / 10_000 * bps as u128
    };
    let validator_stake = 1_000_000 * OPG;
    let node_stake = 10_000 * OPG;
    let client_balance = 1_000_000 * OPG;
    let mut faucet = share("testnet_faucet");
    let mut take = |v: u128| -> Result<u128> {
        faucet = faucet
            .checked_sub(v)
            .ok_or_else(|| anyhow!("the faucet share cannot fund every node"))?;
        Ok(v)
    };
    let mut accounts = Vec::new();
    let mut validators = Vec::new();
    let mut inference = Vec::new();
    for n in nodes {
        let validator = n.role == "validator";
        accounts.push(GenesisAccount {
            address: n.address,
            balance: 0,
            stake: take(if validator {
                validator_stake
            } else {
                node_stake
            })?,
            label: format!("{} stake", n.name),
            vesting: None,
        });
        if validator {
            validators.push(GenesisValidator {
                address: n.address,
                peer_id: n.peer_id.clone(),
                moniker: n.name.clone(),
            });
        } else {
            inference.push(GenesisInferenceNode {
                peer_id: n.peer_id.clone(),
                tee_chip: tee_chips.get(&n.address).copied(),
                ..GenesisInferenceNode::new(n.address)
            });
        }
    }
    let client = take(client_balance)?;
    let plain = |address, balance, label: &str| GenesisAccount {
        address,
        balance,
        stake: 0,
        label: label.into(),
        vesting: None,
    };
    accounts.push(plain(keys.client, client, "testnet client"));
    let (demo, demo_cliff, demo_duration) = VESTING_DEMO;
    accounts.push(GenesisAccount {
        vesting: Some(Vesting {
            start_ms: genesis_time_ms,
            cliff_ms: demo_cliff,
            duration_ms: demo_duration,
            amount: demo,
        }),
        ..plain(
            keys.vesting_demo,
            take(demo)?,
            "vesting demo (45 s cliff, 90 s)",
        )
    });
    let vesting = |amount, cliff_ms, duration_ms| Vesting {
        start_ms: genesis_time_ms,
        cliff_ms,
        duration_ms,
        amount,
    };
    accounts.push(GenesisAccount {
        vesting: Some(vesting(share("team"), YEAR_MS, 4 * YEAR_MS)),
        ..plain(
            keys.team,
            share("team"),
            "team (1-year cliff, 4-year vesting)",
        )
    });
    accounts.push(GenesisAccount {
        vesting: Some(vesting(share("investors"), YEAR_MS / 2, 2 * YEAR_MS)),
        ..plain(
            keys.investors,
            share("investors"),
            "investors (6-month cliff, 2-year vesting)",
        )
    });
    // Rounding of the shares (none with these) goes to the ecosystem fund.
    let pools = chain::Pools {
        rewards: share("rewards_pool"),
        community: share("community_pool"),
        // What the EVM side holds outside the bridge at genesis (evmnet locks the rest there).
        bridge_reserve: crate::evmnet::EVM_CIRCULATING,
        ..chain::Pools::default()
    };
    let allocated: u128 =
        accounts.iter().map(|a| a.balance + a.stake).sum::<u128>() + pools.total() + faucet;
    let ecosystem = TOTAL_SUPPLY
        .checked_sub(allocated)
        .ok_or_else(|| anyhow!("allocations exceed the supply"))?;
    accounts.push(GenesisAccount {
        balance: ecosystem + faucet,
        ..plain(
            keys.ecosystem,
            0,
            "ecosystem fund and the rest of the testnet faucet",
        )
    });
    let genesis = Genesis {
        chain_id,
        genesis_time_ms,
        accounts,
        pools,
        validators,
        inference_nodes: inference,
        models: models
            .iter()
            .map(|m| {
                Ok(ModelEntry {
                    id: m
                        .id
                        .parse()
                        .map_err(|e| anyhow!("model id {}: {e}", m.id))?,
                    name: m.name.clone(),
                    owner: keys.ecosystem,
                    price_per_job: m.price.parse()?,
                    price_per_unit: m.price_per_unit.parse()?,
                    mode: m.mode,
                })
            })
            .collect::<Result<_>>()?,
        params: testnet_params(),
        tee: Some(tee),
        evm: None,
    };
    genesis.validate()?;
    Ok(genesis)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two testnets get different chain ids, so a transfer signed for one does not verify on
    /// the other.
    #[test]
    fn each_testnet_gets_its_own_chain_id() {
        let ids: Vec<u64> = (0..16).map(|_| random_chain_id()).collect();
        assert!(ids.iter().all(|id| (100_000..1 << 32).contains(id)));
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len());
        let key = chain::PrivateKeySigner::random();
        let transfer = chain::UnsignedTx {
            from: key.address(),
            nonce: 0,
            max_fee: 1,
            action: chain::Action::Transfer {
                to: chain::Address::ZERO,
                amount: 1,
            },
        };
        let domain = |chain_id| chain::signing::Domain {
            chain_id,
            salt: chain::B256::ZERO,
            payments: None,
        };
        let signed = transfer.sign(&key, &domain(ids[0])).unwrap();
        assert!(signed.verify(&domain(ids[0])).is_ok());
        assert!(signed.verify(&domain(ids[1])).is_err());
    }

    #[test]
    fn a_killed_process_is_waited_for_until_it_lets_go() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(holds_resources(pid));
        assert!(!is_ours(pid), "sleep is not a proofmesh node");
        // SAFETY: kill(2) on the child just started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        assert!(wait_gone(pid, Duration::from_secs(10)));
        assert!(!holds_resources(pid));
        assert!(!holds_resources(u32::MAX), "no such process");
        // Already reaped by `wait_gone`: nothing is left to wait for.
        assert!(child.wait().is_err());
    }
}
