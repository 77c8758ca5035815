//! Test support: AMD's genuine SNP test data shipped in the `sev` crate (a Milan report, Milan
//! and Turin VCEKs), read where cargo resolved the crate, so the bytes are AMD's and not a copy
//! of ours. Also included by path (`#[path]`) from the node tests and the chain benchmark.

use std::path::PathBuf;

/// The `sev` crate's `tests/certs_data` directory.
pub(crate) fn sev_test_data_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sev")
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap()
        .to_string();
    PathBuf::from(manifest)
        .parent()
        .unwrap()
        .join("tests/certs_data")
}

/// One file of that directory.
#[allow(dead_code)]
pub(crate) fn sev_test_data(name: &str) -> Vec<u8> {
    std::fs::read(sev_test_data_dir().join(name)).unwrap()
}
