//! Llama-architecture decoder language models from GGUF files (SmolLM2-135M-Instruct), run in
//! exact mode on the [`Backend`] ops.
//!
//! The architecture is read from the file's metadata (`llama.*`): layers, hidden and FFN
//! widths, query and key-value heads (grouped-query attention), RMSNorm epsilon, RoPE base over
//! the whole head with consecutive-pair rotation, SwiGLU, and a language-model head tied to the
//! token embedding when the file has no `output.weight`.
//!
//! Q4_1 and Q8_0 weights stay quantised in memory, re-laid out at load into the GEMM's 16-column
//! panels (one byte per value and a scale and minimum per 32), and each panel is dequantised
//! into a small buffer as the GEMM reaches it. A value is an exact function of its block
//! (`q·d` is exact in f32; Q4_1 adds `m` with one rounding), so this gives the bits of
//! dequantising the whole model at load, while a decoded token reads about 1.25 bytes per
//! weight instead of 4: at batch 1 the weights' memory traffic is what bounds decode speed.
//! The token embedding keeps the file's encoding; its rows are dequantised when gathered.
//!
//! A forward pass takes any number of sequences, each with its own key-value cache and any
//! number of new tokens; every op is row-wise except attention, which runs per sequence, so a
//! sequence's logits do not depend on what else was in the batch or on how its tokens were
//! split between calls.

use crate::backend::{Backend, Epilogue, PackedMatrix, QuantKind};
use crate::bpe::BpeTokenizer;
use crate::gguf::{Gguf, TensorType, Value, f32_to_f16, write};
use crate::rng::SplitMix64;
use crate::{Error, RopeTable};

/// Limits on what a GGUF file may declare (far above SmolLM2's).
const MAX_LAYERS: u64 = 256;
const MAX_WIDTH: u64 = 1 << 16;
const MAX_HEADS: u64 = 1024;
const MAX_CONTEXT: u64 = 1 << 15;
/// Widest head: with the context, bounds the RoPE table (32768 × 128 pairs × 8 bytes = 32 MiB)
/// whatever a small file declares.
const MAX_HEAD_DIM: usize = 256;
const MAX_VOCAB: u64 = 1 << 20;

/// The dimensions of a Llama model, from its GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaSpec {
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key-value heads (`heads` is a multiple of it).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest sequence (prompt and completion).
    pub context: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE frequency base.
    pub rope_base: f64,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadSpec {
        reason: reason.into(),
    }
}

impl LlamaSpec {
    fn from_gguf(g: &Gguf<'_>) -> Result<LlamaSpec, Error> {
        let arch = g.str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::UnsupportedArchitecture {
                architecture: arch.to_string(),
            });
        }
        let dim = |key: &str, max: u64| -> Result<usize, Error> {
            let v = g.uint(&format!("llama.{key}"))?;
            if v == 0 || v > max {
                return Err(bad(format!("llama.{key} is {v} (1 to {max})")));
            }
            Ok(v as usize)
        };
        let layers = dim("block_count", MAX_LAYERS)?;
        let hidden = dim("embedding_length", MAX_WIDTH)?;
        let ffn = dim("feed_forward_length", MAX_WIDTH)?;
        let heads = dim("attention.head_count", MAX_HEADS)?;
        let kv_heads = dim("attention.head_count_kv", MAX_HEADS)?;
        let context = dim("context_length", MAX_CONTEXT)?;
        let eps = g.float("llama.attention.layer_norm_rms_epsilon")?;
        let rope_base = g.float("llama.rope.freq_base").unwrap_or(10_000.0);
        if hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(bad(format!(
                "{heads} heads do not divide the width {hidden}, or {kv_heads} kv heads do not divide them"
            )));
        }
        let head_dim = hidden / heads;
        if head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(bad(format!(
                "head width {head_dim} is odd or over {MAX_HEAD_DIM}; RoPE needs pairs"
            )));
        }
        if let Ok(rot) = g.uint("llama.rope.dimension_count")
            && rot as usize != head_dim
        {
            return Err(bad(format!(
                "RoPE over {rot} of {head_dim} head dimensions; this build rotates whole heads"
            )));
        }
        if let Ok(kind) = g.str("llama.rope.scaling.type")
            && kind != "none"
        {
            return Err(bad(format!("RoPE scaling {kind:?} is not supported")));
        }
        if !(eps > 0.0 && eps < 1.0 && rope_base > 1.0 && rope_base < 1e9) {
            return Err(bad(format!(
                "RMSNorm epsilon {eps} or RoPE base {rope_base} out of range"
            )));
        }
        let vocab = g.array("tokenizer.ggml.tokens")?.len();
        if vocab == 0 || vocab as u64 > MAX_VOCAB {
            return Err(bad(format!("{vocab} tokens (1 to {MAX_VOCAB})")));
        }
        Ok(LlamaSpec {
            layers,
            hidden,
            ffn,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context,
            eps: eps as f32,
            rope_base,
        })
    }

    /// Width of a query-key-value row: the query heads, then the key heads, then the value
    /// heads.
    fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// `hidden × qkv_width`: query, key and value projections side by side.
    qkv: PackedMatrix,
    /// `hidden × hidden`.
    out: PackedMatrix,
    ffn_norm: Vec<f32>,
    /// `hidden × 2·ffn`: gate, then up.
    gate_up: PackedMatrix,
    /// `ffn × hidden`.
    down: PackedMatrix,
}

/// The token embedding, kept in its file encoding; rows dequantised when gathered.
struct Embedding {
    kind: TensorType,
    /// Bytes of one row.
    row_bytes: usize,
    bytes: Vec<u8>,
}

impl Embedding {
    fn row(&self, id: u32, out: &mut Vec<f32>) -> Result<(), Error> {
        let start = id as usize * self.row_bytes;
        let data = self
            .bytes
            .get(start..start + self.row_bytes)
            .ok_or_else(|| Error::BadInput {
                reason: format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.bytes.len() / self.row_bytes
                ),
            })?;
        crate::gguf::dequantize_into(self.kind, data, "token_embd.weight", out)
    }
}

/// A loaded Llama model with its tokenizer. Immutable; share it across threads.
pub(crate) struct Llama {
    spec: LlamaSpec,
    embd: Embedding,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `hidden × vocab`.
    head: PackedMatrix,
    rope: RopeTable,
    tokenizer: BpeTokenizer,
    chat: ChatTemplate,
}

/// One sequence's key-value cache: per layer, the keys and values of every position so far.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The ChatML template of the file (`tokenizer.chat_template`), and its default system
/// message.
#[derive(Debug, Clone)]
pub(crate) struct ChatTemplate {
    im_start: u32,
    im_end: u32,
    eos: u32,
    default_system: Option<String>,
}

/// Roles a chat message may have.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

impl ChatTemplate {
    fn from_gguf(g: &Gguf<'_>) -> Result<ChatTemplate, Error> {
        let tokens = g.array("tokenizer.ggml.tokens")?;
        let find = |text: &str| {
            tokens
                .iter()
                .position(|t| matches!(t, crate::gguf::Value::String(s) if s == text))
                .map(|i| i as u32)
                .ok_or_else(|| Error::BadTokenizer {
                    reason: format!("the vocabulary has no {text} token (ChatML)"),
                })
        };
        let template = g.str("tokenizer.chat_template").unwrap_or_default();
        if !template.contains("<|im_start|>") {
            return Err(Error::BadTokenizer {
                reason: "tokenizer.chat_template is not ChatML (<|im_start|>role…<|im_end|>)"
                    .into(),
            });
        }
        // SmolLM2's template inserts a fixed system message when the first message is not one.
        let default_system = template
            .split_once("<|im_start|>system\n")
            .and_then(|(_, rest)| rest.split_once("<|im_end|>"))
            .map(|(msg, _)| msg.to_string());
        // Its tokens (at most one per byte, plus the turn's 10 around it and the generation
        // prompt's 11) are what `units_bound` allows beyond a request's bytes.
        let fixed = default_system.as_ref().map_or(0, |m| m.len() as u64) + 21;
        if fixed > crate::generate::TEMPLATE_ALLOWANCE {
            return Err(Error::BadTokenizer {
                reason: format!(
                    "the chat template's default system message and generation prompt may take \
                     {fixed} tokens; jobs are priced on at most {}",
                    crate::generate::TEMPLATE_ALLOWANCE
                ),
            });
        }
        let eos = g
            .uint("tokenizer.ggml.eos_token_id")
            .ok()
            .map(|v| v as u32)
            .map_or_else(|| find("<|im_end|>"), Ok)?;
        Ok(ChatTemplate {
            im_start: find("<|im_start|>")?,
            im_end: find("<|im_end|>")?,
            eos,
            default_system,
        })
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// The linear layers `names` (each `[k, n_i]` in the file: `n_i` outputs of `k` inputs) side
/// by side as one packed `k × Σ n_i` matrix. Q4_1 and Q8_0 stay quantised (dequantised panel
/// by panel inside the GEMM, the same bits); other types, or a mix, are dequantised here.
fn packed(g: &Gguf<'_>, names: &[String], k: usize, ns: &[usize]) -> Result<PackedMatrix, Error> {
    let mut tensors = Vec::with_capacity(names.len());
    for (name, &n) in names.iter().zip(ns) {
        let t = g.tensor(name)?;
        if t.dims != [k as u64, n as u64] {
            return Err(Error::ShapeMismatch {
                name: name.clone(),
                expected: vec![k, n],
                actual: t.dims.iter().map(|&d| d as usize).collect(),
            });
        }
        tensors.push(t);
    }
    let total: usize = ns.iter().sum();
    let kind = match tensors[0].kind {
        TensorType::Q4_1 => Some(QuantKind::Q4_1),
        TensorType::Q8_0 => Some(QuantKind::Q8_0),
        _ => None,
    };
    let Some(kind) = kind.filter(|_| tensors.iter().all(|t| t.kind == tensors[0].kind)) else {
        let mut w_t = Vec::with_capacity(k * total);
        for t in &tensors {
            w_t.extend(t.to_f32()?);
        }
        return Ok(PackedMatrix::from_transposed(&w_t, k, total));
    };
    // Every scale and minimum must be finite (the values then are).
    for t in &tensors {
        t.check_scales()?;
    }
    // Output column j → (tensor, its row).
    let mut owner = Vec::with_capacity(total);
    for (i, &n) in ns.iter().enumerate() {
        owner.extend((0..n).map(|r| (i, r)));
    }
    let nb = k / 32;
    Ok(PackedMatrix::quantized(kind, k, total, |j, b| {
        let (i, r) = owner[j];
        tensors[i].block(r * nb + b)
    }))
}

fn vector(g: &Gguf<'_>, name: &str, n: usize) -> Result<Vec<f32>, Error> {
    let t = g.tensor(name)?;
    if t.dims != [n as u64] {
        return Err(Error::ShapeMismatch {
            name: name.into(),
            expected: vec![n],
            actual: t.dims.iter().map(|&d| d as usize).collect(),
        });
    }
    t.to_f32()
}

impl Llama {
    /// Loads a model from the bytes of a GGUF file, checking the architecture, every tensor's
    /// shape and type, and the tokenizer.
    pub(crate) fn from_gguf(bytes: &[u8]) -> Result<Llama, Error> {
        let g = Gguf::parse(bytes)?;
        let spec = LlamaSpec::from_gguf(&g)?;
        let tokenizer = BpeTokenizer::from_gguf(&g)?;
        let chat = ChatTemplate::from_gguf(&g)?;
        let (h, kvw) = (spec.hidden, spec.kv_width());
        let mut used = vec!["token_embd.weight".to_string(), "output_norm.weight".into()];
        let mut layers = Vec::with_capacity(spec.layers);
        for l in 0..spec.layers {
            let name = |part: &str| format!("blk.{l}.{part}.weight");
            let names = |parts: &[&str]| parts.iter().map(|p| name(p)).collect::<Vec<_>>();
            layers.push(Layer {
                attn_norm: vector(&g, &name("attn_norm"), h)?,
                qkv: packed(
                    &g,
                    &names(&["attn_q", "attn_k", "attn_v"]),
                    h,
                    &[h, kvw, kvw],
                )?,
                out: packed(&g, &names(&["attn_output"]), h, &[h])?,
                ffn_norm: vector(&g, &name("ffn_norm"), h)?,
                gate_up: packed(
                    &g,
                    &names(&["ffn_gate", "ffn_up"]),
                    h,
                    &[spec.ffn, spec.ffn],
                )?,
                down: packed(&g, &names(&["ffn_down"]), spec.ffn, &[h])?,
            });
            for part in [
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "attn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
                "ffn_norm",
            ] {
                used.push(name(part));
            }
        }
        let embd_t = g.tensor("token_embd.weight")?;
        if embd_t.dims != [h as u64, spec.vocab as u64] {
            return Err(Error::ShapeMismatch {
                name: "token_embd.weight".into(),
                expected: vec![h, spec.vocab],
                actual: embd_t.dims.iter().map(|&d| d as usize).collect(),
            });
        }
        // The head: `output.weight` when present, else the embedding (tied).
        let head_name = if g.tensor("output.weight").is_ok() {
            used.push("output.weight".into());
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let head = packed(&g, &[head_name.to_string()], h, &[spec.vocab])?;
        // `rope_freqs.weight` would scale the frequencies: not supported; anything else unused
        // means a model this loader does not understand.
        let used: std::collections::HashSet<&str> = used.iter().map(String::as_str).collect();
        if let Some(extra) = g.tensors.iter().find(|t| !used.contains(t.name.as_str())) {
            return Err(Error::UnexpectedTensor {
                name: extra.name.clone(),
            });
        }
        if tokenizer.vocab_size() != spec.vocab {
            return Err(bad("tokenizer and embedding sizes differ"));
        }
        let embd = Embedding {
            kind: embd_t.kind,
            row_bytes: embd_t.data.len() / spec.vocab,
            bytes: embd_t.data.to_vec(),
        };
        // The table covers the context; RoPE tables are small (8192 × 32 pairs: 2 MB).
        let rope = RopeTable::new(spec.head_dim, spec.context, spec.rope_base);
        Ok(Llama {
            norm: vector(&g, "output_norm.weight", h)?,
            spec,
            embd,
            layers,
            head,
            rope,
            tokenizer,
            chat,
        })
    }

    pub(crate) fn spec(&self) -> &LlamaSpec {
        &self.spec
    }

    pub(crate) fn tokenizer(&self) -> &BpeTokenizer {
        &self.tokenizer
    }

    /// The end-of-sequence token (`<|im_end|>` for SmolLM2-Instruct).
    pub(crate) fn eos(&self) -> u32 {
        self.chat.eos
    }

    /// An empty cache for one sequence.
    pub(crate) fn new_cache(&self) -> KvCache {
        KvCache {
            k: vec![Vec::new(); self.spec.layers],
            v: vec![Vec::new(); self.spec.layers],
            len: 0,
        }
    }

    /// The prompt of a chat in ChatML: `<|im_start|>role\ncontent<|im_end|>\n` per message,
    /// after the template's default system message when the first message is not a system
    /// message, then `<|im_start|>assistant\n`. Message text is tokenized as text only (a
    /// literal `<|im_end|>` in it is not the control token).
    pub(crate) fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, Error> {
        if messages.is_empty() {
            return Err(Error::BadInput {
                reason: "messages is empty".into(),
            });
        }
        let c = &self.chat;
        let newline = self.tokenizer.encode("\n");
        let mut ids = Vec::new();
        let mut turn = |role: &str, content: &str| {
            ids.push(c.im_start);
            ids.extend(self.tokenizer.encode(&format!("{role}\n{content}")));
            ids.push(c.im_end);
            ids.extend_from_slice(&newline);
        };
        if messages[0].role != "system"
            && let Some(system) = &c.default_system
        {
            turn("system", system);
        }
        for (i, m) in messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(Error::BadInput {
                    reason: format!(
                        "messages[{i}].role is {:?}; the roles are system, user and assistant",
                        m.role
                    ),
                });
            }
            turn(&m.role, &m.content);
        }
        ids.push(c.im_start);
        ids.extend(self.tokenizer.encode("assistant\n"));
        Ok(ids)
    }

    /// Runs `tokens[s]` through sequence `s` and appends them to its cache (`caches[s]`).
    /// Returns logits (`vocab` per row): the last new token's of every sequence, or with
    /// `every_row` those of every new token, in order. Nothing is appended on error.
    pub(crate) fn forward(
        &self,
        backend: &dyn Backend,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
        every_row: bool,
    ) -> Result<Vec<f32>, Error> {
        let s = &self.spec;
        assert_eq!(
            caches.len(),
            tokens.len(),
            "forward: one cache per sequence"
        );
        let mut positions = Vec::new();
        let mut x = Vec::new();
        for (cache, toks) in caches.iter().zip(tokens) {
            if toks.is_empty() {
                return Err(Error::BadInput {
                    reason: "a sequence has no new tokens".into(),
                });
            }
            if cache.len + toks.len() > s.context {
                return Err(Error::ContextFull {
                    tokens: cache.len + toks.len(),
                    context: s.context,
                });
            }
            positions.extend(cache.len..cache.len + toks.len());
            for &t in *toks {
                self.embd.row(t, &mut x)?;
            }
        }
        let rows = positions.len();
        let (h, qw, kvw) = (s.hidden, s.qkv_width(), s.kv_width());
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            let mut a = x.clone();
            backend.rmsnorm_rows(&mut a, h, &layer.attn_norm, s.eps);
            let mut qkv = backend.gemm_packed(&a, &layer.qkv, None, rows);
            backend.rope(
                &mut qkv,
                qw,
                s.heads + s.kv_heads,
                s.head_dim,
                &positions,
                &self.rope,
            );
            let mut queries = Vec::with_capacity(caches.len());
            let mut first = 0;
            for (cache, toks) in caches.iter_mut().zip(tokens) {
                let n = toks.len();
                let mut q = Vec::with_capacity(n * h);
                for row in qkv[first * qw..(first + n) * qw].chunks_exact(qw) {
                    q.extend_from_slice(&row[..h]);
                    cache.k[l].extend_from_slice(&row[h..h + kvw]);
                    cache.v[l].extend_from_slice(&row[h + kvw..]);
                }
                queries.push(q);
                first += n;
            }
            let seqs: Vec<(&[f32], &[f32], &[f32])> = queries
                .iter()
                .zip(caches.iter())
                .map(|(q, cache)| (&q[..], &cache.k[l][..], &cache.v[l][..]))
                .collect();
            let att =
                backend.attention_causal_batch(&seqs, (s.heads, s.kv_heads, s.head_dim), scale);
            x = backend.gemm_packed_then(&att, &layer.out, None, rows, Epilogue::Residual(&x));
            let mut a = x.clone();
            backend.rmsnorm_rows(&mut a, h, &layer.ffn_norm, s.eps);
            let gate_up = backend.gemm_packed(&a, &layer.gate_up, None, rows);
            let act = backend.swiglu(&gate_up, s.ffn);
            x = backend.gemm_packed_then(&act, &layer.down, None, rows, Epilogue::Residual(&x));
        }
        for (cache, toks) in caches.iter_mut().zip(tokens) {
            cache.len += toks.len();
        }
        let mut last = if every_row {
            x
        } else {
            let mut sel = Vec::with_capacity(tokens.len() * h);
            let mut end = 0;
            for toks in tokens {
                end += toks.len();
                sel.extend_from_slice(&x[(end - 1) * h..end * h]);
            }
            sel
        };
        let out_rows = last.len() / h;
        backend.rmsnorm_rows(&mut last, h, &self.norm, s.eps);
        let logits = backend.gemm_packed(&last, &self.head, None, out_rows);
        if logits.iter().any(|v| !v.is_finite()) {
            for (cache, toks) in caches.iter_mut().zip(tokens) {
                cache.len -= toks.len();
                for l in 0..s.layers {
                    cache.k[l].truncate(cache.len * kvw);
                    cache.v[l].truncate(cache.len * kvw);
                }
            }
            return Err(Error::NonFiniteOutput { layer: s.layers });
        }
        Ok(logits)
    }
}

/// The bytes of a small random Llama GGUF file whose bytes, and so whose id, depend only on the
/// arguments: `layers` blocks of width 64, 4 query and 2 key-value heads, FFN 96, Q4_1
/// projections, a Q8_0 tied embedding, a 300-token byte-level vocabulary (a few merges) and a
/// ChatML template, context 256. Its text is noise; it exercises every path of a generation
/// job (demos, tests, fuzzing seeds) without the real weights.
pub fn seeded_llama_gguf(seed: u64, layers: usize) -> Vec<u8> {
    seeded_llama_gguf_shaped(seed, &SeededShape::tiny(layers))
}

/// The shape of a [`seeded_llama_gguf_shaped`] file.
#[derive(Debug, Clone, Copy)]
pub struct SeededShape {
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// At least 300 (the byte tokens, the specials and a few merges; the rest unused).
    pub vocab: usize,
    pub context: u32,
    pub rope_base: f32,
}

impl SeededShape {
    /// [`seeded_llama_gguf`]'s shape.
    pub fn tiny(layers: usize) -> SeededShape {
        SeededShape {
            layers,
            hidden: 64,
            ffn: 96,
            heads: 4,
            kv_heads: 2,
            vocab: 300,
            context: 256,
            rope_base: 10_000.0,
        }
    }

    /// SmolLM2-135M-Instruct's shapes and encodings (30 layers, width 576, 9 query and 3
    /// key-value heads of 64, FFN 1536, vocabulary 49152, context 8192): the same work per
    /// token as the real model, for measuring speed and bit identity where its weights are not
    /// (`gpu-check`).
    pub fn smollm2() -> SeededShape {
        SeededShape {
            layers: 30,
            hidden: 576,
            ffn: 1536,
            heads: 9,
            kv_heads: 3,
            vocab: 49_152,
            context: 8192,
            rope_base: 100_000.0,
        }
    }
}

/// A random Llama GGUF file of `shape` whose bytes depend only on the arguments (see
/// [`seeded_llama_gguf`], which is this at [`SeededShape::tiny`]).
///
/// # Panics
///
/// When the shape is not one a Llama file can have: `hidden` not a multiple of 32 or of
/// `heads`, `heads` not a multiple of `kv_heads`, `ffn` not a multiple of 32, or a vocabulary
/// under 300 (its byte tokens, specials and merges).
pub fn seeded_llama_gguf_shaped(seed: u64, shape: &SeededShape) -> Vec<u8> {
    assert!(
        shape.heads > 0
            && shape.kv_heads > 0
            && shape.heads.is_multiple_of(shape.kv_heads)
            && shape.hidden.is_multiple_of(shape.heads)
            && shape.hidden.is_multiple_of(32)
            && shape.ffn.is_multiple_of(32)
            && shape.vocab >= 300,
        "seeded_llama_gguf_shaped: {shape:?} is not a Llama shape"
    );
    let (h, ffn, layers) = (shape.hidden, shape.ffn, shape.layers);
    let head_dim = h / shape.heads.max(1);
    let kv = shape.kv_heads * head_dim;
    let mut rng = SplitMix64::new(seed);
    let mut q4_1 = |rows: usize, cols: usize, scale: f32| -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows * cols / 32 {
            out.extend_from_slice(&f32_to_f16(scale / 8.0).to_le_bytes());
            out.extend_from_slice(&f32_to_f16(-scale).to_le_bytes());
            for _ in 0..16 {
                out.push(rng.next_u64() as u8);
            }
        }
        out
    };
    let mut tensors: Vec<(String, Vec<u64>, TensorType, Vec<u8>)> = Vec::new();
    let f32s = |n: usize, v: f32| -> Vec<u8> { (0..n).flat_map(|_| v.to_le_bytes()).collect() };
    for l in 0..layers {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        tensors.push((
            p("attn_norm"),
            vec![h as u64],
            TensorType::F32,
            f32s(h, 1.0),
        ));
        tensors.push((p("ffn_norm"), vec![h as u64], TensorType::F32, f32s(h, 0.5)));
        for (name, k, n) in [
            ("attn_q", h, h),
            ("attn_k", h, kv),
            ("attn_v", h, kv),
            ("attn_output", h, h),
            ("ffn_gate", h, ffn),
            ("ffn_up", h, ffn),
            ("ffn_down", ffn, h),
        ] {
            let bytes = q4_1(n, k, 0.2);
            tensors.push((p(name), vec![k as u64, n as u64], TensorType::Q4_1, bytes));
        }
    }
    let vocab = shape.vocab;
    let mut embd = Vec::new();
    for _ in 0..vocab * h / 32 {
        embd.extend_from_slice(&f32_to_f16(0.01).to_le_bytes());
        for _ in 0..32 {
            embd.push(rng.next_u64() as u8);
        }
    }
    tensors.push((
        "token_embd.weight".into(),
        vec![h as u64, vocab as u64],
        TensorType::Q8_0,
        embd,
    ));
    tensors.push((
        "output_norm.weight".into(),
        vec![h as u64],
        TensorType::F32,
        f32s(h, 1.0),
    ));
    let mut tokens: Vec<Value> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| Value::String(s.to_string()))
        .collect();
    tokens.extend((0..=255u8).map(|b| Value::String(crate::bpe::byte_char(b).to_string())));
    let merges = ["Ġ t", "h e", "Ġt he", "i n", "a n"];
    for m in merges {
        tokens.push(Value::String(m.replace(' ', "")));
    }
    while tokens.len() < vocab {
        tokens.push(Value::String(format!("<unused{}>", tokens.len())));
    }
    let mut types = vec![Value::I32(1); vocab];
    types[..3].fill(Value::I32(3));
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(layers as u32)),
        ("llama.context_length", Value::U32(shape.context)),
        ("llama.embedding_length", Value::U32(h as u32)),
        ("llama.feed_forward_length", Value::U32(ffn as u32)),
        ("llama.attention.head_count", Value::U32(shape.heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(shape.kv_heads as u32)),
        ("llama.rope.freq_base", Value::F32(shape.rope_base)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.dimension_count", Value::U32(head_dim as u32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            Value::Array(merges.iter().map(|m| Value::String(m.to_string())).collect()),
        ),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        (
            "tokenizer.chat_template",
            Value::String(
                "{{'<|im_start|>system\nBe brief.<|im_end|>\n'}}{{'<|im_start|>' + message['role']}}"
                    .into(),
            ),
        ),
    ];
    let tensors: Vec<(&str, Vec<u64>, TensorType, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, k, b)| (n.as_str(), d.clone(), *k, b.clone()))
        .collect();
    write(&meta, &tensors)
}

#[cfg(test)]
pub(crate) mod tests;
