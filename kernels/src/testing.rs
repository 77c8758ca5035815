//! Test support: the real models (all-MiniLM-L6-v2, SmolLM2-135M-Instruct), fetched once per
//! machine. Also included by path (`#[path]`) from the other crates' tests and benches, so it
//! uses std alone.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The all-MiniLM-L6-v2 directory: `$PROOFMESH_MINILM_DIR` if set, else fetched by
/// `scripts/fetch-minilm` into its cache on first use (the script is idempotent and serialises
/// concurrent callers with a lock).
#[allow(dead_code)]
pub(crate) fn minilm_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| fetched("PROOFMESH_MINILM_DIR", "fetch-minilm"))
        .clone()
}

/// The SmolLM2-135M-Instruct directory (holding `model.gguf`): `$PROOFMESH_SMOLLM2_DIR` if set,
/// else fetched by `scripts/fetch-smollm2`, as [`minilm_dir`].
#[allow(dead_code)]
pub(crate) fn smollm2_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| fetched("PROOFMESH_SMOLLM2_DIR", "fetch-smollm2"))
        .clone()
}

fn fetched(var: &str, script: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var) {
        return dir.into();
    }
    let script = format!("{}/../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed ({}); these tests need the model",
        out.status
    );
    let dir = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(dir.trim())
}
