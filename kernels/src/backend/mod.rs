//! The op interface every backend implements, and the CPU reference backend.
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

pub use cpu::CpuBackend;

/// Deterministic tensor ops on row-major `f32` slices.
///
/// The signatures take host memory; a device backend copies in and out (later revisions may add
/// device-resident variants, which must keep the same per-element arithmetic).
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
}
