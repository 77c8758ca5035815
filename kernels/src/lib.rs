//! Deterministic inference for proofmesh.
//!
//! A job's output hash is a commitment: inference nodes sign it and validators re-execute the job
//! and compare. This crate makes that comparison meaningful by computing every output bit the
//! same way on every machine, for any batch, at any position in the batch:
//!
//! - [`Backend`] is the op interface (GEMM + bias, GELU, softmax, layernorm, masked attention,
//!   embedding gather, residual add, mean pooling, L2 normalisation). Its documentation fixes
//!   the order of every floating-point operation; [`CpuBackend`] is the reference and
//!   [`CudaBackend`] reproduces it bit for bit ([`select`] picks one, falling back to the CPU
//!   without a GPU). `exp` and `erf` are our own polynomials, never the platform's libm.
//! - [`Model`] is a content-addressed model directory, identified by [`ModelId`], the keccak of
//!   its [`manifest`]. [`Model::run`] takes JSON input and returns an [`Output`] whose
//!   [`Output::hash`] is the commitment. Architectures: `mlp` (our demo classifier) and `bert`
//!   sentence encoders such as all-MiniLM-L6-v2 ([`Tokenizer`] gives the ids of the model's
//!   `tokenizer.json`; mean pooling and L2 normalisation as sentence-transformers).
//! - [`write_seeded_mlp`] and [`write_seeded_bert`] create models whose files, and so whose id,
//!   depend only on their arguments (demos, tests, GPU checks without the real weights).
//!
//! This crate does no networking, signing or scheduling, and holds no state beyond loaded
//! weights (and, for CUDA, compiled kernels).

mod backend;
mod bert;
mod bpe;
mod error;
mod generate;
mod gguf;
mod id;
mod llama;
mod math;
mod mlp;
mod model;
mod pool;
mod rng;
mod rope;
mod sample;
#[cfg(test)]
mod testing;
mod tokenizer;
mod weights;

pub use backend::{
    Backend, Comparison, CpuBackend, CpuKernel, CpuKernelError, CudaBackend, CudaError, Epilogue,
    GemmTiming, PackedMatrix, Probe, UnknownBackend, select,
};
pub use bert::{BertSpec, MAX_TEXT_BYTES, write_seeded_bert};
pub use bpe::{BpeTokenizer, Utf8Stream};
pub use error::Error;
pub use generate::{
    Completion, DEFAULT_MAX_TOKENS, FinishReason, GenerateRequest, Generator,
    MAX_COMPLETION_TOKENS, MAX_TOP_LOGPROBS, MessageJson, Step, TEMPLATE_ALLOWANCE, TokenLogprob,
    units_bound,
};
pub use gguf::with_metadata as gguf_with_metadata;
pub use id::{KeccakStream, ModelId, keccak256};
pub use llama::{
    ChatMessage, KvCache, LlamaSpec, SeededShape, seeded_llama_gguf, seeded_llama_gguf_shaped,
};
pub use mlp::{MlpSpec, write_seeded_mlp};
pub use model::{
    MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, MAX_ROWS, MAX_TOKENIZER_BYTES, MAX_WEIGHTS_BYTES,
    MODEL_FILES, Manifest, ManifestFile, Model, Output, OutputKind, manifest,
};
pub use rope::RopeTable;
pub use sample::{LogSoftmax, Sampling, argmax, logprob, top_tokens};
pub use tokenizer::Tokenizer;

thread_local! {
    /// Set while this thread runs code whose panics this crate catches and turns into errors.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the panic being handled on this thread will be caught by this crate (a driver
/// library misbehaving inside cudarc) and turned into an error. A process-wide panic hook that
/// stops the process on any panic must let these through.
pub fn panic_is_caught() -> bool {
    CATCHING.with(|c| c.get())
}

/// Runs `f` with [`panic_is_caught`] true on this thread, catching its panic.
pub(crate) fn catching<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let before = CATCHING.with(|c| c.replace(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(before));
    out
}
