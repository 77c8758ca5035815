//! `proofmesh infer`: run a model locally, no network, and print the output with its hash.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;

/// Largest input file accepted: the most texts a call takes, each at the text limit, plus
/// JSON overhead.
const MAX_INPUT_BYTES: u64 = (kernels::MAX_ROWS * kernels::MAX_TEXT_BYTES) as u64 + (1 << 20);

#[derive(Args)]
pub struct InferArgs {
    /// Model directory (config.json, model.safetensors; tokenizer.json for a text model), or a
    /// GGUF language model: a directory holding model.gguf, or the .gguf file itself.
    #[arg(long)]
    model_dir: PathBuf,
    /// Input JSON: {"texts": ["...", ...]} for a text model, {"inputs": [[...], ...]} for an
    /// MLP, {"messages": [{"role": "user", "content": "..."}], "max_tokens": 64, "temperature":
    /// 0.7, "top_p": 0.9, "seed": 1, "stop": ["..."]} for a language model. `-` reads standard
    /// input.
    #[arg(long)]
    input: PathBuf,
    /// Where to run. `cuda` falls back to `cpu`, with a warning, when no GPU or driver is
    /// usable; the printed "backend" says which ran. Both give bit-identical outputs.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// The CPU kernels: `auto` (the fastest this CPU runs) or one forced variant, `avx512`,
    /// `avx2` or `portable` (same bits, other speed).
    #[arg(long, default_value = "auto")]
    cpu_kernel: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendKind {
    Cpu,
    Cuda,
}

/// Prints one JSON object: the output (`"embeddings"` rows for an encoder, `"data"` and
/// `"argmax"` for a classifier, `"text"`, `"tokens"`, `"prompt_tokens"` and `"finish_reason"`
/// for a language model), `"shape"`, `"output_hash"`, `"backend"` and `"model_id"`.
pub fn infer(a: InferArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PROOFMESH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let input = read_input(&a.input)?;
    let model = kernels::Model::load(&a.model_dir)
        .with_context(|| format!("loading the model in {}", a.model_dir.display()))?;
    let name = match a.backend {
        BackendKind::Cpu => "cpu",
        BackendKind::Cuda => "cuda",
    };
    let backend: std::sync::Arc<dyn kernels::Backend> = match (a.backend, a.cpu_kernel.as_str()) {
        (BackendKind::Cpu, "auto") => kernels::select(name)?,
        (BackendKind::Cpu, forced) => {
            let kernel: kernels::CpuKernel = forced.parse().context("--cpu-kernel")?;
            std::sync::Arc::new(kernels::CpuBackend::with_kernel(kernel).context("--cpu-kernel")?)
        }
        (BackendKind::Cuda, _) => kernels::select(name)?,
    };
    let output = model
        .run(backend.as_ref(), &input)
        .context("running the model")?;
    let mut json = output.to_json();
    if let Value::Object(obj) = &mut json {
        obj.insert(
            "output_hash".into(),
            format!("0x{}", hex::encode(output.hash())).into(),
        );
        obj.insert("backend".into(), backend.name().into());
        obj.insert("model_id".into(), model.id().to_string().into());
    }
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{json}").and_then(|()| stdout.flush()) {
        // The reader went away (`| head`): nothing left to tell it.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the output"),
    }
}

fn read_input(path: &PathBuf) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path)
                .with_context(|| format!("opening the input {}", path.display()))?,
        )
    };
    reader
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the input {}", path.display()))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        bail!(
            "the input {} is over {MAX_INPUT_BYTES} bytes",
            path.display()
        );
    }
    Ok(bytes)
}
