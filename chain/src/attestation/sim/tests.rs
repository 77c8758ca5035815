use std::sync::OnceLock;

use super::*;
use crate::attestation::{
    AttestationError, Product, SnpPolicy, TeeVerifier, report_data, verify_report,
};
use alloy::primitives::{Address, B256, keccak256};

/// One root per test binary: RSA-4096 key generation takes seconds.
fn root() -> &'static SimRoot {
    static ROOT: OnceLock<SimRoot> = OnceLock::new();
    ROOT.get_or_init(|| SimRoot::generate().unwrap())
}

const TCB: Tcb = Tcb {
    bootloader: 3,
    tee: 0,
    snp: 14,
    microcode: 209,
};
const MEASUREMENT: [u8; 48] = [0x5a; 48];

fn policy() -> SnpPolicy {
    SnpPolicy {
        measurements: vec![MEASUREMENT],
        min_tcb: TCB,
    }
}

fn request(data: [u8; 64]) -> ReportRequest {
    ReportRequest {
        report_data: data,
        measurement: MEASUREMENT,
        debug: false,
    }
}

#[test]
fn a_simulated_report_verifies_with_the_same_code_as_amds() {
    let chip = root().issue_chip(TCB).unwrap();
    let data = [7u8; 64];
    let report = chip.report(&request(data)).unwrap();
    assert_eq!(report.len(), REPORT_LEN);
    let parsed = AttestationReport::from_bytes(&report).unwrap();
    assert_eq!(parsed.version, 3);
    assert_eq!(parsed.sig_algo, 1);
    assert!(!parsed.policy.debug_allowed());
    let roots = root().roots().unwrap();
    let v = verify_report(&report, chip.vcek_der(), &roots, &policy(), Some(&data)).unwrap();
    assert_eq!(v.measurement, MEASUREMENT);
    assert_eq!(v.reported_tcb, TCB);
    assert_eq!(&v.chip_id, chip.chip_id());
    assert_eq!(v.roots, "custom");
    // Two reports of the same data differ (report id) and both verify.
    let again = chip.report(&request(data)).unwrap();
    assert_ne!(again, report);
    assert!(verify_report(&again, chip.vcek_der(), &roots, &policy(), Some(&data)).is_ok());
}

#[test]
fn a_debuggable_guest_is_refused_end_to_end() {
    let chip = root().issue_chip(TCB).unwrap();
    let report = chip
        .report(&ReportRequest {
            debug: true,
            ..request([1; 64])
        })
        .unwrap();
    let roots = root().roots().unwrap();
    assert_eq!(
        verify_report(&report, chip.vcek_der(), &roots, &policy(), None),
        Err(AttestationError::DebugAllowed)
    );
}

#[test]
fn forged_foreign_and_mismatched_chips_are_refused() {
    let chip = root().issue_chip(TCB).unwrap();
    let roots = root().roots().unwrap();
    // The genuine certificate, another key: the signature fails.
    let forged = chip.forged().report(&request([2; 64])).unwrap();
    assert_eq!(
        verify_report(&forged, chip.vcek_der(), &roots, &policy(), None),
        Err(AttestationError::Signature)
    );
    // Under AMD's roots the simulated VCEK does not chain.
    let report = chip.report(&request([2; 64])).unwrap();
    let milan = Roots::product(Product::Milan).unwrap();
    assert!(matches!(
        verify_report(&report, chip.vcek_der(), &milan, &policy(), None),
        Err(AttestationError::Chain { .. })
    ));
    // Another chip's VCEK: named as such.
    let other = root().issue_chip(TCB).unwrap();
    assert!(matches!(
        verify_report(&report, other.vcek_der(), &roots, &policy(), None),
        Err(AttestationError::VcekMismatch(_))
    ));
    // A chip at an older TCB.
    let old = root()
        .issue_chip(Tcb {
            snp: TCB.snp - 1,
            ..TCB
        })
        .unwrap();
    let stale = old.report(&request([2; 64])).unwrap();
    assert!(matches!(
        verify_report(&stale, old.vcek_der(), &roots, &policy(), None),
        Err(AttestationError::StaleTcb { .. })
    ));
    // A guest image off the allowlist.
    let unknown = chip
        .report(&ReportRequest {
            measurement: [0x11; 48],
            ..request([2; 64])
        })
        .unwrap();
    assert!(matches!(
        verify_report(&unknown, chip.vcek_der(), &roots, &policy(), None),
        Err(AttestationError::Measurement(_))
    ));
}

#[test]
fn a_batch_report_proves_each_leaf_and_nothing_else() {
    let chip = root().issue_chip(TCB).unwrap();
    let node = Address::repeat_byte(0x42);
    let verifier = TeeVerifier::new(root().roots().unwrap(), policy());
    for n in [1usize, 2, 5, 16, 64] {
        let leaves: Vec<B256> = (0..n as u64).map(|i| keccak256(i.to_be_bytes())).collect();
        let root_hash = crate::merkle::root(&leaves);
        let report = chip
            .report(&request(report_data(&root_hash, &node)))
            .unwrap();
        for (i, leaf) in leaves.iter().enumerate() {
            let path = crate::merkle::proof(&leaves, i).unwrap();
            let v = verifier
                .verify_leaf(&report, chip.vcek_der(), &path, leaf, &node)
                .unwrap();
            assert_eq!(v.report_data[32..52], node[..]);
            // The same proof for another leaf, another node or a replayed report: refused.
            assert!(matches!(
                verifier.verify_leaf(&report, chip.vcek_der(), &path, &keccak256(b"x"), &node),
                Err(AttestationError::ReportData { .. })
            ));
            assert!(matches!(
                verifier.verify_leaf(&report, chip.vcek_der(), &path, leaf, &Address::ZERO),
                Err(AttestationError::ReportData { .. })
            ));
        }
    }
    let long = vec![B256::ZERO; crate::attestation::MAX_PATH + 1];
    let report = chip.report(&request([0; 64])).unwrap();
    assert_eq!(
        verifier.verify_leaf(&report, chip.vcek_der(), &long, &B256::ZERO, &node),
        Err(AttestationError::PathTooLong(long.len()))
    );
}

#[test]
fn root_and_chip_files_round_trip_and_bad_files_are_refused() {
    let root2 = SimRoot::from_json(&root().to_json().unwrap()).unwrap();
    assert_eq!(root2.roots_pem().unwrap(), root().roots_pem().unwrap());
    let chip = root2.issue_chip(TCB).unwrap();
    let back = SimChip::from_json(&chip.to_json().unwrap()).unwrap();
    let report = back.report(&request([3; 64])).unwrap();
    let roots = root().roots().unwrap();
    assert!(verify_report(&report, chip.vcek_der(), &roots, &policy(), None).is_ok());

    for garbage in ["", "{", "null", "{\"vcek_key\": 1}", "\u{0}\u{ff}"] {
        assert!(matches!(
            SimChip::from_json(garbage),
            Err(AttestationError::Simulation(_))
        ));
        assert!(matches!(
            SimRoot::from_json(garbage),
            Err(AttestationError::Simulation(_))
        ));
    }
    // A chip file whose key is not the certificate's.
    let mut file: serde_json::Value = serde_json::from_str(&chip.to_json().unwrap()).unwrap();
    let other = root().issue_chip(TCB).unwrap();
    let other_file: serde_json::Value = serde_json::from_str(&other.to_json().unwrap()).unwrap();
    file["vcek_key"] = other_file["vcek_key"].clone();
    assert!(
        SimChip::from_json(&file.to_string())
            .unwrap_err()
            .to_string()
            .contains("does not match")
    );
    // A root file with the keys swapped.
    let mut file: serde_json::Value = serde_json::from_str(&root().to_json().unwrap()).unwrap();
    let ark = file["ark_key"].clone();
    file["ark_key"] = file["ask_key"].clone();
    file["ask_key"] = ark;
    assert!(SimRoot::from_json(&file.to_string()).is_err());
}

#[test]
fn measuring_a_file_is_sha384_of_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("image");
    std::fs::write(&p, b"abc").unwrap();
    assert_eq!(
        hex::encode(measure_file(&p).unwrap()),
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
    );
    assert!(measure_file(&dir.path().join("missing")).is_err());
}
