use std::path::PathBuf;

use super::*;
use crate::backend::CpuBackend;
use crate::rng::tests::uniform_vec;
use crate::weights::{Tensor, write_f32};
use crate::{MlpSpec, write_seeded_mlp};

fn demo_spec() -> MlpSpec {
    MlpSpec {
        input_dim: 16,
        hidden_dims: vec![64, 64],
        num_classes: 8,
    }
}

fn seeded(seed: u64) -> (tempfile::TempDir, PathBuf, ModelId) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let id = write_seeded_mlp(&dir, "mlp-demo", seed, &demo_spec()).unwrap();
    (tmp, dir, id)
}

fn input_json(rows: &[Vec<f32>]) -> Vec<u8> {
    serde_json::to_vec(&InputJson {
        inputs: rows.to_vec(),
    })
    .unwrap()
}

fn random_rows(seed: u64, rows: usize, dims: usize) -> Vec<Vec<f32>> {
    uniform_vec(seed, rows * dims)
        .chunks(dims)
        .map(|r| r.iter().map(|v| v * 3.0).collect())
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn seeded_model_files_are_reproducible() {
    let (_a, dir_a, id_a) = seeded(7);
    let (_b, dir_b, id_b) = seeded(7);
    assert_eq!(id_a, id_b);
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        assert_eq!(
            std::fs::read(dir_a.join(file)).unwrap(),
            std::fs::read(dir_b.join(file)).unwrap(),
            "{file}"
        );
    }
    let (_c, _, id_c) = seeded(8);
    assert_ne!(id_a, id_c);
    // Same seed, different name: different config, different id.
    let tmp = tempfile::tempdir().unwrap();
    assert_ne!(
        write_seeded_mlp(tmp.path(), "other", 7, &demo_spec()).unwrap(),
        id_a
    );

    let (manifest_bytes, id) = manifest(&dir_a).unwrap();
    assert_eq!(id, id_a);
    assert_eq!(ModelId(keccak256(&manifest_bytes)), id);
    let text = String::from_utf8(manifest_bytes).unwrap();
    let expected = format!(
        r#"{{"files":[{{"name":"config.json","keccak":"{}"}},{{"name":"model.safetensors","keccak":"{}"}}]}}"#,
        hex32(&keccak256(&std::fs::read(dir_a.join(CONFIG_FILE)).unwrap())),
        hex32(&keccak256(
            &std::fs::read(dir_a.join(WEIGHTS_FILE)).unwrap()
        )),
    );
    assert_eq!(text, expected);

    let model = Model::load(&dir_a).unwrap();
    assert_eq!(model.id(), id_a);
    assert_eq!(model.name(), "mlp-demo");
}

/// Pins the file format, the generator and the arithmetic: if one of these values changes, every
/// deployed model id or output hash changes with it. Update them only on purpose.
#[test]
fn golden_model_id_and_output_hash() {
    let (_t, dir, id) = seeded(1);
    assert_eq!(
        id.to_string(),
        "0x58903e7e242b12eddb2121a84cb008f20667d2f53006fce2ad9c0f14574f2601"
    );
    let model = Model::load(&dir).unwrap();
    let input = model.example_input();
    let cpu = CpuBackend::new();
    let out = model.run(&cpu, &input).unwrap();
    assert_eq!(
        hex32(&out.hash()),
        "0x257fce842b4225520dc289cefaa81f4f743817530bd6f2875e0d31a826a953c4"
    );
    for other in CpuBackend::every_variant() {
        assert_eq!(out.hash(), model.run(&other, &input).unwrap().hash());
    }
}

#[test]
fn outputs_are_probabilities() {
    let (_t, dir, _) = seeded(2);
    let model = Model::load(&dir).unwrap();
    let out = model
        .run(&CpuBackend::new(), &input_json(&random_rows(3, 5, 16)))
        .unwrap();
    assert_eq!(out.shape, vec![5, 8]);
    assert_eq!(out.data.len(), 40);
    for row in out.data.chunks(8) {
        assert!(row.iter().all(|&p| (0.0..=1.0).contains(&p)));
        let sum: f64 = row.iter().map(|&p| p as f64).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
    }
    // Different inputs give different outputs (the weights do something).
    assert_ne!(out.data[..8], out.data[8..16]);
}

#[test]
fn each_row_hashes_the_same_alone_and_in_any_batch() {
    let (_t, dir, _) = seeded(4);
    let model = Model::load(&dir).unwrap();
    let cpu = CpuBackend::new();
    let rows = random_rows(5, 9, 16);
    let alone: Vec<Output> = rows
        .iter()
        .map(|r| {
            model
                .run(&cpu, &input_json(std::slice::from_ref(r)))
                .unwrap()
        })
        .collect();
    for size in [2, 3, 4, 5, 9] {
        for start in 0..=rows.len() - size {
            let out = model
                .run(&cpu, &input_json(&rows[start..start + size]))
                .unwrap();
            for (i, got) in out.data.chunks(8).enumerate() {
                let single = Output {
                    shape: vec![1, 8],
                    data: got.to_vec(),
                    kind: OutputKind::Probabilities,
                    completion: None,
                    input_tokens: None,
                };
                assert_eq!(
                    single.hash(),
                    alone[start + i].hash(),
                    "row {} in a batch of {size} at {start}",
                    start + i
                );
            }
        }
    }
    // The same row repeated in one batch gives identical rows.
    let dup = model
        .run(&cpu, &input_json(&[rows[0].clone(), rows[0].clone()]))
        .unwrap();
    assert_eq!(bits(&dup.data[..8]), bits(&dup.data[8..]));
}

#[test]
fn example_input_is_stable_and_valid() {
    let (_t, dir, _) = seeded(1);
    let model = Model::load(&dir).unwrap();
    let input = model.example_input();
    assert_eq!(input, model.example_input());
    let text = std::str::from_utf8(&input).unwrap();
    assert!(text.starts_with(r#"{"inputs":[[-1.0,"#), "{text}");
    assert_eq!(
        model.run(&CpuBackend::new(), &input).unwrap().shape,
        vec![2, 8]
    );
}

#[test]
fn missing_files_are_reported_by_path() {
    let (_t, dir, _) = seeded(1);
    std::fs::remove_file(dir.join(WEIGHTS_FILE)).unwrap();
    assert!(
        matches!(Model::load(&dir), Err(Error::MissingFile { path }) if path.ends_with(WEIGHTS_FILE))
    );
    std::fs::remove_file(dir.join(CONFIG_FILE)).unwrap();
    assert!(
        matches!(Model::load(&dir), Err(Error::MissingFile { path }) if path.ends_with(CONFIG_FILE))
    );
    assert!(matches!(manifest(&dir), Err(Error::MissingFile { .. })));
    assert!(matches!(
        Model::load(&dir.join("nowhere")),
        Err(Error::MissingFile { .. })
    ));
}

#[test]
fn garbage_and_truncated_weights_are_rejected() {
    let (_t, dir, _) = seeded(1);
    let path = dir.join(WEIGHTS_FILE);
    let good = std::fs::read(&path).unwrap();
    for len in [0, 7, 8, 100, good.len() / 2, good.len() - 1] {
        std::fs::write(&path, &good[..len]).unwrap();
        assert!(
            matches!(Model::load(&dir), Err(Error::BadSafetensors { .. })),
            "truncated to {len}"
        );
    }
    std::fs::write(&path, b"\x00garbage garbage garbage garbage").unwrap();
    assert!(matches!(
        Model::load(&dir),
        Err(Error::BadSafetensors { .. })
    ));
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 4]);
    std::fs::write(&path, &padded).unwrap();
    assert!(matches!(
        Model::load(&dir),
        Err(Error::BadSafetensors { .. })
    ));
}

#[test]
fn oversized_weights_file_is_rejected_before_reading() {
    let (_t, dir, _) = seeded(1);
    // Sparse: takes no disk space.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(WEIGHTS_FILE))
        .unwrap();
    file.set_len(MAX_WEIGHTS_BYTES + 1).unwrap();
    assert!(matches!(
        Model::load(&dir),
        Err(Error::FileTooLarge { size, limit: MAX_WEIGHTS_BYTES, .. }) if size == MAX_WEIGHTS_BYTES + 1
    ));
}

fn write_config(dir: &Path, json: &str) {
    std::fs::write(dir.join(CONFIG_FILE), json).unwrap();
}

fn mlp_config(hidden: &str, classes: usize) -> String {
    format!(
        r#"{{"architecture":"mlp","name":"m","input_dim":16,"hidden_dims":{hidden},"num_classes":{classes},"activation":"gelu"}}"#
    )
}

#[test]
fn config_that_disagrees_with_weights_is_rejected() {
    let (_t, dir, _) = seeded(1);
    // Sanity: a hand-written config equal in content to the seeded one loads.
    write_config(&dir, &mlp_config("[64,64]", 8));
    Model::load(&dir).unwrap();

    write_config(&dir, &mlp_config("[64,32]", 8));
    assert!(matches!(
        Model::load(&dir),
        Err(Error::ShapeMismatch { name, expected, actual })
            if name == "layers.1.weight" && expected == [64, 32] && actual == [64, 64]
    ));
    write_config(&dir, &mlp_config("[64,64]", 10));
    assert!(
        matches!(Model::load(&dir), Err(Error::ShapeMismatch { name, .. }) if name == "layers.2.weight")
    );
    write_config(&dir, &mlp_config("[64,32,8]", 8));
    assert!(
        matches!(Model::load(&dir), Err(Error::ShapeMismatch { name, .. }) if name == "layers.1.weight")
    );
    // One layer more than the weights hold: the shapes that exist agree, the last is missing.
    write_config(&dir, &mlp_config("[64,64,8]", 8));
    assert!(
        matches!(Model::load(&dir), Err(Error::MissingTensor { name }) if name == "layers.3.weight")
    );
    // One layer fewer: the old output layer's shape is wrong for the new one.
    write_config(&dir, &mlp_config("[64]", 64));
    assert!(
        matches!(Model::load(&dir), Err(Error::UnexpectedTensor { name }) if name == "layers.2.bias")
    );
    let cfg = mlp_config("[64,64]", 8).replace("\"input_dim\":16", "\"input_dim\":17");
    write_config(&dir, &cfg);
    assert!(
        matches!(Model::load(&dir), Err(Error::ShapeMismatch { name, .. }) if name == "layers.0.weight")
    );
}

#[test]
fn missing_and_extra_tensors_are_rejected() {
    let (_t, dir, _) = seeded(1);
    write_config(&dir, &mlp_config("[]", 2));
    let w = |shape: Vec<usize>| Tensor {
        data: vec![0.5; shape.iter().product()],
        shape,
    };
    let write = |tensors: Vec<(&str, Tensor)>| {
        let tensors: Vec<(String, Tensor)> = tensors
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        std::fs::write(dir.join(WEIGHTS_FILE), write_f32(&tensors)).unwrap();
    };
    write(vec![
        ("layers.0.weight", w(vec![16, 2])),
        ("layers.0.bias", w(vec![2])),
    ]);
    Model::load(&dir).unwrap();
    write(vec![("layers.0.weight", w(vec![16, 2]))]);
    assert!(
        matches!(Model::load(&dir), Err(Error::MissingTensor { name }) if name == "layers.0.bias")
    );
    write(vec![
        ("layers.0.weight", w(vec![16, 2])),
        ("layers.0.bias", w(vec![2])),
        ("layers.1.bias", w(vec![2])),
    ]);
    assert!(
        matches!(Model::load(&dir), Err(Error::UnexpectedTensor { name }) if name == "layers.1.bias")
    );
    write(vec![
        ("layers.0.weight", w(vec![32])),
        ("layers.0.bias", w(vec![2])),
    ]);
    assert!(matches!(
        Model::load(&dir),
        Err(Error::ShapeMismatch { .. })
    ));

    let data = vec![0u8; 16 * 2 * 8];
    let f64_weight =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![16, 2], &data).unwrap();
    let bytes = safetensors::serialize([("layers.0.weight", f64_weight)], None).unwrap();
    std::fs::write(dir.join(WEIGHTS_FILE), bytes).unwrap();
    assert!(matches!(Model::load(&dir), Err(Error::BadDtype { dtype, .. }) if dtype == "F64"));
}

#[test]
fn bad_configs_are_rejected() {
    let (_t, dir, _) = seeded(1);
    type Check = fn(&Error) -> bool;
    let cases: Vec<(String, Check)> = vec![
        ("not json".into(), |e| matches!(e, Error::BadConfig { .. })),
        ("{}".into(), |e| matches!(e, Error::BadConfig { .. })),
        (
            r#"{"architecture":"bert"}"#.into(),
            |e| matches!(e, Error::UnsupportedArchitecture { architecture } if architecture == "bert"),
        ),
        (
            mlp_config("[64,64]", 8).replace("gelu", "relu"),
            |e| matches!(e, Error::UnsupportedActivation { activation } if activation == "relu"),
        ),
        (
            mlp_config("[64,64]", 8).replace("\"name\":\"m\"", "\"name\":\"\""),
            |e| matches!(e, Error::BadConfig { .. }),
        ),
        (
            mlp_config("[64,64]", 8).replace("\"num_classes\"", "\"classes\""),
            |e| matches!(e, Error::BadConfig { .. }),
        ),
        (
            mlp_config("[64,64]", 8).replace("}", ",\"extra\":1}"),
            |e| matches!(e, Error::BadConfig { .. }),
        ),
        (mlp_config("[64,0]", 8), |e| {
            matches!(e, Error::BadSpec { .. })
        }),
        (mlp_config("[64,64]", 0), |e| {
            matches!(e, Error::BadSpec { .. })
        }),
        (mlp_config("[64,-1]", 8), |e| {
            matches!(e, Error::BadConfig { .. })
        }),
    ];
    for (json, check) in cases {
        write_config(&dir, &json);
        match Model::load(&dir) {
            Err(e) => assert!(check(&e), "{json}: wrong error {e:?}"),
            Ok(_) => panic!("{json}: loaded"),
        }
    }
}

#[test]
fn bad_specs_are_rejected_by_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = |input_dim, hidden_dims: Vec<usize>, num_classes| MlpSpec {
        input_dim,
        hidden_dims,
        num_classes,
    };
    assert!(matches!(
        write_seeded_mlp(tmp.path(), "m", 1, &spec(0, vec![], 2)),
        Err(Error::BadSpec { .. })
    ));
    assert!(matches!(
        write_seeded_mlp(tmp.path(), "m", 1, &spec(2, vec![4, 0], 2)),
        Err(Error::BadSpec { .. })
    ));
    assert!(matches!(
        write_seeded_mlp(tmp.path(), "m", 1, &spec(2, vec![], 1 << 17)),
        Err(Error::BadSpec { .. })
    ));
    assert!(matches!(
        write_seeded_mlp(tmp.path(), "", 1, &spec(2, vec![], 2)),
        Err(Error::BadConfig { .. })
    ));
    // 2^15 · 2^15 weights per layer: within each width limit, over the size limit.
    assert!(matches!(
        write_seeded_mlp(tmp.path(), "m", 1, &spec(1 << 15, vec![1 << 15], 2)),
        Err(Error::BadSpec { reason }) if reason.contains("parameters")
    ));
    // Nothing was written.
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
}

#[test]
fn bad_inputs_get_specific_errors() {
    let (_t, dir, _) = seeded(1);
    let model = Model::load(&dir).unwrap();
    let cpu = CpuBackend::new();
    let run = |input: &[u8]| model.run(&cpu, input);
    let row = |v: f32| vec![v; 16];

    assert!(matches!(run(b"not json"), Err(Error::BadInput { .. })));
    assert!(matches!(run(b""), Err(Error::BadInput { .. })));
    assert!(matches!(
        run(br#"{"inputs": [[1, 2], "x"]}"#),
        Err(Error::BadInput { .. })
    ));
    assert!(matches!(
        run(br#"{"rows": [[1]]}"#),
        Err(Error::BadInput { .. })
    ));
    assert!(matches!(
        run(br#"{"inputs": [[1]], "extra": 0}"#),
        Err(Error::BadInput { .. })
    ));
    // JSON has no NaN or Infinity literal.
    let nan = format!(r#"{{"inputs": [[{}NaN]]}}"#, "0,".repeat(15));
    assert!(matches!(run(nan.as_bytes()), Err(Error::BadInput { .. })));
    assert!(matches!(
        run(br#"{"inputs": [[Infinity]]}"#),
        Err(Error::BadInput { .. })
    ));

    assert!(matches!(
        run(&input_json(&[row(0.5), vec![0.5; 15]])),
        Err(Error::InputDims {
            row: 1,
            expected: 16,
            actual: 15
        })
    ));
    assert!(matches!(
        run(&input_json(&[vec![0.5; 17]])),
        Err(Error::InputDims {
            row: 0,
            expected: 16,
            actual: 17
        })
    ));
    assert!(matches!(
        run(br#"{"inputs": []}"#),
        Err(Error::RowCount {
            rows: 0,
            max: MAX_ROWS
        })
    ));
    let many = vec![row(0.0); MAX_ROWS + 1];
    assert!(matches!(
        run(&input_json(&many)),
        Err(Error::RowCount {
            rows: 257,
            max: MAX_ROWS
        })
    ));
    assert_eq!(
        run(&input_json(&many[..MAX_ROWS])).unwrap().shape,
        vec![MAX_ROWS, 8]
    );

    // Finite in JSON, infinite as f32.
    let big = format!(r#"{{"inputs": [[{}1e39]]}}"#, "0,".repeat(15));
    assert!(matches!(
        run(big.as_bytes()),
        Err(Error::NonFiniteInput {
            row: 0,
            col: 15,
            ..
        })
    ));
    // Finite f32 inputs whose products overflow.
    assert!(matches!(
        run(&input_json(&[row(3e38)])),
        Err(Error::NonFiniteOutput { layer: 0 })
    ));
}

#[test]
fn output_hash_covers_shape_and_values() {
    let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
    let a = Output {
        shape: vec![2, 3],
        data: data.clone(),
        kind: OutputKind::Probabilities,
        completion: None,
        input_tokens: None,
    };
    let b = Output {
        shape: vec![3, 2],
        data: data.clone(),
        kind: OutputKind::Probabilities,
        completion: None,
        input_tokens: None,
    };
    let c = Output {
        shape: vec![6],
        data: data.clone(),
        kind: OutputKind::Probabilities,
        completion: None,
        input_tokens: None,
    };
    let d = Output {
        shape: vec![1, 2, 3],
        data: data.clone(),
        kind: OutputKind::Probabilities,
        completion: None,
        input_tokens: None,
    };
    let hashes = [a.hash(), b.hash(), c.hash(), d.hash()];
    for i in 0..hashes.len() {
        for j in i + 1..hashes.len() {
            assert_ne!(hashes[i], hashes[j], "{i} vs {j}");
        }
    }
    let mut e = a.clone();
    e.data[5] = f32::from_bits(e.data[5].to_bits() + 1);
    assert_ne!(e.hash(), a.hash());

    // The documented byte layout.
    let mut bytes = 2u32.to_le_bytes().to_vec();
    bytes.extend(2u64.to_le_bytes());
    bytes.extend(3u64.to_le_bytes());
    data.iter().for_each(|v| bytes.extend(v.to_le_bytes()));
    assert_eq!(a.hash(), keccak256(&bytes));
    // Long outputs hash in blocks; same as hashing the bytes at once.
    let long = Output {
        shape: vec![3000],
        data: uniform_vec(1, 3000),
        kind: OutputKind::Probabilities,
        completion: None,
        input_tokens: None,
    };
    let mut bytes = 1u32.to_le_bytes().to_vec();
    bytes.extend(3000u64.to_le_bytes());
    long.data.iter().for_each(|v| bytes.extend(v.to_le_bytes()));
    assert_eq!(long.hash(), keccak256(&bytes));
}

#[test]
fn output_json_round_trips_and_has_argmax() {
    let out = Output {
        shape: vec![2, 3],
        data: vec![0.1, 0.7, 0.2, 0.5, 0.25, 0.5],
        kind: OutputKind::Probabilities,
        completion: None,
        input_tokens: None,
    };
    let json = out.to_json();
    assert_eq!(json["shape"], serde_json::json!([2, 3]));
    assert_eq!(json["argmax"], serde_json::json!([1, 0]));
    let text = json.to_string();
    assert!(text.contains("[0.1,0.7,0.2,0.5,0.25,0.5]"), "{text}");
    let values: Vec<f32> = serde_json::from_value(json["data"].clone()).unwrap();
    assert_eq!(bits(&values), bits(&out.data));
    let tiny = Output {
        shape: vec![4],
        data: vec![1e-40, f32::MAX, -0.0, f32::MIN_POSITIVE],
        kind: OutputKind::Probabilities,
        completion: None,
        input_tokens: None,
    };
    let values: Vec<f32> = serde_json::from_value(tiny.to_json()["data"].clone()).unwrap();
    assert_eq!(bits(&values), bits(&tiny.data));
    assert!(tiny.to_json().get("argmax").is_none());
}

/// A manifest from a peer parses only in the canonical form `manifest` writes, with the id
/// of the files it lists; anything else (garbage, every truncation, unknown or unsorted or
/// repeated files, a file set no model loads from, upper-case hex, extra fields, oversized)
/// is a clear error.
#[test]
fn manifests_from_peers_are_checked() {
    let (_dir, path, id) = seeded(4);
    let (bytes, _) = manifest(&path).unwrap();
    let m = Manifest::parse(&bytes).unwrap();
    assert_eq!(m.id, id);
    let names: Vec<&str> = m.files.iter().map(|f| f.name).collect();
    assert_eq!(names, ["config.json", "model.safetensors"]);
    assert_eq!(
        m.files[1].keccak,
        keccak256(&std::fs::read(path.join("model.safetensors")).unwrap())
    );
    assert_eq!(m.files[1].limit, MAX_WEIGHTS_BYTES);
    for cut in 0..bytes.len() {
        assert!(Manifest::parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let text = String::from_utf8(bytes.clone()).unwrap();
    let k = format!("0x{}", "ab".repeat(32));
    let cases = [
        (
            text.replace("config.json", "../../etc/passwd"),
            "unknown model file",
        ),
        (text.replace(":\"0x", ":\"0X"), "0x + 64 hex"),
        (
            text.to_uppercase().replace("\"FILES\"", "\"files\""),
            "unknown field",
        ),
        (
            text.replace("\"files\":[", "\"files\":[],\"x\":["),
            "not a manifest",
        ),
        (
            format!(
                "{{\"files\":[{{\"name\":\"model.safetensors\",\"keccak\":\"{k}\"}},{{\"name\":\"config.json\",\"keccak\":\"{k}\"}}]}}"
            ),
            "canonical",
        ),
        (
            format!(
                "{{\"files\":[{{\"name\":\"config.json\",\"keccak\":\"{k}\"}},{{\"name\":\"config.json\",\"keccak\":\"{k}\"}},{{\"name\":\"model.safetensors\",\"keccak\":\"{k}\"}}]}}"
            ),
            "canonical",
        ),
        (
            format!("{{\"files\":[{{\"name\":\"tokenizer.json\",\"keccak\":\"{k}\"}}]}}"),
            "a model is model.gguf alone",
        ),
        ("{\"files\":[]}".to_string(), "a model is model.gguf alone"),
        (text.replace("{\"files\"", " {\"files\""), "canonical"),
        (
            format!("{text}{}", " ".repeat(MAX_MANIFEST_BYTES)),
            "the limit is",
        ),
        ("\u{0}\u{ff}garbage".to_string(), "not a manifest"),
    ];
    for (bad, want) in cases {
        let e = Manifest::parse(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
    let gguf = format!("{{\"files\":[{{\"name\":\"model.gguf\",\"keccak\":\"{k}\"}}]}}");
    let m = Manifest::parse(gguf.as_bytes()).unwrap();
    assert_eq!(m.id, ModelId(keccak256(gguf.as_bytes())));
}

/// A record of a generation its client left after `k` tokens is checked on `k + 1` tokens:
/// the cut run's tokens are the whole run's first ones (greedy and sampled), so its cancelled
/// hash is the whole run's; a count at or past the whole run's end, or under the prompt, runs
/// whole; a bad request fails as `run` fails.
#[test]
fn runs_for_units_stop_one_token_past_a_cancellation() {
    let model = Model::from_gguf_bytes("seeded", crate::seeded_llama_gguf(3, 2)).unwrap();
    let cpu = CpuBackend::new();
    for input in [
        r#"{"messages": [{"role": "user", "content": "the cat"}], "max_tokens": 20}"#,
        r#"{"messages": [{"role": "user", "content": "a dog"}], "max_tokens": 20,
            "temperature": 0.9, "top_p": 0.9, "seed": 5}"#,
    ] {
        let full = model.run(&cpu, input.as_bytes()).unwrap();
        let c = full.completion.as_ref().unwrap();
        let (prompt, n) = (c.prompt_tokens.len() as u64, c.tokens.len() as u64);
        assert!(n > 4, "a long enough run: {n} tokens");
        for kept in [0, 1, 3, n - 2] {
            let units = prompt + kept;
            let (cut, was_cut) = model.run_for_units(&cpu, input.as_bytes(), units).unwrap();
            assert!(was_cut, "{kept} of {n}");
            assert_eq!(
                cut.completion.as_ref().unwrap().tokens.len() as u64,
                kept + 1
            );
            assert_eq!(cut.cancelled_hash(units), full.cancelled_hash(units));
            assert!(full.cancelled_hash(units).is_some());
        }
        for units in [
            prompt + n - 1,
            prompt + n,
            prompt + n + 5,
            prompt - 1,
            0,
            u64::MAX,
        ] {
            let (whole, was_cut) = model.run_for_units(&cpu, input.as_bytes(), units).unwrap();
            assert!(!was_cut, "units {units}");
            assert_eq!(whole.hash(), full.hash(), "units {units}");
        }
    }
    let too_long = r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}"#;
    assert_eq!(
        model
            .run_for_units(&cpu, too_long.as_bytes(), 10)
            .unwrap_err()
            .to_string(),
        model
            .run(&cpu, too_long.as_bytes())
            .unwrap_err()
            .to_string()
    );
}
