//! The CUDA backend: the ops of [`Backend`] as CUDA kernels that reproduce [`CpuBackend`] bit for
//! bit.
//!
//! The kernels are the `.cu` files in `kernels/cuda/` (one per op family, each including
//! `math.cuh`), embedded with `include_str!` and compiled at run time by NVRTC, so building needs
//! no CUDA toolkit; cudarc loads `libcuda` and `libnvrtc` (and `libcublas`, for
//! [`CudaBackend::time_gemm`] only) when first used. Every floating-point operation is an
//! explicit round-to-nearest intrinsic in the order the [`Backend`] docs fix, and NVRTC runs
//! with contraction, flush-to-zero and approximate division and square root all off
//! ([`NVRTC_OPTIONS`]). PTX is compiled once per process and cached on disk (see
//! [`cache_dir`]).
//!
//! [`CudaBackend::new`] refuses a device (with an error, never a panic) when the driver or NVRTC
//! is missing, there is no GPU, a kernel does not compile, or a self-check on small inputs
//! differs from the CPU in a single bit. Afterwards the [`Backend`] methods, which cannot return
//! errors, log a failed device call and compute that op on the CPU instead (same bits, by the
//! contract; counted by [`CudaBackend::fallbacks`]); the `try_*` methods return the error.
//!
//! NaN payloads are not part of the contract: a NaN *produced* by arithmetic is the canonical
//! `0x7fffffff` on the GPU and whatever the CPU makes (`0xffc00000` on x86), so only finite
//! results are compared bit for bit. Weights are checked finite and finite inputs of sane
//! magnitude never produce NaN.

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc;

use super::{Backend, CpuBackend, PackedMatrix, ops};
use crate::rng::SplitMix64;

/// `math.cuh`, the one header every kernel source includes.
const HEADER: (&str, &str) = ("math.cuh", include_str!("../../cuda/math.cuh"));

/// The kernel sources, one NVRTC program (and one CUDA module) each.
pub(crate) const SOURCES: [(&str, &str); 5] = [
    ("gemm.cu", include_str!("../../cuda/gemm.cu")),
    ("elementwise.cu", include_str!("../../cuda/elementwise.cu")),
    ("norm.cu", include_str!("../../cuda/norm.cu")),
    ("attention.cu", include_str!("../../cuda/attention.cu")),
    ("pool.cu", include_str!("../../cuda/pool.cu")),
];

/// NVRTC options besides the architecture: no FMA contraction, no flush-to-zero, IEEE division
/// and square root (never `--use_fast_math`).
pub(crate) const NVRTC_OPTIONS: [&str; 4] = [
    "--fmad=false",
    "--ftz=false",
    "--prec-div=true",
    "--prec-sqrt=true",
];

/// Environment variable naming the PTX cache directory (default `~/.cache/proofmesh/kernels`).
pub(crate) const CACHE_ENV: &str = "PROOFMESH_KERNEL_CACHE";

/// Threads per block of the row kernels (softmax, layernorm, L2, attention).
const ROW_THREADS: u32 = 128;
/// Threads per block of the elementwise kernels.
const ELEMENT_THREADS: u32 = 256;
/// Largest grid dimension y or z (and the cap on grid-stride grids in x).
const GRID_YZ_MAX: usize = 65_535;
/// Static shared memory a block may use without opting in; bounds the attention score row.
const SHARED_BYTES: usize = 48 * 1024;

/// Why the CUDA backend cannot start or an op could not run on the device.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// `libcuda` could not be loaded.
    #[error(
        "the CUDA driver library (libcuda.so) is not installed or not on the library path; \
         install the NVIDIA driver or use the cpu backend"
    )]
    DriverMissing,

    /// `libnvrtc` could not be loaded.
    #[error(
        "libnvrtc (the CUDA runtime compiler, which builds the kernels) is not installed or not \
         on the library path; install the CUDA toolkit or the nvidia-cuda-nvrtc-cu12 wheel and \
         add its lib directory to LD_LIBRARY_PATH, or use the cpu backend"
    )]
    NvrtcMissing,

    /// The driver reports no device with this ordinal.
    #[error("CUDA device {ordinal} does not exist: the driver reports {count} device(s)")]
    NoDevice { ordinal: usize, count: usize },

    /// A driver call failed.
    #[error("CUDA driver call {call} failed: {source}")]
    Driver {
        call: &'static str,
        #[source]
        source: DriverError,
    },

    /// NVRTC rejected a kernel source.
    #[error("NVRTC could not compile {file} for {arch}: {reason}\n{log}")]
    Compile {
        file: &'static str,
        arch: String,
        reason: String,
        log: String,
    },

    /// A dimension exceeds what the kernels index or launch.
    #[error("{op}: {what} = {value} is more than the CUDA kernels support ({limit})")]
    TooLarge {
        op: &'static str,
        what: &'static str,
        value: usize,
        limit: usize,
    },

    /// The start-up self-check found an op that differs from the CPU reference.
    #[error(
        "the CUDA self-check found {check} differing from the CPU reference in {mismatches} of \
         {values} values; this GPU cannot run exact mode, use the cpu backend"
    )]
    Mismatch {
        check: String,
        mismatches: usize,
        values: usize,
    },

    /// cuBLAS (used only by [`CudaBackend::time_gemm`]) failed.
    #[error("cuBLAS failed: {reason}")]
    Cublas { reason: String },

    /// cudarc panicked (it does so for a library symbol it cannot find, e.g. a driver older than
    /// the CUDA 12.8 API it binds); the panic was caught.
    #[error("the CUDA library panicked during {during}: {message}")]
    Panicked {
        during: &'static str,
        message: String,
    },
}

/// Maps a driver error to [`CudaError::Driver`] naming the call.
fn drv(call: &'static str) -> impl FnOnce(DriverError) -> CudaError {
    move |source| CudaError::Driver { call, source }
}

/// Runs `f`, turning a panic inside cudarc into [`CudaError::Panicked`].
fn no_panic<T>(
    during: &'static str,
    f: impl FnOnce() -> Result<T, CudaError>,
) -> Result<T, CudaError> {
    crate::catching(f).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(CudaError::Panicked { during, message })
    })
}

/// The compiled kernels; each function keeps its module loaded.
struct Kernels {
    gemm_128: CudaFunction,
    gemm_64: CudaFunction,
    gemm_32: CudaFunction,
    gelu: CudaFunction,
    add_inplace: CudaFunction,
    embedding_gather: CudaFunction,
    softmax_rows: CudaFunction,
    layernorm_rows: CudaFunction,
    rmsnorm_rows: CudaFunction,
    swiglu: CudaFunction,
    rope: CudaFunction,
    l2_normalize_rows: CudaFunction,
    attention: CudaFunction,
    attention_causal: CudaFunction,
    mean_pool: CudaFunction,
}

/// The CUDA implementation of [`Backend`], bit-identical to [`CpuBackend`].
///
/// Each call copies its inputs to the device and its result back (the trait takes host slices);
/// all work runs on one stream of the device's primary context.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    device: String,
    arch: String,
    sm_count: usize,
    cpu: CpuBackend,
    fallbacks: AtomicU64,
    /// Weights uploaded once ([`PackedMatrix::id`] → row-major copy on the device), so a
    /// model's GEMMs copy only their activations; see [`CudaBackend::try_gemm_packed`].
    weights: Mutex<DeviceWeights>,
}

/// The device copies of packed weight matrices, up to [`DEVICE_WEIGHT_BYTES`] in all.
#[derive(Default)]
struct DeviceWeights {
    by_id: HashMap<u64, Arc<CudaSlice<f32>>>,
    bytes: usize,
}

/// Most bytes of weights kept on the device; past it the copies are dropped and uploaded
/// again as they are used (a bound for processes that load and drop many models).
const DEVICE_WEIGHT_BYTES: usize = 8 << 30;

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device)
            .field("arch", &self.arch)
            .field("sm_count", &self.sm_count)
            .field("fallbacks", &self.fallbacks())
            .finish()
    }
}

impl CudaBackend {
    /// The backend on CUDA device 0 (see [`CudaBackend::on_device`]).
    pub fn new() -> Result<CudaBackend, CudaError> {
        Self::on_device(0)
    }

    /// Loads the driver and NVRTC, compiles (or reads from the cache) every kernel for the
    /// device's architecture, and runs a self-check of every op against the CPU on small random
    /// inputs; any failure, a single differing bit included, is an error.
    pub fn on_device(ordinal: usize) -> Result<CudaBackend, CudaError> {
        // cudarc panics on first use of a library it cannot load: probe for them first.
        // SAFETY: these only try to dlopen the libraries by name and close them again.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::DriverMissing);
        }
        if !unsafe { nvrtc::sys::is_culib_present() } {
            return Err(CudaError::NvrtcMissing);
        }
        let backend = no_panic("start-up", || Self::start(ordinal))?;
        no_panic("the self-check", || backend.self_check())?;
        tracing::info!(
            device = %backend.device,
            arch = %backend.arch,
            sms = backend.sm_count,
            "cuda backend ready"
        );
        Ok(backend)
    }

    fn start(ordinal: usize) -> Result<CudaBackend, CudaError> {
        let count = CudaContext::device_count().map_err(drv("cuDeviceGetCount"))?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: every buffer of this backend lives and is used on the one stream below, and
        // each op synchronises it before returning, so no cross-stream tracking is needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let device = ctx.name().map_err(drv("cuDeviceGetName"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(drv("cuDeviceGetAttribute"))?;
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(drv("cuDeviceGetAttribute"))?;
        let arch = nvrtc_arch(major, minor);
        let load = |(file, source): (&'static str, &str)| load_module(&ctx, file, source, &arch);
        let [gemm, elementwise, norm, attention, pool] = SOURCES;
        let (gemm, elementwise, norm) = (load(gemm)?, load(elementwise)?, load(norm)?);
        let (attention, pool) = (load(attention)?, load(pool)?);
        let function = |module: &Arc<cudarc::driver::CudaModule>, name: &str| {
            module
                .load_function(name)
                .map_err(drv("cuModuleGetFunction"))
        };
        let kernels = Kernels {
            gemm_128: function(&gemm, "gemm_bias_128")?,
            gemm_64: function(&gemm, "gemm_bias_64")?,
            gemm_32: function(&gemm, "gemm_bias_32")?,
            gelu: function(&elementwise, "gelu")?,
            add_inplace: function(&elementwise, "add_inplace")?,
            embedding_gather: function(&elementwise, "embedding_gather")?,
            softmax_rows: function(&norm, "softmax_rows")?,
            layernorm_rows: function(&norm, "layernorm_rows")?,
            rmsnorm_rows: function(&norm, "rmsnorm_rows")?,
            swiglu: function(&elementwise, "swiglu")?,
            rope: function(&elementwise, "rope")?,
            l2_normalize_rows: function(&norm, "l2_normalize_rows")?,
            attention: function(&attention, "attention")?,
            attention_causal: function(&attention, "attention_causal")?,
            mean_pool: function(&pool, "mean_pool")?,
        };
        Ok(CudaBackend {
            ctx,
            stream,
            kernels,
            device,
            arch,
            sm_count: usize::try_from(sm_count).unwrap_or(1).max(1),
            cpu: CpuBackend::new(),
            fallbacks: AtomicU64::new(0),
            weights: Mutex::new(DeviceWeights::default()),
        })
    }

    /// The device's name, e.g. `"NVIDIA H100 80GB HBM3"`.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The virtual architecture the kernels were compiled for, e.g. `"compute_90"`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// How many [`Backend`] calls failed on the device and were computed on the CPU instead.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Runs every op on small random inputs (odd sizes, tails, padding) and fails on the first
    /// bit that differs from the CPU.
    fn self_check(&self) -> Result<(), CudaError> {
        for (i, probe) in Probe::self_check().iter().enumerate() {
            let check = self.compare_with_cpu(probe, 0x5e1f_c4ec + i as u64)?;
            if check.mismatches > 0 {
                return Err(CudaError::Mismatch {
                    check: check.probe,
                    mismatches: check.mismatches,
                    values: check.values,
                });
            }
        }
        Ok(())
    }

    /// The result of a device op, or the CPU's after logging why the device failed.
    fn or_cpu<T>(&self, op: &'static str, r: Result<T, CudaError>, cpu: impl FnOnce() -> T) -> T {
        r.unwrap_or_else(|err| {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::error!(op, %err, "cuda op failed; computing it on the cpu");
            cpu()
        })
    }

    fn upload<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, CudaError> {
        self.stream.clone_htod(host).map_err(drv("cuMemcpyHtoD"))
    }

    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>, CudaError> {
        self.stream.alloc_zeros(len).map_err(drv("cuMemAlloc"))
    }

    /// Copies `dev` back and waits for the stream, surfacing any error of the work before.
    fn download(&self, dev: &CudaSlice<f32>) -> Result<Vec<f32>, CudaError> {
        let mut host = vec![0.0f32; dev.len()];
        self.stream
            .memcpy_dtoh(dev, &mut host)
            .map_err(drv("cuMemcpyDtoH"))?;
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))?;
        Ok(host)
    }

    /// [`Self::download`] into `x` (of `dev`'s length); `x` is untouched on error, so the CPU
    /// fallback still sees the input.
    fn download_into(&self, dev: &CudaSlice<f32>, x: &mut [f32]) -> Result<(), CudaError> {
        x.copy_from_slice(&self.download(dev)?);
        Ok(())
    }

    /// Launches the GEMM kernel on device buffers (`bias` of `n`, `out` of `m·n`).
    #[allow(clippy::too_many_arguments)]
    fn launch_gemm(
        &self,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        bias: Option<&CudaSlice<f32>>,
        out: &mut CudaSlice<f32>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<(), CudaError> {
        let (m32, k32, n32) = (
            fit_u32("gemm_bias", "m", m)?,
            fit_u32("gemm_bias", "k", k)?,
            fit_u32("gemm_bias", "n", n)?,
        );
        let (tile, cfg) = gemm_plan(m, n, self.sm_count)?;
        let func = match tile {
            128 => &self.kernels.gemm_128,
            64 => &self.kernels.gemm_64,
            _ => &self.kernels.gemm_32,
        };
        let null = 0u64;
        let mut launch = self.stream.launch_builder(func);
        launch.arg(a).arg(b);
        match bias {
            Some(bias) => launch.arg(bias),
            None => launch.arg(&null),
        };
        launch.arg(out).arg(&m32).arg(&k32).arg(&n32);
        // SAFETY: a, b, bias and out hold m·k, k·n, n and m·n values (checked by the callers)
        // and the kernel reads and writes only inside those bounds.
        unsafe { launch.launch(cfg) }.map_err(drv("cuLaunchKernel"))?;
        Ok(())
    }

    /// [`Backend::gemm_bias`] on the device, returning device errors instead of falling back.
    ///
    /// # Panics
    ///
    /// As [`Backend::gemm_bias`], if a slice length disagrees with `m`, `k`, `n`.
    pub fn try_gemm_bias(
        &self,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Vec<f32>, CudaError> {
        ops::check_gemm_shapes(a, b, bias, m, k, n);
        if m == 0 || n == 0 || k == 0 {
            // Nothing to multiply: zeros or the bias, exactly as the CPU gives them.
            return Ok(self.cpu.gemm_bias(a, b, bias, m, k, n));
        }
        let a_dev = self.upload(a)?;
        let b_dev = self.upload(b)?;
        let bias_dev = bias.map(|bias| self.upload(bias)).transpose()?;
        let mut out_dev = self.zeros(m * n)?;
        self.launch_gemm(&a_dev, &b_dev, bias_dev.as_ref(), &mut out_dev, m, k, n)?;
        self.download(&out_dev)
    }

    /// [`Backend::gemm_packed`] on the device, returning device errors instead of falling back.
    /// The weights are uploaded on their first use and stay on the device: each call copies
    /// only `a` (and the bias) in and the product out, and runs the same GEMM kernel as
    /// [`CudaBackend::try_gemm_bias`], so the bits are the same.
    pub fn try_gemm_packed(
        &self,
        a: &[f32],
        w: &PackedMatrix,
        bias: Option<&[f32]>,
        m: usize,
    ) -> Result<Vec<f32>, CudaError> {
        let (k, n) = (w.k(), w.n());
        ops::check_packed_shapes(a, w, bias, m);
        if m == 0 || n == 0 || k == 0 {
            return Ok(self.cpu.gemm_packed(a, w, bias, m));
        }
        let b_dev = self.device_weights(w)?;
        let a_dev = self.upload(a)?;
        let bias_dev = bias.map(|bias| self.upload(bias)).transpose()?;
        let mut out_dev = self.zeros(m * n)?;
        self.launch_gemm(&a_dev, &b_dev, bias_dev.as_ref(), &mut out_dev, m, k, n)?;
        self.download(&out_dev)
    }

    /// The device copy of `w`, uploaded now if it is not there yet.
    fn device_weights(&self, w: &PackedMatrix) -> Result<Arc<CudaSlice<f32>>, CudaError> {
        let mut cache = self.weights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dev) = cache.by_id.get(&w.id()) {
            return Ok(dev.clone());
        }
        let bytes = w.k() * w.n() * std::mem::size_of::<f32>();
        if cache.bytes + bytes > DEVICE_WEIGHT_BYTES {
            tracing::info!(
                bytes = cache.bytes,
                "device weight cache full: dropping it (weights upload again on use)"
            );
            *cache = DeviceWeights::default();
        }
        let dev = Arc::new(self.upload(&w.to_row_major())?);
        cache.by_id.insert(w.id(), dev.clone());
        cache.bytes += bytes;
        Ok(dev)
    }

    /// [`Backend::gelu`] on the device, returning device errors instead of falling back.
    pub fn try_gelu(&self, x: &mut [f32]) -> Result<(), CudaError> {
        if x.is_empty() {
            return Ok(());
        }
        let mut dev = self.upload(x)?;
        let len = x.len() as u64;
        let mut launch = self.stream.launch_builder(&self.kernels.gelu);
        launch.arg(&mut dev).arg(&len);
        // SAFETY: the kernel touches x[0..len] of a buffer of len values.
        unsafe { launch.launch(element_grid(self.sm_count, x.len())) }
            .map_err(drv("cuLaunchKernel"))?;
        self.download_into(&dev, x)
    }

    /// [`Backend::softmax_rows`] on the device, returning device errors instead of falling back.
    ///
    /// # Panics
    ///
    /// As [`Backend::softmax_rows`], if `cols` does not divide a non-empty `x`.
    pub fn try_softmax_rows(&self, x: &mut [f32], cols: usize) -> Result<(), CudaError> {
        self.row_op(&self.kernels.softmax_rows, "softmax_rows", x, cols)
    }

    /// Runs an in-place row kernel taking `(x, rows, cols)`, one block per row.
    fn row_op(
        &self,
        func: &CudaFunction,
        op: &'static str,
        x: &mut [f32],
        cols: usize,
    ) -> Result<(), CudaError> {
        if !ops::has_rows(op, x.len(), cols) {
            return Ok(());
        }
        let cols32 = fit_u32(op, "cols", cols)?;
        let rows = x.len() / cols;
        let mut dev = self.upload(x)?;
        let rows64 = rows as u64;
        let mut launch = self.stream.launch_builder(func);
        launch.arg(&mut dev).arg(&rows64).arg(&cols32);
        // SAFETY: the kernel touches rows·cols values, the buffer's length.
        unsafe { launch.launch(row_grid(rows)) }.map_err(drv("cuLaunchKernel"))?;
        self.download_into(&dev, x)
    }

    /// [`Backend::layernorm_rows`] on the device, returning device errors instead of falling
    /// back.
    ///
    /// # Panics
    ///
    /// As the CPU reference: if `gamma` or `beta` is not `cols` long or `cols` does not divide a
    /// non-empty `x`.
    pub fn try_layernorm_rows(
        &self,
        x: &mut [f32],
        cols: usize,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) -> Result<(), CudaError> {
        assert!(
            gamma.len() == cols && beta.len() == cols,
            "layernorm: gamma/beta are not {cols} long"
        );
        if !ops::has_rows("layernorm", x.len(), cols) {
            return Ok(());
        }
        let cols32 = fit_u32("layernorm_rows", "cols", cols)?;
        let rows = x.len() / cols;
        let mut dev = self.upload(x)?;
        let gamma_dev = self.upload(gamma)?;
        let beta_dev = self.upload(beta)?;
        let (rows64, n) = (rows as u64, cols as f32);
        let mut launch = self.stream.launch_builder(&self.kernels.layernorm_rows);
        launch
            .arg(&mut dev)
            .arg(&gamma_dev)
            .arg(&beta_dev)
            .arg(&rows64)
            .arg(&cols32)
            .arg(&n)
            .arg(&eps);
        // SAFETY: x holds rows·cols values, gamma and beta cols each.
        unsafe { launch.launch(row_grid(rows)) }.map_err(drv("cuLaunchKernel"))?;
        self.download_into(&dev, x)
    }

    /// [`Backend::rmsnorm_rows`] on the device, returning device errors instead of falling back.
    ///
    /// # Panics
    ///
    /// As the CPU reference: if `gamma` is not `cols` long or `cols` does not divide a
    /// non-empty `x`.
    pub fn try_rmsnorm_rows(
        &self,
        x: &mut [f32],
        cols: usize,
        gamma: &[f32],
        eps: f32,
    ) -> Result<(), CudaError> {
        if !ops::has_rows("rmsnorm_rows", x.len(), cols) {
            return Ok(());
        }
        assert_eq!(gamma.len(), cols, "rmsnorm_rows: gamma is not {cols} long");
        let cols32 = fit_u32("rmsnorm_rows", "cols", cols)?;
        let rows = x.len() / cols;
        let mut dev = self.upload(x)?;
        let gamma_dev = self.upload(gamma)?;
        let (rows64, n) = (rows as u64, cols as f32);
        let mut launch = self.stream.launch_builder(&self.kernels.rmsnorm_rows);
        launch
            .arg(&mut dev)
            .arg(&gamma_dev)
            .arg(&rows64)
            .arg(&cols32)
            .arg(&n)
            .arg(&eps);
        // SAFETY: x holds rows·cols values, gamma cols.
        unsafe { launch.launch(row_grid(rows)) }.map_err(drv("cuLaunchKernel"))?;
        self.download_into(&dev, x)
    }

    /// [`Backend::swiglu`] on the device, returning device errors instead of falling back.
    ///
    /// # Panics
    ///
    /// As the CPU reference: if `2·cols` does not divide a non-empty `gate_up`.
    pub fn try_swiglu(&self, gate_up: &[f32], cols: usize) -> Result<Vec<f32>, CudaError> {
        if !ops::has_rows("swiglu", gate_up.len(), 2 * cols) {
            return Ok(Vec::new());
        }
        let rows = gate_up.len() / (2 * cols);
        let input = self.upload(gate_up)?;
        let mut out = self.zeros(rows * cols)?;
        let (rows64, cols64) = (rows as u64, cols as u64);
        let mut launch = self.stream.launch_builder(&self.kernels.swiglu);
        launch.arg(&input).arg(&mut out).arg(&rows64).arg(&cols64);
        // SAFETY: the kernel reads rows·2·cols values and writes rows·cols.
        unsafe { launch.launch(element_grid(self.sm_count, rows * cols)) }
            .map_err(drv("cuLaunchKernel"))?;
        self.download(&out)
    }

    /// [`Backend::rope`] on the device, returning device errors instead of falling back. Each
    /// row's angles are gathered from the one table on the host, so both backends rotate by
    /// the same bits.
    ///
    /// # Panics
    ///
    /// As the CPU reference, if the shapes disagree or a position is past the table.
    pub fn try_rope(
        &self,
        x: &mut [f32],
        width: usize,
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        table: &crate::RopeTable,
    ) -> Result<(), CudaError> {
        ops::check_rope_shapes(x.len(), width, heads, head_dim, positions, table);
        let pairs = head_dim / 2;
        if x.is_empty() || heads == 0 || pairs == 0 {
            return Ok(());
        }
        let heads32 = fit_u32("rope", "heads", heads)?;
        let head_dim32 = fit_u32("rope", "head_dim", head_dim)?;
        let angles: Vec<f32> = positions
            .iter()
            .flat_map(|&p| table.at(p).iter().flat_map(|&(c, s)| [c, s]))
            .collect();
        let mut dev = self.upload(x)?;
        let angles_dev = self.upload(&angles)?;
        let (rows64, width64) = (positions.len() as u64, width as u64);
        let mut launch = self.stream.launch_builder(&self.kernels.rope);
        launch
            .arg(&mut dev)
            .arg(&angles_dev)
            .arg(&rows64)
            .arg(&width64)
            .arg(&heads32)
            .arg(&head_dim32);
        // SAFETY: rows·heads·pairs pairs, each inside its row of `width` (heads·head_dim ≤
        // width, checked), angles rows·pairs pairs.
        unsafe { launch.launch(element_grid(self.sm_count, positions.len() * heads * pairs)) }
            .map_err(drv("cuLaunchKernel"))?;
        self.download_into(&dev, x)
    }

    /// [`Backend::attention_causal`] on the device, returning device errors instead of falling
    /// back (a cache longer than a block's shared memory holds scores for is one).
    ///
    /// # Panics
    ///
    /// As the CPU reference, if the shapes disagree or there are more queries than keys.
    #[allow(clippy::too_many_arguments)]
    pub fn try_attention_causal(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Result<Vec<f32>, CudaError> {
        let (queries, keys) =
            ops::check_causal_shapes(q.len(), k.len(), v.len(), heads, kv_heads, head_dim);
        if queries == 0 {
            return Ok(Vec::new());
        }
        let op = "attention_causal";
        let score_limit = (SHARED_BYTES - 64) / std::mem::size_of::<f32>();
        if keys > score_limit {
            return Err(CudaError::TooLarge {
                op,
                what: "keys",
                value: keys,
                limit: score_limit,
            });
        }
        if heads > GRID_YZ_MAX {
            return Err(CudaError::TooLarge {
                op,
                what: "heads",
                value: heads,
                limit: GRID_YZ_MAX,
            });
        }
        let dims = [
            fit_u32(op, "queries", queries)?,
            fit_u32(op, "keys", keys)?,
            fit_u32(op, "heads", heads)?,
            fit_u32(op, "kv_heads", kv_heads)?,
            fit_u32(op, "head_dim", head_dim)?,
        ];
        let cfg = LaunchConfig {
            grid_dim: (dims[0], dims[2], 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: (keys * std::mem::size_of::<f32>()) as u32,
        };
        let q_dev = self.upload(q)?;
        let k_dev = self.upload(k)?;
        let v_dev = self.upload(v)?;
        let mut out_dev = self.zeros(q.len())?;
        let mut launch = self.stream.launch_builder(&self.kernels.attention_causal);
        launch.arg(&q_dev).arg(&k_dev).arg(&v_dev).arg(&mut out_dev);
        for d in &dims {
            launch.arg(d);
        }
        launch.arg(&scale);
        // SAFETY: q and out hold queries·heads·head_dim values, k and v keys·kv_heads·head_dim
        // (checked), every visible key is below keys, and the score row fits shared memory.
        unsafe { launch.launch(cfg) }.map_err(drv("cuLaunchKernel"))?;
        self.download(&out_dev)
    }

    /// [`Backend::embedding_gather`] on the device, returning device errors instead of falling
    /// back; an id outside the table is the same [`crate::Error`] as on the CPU (checked on the
    /// host before anything is copied).
    pub fn try_embedding_gather(
        &self,
        table: &[f32],
        dim: usize,
        ids: &[u32],
    ) -> Result<Result<Vec<f32>, crate::Error>, CudaError> {
        let vocab = table.len().checked_div(dim).unwrap_or(0);
        if ids.is_empty() || dim == 0 || ids.iter().any(|&id| id as usize >= vocab) {
            // Empty, or the CPU's error for the first bad id.
            return Ok(ops::embedding_gather(table, dim, ids));
        }
        let table_dev = self.upload(&table[..vocab * dim])?;
        let ids_dev = self.upload(ids)?;
        let len = ids.len() * dim;
        let mut out_dev = self.zeros(len)?;
        let (count, dim64) = (ids.len() as u64, dim as u64);
        let mut launch = self.stream.launch_builder(&self.kernels.embedding_gather);
        launch
            .arg(&table_dev)
            .arg(&ids_dev)
            .arg(&mut out_dev)
            .arg(&count)
            .arg(&dim64);
        // SAFETY: every id is below vocab (checked above), so every read is inside the table.
        unsafe { launch.launch(element_grid(self.sm_count, len)) }
            .map_err(drv("cuLaunchKernel"))?;
        Ok(Ok(self.download(&out_dev)?))
    }

    /// [`Backend::add_inplace`] on the device, returning device errors instead of falling back.
    ///
    /// # Panics
    ///
    /// If the lengths differ.
    pub fn try_add_inplace(&self, x: &mut [f32], y: &[f32]) -> Result<(), CudaError> {
        assert_eq!(x.len(), y.len(), "add: lengths differ");
        if x.is_empty() {
            return Ok(());
        }
        let mut x_dev = self.upload(x)?;
        let y_dev = self.upload(y)?;
        let len = x.len() as u64;
        let mut launch = self.stream.launch_builder(&self.kernels.add_inplace);
        launch.arg(&mut x_dev).arg(&y_dev).arg(&len);
        // SAFETY: both buffers hold len values.
        unsafe { launch.launch(element_grid(self.sm_count, x.len())) }
            .map_err(drv("cuLaunchKernel"))?;
        self.download_into(&x_dev, x)
    }

    /// [`Backend::attention`] on the device, returning device errors instead of falling back.
    ///
    /// # Panics
    ///
    /// As the CPU reference, if `q`, `k`, `v` or `mask` do not match the dimensions.
    #[allow(clippy::too_many_arguments)]
    pub fn try_attention(
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
    ) -> Result<Vec<f32>, CudaError> {
        let len = batch * seq * heads * head_dim;
        assert!(
            q.len() == len && k.len() == len && v.len() == len,
            "attention: q/k/v are not {len} long"
        );
        assert_eq!(
            mask.len(),
            batch * seq,
            "attention: mask is not batch × seq"
        );
        if len == 0 {
            return Ok(Vec::new());
        }
        let (cfg, [seq32, heads32, head_dim32]) = attention_plan(batch, seq, heads, head_dim)?;
        let (keys, key_count) = attention_keys(mask, batch, seq);
        let q_dev = self.upload(q)?;
        let k_dev = self.upload(k)?;
        let v_dev = self.upload(v)?;
        let mask_dev = self.upload(mask)?;
        let keys_dev = self.upload(&keys)?;
        let count_dev = self.upload(&key_count)?;
        let mut out_dev = self.zeros(len)?;
        let mut launch = self.stream.launch_builder(&self.kernels.attention);
        launch
            .arg(&q_dev)
            .arg(&k_dev)
            .arg(&v_dev)
            .arg(&mask_dev)
            .arg(&keys_dev)
            .arg(&count_dev)
            .arg(&mut out_dev)
            .arg(&seq32)
            .arg(&heads32)
            .arg(&head_dim32)
            .arg(&scale);
        // SAFETY: q, k, v, out hold batch·seq·heads·head_dim values, mask and keys batch·seq,
        // key_count batch, each key index is below seq, and the score row fits shared memory.
        unsafe { launch.launch(cfg) }.map_err(drv("cuLaunchKernel"))?;
        self.download(&out_dev)
    }

    /// [`Backend::mean_pool`] on the device, returning device errors instead of falling back.
    ///
    /// # Panics
    ///
    /// As the CPU reference, if `x` or `mask` do not match the dimensions.
    pub fn try_mean_pool(
        &self,
        x: &[f32],
        mask: &[u8],
        batch: usize,
        seq: usize,
        cols: usize,
    ) -> Result<Vec<f32>, CudaError> {
        assert_eq!(
            x.len(),
            batch * seq * cols,
            "mean_pool: x is not batch × seq × cols"
        );
        assert_eq!(
            mask.len(),
            batch * seq,
            "mean_pool: mask is not batch × seq"
        );
        if x.is_empty() {
            // No tokens or no columns: zeros, as on the CPU.
            return Ok(ops::mean_pool(x, mask, batch, seq, cols));
        }
        let op = "mean_pool";
        let (batch32, seq32, cols32) = (
            fit_u32(op, "batch", batch)?,
            fit_u32(op, "seq", seq)?,
            fit_u32(op, "cols", cols)?,
        );
        let x_dev = self.upload(x)?;
        let mask_dev = self.upload(mask)?;
        let len = batch * cols;
        let mut out_dev = self.zeros(len)?;
        let mut launch = self.stream.launch_builder(&self.kernels.mean_pool);
        launch
            .arg(&x_dev)
            .arg(&mask_dev)
            .arg(&mut out_dev)
            .arg(&batch32)
            .arg(&seq32)
            .arg(&cols32);
        // SAFETY: x holds batch·seq·cols values, mask batch·seq, out batch·cols.
        unsafe { launch.launch(element_grid(self.sm_count, len)) }
            .map_err(drv("cuLaunchKernel"))?;
        self.download(&out_dev)
    }

    /// [`Backend::l2_normalize_rows`] on the device, returning device errors instead of falling
    /// back.
    ///
    /// # Panics
    ///
    /// If `cols` does not divide a non-empty `x`.
    pub fn try_l2_normalize_rows(&self, x: &mut [f32], cols: usize) -> Result<(), CudaError> {
        self.row_op(
            &self.kernels.l2_normalize_rows,
            "l2_normalize_rows",
            x,
            cols,
        )
    }

    /// Runs one op on seeded random inputs on the CPU and on the device and counts the output
    /// values whose bits differ.
    pub fn compare_with_cpu(&self, probe: &Probe, seed: u64) -> Result<Comparison, CudaError> {
        let cpu = &self.cpu;
        let rng = &mut SplitMix64::new(seed);
        let random = |rng: &mut SplitMix64, len: usize, scale: f32| -> Vec<f32> {
            (0..len).map(|_| rng.next_f32() * scale).collect()
        };
        let (want, got) = match *probe {
            Probe::Gemm { m, k, n, bias } => {
                let a = random(rng, m * k, 1.0);
                let b = random(rng, k * n, 1.0);
                let bias = bias.then(|| random(rng, n, 1.0));
                (
                    cpu.gemm_bias(&a, &b, bias.as_deref(), m, k, n),
                    self.try_gemm_bias(&a, &b, bias.as_deref(), m, k, n)?,
                )
            }
            Probe::Gelu { len } => {
                // Wide enough to reach every branch of erf and exp.
                let x = random(rng, len, 12.0);
                let mut want = x.clone();
                cpu.gelu(&mut want);
                let mut got = x;
                self.try_gelu(&mut got)?;
                (want, got)
            }
            Probe::Softmax { rows, cols } => {
                let x = random(rng, rows * cols, 30.0);
                let mut want = x.clone();
                cpu.softmax_rows(&mut want, cols);
                let mut got = x;
                self.try_softmax_rows(&mut got, cols)?;
                (want, got)
            }
            Probe::Layernorm { rows, cols } => {
                let x = random(rng, rows * cols, 4.0);
                let gamma = random(rng, cols, 1.0);
                let beta = random(rng, cols, 1.0);
                let mut want = x.clone();
                ops::layernorm_rows(&mut want, cols, &gamma, &beta, 1e-12);
                let mut got = x;
                self.try_layernorm_rows(&mut got, cols, &gamma, &beta, 1e-12)?;
                (want, got)
            }
            Probe::Gather { vocab, dim, ids } => {
                let table = random(rng, vocab * dim, 1.0);
                let ids: Vec<u32> = (0..ids)
                    .map(|_| (rng.next_u64() % vocab.max(1) as u64) as u32)
                    .collect();
                let want = ops::embedding_gather(&table, dim, &ids).unwrap_or_default();
                let got = self
                    .try_embedding_gather(&table, dim, &ids)?
                    .unwrap_or_default();
                (want, got)
            }
            Probe::Add { len } => {
                let x = random(rng, len, 1.0);
                let y = random(rng, len, 1.0);
                let mut want = x.clone();
                ops::add_inplace(&mut want, &y);
                let mut got = x;
                self.try_add_inplace(&mut got, &y)?;
                (want, got)
            }
            Probe::Attention {
                batch,
                seq,
                heads,
                head_dim,
                padded,
            } => {
                let len = batch * seq * heads * head_dim;
                let (q, k, v) = (
                    random(rng, len, 1.0),
                    random(rng, len, 1.0),
                    random(rng, len, 1.0),
                );
                // Sequence b keeps seq - b·(seq/4)/batch tokens when padded (the first full).
                let mask: Vec<u8> = (0..batch * seq)
                    .map(|i| {
                        let (b, t) = (i / seq, i % seq);
                        u8::from(!padded || t < seq - b * (seq / 4) / batch.max(1))
                    })
                    .collect();
                let scale = 1.0 / (head_dim as f32).sqrt();
                (
                    ops::attention(&q, &k, &v, &mask, batch, seq, heads, head_dim, scale),
                    self.try_attention(&q, &k, &v, &mask, batch, seq, heads, head_dim, scale)?,
                )
            }
            Probe::MeanPool { batch, seq, cols } => {
                let x = random(rng, batch * seq * cols, 1.0);
                let mask: Vec<u8> = (0..batch * seq)
                    .map(|i| u8::from(i % seq < seq - (i / seq) % (seq + 1)))
                    .collect();
                (
                    ops::mean_pool(&x, &mask, batch, seq, cols),
                    self.try_mean_pool(&x, &mask, batch, seq, cols)?,
                )
            }
            Probe::L2 { rows, cols } => {
                let x = random(rng, rows * cols, 1.0);
                let mut want = x.clone();
                ops::l2_normalize_rows(&mut want, cols);
                let mut got = x;
                self.try_l2_normalize_rows(&mut got, cols)?;
                (want, got)
            }
        };
        let mismatches = if want.len() == got.len() {
            want.iter()
                .zip(&got)
                .filter(|(w, g)| w.to_bits() != g.to_bits())
                .count()
        } else {
            want.len().max(got.len())
        };
        Ok(Comparison {
            probe: probe.to_string(),
            values: want.len(),
            mismatches,
        })
    }

    /// Times the GEMM kernel (with a bias) and, when `libcublas` loads, cuBLAS `sgemm` (no
    /// bias, default FP32 math, no TF32) on the same device-resident `m×k · k×n` operands: one
    /// warm-up run each, then the mean of `reps` runs between two events.
    pub fn time_gemm(
        &self,
        m: usize,
        k: usize,
        n: usize,
        reps: usize,
    ) -> Result<GemmTiming, CudaError> {
        // Events are used nowhere else: a symbol cudarc cannot find would panic here first.
        no_panic("time_gemm", || self.time_gemm_unguarded(m, k, n, reps))
    }

    fn time_gemm_unguarded(
        &self,
        m: usize,
        k: usize,
        n: usize,
        reps: usize,
    ) -> Result<GemmTiming, CudaError> {
        let reps = reps.max(1);
        let mut rng = SplitMix64::new(0x6e33);
        let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.next_f32()).collect() };
        let a = self.upload(&random(m * k))?;
        let b = self.upload(&random(k * n))?;
        let bias = self.upload(&random(n))?;
        let mut out = self.zeros(m * n)?;
        let ours = self.time_reps(reps, || {
            self.launch_gemm(&a, &b, Some(&bias), &mut out, m, k, n)
        })?;
        // SAFETY: only tries to dlopen libcublas by name and close it again.
        let cublas = if unsafe { cudarc::cublas::sys::is_culib_present() } {
            match no_panic("cuBLAS", || {
                self.time_cublas(&a, &b, &mut out, m, k, n, reps)
            }) {
                Ok(s) => Ok(s),
                Err(err) => Err(err.to_string()),
            }
        } else {
            Err("libcublas not found".to_string())
        };
        Ok(GemmTiming {
            m,
            k,
            n,
            ours_s: ours,
            cublas_s: cublas,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn time_cublas(
        &self,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        m: usize,
        k: usize,
        n: usize,
        reps: usize,
    ) -> Result<f64, CudaError> {
        use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
        let cublas_err = |e: cudarc::cublas::result::CublasError| CudaError::Cublas {
            reason: e.to_string(),
        };
        let blas = CudaBlas::new(self.stream.clone()).map_err(cublas_err)?;
        let dim = |what, v| {
            c_int::try_from(v).map_err(|_| CudaError::TooLarge {
                op: "cublas sgemm",
                what,
                value: v,
                limit: c_int::MAX as usize,
            })
        };
        let (mi, ki, ni) = (dim("m", m)?, dim("k", k)?, dim("n", n)?);
        // Row-major out = a·b is column-major outᵀ = bᵀ·aᵀ.
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: ni,
            n: mi,
            k: ki,
            alpha: 1.0f32,
            lda: ni,
            ldb: ki,
            beta: 0.0f32,
            ldc: ni,
        };
        self.time_reps(reps, || {
            // SAFETY: b is k×n (ld n), a is m×k (ld k), out is m×n (ld n), as configured.
            unsafe { blas.gemm(cfg, b, a, &mut *out) }.map_err(cublas_err)
        })
    }

    /// Mean seconds of `run` over `reps` launches after one warm-up, timed by device events.
    fn time_reps(
        &self,
        reps: usize,
        mut run: impl FnMut() -> Result<(), CudaError>,
    ) -> Result<f64, CudaError> {
        run()?;
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(flags).map_err(drv("cuEventCreate"))?;
        let end = self.ctx.new_event(flags).map_err(drv("cuEventCreate"))?;
        start.record(&self.stream).map_err(drv("cuEventRecord"))?;
        for _ in 0..reps {
            run()?;
        }
        end.record(&self.stream).map_err(drv("cuEventRecord"))?;
        let ms = start.elapsed_ms(&end).map_err(drv("cuEventElapsedTime"))?;
        Ok(f64::from(ms) / 1e3 / reps as f64)
    }
}

/// One op at one shape, for [`CudaBackend::compare_with_cpu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `gemm_bias` of `m×k · k×n`, with or without a bias.
    Gemm {
        m: usize,
        k: usize,
        n: usize,
        bias: bool,
    },
    /// `gelu` over `len` values in [-12, 12).
    Gelu { len: usize },
    /// `softmax_rows` over values in [-30, 30).
    Softmax { rows: usize, cols: usize },
    /// `layernorm_rows` with random gamma and beta, eps 1e-12.
    Layernorm { rows: usize, cols: usize },
    /// `embedding_gather` of `ids` random ids from a `vocab × dim` table.
    Gather {
        vocab: usize,
        dim: usize,
        ids: usize,
    },
    /// `add_inplace` of two `len` vectors.
    Add { len: usize },
    /// `attention` with scale `1/√head_dim`; when `padded`, later sequences lose up to a
    /// quarter of their tokens.
    Attention {
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
        padded: bool,
    },
    /// `mean_pool`, sequence b keeping its first `seq - b % (seq + 1)` tokens (the first
    /// sequence is full, sequence `seq` is empty).
    MeanPool {
        batch: usize,
        seq: usize,
        cols: usize,
    },
    /// `l2_normalize_rows`.
    L2 { rows: usize, cols: usize },
}

impl Probe {
    /// Small shapes with ragged tiles and padding, run by [`CudaBackend::on_device`].
    pub fn self_check() -> Vec<Probe> {
        vec![
            Probe::Gemm {
                m: 37,
                k: 45,
                n: 29,
                bias: true,
            },
            Probe::Gemm {
                m: 150,
                k: 17,
                n: 140,
                bias: false,
            },
            Probe::Gelu { len: 4099 },
            Probe::Softmax { rows: 9, cols: 37 },
            Probe::Layernorm { rows: 5, cols: 384 },
            Probe::Gather {
                vocab: 50,
                dim: 24,
                ids: 13,
            },
            Probe::Add { len: 1001 },
            Probe::Attention {
                batch: 3,
                seq: 11,
                heads: 2,
                head_dim: 8,
                padded: true,
            },
            Probe::MeanPool {
                batch: 9,
                seq: 7,
                cols: 16,
            },
            Probe::L2 { rows: 4, cols: 33 },
        ]
    }

    /// The shapes of all-MiniLM-L6-v2 (hidden 384, 12 heads of 32, FFN 1536, vocabulary
    /// 30522) for `batch` sequences of `seq` tokens.
    pub fn minilm(batch: usize, seq: usize) -> Vec<Probe> {
        let t = batch * seq;
        vec![
            Probe::Gemm {
                m: t,
                k: 384,
                n: 384,
                bias: true,
            },
            Probe::Gemm {
                m: t,
                k: 384,
                n: 1536,
                bias: true,
            },
            Probe::Gemm {
                m: t,
                k: 1536,
                n: 384,
                bias: true,
            },
            Probe::Gelu { len: t * 1536 },
            Probe::Softmax {
                rows: batch * 12 * seq,
                cols: seq,
            },
            Probe::Layernorm { rows: t, cols: 384 },
            Probe::Gather {
                vocab: 30_522,
                dim: 384,
                ids: t,
            },
            Probe::Add { len: t * 384 },
            Probe::Attention {
                batch,
                seq,
                heads: 12,
                head_dim: 32,
                padded: true,
            },
            Probe::MeanPool {
                batch,
                seq,
                cols: 384,
            },
            Probe::L2 {
                rows: batch,
                cols: 384,
            },
        ]
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Probe::Gemm { m, k, n, bias } => {
                let plus = if bias { " + bias" } else { "" };
                write!(f, "gemm {m}×{k}·{k}×{n}{plus}")
            }
            Probe::Gelu { len } => write!(f, "gelu {len}"),
            Probe::Softmax { rows, cols } => write!(f, "softmax {rows}×{cols}"),
            Probe::Layernorm { rows, cols } => write!(f, "layernorm {rows}×{cols}"),
            Probe::Gather { vocab, dim, ids } => {
                write!(f, "embedding_gather {ids} of {vocab}×{dim}")
            }
            Probe::Add { len } => write!(f, "add_inplace {len}"),
            Probe::Attention {
                batch,
                seq,
                heads,
                head_dim,
                padded,
            } => {
                let pad = if padded { ", padded" } else { "" };
                write!(f, "attention b{batch} s{seq} h{heads}×{head_dim}{pad}")
            }
            Probe::MeanPool { batch, seq, cols } => write!(f, "mean_pool {batch}×{seq}×{cols}"),
            Probe::L2 { rows, cols } => write!(f, "l2_normalize {rows}×{cols}"),
        }
    }
}

/// The outcome of [`CudaBackend::compare_with_cpu`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// The probe, as displayed.
    pub probe: String,
    /// Output values compared.
    pub values: usize,
    /// Values whose bits differ from the CPU's (all of them if the lengths differ).
    pub mismatches: usize,
}

/// The outcome of [`CudaBackend::time_gemm`].
#[derive(Debug, Clone, PartialEq)]
pub struct GemmTiming {
    /// Rows of `a` and the result.
    pub m: usize,
    /// Columns of `a`, rows of `b`.
    pub k: usize,
    /// Columns of `b` and the result.
    pub n: usize,
    /// Mean seconds per call of this crate's exact GEMM (with bias).
    pub ours_s: f64,
    /// Mean seconds per cuBLAS `sgemm`, or why it could not run.
    pub cublas_s: Result<f64, String>,
}

impl GemmTiming {
    /// Floating-point operations of one product, `2·m·k·n`.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.k as f64 * self.n as f64
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
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
        let r = self.try_gemm_bias(a, b, bias, m, k, n);
        self.or_cpu("gemm_bias", r, || self.cpu.gemm_bias(a, b, bias, m, k, n))
    }

    fn gemm_packed(&self, a: &[f32], w: &PackedMatrix, bias: Option<&[f32]>, m: usize) -> Vec<f32> {
        let r = self.try_gemm_packed(a, w, bias, m);
        self.or_cpu("gemm_packed", r, || self.cpu.gemm_packed(a, w, bias, m))
    }

    fn gelu(&self, x: &mut [f32]) {
        if let Err(err) = self.try_gelu(x) {
            self.or_cpu("gelu", Err(err), || self.cpu.gelu(x));
        }
    }

    fn softmax_rows(&self, x: &mut [f32], cols: usize) {
        if let Err(err) = self.try_softmax_rows(x, cols) {
            self.or_cpu("softmax_rows", Err(err), || self.cpu.softmax_rows(x, cols));
        }
    }

    fn layernorm_rows(&self, x: &mut [f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32) {
        if let Err(err) = self.try_layernorm_rows(x, cols, gamma, beta, eps) {
            self.or_cpu("layernorm_rows", Err(err), || {
                ops::layernorm_rows(x, cols, gamma, beta, eps)
            });
        }
    }

    fn rmsnorm_rows(&self, x: &mut [f32], cols: usize, gamma: &[f32], eps: f32) {
        if let Err(err) = self.try_rmsnorm_rows(x, cols, gamma, eps) {
            self.or_cpu("rmsnorm_rows", Err(err), || {
                ops::rmsnorm_rows(x, cols, gamma, eps)
            });
        }
    }

    fn swiglu(&self, gate_up: &[f32], cols: usize) -> Vec<f32> {
        let r = self.try_swiglu(gate_up, cols);
        self.or_cpu("swiglu", r, || ops::swiglu(gate_up, cols))
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
        if let Err(err) = self.try_rope(x, width, heads, head_dim, positions, table) {
            self.or_cpu("rope", Err(err), || {
                ops::rope(x, width, heads, head_dim, positions, table)
            });
        }
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
        let r = self.try_attention_causal(q, k, v, heads, kv_heads, head_dim, scale);
        self.or_cpu("attention_causal", r, || {
            ops::attention_causal(q, k, v, heads, kv_heads, head_dim, scale)
        })
    }

    fn embedding_gather(
        &self,
        table: &[f32],
        dim: usize,
        ids: &[u32],
    ) -> Result<Vec<f32>, crate::Error> {
        let r = self.try_embedding_gather(table, dim, ids);
        self.or_cpu("embedding_gather", r, || {
            ops::embedding_gather(table, dim, ids)
        })
    }

    fn add_inplace(&self, x: &mut [f32], y: &[f32]) {
        if let Err(err) = self.try_add_inplace(x, y) {
            self.or_cpu("add_inplace", Err(err), || ops::add_inplace(x, y));
        }
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
        let r = self.try_attention(q, k, v, mask, batch, seq, heads, head_dim, scale);
        self.or_cpu("attention", r, || {
            ops::attention(q, k, v, mask, batch, seq, heads, head_dim, scale)
        })
    }

    fn mean_pool(&self, x: &[f32], mask: &[u8], batch: usize, seq: usize, cols: usize) -> Vec<f32> {
        let r = self.try_mean_pool(x, mask, batch, seq, cols);
        self.or_cpu("mean_pool", r, || ops::mean_pool(x, mask, batch, seq, cols))
    }

    fn l2_normalize_rows(&self, x: &mut [f32], cols: usize) {
        if let Err(err) = self.try_l2_normalize_rows(x, cols) {
            self.or_cpu("l2_normalize_rows", Err(err), || {
                ops::l2_normalize_rows(x, cols)
            });
        }
    }
}

/// The GEMM block tile (128, 64 or 32) and launch: the largest tile that still gives every SM
/// a block. Every tile computes each element identically, so the choice never changes bits.
fn gemm_plan(m: usize, n: usize, sm_count: usize) -> Result<(usize, LaunchConfig), CudaError> {
    let blocks = |t: usize| m.div_ceil(t) * n.div_ceil(t);
    let tile = if blocks(128) >= sm_count {
        128
    } else if blocks(64) >= sm_count {
        64
    } else {
        32
    };
    let grid_y = m.div_ceil(tile);
    if grid_y > GRID_YZ_MAX {
        return Err(CudaError::TooLarge {
            op: "gemm_bias",
            what: "m",
            value: m,
            limit: GRID_YZ_MAX * tile,
        });
    }
    let cfg = LaunchConfig {
        grid_dim: (
            fit_u32("gemm_bias", "n", n.div_ceil(tile))?,
            grid_y as u32,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((tile, cfg))
}

/// A grid-stride launch over `len` elements: at most 32 blocks per SM.
fn element_grid(sm_count: usize, len: usize) -> LaunchConfig {
    let blocks = len
        .div_ceil(ELEMENT_THREADS as usize)
        .clamp(1, sm_count * 32);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (ELEMENT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (grid-stride beyond [`GRID_YZ_MAX`] rows).
fn row_grid(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, GRID_YZ_MAX) as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The attention launch, one block per (query, head, sequence) with the score row in dynamic
/// shared memory, and `seq`, `heads`, `head_dim` as kernel arguments.
fn attention_plan(
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<(LaunchConfig, [u32; 3]), CudaError> {
    let op = "attention";
    let too_large = |what, value, limit| CudaError::TooLarge {
        op,
        what,
        value,
        limit,
    };
    let score_limit = (SHARED_BYTES - 64) / std::mem::size_of::<f32>();
    if seq > score_limit {
        return Err(too_large("seq", seq, score_limit));
    }
    for (what, value) in [("heads", heads), ("batch", batch)] {
        if value > GRID_YZ_MAX {
            return Err(too_large(what, value, GRID_YZ_MAX));
        }
    }
    let head_dim32 = fit_u32(op, "head_dim", head_dim)?;
    let (seq32, heads32) = (seq as u32, heads as u32);
    let cfg = LaunchConfig {
        grid_dim: (seq32, heads32, batch as u32),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: (seq * std::mem::size_of::<f32>()) as u32,
    };
    Ok((cfg, [seq32, heads32, head_dim32]))
}

/// Each sequence's unmasked positions in increasing order (at `keys[b·seq..]`) and how many
/// there are: the key lists of the attention kernel.
fn attention_keys(mask: &[u8], batch: usize, seq: usize) -> (Vec<u32>, Vec<u32>) {
    let mut keys = vec![0u32; batch * seq];
    let mut key_count = vec![0u32; batch];
    for (b, count) in key_count.iter_mut().enumerate() {
        let row = &mut keys[b * seq..(b + 1) * seq];
        let mut c = 0;
        for t in (0..seq).filter(|t| mask[b * seq + t] != 0) {
            row[c] = t as u32;
            c += 1;
        }
        *count = c as u32;
    }
    (keys, key_count)
}

/// `value` as a kernel's `unsigned int` argument.
fn fit_u32(op: &'static str, what: &'static str, value: usize) -> Result<u32, CudaError> {
    u32::try_from(value).map_err(|_| CudaError::TooLarge {
        op,
        what,
        value,
        limit: u32::MAX as usize,
    })
}

/// The newest virtual architecture this NVRTC supports that the device (`major.minor`) can run:
/// PTX for an older architecture is JIT-compiled forward by the driver.
fn nvrtc_arch(major: i32, minor: i32) -> String {
    let want = major * 10 + minor;
    let mut count: c_int = 0;
    // SAFETY: the out-pointers are valid; `archs` has the length NVRTC reported.
    let supported = unsafe {
        let mut archs = Vec::new();
        if nvrtc::sys::nvrtcGetNumSupportedArchs(&mut count)
            .result()
            .is_ok()
        {
            archs.resize(usize::try_from(count).unwrap_or(0), 0);
            if nvrtc::sys::nvrtcGetSupportedArchs(archs.as_mut_ptr())
                .result()
                .is_err()
            {
                archs.clear();
            }
        }
        archs
    };
    let best = supported
        .into_iter()
        .filter(|a| *a <= want)
        .max()
        .unwrap_or(want);
    format!("compute_{best}")
}

/// NVRTC's version, e.g. `"12.9"`, part of the cache key.
fn nvrtc_version() -> String {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: both out-pointers are valid.
    match unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }.result() {
        Ok(()) => format!("{major}.{minor}"),
        Err(_) => "unknown".to_string(),
    }
}

/// The full NVRTC option list for `arch`.
fn nvrtc_options(arch: &str) -> Vec<String> {
    let mut options: Vec<String> = NVRTC_OPTIONS.iter().map(|o| o.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    options
}

/// An NVRTC program, destroyed on drop.
struct Program(nvrtc::sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here. A failure leaks it.
        let _ = unsafe { nvrtc::result::destroy_program(self.0) };
    }
}

/// NUL-terminated C characters from NVRTC as text.
fn c_text(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles `source` (with `math.cuh` as its header) to PTX for `arch`.
pub(crate) fn compile(file: &'static str, source: &str, arch: &str) -> Result<String, CudaError> {
    let fail = |reason: String, log: String| CudaError::Compile {
        file,
        arch: arch.to_string(),
        reason,
        log,
    };
    let c = |s: &str| CString::new(s).map_err(|_| fail("a NUL byte in the text".into(), s.into()));
    let (src, name) = (c(source)?, c(file)?);
    let (header, header_name) = (c(HEADER.1)?, c(HEADER.0)?);
    let headers = [header.as_ptr()];
    let names = [header_name.as_ptr()];
    let mut prog = std::mem::MaybeUninit::uninit();
    // SAFETY: every pointer is a live NUL-terminated string for the duration of the call, and
    // the program is destroyed (by `Program`) before they are dropped.
    unsafe {
        nvrtc::sys::nvrtcCreateProgram(
            prog.as_mut_ptr(),
            src.as_ptr(),
            name.as_ptr(),
            1,
            headers.as_ptr(),
            names.as_ptr(),
        )
    }
    .result()
    .map_err(|e| fail(format!("nvrtcCreateProgram: {e:?}"), String::new()))?;
    // SAFETY: nvrtcCreateProgram succeeded, so it wrote the handle.
    let prog = Program(unsafe { prog.assume_init() });
    let options = nvrtc_options(arch);
    // SAFETY: `prog` is a live program; the options contain no NUL.
    let compiled = unsafe { nvrtc::result::compile_program(prog.0, &options) };
    // SAFETY: `prog` is a live program.
    let log = unsafe { nvrtc::result::get_program_log(prog.0) }
        .map(|l| c_text(&l))
        .unwrap_or_default();
    compiled.map_err(|e| fail(format!("{e:?}"), log.clone()))?;
    if !log.trim().is_empty() {
        tracing::debug!(file, %log, "nvrtc log");
    }
    // SAFETY: `prog` compiled successfully.
    let ptx = unsafe { nvrtc::result::get_ptx(prog.0) }
        .map_err(|e| fail(format!("nvrtcGetPTX: {e:?}"), log))?;
    Ok(c_text(&ptx))
}

/// The PTX cache directory: `$PROOFMESH_KERNEL_CACHE`, else `~/.cache/proofmesh/kernels`; none
/// if neither that variable nor `HOME` is set.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os(CACHE_ENV) {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| Path::new(&home).join(".cache/proofmesh/kernels")),
    }
}

/// keccak256 over everything that determines the PTX: the source and header, the options, the
/// architecture and the NVRTC version.
fn cache_key(source: &str, arch: &str, nvrtc: &str) -> String {
    let mut text = String::from("proofmesh-kernels/1\0");
    for part in [
        HEADER.1,
        source,
        &nvrtc_options(arch).join(" "),
        arch,
        nvrtc,
    ] {
        text.push_str(part);
        text.push('\0');
    }
    crate::id::hex32(&crate::keccak256(text.as_bytes()))
}

/// Cached PTX, if the file is there, readable and plausible; anything else is a miss.
fn cache_read(dir: &Path, key: &str) -> Option<String> {
    let ptx = std::fs::read_to_string(dir.join(format!("{key}.ptx"))).ok()?;
    (ptx.contains(".entry") && !ptx.contains('\0')).then_some(ptx)
}

/// Stores PTX under `key` (through a temporary file and a rename, so readers never see half a
/// file); failures are logged and otherwise ignored.
fn cache_write(dir: &Path, key: &str, ptx: &str) {
    let tmp = dir.join(format!("{key}.ptx.{}.tmp", std::process::id()));
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, ptx))
        .and_then(|()| std::fs::rename(&tmp, dir.join(format!("{key}.ptx"))));
    if let Err(err) = result {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(dir = %dir.display(), %err, "cannot write the kernel cache");
    }
}

/// PTX compiled in this process, by cache key: each source is compiled at most once per
/// process and architecture.
fn compiled_ptx() -> &'static Mutex<HashMap<String, Arc<str>>> {
    static PTX: OnceLock<Mutex<HashMap<String, Arc<str>>>> = OnceLock::new();
    PTX.get_or_init(Mutex::default)
}

/// PTX for `file` from this process, the disk cache or NVRTC (`fresh` skips the disk cache).
fn ptx_for(
    file: &'static str,
    source: &str,
    arch: &str,
    fresh: bool,
) -> Result<Arc<str>, CudaError> {
    let key = cache_key(source, arch, &nvrtc_version());
    let mut memo = compiled_ptx()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !fresh && let Some(ptx) = memo.get(&key) {
        return Ok(ptx.clone());
    }
    let dir = cache_dir();
    let cached = if fresh {
        None
    } else {
        dir.as_deref().and_then(|d| cache_read(d, &key))
    };
    let ptx: Arc<str> = match cached {
        Some(ptx) => ptx.into(),
        None => {
            let ptx = compile(file, source, arch)?;
            if let Some(dir) = &dir {
                cache_write(dir, &key, &ptx);
            }
            ptx.into()
        }
    };
    memo.insert(key, ptx.clone());
    Ok(ptx)
}

/// Loads `file`'s module; PTX from the cache that the driver rejects is compiled afresh once.
fn load_module(
    ctx: &Arc<CudaContext>,
    file: &'static str,
    source: &str,
    arch: &str,
) -> Result<Arc<cudarc::driver::CudaModule>, CudaError> {
    let load = |ptx: Arc<str>| ctx.load_module(nvrtc::Ptx::from_src(ptx.to_string()));
    match load(ptx_for(file, source, arch, false)?) {
        Ok(module) => Ok(module),
        Err(err) => {
            tracing::warn!(file, %err, "cached kernel rejected by the driver; recompiling");
            load(ptx_for(file, source, arch, true)?).map_err(drv("cuModuleLoadData"))
        }
    }
}

#[cfg(test)]
mod tests;
