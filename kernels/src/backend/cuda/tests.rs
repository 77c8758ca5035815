//! Tests of the CUDA backend: NVRTC compilation and exactness lint, the host emulation of the
//! kernels against the CPU (no GPU needed), and the GPU tests (ignored unless asked for).

use super::*;
use crate::math;
use std::f32::consts::SQRT_2;

/// The kernel entry points each source must define.
const ENTRIES: [(&str, &[&str]); 5] = [
    (
        "gemm.cu",
        &["gemm_bias_128", "gemm_bias_64", "gemm_bias_32"],
    ),
    (
        "elementwise.cu",
        &["gelu", "add_inplace", "embedding_gather", "swiglu", "rope"],
    ),
    (
        "norm.cu",
        &[
            "softmax_rows",
            "layernorm_rows",
            "rmsnorm_rows",
            "l2_normalize_rows",
        ],
    ),
    ("attention.cu", &["attention", "attention_causal"]),
    ("pool.cu", &["mean_pool"]),
];

fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by name.
    unsafe { nvrtc::sys::is_culib_present() }
}

/// Every f32 add, sub, mul, fma, div and sqrt in the PTX must round to nearest explicitly
/// (ptxas may fuse a mul and an add that lack `.rn`), and nothing may flush subnormals or
/// approximate.
fn exactness_violations(ptx: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for line in ptx.lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        let code = if code.starts_with('@') {
            code.split_once(char::is_whitespace).map_or("", |x| x.1)
        } else {
            code
        };
        let Some(op) = code.split_whitespace().next() else {
            continue;
        };
        let parts: Vec<&str> = op.split('.').collect();
        let arith = ["add", "sub", "mul", "fma", "mad", "div", "sqrt", "rcp"];
        let f32_arith = arith.contains(&parts[0]) && parts.contains(&"f32");
        let lossy = ["ftz", "approx", "full"].iter().any(|m| parts.contains(m))
            || ["ex2", "lg2", "sin", "cos", "tanh", "rsqrt"].contains(&parts[0]);
        if (f32_arith && !parts.contains(&"rn")) || lossy {
            bad.push(line.trim().to_string());
        }
    }
    bad
}

#[test]
fn nvrtc_compiles_every_kernel_exactly() {
    if !nvrtc_present() {
        // scripts/test fetches NVRTC and sets this: there a missing library is a failure.
        assert!(
            std::env::var_os("PROOFMESH_REQUIRE_NVRTC").is_none(),
            "PROOFMESH_REQUIRE_NVRTC is set but libnvrtc cannot be loaded"
        );
        eprintln!(
            "skipped: libnvrtc not found (scripts/fetch-nvrtc prints a directory to put on \
             LD_LIBRARY_PATH; scripts/test does it)"
        );
        return;
    }
    eprintln!("NVRTC {}", nvrtc_version());
    for arch in ["compute_80", "compute_90"] {
        for ((file, source), (efile, entries)) in SOURCES.iter().zip(ENTRIES) {
            assert_eq!(*file, efile);
            let ptx = compile(file, source, arch).unwrap_or_else(|e| panic!("{e}"));
            for entry in entries {
                assert!(
                    ptx.contains(&format!(".entry {entry}(")),
                    "{file} ({arch}) lacks kernel {entry}"
                );
            }
            let bad = exactness_violations(&ptx);
            assert!(bad.is_empty(), "{file} ({arch}): inexact PTX {bad:#?}");
            eprintln!("{file} compiled for {arch}: {} bytes of PTX", ptx.len());
        }
    }
}

#[test]
fn exactness_lint_catches_contractible_and_approximate_ops() {
    let ptx = "\tadd.f32 %f1, %f2, %f3;\n\tfma.rn.f32 %f1, %f2, %f3, %f4;\n\
               @%p1 mul.f32 %f1, %f2, %f3;\n\tdiv.approx.f32 %f1, %f2, %f3;\n\
               \tadd.rn.ftz.f32 %f1, %f2, %f3;\n\tex2.approx.f32 %f1, %f2;\n\
               \tadd.s32 %r1, %r2, %r3;\n\tsqrt.rn.f32 %f1, %f2; // fine\n";
    let bad = exactness_violations(ptx);
    assert_eq!(bad.len(), 5, "{bad:#?}");
    assert!(
        !bad.iter()
            .any(|l| l.starts_with("fma.rn") || l.contains("s32"))
    );
}

/// Each `PM_F32` constant in math.cuh has the bits of the math.rs constant it mirrors.
#[test]
fn math_cuh_constants_match_math_rs() {
    let mut want: Vec<(String, f32)> = vec![
        ("LOG2E".into(), math::LOG2E),
        ("LN2_HI".into(), math::LN2_HI),
        ("LN2_LO".into(), math::LN2_LO),
        ("ROUND_MAGIC".into(), math::ROUND_MAGIC),
        ("EXP_HI".into(), math::EXP_HI),
        ("EXP_LO".into(), math::EXP_LO),
        ("ERF_SPLIT".into(), math::ERF_SPLIT),
        ("ERF_CLAMP".into(), math::ERF_CLAMP),
        ("FRAC_1_SQRT_2".into(), math::FRAC_1_SQRT_2),
        ("L2_FLOOR".into(), 1e-12),
        ("INFINITY".into(), f32::INFINITY),
    ];
    for (name, table) in [
        ("EXP_POLY", &math::EXP_POLY[..]),
        ("ERF_SMALL", &math::ERF_SMALL[..]),
        ("ERF_LARGE", &math::ERF_LARGE[..]),
    ] {
        want.extend(
            table
                .iter()
                .enumerate()
                .map(|(i, &v)| (format!("{name}{i}"), v)),
        );
    }
    let mut found = HashMap::new();
    for line in HEADER.1.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(value)) =
            (words.next(), words.next(), words.next())
            && let Some(hex) = value
                .strip_prefix("PM_F32(0x")
                .and_then(|v| v.strip_suffix(')'))
        {
            let bits = u32::from_str_radix(hex, 16).expect("hex constant");
            found.insert(name.trim_start_matches("PM_").to_string(), bits);
        }
    }
    for (name, value) in &want {
        assert_eq!(
            found.get(name.as_str()).copied(),
            Some(value.to_bits()),
            "math.cuh PM_{name} vs math.rs ({value:e})"
        );
    }
    assert_eq!(found.len(), want.len(), "math.cuh has unchecked constants");
}

#[test]
fn without_a_gpu_new_is_an_error_and_select_falls_back_to_cpu() {
    match CudaBackend::new() {
        Ok(cuda) => eprintln!("a CUDA device is present: {cuda:?}"),
        Err(err) => eprintln!("no CUDA backend here: {err}"),
    }
    let backend = super::super::select("cuda").expect("cuda is a known backend");
    assert!(matches!(backend.name(), "cpu" | "cuda"));
    assert_eq!(
        super::super::select("cpu").expect("cpu is known").name(),
        "cpu"
    );
    let Err(err) = super::super::select("tpu") else {
        panic!("tpu is not a backend");
    };
    assert!(err.to_string().contains("\"tpu\""), "{err}");
}

#[test]
fn ptx_cache_round_trip_and_misses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = cache_key(SOURCES[0].1, "compute_90", "12.9");
    assert_eq!(cache_read(dir.path(), &key), None);
    let ptx = ".version 8.8\n.entry gemm_bias_128(\n";
    cache_write(dir.path(), &key, ptx);
    assert_eq!(cache_read(dir.path(), &key).as_deref(), Some(ptx));
    // Garbage, or a directory where the file should be, is a miss.
    std::fs::write(dir.path().join(format!("{key}.ptx")), "junk").expect("write");
    assert_eq!(cache_read(dir.path(), &key), None);
    // Writing into an unwritable place is silently skipped.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    cache_write(&file, &key, ptx);
    // The key depends on everything that shapes the PTX.
    for other in [
        cache_key(SOURCES[1].1, "compute_90", "12.9"),
        cache_key(SOURCES[0].1, "compute_80", "12.9"),
        cache_key(SOURCES[0].1, "compute_90", "13.0"),
    ] {
        assert_ne!(other, key);
    }
}

/// The `.cu` kernels built for the host by `kernels/cuda/host_emulator.cpp` (CUDA builtins
/// mapped to the same IEEE operations, one OS thread per CUDA thread), so their indexing,
/// tiling, masking and operation order are checked against the CPU reference on machines
/// without a GPU. Built once per test process into a directory keyed by the sources; `None`
/// (the tests print "skipped") when there is no C++ compiler (`$CXX`, `c++`, `g++`, `clang++`).
struct Emulator {
    exe: PathBuf,
}

/// A kernel argument for [`Emulator::run`].
enum EArg<'a> {
    F(&'a mut [f32]),
    U(&'a [u32]),
    B(&'a [u8]),
    Null,
    I(u32),
    L(u64),
    X(f32),
}

fn emulator() -> Option<&'static Emulator> {
    static EMULATOR: OnceLock<Option<Emulator>> = OnceLock::new();
    EMULATOR.get_or_init(build_emulator).as_ref()
}

fn build_emulator() -> Option<Emulator> {
    let candidates = std::env::var("CXX")
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from));
    let cxx = candidates.into_iter().find(|cxx| {
        std::process::Command::new(cxx)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let harness = include_str!("../../../cuda/host_emulator.cpp");
    let mut files: Vec<(&str, String)> = vec![
        (HEADER.0, HEADER.1.to_string()),
        ("host_emulator.cpp", harness.to_string()),
    ];
    for (file, source) in SOURCES {
        // Dynamic shared memory becomes the harness's buffer.
        let source = source.replace(
            "extern __shared__ float scores[];",
            "float* scores = pm_dynamic_shared.data();",
        );
        files.push((file, source));
    }
    let all: String = files.iter().map(|(n, s)| format!("{n}\0{s}\0")).collect();
    let key = crate::id::hex32(&crate::keccak256(all.as_bytes()));
    let dir = std::env::temp_dir().join(format!("proofmesh-cuda-emulator-{}", &key[2..18]));
    let exe = dir.join("host_emulator");
    if exe.exists() {
        return Some(Emulator { exe });
    }
    let build = dir.with_extension(format!("build{}", std::process::id()));
    std::fs::create_dir_all(&build).expect("emulator build dir");
    for (name, text) in &files {
        std::fs::write(build.join(name), text).expect("write emulator source");
    }
    let out = std::process::Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-ffp-contract=off", "-fno-fast-math"])
        .args(["-pthread", "-w", "host_emulator.cpp", "-o", "host_emulator"])
        .current_dir(&build)
        .output()
        .expect("run the C++ compiler");
    assert!(
        out.status.success(),
        "{cxx} could not build the CUDA host emulator:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another test process may have won the race; either build is the same.
    if std::fs::rename(&build, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&build);
    }
    Some(Emulator { exe })
}

impl Emulator {
    /// Runs `kernel` with launch `cfg`; float buffers are written back.
    fn run(&self, kernel: &str, cfg: &LaunchConfig, args: &mut [EArg]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg(kernel);
        for v in [g.0, g.1, g.2, b.0, b.1, b.2, cfg.shared_mem_bytes / 4] {
            cmd.arg(v.to_string());
        }
        for (i, arg) in args.iter().enumerate() {
            let path = dir.path().join(i.to_string());
            let buffer = |kind: &str, bytes: Vec<u8>| {
                std::fs::write(&path, bytes).expect("write buffer");
                format!("{kind}:{}", path.display())
            };
            cmd.arg(match arg {
                EArg::F(v) => buffer("f", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                EArg::U(v) => buffer("u", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                EArg::B(v) => buffer("b", v.to_vec()),
                EArg::Null => "n".to_string(),
                EArg::I(v) => format!("i:{v}"),
                EArg::L(v) => format!("l:{v}"),
                EArg::X(v) => format!("x:{:x}", v.to_bits()),
            });
        }
        let out = cmd.output().expect("run the emulator");
        assert!(
            out.status.success(),
            "emulated {kernel} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (i, arg) in args.iter_mut().enumerate() {
            if let EArg::F(v) = arg {
                let bytes = std::fs::read(dir.path().join(i.to_string())).expect("read");
                for (x, b) in v.iter_mut().zip(bytes.chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }
}

fn random(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.next_f32() * scale).collect()
}

fn assert_same_bits(what: &str, want: &[f32], got: &[f32]) {
    assert_eq!(want.len(), got.len(), "{what}: lengths");
    let bad: Vec<usize> = (0..want.len())
        .filter(|&i| want[i].to_bits() != got[i].to_bits())
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} values differ, first at {}: cpu {:e}, emulated {:e}",
        bad.len(),
        want.len(),
        bad[0],
        want[bad[0]],
        got[bad[0]]
    );
}

macro_rules! emulator_or_skip {
    () => {
        match emulator() {
            Some(emu) => emu,
            None => {
                // scripts/test sets this (scripts/setup installs a compiler): skipping there
                // would hide the only check of the .cu arithmetic that runs without a GPU.
                assert!(
                    std::env::var_os("PROOFMESH_REQUIRE_CXX").is_none(),
                    "PROOFMESH_REQUIRE_CXX is set but no C++ compiler was found"
                );
                eprintln!("skipped: no C++ compiler ($CXX, c++, g++, clang++) for the emulator");
                return;
            }
        }
    };
}

#[test]
fn host_emulated_gemm_matches_cpu_for_every_tile() {
    let emu = emulator_or_skip!();
    let cpu = CpuBackend::new();
    for (m, k, n) in [
        (1, 1, 1),
        (3, 5, 7),
        (37, 45, 29),
        (129, 17, 130),
        (64, 384, 48),
    ] {
        let a = random(1, m * k, 1.0);
        let b = random(2, k * n, 1.0);
        let bias = random(3, n, 1.0);
        for with_bias in [true, false] {
            let bias = with_bias.then_some(&bias[..]);
            let want = cpu.gemm_bias(&a, &b, bias, m, k, n);
            for tile in [128usize, 64, 32] {
                let cfg = LaunchConfig {
                    grid_dim: (n.div_ceil(tile) as u32, m.div_ceil(tile) as u32, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut out = vec![f32::NAN; m * n];
                let mut bias_buf = bias.map(|b| b.to_vec());
                emu.run(
                    &format!("gemm_bias_{tile}"),
                    &cfg,
                    &mut [
                        EArg::F(&mut a.clone()),
                        EArg::F(&mut b.clone()),
                        bias_buf.as_deref_mut().map_or(EArg::Null, EArg::F),
                        EArg::F(&mut out),
                        EArg::I(m as u32),
                        EArg::I(k as u32),
                        EArg::I(n as u32),
                    ],
                );
                let what = format!("gemm {m}×{k}×{n} tile {tile} bias {with_bias}");
                assert_same_bits(&what, &want, &out);
            }
        }
    }
    // The plan picks the largest tile that fills the SMs.
    assert_eq!(gemm_plan(4096, 1536, 132).map(|p| p.0).ok(), Some(128));
    assert_eq!(gemm_plan(4096, 384, 132).map(|p| p.0).ok(), Some(64));
    assert_eq!(gemm_plan(128, 384, 132).map(|p| p.0).ok(), Some(32));
    assert!(gemm_plan(65_536 * 128 + 1, 8, 1).is_err());
}

#[test]
fn host_emulated_elementwise_ops_match_cpu() {
    let emu = emulator_or_skip!();
    let cpu = CpuBackend::new();
    // Two SMs: more elements than the grid covers, so the grid-stride loops run.
    let mut x = random(4, 20_000, 12.0);
    x.extend([
        0.0,
        -0.0,
        1.0,
        -1.0,
        // erf's split (x/√2 = 1) and clamp (x/√2 = 4).
        SQRT_2,
        -SQRT_2,
        4.0 * SQRT_2,
        -4.0 * SQRT_2,
        1e-40,
        -1e-40,
        100.0,
        -100.0,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
    ]);
    let mut want = x.clone();
    cpu.gelu(&mut want);
    let cfg = element_grid(2, x.len());
    emu.run(
        "gelu",
        &cfg,
        &mut [EArg::F(&mut x), EArg::L(want.len() as u64)],
    );
    assert_same_bits("gelu", &want, &x);

    let (mut x, y) = (random(5, 17_001, 1.0), random(6, 17_001, 1.0));
    let mut want = x.clone();
    ops::add_inplace(&mut want, &y);
    let cfg = element_grid(2, x.len());
    let len = x.len() as u64;
    emu.run(
        "add_inplace",
        &cfg,
        &mut [EArg::F(&mut x), EArg::F(&mut y.clone()), EArg::L(len)],
    );
    assert_same_bits("add_inplace", &want, &x);

    let (vocab, dim) = (50, 24);
    let mut table = random(7, vocab * dim, 1.0);
    let ids: Vec<u32> = (0..700).map(|i| (i * 7 % vocab) as u32).collect();
    let want = ops::embedding_gather(&table, dim, &ids).expect("valid ids");
    let mut out = vec![f32::NAN; want.len()];
    let cfg = element_grid(1, out.len());
    emu.run(
        "embedding_gather",
        &cfg,
        &mut [
            EArg::F(&mut table),
            EArg::U(&ids),
            EArg::F(&mut out),
            EArg::L(ids.len() as u64),
            EArg::L(dim as u64),
        ],
    );
    assert_same_bits("embedding_gather", &want, &out);
}

#[test]
fn host_emulated_row_ops_match_cpu() {
    let emu = emulator_or_skip!();
    let cpu = CpuBackend::new();
    // One block per row, and three blocks striding over seven rows.
    for (rows, cols) in [(1, 1), (7, 37), (5, 384), (3, 1000)] {
        let three = LaunchConfig {
            grid_dim: (3, 1, 1),
            ..row_grid(rows)
        };
        for cfg in [row_grid(rows), three] {
            let x = random(8, rows * cols, 30.0);
            let mut want = x.clone();
            cpu.softmax_rows(&mut want, cols);
            let mut got = x;
            let dims = [EArg::L(rows as u64), EArg::I(cols as u32)];
            let [r, c] = dims;
            emu.run("softmax_rows", &cfg, &mut [EArg::F(&mut got), r, c]);
            assert_same_bits(&format!("softmax {rows}×{cols}"), &want, &got);

            let x = random(9, rows * cols, 4.0);
            let mut gamma = random(10, cols, 1.0);
            let mut beta = random(11, cols, 1.0);
            let mut want = x.clone();
            ops::layernorm_rows(&mut want, cols, &gamma, &beta, 1e-12);
            let mut got = x;
            emu.run(
                "layernorm_rows",
                &cfg,
                &mut [
                    EArg::F(&mut got),
                    EArg::F(&mut gamma),
                    EArg::F(&mut beta),
                    EArg::L(rows as u64),
                    EArg::I(cols as u32),
                    EArg::X(cols as f32),
                    EArg::X(1e-12),
                ],
            );
            assert_same_bits(&format!("layernorm {rows}×{cols}"), &want, &got);

            let mut x = random(12, rows * cols, 1.0);
            x[..cols].fill(0.0);
            let mut want = x.clone();
            ops::l2_normalize_rows(&mut want, cols);
            let mut got = x;
            emu.run(
                "l2_normalize_rows",
                &cfg,
                &mut [
                    EArg::F(&mut got),
                    EArg::L(rows as u64),
                    EArg::I(cols as u32),
                ],
            );
            assert_same_bits(&format!("l2 {rows}×{cols}"), &want, &got);
        }
    }
}

/// The decoder's ops (SmolLM2's shapes among them): RMSNorm, SwiGLU and RoPE, bit for bit.
#[test]
fn host_emulated_decoder_ops_match_cpu() {
    let emu = emulator_or_skip!();
    for (rows, cols) in [(1, 1), (7, 37), (3, 576), (2, 1000)] {
        let three = LaunchConfig {
            grid_dim: (3, 1, 1),
            ..row_grid(rows)
        };
        for cfg in [row_grid(rows), three] {
            let x = random(20, rows * cols, 4.0);
            let mut gamma = random(21, cols, 2.0);
            let mut want = x.clone();
            ops::rmsnorm_rows(&mut want, cols, &gamma, 1e-5);
            let mut got = x;
            emu.run(
                "rmsnorm_rows",
                &cfg,
                &mut [
                    EArg::F(&mut got),
                    EArg::F(&mut gamma),
                    EArg::L(rows as u64),
                    EArg::I(cols as u32),
                    EArg::X(cols as f32),
                    EArg::X(1e-5),
                ],
            );
            assert_same_bits(&format!("rmsnorm {rows}×{cols}"), &want, &got);
        }
    }
    // SwiGLU over SmolLM2's FFN width and a ragged one, gates far into exp's clamps.
    for (rows, cols) in [(3, 1536), (5, 37)] {
        let mut gate_up = random(22, rows * 2 * cols, 12.0);
        gate_up[0] = 100.0;
        gate_up[1] = -100.0;
        gate_up[2] = 0.0;
        let want = ops::swiglu(&gate_up, cols);
        let mut got = vec![f32::NAN; want.len()];
        emu.run(
            "swiglu",
            &element_grid(2, got.len()),
            &mut [
                EArg::F(&mut gate_up),
                EArg::F(&mut got),
                EArg::L(rows as u64),
                EArg::L(cols as u64),
            ],
        );
        assert_same_bits(&format!("swiglu {rows}×{cols}"), &want, &got);
    }
    // RoPE on fused query-key rows (9 + 3 heads of 64 in rows of 15 heads: the value heads
    // after them stay as they are), at scattered positions of one table.
    let table = crate::RopeTable::new(64, 8192, 100_000.0);
    let (heads, head_dim, width) = (12, 64, 15 * 64);
    let positions = [0usize, 1, 41, 8191, 300];
    let x = random(23, positions.len() * width, 3.0);
    let mut want = x.clone();
    ops::rope(&mut want, width, heads, head_dim, &positions, &table);
    let mut angles: Vec<f32> = positions
        .iter()
        .flat_map(|&p| table.at(p).iter().flat_map(|&(c, s)| [c, s]))
        .collect();
    let mut got = x;
    emu.run(
        "rope",
        &element_grid(1, positions.len() * heads * head_dim / 2),
        &mut [
            EArg::F(&mut got),
            EArg::F(&mut angles),
            EArg::L(positions.len() as u64),
            EArg::L(width as u64),
            EArg::I(heads as u32),
            EArg::I(head_dim as u32),
        ],
    );
    assert_same_bits("rope", &want, &got);

    // Causal grouped-query attention: a prompt (as many queries as keys), a decode step
    // (one query over a cache), a split prompt (some queries over a longer cache), SmolLM2's
    // 9 query heads over 3 key-value heads of 64.
    for (queries, keys, heads, kv_heads, head_dim) in [
        (5, 5, 9, 3, 64),
        (1, 41, 9, 3, 64),
        (3, 20, 4, 2, 8),
        (1, 1, 2, 1, 3),
    ] {
        let q = random(24, queries * heads * head_dim, 2.0);
        let k = random(25, keys * kv_heads * head_dim, 2.0);
        let v = random(26, keys * kv_heads * head_dim, 1.0);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let want = ops::attention_causal(&q, &k, &v, heads, kv_heads, head_dim, scale);
        let mut got = vec![f32::NAN; want.len()];
        let cfg = LaunchConfig {
            grid_dim: (queries as u32, heads as u32, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: (keys * 4) as u32,
        };
        emu.run(
            "attention_causal",
            &cfg,
            &mut [
                EArg::F(&mut q.clone()),
                EArg::F(&mut k.clone()),
                EArg::F(&mut v.clone()),
                EArg::F(&mut got),
                EArg::I(queries as u32),
                EArg::I(keys as u32),
                EArg::I(heads as u32),
                EArg::I(kv_heads as u32),
                EArg::I(head_dim as u32),
                EArg::X(scale),
            ],
        );
        assert_same_bits(
            &format!("attention_causal {queries}q {keys}k {heads}/{kv_heads}×{head_dim}"),
            &want,
            &got,
        );
    }
}

#[test]
fn host_emulated_attention_and_pooling_match_cpu() {
    let emu = emulator_or_skip!();
    for (batch, seq, heads, head_dim) in [(1, 1, 1, 1), (3, 37, 3, 32), (4, 9, 2, 200)] {
        let len = batch * seq * heads * head_dim;
        let (q, k, v) = (
            random(13, len, 1.0),
            random(14, len, 1.0),
            random(15, len, 1.0),
        );
        // Sequence b loses b tokens at the end; with batch 4 and seq 1.. one may be empty.
        let mut mask: Vec<u8> = (0..batch * seq)
            .map(|i| u8::from(i % seq + i / seq < seq))
            .collect();
        if batch > 2 {
            mask[2 * seq..3 * seq].fill(0);
        }
        let scale = 1.0 / (head_dim as f32).sqrt();
        let want = ops::attention(&q, &k, &v, &mask, batch, seq, heads, head_dim, scale);
        let (cfg, [s, h, d]) = attention_plan(batch, seq, heads, head_dim).expect("plan");
        let (keys, count) = attention_keys(&mask, batch, seq);
        let mut out = vec![0.0f32; len];
        emu.run(
            "attention",
            &cfg,
            &mut [
                EArg::F(&mut q.clone()),
                EArg::F(&mut k.clone()),
                EArg::F(&mut v.clone()),
                EArg::B(&mask),
                EArg::U(&keys),
                EArg::U(&count),
                EArg::F(&mut out),
                EArg::I(s),
                EArg::I(h),
                EArg::I(d),
                EArg::X(scale),
            ],
        );
        let what = format!("attention b{batch} s{seq} h{heads}×{head_dim}");
        assert_same_bits(&what, &want, &out);

        let cols = heads * head_dim;
        let want = ops::mean_pool(&q, &mask, batch, seq, cols);
        let mut out = vec![f32::NAN; batch * cols];
        emu.run(
            "mean_pool",
            &element_grid(1, batch * cols),
            &mut [
                EArg::F(&mut q.clone()),
                EArg::B(&mask),
                EArg::F(&mut out),
                EArg::I(batch as u32),
                EArg::I(seq as u32),
                EArg::I(cols as u32),
            ],
        );
        assert_same_bits(&format!("mean_pool {batch}×{seq}×{cols}"), &want, &out);
    }
    assert!(attention_plan(1, 20_000, 1, 1).is_err());
}

/// The device backend for the GPU tests; without one the test fails (they are ignored
/// unless asked for, by kernels/gpu-check.sh on a GPU machine).
fn gpu() -> CudaBackend {
    CudaBackend::new().unwrap_or_else(|e| panic!("no CUDA backend: {e}"))
}

fn assert_bit_identical(cuda: &CudaBackend, probes: &[Probe]) {
    for (i, probe) in probes.iter().enumerate() {
        let seed = 1000 + i as u64;
        let c = cuda
            .compare_with_cpu(probe, seed)
            .unwrap_or_else(|e| panic!("{probe}: {e}"));
        eprintln!(
            "{}: {} of {} values differ",
            c.probe, c.mismatches, c.values
        );
        assert_eq!(c.mismatches, 0, "{} (seed {seed})", c.probe);
    }
    assert_eq!(cuda.fallbacks(), 0);
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_gemm_is_bit_identical() {
    let mut probes = Vec::new();
    for (m, k, n) in [
        (1, 1, 1),
        (3, 5, 7),
        (37, 45, 29),
        (129, 7, 130),
        (128, 384, 384),
        (128, 384, 1536),
        (128, 1536, 384),
        (4096, 384, 384),
        (1000, 1000, 1000),
    ] {
        for bias in [true, false] {
            probes.push(Probe::Gemm { m, k, n, bias });
        }
    }
    assert_bit_identical(&gpu(), &probes);
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_gelu_is_bit_identical() {
    let cuda = gpu();
    assert_bit_identical(
        &cuda,
        &[Probe::Gelu { len: 1 }, Probe::Gelu { len: 128 * 1536 }],
    );
    // Edge values: both polynomial ranges, their boundaries, the clamps, zeros, subnormals
    // and infinities (-inf gives a NaN, compared as NaN only: payloads differ by design).
    let mut x: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        // erf's split (x/√2 = 1) and clamp (x/√2 = 4).
        SQRT_2,
        -SQRT_2,
        4.0 * SQRT_2,
        -4.0 * SQRT_2,
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        100.0,
        -100.0,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    x.extend((0..20_001).map(|i| (i as f32 - 10_000.0) * 1e-3));
    let mut want = x.clone();
    cuda.cpu.gelu(&mut want);
    cuda.try_gelu(&mut x).expect("gelu");
    for (w, g) in want.iter().zip(&x) {
        assert!(
            w.to_bits() == g.to_bits() || (w.is_nan() && g.is_nan()),
            "{w:e} vs {g:e}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_softmax_is_bit_identical() {
    assert_bit_identical(
        &gpu(),
        &[
            Probe::Softmax { rows: 1, cols: 1 },
            Probe::Softmax { rows: 7, cols: 37 },
            Probe::Softmax {
                rows: 3 * 12 * 37,
                cols: 37,
            },
            Probe::Softmax {
                rows: 5,
                cols: 4099,
            },
            Probe::Softmax {
                rows: 70_000,
                cols: 3,
            },
        ],
    );
}

/// RMSNorm, SwiGLU and RoPE on the GPU at SmolLM2's shapes, against the CPU reference.
#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_decoder_ops_are_bit_identical() {
    let cuda = gpu();
    let x = random(30, 7 * 576, 4.0);
    let gamma = random(31, 576, 2.0);
    let (mut want, mut got) = (x.clone(), x);
    ops::rmsnorm_rows(&mut want, 576, &gamma, 1e-5);
    cuda.try_rmsnorm_rows(&mut got, 576, &gamma, 1e-5).unwrap();
    assert_same_bits("rmsnorm", &want, &got);
    let gate_up = random(32, 7 * 2 * 1536, 12.0);
    let want = ops::swiglu(&gate_up, 1536);
    assert_same_bits("swiglu", &want, &cuda.try_swiglu(&gate_up, 1536).unwrap());
    let table = crate::RopeTable::new(64, 8192, 100_000.0);
    let positions = [0usize, 1, 41, 8191, 300];
    let x = random(33, positions.len() * 15 * 64, 3.0);
    let (mut want, mut got) = (x.clone(), x);
    ops::rope(&mut want, 15 * 64, 12, 64, &positions, &table);
    cuda.try_rope(&mut got, 15 * 64, 12, 64, &positions, &table)
        .unwrap();
    assert_same_bits("rope", &want, &got);
    for (queries, keys) in [(37, 37), (1, 300), (4, 8000)] {
        let q = random(34, queries * 9 * 64, 2.0);
        let k = random(35, keys * 3 * 64, 2.0);
        let v = random(36, keys * 3 * 64, 1.0);
        let want = ops::attention_causal(&q, &k, &v, 9, 3, 64, 0.125);
        let got = cuda
            .try_attention_causal(&q, &k, &v, 9, 3, 64, 0.125)
            .unwrap();
        assert_same_bits(&format!("attention_causal {queries}×{keys}"), &want, &got);
    }
}

/// A whole generation (prefill, decode steps, sampling) of a small random Llama through the
/// CUDA backend: the same tokens, text and commitment as on the CPU.
#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_generation_is_bit_identical() {
    let cuda = gpu();
    let model = crate::Model::from_gguf_bytes("seeded", crate::seeded_llama_gguf(3, 2)).unwrap();
    for input in [
        r#"{"messages": [{"role": "user", "content": "the cat"}], "max_tokens": 24}"#,
        r#"{"messages": [{"role": "user", "content": "a dog"}], "max_tokens": 24,
            "temperature": 0.9, "top_p": 0.9, "seed": 5}"#,
    ] {
        let want = model.run(&CpuBackend::new(), input.as_bytes()).unwrap();
        let got = model.run(&cuda, input.as_bytes()).unwrap();
        assert_eq!(got.completion, want.completion, "{input}");
        assert_eq!(got.hash(), want.hash());
    }
    assert_eq!(cuda.fallbacks(), 0, "an op fell back to the CPU");
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_layernorm_is_bit_identical() {
    assert_bit_identical(
        &gpu(),
        &[
            Probe::Layernorm { rows: 1, cols: 1 },
            Probe::Layernorm { rows: 7, cols: 33 },
            Probe::Layernorm {
                rows: 128,
                cols: 384,
            },
            Probe::Layernorm {
                rows: 70_000,
                cols: 16,
            },
        ],
    );
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_embedding_gather_is_bit_identical_and_checks_ids() {
    let cuda = gpu();
    assert_bit_identical(
        &cuda,
        &[
            Probe::Gather {
                vocab: 1,
                dim: 1,
                ids: 1,
            },
            Probe::Gather {
                vocab: 30_522,
                dim: 384,
                ids: 128,
            },
        ],
    );
    let table: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let err = cuda
        .try_embedding_gather(&table, 4, &[0, 3])
        .expect("no device error")
        .expect_err("id 3 is out of range");
    assert!(err.to_string().contains("token id 3"), "{err}");
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_add_inplace_is_bit_identical() {
    assert_bit_identical(
        &gpu(),
        &[
            Probe::Add { len: 1 },
            Probe::Add { len: 128 * 384 },
            Probe::Add { len: 10_000_019 },
        ],
    );
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_attention_is_bit_identical() {
    let mut probes = vec![
        Probe::Attention {
            batch: 1,
            seq: 1,
            heads: 1,
            head_dim: 1,
            padded: false,
        },
        Probe::Attention {
            batch: 2,
            seq: 6,
            heads: 2,
            head_dim: 8,
            padded: true,
        },
        Probe::Attention {
            batch: 1,
            seq: 128,
            heads: 12,
            head_dim: 32,
            padded: false,
        },
        Probe::Attention {
            batch: 4,
            seq: 512,
            heads: 2,
            head_dim: 200,
            padded: true,
        },
    ];
    for padded in [true, false] {
        probes.push(Probe::Attention {
            batch: 3,
            seq: 37,
            heads: 12,
            head_dim: 32,
            padded,
        });
    }
    let cuda = gpu();
    assert_bit_identical(&cuda, &probes);
    // A fully padded sequence gives zeros.
    let len = 2 * 5 * 8;
    let q = vec![0.5f32; len];
    let mask = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    let got = cuda
        .try_attention(&q, &q, &q, &mask, 2, 5, 2, 4, 0.5)
        .expect("attention");
    let want = ops::attention(&q, &q, &q, &mask, 2, 5, 2, 4, 0.5);
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_mean_pool_is_bit_identical() {
    assert_bit_identical(
        &gpu(),
        &[
            Probe::MeanPool {
                batch: 1,
                seq: 1,
                cols: 1,
            },
            Probe::MeanPool {
                batch: 9,
                seq: 5,
                cols: 16,
            },
            Probe::MeanPool {
                batch: 32,
                seq: 128,
                cols: 384,
            },
        ],
    );
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_l2_normalize_is_bit_identical() {
    let cuda = gpu();
    assert_bit_identical(
        &cuda,
        &[
            Probe::L2 { rows: 1, cols: 1 },
            Probe::L2 {
                rows: 32,
                cols: 384,
            },
            Probe::L2 {
                rows: 70_000,
                cols: 5,
            },
        ],
    );
    // A zero row stays zero (the 1e-12 floor), on both.
    let mut zero = vec![0.0f32; 8];
    cuda.try_l2_normalize_rows(&mut zero, 4).expect("l2");
    assert!(zero.iter().all(|v| v.to_bits() == 0));
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_minilm_shapes_are_bit_identical() {
    let cuda = gpu();
    assert_bit_identical(&cuda, &Probe::minilm(1, 128));
    assert_bit_identical(&cuda, &Probe::minilm(3, 37));
}

#[test]
#[ignore = "needs a CUDA GPU; run by kernels/gpu-check.sh"]
fn cuda_backend_trait_matches_cpu_through_the_trait() {
    // The trait methods (not the try_ ones), as a model calls them.
    let cuda = gpu();
    let cpu = CpuBackend::new();
    let (m, k, n) = (70, 160, 100);
    let mut rng = SplitMix64::new(7);
    let a: Vec<f32> = (0..m * k).map(|_| rng.next_f32()).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.next_f32()).collect();
    let want = cpu.gemm_bias(&a, &b, None, m, k, n);
    let got = Backend::gemm_bias(&cuda, &a, &b, None, m, k, n);
    assert!(
        want.iter()
            .zip(&got)
            .all(|(w, g)| w.to_bits() == g.to_bits())
    );
    let mut x = want.clone();
    let mut y = want;
    Backend::softmax_rows(&cuda, &mut x, n);
    cpu.softmax_rows(&mut y, n);
    assert!(x.iter().zip(&y).all(|(w, g)| w.to_bits() == g.to_bits()));
    assert_eq!(cuda.fallbacks(), 0);
}
