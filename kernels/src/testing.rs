//! Test support: the real MiniLM model, fetched once per machine. Also included by path
//! (`#[path]`) from the other crates' tests and benches, so it uses std alone.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The all-MiniLM-L6-v2 directory: `$PROOFMESH_MINILM_DIR` if set, else fetched by
/// `scripts/fetch-minilm` into its cache on first use (the script is idempotent and serialises
/// concurrent callers with a lock).
pub(crate) fn minilm_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PROOFMESH_MINILM_DIR") {
            return dir.into();
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/fetch-minilm");
        let out = std::process::Command::new(script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            out.status.success(),
            "{script} failed ({}); the MiniLM tests need the model",
            out.status
        );
        let dir = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(dir.trim())
    })
    .clone()
}
