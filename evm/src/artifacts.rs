//! The contracts' bytecode, from forge's build output (`chain/contracts/out`).

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("forge build in {dir} failed: {reason}")]
    Build { dir: PathBuf, reason: String },
}

/// `chain/contracts` of this source tree, or `PROOFMESH_CONTRACTS`.
pub fn contracts_dir() -> PathBuf {
    std::env::var_os("PROOFMESH_CONTRACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../chain/contracts"))
}

/// The binary of a foundry tool (`anvil`, `forge`, `cast`) that `dir`'s npm toolchain
/// installed: the platform package's executable itself, not the `node_modules/.bin` launcher,
/// which is a Node.js process that would outlive a kill of its own pid.
pub fn foundry_tool(dir: &Path, tool: &str) -> PathBuf {
    let platform = match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "aarch64") => "linux-arm64",
        ("macos", "aarch64") => "darwin-arm64",
        ("macos", _) => "darwin-amd64",
        _ => "linux-amd64",
    };
    dir.join("node_modules/@foundry-rs")
        .join(format!("{tool}-{platform}"))
        .join("bin")
        .join(tool)
}

/// Runs `forge build` in `dir` (its own npm toolchain, `scripts/contracts-deps`); quick when
/// nothing changed.
pub fn build(dir: &Path) -> Result<(), ArtifactError> {
    let forge = foundry_tool(dir, "forge");
    let out = Command::new(&forge)
        .arg("build")
        .current_dir(dir)
        .output()
        .map_err(|e| ArtifactError::Build {
            dir: dir.to_path_buf(),
            reason: format!("{}: {e} (run scripts/contracts-deps)", forge.display()),
        })?;
    if !out.status.success() {
        return Err(ArtifactError::Build {
            dir: dir.to_path_buf(),
            reason: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// The creation bytecode of contract `name` (`out/NAME.sol/NAME.json`, `bytecode.object`).
pub fn bytecode(dir: &Path, name: &str) -> Result<Vec<u8>, ArtifactError> {
    let path = dir
        .join("out")
        .join(format!("{name}.sol"))
        .join(format!("{name}.json"));
    let err = |reason: String| ArtifactError::Read {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let object = json["bytecode"]["object"]
        .as_str()
        .ok_or_else(|| err("no bytecode.object".into()))?;
    let code = hex::decode(object.trim_start_matches("0x")).map_err(|e| err(e.to_string()))?;
    if code.is_empty() {
        return Err(err(
            "empty bytecode (an interface or abstract contract?)".into()
        ));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytecode_from_an_artifact_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, text: &str| {
            let d = dir.path().join("out").join(format!("{name}.sol"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("{name}.json")), text).unwrap();
        };
        put("Good", r#"{"bytecode":{"object":"0x6080"}}"#);
        put("Empty", r#"{"bytecode":{"object":"0x"}}"#);
        put("Garbage", "{\"bytecode\":");
        put("NotHex", r#"{"bytecode":{"object":"0xzz"}}"#);
        assert_eq!(bytecode(dir.path(), "Good").unwrap(), vec![0x60, 0x80]);
        for name in ["Empty", "Garbage", "NotHex", "Missing"] {
            let e = bytecode(dir.path(), name).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
