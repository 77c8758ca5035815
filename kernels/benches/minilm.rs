//! all-MiniLM-L6-v2 sentence embeddings per second on the CPU backend, at batch 1 and 32.
//!
//! `cargo bench -p kernels --bench minilm` (fetches the model once with scripts/fetch-minilm;
//! `PROOFMESH_MINILM_DIR` points at another copy). Each iteration embeds the same 64 everyday
//! sentences of `sentences.txt` (news, questions, instructions, reviews, numbers; 8 to 20 tokens
//! each counting [CLS] and [SEP], 826 real tokens in all), from text to normalised embedding:
//! 64 runs of one sentence at batch 1, 2 runs of 32 at batch 32. Criterion's "elem/s" is
//! sentences/s; tokens/s is that times 826 / 64. `examples/minilm-throughput.rs` prints both,
//! and `scripts/bench-onnxruntime` compares them with ONNX Runtime on the same sentences.

#[path = "../src/testing.rs"]
mod testing;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kernels::{CpuBackend, Model};

/// One sentence a line.
const SENTENCES: &str = include_str!("sentences.txt");

fn minilm(c: &mut Criterion) {
    let model = Model::load(&testing::minilm_dir()).expect("loading all-MiniLM-L6-v2");
    let cpu = CpuBackend::new();
    let sentences: Vec<&str> = SENTENCES.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(sentences.len(), 64, "sentences.txt holds 64 sentences");
    let mut group = c.benchmark_group("minilm_cpu");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(8));
    group.throughput(Throughput::Elements(sentences.len() as u64));
    for batch in [1usize, 32] {
        let inputs: Vec<Vec<u8>> = sentences
            .chunks(batch)
            .map(|texts| {
                serde_json::json!({ "texts": texts })
                    .to_string()
                    .into_bytes()
            })
            .collect();
        group.bench_with_input(
            BenchmarkId::new("batch", batch),
            &inputs,
            |bench, inputs| {
                bench.iter(|| {
                    for input in inputs {
                        std::hint::black_box(model.run(&cpu, input).expect("MiniLM run"));
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, minilm);
criterion_main!(benches);
