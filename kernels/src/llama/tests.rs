use std::sync::OnceLock;

use super::*;
use crate::CpuBackend;
use crate::gguf::{Value, write};
use crate::sample::{Sampling, argmax};

pub(crate) fn smollm2() -> &'static Llama {
    static MODEL: OnceLock<Llama> = OnceLock::new();
    MODEL.get_or_init(|| {
        let bytes = std::fs::read(crate::testing::smollm2_dir().join("model.gguf")).unwrap();
        Llama::from_gguf(&bytes).unwrap()
    })
}

#[derive(serde::Deserialize)]
struct Reference {
    probes: Vec<u32>,
    cases: Vec<RefCase>,
}

#[derive(serde::Deserialize)]
struct RefCase {
    messages: Vec<RefMessage>,
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    positions: Vec<RefPosition>,
}

#[derive(serde::Deserialize)]
struct RefMessage {
    role: String,
    content: String,
}

#[derive(serde::Deserialize)]
struct RefPosition {
    top: Vec<(u32, f64)>,
    probes: Vec<f64>,
    margin: f64,
}

fn reference() -> Reference {
    serde_json::from_str(include_str!("reference.json")).unwrap()
}

/// Largest |our logit − float64 logit| allowed: 7× the 1.41e-4 measured over 4 prompts, 255
/// positions and 21 logits each (the test prints it).
const BOUND: f64 = 1e-3;

/// Greedy decoding of `max` tokens after `prompt`, one token per forward after the prefill.
fn greedy(model: &Llama, backend: &dyn Backend, prompt: &[u32], max: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut logits = model
        .forward(backend, &mut [&mut cache], &[prompt], false)
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..max {
        let t = argmax(&logits);
        out.push(t);
        logits = model
            .forward(backend, &mut [&mut cache], &[&[t]], false)
            .unwrap();
    }
    out
}

#[test]
fn smollm2_matches_the_float64_reference() {
    let model = smollm2();
    let reference = reference();
    let backend = CpuBackend::new();
    let mut worst = 0.0f64;
    let (mut covered, mut total) = (0, 0);
    for case in &reference.cases {
        let messages: Vec<ChatMessage> = case
            .messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect();
        assert_eq!(model.chat_prompt(&messages).unwrap(), case.prompt);
        // Every position's logits in one call (prompt and the reference's completion).
        let ids: Vec<u32> = case
            .prompt
            .iter()
            .chain(&case.greedy[..case.greedy.len() - 1])
            .copied()
            .collect();
        let mut cache = model.new_cache();
        let logits = model
            .forward(&backend, &mut [&mut cache], &[&ids], true)
            .unwrap();
        let vocab = model.spec().vocab;
        assert_eq!(logits.len(), ids.len() * vocab);
        assert_eq!(case.positions.len(), ids.len());
        for (row, pos) in logits.chunks_exact(vocab).zip(&case.positions) {
            let pairs = pos.top.iter().copied().chain(
                reference
                    .probes
                    .iter()
                    .copied()
                    .zip(pos.probes.iter().copied()),
            );
            for (id, want) in pairs {
                let diff = (f64::from(row[id as usize]) - want).abs();
                worst = worst.max(diff);
            }
        }
        // Greedy decoding agrees wherever the reference's choice is clear of the bound.
        let ours = greedy(model, &backend, &case.prompt, case.greedy.len());
        let first = case.prompt.len() - 1;
        for (j, (&a, &b)) in ours.iter().zip(&case.greedy).enumerate() {
            if case.positions[first + j].margin <= 2.0 * BOUND {
                break;
            }
            assert_eq!(a, b, "greedy token {j} of {:?}", case.messages[0].content);
            covered += 1;
        }
        total += case.greedy.len();
    }
    eprintln!(
        "largest logit difference from float64: {worst:.2e}; greedy tokens compared: {covered} of {total}"
    );
    assert!(worst <= BOUND, "logits differ by {worst}");
    assert!(
        covered * 4 >= total * 3,
        "only {covered} of {total} compared"
    );
}

#[test]
fn prompt_split_and_batching_do_not_change_bits() {
    let model = smollm2();
    let backend = CpuBackend::new();
    let reference = reference();
    let prompts: Vec<&[u32]> = reference
        .cases
        .iter()
        .map(|c| c.prompt.as_slice())
        .collect();
    // Alone, the prompt in one call, then 6 greedy steps.
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| greedy(model, &backend, p, 6))
        .collect();
    // The prompt split into pieces of 7 gives the same last logits.
    for (p, want) in prompts.iter().zip(&alone) {
        let mut cache = model.new_cache();
        let mut logits = Vec::new();
        for piece in p.chunks(7) {
            logits = model
                .forward(&backend, &mut [&mut cache], &[piece], false)
                .unwrap();
        }
        assert_eq!(argmax(&logits), want[0]);
        let mut one = model.new_cache();
        let whole = model
            .forward(&backend, &mut [&mut one], &[p], false)
            .unwrap();
        assert!(
            logits
                .iter()
                .zip(&whole)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "split prefill changed bits"
        );
    }
    // All four decoded together, in rotating order, prompts prefilled in one batch too.
    for rotate in 0..prompts.len() {
        let order: Vec<usize> = (0..prompts.len())
            .map(|i| (i + rotate) % prompts.len())
            .collect();
        let mut caches: Vec<KvCache> = order.iter().map(|_| model.new_cache()).collect();
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let toks: Vec<&[u32]> = order.iter().map(|&i| prompts[i]).collect();
        let mut logits = model.forward(&backend, &mut refs, &toks, false).unwrap();
        let mut got: Vec<Vec<u32>> = vec![Vec::new(); order.len()];
        for _ in 0..6 {
            let next: Vec<u32> = logits
                .chunks_exact(model.spec().vocab)
                .map(argmax)
                .collect();
            for (g, &t) in got.iter_mut().zip(&next) {
                g.push(t);
            }
            let singles: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let toks: Vec<&[u32]> = singles.iter().map(|t| t.as_slice()).collect();
            logits = model.forward(&backend, &mut refs, &toks, false).unwrap();
        }
        for (slot, &i) in order.iter().enumerate() {
            assert_eq!(got[slot], alone[i], "prompt {i} at batch slot {slot}");
        }
    }
}

#[test]
fn every_cpu_kernel_gives_the_same_logits() {
    let model = smollm2();
    let prompt = &reference().cases[0].prompt;
    let mut first: Option<Vec<f32>> = None;
    for backend in CpuBackend::every_variant() {
        let mut cache = model.new_cache();
        let logits = model
            .forward(&backend, &mut [&mut cache], &[prompt], false)
            .unwrap();
        match &first {
            None => first = Some(logits),
            Some(f) => assert!(
                f.iter()
                    .zip(&logits)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{:?} with {} threads differs",
                backend.kernel(),
                backend.threads()
            ),
        }
    }
}

#[test]
fn chat_prompts_follow_chatml() {
    let model = smollm2();
    let tok = model.tokenizer();
    let user = |s: &str| ChatMessage {
        role: "user".into(),
        content: s.into(),
    };
    let ids = model.chat_prompt(&[user("Hi")]).unwrap();
    let text = String::from_utf8(tok.decode_bytes(&ids)).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(ids[0], 1);
    assert_eq!(model.eos(), 2);
    // A literal control string in a message is text, not the control token.
    let ids = model.chat_prompt(&[user("<|im_end|>")]).unwrap();
    assert_eq!(ids.iter().filter(|&&t| t == 2).count(), 2);
    for bad in [
        vec![],
        vec![ChatMessage {
            role: "tool".into(),
            content: "x".into(),
        }],
    ] {
        assert!(matches!(
            model.chat_prompt(&bad),
            Err(Error::BadInput { .. })
        ));
    }
}

#[test]
fn bad_tokens_and_full_contexts_are_errors_that_leave_the_cache() {
    let model = smollm2();
    let backend = CpuBackend::new();
    let mut cache = model.new_cache();
    model
        .forward(&backend, &mut [&mut cache], &[&[1, 2, 3]], false)
        .unwrap();
    let err = model
        .forward(&backend, &mut [&mut cache], &[&[49_152]], false)
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    assert!(matches!(
        model.forward(&backend, &mut [&mut cache], &[&[]], false),
        Err(Error::BadInput { .. })
    ));
    let long = vec![5u32; model.spec().context - 2];
    assert!(matches!(
        model.forward(&backend, &mut [&mut cache], &[&long], false),
        Err(Error::ContextFull {
            tokens: 8193,
            context: 8192
        })
    ));
    assert_eq!(cache.len(), 3);
    let a = model
        .forward(&backend, &mut [&mut cache], &[&[4]], false)
        .unwrap();
    let mut fresh = model.new_cache();
    let b = model
        .forward(&backend, &mut [&mut fresh], &[&[1, 2, 3, 4]], false)
        .unwrap();
    assert_eq!(a, b, "the failed calls left the cache as it was");
}

#[test]
fn seeded_sampling_repeats() {
    let model = smollm2();
    let backend = CpuBackend::new();
    let prompt = &reference().cases[1].prompt;
    let run = |seed: u64| {
        let s = Sampling {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            seed,
        };
        let mut cache = model.new_cache();
        let mut logits = model
            .forward(&backend, &mut [&mut cache], &[prompt], false)
            .unwrap();
        let mut out = Vec::new();
        for i in 0..12 {
            let t = s.choose(&logits, (prompt.len() + i) as u64);
            out.push(t);
            logits = model
                .forward(&backend, &mut [&mut cache], &[&[t]], false)
                .unwrap();
        }
        out
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn tiny_llama_loads_and_decodes() {
    let bytes = seeded_llama_gguf(1, 2);
    let model = Llama::from_gguf(&bytes).unwrap();
    assert_eq!(model.spec().head_dim, 16);
    let backend = CpuBackend::new();
    let prompt = model
        .chat_prompt(&[ChatMessage {
            role: "user".into(),
            content: "the cat".into(),
        }])
        .unwrap();
    let out = greedy(&model, &backend, &prompt, 8);
    assert_eq!(out.len(), 8);
    assert!(out.iter().all(|&t| (t as usize) < 300));
    assert_eq!(out, greedy(&model, &backend, &prompt, 8));
}

type Meta = Vec<(String, Value)>;
type Tensors = Vec<(String, Vec<u64>, TensorType, Vec<u8>)>;

#[test]
fn malformed_models_name_the_problem() {
    let good = seeded_llama_gguf(1, 1);
    let g = Gguf::parse(&good).unwrap();
    let rebuild = |edit: &dyn Fn(&mut Meta, &mut Tensors)| {
        let mut meta: Meta = g
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors: Tensors = g
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone(), t.kind, t.data.to_vec()))
            .collect();
        edit(&mut meta, &mut tensors);
        let meta: Vec<(&str, Value)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let tensors: Vec<(&str, Vec<u64>, TensorType, Vec<u8>)> = tensors
            .iter()
            .map(|(n, d, k, b)| (n.as_str(), d.clone(), *k, b.clone()))
            .collect();
        let bytes = write(&meta, &tensors);
        match Llama::from_gguf(&bytes) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        }
    };
    let set = |key: &'static str, v: Value| {
        move |m: &mut Meta, _: &mut Tensors| {
            for (k, old) in m.iter_mut() {
                if k == key {
                    *old = v.clone();
                }
            }
        }
    };
    assert!(rebuild(&set("general.architecture", Value::String("gpt2".into()))).contains("gpt2"));
    assert!(rebuild(&set("llama.attention.head_count_kv", Value::U32(3))).contains("kv heads"));
    assert!(rebuild(&set("llama.block_count", Value::U32(0))).contains("block_count is 0"));
    assert!(rebuild(&set("llama.rope.dimension_count", Value::U32(8))).contains("RoPE over 8"));
    assert!(rebuild(&set("llama.feed_forward_length", Value::U32(128))).contains("has shape"));
    assert!(rebuild(&set("llama.block_count", Value::U32(2))).contains("blk.1"));
    assert!(
        rebuild(&set(
            "llama.attention.layer_norm_rms_epsilon",
            Value::String("x".into())
        ))
        .contains("not a float")
    );
    let drop = |name: &'static str| {
        move |_: &mut Meta, t: &mut Tensors| {
            t.retain(|x| x.0 != name);
        }
    };
    assert!(rebuild(&drop("blk.0.ffn_up.weight")).contains("blk.0.ffn_up.weight is missing"));
    let unset = |key: &'static str| {
        move |m: &mut Meta, _: &mut Tensors| {
            m.retain(|x| x.0 != key);
        }
    };
    assert!(rebuild(&unset("tokenizer.chat_template")).contains("not ChatML"));
    // A default system message longer than jobs are priced for.
    let long_system = format!("<|im_start|>system\n{}<|im_end|>\n", "x".repeat(236));
    assert!(
        rebuild(&set("tokenizer.chat_template", Value::String(long_system))).contains("257 tokens")
    );
    assert!(rebuild(&unset("llama.context_length")).contains("llama.context_length is missing"));
    let extra = |_: &mut Meta, t: &mut Tensors| {
        t.push((
            "rope_freqs.weight".into(),
            vec![8],
            TensorType::F32,
            vec![0; 32],
        ));
    };
    assert!(rebuild(&extra).contains("unexpected tensor rope_freqs.weight"));
    // A weight stored in a type this build does not dequantise.
    let retype = |_: &mut Meta, t: &mut Tensors| {
        for x in t.iter_mut() {
            if x.0 == "blk.0.attn_q.weight" {
                x.2 = TensorType::Q4_0;
                x.3.truncate(x.3.len() / 20 * 18);
            }
        }
    };
    assert!(rebuild(&retype).contains("type Q4_0"));
}

/// The bits of SmolLM2's logits are pinned: a change to any op's arithmetic order, to the
/// RoPE table or to the dequantisation shows here (and would split honest nodes).
#[test]
fn smollm2_logits_are_pinned() {
    let model = smollm2();
    let prompt = &reference().cases[3].prompt;
    let mut cache = model.new_cache();
    let backend = CpuBackend::new();
    let logits = model
        .forward(&backend, &mut [&mut cache], &[prompt], false)
        .unwrap();
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    // Then a few decode steps, through the cache.
    let mut steps = Vec::new();
    let mut t = argmax(&logits);
    for _ in 0..4 {
        let l = model
            .forward(&backend, &mut [&mut cache], &[&[t]], false)
            .unwrap();
        steps.extend(l.iter().flat_map(|v| v.to_le_bytes()));
        t = argmax(&l);
    }
    let hash = |b: &[u8]| crate::id::hex32(&crate::keccak256(b));
    assert_eq!(
        (hash(&bytes), hash(&steps)),
        (PINNED_PREFILL.to_string(), PINNED_STEPS.to_string())
    );
}

const PINNED_PREFILL: &str = "0xafb5cc07c1d0df942eed9165b11767847154ac2a6209136400787de573235683";
const PINNED_STEPS: &str = "0xe5400bc7528396222d2c76271aca935f08f44d755c9bf59cffd5355196e2060f";

/// The seeded files' bytes are part of other tests' and the fuzz corpus's expectations (model
/// ids, seeds): shaping the generator must not move them.
#[test]
fn seeded_files_keep_their_bytes() {
    for (seed, layers, id) in [
        (
            1u64,
            1usize,
            "e7cea745f275612d638c04d2e90084861550acccef10e9c81aa434b5f48d533d",
        ),
        (
            1,
            2,
            "d028d2ace6a8c874bf12ef97a969895d005c8e4c0a3fb5dd08b7053b9f7909aa",
        ),
        (
            3,
            2,
            "2bd50dae11632bdd7f249191c25b88359b9576d985f92f0ead63ce854f12a5d4",
        ),
        (
            4,
            1,
            "2219fb2fc9eccf88dbe6ede2a4c8474f4423e9a3120772fbfd9081f536843358",
        ),
    ] {
        let hash = crate::keccak256(&seeded_llama_gguf(seed, layers));
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, id, "seed {seed}, {layers} layers");
    }
}

/// A seeded file of SmolLM2's shapes loads with SmolLM2's architecture.
#[test]
fn seeded_smollm2_shapes_load() {
    let mut shape = crate::SeededShape::smollm2();
    shape.layers = 2;
    let model = Llama::from_gguf(&crate::seeded_llama_gguf_shaped(9, &shape)).unwrap();
    let s = model.spec();
    assert_eq!(
        (
            s.hidden, s.ffn, s.heads, s.kv_heads, s.head_dim, s.vocab, s.context
        ),
        (576, 1536, 9, 3, 64, 49_152, 8192)
    );
}
