//! SEV-SNP report verification cost on one core: the whole rule (VCEK chain ARK → ASK → VCEK
//! with RSA-PSS 4096, then the report's ECDSA P-384 signature and the policy checks).
//!
//! `cargo bench -p chain --bench attestation`; elem/s = reports/s. Data: AMD's genuine Milan
//! report and VCEK from the `sev` crate's own test data.

use chain::attestation::{Product, Roots, SnpPolicy, Tcb, verify_report};
#[path = "../src/attestation/sev_test_data.rs"]
mod sev_data;
use sev_data::sev_test_data;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

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
