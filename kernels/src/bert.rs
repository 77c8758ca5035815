//! BERT sentence encoders (all-MiniLM-L6-v2 and kin): WordPiece ids → encoder → mean pooling →
//! L2 normalisation, as sentence-transformers computes them.
//!
//! Layout per layer (post-norm BERT): `x = LN(x + Wo·Attn(Wqkv·x))`, then
//! `x = LN(x + W2·GELU(W1·x))`. Embeddings are `LN((word + token_type₀) + position)`.
//! Q, K and V come from one GEMM against the concatenated `[hidden × 3·hidden]` weight: each
//! output column is still its own dot product, so the bits are those of three separate GEMMs.
//!
//! A batch lays its sequences end to end without padding ([`Backend::attention_ragged`]): every
//! op but attention is row-wise, attention keeps each sequence to its own tokens and pooling
//! to its own rows, so a text's embedding does not depend on the batch it came in (tested bit
//! for bit) and a batch costs only its real tokens.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Epilogue, PackedMatrix};
use crate::tokenizer::Tokenizer;
use crate::weights::{self, Tensor, take};
use crate::{Error, rng::SplitMix64};

/// Longest text accepted, in bytes (longer inputs would be truncated to `max_seq_len` tokens
/// anyway; this bounds the tokenizer's work on hostile input).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The fields of a Hugging Face `config.json` a BERT encoder needs.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct BertConfig {
    pub(crate) vocab_size: usize,
    pub(crate) hidden_size: usize,
    pub(crate) num_hidden_layers: usize,
    pub(crate) num_attention_heads: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) max_position_embeddings: usize,
    #[serde(default = "two")]
    pub(crate) type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub(crate) layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub(crate) hidden_act: String,
    #[serde(default = "absolute")]
    pub(crate) position_embedding_type: String,
}

fn two() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn absolute() -> String {
    "absolute".into()
}

/// `1_Pooling/config.json` of a sentence-transformers model.
#[derive(Deserialize)]
struct PoolingJson {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// `sentence_bert_config.json` of a sentence-transformers model.
#[derive(Deserialize)]
struct SentenceBertJson {
    max_seq_length: usize,
}

/// Largest dimensions accepted from a config (bounds allocations before any weight is read).
const MAX_HIDDEN: usize = 8192;
const MAX_LAYERS: usize = 128;
const MAX_VOCAB: usize = 1 << 20;
const MAX_POSITIONS: usize = 8192;

fn spec_err(reason: impl Into<String>) -> Error {
    Error::BadSpec {
        reason: reason.into(),
    }
}

impl BertConfig {
    fn validate(&self) -> Result<(), Error> {
        let c = self;
        if c.hidden_size == 0 || c.hidden_size > MAX_HIDDEN {
            return Err(spec_err(format!(
                "hidden_size {} is outside 1..={MAX_HIDDEN}",
                c.hidden_size
            )));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(spec_err(format!(
                "num_attention_heads {} does not divide hidden_size {}",
                c.num_attention_heads, c.hidden_size
            )));
        }
        if c.num_hidden_layers == 0 || c.num_hidden_layers > MAX_LAYERS {
            return Err(spec_err(format!(
                "num_hidden_layers {} is outside 1..={MAX_LAYERS}",
                c.num_hidden_layers
            )));
        }
        if c.intermediate_size == 0 || c.intermediate_size > 8 * MAX_HIDDEN {
            return Err(spec_err(format!(
                "intermediate_size {} is out of range",
                c.intermediate_size
            )));
        }
        if c.vocab_size == 0 || c.vocab_size > MAX_VOCAB {
            return Err(spec_err(format!(
                "vocab_size {} is outside 1..={MAX_VOCAB}",
                c.vocab_size
            )));
        }
        if c.max_position_embeddings < 2 || c.max_position_embeddings > MAX_POSITIONS {
            return Err(spec_err(format!(
                "max_position_embeddings {} is outside 2..={MAX_POSITIONS}",
                c.max_position_embeddings
            )));
        }
        if c.type_vocab_size == 0 {
            return Err(spec_err("type_vocab_size is 0"));
        }
        if !(c.layer_norm_eps > 0.0 && c.layer_norm_eps < 1.0) {
            return Err(spec_err(format!(
                "layer_norm_eps {} is not in (0, 1)",
                c.layer_norm_eps
            )));
        }
        if c.hidden_act != "gelu" {
            return Err(Error::UnsupportedActivation {
                activation: c.hidden_act.clone(),
            });
        }
        if c.position_embedding_type != "absolute" {
            return Err(spec_err(format!(
                "position_embedding_type {:?} is not supported; only absolute",
                c.position_embedding_type
            )));
        }
        Ok(())
    }
}

struct Layer {
    /// `[hidden × 3·hidden]`: the query, key and value weights side by side. Every weight
    /// matrix is packed once, here, into the GEMM's layout.
    qkv: PackedMatrix,
    qkv_bias: Vec<f32>,
    out: PackedMatrix,
    out_bias: Vec<f32>,
    ln1: (Vec<f32>, Vec<f32>),
    up: PackedMatrix,
    up_bias: Vec<f32>,
    down: PackedMatrix,
    down_bias: Vec<f32>,
    ln2: (Vec<f32>, Vec<f32>),
}

/// A loaded BERT sentence encoder.
pub(crate) struct Bert {
    cfg: BertConfig,
    max_seq_len: usize,
    tokenizer: Tokenizer,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Row 0 of the token-type table (single-segment input).
    token_type: Vec<f32>,
    emb_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
}

/// Tensors a BERT checkpoint may carry that mean pooling does not use.
fn unused(name: &str) -> bool {
    name.starts_with("pooler.")
        || name == "embeddings.position_ids"
        || name == "embeddings.token_type_ids"
}

/// The optional sentence-transformers files of a BERT model directory.
pub(crate) struct SentenceFiles<'a> {
    pub(crate) pooling: Option<&'a [u8]>,
    pub(crate) sentence_bert: Option<&'a [u8]>,
}

impl Bert {
    /// The width of the hidden state, and of the embeddings.
    pub(crate) fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Parses and checks a BERT model: config, tokenizer, weights (every tensor's shape against
    /// the config; F32 and finite), and the sentence-transformers pooling (mean only).
    pub(crate) fn from_bytes(
        config: &[u8],
        weights_bytes: &[u8],
        tokenizer: &[u8],
        extra: SentenceFiles<'_>,
    ) -> Result<Bert, Error> {
        let cfg: BertConfig = serde_json::from_slice(config).map_err(|e| Error::BadConfig {
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        if let Some(bytes) = extra.pooling {
            let p: PoolingJson = serde_json::from_slice(bytes).map_err(|e| Error::BadConfig {
                reason: format!("1_Pooling/config.json: {e}"),
            })?;
            if !p.pooling_mode_mean_tokens
                || p.pooling_mode_cls_token
                || p.pooling_mode_max_tokens
                || p.pooling_mode_mean_sqrt_len_tokens
            {
                return Err(Error::BadConfig {
                    reason: "1_Pooling/config.json: only mean pooling is supported".into(),
                });
            }
        }
        let max_seq_len = match extra.sentence_bert {
            Some(bytes) => {
                let s: SentenceBertJson =
                    serde_json::from_slice(bytes).map_err(|e| Error::BadConfig {
                        reason: format!("sentence_bert_config.json: {e}"),
                    })?;
                if s.max_seq_length < 2 || s.max_seq_length > cfg.max_position_embeddings {
                    return Err(Error::BadConfig {
                        reason: format!(
                            "sentence_bert_config.json: max_seq_length {} is outside 2..={}",
                            s.max_seq_length, cfg.max_position_embeddings
                        ),
                    });
                }
                s.max_seq_length
            }
            None => cfg.max_position_embeddings,
        };
        let tokenizer = Tokenizer::from_json(tokenizer)?;
        if tokenizer.vocab_size() != cfg.vocab_size {
            return Err(Error::BadTokenizer {
                reason: format!(
                    "tokenizer has {} ids but config.json says vocab_size {}",
                    tokenizer.vocab_size(),
                    cfg.vocab_size
                ),
            });
        }

        let mut t = weights::read_f32_except(weights_bytes, unused)?;
        let h = cfg.hidden_size;
        let word = take(
            &mut t,
            "embeddings.word_embeddings.weight".into(),
            vec![cfg.vocab_size, h],
        )?;
        let position = take(
            &mut t,
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_position_embeddings, h],
        )?;
        let mut token_type = take(
            &mut t,
            "embeddings.token_type_embeddings.weight".into(),
            vec![cfg.type_vocab_size, h],
        )?;
        token_type.truncate(h);
        let emb_ln = layer_norm(&mut t, "embeddings.LayerNorm", h)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let (q, qb) = linear(&mut t, &format!("{p}.attention.self.query"), h, h)?;
            let (k, kb) = linear(&mut t, &format!("{p}.attention.self.key"), h, h)?;
            let (v, vb) = linear(&mut t, &format!("{p}.attention.self.value"), h, h)?;
            let mut qkv = Vec::with_capacity(h * 3 * h);
            for r in 0..h {
                for w in [&q, &k, &v] {
                    qkv.extend_from_slice(&w[r * h..(r + 1) * h]);
                }
            }
            let (out, out_bias) = linear(&mut t, &format!("{p}.attention.output.dense"), h, h)?;
            let ln1 = layer_norm(&mut t, &format!("{p}.attention.output.LayerNorm"), h)?;
            let (up, up_bias) = linear(
                &mut t,
                &format!("{p}.intermediate.dense"),
                h,
                cfg.intermediate_size,
            )?;
            let (down, down_bias) = linear(
                &mut t,
                &format!("{p}.output.dense"),
                cfg.intermediate_size,
                h,
            )?;
            let ln2 = layer_norm(&mut t, &format!("{p}.output.LayerNorm"), h)?;
            let inter = cfg.intermediate_size;
            layers.push(Layer {
                qkv: PackedMatrix::new(&qkv, h, 3 * h),
                qkv_bias: [qb, kb, vb].concat(),
                out: PackedMatrix::new(&out, h, h),
                out_bias,
                ln1,
                up: PackedMatrix::new(&up, h, inter),
                up_bias,
                down: PackedMatrix::new(&down, inter, h),
                down_bias,
                ln2,
            });
        }
        if let Some(name) = t.into_keys().next() {
            return Err(Error::UnexpectedTensor { name });
        }
        Ok(Bert {
            cfg,
            max_seq_len,
            tokenizer,
            word,
            position,
            token_type,
            emb_ln,
            layers,
        })
    }

    /// Embedding width.
    pub(crate) fn dim(&self) -> usize {
        self.cfg.hidden_size
    }

    /// The token ids of `text`, truncated to [`Bert::max_seq_len`].
    pub(crate) fn tokenize(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, self.max_seq_len)
    }

    /// Unit-length sentence embeddings, `[texts × hidden]`, row-major.
    pub(crate) fn embed(&self, backend: &dyn Backend, texts: &[&str]) -> Result<Vec<f32>, Error> {
        for (index, text) in texts.iter().enumerate() {
            if text.len() > MAX_TEXT_BYTES {
                return Err(Error::TextTooLong {
                    index,
                    bytes: text.len(),
                    max: MAX_TEXT_BYTES,
                });
            }
        }
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenize(t)).collect();
        self.forward(backend, &ids)
    }

    /// The encoder on token ids (each list at most `max_seq_len` long, ids below the vocab
    /// size), mean-pooled and normalised.
    pub(crate) fn forward(
        &self,
        backend: &dyn Backend,
        ids: &[Vec<u32>],
    ) -> Result<Vec<f32>, Error> {
        let h = self.cfg.hidden_size;
        let eps = self.cfg.layer_norm_eps as f32;
        let heads = self.cfg.num_attention_heads;
        let head_dim = h / heads;
        // Sequences end to end, no padding: every op but attention is row-wise, and
        // attention keeps each sequence to its own tokens, so a batch costs its real tokens.
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        if let Some(&seq) = lens.iter().max()
            && seq > self.max_seq_len
        {
            return Err(Error::BadInput {
                reason: format!(
                    "a sequence has {seq} tokens; this model takes at most {}",
                    self.max_seq_len
                ),
            });
        }
        let rows: usize = lens.iter().sum();
        let flat: Vec<u32> = ids.concat();

        // Embeddings: (word + token_type₀) + position, then LayerNorm.
        let mut x = backend.embedding_gather(&self.word, h, &flat)?;
        let tt: Vec<f32> = self.token_type.repeat(rows);
        backend.add_inplace(&mut x, &tt);
        let pos: Vec<f32> = lens
            .iter()
            .flat_map(|&len| self.position[..len * h].iter().copied())
            .collect();
        backend.add_inplace(&mut x, &pos);
        backend.layernorm_rows(&mut x, h, &self.emb_ln.0, &self.emb_ln.1, eps);

        let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
        for (i, l) in self.layers.iter().enumerate() {
            let qkv = backend.gemm_packed(&x, &l.qkv, Some(&l.qkv_bias), rows);
            let ctx = backend.attention_ragged(&qkv, &lens, heads, head_dim, scale);
            let then = Epilogue::Residual(&x);
            let mut y = backend.gemm_packed_then(&ctx, &l.out, Some(&l.out_bias), rows, then);
            backend.layernorm_rows(&mut y, h, &l.ln1.0, &l.ln1.1, eps);
            x = y;
            let up = backend.gemm_packed_then(&x, &l.up, Some(&l.up_bias), rows, Epilogue::Gelu);
            let then = Epilogue::Residual(&x);
            let mut y = backend.gemm_packed_then(&up, &l.down, Some(&l.down_bias), rows, then);
            backend.layernorm_rows(&mut y, h, &l.ln2.0, &l.ln2.1, eps);
            x = y;
            if x.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFiniteOutput { layer: i });
            }
        }
        let mut pooled = Vec::with_capacity(lens.len() * h);
        let mut first = 0;
        for &len in &lens {
            let tokens = &x[first * h..(first + len) * h];
            pooled.extend(backend.mean_pool(tokens, &vec![1; len], 1, len, h));
            first += len;
        }
        backend.l2_normalize_rows(&mut pooled, h);
        Ok(pooled)
    }
}

/// A PyTorch `Linear` (`weight [out, in]`, `bias [out]`), returned as `[in × out]` for
/// [`Backend::gemm_bias`] and the bias.
fn linear(
    t: &mut BTreeMap<String, Tensor>,
    prefix: &str,
    fan_in: usize,
    fan_out: usize,
) -> Result<(Vec<f32>, Vec<f32>), Error> {
    let w = take(t, format!("{prefix}.weight"), vec![fan_out, fan_in])?;
    let b = take(t, format!("{prefix}.bias"), vec![fan_out])?;
    let mut wt = vec![0.0f32; fan_in * fan_out];
    for o in 0..fan_out {
        for i in 0..fan_in {
            wt[i * fan_out + o] = w[o * fan_in + i];
        }
    }
    Ok((wt, b))
}

fn layer_norm(
    t: &mut BTreeMap<String, Tensor>,
    prefix: &str,
    h: usize,
) -> Result<(Vec<f32>, Vec<f32>), Error> {
    let g = take(t, format!("{prefix}.weight"), vec![h])?;
    let b = take(t, format!("{prefix}.bias"), vec![h])?;
    Ok((g, b))
}

/// Dimensions of a seeded BERT written by [`write_seeded_bert`].
#[derive(Debug, Clone)]
pub struct BertSpec {
    /// Width of the hidden state and of the embeddings.
    pub hidden: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads (must divide `hidden`).
    pub heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate: usize,
    /// Longest sequence, in tokens.
    pub max_positions: usize,
}

impl BertSpec {
    /// all-MiniLM-L6-v2's shapes (hidden 384, 6 layers, 12 heads, FFN 1536, 512 positions).
    pub fn minilm() -> BertSpec {
        BertSpec {
            hidden: 384,
            layers: 6,
            heads: 12,
            intermediate: 1536,
            max_positions: 512,
        }
    }
}

/// Writes a BERT sentence-encoder directory (`config.json`, `model.safetensors`,
/// `tokenizer.json`, `1_Pooling/config.json`, `sentence_bert_config.json`) with seeded weights
/// and a small lowercase-ASCII WordPiece vocabulary: the real architecture and shapes for
/// tests, benchmarks and GPU checks where the real weights are not at hand. Its embeddings mean
/// nothing. Byte-identical for the same arguments.
pub fn write_seeded_bert(
    dir: &std::path::Path,
    seed: u64,
    spec: &BertSpec,
) -> Result<crate::ModelId, Error> {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-".chars() {
        vocab.push(c.to_string());
        vocab.push(format!("##{c}"));
    }
    for w in [
        "the", "a", "man", "is", "eating", "food", "piece", "of", "bread", "dog", "cat", "and",
        "##ing", "##ed",
    ] {
        if !vocab.iter().any(|v| v == w) {
            vocab.push(w.to_string());
        }
    }
    let cfg = BertConfig {
        vocab_size: vocab.len(),
        hidden_size: spec.hidden,
        num_hidden_layers: spec.layers,
        num_attention_heads: spec.heads,
        intermediate_size: spec.intermediate,
        max_position_embeddings: spec.max_positions,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: "gelu".into(),
        position_embedding_type: "absolute".into(),
    };
    cfg.validate()?;
    let mut config = serde_json::to_value(&cfg).map_err(|e| spec_err(e.to_string()))?;
    config["model_type"] = "bert".into();
    config["architectures"] = serde_json::json!(["BertModel"]);
    let config = serde_json::to_vec_pretty(&config).map_err(|e| spec_err(e.to_string()))?;

    let mut rng = SplitMix64::new(seed);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| rng.next_f32().mul_add(scale, offset))
            .collect();
        tensors.push((name, Tensor { shape, data }));
    };
    let h = spec.hidden;
    let s = (1.0 / (h as f64).sqrt()) as f32;
    add(
        "embeddings.word_embeddings.weight".into(),
        vec![cfg.vocab_size, h],
        1.0,
        0.0,
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        vec![spec.max_positions, h],
        0.5,
        0.0,
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        vec![2, h],
        0.1,
        0.0,
    );
    add("embeddings.LayerNorm.weight".into(), vec![h], 0.1, 1.0);
    add("embeddings.LayerNorm.bias".into(), vec![h], 0.1, 0.0);
    for i in 0..spec.layers {
        let p = format!("encoder.layer.{i}");
        for part in ["query", "key", "value"] {
            add(
                format!("{p}.attention.self.{part}.weight"),
                vec![h, h],
                s,
                0.0,
            );
            add(format!("{p}.attention.self.{part}.bias"), vec![h], 0.1, 0.0);
        }
        add(
            format!("{p}.attention.output.dense.weight"),
            vec![h, h],
            s,
            0.0,
        );
        add(
            format!("{p}.attention.output.dense.bias"),
            vec![h],
            0.1,
            0.0,
        );
        add(
            format!("{p}.attention.output.LayerNorm.weight"),
            vec![h],
            0.1,
            1.0,
        );
        add(
            format!("{p}.attention.output.LayerNorm.bias"),
            vec![h],
            0.1,
            0.0,
        );
        add(
            format!("{p}.intermediate.dense.weight"),
            vec![spec.intermediate, h],
            s,
            0.0,
        );
        add(
            format!("{p}.intermediate.dense.bias"),
            vec![spec.intermediate],
            0.1,
            0.0,
        );
        let si = (1.0 / (spec.intermediate as f64).sqrt()) as f32;
        add(
            format!("{p}.output.dense.weight"),
            vec![h, spec.intermediate],
            si,
            0.0,
        );
        add(format!("{p}.output.dense.bias"), vec![h], 0.1, 0.0);
        add(format!("{p}.output.LayerNorm.weight"), vec![h], 0.1, 1.0);
        add(format!("{p}.output.LayerNorm.bias"), vec![h], 0.1, 0.0);
    }
    let weights_bytes = weights::write_f32(&tensors);

    let words: Vec<&str> = vocab.iter().map(String::as_str).collect();
    let tokenizer = crate::tokenizer::bert_json(&words, 5, 100);
    let tokenizer = serde_json::to_vec(&tokenizer).map_err(|e| spec_err(e.to_string()))?;
    let pooling = br#"{"word_embedding_dimension": 0, "pooling_mode_mean_tokens": true}"#;
    let max_seq = spec.max_positions.min(256);
    let sentence = format!("{{\"max_seq_length\": {max_seq}, \"do_lower_case\": false}}");

    let files: [(&str, &[u8]); 5] = [
        (crate::model::CONFIG_FILE, &config),
        (crate::model::WEIGHTS_FILE, &weights_bytes),
        (crate::model::TOKENIZER_FILE, &tokenizer),
        (crate::model::POOLING_FILE, pooling),
        (crate::model::SENTENCE_FILE, sentence.as_bytes()),
    ];
    for (name, bytes) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        crate::model::write_file(&path, bytes)?;
    }
    crate::model::manifest(dir).map(|(_, id)| id)
}

#[cfg(test)]
mod tests;
