//! Shared setup of the fuzz targets: the outside inputs that are not network messages.

use std::sync::OnceLock;

use chain::attestation::sim::{ReportRequest, SimChip};
use chain::attestation::{Roots, SnpPolicy, Tcb, TeeVerifier};

/// A simulated chip certified by a simulated AMD root of trust (fixed files, made once by
/// `proofmesh attest simulate root` and `… chip`, so a crash found once replays anywhere), a
/// verifier that trusts the root and admits the measurement below, and one genuine report of
/// that chip.
pub struct Snp {
    pub chip: SimChip,
    pub verifier: TeeVerifier,
    pub report: Vec<u8>,
    pub report_data: [u8; 64],
}

const MEASUREMENT: [u8; 48] = [0x5a; 48];

pub fn snp() -> &'static Snp {
    static SNP: OnceLock<Snp> = OnceLock::new();
    SNP.get_or_init(|| {
        let build = || -> Result<Snp, chain::attestation::AttestationError> {
            let roots = Roots::from_pem(include_bytes!("../fixtures/roots.pem"))?;
            let chip = SimChip::from_json(include_str!("../fixtures/chip.json"))?;
            let report_data = [7u8; 64];
            let report = chip.report(&ReportRequest {
                report_data,
                measurement: MEASUREMENT,
                debug: false,
            })?;
            let policy = SnpPolicy {
                measurements: vec![MEASUREMENT],
                min_tcb: Tcb::default(),
            };
            Ok(Snp {
                verifier: TeeVerifier::new(roots, policy),
                chip,
                report,
                report_data,
            })
        };
        // The fixture is ours, not fuzz input: failing to build it is a bug in the harness.
        build().unwrap_or_else(|e| panic!("simulated SEV-SNP fixture: {e}"))
    })
}

/// Valid inputs of the targets defined in this crate (the network targets have
/// `actors::fuzz::Target::seeds`).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "snp_report" => vec![snp().report.clone()],
        "snp_vcek" => vec![snp().chip.vcek_der().to_vec()],
        // A one-layer seeded Llama (about 45 KB, under the fuzzer's input limit).
        "gguf" => vec![kernels::seeded_llama_gguf(1, 1)],
        // A key of the fuzz domain, and one naming the most models a grant may.
        "api_key" => [0, chain::record::MAX_GRANT_MODELS]
            .into_iter()
            .filter_map(|n| {
                let client = chain::signing::seeded_key(5, 1);
                let models = vec![chain::ModelId([1; 32]); n];
                chain::apikey::ApiKey::create(&client, 10, 4_000_000_000, models, &domain()).ok()
            })
            .map(|k| k.encode().into_bytes())
            .collect(),
        "tx_json" => actors::fuzz::Target::Tx
            .seeds()
            .iter()
            .filter_map(|b| actors::protocol::decode_tx(b).ok())
            .filter_map(|tx| serde_json::to_vec(&tx).ok())
            .collect(),
        name => actors::fuzz::Target::from_name(name)
            .map(|t| t.seeds())
            .unwrap_or_default(),
    }
}

/// The signing domain the targets check signatures under (a fixed test network).
pub fn domain() -> chain::signing::Domain {
    chain::signing::Domain {
        chain_id: 7,
        salt: chain::B256::repeat_byte(7),
        payments: None,
    }
}

/// Called once when a target starts: with `PROOFMESH_FUZZ_SEEDS=<dir>` in the environment,
/// writes `target`'s valid inputs into `<dir>` (libFuzzer reads its corpus directories after
/// this), so every run starts from messages that pass the decoders.
pub fn init(target: &str) {
    let Some(dir) = std::env::var_os("PROOFMESH_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("seeds: {}: {e}", dir.display());
        return;
    }
    for (i, seed) in seeds(target).iter().enumerate() {
        let path = dir.join(format!("seed-{target}-{i}"));
        if let Err(e) = std::fs::write(&path, seed) {
            eprintln!("seeds: {}: {e}", path.display());
        }
    }
}
