//! `proofmesh model add`: a model goes into a node home's models directory only if it loads,
//! under its id; adding it again changes nothing; garbage and name clashes are clear errors
//! that leave the directory as it was.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

#[path = "../../kernels/src/testing.rs"]
mod testing;

fn proofmesh(args: &[&str], paths: &[&Path]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proofmesh"));
    cmd.args(args);
    for p in paths {
        cmd.arg(p);
    }
    cmd.output().unwrap()
}

#[test]
fn model_add_places_checked_models_in_the_home() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = proofmesh(&["init", "--role", "inference", "--home"], &[&home]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gguf = testing::smollm2_dir().join("model.gguf");
    let add = |path: &Path, name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_proofmesh"))
            .args(["model", "add"])
            .arg(path)
            .arg("--home")
            .arg(&home)
            .args(["--name", name])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), json, stderr)
    };
    let (ok, json, stderr) = add(&gguf, "smollm2");
    assert!(ok, "{stderr}");
    let (_, id) = kernels::manifest(&gguf).unwrap();
    assert_eq!(json["model_id"], id.to_string());
    assert_eq!(json["status"], "added");
    assert_eq!(json["architecture"], "llama");
    assert_eq!(json["manifest"]["files"][0]["name"], "model.gguf");
    let placed = home.join("models/smollm2");
    assert_eq!(kernels::manifest(&placed).unwrap().1, id);
    // Again: nothing to do.
    let (ok, json, _) = add(&gguf, "smollm2");
    assert!(ok);
    assert_eq!(json["status"], "present");
    // Another model under the same name is refused.
    let mlp = tmp.path().join("mlp");
    let spec = kernels::MlpSpec {
        input_dim: 4,
        hidden_dims: vec![8],
        num_classes: 3,
    };
    kernels::write_seeded_mlp(&mlp, "mlp", 3, &spec).unwrap();
    let (ok, _, stderr) = add(&mlp, "smollm2");
    assert!(!ok);
    assert!(stderr.contains("already holds another model"), "{stderr}");
    let (ok, json, stderr) = add(&mlp, "mlp");
    assert!(ok, "{stderr}");
    assert_eq!(json["architecture"], "mlp");
    // A file that is not a model: an error, nothing placed.
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\0\0\0garbage").unwrap();
    let (ok, _, stderr) = add(&junk, "junk");
    assert!(!ok);
    assert!(stderr.contains("not a valid GGUF file"), "{stderr}");
    assert!(!home.join("models/junk").exists());
    for bad in ["", "../x", ".hidden"] {
        let (ok, _, stderr) = add(&mlp, bad);
        assert!(!ok, "{bad:?}");
        assert!(stderr.contains("not a directory name"), "{bad:?}: {stderr}");
    }
    let entries: Vec<_> = std::fs::read_dir(home.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut entries = entries;
    entries.sort();
    assert_eq!(entries, ["mlp", "smollm2"]);
}
