//! `snp_vcek`: the VCEK certificate (DER) attached to a record, checked against the roots.
#![no_main]

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("snp_vcek"), |data: &[u8]| {
    let snp = proofmesh_fuzz::snp();
    let verdict = snp
        .verifier
        .verify(&snp.report, data, Some(&snp.report_data));
    if data != snp.chip.vcek_der() {
        assert!(verdict.is_err(), "a report verified with another VCEK");
    }
});
