//! `proofmesh infer` as a user runs it: the real all-MiniLM-L6-v2, a JSON input file, one JSON
//! object out; bad input gives a message and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

#[path = "../../kernels/src/testing.rs"]
mod testing;
use testing::{minilm_dir, smollm2_dir};

fn infer(model: &Path, input: &Path, backend: &str) -> Output {
    infer_with(model, input, &["--backend", backend])
}

fn infer_with(model: &Path, input: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_proofmesh"))
        .args(["infer", "--model-dir"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .args(args)
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn infer_prints_embeddings_hash_backend_and_model_id() {
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let input = write(
        tmp.path(),
        "in.json",
        r#"{"texts": ["A man is eating food.", "A man is eating a piece of bread."]}"#,
    );
    let out = infer(&model, &input, "cpu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["backend"], "cpu");
    let expected_id = kernels::manifest(&model).unwrap().1.to_string();
    assert_eq!(json["model_id"], expected_id.as_str());
    let rows = json["embeddings"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let row = |i: usize| -> Vec<f64> {
        rows[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let cosine: f64 = row(0).iter().zip(row(1)).map(|(a, b)| a * b).sum();
    assert!((cosine - 0.7553).abs() <= 0.0005, "cosine {cosine}");
    let hash = json["output_hash"].as_str().unwrap();
    assert!(hash.starts_with("0x") && hash.len() == 66, "{hash}");

    // Every CPU kernel variant this CPU runs gives the same bits; one it lacks, or an unknown
    // name, is a clear error.
    for kernel in kernels::CpuKernel::ALL {
        let out = infer_with(&model, &input, &["--cpu-kernel", kernel.name()]);
        if kernel.available() {
            let forced: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(forced["output_hash"], json["output_hash"], "{kernel}");
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("cannot run"), "{kernel}: {stderr}");
        }
    }
    let out = infer_with(&model, &input, &["--cpu-kernel", "sse9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown cpu kernel \"sse9\""));

    // `--backend cuda` on a machine without a GPU says so and runs on the CPU, same bits;
    // with a GPU it runs there, and the bits must still be the same.
    let out = infer(&model, &input, "cuda");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cuda: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cuda["output_hash"], json["output_hash"]);
    if cuda["backend"] == "cpu" {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cuda backend unavailable"), "{stderr}");
    }
}

#[test]
fn infer_refuses_bad_input_with_a_message() {
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("not json", "bad input"),
        (r#"{"texts": []}"#, "0 rows"),
        (r#"{"inputs": [[1.0]]}"#, "texts"),
    ];
    for (body, want) in cases {
        let input = write(tmp.path(), "bad.json", body);
        let out = infer(&model, &input, "cpu");
        assert!(!out.status.success(), "{body} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{body}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let good = write(tmp.path(), "good.json", r#"{"texts": ["x"]}"#);
    // A directory that is not a model.
    let out = infer(tmp.path(), &good, "cpu");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing model file"));
    // An input file that does not exist.
    let out = infer(&model, &tmp.path().join("nope.json"), "cpu");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("opening the input"));
    // An unknown backend is a usage error.
    let out = infer(&model, &good, "tpu");
    assert!(!out.status.success());
}

/// A language model: the GGUF file itself or its directory, greedy text with its token ids and
/// commitment, the same hash under every CPU variant and from either path; a seed changes a
/// sampled completion and repeats it; bad requests are clear errors.
#[test]
fn infer_generates_text_with_smollm2() {
    let dir = smollm2_dir();
    let tmp = tempfile::tempdir().unwrap();
    let input = write(
        tmp.path(),
        "chat.json",
        r#"{"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 6}"#,
    );
    let out = infer(&dir, &input, "cpu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = json["text"].as_str().unwrap();
    assert!(text.starts_with("The capital of France is Paris"), "{text}");
    assert_eq!(json["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(json["finish_reason"], "length");
    // Room for its answer: it ends its turn (`<|im_end|>`, the last token, not in the text).
    let input_long = write(
        tmp.path(),
        "chat-long.json",
        r#"{"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 32}"#,
    );
    let long: Value = serde_json::from_slice(&infer(&dir, &input_long, "cpu").stdout).unwrap();
    assert_eq!(long["finish_reason"], "stop");
    assert_eq!(long["text"], "The capital of France is Paris.");
    assert_eq!(long["tokens"].as_array().unwrap().last().unwrap(), 2);
    assert_eq!(json["prompt_tokens"], 37);
    let expected_id = kernels::manifest(&dir).unwrap().1.to_string();
    assert_eq!(json["model_id"], expected_id.as_str());
    let from_file = infer(&dir.join("model.gguf"), &input, "cpu");
    let from_file: Value = serde_json::from_slice(&from_file.stdout).unwrap();
    assert_eq!(from_file["model_id"], json["model_id"]);
    assert_eq!(from_file["output_hash"], json["output_hash"]);
    for kernel in kernels::CpuKernel::ALL
        .into_iter()
        .filter(|k| k.available())
    {
        let out = infer_with(&dir, &input, &["--cpu-kernel", kernel.name()]);
        let forced: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(forced["output_hash"], json["output_hash"], "{kernel}");
    }

    let sampled = |seed: u64| {
        let body = format!(
            r#"{{"messages": [{{"role": "user", "content": "Write a poem."}}], "max_tokens": 12, "temperature": 1.0, "seed": {seed}}}"#
        );
        let input = write(tmp.path(), &format!("s{seed}.json"), &body);
        let out = infer(&dir, &input, "cpu");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        (json["tokens"].clone(), json["output_hash"].clone())
    };
    assert_eq!(sampled(1), sampled(1));
    assert_ne!(sampled(1).0, sampled(2).0);

    for (body, message) in [
        (r#"{"messages": [], "max_tokens": 8}"#, "0 messages"),
        (
            r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
            "max_tokens is 0",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "x"}], "temperature": 9}"#,
            "temperature 9",
        ),
        (r#"{"texts": ["x"]}"#, "unknown field"),
    ] {
        let input = write(tmp.path(), "bad.json", body);
        let out = infer(&dir, &input, "cpu");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{body}: {stderr}");
    }
}
