//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong loading a model or running it. Each variant names the offending
/// item and value; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the model directory must contain is not there.
    #[error("missing model file {path}")]
    MissingFile { path: PathBuf },

    /// A model manifest (from a peer) is not one this build writes.
    #[error("bad model manifest: {reason}")]
    BadManifest { reason: String },

    /// A file exists but could not be read (permissions, I/O error, not a regular file).
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file is larger than this crate is willing to load.
    #[error("{path} is {size} bytes, over the limit of {limit} bytes")]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    /// `config.json` is not valid JSON or lacks / mistypes a field.
    #[error("config.json is invalid: {reason}")]
    BadConfig { reason: String },

    /// `config.json` names an architecture this build cannot run.
    #[error(
        "unsupported architecture {architecture:?} in config.json; this build runs: mlp (our format), bert (model_type)"
    )]
    UnsupportedArchitecture { architecture: String },

    /// `config.json` names an activation this architecture does not support.
    #[error("unsupported activation {activation:?} in config.json; the mlp supports: gelu")]
    UnsupportedActivation { activation: String },

    /// The model's dimensions are out of the supported range (zero, too large, too many layers).
    #[error("invalid model dimensions: {reason}")]
    BadSpec { reason: String },

    /// `model.safetensors` could not be parsed.
    #[error("model.safetensors is not a valid safetensors file: {reason}")]
    BadSafetensors { reason: String },

    /// A tensor has a dtype other than F32.
    #[error("tensor {name} has dtype {dtype}; only F32 weights are supported")]
    BadDtype { name: String, dtype: String },

    /// A tensor the config implies is not in the weights file.
    #[error("tensor {name} is missing from the weights file")]
    MissingTensor { name: String },

    /// The weights file holds a tensor the config does not account for.
    #[error("unexpected tensor {name} in model.safetensors (the config does not use it)")]
    UnexpectedTensor { name: String },

    /// A tensor's shape differs from the one the config implies.
    #[error("tensor {name} has shape {actual:?} but config.json implies {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    /// A weight is NaN or infinite.
    #[error("tensor {name} holds a non-finite value at flat index {index}")]
    NonFiniteWeight { name: String, index: usize },

    /// The input is not of the form the model takes (`{"inputs": [[numbers...], ...]}` for an
    /// MLP, `{"texts": ["...", ...]}` for a sentence encoder).
    #[error("bad input: {reason}")]
    BadInput { reason: String },

    /// An input row has the wrong number of values.
    #[error("input row {row} has {actual} values; this model takes {expected}")]
    InputDims {
        row: usize,
        expected: usize,
        actual: usize,
    },

    /// The input has no rows or more than the limit.
    #[error("input has {rows} rows (texts); send between 1 and {max}")]
    RowCount { rows: usize, max: usize },

    /// An input value is not a finite f32 (JSON has no NaN, but 1e39 overflows f32).
    #[error("input row {row} column {col} is {value}, not a finite f32")]
    NonFiniteInput { row: usize, col: usize, value: f64 },

    /// An intermediate or final value overflowed; the input is too large in magnitude.
    #[error("layer {layer} produced a non-finite value (input magnitude too large)")]
    NonFiniteOutput { layer: usize },

    /// `tokenizer.json` is not valid or describes a tokenizer this build cannot run.
    #[error("tokenizer.json is invalid or unsupported: {reason}")]
    BadTokenizer { reason: String },

    /// An input text is longer than the limit.
    #[error("text {index} is {bytes} bytes; the limit is {max} bytes")]
    TextTooLong {
        index: usize,
        bytes: usize,
        max: usize,
    },

    /// A sequence would grow past the model's context.
    #[error("{tokens} tokens do not fit the model's context of {context}")]
    ContextFull { tokens: usize, context: usize },

    /// A GGUF file is malformed: bad magic or version, truncated, or its counts, lengths,
    /// offsets or shapes disagree with the file.
    #[error("not a valid GGUF file: {reason}")]
    BadGguf { reason: String },

    /// A tensor is stored in a type this build cannot read.
    #[error("tensor {name} has type {kind}; this build reads F32, F16, Q4_1 and Q8_0")]
    UnsupportedTensorType { name: String, kind: String },

    /// A model id string is not "0x" followed by 64 hex digits.
    #[error("invalid model id {input:?}: expected 0x followed by 64 hex digits")]
    BadModelId { input: String },
}
