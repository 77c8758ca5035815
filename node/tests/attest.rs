//! `proofmesh attest verify` on AMD's genuine Milan report and VCEK (the `sev` crate's own test
//! data, read where cargo resolved the crate): valid JSON and exit 0, or the reason and exit 1.

use std::process::Command;

use serde_json::Value;

#[path = "../../chain/src/attestation/sev_test_data.rs"]
mod sev_data;
use sev_data::sev_test_data_dir;

/// `proofmesh attest verify ARGS`: (success, stdout JSON).
fn attest(args: &[&str]) -> (bool, Value) {
    let all: Vec<&str> = ["attest", "verify"].iter().chain(args).copied().collect();
    let (ok, json, _) = proofmesh(&all);
    (ok, json)
}

#[test]
fn attest_verify_accepts_the_genuine_report_and_names_every_refusal() {
    let data = sev_test_data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let hex_report = std::fs::read_to_string(data.join("report_milan.hex")).unwrap();
    let report = hex::decode(hex_report.trim()).unwrap();
    let report_path = tmp.path().join("report.bin");
    std::fs::write(&report_path, &report).unwrap();
    let report_arg = report_path.to_str().unwrap();
    let vcek = data.join("vcek_milan.der");
    let vcek_arg = vcek.to_str().unwrap();

    // `--report R --vcek V --product P` plus `extra`.
    let args = |report: &str, product: &str, extra: &[&str]| -> Vec<String> {
        ["--report", report, "--vcek", vcek_arg, "--product", product]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let run = |a: Vec<String>| attest(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let (ok, json) = run(args(report_arg, "milan", &[]));
    assert!(ok, "{json}");
    assert_eq!(json["valid"], true);
    assert_eq!(json["product"], "milan");
    assert_eq!(json["measurement"].as_str().unwrap().len(), 96);
    assert_eq!(json["report_data"].as_str().unwrap().len(), 128);
    assert!(json["tcb"]["snp"].is_number());
    let measurement = json["measurement"].as_str().unwrap().to_string();
    assert!(run(args(report_arg, "milan", &["--measurement", &measurement])).0);

    let refused = |a: Vec<String>, error: &str| {
        let (ok, json) = run(a.clone());
        assert!(!ok, "{a:?} accepted");
        assert_eq!(json["valid"], false, "{json}");
        assert_eq!(json["error"], error, "{json}");
        assert!(!json["reason"].as_str().unwrap().is_empty());
    };
    refused(args(report_arg, "genoa", &[]), "chain");
    let other = "00".repeat(48);
    refused(
        args(report_arg, "milan", &["--measurement", &other]),
        "measurement",
    );
    refused(
        args(report_arg, "milan", &["--min-tcb", "255.255.255.255"]),
        "stale_tcb",
    );
    let mut flipped = report.clone();
    flipped[0x90] ^= 0x01; // in the measurement: parses, signature breaks
    let flipped_path = tmp.path().join("flipped.bin");
    std::fs::write(&flipped_path, &flipped).unwrap();
    refused(
        args(flipped_path.to_str().unwrap(), "milan", &[]),
        "signature",
    );
    let short_path = tmp.path().join("short.bin");
    std::fs::write(&short_path, &report[..100]).unwrap();
    refused(
        args(short_path.to_str().unwrap(), "milan", &[]),
        "malformed",
    );
    // Usage errors: no roots given, an unknown product, a missing file.
    assert!(!attest(&["--report", report_arg, "--vcek", vcek_arg]).0);
    assert!(
        !attest(&[
            "--report",
            report_arg,
            "--vcek",
            vcek_arg,
            "--product",
            "naples"
        ])
        .0
    );
    assert!(
        !attest(&[
            "--report",
            "/nonexistent",
            "--vcek",
            vcek_arg,
            "--product",
            "milan"
        ])
        .0
    );
}

/// Runs the binary: (success, stdout JSON or null, stderr); never a panic.
fn proofmesh(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_proofmesh"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), json, stderr)
}

/// `attest simulate root | chip | report` make a chain AMD's algorithms would; `attest verify`
/// accepts its reports under the simulated roots (and nowhere else) and refuses a debuggable
/// guest, end to end through the binary.
#[test]
fn attest_simulate_makes_reports_that_verify_only_under_their_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (ok, _, err) = proofmesh(&["attest", "simulate", "root", "--out", &p("root")]);
    assert!(ok, "{err}");
    let (ok, chip, err) = proofmesh(&[
        "attest",
        "simulate",
        "chip",
        "--root",
        &p("root/root.json"),
        "--out",
        &p("chip/chip.json"),
        "--tcb",
        "3.0.14.209",
    ]);
    assert!(ok, "{err}");
    assert_eq!(chip["tcb"]["snp"], 14);
    let measurement = "ab".repeat(48);
    let chip_json = p("chip/chip.json");
    let vcek_der = p("chip/vcek.der");
    let report = |name: &str, extra: &[&str]| {
        let mut a = vec![
            "attest",
            "simulate",
            "report",
            "--chip",
            &chip_json,
            "--measurement",
            &measurement,
            "--report-data",
            "00112233",
            "--out",
        ];
        let out = p(name);
        a.push(&out);
        a.extend_from_slice(extra);
        proofmesh(&a)
    };
    assert!(report("good.bin", &[]).0);
    assert!(report("debug.bin", &["--debug"]).0);
    let verify = |name: &str, roots: &[&str]| {
        let mut a = vec!["attest", "verify", "--vcek", &vcek_der, "--report"];
        let r = p(name);
        a.push(&r);
        a.extend_from_slice(roots);
        proofmesh(&a)
    };
    let roots_pem = p("root/roots.pem");
    let (ok, json, _) = verify(
        "good.bin",
        &[
            "--roots",
            &roots_pem,
            "--measurement",
            &measurement,
            "--min-tcb",
            "3.0.14.209",
        ],
    );
    assert!(ok, "{json}");
    assert_eq!(json["product"], "custom");
    assert_eq!(json["measurement"], measurement);
    assert!(
        json["report_data"]
            .as_str()
            .unwrap()
            .starts_with("00112233000000")
    );
    let (ok, json, _) = verify(
        "good.bin",
        &["--roots", &roots_pem, "--min-tcb", "3.0.15.209"],
    );
    assert!(!ok);
    assert_eq!(json["error"], "stale_tcb");
    let (ok, json, _) = verify("good.bin", &["--product", "milan"]);
    assert!(!ok);
    assert_eq!(json["error"], "chain");
    let (ok, json, _) = verify("debug.bin", &["--roots", &roots_pem]);
    assert!(!ok);
    assert_eq!(json["error"], "debug_allowed", "{json}");

    // Bad input: report_data over 64 bytes, a short measurement, a garbage chip file.
    let long_data = "00".repeat(65);
    let (ok, _, err) = proofmesh(&[
        "attest",
        "simulate",
        "report",
        "--chip",
        &chip_json,
        "--measurement",
        &measurement,
        "--report-data",
        &long_data,
        "--out",
        &p("x.bin"),
    ]);
    assert!(!ok && err.contains("report_data"), "{err}");
    let (ok, _, err) = proofmesh(&[
        "attest",
        "simulate",
        "report",
        "--chip",
        &p("chip/chip.json"),
        "--measurement",
        "abcd",
        "--out",
        &p("y.bin"),
    ]);
    assert!(!ok && err.contains("measurement"), "{err}");
    std::fs::write(dir.join("garbage.json"), b"{not json").unwrap();
    let (ok, _, err) = proofmesh(&[
        "attest",
        "simulate",
        "report",
        "--chip",
        &p("garbage.json"),
        "--measurement",
        &measurement,
        "--out",
        &p("z.bin"),
    ]);
    assert!(!ok && err.contains("chip file"), "{err}");
    let (ok, _, err) = proofmesh(&[
        "attest",
        "simulate",
        "chip",
        "--root",
        &p("garbage.json"),
        "--out",
        &p("c2.json"),
    ]);
    assert!(!ok && err.contains("root file"), "{err}");
}
