//! The op interface every backend implements: the CPU reference backend and the CUDA backend.
//!
//! # Exact mode
//!
//! A backend is only correct if it reproduces [`CpuBackend`] bit for bit: validators re-execute
//! a job (maybe on other hardware) and compare output hashes. Each op's documentation fixes the
//! order of every floating-point operation; an implementation may parallelise and tile freely
//! across *output elements* but never reassociate the work inside one element (no split-K, no
//! tree reductions that differ from the one documented, no contraction of `a * b + c` into an
//! FMA where the documentation says two roundings, no flush-to-zero, no fast-math).

mod cpu;
mod cuda;
mod ops;

use std::sync::Arc;

use crate::RopeTable;

pub(crate) use cpu::QuantKind;
pub use cpu::{CpuBackend, CpuKernel, CpuKernelError, PackedMatrix};
pub use cuda::{Comparison, CudaBackend, CudaError, GemmTiming, Probe};

/// A backend name [`select`] does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown backend {name:?}; the backends are \"cpu\" and \"cuda\"")]
pub struct UnknownBackend {
    /// The name asked for.
    pub name: String,
}

/// The backend called `name`: `"cpu"`, or `"cuda"`, which falls back to the CPU (with one
/// warning saying why) when there is no usable GPU, driver or NVRTC. Read
/// [`Backend::name`] of the result to know which one runs.
pub fn select(name: &str) -> Result<Arc<dyn Backend>, UnknownBackend> {
    match name {
        "cpu" => Ok(Arc::new(CpuBackend::new())),
        "cuda" => match CudaBackend::new() {
            Ok(cuda) => Ok(Arc::new(cuda)),
            Err(err) => {
                tracing::warn!("cuda backend unavailable, using cpu: {err}");
                Ok(Arc::new(CpuBackend::new()))
            }
        },
        _ => Err(UnknownBackend {
            name: name.to_string(),
        }),
    }
}

/// What a GEMM does with each output element after its bias ([`Backend::gemm_packed_then`]).
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// Nothing: the element is `acc + bias`.
    Plain,
    /// [`Backend::gelu`] of the element (bias + GELU fused: one pass over the output).
    Gelu,
    /// The element plus `residual[i][j]` (`m × n`, row-major) with one rounding, as
    /// [`Backend::add_inplace`] would add it (fused residual: one pass over the output).
    Residual(&'a [f32]),
}

/// Deterministic tensor ops on row-major `f32` slices.
///
/// The signatures take host memory; a device backend copies in and out (later revisions may add
/// device-resident variants, which must keep the same per-element arithmetic).
///
/// Decoder models extend this set without changing an existing op's bits: causal attention
/// over a KV cache is [`Backend::attention`]'s per-query loop with queries and keys of
/// different lengths and keys past the query's position skipped (as padded keys are skipped
/// now); argmax and seeded sampling are row ops over [`Backend::softmax_rows`] output with a
/// fixed scan order and a counter-based generator (the crate's SplitMix64) keyed by job and
/// position, so a token never depends on the batch it was sampled in.
pub trait Backend: Send + Sync {
    /// Short name for logs and metrics, e.g. `"cpu"`.
    fn name(&self) -> &'static str;

    /// `out[m×n] = a[m×k] · b[k×n] + bias[n]`.
    ///
    /// Each output element starts from `0.0`, accumulates `p = 0, 1, …, k-1` in increasing order
    /// as `acc = a[i][p].mul_add(b[p][j], acc)` (fused, one rounding), then, if `bias` is given,
    /// adds `bias[j]` with one rounding (`acc + bias[j]`); without a bias the result is `acc`.
    /// The result is therefore bit-identical however rows are tiled, batched or threaded.
    ///
    /// # Panics
    ///
    /// If a slice length disagrees with `m`, `k`, `n` (a caller bug, not a data error).
    fn gemm_bias(
        &self,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32>;

    /// [`Backend::gemm_bias`] with weights packed once at load ([`PackedMatrix`]): the same
    /// bits. Backends that read row-major weights get them back from the packing.
    fn gemm_packed(&self, a: &[f32], w: &PackedMatrix, bias: Option<&[f32]>, m: usize) -> Vec<f32> {
        self.gemm_bias(a, &w.to_row_major(), bias, m, w.k(), w.n())
    }

    /// [`Backend::gemm_packed`], then `then` on every output element: the bits of calling
    /// [`Backend::gelu`] or [`Backend::add_inplace`] on the result, in one pass where the
    /// backend fuses them into the GEMM.
    fn gemm_packed_then(
        &self,
        a: &[f32],
        w: &PackedMatrix,
        bias: Option<&[f32]>,
        m: usize,
        then: Epilogue<'_>,
    ) -> Vec<f32> {
        let mut y = self.gemm_packed(a, w, bias, m);
        match then {
            Epilogue::Plain => {}
            Epilogue::Gelu => self.gelu(&mut y),
            Epilogue::Residual(r) => self.add_inplace(&mut y, r),
        }
        y
    }

    /// In-place GELU, erf form: `(0.5·x)·(1 + erf(x·(1/√2)))` with this crate's own `erf`
    /// polynomial (see the `math` module), elementwise.
    fn gelu(&self, x: &mut [f32]);

    /// In-place softmax over each row of `cols` values: subtract the row max, apply this crate's
    /// own `exp`, sum left to right starting from `0.0`, then divide each value by the sum.
    ///
    /// # Panics
    ///
    /// If `x` is not empty and `cols` is 0 or does not divide `x.len()`.
    fn softmax_rows(&self, x: &mut [f32], cols: usize);

    /// In-place layer normalisation of each row of `cols` values: `mean = (Σ x) / cols` left to
    /// right from `0.0`; `d = x − mean`; `var = (Σ d.mul_add(d, ·)) / cols`;
    /// `inv = 1 / sqrt(var + eps)`; `y = (d · inv).mul_add(gamma, beta)`.
    fn layernorm_rows(&self, x: &mut [f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32) {
        ops::layernorm_rows(x, cols, gamma, beta, eps);
    }

    /// The rows of `table` (`vocab × dim`) for `ids`, concatenated; an id outside the table is
    /// an error.
    fn embedding_gather(
        &self,
        table: &[f32],
        dim: usize,
        ids: &[u32],
    ) -> Result<Vec<f32>, crate::Error> {
        ops::embedding_gather(table, dim, ids)
    }

    /// Residual add, `x[i] += y[i]`, one rounding each.
    fn add_inplace(&self, x: &mut [f32], y: &[f32]) {
        ops::add_inplace(x, y);
    }

    /// Multi-head scaled-dot-product attention with a padding mask; `q`, `k`, `v` and the result
    /// are `[batch][seq][heads·head_dim]`, `mask` is `[batch][seq]` (1 = token). Per unmasked
    /// query, over unmasked keys in increasing order: `s_j = (Σ_d q.mul_add(k, ·)) · scale`, the
    /// softmax of [`Backend::softmax_rows`], then `out[d] = Σ_j p_j.mul_add(v[j][d], ·)`.
    /// Padded keys are skipped (never weighted), padded queries give zeros: the bits of a
    /// sequence do not depend on its batch or padding.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: &[u8],
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Vec<f32> {
        ops::attention(q, k, v, mask, batch, seq, heads, head_dim, scale)
    }

    /// [`Backend::attention`] on the output of one GEMM against the concatenated query, key and
    /// value weights: `qkv` is `[batch][seq][3·hidden]`, each row its query, key and value side
    /// by side. The same bits as splitting them first.
    #[allow(clippy::too_many_arguments)]
    fn attention_qkv(
        &self,
        qkv: &[f32],
        mask: &[u8],
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Vec<f32> {
        let hidden = heads * head_dim;
        ops::check_qkv_shapes(qkv.len(), mask, batch, seq, hidden);
        let rows = batch * seq;
        let (mut q, mut k, mut v) = (
            Vec::with_capacity(rows * hidden),
            Vec::with_capacity(rows * hidden),
            Vec::with_capacity(rows * hidden),
        );
        for row in qkv.chunks_exact(3 * hidden) {
            q.extend_from_slice(&row[..hidden]);
            k.extend_from_slice(&row[hidden..2 * hidden]);
            v.extend_from_slice(&row[2 * hidden..]);
        }
        self.attention(&q, &k, &v, mask, batch, seq, heads, head_dim, scale)
    }

    /// [`Backend::attention_qkv`] on sequences laid end to end without padding: `qkv` is
    /// `[Σ lens][3·hidden]`, sequence `b` the `lens[b]` rows after those of the sequences
    /// before it, and each attends to its own tokens only. The bits of
    /// [`Backend::attention_qkv`] on the same sequences padded (padding is never weighted);
    /// batches of unequal lengths then cost no work for padding in any row-wise op.
    fn attention_ragged(
        &self,
        qkv: &[f32],
        lens: &[usize],
        heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Vec<f32> {
        let hidden = heads * head_dim;
        ops::check_ragged_shapes(qkv.len(), lens, hidden);
        let (batch, seq) = (lens.len(), lens.iter().copied().max().unwrap_or(0));
        let mut padded = vec![0.0f32; batch * seq * 3 * hidden];
        let mut mask = vec![0u8; batch * seq];
        let mut first = 0;
        for (b, &len) in lens.iter().enumerate() {
            padded[b * seq * 3 * hidden..][..len * 3 * hidden]
                .copy_from_slice(&qkv[first * 3 * hidden..(first + len) * 3 * hidden]);
            mask[b * seq..b * seq + len].fill(1);
            first += len;
        }
        let out = self.attention_qkv(&padded, &mask, batch, seq, heads, head_dim, scale);
        let mut ragged = Vec::with_capacity(first * hidden);
        for (b, &len) in lens.iter().enumerate() {
            ragged.extend_from_slice(&out[b * seq * hidden..][..len * hidden]);
        }
        ragged
    }

    /// Mean over each sequence's unmasked tokens (`x` is `[batch][seq][cols]`): summed in token
    /// order from `0.0`, divided by the token count (at least 1).
    fn mean_pool(&self, x: &[f32], mask: &[u8], batch: usize, seq: usize, cols: usize) -> Vec<f32> {
        ops::mean_pool(x, mask, batch, seq, cols)
    }

    /// Each row divided by `max(sqrt(Σ x.mul_add(x, ·)), 1e-12)`, the sum left to right from
    /// `0.0` (as `torch.nn.functional.normalize`).
    fn l2_normalize_rows(&self, x: &mut [f32], cols: usize) {
        ops::l2_normalize_rows(x, cols);
    }
    /// In-place RMS normalisation of each row of `cols` values (decoder models):
    /// `ss = Σ x.mul_add(x, ·)` left to right from `0.0`; `inv = 1 / sqrt(ss / cols + eps)`
    /// (a division, a square root, a division, each rounded once); `y = (x · inv) · gamma`
    /// (two roundings).
    ///
    /// # Panics
    ///
    /// If `x` is not empty and `cols` is 0 or does not divide it, or `gamma` is not `cols` long.
    fn rmsnorm_rows(&self, x: &mut [f32], cols: usize, gamma: &[f32], eps: f32) {
        ops::rmsnorm_rows(x, cols, gamma, eps);
    }

    /// Rotary position embedding in place, on rows of `width` values whose first
    /// `heads · head_dim` values are heads to rotate (a fused query-key row rotates its query
    /// and key heads, and leaves the values after them). Row `r` is at `positions[r]`; each
    /// consecutive pair `(x0, x1)` of a head, pair `i`, with `(c, s)` = `table.at(pos)[i]`,
    /// becomes `(x0·c − x1·s, x0·s + x1·c)`: each product rounded, then the sum (no FMA).
    /// Consecutive pairs are the layout of GGUF Llama weights, whose query and key rows the
    /// converter permuted for it.
    ///
    /// # Panics
    ///
    /// If the shapes disagree or a position is past the table.
    fn rope(
        &self,
        x: &mut [f32],
        width: usize,
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        table: &RopeTable,
    ) {
        ops::rope(x, width, heads, head_dim, positions, table);
    }

    /// SwiGLU: each row of `gate_up` is `cols` gate values then `cols` up values; the result's
    /// row is `silu(gate) · up`, `silu(g) = g / (1 + exp(−g))` with this crate's `exp` (a
    /// negation, the exponential, an addition, a division, a multiplication, each rounded).
    ///
    /// # Panics
    ///
    /// If `gate_up` is not empty and `2·cols` does not divide it.
    fn swiglu(&self, gate_up: &[f32], cols: usize) -> Vec<f32> {
        ops::swiglu(gate_up, cols)
    }

    /// Causal grouped-query attention of one sequence over its key-value cache: `q` is
    /// `[queries][heads·head_dim]`, `k` and `v` are `[keys][kv_heads·head_dim]` (the cache,
    /// this call's own keys last), query `i` is at position `keys − queries + i` and sees keys
    /// `0..=` its position. Query head `h` reads key-value head `h / (heads / kv_heads)`. Per
    /// query and head, over visible keys in increasing order: the arithmetic of
    /// [`Backend::attention`] (scores accumulated by `mul_add` from `0.0` then scaled, the
    /// softmax of [`Backend::softmax_rows`], values accumulated by `mul_add` in key order). A
    /// token's bits depend on its sequence alone, never on the batch or on how its prompt was
    /// split into calls.
    ///
    /// # Panics
    ///
    /// If the shapes disagree or there are more queries than keys.
    #[allow(clippy::too_many_arguments)]
    fn attention_causal(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Vec<f32> {
        ops::attention_causal(q, k, v, heads, kv_heads, head_dim, scale)
    }

    /// Most pieces of host work (such as drawing several sequences' next tokens) this
    /// backend's caller should run at once on the process's CPU pool: a CPU backend's thread
    /// share, 1 where the host only feeds a device.
    fn parallelism(&self) -> usize {
        1
    }

    /// [`Backend::attention_causal`] of several sequences, each `(q, k, v)`, their outputs
    /// one after another: each sequence's bits are those of its own call (the default makes
    /// exactly those calls), so a backend may spread the sequences and heads over its cores.
    ///
    /// # Panics
    ///
    /// As [`Backend::attention_causal`], for any sequence.
    fn attention_causal_batch(
        &self,
        seqs: &[(&[f32], &[f32], &[f32])],
        shape: (usize, usize, usize),
        scale: f32,
    ) -> Vec<f32> {
        let (heads, kv_heads, head_dim) = shape;
        let mut out = Vec::new();
        for &(q, k, v) in seqs {
            out.extend(self.attention_causal(q, k, v, heads, kv_heads, head_dim, scale));
        }
        out
    }
}
