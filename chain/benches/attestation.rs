//! SEV-SNP proof verification cost on one core.
//!
//! * `snp_report/verify_full`: the whole uncached rule on AMD's genuine Milan report and VCEK
//!   (from the `sev` crate's own test data): VCEK chain ARK → ASK → VCEK with RSA-PSS 4096, the
//!   report's ECDSA P-384 signature, the VCEK's extensions, the policy. elem/s = reports/s.
//! * `tee_record/batch_N`: what a validator pays per record of a batch of N records proven by
//!   one report, in steady state (the chip's VCEK chain already verified and cached; each batch a
//!   fresh report): one signature check per batch, then per record a Merkle path and the
//!   binding. elem/s = records/s. Reports come from a simulated chip (same format, same code).
//!
//! `cargo bench --workspace --profile dev --bench attestation` (the crypto crates are built at
//! opt-level 3 in the dev profile; a release bench would first compile RocksDB).

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, keccak256};
use chain::attestation::sim::{ReportRequest, SimRoot};
use chain::attestation::{Product, Roots, SnpPolicy, Tcb, TeeVerifier, report_data, verify_report};
#[path = "../src/attestation/sev_test_data.rs"]
mod sev_data;
use sev_data::sev_test_data;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn full_report(c: &mut Criterion) {
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

fn batched_records(c: &mut Criterion) {
    let tcb = Tcb {
        bootloader: 3,
        tee: 0,
        snp: 14,
        microcode: 209,
    };
    let root = SimRoot::generate().expect("simulated root");
    let chip = root.issue_chip(tcb).expect("chip");
    let measurement = [0x5a; 48];
    let verifier = TeeVerifier::new(
        root.roots().expect("roots"),
        SnpPolicy {
            measurements: vec![measurement],
            min_tcb: tcb,
        },
    );
    let node = Address::repeat_byte(0x11);
    let mut group = c.benchmark_group("tee_record");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    let mut counter = 0u64;
    for n in [1usize, 16, 64] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("batch_{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Untimed: a fresh batch and its report, as an inference node makes them.
                    let leaves: Vec<B256> = (0..n)
                        .map(|_| {
                            counter += 1;
                            keccak256(counter.to_be_bytes())
                        })
                        .collect();
                    let paths = chain::merkle::proofs(&leaves);
                    let data = report_data(&chain::merkle::root(&leaves), &node);
                    let report = chip
                        .report(&ReportRequest {
                            report_data: data,
                            measurement,
                            debug: false,
                        })
                        .expect("report");
                    let started = Instant::now();
                    for (leaf, path) in leaves.iter().zip(&paths) {
                        let ok = verifier.verify_leaf(&report, chip.vcek_der(), path, leaf, &node);
                        assert!(ok.is_ok());
                    }
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, full_report, batched_records);
criterion_main!(benches);
