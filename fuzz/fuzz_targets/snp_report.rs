//! `snp_report`: an SEV-SNP attestation report from an inference node, checked with the
//! chip's genuine VCEK as a validator checks a record's TEE proof.
#![no_main]

/// The report's signed part; the signature follows it.
const SIGNED: usize = 0x2A0;

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("snp_report"), |data: &[u8]| {
    let snp = proofmesh_fuzz::snp();
    let verdict = snp
        .verifier
        .verify(data, snp.chip.vcek_der(), Some(&snp.report_data));
    // Under the genuine report's signature, no edit of the signed part verifies. (Another
    // genuine report of the chip, from another run, verifies with its own signature: the
    // simulated chip draws each report's REPORT_ID at random, as firmware may.)
    let report = &snp.report;
    if data.len() == report.len()
        && data[SIGNED..] == report[SIGNED..]
        && data[..SIGNED] != report[..SIGNED]
    {
        assert!(verdict.is_err(), "an edited report verified");
    }
});
