//! Model directories: loading, content addressing, running, and the output format.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::bert::{Bert, SentenceFiles};
use crate::generate::{Completion, GenerateRequest, Generator, Step};
use crate::id::hex32;
use crate::llama::Llama;
use crate::mlp::Mlp;
use crate::{Error, ModelId, keccak256};

/// The model's configuration file in a model directory.
pub(crate) const CONFIG_FILE: &str = "config.json";
/// The model's weights file in a model directory.
pub(crate) const WEIGHTS_FILE: &str = "model.safetensors";
/// A GGUF model's one file in a model directory.
pub(crate) const GGUF_FILE: &str = "model.gguf";
/// A text model's tokenizer.
pub(crate) const TOKENIZER_FILE: &str = "tokenizer.json";
/// A sentence-transformers model's pooling config (optional).
pub(crate) const POOLING_FILE: &str = "1_Pooling/config.json";
/// A sentence-transformers model's `max_seq_length` (optional).
pub(crate) const SENTENCE_FILE: &str = "sentence_bert_config.json";

/// Every file a model directory may hold that [`Model::load`] reads and the manifest names,
/// relative to the directory (a GGUF model is [`GGUF_FILE`] alone): what a tool that copies,
/// installs or serves a model moves.
pub const MODEL_FILES: [&str; 6] = [
    GGUF_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    TOKENIZER_FILE,
    SENTENCE_FILE,
    POOLING_FILE,
];
/// Largest `tokenizer.json` accepted.
pub const MAX_TOKENIZER_BYTES: u64 = 16 << 20;
/// Largest `config.json` accepted.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest `model.safetensors` accepted.
pub const MAX_WEIGHTS_BYTES: u64 = 1 << 30;
/// Most input rows one [`Model::run`] call accepts.
pub const MAX_ROWS: usize = 256;

/// The result of running a model: a row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Dimensions, outermost first (`[rows, num_classes]` for a classifier, `[texts, dim]` for
    /// an encoder).
    pub shape: Vec<usize>,
    /// Values, row-major; `shape.iter().product()` of them.
    pub data: Vec<f32>,
    /// What the values are; decides the JSON form, not the hash.
    pub kind: OutputKind,
    /// A generation job's completion (`kind` [`OutputKind::Completion`]); `shape` is then
    /// `[completion tokens]` and `data` empty.
    pub completion: Option<Completion>,
    /// For a text encoder: the tokens its texts became (after truncation), for usage reports.
    /// Not part of the commitment.
    pub input_tokens: Option<usize>,
}

/// What an [`Output`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Class probabilities, one row per input.
    Probabilities,
    /// Unit-length embeddings, one row per text.
    Embeddings,
    /// Generated text ([`Output::completion`]).
    Completion,
}

impl Output {
    /// A generation job's output: its completion (shape `[completion tokens]`, no values), as
    /// [`Model::run`] gives it and as a batched decode ([`Generator`]) finishes it.
    pub fn completion(c: Completion) -> Output {
        Output {
            shape: vec![c.tokens.len()],
            data: Vec::new(),
            kind: OutputKind::Completion,
            completion: Some(c),
            input_tokens: None,
        }
    }

    /// What the job is priced by ([`units_bound`] bounds it before the job runs): a
    /// generation's prompt plus completion tokens, otherwise the input's bytes (`input_len`).
    pub fn units(&self, input_len: usize) -> u64 {
        match &self.completion {
            Some(c) => (c.prompt_tokens.len() + c.tokens.len()) as u64,
            None => input_len as u64,
        }
    }

    /// The commitment of this generation cut short by its client after its first tokens, so
    /// that the job has `units` units (prompt plus those tokens): what a validator that ran
    /// the whole generation accepts for the record of a stream its client left. `None` unless
    /// that is a proper prefix: a cancelled run stops before the uncancelled one would.
    pub fn cancelled_hash(&self, units: u64) -> Option<[u8; 32]> {
        let c = self.completion.as_ref()?;
        let kept = usize::try_from(units)
            .ok()?
            .checked_sub(c.prompt_tokens.len())?;
        if kept >= c.tokens.len() {
            return None;
        }
        let cut = Completion {
            prompt_tokens: c.prompt_tokens.clone(),
            tokens: c.tokens[..kept].to_vec(),
            text: String::new(),
            finish: crate::FinishReason::Cancelled,
            sampling: c.sampling,
            logprobs: None,
        };
        Some(cut.hash())
    }

    /// The commitment an executor signs and a validator recomputes:
    /// `keccak256(ndim as u32 LE ‖ each dim as u64 LE ‖ each value as f32 LE)`, every NaN
    /// written as the canonical quiet NaN `0x7fc00000` (payloads are not portable).
    ///
    /// A completion commits instead to its tokens and sampling ([`Completion::hash`]).
    pub fn hash(&self) -> [u8; 32] {
        use tiny_keccak::{Hasher, Keccak};
        if let Some(c) = &self.completion {
            return c.hash();
        }
        let mut h = Keccak::v256();
        h.update(&(self.shape.len() as u32).to_le_bytes());
        for &d in &self.shape {
            h.update(&(d as u64).to_le_bytes());
        }
        // Hash in blocks rather than one call per value.
        let mut buf = Vec::with_capacity(4 * 1024);
        for chunk in self.data.chunks(1024) {
            buf.clear();
            for v in chunk {
                // NaN payloads differ between CPUs and GPUs; every NaN hashes as one.
                let v = if v.is_nan() { f32::NAN } else { *v };
                buf.extend_from_slice(&v.to_le_bytes());
            }
            h.update(&buf);
        }
        let mut out = [0u8; 32];
        h.finalize(&mut out);
        out
    }

    /// Probabilities: `{"shape": [..], "data": [..]}`, and for a 2-D output also
    /// `"argmax": [..]`, the index of the largest value in each row (the predicted class; the
    /// first one on ties). Embeddings: `{"shape": [texts, dim], "embeddings": [[..], ..]}`. Each
    /// value is written as the shortest decimal that reads back as the same f32.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("shape".into(), self.shape.clone().into());
        if let Some(c) = &self.completion {
            obj.insert("text".into(), c.text.clone().into());
            obj.insert("tokens".into(), c.tokens.clone().into());
            obj.insert("prompt_tokens".into(), c.prompt_tokens.len().into());
            obj.insert(
                "finish_reason".into(),
                serde_json::to_value(c.finish).unwrap_or_default(),
            );
            if let Some(lps) = &c.logprobs {
                let entry = |token: u32, bytes: &[u8], logprob: f32| serde_json::json!({"token": token, "bytes": bytes, "logprob": f32_json(logprob)});
                let list: Vec<serde_json::Value> = lps
                    .iter()
                    .map(|t| {
                        let mut e = entry(t.token, &t.bytes, t.logprob);
                        e["top"] = t.top.iter().map(|(id, b, lp)| entry(*id, b, *lp)).collect();
                        e
                    })
                    .collect();
                obj.insert("logprobs".into(), list.into());
            }
            return serde_json::Value::Object(obj);
        }
        if self.kind == OutputKind::Embeddings {
            obj.insert("embeddings".into(), self.rows_json());
            if let Some(n) = self.input_tokens {
                obj.insert("input_tokens".into(), n.into());
            }
            return serde_json::Value::Object(obj);
        }
        let data: Vec<serde_json::Value> = self.data.iter().map(|&v| f32_json(v)).collect();
        obj.insert("data".into(), data.into());
        if let [_, cols] = self.shape[..]
            && cols > 0
        {
            let argmax: Vec<usize> = self.data.chunks(cols).map(argmax).collect();
            obj.insert("argmax".into(), argmax.into());
        }
        serde_json::Value::Object(obj)
    }
}

impl Output {
    /// The values as a JSON array of rows (the last dimension), shortest round-trip decimals.
    pub fn rows_json(&self) -> serde_json::Value {
        let cols = self.shape.last().copied().unwrap_or(0).max(1);
        self.data
            .chunks(cols)
            .map(|row| row.iter().map(|&v| f32_json(v)).collect::<Vec<_>>().into())
            .collect::<Vec<serde_json::Value>>()
            .into()
    }
}

fn f32_json(v: f32) -> serde_json::Value {
    // `Display` for f32 is the shortest decimal that round-trips; going through it keeps
    // 0.1f32 as 0.1 rather than 0.10000000149011612.
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// The network inside a model, by architecture.
enum Network {
    Mlp(Mlp),
    Bert(Box<Bert>),
    Llama(Box<Llama>),
}

/// A loaded, validated model, immutable and shareable across threads.
pub struct Model {
    id: ModelId,
    name: String,
    net: Network,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arch = self.architecture();
        f.debug_struct("Model")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("architecture", &arch)
            .finish()
    }
}

/// The architecture named in a config, read before the architecture's own config type: ours
/// (`"architecture": "mlp"`) or Hugging Face's (`"model_type": "bert"`).
#[derive(Deserialize)]
struct ConfigHead {
    architecture: Option<String>,
    model_type: Option<String>,
    name: Option<String>,
}

/// The input format of a sentence encoder.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextsJson {
    texts: Vec<String>,
}

/// The bytes of every file a model directory's id covers; optional files may be absent.
struct ModelFiles {
    /// `(name, bytes)` sorted by name: the manifest's order.
    files: Vec<(&'static str, Vec<u8>)>,
}

impl ModelFiles {
    fn read(dir: &Path) -> Result<ModelFiles, Error> {
        if dir.is_file() {
            return Self::gguf(dir);
        }
        let gguf = dir.join(GGUF_FILE);
        if gguf.exists() {
            return Self::gguf(&gguf);
        }
        let mut files = Vec::new();
        for (name, limit, required) in [
            (POOLING_FILE, MAX_CONFIG_BYTES, false),
            (CONFIG_FILE, MAX_CONFIG_BYTES, true),
            (WEIGHTS_FILE, MAX_WEIGHTS_BYTES, true),
            (SENTENCE_FILE, MAX_CONFIG_BYTES, false),
            (TOKENIZER_FILE, MAX_TOKENIZER_BYTES, false),
        ] {
            match read_file(&dir.join(name), limit) {
                Ok(bytes) => files.push((name, bytes)),
                Err(Error::MissingFile { .. }) if !required => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ModelFiles { files })
    }

    /// A GGUF model: the one file, named [`GGUF_FILE`] in the manifest whatever its name on
    /// disk (a file and a directory holding it have the same id).
    fn gguf(path: &Path) -> Result<ModelFiles, Error> {
        Ok(ModelFiles {
            files: vec![(GGUF_FILE, read_file(path, MAX_WEIGHTS_BYTES)?)],
        })
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b.as_slice())
    }

    fn require(&self, dir: &Path, name: &str) -> Result<&[u8], Error> {
        self.get(name).ok_or_else(|| Error::MissingFile {
            path: dir.join(name),
        })
    }

    fn manifest(&self) -> (Vec<u8>, ModelId) {
        let entries = self
            .files
            .iter()
            .map(|(name, bytes)| ManifestEntry {
                name,
                keccak: hex32(&keccak256(bytes)),
            })
            .collect();
        manifest_bytes(entries)
    }
}

/// The input format of [`Model::run`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputJson<T> {
    inputs: Vec<Vec<T>>,
}

impl Model {
    /// Loads `dir/config.json` and `dir/model.safetensors`, checking the config, every tensor's
    /// name, dtype (F32), shape and finiteness, and the file size limits. The id is computed from
    /// the very bytes that were parsed. Bad files give an error, never a panic.
    ///
    /// A BERT directory (`"model_type": "bert"`) also needs `tokenizer.json`, and may hold the
    /// sentence-transformers files `1_Pooling/config.json` (mean pooling only) and
    /// `sentence_bert_config.json` (`max_seq_length`, the truncation length).
    pub fn load(dir: &Path) -> Result<Model, Error> {
        let files = ModelFiles::read(dir)?;
        let (_, id) = files.manifest();
        if let Some(gguf) = files.get(GGUF_FILE) {
            let llama = Llama::from_gguf(gguf)?;
            let name = if dir.is_file() {
                dir.file_stem()
            } else {
                dir.file_name()
            }
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "llama".into());
            tracing::debug!(model = %id, %name, path = %dir.display(), "model loaded");
            return Ok(Model {
                id,
                name,
                net: Network::Llama(Box::new(llama)),
            });
        }
        let config = files.require(dir, CONFIG_FILE)?;
        let weights = files.require(dir, WEIGHTS_FILE)?;
        let head: ConfigHead = serde_json::from_slice(config).map_err(|e| Error::BadConfig {
            reason: e.to_string(),
        })?;
        let model = match (head.architecture.as_deref(), head.model_type.as_deref()) {
            (Some("mlp"), _) => {
                let (mlp, name) = Mlp::from_bytes(config, weights)?;
                Model {
                    id,
                    name,
                    net: Network::Mlp(mlp),
                }
            }
            (None, Some("bert")) => {
                let tokenizer = files.require(dir, TOKENIZER_FILE)?;
                let extra = SentenceFiles {
                    pooling: files.get(POOLING_FILE),
                    sentence_bert: files.get(SENTENCE_FILE),
                };
                let bert = Bert::from_bytes(config, weights, tokenizer, extra)?;
                let name = head
                    .name
                    .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "bert".into());
                Model {
                    id,
                    name,
                    net: Network::Bert(Box::new(bert)),
                }
            }
            (None, None) => {
                return Err(Error::BadConfig {
                    reason: "names no architecture (\"architecture\" or \"model_type\")".into(),
                });
            }
            (arch, model_type) => {
                return Err(Error::UnsupportedArchitecture {
                    architecture: arch.or(model_type).unwrap_or_default().to_string(),
                });
            }
        };
        tracing::debug!(model = %id, name = %model.name, path = %dir.display(), "model loaded");
        Ok(model)
    }

    /// Loads a GGUF model from the bytes of its file (the model hub checks a download before
    /// it is written anywhere): the id is that of a directory holding these bytes as
    /// `model.gguf`.
    pub fn from_gguf_bytes(name: &str, bytes: Vec<u8>) -> Result<Model, Error> {
        if bytes.len() as u64 > MAX_WEIGHTS_BYTES {
            return Err(Error::BadGguf {
                reason: format!(
                    "{} bytes, over the limit of {MAX_WEIGHTS_BYTES}",
                    bytes.len()
                ),
            });
        }
        let files = ModelFiles {
            files: vec![(GGUF_FILE, bytes)],
        };
        let (_, id) = files.manifest();
        let llama = Llama::from_gguf(&files.files[0].1)?;
        Ok(Model {
            id,
            name: name.to_string(),
            net: Network::Llama(Box::new(llama)),
        })
    }

    /// `"mlp"`, `"bert"` or `"llama"`.
    pub fn architecture(&self) -> &'static str {
        match self.net {
            Network::Mlp(_) => "mlp",
            Network::Bert(_) => "bert",
            Network::Llama(_) => "llama",
        }
    }

    /// The width of a text encoder's embeddings; `None` for other models.
    pub fn embedding_dim(&self) -> Option<usize> {
        match &self.net {
            Network::Bert(bert) => Some(bert.hidden_size()),
            _ => None,
        }
    }

    /// Whether the model generates text (its jobs take a [`GenerateRequest`]).
    pub fn generates(&self) -> bool {
        matches!(self.net, Network::Llama(_))
    }

    /// A continuous batch for this model's generations; an error for a model that does not
    /// generate.
    pub fn generator(&self) -> Result<Generator<'_>, Error> {
        match &self.net {
            Network::Llama(llama) => Ok(Generator::new(llama)),
            _ => Err(Error::BadInput {
                reason: format!(
                    "model {} ({}) does not generate text",
                    self.name,
                    self.architecture()
                ),
            }),
        }
    }

    /// Runs a generation request, calling `on_step` with each token as it is chosen (returning
    /// `false` cancels: the tokens so far are the completion). An error for a model that does
    /// not generate.
    pub fn generate(
        &self,
        backend: &dyn Backend,
        req: &GenerateRequest,
        on_step: &mut dyn FnMut(&Step<'_>) -> bool,
    ) -> Result<Completion, Error> {
        match &self.net {
            Network::Llama(llama) => crate::generate::generate(llama, backend, req, on_step),
            _ => Err(Error::BadInput {
                reason: format!(
                    "model {} ({}) does not generate text",
                    self.name,
                    self.architecture()
                ),
            }),
        }
    }

    /// A text model's token ids for `text` (BERT: `[CLS] … [SEP]`, truncated as
    /// [`Model::run`] truncates; Llama: the text alone); `None` for a model that takes no text.
    pub fn tokenize(&self, text: &str) -> Option<Vec<u32>> {
        match &self.net {
            Network::Bert(bert) => Some(bert.tokenize(text)),
            Network::Llama(llama) => Some(llama.tokenizer().encode(text)),
            Network::Mlp(_) => None,
        }
    }

    /// keccak256 of the model's manifest (see [`manifest`]).
    pub fn id(&self) -> ModelId {
        self.id
    }

    /// The `name` from `config.json` (else the directory's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same model under another name (one loaded from a scratch directory, then moved).
    pub fn renamed(mut self, name: &str) -> Model {
        self.name = name.to_string();
        self
    }

    /// [`Model::run`] for checking a record that counts `units` units, stopping a generation
    /// early where that settles the check: a record of a generation cut short by its client
    /// (prompt plus `k` tokens, fewer than `max_tokens`) needs only the first `k + 1` tokens —
    /// the `k` it kept, and one more to show that the whole run goes on past them. Returns the
    /// output and whether it was so cut (its hash is then not the whole run's; its
    /// [`Output::cancelled_hash`] at `units` is). Anything else runs whole. The request is
    /// checked against its own `max_tokens` (the context) exactly as [`Model::run`] does, and
    /// the tokens a run cut this way gives are the whole run's first tokens: the draws depend on
    /// the seed and position only. So a client that leaves a stream at once costs every
    /// validator one token more than it paid for, not the `max_tokens` it asked.
    pub fn run_for_units(
        &self,
        backend: &dyn Backend,
        input: &[u8],
        units: u64,
    ) -> Result<(Output, bool), Error> {
        let Network::Llama(llama) = &self.net else {
            return Ok((self.run(backend, input)?, false));
        };
        let req = GenerateRequest::parse(input)?;
        req.check()?;
        let prompt = llama.chat_prompt(&req.chat())?;
        crate::generate::check_context(llama, prompt.len(), req.max_tokens)?;
        let kept = usize::try_from(units)
            .ok()
            .and_then(|u| u.checked_sub(prompt.len()));
        let cap = match kept {
            Some(k) if k + 1 < req.max_tokens => k + 1,
            _ => req.max_tokens,
        };
        let capped = GenerateRequest {
            max_tokens: cap,
            ..req.clone()
        };
        let c = crate::generate::generate(llama, backend, &capped, &mut |_| true)?;
        let cut = cap < req.max_tokens && c.finish == crate::FinishReason::Length;
        Ok((Output::completion(c), cut))
    }

    /// Runs the model on `input` and returns its output:
    ///
    /// - MLP: JSON `{"inputs": [[f32; input_dim], ...]}` with 1 to [`MAX_ROWS`] rows → class
    ///   probabilities `[rows, num_classes]`.
    /// - BERT: JSON `{"texts": ["...", ...]}` with 1 to [`MAX_ROWS`] texts of at most
    ///   [`MAX_TEXT_BYTES`](crate::MAX_TEXT_BYTES) bytes each, truncated to the model's `max_seq_length` tokens →
    ///   unit-length embeddings `[texts, hidden]`.
    /// - Llama: a [`GenerateRequest`] as JSON → the [`Completion`] (`shape` `[tokens]`).
    ///
    /// Deterministic: the same model, input and backend contract give the same bits on any
    /// machine, and each row's output does not depend on the other rows in the call.
    pub fn run(&self, backend: &dyn Backend, input: &[u8]) -> Result<Output, Error> {
        match &self.net {
            Network::Mlp(mlp) => {
                let dims = mlp.spec().input_dim;
                let (rows, x) = parse_input(input, dims)?;
                let data = mlp.forward(backend, rows, x)?;
                Ok(Output {
                    shape: vec![rows, mlp.spec().num_classes],
                    data,
                    kind: OutputKind::Probabilities,
                    completion: None,
                    input_tokens: None,
                })
            }
            Network::Bert(bert) => {
                let parsed: TextsJson =
                    serde_json::from_slice(input).map_err(|e| Error::BadInput {
                        reason: format!("expected {{\"texts\": [\"...\", ...]}}: {e}"),
                    })?;
                let rows = parsed.texts.len();
                if rows == 0 || rows > MAX_ROWS {
                    return Err(Error::RowCount {
                        rows,
                        max: MAX_ROWS,
                    });
                }
                let texts: Vec<&str> = parsed.texts.iter().map(String::as_str).collect();
                let data = bert.embed(backend, &texts)?;
                let input_tokens = texts.iter().map(|t| bert.tokenize(t).len()).sum();
                Ok(Output {
                    shape: vec![rows, bert.dim()],
                    data,
                    kind: OutputKind::Embeddings,
                    completion: None,
                    input_tokens: Some(input_tokens),
                })
            }
            Network::Llama(llama) => {
                let req = GenerateRequest::parse(input)?;
                let c = crate::generate::generate(llama, backend, &req, &mut |_| true)?;
                Ok(Output::completion(c))
            }
        }
    }

    /// A valid input for this model (2 rows), the same bytes every time, for demos and smoke
    /// tests.
    pub fn example_input(&self) -> Vec<u8> {
        let dims = match &self.net {
            Network::Mlp(mlp) => mlp.spec().input_dim,
            Network::Bert(_) => {
                let texts = ["A man is eating food.", "A man is eating a piece of bread."];
                return serde_json::json!({ "texts": texts })
                    .to_string()
                    .into_bytes();
            }
            Network::Llama(_) => {
                let messages = [serde_json::json!({
                    "role": "user", "content": "What is the capital of France?"
                })];
                return serde_json::json!({ "messages": messages, "max_tokens": 16 })
                    .to_string()
                    .into_bytes();
            }
        };
        // Multiples of 1/8 in [-1, 1]: short decimals that are exact in f32.
        let inputs = (0..2)
            .map(|r| {
                (0..dims)
                    .map(|c| ((c * 7 + r * 3) % 17) as f32 / 8.0 - 1.0)
                    .collect()
            })
            .collect();
        serde_json::to_vec(&InputJson::<f32> { inputs }).unwrap_or_default()
    }
}

/// Parses and checks `{"inputs": [[..], ..]}`: returns the row count and the row-major values.
fn parse_input(input: &[u8], dims: usize) -> Result<(usize, Vec<f32>), Error> {
    let parsed: InputJson<f64> = serde_json::from_slice(input).map_err(|e| Error::BadInput {
        reason: format!("expected {{\"inputs\": [[numbers...], ...]}}: {e}"),
    })?;
    let rows = parsed.inputs.len();
    if rows == 0 || rows > MAX_ROWS {
        return Err(Error::RowCount {
            rows,
            max: MAX_ROWS,
        });
    }
    let mut x = Vec::with_capacity(rows * dims);
    for (row, values) in parsed.inputs.iter().enumerate() {
        if values.len() != dims {
            return Err(Error::InputDims {
                row,
                expected: dims,
                actual: values.len(),
            });
        }
        for (col, &value) in values.iter().enumerate() {
            let v = value as f32;
            if !v.is_finite() {
                return Err(Error::NonFiniteInput { row, col, value });
            }
            x.push(v);
        }
    }
    Ok((rows, x))
}

/// Reads a whole file of at most `limit` bytes.
fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let file = std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
        },
        _ => Error::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(Error::FileTooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // `take` guards against a file that grows between the size check and the read.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(Error::FileTooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Serialize)]
struct ManifestJson<'a> {
    files: Vec<ManifestEntry<'a>>,
}

#[derive(Serialize)]
struct ManifestEntry<'a> {
    name: &'a str,
    keccak: String,
}

/// The manifest of an MLP's two files, given their contents, and its id.
pub(crate) fn manifest_of(config: &[u8], weights: &[u8]) -> (Vec<u8>, ModelId) {
    // Sorted by name; CONFIG_FILE < WEIGHTS_FILE.
    manifest_bytes(vec![
        ManifestEntry {
            name: CONFIG_FILE,
            keccak: hex32(&keccak256(config)),
        },
        ManifestEntry {
            name: WEIGHTS_FILE,
            keccak: hex32(&keccak256(weights)),
        },
    ])
}

fn manifest_bytes(files: Vec<ManifestEntry<'_>>) -> (Vec<u8>, ModelId) {
    // Serialising a struct of strings cannot fail; an empty manifest would still hash.
    let bytes = serde_json::to_vec(&ManifestJson { files }).unwrap_or_default();
    let id = ModelId(keccak256(&bytes));
    (bytes, id)
}

/// Longest manifest accepted from a peer (six files: well under 1 KiB).
pub const MAX_MANIFEST_BYTES: usize = 4096;

/// One file of a [`Manifest`]: its name in the model directory, the keccak256 of its bytes,
/// and the most bytes it may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub name: &'static str,
    pub keccak: [u8; 32],
    pub limit: u64,
}

/// A model's manifest, parsed and checked: what a node that fetches a model by id checks
/// each file it receives against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// keccak256 of the manifest's bytes.
    pub id: ModelId,
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// Parses manifest bytes from anywhere (a peer): only the canonical form [`manifest`]
    /// writes is accepted (so the id is the one of the files it lists), with known file names
    /// in order, a set of files a model can load from, and at most [`MAX_MANIFEST_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<Manifest, Error> {
        let bad = |reason: String| Error::BadManifest { reason };
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "{} bytes; the limit is {MAX_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            name: String,
            keccak: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Json {
            files: Vec<Entry>,
        }
        let json: Json =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
        let mut files = Vec::with_capacity(json.files.len());
        for e in &json.files {
            let Some(&name) = MODEL_FILES.iter().find(|n| **n == e.name) else {
                return Err(bad(format!("unknown model file {:?}", e.name)));
            };
            let keccak =
                e.keccak.parse::<ModelId>().map(|k| k.0).map_err(|_| {
                    bad(format!("{name}: keccak {:?} is not 0x + 64 hex", e.keccak))
                })?;
            let limit = match name {
                WEIGHTS_FILE | GGUF_FILE => MAX_WEIGHTS_BYTES,
                TOKENIZER_FILE => MAX_TOKENIZER_BYTES,
                _ => MAX_CONFIG_BYTES,
            };
            files.push(ManifestFile {
                name,
                keccak,
                limit,
            });
        }
        let names: Vec<&str> = files.iter().map(|f| f.name).collect();
        if !names.windows(2).all(|w| w[0] < w[1]) {
            return Err(bad(format!(
                "files {names:?} are not in canonical form (sorted by name, once each)"
            )));
        }
        let loadable = names == [GGUF_FILE]
            || (names.contains(&CONFIG_FILE)
                && names.contains(&WEIGHTS_FILE)
                && !names.contains(&GGUF_FILE));
        if !loadable {
            return Err(bad(format!(
                "files {names:?}: a model is model.gguf alone, or config.json and model.safetensors (and optional tokenizer files)"
            )));
        }
        let entries = files
            .iter()
            .map(|f| ManifestEntry {
                name: f.name,
                keccak: hex32(&f.keccak),
            })
            .collect();
        let (canonical, id) = manifest_bytes(entries);
        if canonical != bytes {
            return Err(bad(
                "not in canonical form (files sorted by name, once each, compact JSON)".into(),
            ));
        }
        Ok(Manifest { id, files })
    }
}

/// The canonical manifest of the model in `dir` and the [`ModelId`] it defines.
///
/// The manifest is compact JSON listing each model file that is present — `config.json` and
/// `model.safetensors` always, `tokenizer.json`, `sentence_bert_config.json` and
/// `1_Pooling/config.json` when there — with the keccak256 of its bytes, sorted by name:
/// `{"files":[{"name":"config.json","keccak":"0x…"},{"name":"model.safetensors","keccak":"0x…"}]}`;
/// the id is keccak256 of those bytes. Every file that can change an output is covered; other
/// files in the directory (README, vocab.txt) are not. Only the files are read, not validated:
/// an id can be computed for a model this build cannot run.
pub fn manifest(dir: &Path) -> Result<(Vec<u8>, ModelId), Error> {
    Ok(ModelFiles::read(dir)?.manifest())
}

#[cfg(test)]
mod tests;
