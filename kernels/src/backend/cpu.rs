//! The CPU reference backend.
//!
//! GEMM runs a 4×16 register tile (4 rows of `a` against 16 columns of `b`), accumulating the
//! whole `k` dimension in order for every element, so tiling, batching and threading change only
//! which elements are computed together, never the arithmetic of one element. The tile is
//! compiled twice from one body: once with the `fma` target feature (chosen at run time when the
//! CPU has it, where `mul_add` is one instruction) and once portable (where `mul_add` is the
//! correctly rounded software routine); both produce identical bits.

use crate::backend::Backend;
use crate::math;

/// Rows of `a` per register tile.
const MR: usize = 4;
/// Columns of `b` per register tile (two 256-bit vectors per row).
const NR: usize = 16;
/// GEMMs with more multiply-adds than this (m·n·k) are split over threads by rows. Measured on
/// the 2-core dev machine: at 1.6M a second thread costs more than it saves, at 9.4M it saves 35%.
const PARALLEL_WORK: usize = 1 << 22;

/// Pure-Rust backend; the reference every other backend must match bit for bit.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    /// Use the `fma` target-feature kernel (detected at construction).
    fma: bool,
    /// Threads for large GEMMs.
    threads: usize,
}

impl CpuBackend {
    /// Detects FMA support and the number of cores.
    pub fn new() -> Self {
        let fma = fma_available();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        tracing::debug!(fma, threads, "cpu backend ready");
        CpuBackend { fma, threads }
    }

    /// The portable kernel (no target features), for comparing against the FMA kernel.
    #[cfg(test)]
    pub(crate) fn portable() -> Self {
        CpuBackend {
            fma: false,
            threads: 1,
        }
    }

    /// All the threads for work big enough to split, else one.
    fn threads_if(&self, big: bool) -> usize {
        if big { self.threads } else { 1 }
    }

    /// Whether this backend runs the FMA kernel.
    #[cfg(test)]
    pub(crate) fn uses_fma(&self) -> bool {
        self.fma
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn gemm_bias(
        &self,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let work = m.saturating_mul(n).saturating_mul(k);
        let threads = self.threads_if(work > PARALLEL_WORK);
        gemm(a, b, bias, m, k, n, self.fma, threads)
    }

    fn gemm_packed(&self, a: &[f32], w: &PackedMatrix, bias: Option<&[f32]>, m: usize) -> Vec<f32> {
        let work = m.saturating_mul(w.n).saturating_mul(w.k);
        let threads = self.threads_if(work > PARALLEL_WORK);
        gemm_packed(a, w, bias, m, self.fma, threads)
    }

    fn gelu(&self, x: &mut [f32]) {
        let threads = self.threads_if(x.len() >= PARALLEL_ELEMENTS);
        let fma = self.fma;
        split(x, 1, threads, |chunk| elementwise(chunk, fma, Op::Gelu));
    }

    fn softmax_rows(&self, x: &mut [f32], cols: usize) {
        if !super::ops::has_rows("softmax_rows", x.len(), cols) {
            return;
        }
        let threads = self.threads_if(x.len() >= PARALLEL_ELEMENTS);
        let fma = self.fma;
        split(x, cols, threads, |rows| {
            elementwise(rows, fma, Op::Softmax(cols))
        });
    }

    fn layernorm_rows(&self, x: &mut [f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32) {
        if !super::ops::layernorm_shapes(x.len(), cols, gamma, beta) {
            return;
        }
        let threads = self.threads_if(x.len() >= PARALLEL_ELEMENTS);
        let fma = self.fma;
        split(x, cols, threads, |rows| {
            elementwise(rows, fma, Op::LayerNorm { gamma, beta, eps })
        });
    }
}

/// Element-wise ops over more values than this are split over threads (whole rows each, so
/// every value is computed exactly as on one thread).
const PARALLEL_ELEMENTS: usize = 1 << 14;

/// The element-wise ops compiled per kernel variant.
#[derive(Clone, Copy)]
enum Op<'a> {
    Gelu,
    /// Softmax of each row of this many columns.
    Softmax(usize),
    /// LayerNorm of each row (as long as `gamma`).
    LayerNorm {
        gamma: &'a [f32],
        beta: &'a [f32],
        eps: f32,
    },
}

/// Runs `f` on `x` cut into at most `threads` pieces of whole `unit`s (rows), in parallel.
fn split(x: &mut [f32], unit: usize, threads: usize, f: impl Fn(&mut [f32]) + Sync) {
    let units = x.len() / unit.max(1);
    let threads = threads.clamp(1, units.max(1));
    if threads == 1 {
        f(x);
        return;
    }
    let per = units.div_ceil(threads) * unit;
    let f = &f;
    std::thread::scope(|s| {
        let mut chunks = x.chunks_mut(per);
        let first = chunks.next();
        for chunk in chunks {
            s.spawn(move || f(chunk));
        }
        if let Some(chunk) = first {
            f(chunk);
        }
    });
}

/// `op` on `x`, with the FMA kernel where the CPU has it: `math`'s `mul_add`s are then single
/// instructions instead of calls to the software routine, with the same bits.
fn elementwise(x: &mut [f32], fma: bool, op: Op<'_>) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if fma {
        // SAFETY: `fma` is only true when `fma_available()` saw AVX and FMA on this CPU.
        unsafe { elementwise_fma(x, op) };
        return;
    }
    let _ = fma;
    elementwise_body(x, op);
}

/// [`elementwise_body`] compiled with FMA.
///
/// # Safety
///
/// The CPU must support AVX and FMA.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "fma")]
unsafe fn elementwise_fma(x: &mut [f32], op: Op<'_>) {
    elementwise_body(x, op);
}

#[inline(always)]
fn elementwise_body(x: &mut [f32], op: Op<'_>) {
    match op {
        Op::LayerNorm { gamma, beta, eps } => {
            for row in x.chunks_exact_mut(gamma.len()) {
                super::ops::layernorm_row(row, gamma, beta, eps);
            }
        }
        Op::Gelu => {
            for v in x {
                *v = math::gelu(*v);
            }
        }
        Op::Softmax(cols) => {
            for row in x.chunks_exact_mut(cols) {
                math::softmax_row(row);
            }
        }
    }
}

fn fma_available() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

/// A `k × n` weight matrix packed once, at model load, into the CPU GEMM's layout: 16-column
/// panels, each `k` rows of 16 contiguous values (zero past column `n`), so no GEMM call copies
/// or re-lays out its weights. [`Backend::gemm_packed`] on it gives the same bits as
/// [`Backend::gemm_bias`] on the row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    /// Panel `j` (columns `16j..16j+16`) is `panels[j·k..(j+1)·k]`.
    panels: Vec<[f32; NR]>,
}

impl PackedMatrix {
    /// Packs the row-major `k × n` matrix `b`.
    ///
    /// # Panics
    ///
    /// When `b` does not hold `k·n` values (a loader bug: shapes are checked when read).
    pub fn new(b: &[f32], k: usize, n: usize) -> PackedMatrix {
        assert_eq!(
            b.len(),
            k * n,
            "PackedMatrix: {} values for a {k}×{n} matrix",
            b.len()
        );
        let mut panels = vec![[0.0f32; NR]; k * n.div_ceil(NR)];
        for (jp, j0) in (0..n).step_by(NR).enumerate() {
            let width = NR.min(n - j0);
            for (p, dst) in panels[jp * k..(jp + 1) * k].iter_mut().enumerate() {
                dst[..width].copy_from_slice(&b[p * n + j0..p * n + j0 + width]);
            }
        }
        PackedMatrix { k, n, panels }
    }

    /// Rows (the GEMM's inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The row-major values again (for backends that read that layout).
    pub fn to_row_major(&self) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let mut b = vec![0.0f32; k * n];
        for (jp, j0) in (0..n).step_by(NR).enumerate() {
            let width = NR.min(n - j0);
            for (p, src) in self.panels[jp * k..(jp + 1) * k].iter().enumerate() {
                b[p * n + j0..p * n + j0 + width].copy_from_slice(&src[..width]);
            }
        }
        b
    }
}

/// GEMM with an explicit kernel choice and thread count (see [`Backend::gemm_bias`]): each
/// thread copies each 16-column panel of `b` into a contiguous buffer as it reaches it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    fma: bool,
    threads: usize,
) -> Vec<f32> {
    super::ops::check_gemm_shapes(a, b, bias, m, k, n);
    run(a, bias, m, k, n, fma, threads, || Copied {
        b,
        n,
        buf: vec![[0.0f32; NR]; k],
    })
}

/// GEMM on weights packed at load (see [`Backend::gemm_packed`]): every thread reads the same
/// panels, nothing is copied.
pub(crate) fn gemm_packed(
    a: &[f32],
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    m: usize,
    fma: bool,
    threads: usize,
) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    assert_eq!(
        a.len(),
        m * k,
        "gemm_packed: a has {} values, expected m·k = {m}·{k}",
        a.len()
    );
    if let Some(bias) = bias {
        assert_eq!(
            bias.len(),
            n,
            "gemm_packed: bias has {} values, expected n = {n}",
            bias.len()
        );
    }
    run(a, bias, m, k, n, fma, threads, || Packed(&w.panels[..], k))
}

/// Where the GEMM body finds panel `jp` (columns `j0..j0 + width`) of `b`, `k` rows of 16.
trait Panels {
    fn panel(&mut self, jp: usize, j0: usize, width: usize) -> &[[f32; NR]];
}

/// Panels packed once ([`PackedMatrix`]).
struct Packed<'a>(&'a [[f32; NR]], usize);

impl Panels for Packed<'_> {
    #[inline(always)]
    fn panel(&mut self, jp: usize, _: usize, _: usize) -> &[[f32; NR]] {
        &self.0[jp * self.1..(jp + 1) * self.1]
    }
}

/// Panels copied from a row-major `b` into one reused buffer (zero past column n).
struct Copied<'a> {
    b: &'a [f32],
    n: usize,
    buf: Vec<[f32; NR]>,
}

impl Panels for Copied<'_> {
    #[inline(always)]
    fn panel(&mut self, _: usize, j0: usize, width: usize) -> &[[f32; NR]] {
        let n = self.n;
        for (p, dst) in self.buf.iter_mut().enumerate() {
            dst[..width].copy_from_slice(&self.b[p * n + j0..p * n + j0 + width]);
            dst[width..].fill(0.0);
        }
        &self.buf
    }
}

/// Splits the rows of `a` over `threads` (whole tiles each), each thread reading `b` through
/// its own [`Panels`] from `panels`.
#[allow(clippy::too_many_arguments)]
fn run<P: Panels>(
    a: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    fma: bool,
    threads: usize,
    panels: impl Fn() -> P + Sync,
) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let threads = threads.clamp(1, m.div_ceil(MR));
    if threads == 1 {
        rows(a, &mut panels(), bias, k, n, &mut out, fma);
        return out;
    }
    // Whole tiles per thread; every element is computed the same way whichever thread owns it.
    let rows_per = m.div_ceil(threads).next_multiple_of(MR);
    let panels = &panels;
    std::thread::scope(|s| {
        let mut chunks = out.chunks_mut(rows_per * n).enumerate();
        let first = chunks.next();
        for (c, out_chunk) in chunks {
            let r0 = c * rows_per;
            let a_chunk = &a[r0 * k..(r0 + out_chunk.len() / n) * k];
            s.spawn(move || rows(a_chunk, &mut panels(), bias, k, n, out_chunk, fma));
        }
        if let Some((_, out_chunk)) = first {
            let a_chunk = &a[..out_chunk.len() / n * k];
            rows(a_chunk, &mut panels(), bias, k, n, out_chunk, fma);
        }
    });
    out
}

/// Computes `out` (some rows × n) from the matching rows of `a`.
fn rows<P: Panels>(
    a: &[f32],
    panels: &mut P,
    bias: Option<&[f32]>,
    k: usize,
    n: usize,
    out: &mut [f32],
    fma: bool,
) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if fma {
        // SAFETY: `fma` is only true when `fma_available()` saw AVX and FMA on this CPU.
        unsafe { rows_fma(a, panels, bias, k, n, out) };
        return;
    }
    let _ = fma;
    rows_body(a, panels, bias, k, n, out);
}

/// [`rows_body`] compiled with FMA (and the AVX it implies), so `mul_add` is `vfmadd`.
///
/// # Safety
///
/// The CPU must support AVX and FMA.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "fma")]
unsafe fn rows_fma<P: Panels>(
    a: &[f32],
    panels: &mut P,
    bias: Option<&[f32]>,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    rows_body(a, panels, bias, k, n, out);
}

/// The one GEMM body, inlined into each kernel variant so each gets its own code generation.
/// Each 16-column panel of `b` is read contiguous, with no stride and no bounds checks; padding
/// lanes are computed and dropped, the real lanes do exactly the documented operations.
#[inline(always)]
fn rows_body<P: Panels>(
    a: &[f32],
    panels: &mut P,
    bias: Option<&[f32]>,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    let m = out.len() / n;
    let row = |i: usize| &a[i * k..(i + 1) * k];
    for (jp, j0) in (0..n).step_by(NR).enumerate() {
        let width = NR.min(n - j0);
        let panel = panels.panel(jp, j0, width);
        let mut i0 = 0;
        while i0 + MR <= m {
            let acc = tile([row(i0), row(i0 + 1), row(i0 + 2), row(i0 + 3)], panel);
            store(&acc, bias, out, n, i0, j0, width);
            i0 += MR;
        }
        while i0 < m {
            let acc = tile([row(i0)], panel);
            store(&acc, bias, out, n, i0, j0, width);
            i0 += 1;
        }
    }
}

/// `R` rows of `a` (each of length k) against a k×16 panel of `b`, accumulating `p = 0..k` in
/// order with one fused multiply-add per step.
#[inline(always)]
fn tile<const R: usize>(arows: [&[f32]; R], panel: &[[f32; NR]]) -> [[f32; NR]; R] {
    let k = panel.len();
    // Slicing to exactly k lets the compiler drop the bounds checks inside the loop.
    let arows = arows.map(|r| &r[..k]);
    let mut acc = [[0.0f32; NR]; R];
    for (p, brow) in panel.iter().enumerate() {
        for (acc_row, arow) in acc.iter_mut().zip(&arows) {
            let av = arow[p];
            for (c, bv) in acc_row.iter_mut().zip(brow) {
                *c = av.mul_add(*bv, *c);
            }
        }
    }
    acc
}

/// Writes the first `width` columns of a tile at (`i0`, `j0`), adding the bias (one rounding).
#[inline(always)]
fn store<const R: usize>(
    acc: &[[f32; NR]; R],
    bias: Option<&[f32]>,
    out: &mut [f32],
    n: usize,
    i0: usize,
    j0: usize,
    width: usize,
) {
    for (r, acc_row) in acc.iter().enumerate() {
        let dst = &mut out[(i0 + r) * n + j0..(i0 + r) * n + j0 + width];
        match bias {
            Some(bias) => {
                for ((d, &v), &b) in dst.iter_mut().zip(acc_row).zip(&bias[j0..j0 + width]) {
                    *d = v + b;
                }
            }
            None => dst.copy_from_slice(&acc_row[..width]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::tests::uniform_vec as random;

    /// Reference: the same element order in f64 with no rounding worth counting.
    fn gemm_f64(
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                let mut mag = 0.0f64;
                for p in 0..k {
                    let t = a[i * k + p] as f64 * b[p * n + j] as f64;
                    s += t;
                    mag += t.abs();
                }
                if let Some(bias) = bias {
                    s += bias[j] as f64;
                    mag += (bias[j] as f64).abs();
                }
                out.push((s, mag));
            }
        }
        out
    }

    /// Each output is within (k+1)·u·(Σ|a·b| + |bias|) of the exact value, u = 2^-24: k fused
    /// steps and one bias addition, each with relative error at most u on the running sum
    /// (first-order bound; the factor 1.01 covers the higher-order terms for k ≤ 1000).
    #[test]
    fn gemm_matches_f64_reference_within_rounding_bound() {
        let cpu = CpuBackend::new();
        for (seed, m, k, n) in [
            (1, 1, 1, 1),
            (2, 5, 7, 3),
            (3, 9, 64, 33),
            (4, 17, 300, 48),
            (5, 4, 1000, 16),
        ] {
            let a = random(seed, m * k);
            let b = random(seed + 100, k * n);
            let bias = random(seed + 200, n);
            let got = cpu.gemm_bias(&a, &b, Some(&bias), m, k, n);
            let want = gemm_f64(&a, &b, Some(&bias), m, k, n);
            let u = f64::powi(2.0, -24);
            for (idx, (&g, &(w, mag))) in got.iter().zip(&want).enumerate() {
                let bound = 1.01 * (k as f64 + 1.0) * u * mag;
                assert!(
                    (g as f64 - w).abs() <= bound,
                    "m={m} k={k} n={n} element {idx}: got {g:e}, want {w:e}, bound {bound:e}"
                );
            }
        }
    }

    #[test]
    fn gemm_matches_scalar_definition_bit_for_bit() {
        // The documented per-element sequence, written as plainly as possible.
        let (m, k, n) = (7, 45, 37);
        let a = random(11, m * k);
        let b = random(12, k * n);
        let bias = random(13, n);
        for cpu in [CpuBackend::new(), CpuBackend::portable()] {
            let got = cpu.gemm_bias(&a, &b, Some(&bias), m, k, n);
            let no_bias = cpu.gemm_bias(&a, &b, None, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0.0f32;
                    for p in 0..k {
                        acc = a[i * k + p].mul_add(b[p * n + j], acc);
                    }
                    assert_eq!(no_bias[i * n + j].to_bits(), acc.to_bits(), "({i},{j})");
                    assert_eq!(
                        got[i * n + j].to_bits(),
                        (acc + bias[j]).to_bits(),
                        "({i},{j})"
                    );
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn gemm_rows_are_batch_invariant() {
        let (m, k, n) = (13, 37, 29);
        let a = random(21, m * k);
        let b = random(22, k * n);
        let bias = random(23, n);
        let cpu = CpuBackend::new();
        let full = bits(&cpu.gemm_bias(&a, &b, Some(&bias), m, k, n));
        for size in 1..=m {
            for start in 0..=m - size {
                let sub = &a[start * k..(start + size) * k];
                let got = bits(&cpu.gemm_bias(sub, &b, Some(&bias), size, k, n));
                assert_eq!(
                    got,
                    full[start * n..(start + size) * n],
                    "batch of {size} rows at row {start}"
                );
            }
        }
    }

    #[test]
    fn gemm_fma_and_portable_kernels_agree() {
        let cpu = CpuBackend::new();
        if !cpu.uses_fma() {
            eprintln!("this CPU has no FMA: only the portable kernel runs here");
        }
        for (seed, m, k, n) in [
            (31, 1, 1, 1),
            (32, 6, 33, 17),
            (33, 21, 130, 70),
            (34, 4, 8, 16),
        ] {
            let a = random(seed, m * k);
            let b = random(seed + 1, k * n);
            let bias = random(seed + 2, n);
            let fast = gemm(&a, &b, Some(&bias), m, k, n, cpu.uses_fma(), 1);
            let slow = gemm(&a, &b, Some(&bias), m, k, n, false, 1);
            assert_eq!(bits(&fast), bits(&slow), "m={m} k={k} n={n}");
        }
    }

    #[test]
    fn gemm_is_independent_of_thread_count() {
        let (m, k, n) = (70, 160, 100);
        let a = random(41, m * k);
        let b = random(42, k * n);
        let bias = random(43, n);
        let fma = CpuBackend::new().uses_fma();
        let one = bits(&gemm(&a, &b, Some(&bias), m, k, n, fma, 1));
        for threads in [2, 3, 5, 64] {
            assert_eq!(
                bits(&gemm(&a, &b, Some(&bias), m, k, n, fma, threads)),
                one,
                "{threads} threads"
            );
        }
        // Above the threshold the backend itself goes parallel; same bits.
        let (m, k, n) = (64, 256, 320);
        let a = random(44, m * k);
        let b = random(45, k * n);
        let cpu = CpuBackend::new();
        assert!(m * k * n > PARALLEL_WORK);
        assert_eq!(
            bits(&cpu.gemm_bias(&a, &b, None, m, k, n)),
            bits(&gemm(&a, &b, None, m, k, n, fma, 1))
        );
    }

    /// Weights packed once give the bits of the unpacked call, for every tail width, and
    /// unpack to themselves.
    #[test]
    fn packed_weights_give_the_same_bits() {
        for cpu in [CpuBackend::new(), CpuBackend::portable()] {
            for (seed, m, k, n) in [
                (91, 5, 7, 1),
                (92, 9, 33, 16),
                (93, 13, 40, 47),
                (94, 64, 256, 320),
                (95, 3, 0, 5),
            ] {
                let a = random(seed, m * k);
                let b = random(seed + 1, k * n);
                let bias = random(seed + 2, n);
                let w = PackedMatrix::new(&b, k, n);
                assert_eq!(w.to_row_major(), b);
                assert_eq!((w.k(), w.n()), (k, n));
                assert_eq!(
                    bits(&cpu.gemm_packed(&a, &w, Some(&bias), m)),
                    bits(&cpu.gemm_bias(&a, &b, Some(&bias), m, k, n)),
                    "m={m} k={k} n={n} fma={}",
                    cpu.fma
                );
                assert_eq!(
                    bits(&cpu.gemm_packed(&a, &w, None, m)),
                    bits(&cpu.gemm_bias(&a, &b, None, m, k, n))
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "gemm_packed: a has")]
    fn gemm_packed_rejects_wrong_lengths() {
        let w = PackedMatrix::new(&[1.0; 6], 3, 2);
        CpuBackend::new().gemm_packed(&[1.0; 5], &w, None, 2);
    }

    #[test]
    fn gemm_degenerate_shapes() {
        let cpu = CpuBackend::new();
        assert_eq!(
            cpu.gemm_bias(&[], &[], Some(&[1.5, -2.0]), 3, 0, 2),
            vec![1.5, -2.0, 1.5, -2.0, 1.5, -2.0]
        );
        assert!(cpu.gemm_bias(&[], &[1.0; 6], None, 0, 3, 2).is_empty());
        assert!(cpu.gemm_bias(&[1.0; 3], &[], None, 1, 3, 0).is_empty());
    }

    #[test]
    #[should_panic(expected = "gemm_bias: a has")]
    fn gemm_rejects_wrong_lengths() {
        CpuBackend::new().gemm_bias(&[1.0; 5], &[1.0; 6], None, 2, 3, 2);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_match_f64() {
        let cpu = CpuBackend::new();
        let cols = 37;
        let mut x: Vec<f32> = random(51, cols * 40).iter().map(|v| v * 30.0).collect();
        // Rows with a huge spread and with equal values.
        x[..cols]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as f32 * 5.0 - 90.0);
        x[cols..2 * cols].fill(3.0);
        let orig = x.clone();
        cpu.softmax_rows(&mut x, cols);
        for (row, src) in x.chunks_exact(cols).zip(orig.chunks_exact(cols)) {
            let max = src.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let exps: Vec<f64> = src.iter().map(|&v| (v as f64 - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            let u = f64::powi(2.0, -24);
            for ((&got, e), &v) in row.iter().zip(&exps).zip(src) {
                let want = e / total;
                // Relative error, first order in u = 2^-24: rounding `v - max` moves the exp
                // argument by up to |v - max|·u; exp adds 2u (1 ulp), the sum of `cols` terms
                // up to cols·u, the division u. Doubled for margin.
                let bound = 2.0 * u * ((v as f64 - max).abs() + 3.0 + cols as f64) * want;
                assert!(
                    (got as f64 - want).abs() <= bound + 1e-38,
                    "{got:e} vs {want:e}"
                );
            }
            let sum: f64 = row.iter().map(|&v| v as f64).sum();
            assert!((sum - 1.0).abs() <= 1e-6, "row sums to {sum}");
        }
        assert!(x[cols..2 * cols].iter().all(|&v| v == x[cols]));
    }

    /// GELU, softmax and layernorm give the same bits under the FMA kernel, the portable one
    /// and split over threads (above the threshold) as the scalar definitions.
    #[test]
    fn elementwise_ops_are_identical_under_every_kernel_and_thread_count() {
        let xs: Vec<f32> = random(71, 37 * (3 * PARALLEL_ELEMENTS / 37 + 5))
            .iter()
            .map(|v| v * 9.0)
            .collect();
        let want_gelu: Vec<u32> = xs.iter().map(|v| math::gelu(*v).to_bits()).collect();
        let mut want_softmax = xs.clone();
        for row in want_softmax.chunks_exact_mut(37) {
            math::softmax_row(row);
        }
        let (gamma, beta) = (random(72, 37), random(73, 37));
        let mut want_layernorm = xs.clone();
        super::super::ops::layernorm_rows(&mut want_layernorm, 37, &gamma, &beta, 1e-12);
        let threaded = CpuBackend {
            fma: CpuBackend::new().fma,
            threads: 3,
        };
        for cpu in [CpuBackend::new(), CpuBackend::portable(), threaded] {
            let mut g = xs.clone();
            cpu.gelu(&mut g);
            assert_eq!(
                bits(&g),
                want_gelu,
                "gelu, fma={} threads={}",
                cpu.fma,
                cpu.threads
            );
            let mut l = xs.clone();
            cpu.layernorm_rows(&mut l, 37, &gamma, &beta, 1e-12);
            assert_eq!(
                bits(&l),
                bits(&want_layernorm),
                "layernorm, fma={} threads={}",
                cpu.fma,
                cpu.threads
            );
            let mut s = xs.clone();
            cpu.softmax_rows(&mut s, 37);
            assert_eq!(
                bits(&s),
                bits(&want_softmax),
                "softmax, fma={} threads={}",
                cpu.fma,
                cpu.threads
            );
        }
    }

    #[test]
    fn gelu_backend_matches_scalar() {
        let cpu = CpuBackend::new();
        let src = random(61, 1000);
        let mut x = src.clone();
        cpu.gelu(&mut x);
        for (g, s) in x.iter().zip(&src) {
            assert_eq!(g.to_bits(), math::gelu(*s).to_bits());
        }
    }

    fn hash_bits(v: &[f32]) -> String {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        crate::id::hex32(&crate::keccak256(&bytes))
    }

    /// Pins the exact-mode arithmetic of every op: one changed rounding anywhere in GEMM, GELU,
    /// `exp` or softmax changes one of these hashes. Every backend must reproduce them; update
    /// them only on purpose (it changes every output hash on the network).
    #[test]
    fn golden_kernel_bits() {
        let (m, k, n) = (19, 150, 45);
        let a = random(81, m * k);
        let b = random(82, k * n);
        let bias = random(83, n);
        let xs: Vec<f32> = random(84, 4000).iter().map(|v| v * 12.0).collect();
        for cpu in [CpuBackend::new(), CpuBackend::portable()] {
            let y = cpu.gemm_bias(&a, &b, Some(&bias), m, k, n);
            assert_eq!(
                hash_bits(&y),
                "0x9a16447d6efe0becf33c0aa91d3494f6b27858cc28ac56295633593d1611b906",
                "gemm, fma={}",
                cpu.fma
            );
            let mut g = xs.clone();
            cpu.gelu(&mut g);
            assert_eq!(
                hash_bits(&g),
                "0xaee7a31e57bf32695b7bf9ad9c8130f31bc6aa1e6c96df3cd9e12c984a3fbf17",
                "gelu"
            );
            let mut s = xs.clone();
            cpu.softmax_rows(&mut s, 40);
            assert_eq!(
                hash_bits(&s),
                "0x01bca85b42c280386d02ad2bb68d3cbe1f6e3cd3161a02f9a5a14aa1d3fa54ed",
                "softmax"
            );
        }
    }
}
