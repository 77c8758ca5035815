use super::*;

#[path = "sev_test_data.rs"]
mod sev_data;
use sev_data::sev_test_data;

fn milan_report() -> Vec<u8> {
    let hex_text = sev_test_data("report_milan.hex");
    hex::decode(String::from_utf8(hex_text).unwrap().trim()).unwrap()
}

fn milan() -> Roots {
    Roots::product(Product::Milan).unwrap()
}

/// The policy that admits the genuine report: its own measurement and TCB.
fn admitting(report: &[u8]) -> (SnpPolicy, [u8; 64]) {
    let parsed = AttestationReport::from_bytes(report).unwrap();
    let policy = SnpPolicy {
        measurements: vec![[0x11; 48], parsed.measurement],
        min_tcb: tcb(&parsed.reported_tcb),
    };
    (policy, parsed.report_data)
}

#[test]
fn the_genuine_milan_report_verifies() {
    let report = milan_report();
    let vcek = sev_test_data("vcek_milan.der");
    let (policy, data) = admitting(&report);
    let v = verify_report(&report, &vcek, &milan(), &policy, Some(&data)).unwrap();
    assert_eq!(v.roots, "milan");
    assert_eq!(v.report_data, data);
    assert_eq!(v.measurement, policy.measurements[1]);
    // Without a report_data expectation too.
    assert!(verify_report(&report, &vcek, &milan(), &policy, None).is_ok());
}

/// Every byte of the signed part, one bit flipped: refused each time, never a panic. Bits the
/// parser ignores (reserved fields) are caught because the signature covers the raw bytes.
#[test]
fn one_flipped_bit_anywhere_in_the_signed_part_is_refused() {
    let report = milan_report();
    let vcek = sev_test_data("vcek_milan.der");
    let (policy, data) = admitting(&report);
    let roots = milan();
    let mut signature_errors = 0;
    for byte in 0..SIGNED_LEN {
        let mut bad = report.clone();
        bad[byte] ^= 1 << (byte % 8);
        match verify_report(&bad, &vcek, &roots, &policy, Some(&data)) {
            Ok(_) => panic!("flipped bit in byte {byte:#x} accepted"),
            Err(AttestationError::Signature) => signature_errors += 1,
            // Flips in the chip id or reported TCB contradict the VCEK's extensions.
            Err(AttestationError::Malformed(_)) | Err(AttestationError::VcekMismatch(_)) => {}
            Err(e) => panic!("byte {byte:#x}: unexpected {e}"),
        }
    }
    // The rest the parser itself refuses (reserved must-be-zero bits, version fields) or the
    // VCEK's hwID/TCB extensions contradict. Either way nothing gets past.
    assert!(signature_errors >= SIGNED_LEN / 2, "{signature_errors}");
    // And in the signature itself.
    for byte in [SIG_R, SIG_R + 47, SIG_S, SIG_S + 20] {
        let mut bad = report.clone();
        bad[byte] ^= 0x40;
        assert_eq!(
            verify_report(&bad, &vcek, &roots, &policy, Some(&data)),
            Err(AttestationError::Signature)
        );
    }
}

#[test]
fn another_products_roots_are_refused() {
    let report = milan_report();
    let vcek = sev_test_data("vcek_milan.der");
    let (policy, data) = admitting(&report);
    for product in [Product::Genoa, Product::Turin] {
        let roots = Roots::product(product).unwrap();
        match verify_report(&report, &vcek, &roots, &policy, Some(&data)) {
            Err(AttestationError::Chain { roots, .. }) => assert_ne!(roots, "milan"),
            other => panic!("{product:?}: {other:?}"),
        }
    }
}

#[test]
fn a_vcek_of_another_chip_is_refused() {
    let report = milan_report();
    let (policy, data) = admitting(&report);
    // A genuine Turin VCEK: another chip (and generation). Under Milan roots it does not chain;
    // under Turin roots it chains, and its hwID names another chip than the report's.
    let turin_vcek = sev_test_data("vcek_turin.der");
    assert!(matches!(
        verify_report(&report, &turin_vcek, &milan(), &policy, Some(&data)),
        Err(AttestationError::Chain { .. })
    ));
    let turin = Roots::product(Product::Turin).unwrap();
    match verify_report(&report, &turin_vcek, &turin, &policy, Some(&data)) {
        Err(AttestationError::VcekMismatch(m)) => assert!(m.contains("chip"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// A VCEK whose algorithm identifier outside the signed part was edited is refused: the input
/// libFuzzer found (`scripts/fuzz`, target `snp_vcek`) changed one byte of the MGF1 hash OID in
/// the outer RSA-PSS parameters, and the certificate still verified.
#[test]
fn a_vcek_with_another_outer_signature_algorithm_is_refused() {
    use x509_cert::der::Encode;
    let vcek_der = sev_test_data("vcek_milan.der");
    assert!(trust_vcek(&vcek_der, &milan()).is_ok());
    let genuine = x509_cert::Certificate::from_der(&vcek_der).unwrap();
    // The same certificate, its outer identifier's parameters with one byte changed inside an
    // OID (still valid DER).
    let outer = genuine.signature_algorithm.to_der().unwrap();
    let sha384 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    let at = last_position(&outer, &sha384);
    let mut edited_outer = outer.clone();
    edited_outer[at + 3] = 0x31;
    let mut edited = vcek_der.clone();
    let start = last_position(&edited, &outer);
    edited[start..start + outer.len()].copy_from_slice(&edited_outer);
    let reparsed = x509_cert::Certificate::from_der(&edited).expect("still a certificate");
    assert_ne!(
        reparsed.signature_algorithm,
        reparsed.tbs_certificate.signature
    );
    assert_bad_vcek(&edited, "signature algorithm");
}

/// Where `needle` last occurs in `haystack`.
fn last_position(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap_or_else(|| panic!("{} not found", hex::encode(needle)))
}

/// `vcek_der` is refused as a bad VCEK, for a reason that mentions `why`.
fn assert_bad_vcek(vcek_der: &[u8], why: &str) {
    match trust_vcek(vcek_der, &milan()) {
        Err(AttestationError::BadVcek(m)) => assert!(m.contains(why), "{m}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("an edited VCEK was trusted ({why})"),
    }
}

/// The genuine report with a byte set in the signature area's reserved tail (after R and S) is
/// refused: it is not the report that was signed, though its R and S verify.
#[test]
fn a_report_with_bytes_in_the_reserved_signature_area_is_refused() {
    let report = milan_report();
    let vcek_der = sev_test_data("vcek_milan.der");
    let (policy, data) = admitting(&report);
    assert!(verify_report(&report, &vcek_der, &milan(), &policy, Some(&data)).is_ok());
    for at in [SIG_S + 72, REPORT_LEN - 1] {
        let mut edited = report.clone();
        edited[at] = 1;
        assert!(matches!(
            verify_report(&edited, &vcek_der, &milan(), &policy, Some(&data)),
            Err(AttestationError::Signature)
        ));
    }
}

/// A VCEK whose signature bit string claims unused bits (DER allows it when those bits are
/// zero; the genuine Milan VCEK's signature ends in four zero bits) is refused: the octets are
/// the same, so it verified before.
#[test]
fn a_vcek_whose_signature_claims_unused_bits_is_refused() {
    let vcek_der = sev_test_data("vcek_milan.der");
    // RSA-4096 signature: BIT STRING of 513 octets, the first the count of unused bits.
    let header = [0x03, 0x82, 0x02, 0x01, 0x00];
    let at = last_position(&vcek_der, &header) + 4;
    assert_eq!(at + 513, vcek_der.len());
    assert_eq!(vcek_der.last(), Some(&0x10));
    for unused in [1u8, 4] {
        let mut edited = vcek_der.clone();
        edited[at] = unused;
        assert_bad_vcek(&edited, "unused bits");
    }
}

/// The genuine VCEK names its chip (hwID) and TCB in AMD's extensions; both match the genuine
/// report, and a report claiming another chip or TCB is refused by name before the signature.
#[test]
fn the_vceks_extensions_must_match_the_report() {
    let report = milan_report();
    let vcek_der = sev_test_data("vcek_milan.der");
    let vcek = trust_vcek(&vcek_der, &milan()).unwrap();
    let parsed = AttestationReport::from_bytes(&report[..]).unwrap();
    assert_eq!(vcek.hw_id.as_deref(), Some(&parsed.chip_id[..]));
    assert_eq!(vcek.spl.len(), 4);
    check_vcek_claims(&vcek, &parsed).unwrap();
    let mut other_chip = parsed;
    other_chip.chip_id[5] ^= 1;
    assert!(matches!(
        check_vcek_claims(&vcek, &other_chip),
        Err(AttestationError::VcekMismatch(m)) if m.contains("chip")
    ));
    let mut other_tcb = parsed;
    other_tcb.reported_tcb.snp += 1;
    assert!(matches!(
        check_vcek_claims(&vcek, &other_tcb),
        Err(AttestationError::VcekMismatch(m)) if m.contains("snp")
    ));
}

#[test]
fn the_cached_verifier_gives_the_same_answers() {
    let report = milan_report();
    let vcek = sev_test_data("vcek_milan.der");
    let (policy, data) = admitting(&report);
    let v = TeeVerifier::new(milan(), policy.clone());
    for _ in 0..2 {
        assert_eq!(
            v.verify(&report, &vcek, Some(&data)),
            verify_report(&report, &vcek, &milan(), &policy, Some(&data))
        );
        let mut bad = report.clone();
        bad[0x90] ^= 1; // report_data, under the signature
        assert_eq!(
            v.verify(&bad, &vcek, None),
            Err(AttestationError::Signature)
        );
        let mut other = data;
        other[63] ^= 1;
        assert!(matches!(
            v.verify(&report, &vcek, Some(&other)),
            Err(AttestationError::ReportData { .. })
        ));
    }
    assert!(matches!(
        v.verify(&report, &sev_test_data("vcek_turin.der"), None),
        Err(AttestationError::Chain { .. })
    ));
}

#[test]
fn truncated_or_garbage_input_is_malformed() {
    let report = milan_report();
    let vcek = sev_test_data("vcek_milan.der");
    let (policy, data) = admitting(&report);
    let roots = milan();
    for len in [0, 1, 0x2A0, REPORT_LEN - 1] {
        assert!(matches!(
            verify_report(&report[..len], &vcek, &roots, &policy, Some(&data)),
            Err(AttestationError::Malformed(_))
        ));
    }
    let mut long = report.clone();
    long.push(0);
    assert!(matches!(
        verify_report(&long, &vcek, &roots, &policy, Some(&data)),
        Err(AttestationError::Malformed(_))
    ));
    let mut seed = 0x243f6a8885a308d3u64;
    let mut garbage = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for _ in 0..20 {
        assert!(verify_report(&garbage(REPORT_LEN), &vcek, &roots, &policy, None).is_err());
        assert!(matches!(
            verify_report(&report, &garbage(1200), &roots, &policy, None),
            Err(AttestationError::BadVcek(_))
        ));
    }
    for cut in [0, 10, vcek.len() / 2, vcek.len() - 1] {
        assert!(matches!(
            verify_report(&report, &vcek[..cut], &roots, &policy, None),
            Err(AttestationError::BadVcek(_))
        ));
    }
}

#[test]
fn policy_checks_each_refuse_with_their_own_error() {
    let report = milan_report();
    let vcek = sev_test_data("vcek_milan.der");
    let (policy, data) = admitting(&report);
    let roots = milan();

    let off_list = SnpPolicy {
        measurements: vec![[0x11; 48]],
        ..policy.clone()
    };
    assert!(matches!(
        verify_report(&report, &vcek, &roots, &off_list, Some(&data)),
        Err(AttestationError::Measurement(_))
    ));

    let mut newer = policy.min_tcb;
    newer.snp = newer.snp.saturating_add(1);
    let stale = SnpPolicy {
        min_tcb: newer,
        ..policy.clone()
    };
    match verify_report(&report, &vcek, &roots, &stale, Some(&data)) {
        Err(AttestationError::StaleTcb { reported, min }) => {
            assert_eq!(min, newer);
            assert!(!reported.at_least(&min));
        }
        other => panic!("{other:?}"),
    }

    let mut other_data = data;
    other_data[0] ^= 1;
    assert!(matches!(
        verify_report(&report, &vcek, &roots, &policy, Some(&other_data)),
        Err(AttestationError::ReportData { .. })
    ));

    // A debuggable guest. The genuine report forbids debugging and any edit breaks its
    // signature, so the rule is checked on the parsed report (end to end in `sim::tests`, where
    // the simulated TEE signs such a report).
    let mut parsed = AttestationReport::from_bytes(&report[..]).unwrap();
    assert!(check_claims(&parsed, &roots, &policy, Some(&data)).is_ok());
    parsed.policy.set_debug_allowed(true);
    assert_eq!(
        check_claims(&parsed, &roots, &policy, Some(&data)),
        Err(AttestationError::DebugAllowed)
    );
}

#[test]
fn root_sets_from_pem() {
    use sev::certs::snp::builtin::milan;
    let ark = milan::ark().unwrap().to_pem().unwrap();
    let ask = milan::ask().unwrap().to_pem().unwrap();
    let report = milan_report();
    let vcek = sev_test_data("vcek_milan.der");
    let (policy, data) = admitting(&report);
    for pem in [
        [ark.clone(), ask.clone()].concat(),
        [ask.clone(), ark.clone()].concat(),
    ] {
        let roots = Roots::from_pem(&pem).unwrap();
        assert_eq!(roots.name(), "custom");
        assert!(verify_report(&report, &vcek, &roots, &policy, Some(&data)).is_ok());
    }
    assert!(matches!(
        Roots::from_pem(&ark),
        Err(AttestationError::BadRoots(_))
    ));
    assert!(matches!(
        Roots::from_pem(b"\xff\xfe"),
        Err(AttestationError::BadRoots(_))
    ));
    assert!(matches!(
        Roots::from_pem(&[ask.clone(), ask].concat()),
        Err(AttestationError::BadRoots(_))
    ));
    assert_eq!("Genoa".parse::<Product>().unwrap(), Product::Genoa);
    assert!("naples".parse::<Product>().is_err());
}

/// Real reports and VCEKs, mutated as a hostile inference node would: whatever the edit, the
/// verifier answers (an error, or for edits in unsigned padding a verdict), never panics; edits
/// of the signed part never verify.
#[test]
fn mutated_reports_and_vceks_are_errors() {
    use crate::fuzzing::{Rng, mutate};
    let report = milan_report();
    let vcek = sev_test_data("vcek_milan.der");
    let (policy, data) = admitting(&report);
    let roots = milan();
    assert!(verify_report(&report, &vcek, &roots, &policy, Some(&data)).is_ok());
    let mut rng = Rng(0x5eed_0f5e_75a1);
    for _ in 0..300 {
        let r = mutate(&report, &report, &mut rng);
        let signed_part_changed = r.len() != report.len() || r[..0x2A0] != report[..0x2A0];
        let verdict = verify_report(&r, &vcek, &roots, &policy, Some(&data));
        if signed_part_changed {
            assert!(verdict.is_err());
        }
        let v = mutate(&vcek, &vcek, &mut rng);
        if v != vcek {
            let _ = verify_report(&report, &v, &roots, &policy, Some(&data));
        }
    }
}
