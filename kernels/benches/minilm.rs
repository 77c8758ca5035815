//! all-MiniLM-L6-v2 sentence embeddings per second on the CPU backend, at batch 1 and 32.
//!
//! `cargo bench -p kernels --bench minilm` (fetches the model once with scripts/fetch-minilm;
//! `PROOFMESH_MINILM_DIR` points at another copy). Criterion's "elem/s" is sentences/s. The
//! sentences are everyday ones of 8 to 20 tokens, as in sentence-similarity workloads.

#[path = "../src/testing.rs"]
mod testing;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kernels::{CpuBackend, Model};

const SENTENCES: &[&str] = &[
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The new movie is awesome, and the critics agree that it is the best of the year.",
    "The cat sits outside on the warm stones.",
    "Validators re-execute each job and compare the output hash bit for bit.",
];

fn minilm(c: &mut Criterion) {
    let model = Model::load(&testing::minilm_dir()).expect("loading all-MiniLM-L6-v2");
    let cpu = CpuBackend::new();
    let mut group = c.benchmark_group("minilm_cpu");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(5));
    for batch in [1usize, 32] {
        let texts: Vec<&str> = SENTENCES.iter().copied().cycle().take(batch).collect();
        let input = serde_json::json!({ "texts": texts })
            .to_string()
            .into_bytes();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("batch", batch), &input, |bench, input| {
            bench.iter(|| model.run(&cpu, input).expect("MiniLM run"))
        });
    }
    group.finish();
}

criterion_group!(benches, minilm);
criterion_main!(benches);
