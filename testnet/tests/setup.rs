//! `scripts/find-libclang`, the check `scripts/setup` uses to decide whether to install
//! libclang-dev, run against directories that hold only what a fresh machine has
//! (`libclang-cpp`, which bindgen cannot use) and what the package installs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/find-libclang")
}

/// Runs the detection on a directory holding empty files named `names`.
fn detect(names: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        std::fs::write(dir.path().join(n), b"").unwrap();
    }
    let out = Command::new("bash")
        .arg(script())
        .arg(dir.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

#[test]
fn libclang_cpp_alone_is_missing() {
    assert_eq!(detect(&["libclang-cpp.so.14"]), (false, "missing".into()));
    assert_eq!(
        detect(&[
            "libclang-cpp.so",
            "libclang-cpp.so.14",
            "libclang-cpp.so.14.0.6"
        ]),
        (false, "missing".into())
    );
    assert_eq!(detect(&[]), (false, "missing".into()));
    assert_eq!(
        detect(&["libclangBasic.a", "clang.so"]),
        (false, "missing".into())
    );
}

#[test]
fn the_names_bindgen_loads_are_present() {
    for name in [
        "libclang-14.so",
        "libclang.so",
        "libclang.so.1",
        "libclang-14.so.1",
    ] {
        let (found, path) = detect(&["libclang-cpp.so.14", name]);
        assert!(found, "{name} not detected");
        assert!(path.ends_with(name), "{name}: printed {path}");
    }
}

/// `scripts/check-node`, which decides whether `scripts/setup` installs Node.js, run against
/// stand-in `node` binaries: absent, printing an old version, garbage, and a recent one.
#[test]
fn node_detection_wants_version_18_or_later() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-node");
    let dir = tempfile::tempdir().unwrap();
    let check = |printed: Option<&str>| {
        let bin = dir.path().join("node");
        let _ = std::fs::remove_file(&bin);
        if let Some(p) = printed {
            std::fs::write(&bin, format!("#!/bin/sh\necho '{p}'\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = Command::new("bash")
            .arg(&script)
            .arg(&bin)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    assert_eq!(check(None), (false, "missing".into()));
    assert_eq!(check(Some("v16.20.2")), (false, "too-old v16.20.2".into()));
    assert_eq!(check(Some("garbage")), (false, "missing".into()));
    assert_eq!(check(Some("v18.19.0")), (true, "ok v18.19.0".into()));
    assert_eq!(check(Some("v20.20.2")), (true, "ok v20.20.2".into()));
}
