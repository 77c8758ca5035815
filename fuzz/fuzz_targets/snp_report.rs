//! `snp_report`: an SEV-SNP attestation report from an inference node, checked with the
//! chip's genuine VCEK as a validator checks a record's TEE proof.
#![no_main]

/// R and S (72 bytes each, little-endian, zero-padded) at the start of the signature area.
const SIGNATURE: std::ops::Range<usize> = 0x2A0..0x2A0 + 144;

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("snp_report"), |data: &[u8]| {
    let snp = proofmesh_fuzz::snp();
    let verdict = snp
        .verifier
        .verify(data, snp.chip.vcek_der(), Some(&snp.report_data));
    // Under the genuine report's R and S, no other bytes verify: not an edit of the signed
    // part, not bytes in the signature area's reserved tail. (Another genuine report of the
    // chip, from another run, verifies with its own signature: the simulated chip draws each
    // report's REPORT_ID at random, as firmware may.)
    let report = &snp.report;
    if data.len() == report.len() && data[SIGNATURE] == report[SIGNATURE] && data != &report[..] {
        assert!(verdict.is_err(), "another report verified under the genuine signature");
    }
});
