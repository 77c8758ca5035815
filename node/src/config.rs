//! `node.toml`: the node's configuration. Every field has a default; paths are relative to the
//! node's home directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What this node does. Every node is a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Stakes, verifies records, runs consensus.
    Validator,
    /// Serves models and proves runs.
    Inference,
    /// Takes client jobs only.
    Gateway,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Human-readable node name, used in logs.
    pub name: String,
    pub roles: Vec<Role>,
    /// Account key (secp256k1, hex), the node's on-chain identity.
    pub account_key: PathBuf,
    /// libp2p identity (ed25519, protobuf encoding).
    pub p2p_key: PathBuf,
    pub genesis: PathBuf,
    /// RocksDB directory.
    pub data_dir: PathBuf,
    pub network: NetworkSection,
    pub http: HttpSection,
    pub inference: InferenceSection,
    pub attestation: AttestationSection,
    pub consensus: ConsensusSection,
    pub evm: EvmSection,
    /// `tracing` filter, e.g. "info" or "info,actors=debug".
    pub log: String,
}

/// The EVM chain the network settles on (anvil locally, Base in production: only the URL, the
/// chain id and the addresses change). Without `rpc_url` a node neither anchors nor takes
/// x402 payments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvmSection {
    /// JSON-RPC endpoint, e.g. `http://127.0.0.1:8545`; empty: no EVM.
    pub rpc_url: String,
    pub chain_id: u64,
    /// The Settlement contract's address (0x + 40 hex digits).
    pub settlement: String,
    /// The OPG token's address.
    pub opg: String,
    /// How often a validator checks whether an anchor is due.
    pub anchor_tick_ms: u64,
    /// How much later each next validator in turn posts a due anchor (and credits a bridge
    /// deposit).
    pub anchor_stagger_ms: u64,
    pub rpc_timeout_ms: u64,
    /// EVM blocks a bridge deposit must be under before validators credit it (its state is
    /// read that far below the tip, so a shallower reorganisation changes nothing credited).
    pub confirmations: u64,
}

impl Default for EvmSection {
    fn default() -> Self {
        EvmSection {
            rpc_url: String::new(),
            chain_id: 0,
            settlement: String::new(),
            opg: String::new(),
            anchor_tick_ms: 2_000,
            anchor_stagger_ms: 5_000,
            rpc_timeout_ms: 10_000,
            confirmations: 10,
        }
    }
}

impl EvmSection {
    pub fn enabled(&self) -> bool {
        !self.rpc_url.is_empty()
    }

    /// The settlement contract's address, when configured.
    pub fn settlement(&self) -> Result<chain::Address, String> {
        self.settlement.parse().map_err(|e| {
            format!(
                "evm.settlement {:?} is not an address: {e}",
                self.settlement
            )
        })
    }

    fn check(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !(self.rpc_url.starts_with("http://") || self.rpc_url.starts_with("https://")) {
            return Err(format!(
                "evm.rpc_url {:?} must be an http:// or https:// URL",
                self.rpc_url
            ));
        }
        if self.chain_id == 0 {
            return Err("evm.chain_id must be set with evm.rpc_url".into());
        }
        self.settlement()?;
        if !self.opg.is_empty() {
            self.opg
                .parse::<chain::Address>()
                .map_err(|e| format!("evm.opg {:?} is not an address: {e}", self.opg))?;
        }
        if self.anchor_tick_ms < 100 || self.rpc_timeout_ms < 100 {
            return Err("evm.anchor_tick_ms and evm.rpc_timeout_ms are at least 100".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    /// Multiaddrs to listen on; port 0 picks a free port.
    pub listen: Vec<String>,
    /// Peers to dial first: `/ip4/…/tcp/…/p2p/<peer id>`.
    pub bootstrap: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Address of the HTTP API; port 0 picks a free port.
    pub listen: String,
    /// Most open connections (all workers together); beyond it new ones wait in the kernel's
    /// accept queue.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, then its body (each), in ms;
    /// a slower client gets 408 and its connection is closed.
    pub request_timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceSection {
    /// Directory with one subdirectory per model. Validators need it to re-execute.
    pub models_dir: PathBuf,
    /// Where models run: `"cpu"` or `"cuda"` (falls back to the CPU, with a warning, when no
    /// GPU is usable). Outputs are bit-identical either way.
    pub backend: String,
    /// The CPU kernels: `"auto"` (the fastest this CPU runs), `"avx512"`, `"avx2"` or
    /// `"portable"`. Every choice gives the same bits; forcing one checks it or works around a
    /// CPU that misreports its features.
    pub cpu_kernel: String,
    /// Cores one inference batch may use on the CPU backend (0: all of them). All CPU work of
    /// the process shares one pool of workers, one per core, so a batch and a re-execution
    /// running together share the cores instead of oversubscribing them.
    pub threads: usize,
    /// Cores one re-execution of a validator's verifier may use (0: all of them); see
    /// `threads`.
    pub verify_threads: usize,
    /// Testnet fault injection: sign wrong output hashes. Never set this on a real node.
    pub faulty: bool,
    /// Fetch the registered models missing from `models_dir` from the peers that provide
    /// them (`/proofmesh/model/1`), each file checked against the model id's manifest.
    pub fetch_models: bool,
    /// Testnet fault injection: serve model files to peers with a byte flipped in each chunk.
    /// Never set this on a real node.
    pub corrupt_model_files: bool,
}

/// Which TEE proves this inference node's runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeeKind {
    /// No TEE: models whose mode includes `tee` are not served.
    None,
    /// SEV-SNP hardware: reports from /dev/sev-guest.
    Snp,
    /// A chip of a simulated root (testnets): `chip` names its file.
    Simulated,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttestationSection {
    pub tee: TeeKind,
    /// Simulated TEE: the chip file from `proofmesh attest simulate chip`.
    pub chip: PathBuf,
    /// SEV-SNP: the chip's VCEK certificate (DER). Empty: taken from each extended report.
    pub vcek: PathBuf,
    /// Simulated TEE: the launch measurement to report (96 hex digits). Empty: SHA-384 of this
    /// executable, so a changed binary is off the genesis allowlist.
    pub measurement: String,
    /// A batch's first record waits at most this long for others...
    pub batch_window_ms: u64,
    /// ...and a batch this full is proven at once.
    pub batch_max: usize,
    /// Testnet fault injection: "forge" (reports not signed by the chip) or "replay" (the first
    /// proof attached to every record). Never set this on a real node.
    pub byzantine: Option<actors::attestation::Byzantine>,
}

impl AttestationSection {
    /// The configured measurement; `None` when empty (the simulated TEE then measures its
    /// executable).
    pub fn measurement(&self) -> Result<Option<[u8; 48]>, String> {
        if self.measurement.is_empty() {
            return Ok(None);
        }
        chain::attestation::parse_measurement(&self.measurement)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "attestation.measurement {:?} is not 96 hex digits",
                    self.measurement
                )
            })
    }
}

impl Default for AttestationSection {
    fn default() -> Self {
        AttestationSection {
            tee: TeeKind::None,
            chip: "chip.json".into(),
            vcek: PathBuf::new(),
            measurement: String::new(),
            batch_window_ms: 50,
            batch_max: 64,
            byzantine: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsensusSection {
    pub timeout_propose_ms: u64,
    pub timeout_prevote_ms: u64,
    pub timeout_precommit_ms: u64,
    /// Added to each timeout per round.
    pub timeout_delta_ms: u64,
    /// Testnet fault injection: "garbage-proposals" publishes bytes no peer can decode in
    /// place of each of this validator's proposals. Never set this on a real node.
    pub byzantine: Option<actors::consensus::Byzantine>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "proofmesh".into(),
            roles: vec![Role::Gateway],
            account_key: "account.key".into(),
            p2p_key: "p2p.key".into(),
            genesis: "genesis.json".into(),
            data_dir: "data".into(),
            network: NetworkSection::default(),
            http: HttpSection::default(),
            inference: InferenceSection::default(),
            attestation: AttestationSection::default(),
            consensus: ConsensusSection::default(),
            evm: EvmSection::default(),
            log: "info".into(),
        }
    }
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            listen: vec!["/ip4/0.0.0.0/tcp/7400".into()],
            bootstrap: Vec::new(),
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "127.0.0.1:7480".into(),
            max_connections: 1024,
            request_timeout_ms: 10_000,
        }
    }
}

impl InferenceSection {
    fn check(&self) -> Result<(), String> {
        if !matches!(self.backend.as_str(), "cpu" | "cuda") {
            return Err(format!(
                "inference.backend {:?}: the backends are \"cpu\" and \"cuda\"",
                self.backend
            ));
        }
        self.cpu_kernel()
            .map(|_| ())
            .map_err(|e| format!("inference.cpu_kernel: {e}"))
    }

    /// The forced CPU kernel variant, or `None` for `"auto"`.
    pub fn cpu_kernel(&self) -> Result<Option<kernels::CpuKernel>, kernels::CpuKernelError> {
        match self.cpu_kernel.as_str() {
            "auto" => Ok(None),
            name => name.parse().map(Some),
        }
    }
}

impl Default for InferenceSection {
    fn default() -> Self {
        InferenceSection {
            models_dir: "models".into(),
            backend: "cpu".into(),
            cpu_kernel: "auto".into(),
            threads: 0,
            verify_threads: 0,
            faulty: false,
            fetch_models: true,
            corrupt_model_files: false,
        }
    }
}

impl Default for ConsensusSection {
    fn default() -> Self {
        ConsensusSection {
            timeout_propose_ms: 1000,
            timeout_prevote_ms: 500,
            timeout_precommit_ms: 500,
            timeout_delta_ms: 500,
            byzantine: None,
        }
    }
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid node config: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    pub fn path(home: &Path) -> PathBuf {
        home.join("node.toml")
    }

    /// Reads and checks `HOME/node.toml`.
    pub fn load(home: &Path) -> Result<Config, ConfigError> {
        let path = Self::path(home);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        config
            .check()
            .map_err(|message| ConfigError::Invalid { path, message })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.roles.is_empty() {
            return Err(
                "roles is empty: give at least one of validator, inference, gateway".into(),
            );
        }
        for a in self.network.listen.iter().chain(&self.network.bootstrap) {
            a.parse::<libp2p::Multiaddr>()
                .map_err(|e| format!("{a:?} is not a multiaddr: {e}"))?;
        }
        self.http
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("http.listen {:?} is not host:port: {e}", self.http.listen))?;
        if self.http.max_connections < 2 {
            return Err("http.max_connections must be at least 2 (one per worker)".into());
        }
        if !(100..=600_000).contains(&self.http.request_timeout_ms) {
            return Err("http.request_timeout_ms must be 100 to 600000".into());
        }
        let a = &self.attestation;
        if a.batch_max == 0 || a.batch_max > 1 << chain::attestation::MAX_PATH {
            return Err(format!(
                "attestation.batch_max must be 1 to {}",
                1 << chain::attestation::MAX_PATH
            ));
        }
        if a.batch_window_ms > 10_000 {
            return Err("attestation.batch_window_ms is at most 10000".into());
        }
        a.measurement()?;
        let c = &self.consensus;
        if c.timeout_propose_ms == 0 || c.timeout_prevote_ms == 0 || c.timeout_precommit_ms == 0 {
            return Err("consensus timeouts must be positive".into());
        }
        self.evm.check()?;
        self.inference.check()?;
        Ok(())
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join("node.toml"), text).unwrap();
    }

    #[test]
    fn default_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config {
            roles: vec![Role::Validator, Role::Inference],
            ..Config::default()
        };
        write(dir.path(), &c.to_toml());
        assert_eq!(Config::load(dir.path()).unwrap(), c);
    }

    #[test]
    fn malformed_configs_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Config::load(dir.path()),
            Err(ConfigError::Read { .. })
        ));
        for (text, needle) in [
            (
                "roles = [\"validator\"\nname = 1",
                "not a valid node config",
            ),
            ("roles = [\"wizard\"]", "wizard"),
            ("colour = \"blue\"", "colour"),
            ("roles = []", "roles is empty"),
            (
                "[network]\nlisten = [\"not an address\"]",
                "not a multiaddr",
            ),
            ("[http]\nlisten = \"localhost\"", "http.listen"),
            ("[http]\nmax_connections = 0", "max_connections"),
            ("[http]\nrequest_timeout_ms = 5", "request_timeout_ms"),
            ("[consensus]\ntimeout_propose_ms = 0", "positive"),
            (
                "[inference]\nbackend = \"tpu\"",
                "inference.backend \"tpu\"",
            ),
            (
                "[inference]\ncpu_kernel = \"sse9\"",
                "unknown cpu kernel \"sse9\"",
            ),
            ("[attestation]\ntee = \"sgx\"", "sgx"),
            ("[attestation]\nbatch_max = 0", "batch_max"),
            ("[attestation]\nmeasurement = \"abc\"", "measurement"),
            ("[attestation]\nbyzantine = \"lie\"", "lie"),
            ("[evm]\nrpc_url = \"localhost:8545\"", "http:// or https://"),
            ("[evm]\nrpc_url = \"http://127.0.0.1:8545\"", "evm.chain_id"),
            (
                "[evm]\nrpc_url = \"http://127.0.0.1:8545\"\nchain_id = 1\nsettlement = \"0x12\"",
                "evm.settlement",
            ),
            (
                "[evm]\nrpc_url = \"http://127.0.0.1:8545\"\nchain_id = 1\nsettlement = \"0x1111111111111111111111111111111111111111\"\nopg = \"nope\"",
                "evm.opg",
            ),
            ("\u{0}\u{1}garbage", "not a valid node config"),
        ] {
            write(dir.path(), text);
            let err = Config::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    /// The default config, mutated byte by byte as a damaged or hostile file would be: always a
    /// config or a clear error, never a panic.
    #[test]
    fn mutated_configs_load_or_fail_cleanly() {
        use chain::fuzzing::{Rng, mutate};
        let dir = tempfile::tempdir().unwrap();
        let text = Config {
            roles: vec![Role::Validator, Role::Inference],
            ..Config::default()
        }
        .to_toml();
        let mut rng = Rng(0x00c0_ff1e);
        for _ in 0..300 {
            let bytes = mutate(text.as_bytes(), text.as_bytes(), &mut rng);
            std::fs::write(dir.path().join("node.toml"), &bytes).unwrap();
            if let Err(e) = Config::load(dir.path()) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
}
