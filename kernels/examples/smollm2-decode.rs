//! Decode speed of a GGUF Llama model (SmolLM2-135M-Instruct) on the CPU backend in exact
//! mode: time to first token (prefill of a chat prompt), then tokens per second decoding
//! `--streams` generations together (continuous batching), greedy, `--tokens` each.
//!
//! ```text
//! cargo run --release -p kernels --example smollm2-decode -- --model DIR|FILE.gguf \
//!     --streams 1 --tokens 64 [--temperature 1.0]
//! ```
//!
//! Greedy by default; `--temperature T` samples (seeded per stream, the full vocabulary
//! ranked each token, as a client that leaves `top_k` and `top_p` unset asks).
//!
//! Prints one JSON line: `{"system":"proofmesh","streams":S,"prompt_tokens":P (all streams),
//! "ttft_s":..,"decode_tokens":N,"decode_s":..,"tokens_per_s":..}` where `tokens_per_s`
//! counts every stream's tokens (aggregate) over the decode steps after the first token.

use std::error::Error;
use std::time::Instant;

use kernels::{CpuBackend, GenerateRequest, Model};

fn main() -> Result<(), Box<dyn Error>> {
    let mut model = None;
    let (mut streams, mut tokens, mut temperature) = (1usize, 64usize, 0.0f64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(value()?),
            "--streams" => streams = value()?.parse()?,
            "--tokens" => tokens = value()?.parse()?,
            "--temperature" => temperature = value()?.parse()?,
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let model = Model::load(model.ok_or("--model DIR|FILE.gguf is required")?.as_ref())?;
    let backend = CpuBackend::new();
    let req = |i: usize| -> Result<GenerateRequest, Box<dyn Error>> {
        let json = serde_json::json!({
            "messages": [{"role": "user", "content": format!("Tell me a long story about the number {i}.")}],
            "max_tokens": tokens,
            "temperature": temperature,
            "seed": i,
        });
        Ok(GenerateRequest::parse(json.to_string().as_bytes())?)
    };
    let mut batch = model.generator()?;
    for i in 0..streams {
        batch.add(i as u64, &req(i)?)?;
    }
    let start = Instant::now();
    let mut produced = 0usize;
    let mut first = None;
    let mut on_step = |_: u64, _: &kernels::Step<'_>| {
        produced += 1;
        true
    };
    // The first step prefills every prompt and chooses every first token.
    let mut done = batch.step(&backend, &mut on_step)?;
    let ttft = start.elapsed().as_secs_f64();
    first.get_or_insert(Instant::now());
    while !batch.is_empty() {
        done.extend(batch.step(&backend, &mut on_step)?);
    }
    let decode = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let prompt_tokens: usize = done.iter().map(|(_, c)| c.prompt_tokens.len()).sum();
    let decoded = produced - streams;
    println!(
        "{}",
        serde_json::json!({
            "system": "proofmesh", "streams": streams, "prompt_tokens": prompt_tokens,
            "ttft_s": ttft, "decode_tokens": decoded, "decode_s": decode,
            "tokens_per_s": decoded as f64 / decode,
        })
    );
    Ok(())
}
