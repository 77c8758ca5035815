use std::path::Path;

use crate::backend::{Backend, CpuBackend, CpuKernel};
use crate::testing::minilm_dir;
use crate::{BertSpec, Error, Model, OutputKind, write_seeded_bert};

fn texts_json(texts: &[&str]) -> Vec<u8> {
    serde_json::json!({ "texts": texts })
        .to_string()
        .into_bytes()
}

fn embed(model: &Model, backend: &dyn Backend, texts: &[&str]) -> Vec<Vec<f32>> {
    let out = model.run(backend, &texts_json(texts)).unwrap();
    assert_eq!(out.kind, OutputKind::Embeddings);
    assert_eq!(out.shape[0], texts.len());
    out.data.chunks(out.shape[1]).map(<[f32]>::to_vec).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The published sentence-transformers figure for this pair is 0.7553.
#[test]
fn minilm_cosine_matches_the_published_figure() {
    let model = Model::load(&minilm_dir()).unwrap();
    assert_eq!(model.architecture(), "bert");
    let e = embed(
        &model,
        &CpuBackend::new(),
        &["A man is eating food.", "A man is eating a piece of bread."],
    );
    assert_eq!(e[0].len(), 384);
    for row in &e {
        let norm: f64 = row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "norm {norm}");
    }
    let c = cosine(&e[0], &e[1]);
    eprintln!("cosine = {c:.6}");
    assert!((c - 0.7553).abs() <= 0.0005, "cosine {c}");
}

/// Texts of mixed lengths (3 to about 60 tokens) for the batch tests.
const POOL: &[&str] = &[
    "A man is eating food.",
    "Hi",
    "",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Crème brûlée, naïve café — 日本語 and emoji 🍕!",
    "A man is eating a piece of bread.",
    "unbelievable antidisestablishmentarianism",
    "Deterministic kernels let every validator re-execute a job and compare the output hash \
     bit for bit, so an honest node never looks like a cheat.",
    "a b c d e f g",
    "Why?",
    "Two sentences here. And another one, a little longer than the first one was.",
];

/// Each text's embedding is bit-identical alone and inside batches of 2 to 64 texts of mixed
/// lengths, at every position (the batches rotate through the pool, so every text sits at many
/// positions with different neighbours and padding).
#[test]
fn minilm_embeddings_do_not_depend_on_the_batch() {
    let model = Model::load(&minilm_dir()).unwrap();
    // Every kernel variant of this CPU, on one thread and split over the pool; the portable
    // one (software fused multiply-add, ~20x slower) on fewer batches.
    for cpu in CpuBackend::every_variant() {
        let sizes: &[usize] = match (cpu.kernel(), cpu.threads()) {
            (CpuKernel::Portable, 1) => &[3, 8],
            (CpuKernel::Portable, _) => continue,
            _ => &[2, 3, 5, 8, 13, 21, 34, 64],
        };
        batch_invariance(&model, &cpu, sizes);
    }
}

fn batch_invariance(model: &Model, cpu: &CpuBackend, sizes: &[usize]) {
    let alone: Vec<Vec<u32>> = POOL
        .iter()
        .map(|t| {
            let out = embed(model, cpu, &[t]);
            out[0].iter().map(|v| v.to_bits()).collect()
        })
        .collect();
    let mut checked = 0;
    for (round, &size) in sizes.iter().enumerate() {
        let batch: Vec<usize> = (0..size)
            .map(|i| (i * 7 + round * 3) % POOL.len())
            .collect();
        let texts: Vec<&str> = batch.iter().map(|&i| POOL[i]).collect();
        let out = embed(model, cpu, &texts);
        for (pos, (&i, row)) in batch.iter().zip(&out).enumerate() {
            let bits: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
            assert_eq!(
                bits,
                alone[i],
                "text {i} at position {pos} of a batch of {size}, {:?} on {} threads",
                cpu.kernel(),
                cpu.threads()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, sizes.iter().sum::<usize>());
}

/// Over-long input is truncated to the model's 256 tokens (not refused); the text and the
/// same text with more appended give the same embedding once both exceed the limit.
#[test]
fn minilm_truncates_at_256_tokens() {
    let model = Model::load(&minilm_dir()).unwrap();
    let long = "word ".repeat(300);
    let longer = format!("{long} and a different ending");
    assert_eq!(model.tokenize(&long).unwrap().len(), 256);
    let cpu = CpuBackend::new();
    let e = embed(&model, &cpu, &[&long, &longer]);
    assert_eq!(e[0], e[1]);
}

fn seeded(dir: &Path) -> Model {
    let spec = BertSpec {
        hidden: 16,
        layers: 2,
        heads: 4,
        intermediate: 32,
        max_positions: 40,
    };
    write_seeded_bert(dir, 11, &spec).unwrap();
    Model::load(dir).unwrap()
}

#[test]
fn seeded_bert_runs_and_is_reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ma = seeded(a.path());
    let mb = seeded(b.path());
    assert_eq!(ma.id(), mb.id());
    let cpu = CpuBackend::new();
    let input = ma.example_input();
    let oa = ma.run(&cpu, &input).unwrap();
    assert_eq!(oa.shape, [2, 16]);
    assert_eq!(oa.hash(), mb.run(&cpu, &input).unwrap().hash());
    let json = oa.to_json();
    assert_eq!(json["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(json["embeddings"][0].as_array().unwrap().len(), 16);
    // max_seq_length is min(positions, 256) = 40.
    assert_eq!(ma.tokenize(&"a ".repeat(100)).unwrap().len(), 40);
}

#[test]
fn bad_text_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = seeded(dir.path());
    let cpu = CpuBackend::new();
    let too_many: Vec<&str> = vec!["a"; crate::MAX_ROWS + 1];
    let huge = "a".repeat(crate::MAX_TEXT_BYTES + 1);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "bad input"),
        (br#"{"inputs": [[1.0]]}"#.to_vec(), "texts"),
        (br#"{"texts": "one string"}"#.to_vec(), "bad input"),
        (br#"{"texts": [1, 2]}"#.to_vec(), "bad input"),
        (br#"{"texts": ["a"], "extra": 1}"#.to_vec(), "extra"),
        (texts_json(&[]), "0 rows"),
        (texts_json(&too_many), "257 rows"),
        (texts_json(&["fine", &huge]), "text 1 is 65537 bytes"),
    ];
    for (input, want) in cases {
        let err = model.run(&cpu, &input).unwrap_err();
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
    let mut rng = crate::rng::SplitMix64::new(3);
    for len in [1usize, 10, 1000] {
        let garbage: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        assert!(model.run(&cpu, &garbage).is_err());
    }
}

/// Rewrites one file of a seeded model directory and returns the load error.
fn load_after(edit: impl FnOnce(&Path)) -> Error {
    let dir = tempfile::tempdir().unwrap();
    seeded(dir.path());
    edit(dir.path());
    Model::load(dir.path()).unwrap_err()
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn broken_model_directories_are_clear_errors() {
    let e = load_after(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    let e = load_after(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    // Truncated weights.
    let e = load_after(|d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(matches!(e, Error::BadSafetensors { .. }), "{e}");
    // Garbage weights.
    let e = load_after(|d| std::fs::write(d.join("model.safetensors"), [0xffu8; 4096]).unwrap());
    assert!(matches!(e, Error::BadSafetensors { .. }), "{e}");
    // Config disagrees with the weights.
    let e = load_after(|d| {
        edit_json(&d.join("config.json"), |c| {
            c["intermediate_size"] = 48.into()
        })
    });
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let e = load_after(|d| {
        edit_json(&d.join("config.json"), |c| {
            c["num_hidden_layers"] = 3.into()
        })
    });
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    let e = load_after(|d| {
        edit_json(&d.join("config.json"), |c| {
            c["num_hidden_layers"] = 1.into()
        })
    });
    assert!(matches!(e, Error::UnexpectedTensor { .. }), "{e}");
    let e = load_after(|d| {
        edit_json(&d.join("config.json"), |c| {
            c["num_attention_heads"] = 5.into()
        })
    });
    assert!(matches!(e, Error::BadSpec { .. }), "{e}");
    let e = load_after(|d| edit_json(&d.join("config.json"), |c| c["hidden_act"] = "relu".into()));
    assert!(matches!(e, Error::UnsupportedActivation { .. }), "{e}");
    let e = load_after(|d| edit_json(&d.join("config.json"), |c| c["vocab_size"] = 7.into()));
    assert!(matches!(e, Error::BadTokenizer { .. }), "{e}");
    let e = load_after(|d| edit_json(&d.join("config.json"), |c| c["hidden_size"] = "big".into()));
    assert!(matches!(e, Error::BadConfig { .. }), "{e}");
    let e = load_after(|d| edit_json(&d.join("config.json"), |c| c["model_type"] = "gpt2".into()));
    assert!(matches!(e, Error::UnsupportedArchitecture { .. }), "{e}");
    let e = load_after(|d| {
        edit_json(&d.join("1_Pooling/config.json"), |c| {
            c["pooling_mode_cls_token"] = true.into()
        })
    });
    assert!(e.to_string().contains("only mean pooling"), "{e}");
    let e = load_after(|d| {
        edit_json(&d.join("sentence_bert_config.json"), |c| {
            c["max_seq_length"] = 41.into()
        })
    });
    assert!(e.to_string().contains("max_seq_length 41"), "{e}");
    let e = load_after(|d| std::fs::write(d.join("tokenizer.json"), b"{\"model\": 1").unwrap());
    assert!(matches!(e, Error::BadTokenizer { .. }), "{e}");
}

/// The id covers the tokenizer and the sentence-transformers files: changing any changes it.
#[test]
fn model_id_covers_every_file_that_changes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let base = seeded(dir.path()).id();
    for file in [
        "tokenizer.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        let p = dir.path().join(file);
        let original = std::fs::read(&p).unwrap();
        let mut changed = original.clone();
        changed.push(b' ');
        std::fs::write(&p, &changed).unwrap();
        assert_ne!(crate::manifest(dir.path()).unwrap().1, base, "{file}");
        std::fs::write(&p, &original).unwrap();
    }
    assert_eq!(crate::manifest(dir.path()).unwrap().1, base);
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<ReferenceCase>,
}

#[derive(serde::Deserialize)]
struct ReferenceCase {
    text: String,
    tokens: usize,
    embedding: Vec<f64>,
}

/// Against an independent float64 NumPy implementation (`scripts/gen-minilm-reference`):
/// every component within 2e-6 absolute. Bound: the f32 pipeline's rounding, measured at
/// 1.5e-7 worst over these texts (components are O(0.05–0.2) of a unit vector), with
/// headroom; a wrong op (a missing bias, the tanh GELU, another LayerNorm eps) moves
/// components by 1e-4 or more.
#[test]
fn minilm_matches_a_float64_reference() {
    let model = Model::load(&minilm_dir()).unwrap();
    let reference: Reference = serde_json::from_str(include_str!("reference.json")).unwrap();
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    let ours = embed(&model, &CpuBackend::new(), &texts);
    let mut worst = 0.0f64;
    for (case, e) in reference.cases.iter().zip(&ours) {
        assert_eq!(model.tokenize(&case.text).unwrap().len(), case.tokens);
        for (a, b) in e.iter().zip(&case.embedding) {
            worst = worst.max((*a as f64 - b).abs());
        }
    }
    eprintln!("worst |f32 - f64| = {worst:.3e}");
    assert!(worst < 2e-6, "worst deviation {worst:e}");
}

/// Pins all-MiniLM-L6-v2's exact-mode output bits: a batch of the pool's 11 texts, hashed, under
/// every kernel variant of this CPU (AVX-512, AVX2, portable), on one thread and split. Any change to the order of a floating-point operation
/// anywhere in the model (packing, tiling, threading, fusions) changes this hash; every output
/// hash on the network would change with it. Update only on purpose.
#[test]
fn minilm_output_bits_are_pinned() {
    let model = Model::load(&minilm_dir()).unwrap();
    let input = texts_json(POOL);
    for cpu in CpuBackend::every_variant() {
        let out = model.run(&cpu, &input).unwrap();
        assert_eq!(
            crate::id::hex32(&out.hash()),
            "0x65f7ec942d03674eec7f37072c6553aa27e4304168a101847e3682f5a315017e",
            "{:?} on {} threads",
            cpu.kernel(),
            cpu.threads()
        );
    }
}

/// Jobs running at once on the shared pool (an inference batch and re-executions, each
/// backend capped to its cores) give the bits each gives alone.
#[test]
fn concurrent_jobs_on_the_shared_pool_give_the_same_bits() {
    let model = Model::load(&minilm_dir()).unwrap();
    let batch = texts_json(&POOL[..5]);
    let single = texts_json(&POOL[5..6]);
    let want_batch = model.run(&CpuBackend::portable(), &batch).unwrap().hash();
    let want_single = model.run(&CpuBackend::portable(), &single).unwrap().hash();
    std::thread::scope(|s| {
        for job in 0..4 {
            let (model, batch, single) = (&model, &batch, &single);
            s.spawn(move || {
                let cpu = CpuBackend::new().with_threads(1 + job % 2);
                for _ in 0..5 {
                    assert_eq!(model.run(&cpu, batch).unwrap().hash(), want_batch);
                    assert_eq!(model.run(&cpu, single).unwrap().hash(), want_single);
                }
            });
        }
    });
}
