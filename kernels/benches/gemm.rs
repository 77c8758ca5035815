//! CPU GEMM throughput at all-MiniLM-L6-v2's shapes: our exact-mode kernel against the
//! `matrixmultiply` crate (a well-known, fast, non-exact Rust SGEMM) in the same run.
//!
//! `proofmesh_packed` is the models' path: weights packed once at load (`PackedMatrix`);
//! `proofmesh` packs them in each call.
//!
//! `cargo bench -p kernels --bench gemm`; criterion reports "elem/s" where one element is one
//! floating-point operation (2·m·k·n per GEMM), so Gelem/s reads as GFLOP/s. Both sides use all
//! cores (ours splits rows over threads, `matrixmultiply` runs with its `threading` feature;
//! `MATMUL_NUM_THREADS` sets its count).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kernels::{Backend, CpuBackend, PackedMatrix};

fn random(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn gemm(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    let mut group = c.benchmark_group("gemm");
    group.sample_size(20);
    group.warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(3));
    // Rows = tokens in a batch: 32 sentences of ~12 tokens, and 32 of 128 (QKV projection is
    // 384→1152, attention output 384→384, FFN up 384→1536 and down 1536→384).
    for (m, k, n) in [
        (384, 384, 1152),
        (384, 384, 1536),
        (384, 1536, 384),
        (4096, 384, 1536),
    ] {
        let a = random(1, m * k);
        let b = random(2, k * n);
        let bias = random(3, n);
        let label = format!("{m}x{k}x{n}");
        group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        group.bench_with_input(BenchmarkId::new("proofmesh", &label), &(), |bench, _| {
            bench.iter(|| cpu.gemm_bias(&a, &b, Some(&bias), m, k, n))
        });
        // Weights packed once, as the models hold them.
        let packed = PackedMatrix::new(&b, k, n);
        group.bench_with_input(
            BenchmarkId::new("proofmesh_packed", &label),
            &(),
            |bench, _| bench.iter(|| cpu.gemm_packed(&a, &packed, Some(&bias), m)),
        );
        group.bench_with_input(
            BenchmarkId::new("matrixmultiply", &label),
            &(),
            |bench, _| {
                bench.iter(|| {
                    let mut out = vec![0.0f32; m * n];
                    for row in out.chunks_exact_mut(n) {
                        row.copy_from_slice(&bias);
                    }
                    // SAFETY: a is m×k, b is k×n, out is m×n, all row-major with the strides given.
                    unsafe {
                        matrixmultiply::sgemm(
                            m,
                            k,
                            n,
                            1.0,
                            a.as_ptr(),
                            k as isize,
                            1,
                            b.as_ptr(),
                            n as isize,
                            1,
                            1.0,
                            out.as_mut_ptr(),
                            n as isize,
                            1,
                        );
                    }
                    out
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
