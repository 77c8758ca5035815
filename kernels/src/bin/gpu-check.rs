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
