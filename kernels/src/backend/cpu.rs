//! The CPU reference backend.
//!
//! GEMM runs register tiles of `MR` rows of `a` against 16 columns of `b`, accumulating the whole
//! `k` dimension in order for every element, so tiling, batching and threading change only which
//! elements are computed together, never the arithmetic of one element. Every op is compiled
//! three times from one body ([`CpuKernel`]): with AVX-512 (8-row tiles, one 512-bit vector per
//! row), with AVX2 and FMA (4-row tiles, two 256-bit vectors per row), and portable (where
//! `mul_add` is the correctly rounded software routine). The best one the CPU has is chosen at
//! run time; all three give identical bits, and each can be forced
//! ([`CpuBackend::with_kernel`]) to prove it.
//!
//! Work is split by whole rows (GEMM row tiles, softmax/layernorm rows, attention heads) over
//! the process's one thread pool ([`crate::pool`]).

use std::fmt;
use std::str::FromStr;

use crate::backend::{Backend, Epilogue};
use crate::math;
use crate::pool;

/// Columns of `b` per register tile (one 512-bit or two 256-bit vectors per row).
const NR: usize = 16;
/// GEMMs with more multiply-adds than this (m·n·k) are split over threads by rows. Measured on
/// the 2-core dev machine: at 1.6M a second thread costs more than it saves, at 9.4M it saves 35%.
const PARALLEL_WORK: usize = 1 << 22;
/// Causal attention calls with more multiply-adds than this are split over threads by
/// (sequence, key-value head). Measured on the 2-core dev machine with SmolLM2: one stream
/// decoding (about 0.1M) runs faster on one thread, eight streams (0.5M) faster on two.
const ATTENTION_WORK: usize = 1 << 18;
/// Element-wise ops over more values than this are split over threads (whole rows each, so
/// every value is computed exactly as on one thread).
const PARALLEL_ELEMENTS: usize = 1 << 14;

/// Environment variable that forces a kernel variant in [`CpuBackend::new`].
pub const KERNEL_ENV: &str = "PROOFMESH_CPU_KERNEL";

/// Which compiled variant of the CPU kernels runs. Every variant gives the same bits; they
/// differ in speed only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuKernel {
    /// No target features: `mul_add` is the software routine (slow, runs anywhere).
    Portable,
    /// AVX2 and FMA: 4×16 GEMM tiles in 256-bit registers.
    Avx2,
    /// AVX-512F (and FMA): 8×16 GEMM tiles in 512-bit registers.
    Avx512,
}

impl CpuKernel {
    /// Every variant, slowest first.
    pub const ALL: [CpuKernel; 3] = [CpuKernel::Portable, CpuKernel::Avx2, CpuKernel::Avx512];

    /// The fastest variant this CPU runs.
    pub fn best() -> CpuKernel {
        let mut best = CpuKernel::Portable;
        for k in CpuKernel::ALL {
            if k.available() {
                best = k;
            }
        }
        best
    }

    /// Whether this CPU has the instructions the variant needs.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx") && has!("avx2") && has!("fma");
            match self {
                CpuKernel::Portable => true,
                CpuKernel::Avx2 => avx2,
                CpuKernel::Avx512 => avx2 && has!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == CpuKernel::Portable
        }
    }

    /// The name used in configuration: `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            CpuKernel::Portable => "portable",
            CpuKernel::Avx2 => "avx2",
            CpuKernel::Avx512 => "avx512",
        }
    }

    /// Rows of `a` per GEMM register tile.
    fn mr(self) -> usize {
        match self {
            CpuKernel::Avx512 => 8,
            _ => 4,
        }
    }
}

impl fmt::Display for CpuKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CpuKernel {
    type Err = CpuKernelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuKernel::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| CpuKernelError::Unknown(s.to_string()))
    }
}

/// A CPU kernel variant that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuKernelError {
    /// Not a variant's name.
    #[error("unknown cpu kernel {0:?}; the kernels are \"portable\", \"avx2\" and \"avx512\"")]
    Unknown(String),
    /// This CPU lacks the variant's instructions.
    #[error("this CPU cannot run the {0} kernels")]
    Unsupported(CpuKernel),
}

/// Pure-Rust backend; the reference every other backend must match bit for bit.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    kernel: CpuKernel,
    /// Most pieces one op is cut into on the shared pool.
    threads: usize,
}

impl CpuBackend {
    /// The fastest kernel variant of this CPU (or the one `PROOFMESH_CPU_KERNEL` names, for
    /// benchmarks and checks), with every core.
    pub fn new() -> Self {
        let kernel = match std::env::var(KERNEL_ENV) {
            Ok(name) => match name.parse::<CpuKernel>() {
                Ok(k) if k.available() => k,
                Ok(k) => {
                    tracing::warn!("{KERNEL_ENV}: {}", CpuKernelError::Unsupported(k));
                    CpuKernel::best()
                }
                Err(e) => {
                    tracing::warn!("{KERNEL_ENV}: {e}");
                    CpuKernel::best()
                }
            },
            Err(_) => CpuKernel::best(),
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        tracing::debug!(%kernel, threads, "cpu backend ready");
        CpuBackend { kernel, threads }
    }

    /// Forces one kernel variant (same bits, other speed), e.g. to check that variant.
    pub fn with_kernel(kernel: CpuKernel) -> Result<Self, CpuKernelError> {
        if !kernel.available() {
            return Err(CpuKernelError::Unsupported(kernel));
        }
        Ok(CpuBackend {
            kernel,
            ..CpuBackend::new()
        })
    }

    /// Cuts each op into at most `threads` pieces (at least 1) on the process's one thread
    /// pool: how a node shares the cores between its inference batcher and its verifier.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The kernel variant that runs.
    pub fn kernel(&self) -> CpuKernel {
        self.kernel
    }

    /// Most pieces one op is cut into.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Every kernel variant this CPU runs, each on one thread and on three pieces (tests of
    /// bit identity run under all of them).
    #[cfg(test)]
    pub(crate) fn every_variant() -> Vec<CpuBackend> {
        CpuKernel::ALL
            .into_iter()
            .filter(|k| k.available())
            .flat_map(|kernel| [1, 3].map(|threads| CpuBackend { kernel, threads }))
            .collect()
    }

    /// The portable kernel on one thread.
    #[cfg(test)]
    pub(crate) fn portable() -> Self {
        CpuBackend {
            kernel: CpuKernel::Portable,
            threads: 1,
        }
    }

    /// All the threads for work big enough to split, else one.
    fn threads_if(&self, big: bool) -> usize {
        if big { self.threads } else { 1 }
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
        gemm(a, b, bias, m, k, n, self.kernel, threads)
    }

    fn gemm_packed(&self, a: &[f32], w: &PackedMatrix, bias: Option<&[f32]>, m: usize) -> Vec<f32> {
        self.gemm_packed_then(a, w, bias, m, Epilogue::Plain)
    }

    fn gemm_packed_then(
        &self,
        a: &[f32],
        w: &PackedMatrix,
        bias: Option<&[f32]>,
        m: usize,
        then: Epilogue<'_>,
    ) -> Vec<f32> {
        let work = m.saturating_mul(w.n).saturating_mul(w.k);
        // Split by column panels (few rows), a piece costs less: a quarter of the work is
        // enough (MiniLM's 384×384 projection at batch 1).
        let columns = by_columns_fits(m, w.n, self.kernel, self.threads);
        // A quantised row dequantises as it goes: twice the work per weight, so splitting
        // pays off at half the size.
        let min_split = if w.is_quantized() && m == 1 {
            PARALLEL_WORK / 16
        } else {
            PARALLEL_WORK / 4
        };
        let big = work > PARALLEL_WORK || (columns && work > min_split);
        gemm_packed(a, w, bias, m, then, self.kernel, self.threads_if(big))
    }

    fn gelu(&self, x: &mut [f32]) {
        self.row_op(x, 1, Op::Gelu);
    }

    fn softmax_rows(&self, x: &mut [f32], cols: usize) {
        if super::ops::has_rows("softmax_rows", x.len(), cols) {
            self.row_op(x, cols, Op::Softmax(cols));
        }
    }

    fn layernorm_rows(&self, x: &mut [f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32) {
        if super::ops::layernorm_shapes(x.len(), cols, gamma, beta) {
            self.row_op(x, cols, Op::LayerNorm { gamma, beta, eps });
        }
    }

    fn l2_normalize_rows(&self, x: &mut [f32], cols: usize) {
        if super::ops::has_rows("l2_normalize", x.len(), cols) {
            self.row_op(x, cols, Op::L2Normalize(cols));
        }
    }

    fn mean_pool(&self, x: &[f32], mask: &[u8], batch: usize, seq: usize, cols: usize) -> Vec<f32> {
        mean_pool(self.kernel, x, mask, batch, seq, cols)
    }

    fn rmsnorm_rows(&self, x: &mut [f32], cols: usize, gamma: &[f32], eps: f32) {
        if super::ops::has_rows("rmsnorm_rows", x.len(), cols) {
            assert_eq!(gamma.len(), cols, "rmsnorm_rows: gamma is not {cols} long");
            self.row_op(x, cols, Op::RmsNorm { gamma, eps });
        }
    }

    fn rope(
        &self,
        x: &mut [f32],
        width: usize,
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        table: &crate::RopeTable,
    ) {
        rope(self.kernel, x, width, heads, head_dim, positions, table);
    }

    fn swiglu(&self, gate_up: &[f32], cols: usize) -> Vec<f32> {
        swiglu(self.kernel, gate_up, cols)
    }

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
        attention_causal(
            self.kernel,
            q,
            k,
            v,
            (heads, kv_heads, head_dim),
            scale,
            0..heads,
        )
    }

    fn parallelism(&self) -> usize {
        self.threads
    }

    /// Each sequence's key-value heads (with the query heads that read them) are pieces of
    /// work on the pool: a decode step's attention of several streams, or of one prompt's
    /// heads, runs on every core.
    fn attention_causal_batch(
        &self,
        seqs: &[(&[f32], &[f32], &[f32])],
        shape: (usize, usize, usize),
        scale: f32,
    ) -> Vec<f32> {
        let (heads, kv_heads, head_dim) = shape;
        for &(q, k, v) in seqs {
            super::ops::check_causal_shapes(q.len(), k.len(), v.len(), heads, kv_heads, head_dim);
        }
        // Whole groups (checked above whenever there is a sequence).
        let group = heads.checked_div(kv_heads).unwrap_or(heads);
        let pieces: Vec<(usize, usize)> = (0..seqs.len())
            .flat_map(|s| (0..kv_heads).map(move |g| (s, g)))
            .collect();
        let run = |&(s, g): &(usize, usize)| {
            let (q, k, v) = seqs[s];
            attention_causal(
                self.kernel,
                q,
                k,
                v,
                shape,
                scale,
                g * group..(g + 1) * group,
            )
        };
        // Multiply-adds of the scores and the weighted values, about: a short sequence's
        // attention (one stream decoding) costs less than waking the pool.
        let work: usize = seqs
            .iter()
            .map(|(q, k, _)| 2 * q.len() * (k.len() / (kv_heads * head_dim).max(1)))
            .sum();
        let parts: Vec<Vec<f32>> = if self.threads > 1 && pieces.len() > 1 && work > ATTENTION_WORK
        {
            let slots: Vec<std::sync::Mutex<Vec<f32>>> =
                pieces.iter().map(|_| Default::default()).collect();
            // At most `threads` tasks (this backend's share of the cores), each taking every
            // `tasks`-th piece.
            let tasks = self.threads.min(pieces.len());
            pool::each(tasks, |t| {
                for i in (t..pieces.len()).step_by(tasks) {
                    let part = run(&pieces[i]);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = part;
                }
            });
            slots
                .into_iter()
                .map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()))
                .collect()
        } else {
            pieces.iter().map(run).collect()
        };
        // Each sequence's rows, each row its heads in order (one piece per key-value head).
        let width = heads * head_dim;
        let piece_width = group * head_dim;
        let mut out = Vec::with_capacity(seqs.iter().map(|(q, ..)| q.len()).sum());
        for (s, &(q, ..)) in seqs.iter().enumerate() {
            let queries = q.len() / width.max(1);
            let mine = &parts[s * kv_heads..(s + 1) * kv_heads];
            for i in 0..queries {
                for part in mine {
                    out.extend_from_slice(&part[i * piece_width..(i + 1) * piece_width]);
                }
            }
        }
        out
    }

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
        let hidden = heads * head_dim;
        super::ops::check_attention_shapes(q.len(), k.len(), v.len(), mask, batch, seq, hidden);
        let att = Attention {
            qkv: Qkv::Separate { q, k, v },
            heads,
            head_dim,
            scale,
        };
        self.attention_of(&att, &Self::padded(mask, batch, seq), batch * seq)
    }

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
        super::ops::check_qkv_shapes(qkv.len(), mask, batch, seq, heads * head_dim);
        let att = Attention {
            qkv: Qkv::Fused(qkv),
            heads,
            head_dim,
            scale,
        };
        self.attention_of(&att, &Self::padded(mask, batch, seq), batch * seq)
    }

    fn attention_ragged(
        &self,
        qkv: &[f32],
        lens: &[usize],
        heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Vec<f32> {
        let rows = super::ops::check_ragged_shapes(qkv.len(), lens, heads * head_dim);
        let mut first = 0;
        let seqs: Vec<Sequence> = lens
            .iter()
            .map(|&len| {
                let s = Sequence {
                    first,
                    tokens: (0..len).collect(),
                };
                first += len;
                s
            })
            .collect();
        let att = Attention {
            qkv: Qkv::Fused(qkv),
            heads,
            head_dim,
            scale,
        };
        self.attention_of(&att, &seqs, rows)
    }
}

impl CpuBackend {
    /// `op` on `x`, split over the pool by whole rows of `unit` values when it is big enough.
    fn row_op(&self, x: &mut [f32], unit: usize, op: Op<'_>) {
        let threads = self.threads_if(x.len() >= PARALLEL_ELEMENTS);
        let kernel = self.kernel;
        pool::split_rows(x, unit, threads, |rows| elementwise(kernel, rows, op));
    }

    /// Attention of each sequence (its first row and its token rows), split over the pool
    /// by whole sequences; the output is `rows × hidden`, zero where no token is.
    fn attention_of(&self, att: &Attention<'_>, seqs: &[Sequence], rows: usize) -> Vec<f32> {
        let hidden = att.heads * att.head_dim;
        let mut out = vec![0.0f32; rows * hidden];
        let work: usize = seqs.iter().map(|s| s.tokens.len().pow(2)).sum::<usize>() * hidden;
        let pieces = self.threads_if(work >= PARALLEL_WORK / 8).min(seqs.len());
        // Contiguous runs of sequences of about equal work, each owning its rows of `out`.
        let per = seqs.len().div_ceil(pieces.max(1)).max(1);
        let groups: Vec<&[Sequence]> = seqs.chunks(per).collect();
        let cuts: Vec<usize> = groups.iter().skip(1).map(|g| g[0].first * hidden).collect();
        let kernel = self.kernel;
        pool::for_splits(&mut out, &cuts, |i, chunk| {
            attention_seqs(kernel, att, groups[i], chunk)
        });
        out
    }

    /// The padded layout's sequences: sequence `b` is rows `b·seq..`, its tokens the unmasked
    /// ones.
    fn padded(mask: &[u8], batch: usize, seq: usize) -> Vec<Sequence> {
        (0..batch)
            .map(|b| Sequence {
                first: b * seq,
                tokens: (0..seq).filter(|&j| mask[b * seq + j] != 0).collect(),
            })
            .collect()
    }
}

/// Defines `fn $name(kernel: CpuKernel, args…)`, which runs one of three expressions compiled
/// for `kernel`: inside a `#[target_feature]` function for AVX2 and FMA, inside one for
/// AVX-512, or as portable code. The bodies are `#[inline(always)]` functions, so each variant
/// gets its own code generation from one source.
macro_rules! per_kernel {
    (
        $(#[$doc:meta])*
        fn $name:ident$(<$g:ident: $bound:path>)?($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? {
            portable: $portable:expr,
            avx2: $avx2:expr,
            avx512: $avx512:expr $(,)?
        }
    ) => {
        $(#[$doc])*
        fn $name$(<$g: $bound>)?(kernel: CpuKernel, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                ///
                /// The CPU must support AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2$(<$g: $bound>)?($($arg: $ty),*) $(-> $ret)? {
                    $avx2
                }
                /// # Safety
                ///
                /// The CPU must support AVX-512F, AVX2 and FMA.
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512$(<$g: $bound>)?($($arg: $ty),*) $(-> $ret)? {
                    $avx512
                }
                match kernel {
                    // SAFETY: a backend holds a variant only after `CpuKernel::available` saw
                    // its features on this CPU.
                    CpuKernel::Avx512 => return unsafe { avx512($($arg),*) },
                    CpuKernel::Avx2 => return unsafe { avx2($($arg),*) },
                    CpuKernel::Portable => {}
                }
            }
            let _ = kernel;
            $portable
        }
    };
}

per_kernel! {
    /// [`Backend::mean_pool`] compiled for `kernel` (the sums vectorise over the columns).
    fn mean_pool(
        x: &[f32],
        mask: &[u8],
        batch: usize,
        seq: usize,
        cols: usize,
    ) -> Vec<f32> {
        portable: super::ops::mean_pool(x, mask, batch, seq, cols),
        avx2: super::ops::mean_pool(x, mask, batch, seq, cols),
        avx512: super::ops::mean_pool(x, mask, batch, seq, cols),
    }
}

/// The element-wise and row ops compiled per kernel variant.
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
    /// L2 normalisation of each row of this many columns.
    L2Normalize(usize),
    /// RMS normalisation of each row (as long as `gamma`).
    RmsNorm {
        gamma: &'a [f32],
        eps: f32,
    },
}

per_kernel! {
    /// `op` on `x`, compiled for `kernel`: `math`'s `mul_add`s are single instructions under
    /// AVX2 and AVX-512, the software routine in the portable variant, with the same bits.
    fn elementwise(x: &mut [f32], op: Op<'_>) {
        portable: elementwise_body(x, op),
        avx2: elementwise_body(x, op),
        avx512: elementwise_body(x, op),
    }
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
        Op::L2Normalize(cols) => {
            for row in x.chunks_exact_mut(cols) {
                super::ops::l2_normalize_row(row);
            }
        }
        Op::RmsNorm { gamma, eps } => {
            for row in x.chunks_exact_mut(gamma.len()) {
                super::ops::rmsnorm_row(row, gamma, eps);
            }
        }
    }
}

per_kernel! {
    /// [`Backend::swiglu`] compiled for `kernel` (its `exp` is `mul_add`s).
    fn swiglu(gate_up: &[f32], cols: usize) -> Vec<f32> {
        portable: super::ops::swiglu(gate_up, cols),
        avx2: super::ops::swiglu(gate_up, cols),
        avx512: super::ops::swiglu(gate_up, cols),
    }
}

per_kernel! {
    /// [`Backend::rope`] compiled for `kernel`.
    fn rope(
        x: &mut [f32],
        width: usize,
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        table: &crate::RopeTable,
    ) {
        portable: super::ops::rope(x, width, heads, head_dim, positions, table),
        avx2: super::ops::rope(x, width, heads, head_dim, positions, table),
        avx512: super::ops::rope(x, width, heads, head_dim, positions, table),
    }
}

per_kernel! {
    /// [`Backend::attention_causal`] compiled for `kernel`.
    #[allow(clippy::too_many_arguments)]
    fn attention_causal(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: (usize, usize, usize),
        scale: f32,
        hs: std::ops::Range<usize>,
    ) -> Vec<f32> {
        portable: super::ops::attention_causal_heads(q, k, v, shape, scale, hs),
        avx2: super::ops::attention_causal_heads(q, k, v, shape, scale, hs),
        avx512: super::ops::attention_causal_heads(q, k, v, shape, scale, hs),
    }
}

/// A `k × n` weight matrix packed once, at model load, into the CPU GEMM's layout: 16-column
/// panels, each `k` rows of 16 contiguous values (zero past column `n`), so no GEMM call copies
/// or re-lays out its weights. [`Backend::gemm_packed`] on it gives the same bits as
/// [`Backend::gemm_bias`] on the row-major values.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    /// Unique per packing (clones share it): device backends key their copies by it.
    id: u64,
    k: usize,
    n: usize,
    values: Values,
}

/// How a [`PackedMatrix`] holds its values.
#[derive(Debug, Clone)]
enum Values {
    /// Panel `j` (columns `16j..16j+16`) is `panels[j·k..(j+1)·k]`.
    F32(Vec<[f32; NR]>),
    /// Quantised blocks, dequantised one panel at a time inside the GEMM.
    Quant(Quantized),
}

/// A quantised encoding of a GGUF weight block (32 values along `k` of one column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuantKind {
    /// Value = `q.mul_add(d, m)` (one rounding), `q` in 0..16.
    Q4_1,
    /// Value = `q · d` (exact), `q` in −128..128 (stored as its byte).
    Q8_0,
}

/// Quantised panels: per panel `jp`, `k` rows of the panel's 16 quant values and, per block
/// of 32 rows, 16 scales and 16 minimums (`d[jp·k/32 + b][c]`; `m` likewise, empty for Q8_0).
/// Q8_0 keeps one byte per value (`q8[jp·k + p][c]`); Q4_1 two per byte (`q4[jp·k + p][c]`
/// holds column `c` in its low nibble and column `c + 8` in its high one, so one 8-byte load
/// unpacks into a panel row's two vectors). Columns past `n` have `d = m = 0` (value 0, as the
/// f32 panels' zero fill). Q4_1 takes about 0.75 bytes per weight against 4 for f32 (1.25 with
/// a byte per value): memory traffic is what bounds a decoder's speed at batch 1, and on two
/// cores at 8 streams as well.
#[derive(Debug, Clone)]
struct Quantized {
    kind: QuantKind,
    q8: Vec<[u8; NR]>,
    q4: Vec<[u8; NR / 2]>,
    d: Vec<[f32; NR]>,
    m: Vec<[f32; NR]>,
}

/// Values per quantisation block along `k`.
const QK: usize = 32;

impl Quantized {
    /// Dequantises panel `jp` (`k` rows) into `out`: each value as [`QuantKind`] says, the
    /// bits of dequantising at load.
    #[inline(always)]
    fn panel_into(&self, jp: usize, k: usize, out: &mut [[f32; NR]]) {
        let nb = k / QK;
        let d = &self.d[jp * nb..(jp + 1) * nb];
        match self.kind {
            QuantKind::Q4_1 => {
                let q = &self.q4[jp * k..(jp + 1) * k];
                let m = &self.m[jp * nb..(jp + 1) * nb];
                for (b, (out, q)) in out.chunks_exact_mut(QK).zip(q.chunks_exact(QK)).enumerate() {
                    let (d, m) = (&d[b], &m[b]);
                    // One row of 16 at a time, written whole (so the compiler vectorises
                    // along the row, not across rows with scattered stores).
                    for (dst, src) in out.iter_mut().zip(q) {
                        *dst = std::array::from_fn(|c| {
                            f32::from(q4_value(src, c)).mul_add(d[c], m[c])
                        });
                    }
                }
            }
            QuantKind::Q8_0 => {
                let q = &self.q8[jp * k..(jp + 1) * k];
                for (b, (out, q)) in out.chunks_exact_mut(QK).zip(q.chunks_exact(QK)).enumerate() {
                    let d = &d[b];
                    for (dst, src) in out.iter_mut().zip(q) {
                        *dst = std::array::from_fn(|c| f32::from(src[c] as i8) * d[c]);
                    }
                }
            }
        }
    }
}

/// Column `c` (0..16) of a Q4_1 panel row: the low nibble of byte `c`, or the high nibble of
/// byte `c − 8`.
#[inline(always)]
fn q4_value(row: &[u8; NR / 2], c: usize) -> u8 {
    if c < NR / 2 {
        row[c] & 15
    } else {
        row[c - NR / 2] >> 4
    }
}

/// Equal when they hold the same matrix, whatever their identities or encodings.
impl PartialEq for PackedMatrix {
    fn eq(&self, other: &Self) -> bool {
        (self.k, self.n) == (other.k, other.n) && self.to_row_major() == other.to_row_major()
    }
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
        PackedMatrix {
            id: Self::next_id(),
            k,
            n,
            values: Values::F32(panels),
        }
    }

    /// Packs the `k × n` matrix whose transpose `w_t` holds (`n` rows of `k` values: a linear
    /// layer stored out × in, as PyTorch and GGUF store them), without a transposed copy.
    ///
    /// # Panics
    ///
    /// When `w_t` does not hold `k·n` values (a loader bug: shapes are checked when read).
    pub fn from_transposed(w_t: &[f32], k: usize, n: usize) -> PackedMatrix {
        assert_eq!(
            w_t.len(),
            k * n,
            "PackedMatrix: {} values for a {k}×{n} matrix",
            w_t.len()
        );
        let mut panels = vec![[0.0f32; NR]; k * n.div_ceil(NR)];
        for (jp, j0) in (0..n).step_by(NR).enumerate() {
            let width = NR.min(n - j0);
            let panel = &mut panels[jp * k..(jp + 1) * k];
            for c in 0..width {
                for (p, &v) in w_t[(j0 + c) * k..(j0 + c + 1) * k].iter().enumerate() {
                    panel[p][c] = v;
                }
            }
        }
        PackedMatrix {
            id: Self::next_id(),
            k,
            n,
            values: Values::F32(panels),
        }
    }

    /// Packs quantised blocks without dequantising them: `block(j, b)` gives column `j`'s
    /// block `b` (rows `32b..32b+32`) as `(d, m, q)` (`m` ignored for Q8_0; `q` the raw byte
    /// of each value, for Q4_1 the value itself, below 16). The GEMM dequantises each panel as
    /// it reaches it: the bits of [`PackedMatrix::new`] on the dequantised values.
    ///
    /// # Panics
    ///
    /// When `k` is not a multiple of 32 (a loader bug: GGUF blocks are whole).
    pub(crate) fn quantized(
        kind: QuantKind,
        k: usize,
        n: usize,
        block: impl Fn(usize, usize) -> (f32, f32, [u8; QK]),
    ) -> PackedMatrix {
        assert!(
            k.is_multiple_of(QK),
            "PackedMatrix: k = {k} is not whole blocks"
        );
        let (panels, nb) = (n.div_ceil(NR), k / QK);
        let mut q8 = match kind {
            QuantKind::Q4_1 => Vec::new(),
            QuantKind::Q8_0 => vec![[0u8; NR]; panels * k],
        };
        let mut q4 = match kind {
            QuantKind::Q4_1 => vec![[0u8; NR / 2]; panels * k],
            QuantKind::Q8_0 => Vec::new(),
        };
        let mut d = vec![[0.0f32; NR]; panels * nb];
        let mut m = match kind {
            QuantKind::Q4_1 => vec![[0.0f32; NR]; panels * nb],
            QuantKind::Q8_0 => Vec::new(),
        };
        for j in 0..n {
            let (jp, c) = (j / NR, j % NR);
            for b in 0..nb {
                let (scale, min, values) = block(j, b);
                d[jp * nb + b][c] = scale;
                if let Some(row) = m.get_mut(jp * nb + b) {
                    row[c] = min;
                }
                for (r, &v) in values.iter().enumerate() {
                    let p = jp * k + b * QK + r;
                    match kind {
                        QuantKind::Q8_0 => q8[p][c] = v,
                        QuantKind::Q4_1 if c < NR / 2 => {
                            debug_assert!(v < 16, "a Q4_1 value of {v}");
                            q4[p][c] |= v & 15
                        }
                        QuantKind::Q4_1 => q4[p][c - NR / 2] |= (v & 15) << 4,
                    }
                }
            }
        }
        PackedMatrix {
            id: Self::next_id(),
            k,
            n,
            values: Values::Quant(Quantized { kind, q8, q4, d, m }),
        }
    }

    /// Whether the values are kept quantised.
    pub fn is_quantized(&self) -> bool {
        matches!(self.values, Values::Quant(_))
    }

    /// Bytes the values take in memory.
    pub fn bytes(&self) -> usize {
        match &self.values {
            Values::F32(p) => p.len() * NR * 4,
            Values::Quant(q) => {
                q.q8.len() * NR + q.q4.len() * NR / 2 + 4 * (q.d.len() + q.m.len()) * NR
            }
        }
    }

    /// The panels from `p0` on, as the GEMM reads them.
    fn panels_from(&self, p0: usize) -> WeightPanels<'_> {
        match &self.values {
            Values::F32(p) => WeightPanels::F32(Packed(&p[p0 * self.k..], self.k)),
            Values::Quant(q) => WeightPanels::Quant {
                q,
                k: self.k,
                first: p0,
                buf: vec![[0.0f32; NR]; self.k],
            },
        }
    }

    fn next_id() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// This packing's identity: different for every [`PackedMatrix::new`], the same for its
    /// clones (which hold the same values).
    pub fn id(&self) -> u64 {
        self.id
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
        let mut panels = self.panels_from(0);
        for (jp, j0) in (0..n).step_by(NR).enumerate() {
            let width = NR.min(n - j0);
            for (p, src) in panels.panel(jp, j0, width).iter().enumerate() {
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
    kernel: CpuKernel,
    threads: usize,
) -> Vec<f32> {
    super::ops::check_gemm_shapes(a, b, bias, m, k, n);
    let gemm = Gemm {
        a,
        bias,
        then: Epilogue::Plain,
        k,
        n,
    };
    run(&gemm, m, kernel, threads, || Copied {
        b,
        n,
        buf: vec![[0.0f32; NR]; k],
    })
}

/// GEMM on weights packed at load (see [`Backend::gemm_packed_then`]): every thread reads the
/// same panels, nothing is copied.
pub(crate) fn gemm_packed(
    a: &[f32],
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    m: usize,
    then: Epilogue<'_>,
    kernel: CpuKernel,
    threads: usize,
) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    super::ops::check_packed_shapes(a, w, bias, m);
    if let Epilogue::Residual(r) = then {
        assert_eq!(
            r.len(),
            m * n,
            "gemm_packed: residual has {} values, expected m·n = {m}·{n}",
            r.len()
        );
    }
    let gemm = Gemm {
        a,
        bias,
        then,
        k,
        n,
    };
    if threads > 1 && by_columns_fits(m, n, kernel, threads) {
        return by_columns(&gemm, w, m, kernel, threads);
    }
    run(&gemm, m, kernel, threads, || w.panels_from(0))
}

/// Whether a packed GEMM of `m` rows and `n` columns is split by column panels
/// ([`by_columns`]) rather than rows: few rows, at least two panels per piece.
fn by_columns_fits(m: usize, n: usize, kernel: CpuKernel, threads: usize) -> bool {
    m < 2 * kernel.mr() * threads && n.div_ceil(NR) >= 2 * threads
}

/// A packed GEMM with few rows (one short sequence) split over the pool by column panels
/// instead of rows: each piece reads only its share of the weights, which at batch 1 is
/// most of the memory traffic. Every element is computed exactly as in [`run`].
fn by_columns(
    gemm: &Gemm<'_>,
    w: &PackedMatrix,
    m: usize,
    kernel: CpuKernel,
    threads: usize,
) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    let panels = n.div_ceil(NR);
    let per = panels.div_ceil(threads);
    let pieces: Vec<(usize, usize)> = (0..panels)
        .step_by(per)
        .map(|p0| (p0, (p0 + per).min(panels)))
        .collect();
    let parts: Vec<std::sync::Mutex<Vec<f32>>> =
        pieces.iter().map(|_| Default::default()).collect();
    pool::each(pieces.len(), |i| {
        let (p0, p1) = pieces[i];
        let (c0, c1) = (p0 * NR, (p1 * NR).min(n));
        let width = c1 - c0;
        let columns: Vec<f32>;
        let then = match gemm.then {
            Epilogue::Residual(r) => {
                columns = r
                    .chunks_exact(n)
                    .flat_map(|row| row[c0..c1].iter().copied())
                    .collect();
                Epilogue::Residual(&columns)
            }
            other => other,
        };
        let part = Gemm {
            a: gemm.a,
            bias: gemm.bias.map(|b| &b[c0..c1]),
            then,
            k,
            n: width,
        };
        let mut out = vec![0.0f32; m * width];
        rows(kernel, &part, &mut w.panels_from(p0), &mut out);
        *parts[i].lock().unwrap_or_else(|e| e.into_inner()) = out;
    });
    let mut out = vec![0.0f32; m * n];
    for (&(p0, p1), part) in pieces.iter().zip(parts) {
        let part = part.into_inner().unwrap_or_else(|e| e.into_inner());
        let (c0, c1) = (p0 * NR, (p1 * NR).min(n));
        for (dst, src) in out.chunks_exact_mut(n).zip(part.chunks_exact(c1 - c0)) {
            dst[c0..c1].copy_from_slice(src);
        }
    }
    out
}

/// One GEMM's inputs besides `b`: `a` (m × k), the bias and what follows it.
#[derive(Clone, Copy)]
struct Gemm<'a> {
    a: &'a [f32],
    bias: Option<&'a [f32]>,
    then: Epilogue<'a>,
    k: usize,
    n: usize,
}

impl<'a> Gemm<'a> {
    /// The same GEMM restricted to rows `r0..r0 + rows`.
    fn rows(&self, r0: usize, rows: usize) -> Gemm<'a> {
        let then = match self.then {
            Epilogue::Residual(r) => Epilogue::Residual(&r[r0 * self.n..(r0 + rows) * self.n]),
            other => other,
        };
        Gemm {
            a: &self.a[r0 * self.k..(r0 + rows) * self.k],
            then,
            ..*self
        }
    }
}

/// Where the GEMM body finds panel `jp` (columns `j0..j0 + width`) of `b`, `k` rows of 16.
trait Panels {
    fn panel(&mut self, jp: usize, j0: usize, width: usize) -> &[[f32; NR]];

    /// `gemm` for one row straight from this encoding, where it has such a path (quantised
    /// weights dequantised in registers, not through a buffer): the bits of [`Panels::panel`]
    /// then the one-row tile. Returns whether it ran.
    #[inline(always)]
    fn gemv(&mut self, _gemm: &Gemm<'_>, _out: &mut [f32]) -> bool {
        false
    }

    /// The quantised weights these panels read and the index of panel 0 among them, where
    /// the weights are kept quantised (a kernel that dequantises in registers reads them
    /// directly).
    #[inline(always)]
    fn quantized(&self) -> Option<(&Quantized, usize)> {
        None
    }
}

/// Panels packed once ([`PackedMatrix`], or a head's keys and values in attention).
struct Packed<'a>(&'a [[f32; NR]], usize);

impl Panels for Packed<'_> {
    #[inline(always)]
    fn panel(&mut self, jp: usize, _: usize, _: usize) -> &[[f32; NR]] {
        &self.0[jp * self.1..(jp + 1) * self.1]
    }
}

/// A [`PackedMatrix`]'s panels from one on: read in place, or dequantised into a buffer.
enum WeightPanels<'a> {
    F32(Packed<'a>),
    Quant {
        q: &'a Quantized,
        k: usize,
        first: usize,
        buf: Vec<[f32; NR]>,
    },
}

impl Panels for WeightPanels<'_> {
    #[inline(always)]
    fn panel(&mut self, jp: usize, j0: usize, width: usize) -> &[[f32; NR]] {
        match self {
            WeightPanels::F32(p) => p.panel(jp, j0, width),
            WeightPanels::Quant { q, k, first, buf } => {
                q.panel_into(*first + jp, *k, buf);
                buf
            }
        }
    }

    #[inline(always)]
    fn quantized(&self) -> Option<(&Quantized, usize)> {
        match self {
            WeightPanels::F32(_) => None,
            WeightPanels::Quant { q, first, .. } => Some((q, *first)),
        }
    }

    #[inline(always)]
    fn gemv(&mut self, gemm: &Gemm<'_>, out: &mut [f32]) -> bool {
        let WeightPanels::Quant { q, k, first, .. } = self else {
            return false;
        };
        let (k, n, first) = (*k, gemm.n, *first);
        let a = &gemm.a[..k];
        let panels = n.div_ceil(NR);
        let mut jp = 0;
        // Two panels at a time: four independent accumulator chains per step.
        while jp < panels {
            let group = if panels - jp >= 2 { 2 } else { 1 };
            let accs: [[f32; NR]; 2] = match (group, q.kind) {
                (2, QuantKind::Q4_1) => dot_panels::<2, true>(q, k, first + jp, a),
                (2, QuantKind::Q8_0) => dot_panels::<2, false>(q, k, first + jp, a),
                (_, QuantKind::Q4_1) => pad(dot_panels::<1, true>(q, k, first + jp, a)),
                (_, QuantKind::Q8_0) => pad(dot_panels::<1, false>(q, k, first + jp, a)),
            };
            for (g, acc) in accs.iter().take(group).enumerate() {
                let j0 = (jp + g) * NR;
                store(&[*acc], gemm, out, 0, j0, NR.min(n - j0));
            }
            jp += group;
        }
        true
    }
}

#[inline(always)]
fn pad(one: [[f32; NR]; 1]) -> [[f32; NR]; 2] {
    [one[0], [0.0; NR]]
}

/// One row `a` against `G` quantised panels from `jp`, dequantising each value in registers
/// exactly as [`Quantized::panel_into`] does and accumulating `p = 0..k` in order with one
/// fused multiply-add each, as the one-row tile does. `MIN`: Q4_1 (`q.mul_add(d, m)`), else
/// Q8_0 (`q · d`).
#[inline(always)]
fn dot_panels<const G: usize, const MIN: bool>(
    q: &Quantized,
    k: usize,
    jp: usize,
    a: &[f32],
) -> [[f32; NR]; G] {
    let nb = k / QK;
    let mut acc = [[0.0f32; NR]; G];
    for (b, a) in a.chunks_exact(QK).enumerate() {
        let d: [[f32; NR]; G] = std::array::from_fn(|g| q.d[(jp + g) * nb + b]);
        let m: [[f32; NR]; G] = std::array::from_fn(|g| {
            if MIN {
                q.m[(jp + g) * nb + b]
            } else {
                [0.0; NR]
            }
        });
        let rows = |g: usize| (jp + g) * k + b * QK..(jp + g) * k + (b + 1) * QK;
        if MIN {
            let qs: [&[[u8; NR / 2]]; G] = std::array::from_fn(|g| &q.q4[rows(g)]);
            for (r, &x) in a.iter().enumerate() {
                for g in 0..G {
                    let row = &qs[g][r];
                    // Low nibbles are columns 0..8, high ones 8..16.
                    for c in 0..NR / 2 {
                        let lo = f32::from(row[c] & 15).mul_add(d[g][c], m[g][c]);
                        let hi = f32::from(row[c] >> 4).mul_add(d[g][c + 8], m[g][c + 8]);
                        acc[g][c] = x.mul_add(lo, acc[g][c]);
                        acc[g][c + 8] = x.mul_add(hi, acc[g][c + 8]);
                    }
                }
            }
        } else {
            let qs: [&[[u8; NR]]; G] = std::array::from_fn(|g| &q.q8[rows(g)]);
            for (r, &x) in a.iter().enumerate() {
                for g in 0..G {
                    let row = &qs[g][r];
                    for c in 0..NR {
                        let w = f32::from(row[c] as i8) * d[g][c];
                        acc[g][c] = x.mul_add(w, acc[g][c]);
                    }
                }
            }
        }
    }
    acc
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

/// Splits the rows of the output over `threads` pieces of whole tiles on the pool, each piece
/// reading `b` through its own [`Panels`] from `panels`.
fn run<P: Panels>(
    gemm: &Gemm<'_>,
    m: usize,
    kernel: CpuKernel,
    threads: usize,
    panels: impl Fn() -> P + Sync,
) -> Vec<f32> {
    let n = gemm.n;
    let mut out = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let mr = kernel.mr();
    let threads = threads.clamp(1, m.div_ceil(mr));
    // Whole tiles per piece; every element is computed the same way whichever piece owns it.
    let rows_per = m.div_ceil(threads).next_multiple_of(mr);
    pool::for_chunks(&mut out, rows_per * n, threads, |c, out_chunk| {
        let part = gemm.rows(c * rows_per, out_chunk.len() / n);
        rows(kernel, &part, &mut panels(), out_chunk)
    });
    out
}

per_kernel! {
    /// Computes `out` (some rows × n) from `gemm`'s rows, compiled for `kernel`: 4-row tiles
    /// on 256-bit vectors (AVX2) or in portable code, 8-row tiles in 512-bit registers
    /// (AVX-512).
    fn rows<P: Panels>(gemm: &Gemm<'_>, panels: &mut P, out: &mut [f32]) {
        portable: rows_body::<P, 4>(gemm, panels, out),
        avx2: rows_avx2(gemm, panels, out),
        avx512: rows_avx512(gemm, panels, out),
    }
}

/// The AVX-512 variant's rows: a few rows on quantised weights take the AVX2 register
/// dequantisation too ([`quant_rows_avx2`]; the CPU has AVX2 and FMA), everything else the
/// 8-row tiles in 512-bit registers. Same bits either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn rows_avx512<P: Panels>(gemm: &Gemm<'_>, panels: &mut P, out: &mut [f32]) {
    if let Some((q, first)) = register_rows(gemm, panels, out) {
        // SAFETY: this function's target features include AVX2 and FMA.
        unsafe { quant_rows_avx2(gemm, q, first, out) };
        return;
    }
    rows_body_with::<P, Avx512Tile, 8>(gemm, panels, out);
}

/// The AVX2 variant's rows: a few rows on quantised weights dequantise in registers
/// ([`quant_rows_avx2`]), everything else goes through [`rows_body`]. Same bits either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn rows_avx2<P: Panels>(gemm: &Gemm<'_>, panels: &mut P, out: &mut [f32]) {
    if let Some((q, first)) = register_rows(gemm, panels, out) {
        // SAFETY: this function's target features are the ones it needs.
        unsafe { quant_rows_avx2(gemm, q, first, out) };
        return;
    }
    rows_body::<P, 4>(gemm, panels, out);
}

/// The quantised weights (and first panel) of a piece that [`quant_rows_avx2`] computes: 2 to
/// [`REGISTER_ROWS`] rows on quantised panels.
#[inline(always)]
fn register_rows<'p, P: Panels>(
    gemm: &Gemm<'_>,
    panels: &'p P,
    out: &[f32],
) -> Option<(&'p Quantized, usize)> {
    if (2..=REGISTER_ROWS).contains(&(out.len() / gemm.n)) {
        panels.quantized()
    } else {
        None
    }
}

/// Most rows a quantised GEMM piece dequantises in registers ([`quant_rows_avx2`], once per
/// 4-row tile); more rows dequantise each panel once into a buffer that all their tiles read
/// (a prompt's prefill: 2x faster there at 64 and 256 rows, slower at 2 to 16).
const REGISTER_ROWS: usize = 16;

/// All rows of `gemm` (two or more; the one-row case has [`Panels::gemv`]) against quantised
/// panels from `first` on, in AVX2 registers, in tiles of up to 4 rows by a panel's 16 columns
/// (two 256-bit vectors). Each step dequantises one row of the panel from its bytes in
/// registers (`q·d + m` fused for Q4_1, `q·d` for Q8_0: the bits of
/// [`Quantized::panel_into`]) and does one fused multiply-add per tile row and vector, so every
/// element accumulates `p = 0..k` in order exactly as [`tile`] on the dequantised panel does,
/// with no buffer between. Measured with SmolLM2 decoding 8 streams on the 2-core dev machine:
/// 84 tokens/s through the buffer, 107 with 8-row tiles of half a panel (each dequantised value
/// used 8 times, but 11 loads per 8 multiply-adds), 114 with these (6 loads per 8); each
/// 32-row block dequantised once into an L1 buffer for all rows' 4-row tiles (fewer
/// floating-point operations, sums kept between blocks) was slower again (110 against 125 in
/// alternating runs).
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quant_rows_avx2(gemm: &Gemm<'_>, q: &Quantized, first: usize, out: &mut [f32]) {
    let (a, k, n) = (gemm.a, gemm.k, gemm.n);
    let m = out.len() / n;
    let row = |i: usize| &a[i * k..(i + 1) * k];
    for (jp, j0) in (0..n).step_by(NR).enumerate() {
        let width = NR.min(n - j0);
        let mut i0 = 0;
        while i0 < m {
            let rows = (m - i0).min(4);
            macro_rules! tiles {
                ($($r:literal)*) => {
                    match (rows, q.kind) {
                        $(($r, QuantKind::Q4_1) => {
                            let arows: [&[f32]; $r] = std::array::from_fn(|r| row(i0 + r));
                            let acc = quant_tile_avx2::<$r, true>(q, k, first + jp, &arows);
                            store(&acc, gemm, out, i0, j0, width);
                        }
                        ($r, QuantKind::Q8_0) => {
                            let arows: [&[f32]; $r] = std::array::from_fn(|r| row(i0 + r));
                            let acc = quant_tile_avx2::<$r, false>(q, k, first + jp, &arows);
                            store(&acc, gemm, out, i0, j0, width);
                        })*
                        _ => unreachable!("tiles of 1 to 4 rows"),
                    }
                };
            }
            tiles!(1 2 3 4);
            i0 += rows;
        }
    }
}

/// `R` rows of `a` against quantised panel `jp`, dequantising in registers: see
/// [`quant_rows_avx2`]. `MIN`: Q4_1, else Q8_0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn quant_tile_avx2<const R: usize, const MIN: bool>(
    q: &Quantized,
    k: usize,
    jp: usize,
    arows: &[&[f32]; R],
) -> [[f32; NR]; R] {
    use std::arch::x86_64::{
        __m128i, _mm_loadl_epi64, _mm_loadu_si128, _mm_srli_si128, _mm256_and_si256,
        _mm256_cvtepi8_epi32, _mm256_cvtepi32_ps, _mm256_cvtepu8_epi32, _mm256_fmadd_ps,
        _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_srli_epi32, _mm256_storeu_ps,
    };
    let nb = k / QK;
    let q8 = if MIN {
        &[][..]
    } else {
        &q.q8[jp * k..(jp + 1) * k]
    };
    let q4 = if MIN {
        &q.q4[jp * k..(jp + 1) * k]
    } else {
        &[][..]
    };
    let nibble = _mm256_set1_epi32(15);
    let ds = &q.d[jp * nb..(jp + 1) * nb];
    let ms = if MIN {
        &q.m[jp * nb..(jp + 1) * nb]
    } else {
        ds
    };
    assert!(
        arows.iter().all(|r| r.len() >= k),
        "quant tile: a row shorter than k"
    );
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..nb {
        // SAFETY: each block's scales and minimums are 16 floats, read as two halves of 8.
        let (d, mins) = unsafe {
            (
                [
                    _mm256_loadu_ps(ds[b][..8].as_ptr()),
                    _mm256_loadu_ps(ds[b][8..].as_ptr()),
                ],
                [
                    _mm256_loadu_ps(ms[b][..8].as_ptr()),
                    _mm256_loadu_ps(ms[b][8..].as_ptr()),
                ],
            )
        };
        for p in b * QK..(b + 1) * QK {
            let w = if MIN {
                // SAFETY: p < k = q4.len() (b < nb = k / 32); a row is 8 bytes.
                let bytes =
                    unsafe { _mm_loadl_epi64(q4.get_unchecked(p).as_ptr().cast::<__m128i>()) };
                let both = _mm256_cvtepu8_epi32(bytes);
                let lo = _mm256_cvtepi32_ps(_mm256_and_si256(both, nibble));
                let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(both));
                [
                    _mm256_fmadd_ps(lo, d[0], mins[0]),
                    _mm256_fmadd_ps(hi, d[1], mins[1]),
                ]
            } else {
                // SAFETY: p < k = q8.len() (b < nb = k / 32); a row is 16 bytes.
                let bytes =
                    unsafe { _mm_loadu_si128(q8.get_unchecked(p).as_ptr().cast::<__m128i>()) };
                let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
                let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(bytes)));
                [_mm256_mul_ps(lo, d[0]), _mm256_mul_ps(hi, d[1])]
            };
            for (acc, arow) in acc.iter_mut().zip(arows) {
                // SAFETY: every row holds at least k > p values (checked above).
                let x = _mm256_set1_ps(unsafe { *arow.get_unchecked(p) });
                acc[0] = _mm256_fmadd_ps(x, w[0], acc[0]);
                acc[1] = _mm256_fmadd_ps(x, w[1], acc[1]);
            }
        }
    }
    let mut out = [[0.0f32; NR]; R];
    for (dst, acc) in out.iter_mut().zip(acc) {
        // SAFETY: `dst` is 16 floats, written as two halves of 8.
        unsafe {
            _mm256_storeu_ps(dst[..8].as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(dst[8..].as_mut_ptr(), acc[1]);
        }
    }
    out
}

/// How a kernel variant computes its tiles of `R` rows (a trait, not a closure, so the tile
/// is inlined into each variant and compiled with its target features).
trait Tiles {
    fn tile<const R: usize>(arows: [&[f32]; R], panel: &[[f32; NR]]) -> [[f32; NR]; R];
}

/// The portable tile ([`tile`]), vectorised by the compiler for the variant's features.
struct AutoTile;

impl Tiles for AutoTile {
    #[inline(always)]
    fn tile<const R: usize>(arows: [&[f32]; R], panel: &[[f32; NR]]) -> [[f32; NR]; R] {
        tile(arows, panel)
    }
}

/// Tiles in AVX-512 intrinsics ([`tile_avx512`]); used only inside AVX-512 variants.
#[cfg(target_arch = "x86_64")]
struct Avx512Tile;

#[cfg(target_arch = "x86_64")]
impl Tiles for Avx512Tile {
    #[inline(always)]
    fn tile<const R: usize>(arows: [&[f32]; R], panel: &[[f32; NR]]) -> [[f32; NR]; R] {
        // SAFETY: only the AVX-512 variants (run where `CpuKernel::Avx512.available()`) use
        // these tiles.
        unsafe { tile_avx512(arows, panel) }
    }
}

/// An `R`×16 tile in AVX-512 registers: each step loads the panel row once and does one
/// `vfmadd231ps` per tile row (`_mm512_fmadd_ps` rounds once, as `mul_add`), so every element
/// accumulates `p = 0..k` in order exactly as [`tile`] does.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_avx512<const R: usize>(arows: [&[f32]; R], panel: &[[f32; NR]]) -> [[f32; NR]; R] {
    use std::arch::x86_64::{
        _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };
    let k = panel.len();
    assert!(
        arows.iter().all(|r| r.len() >= k),
        "tile: a row shorter than k"
    );
    let mut acc = [_mm512_setzero_ps(); R];
    for (p, brow) in panel.iter().enumerate() {
        // SAFETY: `brow` is 16 floats; every row holds at least k > p values (checked above).
        unsafe {
            let b = _mm512_loadu_ps(brow.as_ptr());
            for (acc, arow) in acc.iter_mut().zip(&arows) {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*arow.get_unchecked(p)), b, *acc);
            }
        }
    }
    let mut out = [[0.0f32; NR]; R];
    for (dst, acc) in out.iter_mut().zip(acc) {
        // SAFETY: `dst` is 16 floats.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), acc) };
    }
    out
}

/// The one GEMM body, inlined into each kernel variant so each gets its own code generation.
/// Each 16-column panel of `b` is read contiguous, with no stride and no bounds checks; padding
/// lanes are computed and dropped, the real lanes do exactly the documented operations. Tiles
/// are `MR` rows, then one tile of all the rows left.
#[inline(always)]
fn rows_body<P: Panels, const MR: usize>(gemm: &Gemm<'_>, panels: &mut P, out: &mut [f32]) {
    rows_body_with::<P, AutoTile, MR>(gemm, panels, out);
}

/// [`rows_body`] with `T` computing the `MR`-row tiles.
#[inline(always)]
fn rows_body_with<P: Panels, T: Tiles, const MR: usize>(
    gemm: &Gemm<'_>,
    panels: &mut P,
    out: &mut [f32],
) {
    let (a, k, n) = (gemm.a, gemm.k, gemm.n);
    let m = out.len() / n;
    if m == 1 && panels.gemv(gemm, out) {
        return;
    }
    let row = |i: usize| &a[i * k..(i + 1) * k];
    for (jp, j0) in (0..n).step_by(NR).enumerate() {
        let width = NR.min(n - j0);
        let panel = panels.panel(jp, j0, width);
        let mut i0 = 0;
        while i0 + MR <= m {
            let acc = T::tile::<MR>(std::array::from_fn(|r| row(i0 + r)), panel);
            store(&acc, gemm, out, i0, j0, width);
            i0 += MR;
        }
        // The last rows in one tile of their own height: each row still has its own
        // accumulators, and more rows per tile hide the fused multiply-add's latency.
        macro_rules! rest {
            ($($r:literal)*) => {
                match m - i0 {
                    $($r if $r < MR => {
                        let acc = T::tile::<$r>(std::array::from_fn(|r| row(i0 + r)), panel);
                        store(&acc, gemm, out, i0, j0, width);
                    })*
                    _ => {}
                }
            };
        }
        rest!(1 2 3 4 5 6 7);
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

/// Writes the first `width` columns of a tile at (`i0`, `j0`): the sum, plus the bias (one
/// rounding), then the epilogue (GELU, or the residual added with one rounding).
#[inline(always)]
fn store<const R: usize>(
    acc: &[[f32; NR]; R],
    gemm: &Gemm<'_>,
    out: &mut [f32],
    i0: usize,
    j0: usize,
    width: usize,
) {
    let n = gemm.n;
    for (r, acc_row) in acc.iter().enumerate() {
        let at = (i0 + r) * n + j0;
        let dst = &mut out[at..at + width];
        let mut v = *acc_row;
        if let Some(bias) = gemm.bias {
            for (v, &b) in v.iter_mut().zip(&bias[j0..j0 + width]) {
                *v += b;
            }
        }
        match gemm.then {
            Epilogue::Plain => {}
            Epilogue::Gelu => {
                for v in v.iter_mut() {
                    *v = math::gelu(*v);
                }
            }
            Epilogue::Residual(res) => {
                for (v, &x) in v.iter_mut().zip(&res[at..at + width]) {
                    *v += x;
                }
            }
        }
        dst.copy_from_slice(&v[..width]);
    }
}

/// Attention's queries, keys and values: three `[batch][seq][hidden]` arrays, or one
/// `[batch][seq][3·hidden]` array with each row's query, key and value side by side.
#[derive(Clone, Copy)]
enum Qkv<'a> {
    Separate {
        q: &'a [f32],
        k: &'a [f32],
        v: &'a [f32],
    },
    Fused(&'a [f32]),
}

impl Qkv<'_> {
    /// Head `h`'s slice of token `t` (a row of the whole batch) of part 0 (q), 1 (k) or 2 (v).
    #[inline(always)]
    fn head(&self, part: usize, t: usize, h: usize, hidden: usize, head_dim: usize) -> &[f32] {
        let (src, at) = match *self {
            Qkv::Separate { q, k, v } => ([q, k, v][part], t * hidden),
            Qkv::Fused(all) => (all, t * 3 * hidden + part * hidden),
        };
        &src[at + h * head_dim..at + (h + 1) * head_dim]
    }
}

/// One attention call's inputs, shared by every sequence.
struct Attention<'a> {
    qkv: Qkv<'a>,
    heads: usize,
    head_dim: usize,
    scale: f32,
}

/// One sequence of an attention call: its first row and its tokens (offsets from that row, in
/// increasing order; padding is left out).
struct Sequence {
    first: usize,
    tokens: Vec<usize>,
}

per_kernel! {
    /// Attention of `seqs` (consecutive sequences) into `out`, their rows from the first
    /// sequence's first row on, compiled for `kernel`.
    fn attention_seqs(att: &Attention<'_>, seqs: &[Sequence], out: &mut [f32]) {
        portable: attention_body::<AutoTile, 4>(att, seqs, out),
        avx2: attention_body::<AutoTile, 4>(att, seqs, out),
        avx512: attention_body::<Avx512Tile, 8>(att, seqs, out),
    }
}

/// Attention of each (sequence, head) as two small GEMMs on the GEMM tiles: scores `Q·Kᵀ`
/// (each score accumulates `d = 0..head_dim` in order from 0 with one fused multiply-add per
/// step, exactly the documented dot product), scaled with one rounding, softmax per query row,
/// then `P·V` (each output accumulates the sequence's keys in increasing order from 0, fused).
/// Only a sequence's tokens are gathered, so padding is never weighted and padded rows stay
/// zero.
#[inline(always)]
fn attention_body<T: Tiles, const MR: usize>(
    att: &Attention<'_>,
    seqs: &[Sequence],
    out: &mut [f32],
) {
    let hd = att.head_dim;
    let hidden = att.heads * hd;
    let base = seqs.first().map_or(0, |s| s.first);
    let mut queries: Vec<f32> = Vec::new();
    let mut kt = Vec::new();
    let mut vp = Vec::new();
    let (mut p, mut ctx) = (Vec::new(), Vec::new());
    for seq in seqs {
        let nk = seq.tokens.len();
        if nk == 0 {
            continue;
        }
        let row = |j: usize| seq.first + seq.tokens[j];
        for h in 0..att.heads {
            // Kᵀ as panels (head_dim rows of 16 keys) and V as panels (nk rows of 16 dims).
            kt.clear();
            kt.resize(hd * nk.div_ceil(NR), [0.0f32; NR]);
            vp.clear();
            vp.resize(nk * hd.div_ceil(NR), [0.0f32; NR]);
            queries.clear();
            for j in 0..nk {
                let t = row(j);
                let key = att.qkv.head(1, t, h, hidden, hd);
                let panel = &mut kt[(j / NR) * hd..(j / NR + 1) * hd];
                for (dst, &x) in panel.iter_mut().zip(key) {
                    dst[j % NR] = x;
                }
                let value = att.qkv.head(2, t, h, hidden, hd);
                for (jp, part) in value.chunks(NR).enumerate() {
                    vp[jp * nk + j][..part.len()].copy_from_slice(part);
                }
                // The queries are the same tokens.
                queries.extend_from_slice(att.qkv.head(0, t, h, hidden, hd));
            }
            let scores = Gemm {
                a: &queries,
                bias: None,
                then: Epilogue::Plain,
                k: hd,
                n: nk,
            };
            p.clear();
            p.resize(nk * nk, 0.0);
            rows_body_with::<_, T, MR>(&scores, &mut Packed(&kt, hd), &mut p);
            for r in p.chunks_exact_mut(nk) {
                for s in r.iter_mut() {
                    *s *= att.scale;
                }
                math::softmax_row(r);
            }
            let context = Gemm {
                a: &p,
                bias: None,
                then: Epilogue::Plain,
                k: nk,
                n: hd,
            };
            ctx.clear();
            ctx.resize(nk * hd, 0.0);
            rows_body_with::<_, T, MR>(&context, &mut Packed(&vp, nk), &mut ctx);
            for (j, r) in ctx.chunks_exact(hd).enumerate() {
                let o = (row(j) - base) * hidden + h * hd;
                out[o..o + hd].copy_from_slice(r);
            }
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
        for cpu in CpuBackend::every_variant() {
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

    /// Causal grouped-query attention by its definition, one score and one output at a time.
    fn causal_by_definition(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (heads, kv_heads, hd): (usize, usize, usize),
        scale: f32,
    ) -> Vec<f32> {
        let (width, kv_width) = (heads * hd, kv_heads * hd);
        let (queries, keys) = (q.len() / width, k.len() / kv_width);
        let mut out = vec![0.0f32; queries * width];
        for i in 0..queries {
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let mut scores: Vec<f32> = (0..keys - queries + i + 1)
                    .map(|j| {
                        let mut acc = 0.0f32;
                        for d in 0..hd {
                            acc = q[i * width + h * hd + d]
                                .mul_add(k[j * kv_width + g * hd + d], acc);
                        }
                        acc * scale
                    })
                    .collect();
                crate::math::softmax_row(&mut scores);
                for d in 0..hd {
                    let mut acc = 0.0f32;
                    for (j, &p) in scores.iter().enumerate() {
                        acc = p.mul_add(v[j * kv_width + g * hd + d], acc);
                    }
                    out[i * width + h * hd + d] = acc;
                }
            }
        }
        out
    }

    /// Several sequences' causal attention in one call (decode steps of several streams,
    /// prompts of several lengths; key counts on and off the 8-key blocks; small enough for
    /// one thread and big enough for the pool) gives each sequence the bits of its definition,
    /// under every kernel variant and thread count.
    #[test]
    fn batched_causal_attention_gives_each_sequences_definition() {
        let shape = (6, 2, 24);
        let (width, kv_width) = (6 * 24, 2 * 24);
        let scale = 0.204_124_15;
        for lens in [
            vec![(1, 1), (1, 9), (3, 16)],
            vec![(1, 300), (1, 301), (1, 7), (1, 64), (5, 40)],
            vec![(41, 41), (2, 130)],
        ] {
            let data: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = lens
                .iter()
                .enumerate()
                .map(|(s, &(queries, keys))| {
                    let seed = 1000 + 3 * s as u64;
                    let q: Vec<f32> = random(seed, queries * width)
                        .iter()
                        .map(|x| x * 4.0)
                        .collect();
                    (
                        q,
                        random(seed + 1, keys * kv_width),
                        random(seed + 2, keys * kv_width),
                    )
                })
                .collect();
            let seqs: Vec<(&[f32], &[f32], &[f32])> = data
                .iter()
                .map(|(q, k, v)| (&q[..], &k[..], &v[..]))
                .collect();
            let want: Vec<u32> = seqs
                .iter()
                .flat_map(|&(q, k, v)| bits(&causal_by_definition(q, k, v, shape, scale)))
                .collect();
            for cpu in CpuBackend::every_variant() {
                let got = cpu.attention_causal_batch(&seqs, shape, scale);
                assert_eq!(
                    bits(&got),
                    want,
                    "{lens:?} {:?} threads {}",
                    cpu.kernel,
                    cpu.threads
                );
                for (s, &(q, k, v)) in seqs.iter().enumerate() {
                    let one = cpu.attention_causal(q, k, v, 6, 2, 24, scale);
                    let want = bits(&causal_by_definition(q, k, v, shape, scale));
                    assert_eq!(
                        bits(&one),
                        want,
                        "sequence {s} of {lens:?} {:?}",
                        cpu.kernel
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_rows_are_batch_invariant() {
        let (m, k, n) = (21, 37, 29);
        let a = random(21, m * k);
        let b = random(22, k * n);
        let bias = random(23, n);
        for cpu in CpuBackend::every_variant() {
            let full = bits(&cpu.gemm_bias(&a, &b, Some(&bias), m, k, n));
            for size in 1..=m {
                for start in 0..=m - size {
                    let sub = &a[start * k..(start + size) * k];
                    let got = bits(&cpu.gemm_bias(sub, &b, Some(&bias), size, k, n));
                    assert_eq!(
                        got,
                        full[start * n..(start + size) * n],
                        "batch of {size} rows at row {start}, {:?}",
                        cpu.kernel
                    );
                }
            }
        }
    }

    #[test]
    fn every_kernel_variant_gives_the_portable_bits() {
        let here: Vec<CpuKernel> = CpuKernel::ALL
            .into_iter()
            .filter(|k| k.available())
            .collect();
        eprintln!("kernel variants on this CPU: {here:?}");
        for (seed, m, k, n) in [
            (31, 1, 1, 1),
            (32, 6, 33, 17),
            (33, 21, 130, 70),
            (34, 4, 8, 16),
            (35, 19, 64, 48),
        ] {
            let a = random(seed, m * k);
            let b = random(seed + 1, k * n);
            let bias = random(seed + 2, n);
            let slow = gemm(&a, &b, Some(&bias), m, k, n, CpuKernel::Portable, 1);
            for &kernel in &here {
                let fast = gemm(&a, &b, Some(&bias), m, k, n, kernel, 1);
                assert_eq!(bits(&fast), bits(&slow), "m={m} k={k} n={n} {kernel}");
            }
        }
    }

    #[test]
    fn gemm_is_independent_of_thread_count() {
        let (m, k, n) = (70, 160, 100);
        let a = random(41, m * k);
        let b = random(42, k * n);
        let bias = random(43, n);
        for kernel in CpuKernel::ALL.into_iter().filter(|k| k.available()) {
            let one = bits(&gemm(&a, &b, Some(&bias), m, k, n, kernel, 1));
            for threads in [2, 3, 5, 64] {
                assert_eq!(
                    bits(&gemm(&a, &b, Some(&bias), m, k, n, kernel, threads)),
                    one,
                    "{threads} threads, {kernel}"
                );
            }
        }
        // Above the threshold the backend itself goes parallel; same bits.
        let (m, k, n) = (64, 256, 320);
        let a = random(44, m * k);
        let b = random(45, k * n);
        let cpu = CpuBackend::new();
        assert!(m * k * n > PARALLEL_WORK);
        assert_eq!(
            bits(&cpu.gemm_bias(&a, &b, None, m, k, n)),
            bits(&gemm(&a, &b, None, m, k, n, CpuKernel::Portable, 1))
        );
    }

    /// Bias + GELU and bias + residual in the GEMM's epilogue give the bits of the separate
    /// ops, under every variant and thread count.
    #[test]
    fn fused_epilogues_give_the_bits_of_separate_ops() {
        for (seed, m, k, n) in [
            (101, 1, 5, 3),
            (102, 13, 40, 47),
            (103, 64, 256, 320),
            (104, 9, 700, 700),
        ] {
            let a: Vec<f32> = random(seed, m * k).iter().map(|v| v * 4.0).collect();
            let w = PackedMatrix::new(&random(seed + 1, k * n), k, n);
            let bias = random(seed + 2, n);
            let residual = random(seed + 3, m * n);
            let reference = CpuBackend::portable();
            let mut want_gelu = reference.gemm_packed(&a, &w, Some(&bias), m);
            for v in want_gelu.iter_mut() {
                *v = math::gelu(*v);
            }
            let mut want_residual = reference.gemm_packed(&a, &w, Some(&bias), m);
            super::super::ops::add_inplace(&mut want_residual, &residual);
            for cpu in CpuBackend::every_variant() {
                let gelu = cpu.gemm_packed_then(&a, &w, Some(&bias), m, Epilogue::Gelu);
                assert_eq!(bits(&gelu), bits(&want_gelu), "gelu m={m} {:?}", cpu.kernel);
                let res = Epilogue::Residual(&residual);
                let got = cpu.gemm_packed_then(&a, &w, Some(&bias), m, res);
                assert_eq!(
                    bits(&got),
                    bits(&want_residual),
                    "residual m={m} {:?}",
                    cpu.kernel
                );
            }
        }
    }

    /// Attention as small GEMMs per head gives the scalar definition's bits (`ops::attention`)
    /// for padded batches, under every variant and thread count, from separate or fused q/k/v.
    #[test]
    fn attention_gives_the_scalar_definitions_bits() {
        let (batch, seq, heads, head_dim) = (5, 19, 3, 20);
        let hidden = heads * head_dim;
        let len = batch * seq * hidden;
        let q: Vec<f32> = random(111, len).iter().map(|v| v * 3.0).collect();
        let k: Vec<f32> = random(112, len).iter().map(|v| v * 3.0).collect();
        let v = random(113, len);
        // Lengths 19, 7, 1, 0 (all padding) and 17 tokens.
        let mut mask = vec![0u8; batch * seq];
        for (b, n) in [19, 7, 1, 0, 17].into_iter().enumerate() {
            mask[b * seq..b * seq + n].fill(1);
        }
        let scale = 0.223_606_8;
        let want = bits(&super::super::ops::attention(
            &q, &k, &v, &mask, batch, seq, heads, head_dim, scale,
        ));
        let mut qkv = Vec::with_capacity(3 * len);
        for t in 0..batch * seq {
            for part in [&q, &k, &v] {
                qkv.extend_from_slice(&part[t * hidden..(t + 1) * hidden]);
            }
        }
        for cpu in CpuBackend::every_variant() {
            let got = cpu.attention(&q, &k, &v, &mask, batch, seq, heads, head_dim, scale);
            assert_eq!(bits(&got), want, "{:?} threads {}", cpu.kernel, cpu.threads);
            let got = cpu.attention_qkv(&qkv, &mask, batch, seq, heads, head_dim, scale);
            assert_eq!(
                bits(&got),
                want,
                "qkv {:?} threads {}",
                cpu.kernel,
                cpu.threads
            );
        }
    }

    /// The trait's own (unfused) methods, for comparing the CPU overrides against.
    struct Defaults(CpuBackend);

    impl Backend for Defaults {
        fn name(&self) -> &'static str {
            "defaults"
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
            self.0.gemm_bias(a, b, bias, m, k, n)
        }
        fn gelu(&self, x: &mut [f32]) {
            self.0.gelu(x)
        }
        fn softmax_rows(&self, x: &mut [f32], cols: usize) {
            self.0.softmax_rows(x, cols)
        }
    }

    /// Sequences end to end without padding give the bits of the padded batch, for the CPU's
    /// own attention under every variant and for the trait's default (pad, attend, unpad).
    #[test]
    fn ragged_attention_gives_the_bits_of_the_padded_batch() {
        let (heads, head_dim) = (3, 20);
        let hidden = heads * head_dim;
        let lens = [19, 7, 1, 0, 17, 40];
        let (batch, seq) = (lens.len(), 40);
        let rows: usize = lens.iter().sum();
        let ragged_qkv: Vec<f32> = random(121, rows * 3 * hidden)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let mut padded = vec![0.0f32; batch * seq * 3 * hidden];
        let mut mask = vec![0u8; batch * seq];
        let mut first = 0;
        for (b, &len) in lens.iter().enumerate() {
            padded[b * seq * 3 * hidden..][..len * 3 * hidden]
                .copy_from_slice(&ragged_qkv[first * 3 * hidden..][..len * 3 * hidden]);
            mask[b * seq..b * seq + len].fill(1);
            first += len;
        }
        let scale = 0.3;
        let full = CpuBackend::portable()
            .attention_qkv(&padded, &mask, batch, seq, heads, head_dim, scale);
        let mut want = Vec::new();
        for (b, &len) in lens.iter().enumerate() {
            want.extend(bits(&full[b * seq * hidden..][..len * hidden]));
        }
        for cpu in CpuBackend::every_variant() {
            let got = cpu.attention_ragged(&ragged_qkv, &lens, heads, head_dim, scale);
            assert_eq!(bits(&got), want, "{:?} threads {}", cpu.kernel, cpu.threads);
        }
        let defaults = Defaults(CpuBackend::new());
        let got = defaults.attention_ragged(&ragged_qkv, &lens, heads, head_dim, scale);
        assert_eq!(bits(&got), want, "the trait's default");
    }

    /// The trait's default fused-epilogue GEMM and q/k/v split give the CPU overrides' bits.
    #[test]
    fn trait_defaults_give_the_overrides_bits() {
        let (m, k, n) = (9, 33, 40);
        let a = random(131, m * k);
        let w = PackedMatrix::new(&random(132, k * n), k, n);
        let bias = random(133, n);
        let residual = random(134, m * n);
        let (cpu, defaults) = (CpuBackend::new(), Defaults(CpuBackend::new()));
        for then in [
            Epilogue::Plain,
            Epilogue::Gelu,
            Epilogue::Residual(&residual),
        ] {
            assert_eq!(
                bits(&defaults.gemm_packed_then(&a, &w, Some(&bias), m, then)),
                bits(&cpu.gemm_packed_then(&a, &w, Some(&bias), m, then)),
                "{then:?}"
            );
        }
        let (batch, seq, heads, head_dim) = (2, 5, 2, 8);
        let qkv = random(135, batch * seq * 3 * heads * head_dim);
        let mask = [1, 1, 1, 0, 0, 1, 1, 1, 1, 1];
        assert_eq!(
            bits(&defaults.attention_qkv(&qkv, &mask, batch, seq, heads, head_dim, 0.5)),
            bits(&cpu.attention_qkv(&qkv, &mask, batch, seq, heads, head_dim, 0.5))
        );
    }

    #[test]
    fn kernel_names_parse_and_unsupported_ones_are_refused() {
        for k in CpuKernel::ALL {
            assert_eq!(k.name().parse::<CpuKernel>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
            match CpuBackend::with_kernel(k) {
                Ok(cpu) => assert!(k.available() && cpu.kernel() == k),
                Err(e) => assert_eq!(e, CpuKernelError::Unsupported(k)),
            }
        }
        assert_eq!(
            "sse9".parse::<CpuKernel>(),
            Err(CpuKernelError::Unknown("sse9".into()))
        );
        assert!(CpuKernel::best().available());
        assert_eq!(CpuBackend::new().with_threads(0).threads(), 1);
    }

    /// Weights packed once give the bits of the unpacked call, for every tail width, split by
    /// rows or by column panels, and unpack to themselves.
    #[test]
    fn packed_weights_give_the_same_bits() {
        for cpu in CpuBackend::every_variant() {
            for (seed, m, k, n) in [
                (91, 5, 7, 1),
                (92, 9, 33, 16),
                (93, 13, 40, 47),
                (94, 64, 256, 320),
                (95, 3, 0, 5),
                // Few rows, much work: split over the pool by column panels.
                (96, 9, 700, 700),
                // MiniLM's 384×384 projection at batch 1: split by columns below the row
                // split's threshold.
                (97, 13, 384, 384),
            ] {
                let a = random(seed, m * k);
                let b = random(seed + 1, k * n);
                let bias = random(seed + 2, n);
                let w = PackedMatrix::new(&b, k, n);
                assert_eq!(w.to_row_major(), b);
                let again = PackedMatrix::new(&b, k, n);
                assert!(again == w && again.id() != w.id() && w.clone().id() == w.id());
                assert_eq!((w.k(), w.n()), (k, n));
                assert_eq!(
                    bits(&cpu.gemm_packed(&a, &w, Some(&bias), m)),
                    bits(&cpu.gemm_bias(&a, &b, Some(&bias), m, k, n)),
                    "m={m} k={k} n={n} {:?}",
                    cpu.kernel
                );
                assert_eq!(
                    bits(&cpu.gemm_packed(&a, &w, None, m)),
                    bits(&cpu.gemm_bias(&a, &b, None, m, k, n))
                );
            }
        }
    }

    /// Quantised weights (Q4_1 and Q8_0 blocks) give the bits of the same values packed as f32,
    /// one row (the fused GEMV, split by columns or not) or many (dequantised panels), with
    /// every epilogue, tail width and kernel variant.
    #[test]
    fn quantized_weights_give_the_bits_of_their_values() {
        let mut rng = crate::rng::SplitMix64::new(77);
        for cpu in CpuBackend::every_variant() {
            for kind in [QuantKind::Q4_1, QuantKind::Q8_0] {
                for (m, k, n) in [
                    (1, 32, 5),
                    (1, 64, 33),
                    (1, 576, 960),
                    (2, 96, 40),
                    (3, 64, 17),
                    (5, 96, 33),
                    (8, 64, 40),
                    (9, 64, 50),
                    (20, 128, 48),
                    // A few rows over enough panels to be split by columns (three pieces).
                    (3, 64, 160),
                    (2, 32, 70),
                    // A prompt's many rows (the buffered path).
                    (64, 64, 48),
                    (256, 32, 40),
                    (1, 1536, 576),
                ] {
                    let blocks: Vec<(f32, f32, [u8; QK])> = (0..n * k / QK)
                        .map(|_| {
                            let d = (rng.next_f32() * 0.05).abs() + 1e-3;
                            let min = rng.next_f32() * 0.1;
                            let q = std::array::from_fn(|_| {
                                let byte = rng.next_u64() as u8;
                                if kind == QuantKind::Q4_1 {
                                    byte & 15
                                } else {
                                    byte
                                }
                            });
                            (d, min, q)
                        })
                        .collect();
                    let nb = k / QK;
                    let w = PackedMatrix::quantized(kind, k, n, |j, b| blocks[j * nb + b]);
                    assert!(w.is_quantized() && w.bytes() < k * n.next_multiple_of(NR) * 2);
                    // The values, dequantised as the GGUF reader does at load.
                    let mut w_t = vec![0.0f32; n * k];
                    for j in 0..n {
                        for b in 0..nb {
                            let (d, min, q) = blocks[j * nb + b];
                            for r in 0..QK {
                                w_t[j * k + b * QK + r] = match kind {
                                    QuantKind::Q4_1 => f32::from(q[r]).mul_add(d, min),
                                    QuantKind::Q8_0 => f32::from(q[r] as i8) * d,
                                };
                            }
                        }
                    }
                    let f = PackedMatrix::from_transposed(&w_t, k, n);
                    assert!(w == f, "unpacks to its values");
                    let a = random(k as u64, m * k);
                    let bias = random(n as u64, n);
                    let residual = random(3, m * n);
                    for (bias, then) in [
                        (None, Epilogue::Plain),
                        (Some(&bias[..]), Epilogue::Gelu),
                        (Some(&bias[..]), Epilogue::Residual(&residual)),
                    ] {
                        assert_eq!(
                            bits(&cpu.gemm_packed_then(&a, &w, bias, m, then)),
                            bits(&cpu.gemm_packed_then(&a, &f, bias, m, then)),
                            "{kind:?} m={m} k={k} n={n} {:?} {} threads",
                            cpu.kernel,
                            cpu.threads
                        );
                    }
                }
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
        for cpu in CpuBackend::every_variant() {
            let mut g = xs.clone();
            cpu.gelu(&mut g);
            assert_eq!(
                bits(&g),
                want_gelu,
                "gelu, {:?} threads={}",
                cpu.kernel,
                cpu.threads
            );
            let mut l = xs.clone();
            cpu.layernorm_rows(&mut l, 37, &gamma, &beta, 1e-12);
            assert_eq!(
                bits(&l),
                bits(&want_layernorm),
                "layernorm, {:?} threads={}",
                cpu.kernel,
                cpu.threads
            );
            let mut s = xs.clone();
            cpu.softmax_rows(&mut s, 37);
            assert_eq!(
                bits(&s),
                bits(&want_softmax),
                "softmax, {:?} threads={}",
                cpu.kernel,
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
        for cpu in CpuBackend::every_variant() {
            let y = cpu.gemm_bias(&a, &b, Some(&bias), m, k, n);
            assert_eq!(
                hash_bits(&y),
                "0x9a16447d6efe0becf33c0aa91d3494f6b27858cc28ac56295633593d1611b906",
                "gemm, {:?}",
                cpu.kernel
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
