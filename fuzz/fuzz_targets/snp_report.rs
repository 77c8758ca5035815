//! `snp_report`: an SEV-SNP attestation report from an inference node, checked with the
//! chip's genuine VCEK as a validator checks a record's TEE proof.
#![no_main]

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("snp_report"), |data: &[u8]| {
    let snp = proofmesh_fuzz::snp();
    let verdict = snp
        .verifier
        .verify(data, snp.chip.vcek_der(), Some(&snp.report_data));
    // Only the genuine report verifies: an edit of its signed part must not.
    if data.len() == snp.report.len() && data[..0x2A0] != snp.report[..0x2A0] {
        assert!(verdict.is_err(), "an edited report verified");
    }
});
