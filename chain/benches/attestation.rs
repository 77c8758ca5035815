//! SEV-SNP report verification cost on one core: the whole rule (VCEK chain ARK → ASK → VCEK
//! with RSA-PSS 4096, then the report's ECDSA P-384 signature and the policy checks).
//!
//! `cargo bench -p chain --bench attestation`; elem/s = reports/s. Data: AMD's genuine Milan
//! report and VCEK from the `sev` crate's own test data.

use chain::attestation::{Product, Roots, SnpPolicy, Tcb, verify_report};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn sev_test_data(name: &str) -> Vec<u8> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "sev"))
        .and_then(|p| p["manifest_path"].as_str())
        .expect("sev in the dependency graph")
        .to_string();
    let dir = std::path::Path::new(&manifest).parent().expect("crate dir");
    std::fs::read(dir.join("tests/certs_data").join(name)).expect("sev test data")
}

fn attestation(c: &mut Criterion) {
    let hex_report = sev_test_data("report_milan.hex");
    let report = hex::decode(String::from_utf8_lossy(&hex_report).trim()).expect("hex");
    let vcek = sev_test_data("vcek_milan.der");
    let roots = Roots::product(Product::Milan).expect("milan roots");
    // Admit the report's own measurement: the benchmark measures the work, not a refusal.
    let measurement: [u8; 48] = report[0x90..0xC0].try_into().expect("48 bytes");
    let policy = SnpPolicy {
        measurements: vec![measurement],
        min_tcb: Tcb::default(),
    };
    assert!(verify_report(&report, &vcek, &roots, &policy, None).is_ok());
    let mut group = c.benchmark_group("snp_report");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_full", |b| {
        b.iter(|| verify_report(&report, &vcek, &roots, &policy, None))
    });
    group.finish();
}

criterion_group!(benches, attestation);
criterion_main!(benches);
