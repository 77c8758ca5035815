//! `gpu-check`: what the CUDA backend does on this machine's GPU, as markdown tables.
//!
//! 1. Bit identity: every op at the shapes of all-MiniLM-L6-v2 (32 sentences × 128 tokens and
//!    3 × 37 with padding) and the start-up self-check shapes, on the CPU and on the GPU; the
//!    number of output values whose bits differ.
//! 2. GEMM throughput, device-resident, of this crate's exact kernel and of cuBLAS `sgemm` at
//!    the MiniLM shapes for 32 × 128 tokens (m = 4096) and at 4096³.
//! 3. Sentences/s of `Model::run` on the CPU and CUDA backends at batch 1 and 32, and whether
//!    both give the same output hash: all-MiniLM-L6-v2 from `MODEL_DIR`, or without it a BERT
//!    of MiniLM's exact shapes with seeded weights (`write_seeded_bert`).
//!
//! 4. SmolLM2 decode on the CPU and CUDA backends: time to the first tokens and decode
//!    tokens/s of 1 and 8 streams decoded together (continuous batching, greedy, 32 tokens
//!    each), and whether both backends generate the same tokens: SmolLM2-135M-Instruct from
//!    `SMOLLM2_DIR` (a directory or GGUF file), or without it a seeded GGUF of its exact shapes
//!    and encodings (`SeededShape::smollm2`), which costs the same per token.
//!
//! `--summary PATH` also appends `section⇥row⇥column⇥value` lines to PATH, which
//! kernels/gpu-check.sh merges with its PyTorch numbers into one table. Exits 1 if any value
//! differs, 2 if there is no usable GPU.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use kernels::{Backend, CpuBackend, CudaBackend, Model, Probe};

/// Lines for `--summary`.
struct Summary(Vec<String>);

impl Summary {
    fn add(&mut self, section: &str, row: &str, column: &str, value: impl std::fmt::Display) {
        self.0.push(format!("{section}\t{row}\t{column}\t{value}"));
    }
}

fn main() -> ExitCode {
    let mut summary_path: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--summary", Some(path)) => summary_path = Some(path.into()),
            _ => {
                eprintln!("usage: gpu-check [--summary PATH]   (MODEL_DIR=DIR: the real MiniLM)");
                return ExitCode::from(2);
            }
        }
    }
    let cuda = match CudaBackend::new() {
        Ok(cuda) => cuda,
        Err(err) => {
            eprintln!("gpu-check: no CUDA backend: {err}");
            return ExitCode::from(2);
        }
    };
    println!("# gpu-check on {} ({})\n", cuda.device(), cuda.arch());
    let mut summary = Summary(Vec::new());
    let identical = bit_identity(&cuda, &mut summary);
    gemm_throughput(&cuda, &mut summary);
    match std::env::var_os("MODEL_DIR") {
        Some(dir) => minilm(&cuda, Path::new(&dir), &mut summary),
        None => {
            // The real weights (87 MB) may not be on the GPU machine: the same architecture and
            // shapes with seeded weights cost the same and must agree bit for bit just as well.
            let dir = std::env::temp_dir().join(format!("gpu-check-minilm-{}", std::process::id()));
            match kernels::write_seeded_bert(&dir, 1, &kernels::BertSpec::minilm()) {
                Ok(_) => minilm(&cuda, &dir, &mut summary),
                Err(err) => println!("MiniLM: n/a (cannot write a seeded copy: {err})\n"),
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    decode(&cuda, &mut summary);
    if cuda.fallbacks() > 0 {
        println!("warning: {} ops fell back to the CPU", cuda.fallbacks());
    }
    if let Some(path) = summary_path {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{}\n", summary.0.join("\n")).as_bytes()));
        if let Err(err) = written {
            eprintln!("gpu-check: cannot write {}: {err}", path.display());
        }
    }
    if identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Table 1; true if every op matched the CPU bit for bit.
fn bit_identity(cuda: &CudaBackend, summary: &mut Summary) -> bool {
    println!("## Bit identity, CUDA vs CPU\n");
    println!("| op | values | mismatching values |\n| --- | ---: | ---: |");
    let probes: Vec<Probe> = Probe::minilm(32, 128)
        .into_iter()
        .chain(Probe::minilm(3, 37))
        .chain(Probe::self_check())
        .collect();
    let (mut total, mut bad, mut errors) = (0usize, 0usize, 0usize);
    for (i, probe) in probes.iter().enumerate() {
        match cuda.compare_with_cpu(probe, 0x9c4e + i as u64) {
            Ok(c) => {
                println!("| {} | {} | {} |", c.probe, c.values, c.mismatches);
                total += c.values;
                bad += c.mismatches;
            }
            Err(err) => {
                println!("| {probe} | error | {err} |");
                errors += 1;
            }
        }
    }
    println!();
    summary.add("identity", "all ops", "values compared", total);
    summary.add("identity", "all ops", "mismatching values", bad);
    summary.add("identity", "all ops", "device errors", errors);
    bad == 0 && errors == 0
}

/// Table 2.
fn gemm_throughput(cuda: &CudaBackend, summary: &mut Summary) {
    println!("## GEMM throughput (device-resident, FP32)\n");
    println!(
        "| m×k·k×n | proofmesh exact (+bias) TFLOP/s | cuBLAS sgemm TFLOP/s | exact / cuBLAS |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for (m, k, n, reps) in [
        (4096, 384, 384, 50),
        (4096, 384, 1536, 30),
        (4096, 1536, 384, 30),
        (4096, 4096, 4096, 5),
    ] {
        let shape = format!("{m}×{k}·{k}×{n}");
        match cuda.time_gemm(m, k, n, reps) {
            Ok(t) => {
                let ours = t.flops() / t.ours_s / 1e12;
                summary.add(
                    "gemm TFLOP/s",
                    &shape,
                    "proofmesh cuda",
                    format!("{ours:.2}"),
                );
                let (blas, ratio) = match &t.cublas_s {
                    Ok(s) => {
                        let blas = t.flops() / s / 1e12;
                        summary.add(
                            "gemm TFLOP/s",
                            &shape,
                            "cuBLAS (cudarc)",
                            format!("{blas:.2}"),
                        );
                        (format!("{blas:.2}"), format!("{:.2}", ours / blas))
                    }
                    Err(why) => (format!("n/a ({why})"), "n/a".to_string()),
                };
                println!("| {shape} | {ours:.2} | {blas} | {ratio} |");
            }
            Err(err) => println!("| {shape} | error: {err} | n/a | n/a |"),
        }
    }
    println!();
}

/// Table 3.
fn minilm(cuda: &CudaBackend, dir: &Path, summary: &mut Summary) {
    println!("## MiniLM ({})\n", dir.display());
    let model = match Model::load(dir) {
        Ok(model) => model,
        Err(err) => {
            println!("n/a: cannot load the model: {err}\n");
            return;
        }
    };
    let cpu = CpuBackend::new();
    let backends: [(&str, &dyn Backend); 2] = [("cpu", &cpu), ("cuda", cuda)];
    println!("| batch | backend | sentences/s | output hash |\n| ---: | --- | ---: | --- |");
    for (batch, runs) in [(1usize, 20usize), (32, 5)] {
        let texts: Vec<String> = (0..batch)
            .map(|i| {
                format!(
                    "Sentence {i}: validators re-execute sampled jobs and compare the output \
                     hash bit for bit with what the inference node signed."
                )
            })
            .collect();
        let input = serde_json::json!({ "texts": texts }).to_string();
        let mut hashes = Vec::new();
        for (name, backend) in backends {
            let timed = (|| {
                let out = model.run(backend, input.as_bytes())?;
                let start = Instant::now();
                for _ in 0..runs {
                    model.run(backend, input.as_bytes())?;
                }
                Ok::<_, kernels::Error>((out.hash(), start.elapsed().as_secs_f64()))
            })();
            match timed {
                Ok((hash, secs)) => {
                    let rate = (batch * runs) as f64 / secs;
                    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
                    println!("| {batch} | {name} | {rate:.1} | {hex}… |");
                    summary.add(
                        "MiniLM sentences/s",
                        &format!("batch {batch}"),
                        &format!("proofmesh {name}"),
                        format!("{rate:.1}"),
                    );
                    hashes.push(hash);
                }
                Err(err) => println!("| {batch} | {name} | n/a | {err} |"),
            }
        }
        if let [a, b] = hashes[..] {
            let same = if a == b { "yes" } else { "NO" };
            summary.add(
                "MiniLM sentences/s",
                &format!("batch {batch}"),
                "cpu = cuda hash",
                same,
            );
        }
    }
    println!();
}

/// Table 4.
fn decode(cuda: &CudaBackend, summary: &mut Summary) {
    let (what, model) = match std::env::var_os("SMOLLM2_DIR") {
        Some(dir) => (
            format!("SmolLM2-135M-Instruct from {}", Path::new(&dir).display()),
            Model::load(Path::new(&dir)),
        ),
        None => (
            "a seeded GGUF of SmolLM2's shapes".to_string(),
            Model::from_gguf_bytes(
                "seeded-smollm2",
                kernels::seeded_llama_gguf_shaped(7, &kernels::SeededShape::smollm2()),
            ),
        ),
    };
    println!("## SmolLM2 decode ({what})\n");
    let model = match model {
        Ok(model) => model,
        Err(err) => {
            println!("n/a: cannot load the model: {err}\n");
            return;
        }
    };
    let cpu = CpuBackend::new();
    let backends: [(&str, &dyn Backend); 2] = [("cpu", &cpu), ("cuda", cuda)];
    println!(
        "| streams | backend | first tokens, ms | decode tokens/s | tokens |\n| ---: | --- | ---: | ---: | --- |"
    );
    for streams in [1usize, 8] {
        let mut outputs = Vec::new();
        for (name, backend) in backends {
            match generate(&model, backend, streams, 32) {
                Ok((first, rate, tokens)) => {
                    println!(
                        "| {streams} | {name} | {:.1} | {rate:.1} | {} |",
                        1000.0 * first,
                        tokens.iter().map(Vec::len).sum::<usize>()
                    );
                    summary.add(
                        "SmolLM2 decode tokens/s",
                        &format!("{streams} streams"),
                        &format!("proofmesh {name}"),
                        format!("{rate:.1}"),
                    );
                    outputs.push(tokens);
                }
                Err(err) => println!("| {streams} | {name} | n/a | n/a | {err} |"),
            }
        }
        if let [a, b] = &outputs[..] {
            summary.add(
                "SmolLM2 decode tokens/s",
                &format!("{streams} streams"),
                "cpu = cuda tokens",
                if a == b { "yes" } else { "NO" },
            );
        }
    }
    println!();
}

/// Decodes `streams` chats together, greedy, `tokens` each: (seconds to every stream's first
/// token, decode tokens/s after it, each stream's tokens in order of its key).
fn generate(
    model: &Model,
    backend: &dyn Backend,
    streams: usize,
    tokens: usize,
) -> Result<(f64, f64, Vec<Vec<u32>>), kernels::Error> {
    let mut batch = model.generator()?;
    for i in 0..streams {
        let json = serde_json::json!({
            "messages": [{"role": "user", "content": format!("Tell me a long story about the number {i}.")}],
            "max_tokens": tokens,
        });
        batch.add(
            i as u64,
            &kernels::GenerateRequest::parse(json.to_string().as_bytes())?,
        )?;
    }
    let start = Instant::now();
    let mut produced = 0usize;
    let mut count = |_: u64, _: &kernels::Step<'_>| {
        produced += 1;
        true
    };
    let mut done = batch.step(backend, &mut count)?;
    let first = start.elapsed().as_secs_f64();
    let decoding = Instant::now();
    while !batch.is_empty() {
        done.extend(batch.step(backend, &mut count)?);
    }
    let secs = decoding.elapsed().as_secs_f64();
    done.sort_by_key(|(key, _)| *key);
    let rate = produced.saturating_sub(streams) as f64 / secs.max(1e-9);
    Ok((
        first,
        rate,
        done.into_iter().map(|(_, c)| c.tokens).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decode table's helper on the CPU: every stream's tokens, in key order, the same
    /// whether decoded alone or with the others.
    #[test]
    fn generate_returns_each_streams_tokens() {
        let model = Model::from_gguf_bytes("seeded", kernels::seeded_llama_gguf(3, 2)).unwrap();
        let cpu = CpuBackend::new();
        let (first, rate, together) = generate(&model, &cpu, 3, 6).unwrap();
        assert!(first > 0.0 && rate > 0.0);
        assert_eq!(together.len(), 3);
        let (_, _, alone) = generate(&model, &cpu, 1, 6).unwrap();
        assert_eq!(alone[0], together[0]);
        assert!(together.iter().all(|t| !t.is_empty() && t.len() <= 6));
    }
}
