//! Sentence-embedding throughput of a BERT model directory on the CPU backend, whole path from
//! text to normalised embedding, printed as one JSON line (what `scripts/bench-onnxruntime`
//! reads to compare with ONNX Runtime on the same sentences).
//!
//! ```text
//! cargo run --release -p kernels --example minilm-throughput -- \
//!     --model-dir DIR --sentences kernels/benches/sentences.txt --batch 32 --rounds 5 \
//!     [--embeddings OUT.json]
//! ```
//!
//! One untimed warm-up pass over all sentences, then `--rounds` timed passes, each embedding
//! every sentence in runs of `--batch` texts (`{"texts": [...]}` into `Model::run`, as a job
//! does). Prints `{"system":"proofmesh","batch":B,"sentences":S,"tokens":N,"seconds":T,
//! "sentences_per_s":..,"tokens_per_s":..,"passes":[..]}`, where `T` is the median pass,
//! `passes` every timed pass in order (seconds), and `N` counts real tokens ([CLS] and [SEP]
//! included, no padding). `--embeddings` writes the warm-up pass's
//! embeddings, `{"shape": [S, dim], "embeddings": [[..], ..]}`, in the sentences' order.

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use kernels::{CpuBackend, Model};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

struct Args {
    model_dir: PathBuf,
    sentences: PathBuf,
    batch: usize,
    rounds: usize,
    embeddings: Option<PathBuf>,
}

const USAGE: &str = "usage: minilm-throughput --model-dir DIR --sentences FILE --batch B \
                     --rounds R [--embeddings OUT.json]";

fn parse_args() -> Result<Args> {
    let mut model_dir = None;
    let mut sentences = None;
    let mut batch = None;
    let mut rounds = None;
    let mut embeddings = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(flag) = args.next() {
        let flag = flag.to_string_lossy().into_owned();
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |what: &str| -> Result<usize> {
            let n: usize = value
                .to_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{what} must be a positive integer, got {value:?}"))?;
            if n == 0 {
                return Err(format!("{what} must be a positive integer, got 0").into());
            }
            Ok(n)
        };
        match flag.as_str() {
            "--model-dir" => model_dir = Some(PathBuf::from(&value)),
            "--sentences" => sentences = Some(PathBuf::from(&value)),
            "--batch" => batch = Some(number("--batch")?),
            "--rounds" => rounds = Some(number("--rounds")?),
            "--embeddings" => embeddings = Some(PathBuf::from(&value)),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}").into()),
        }
    }
    let missing = |what: &str| format!("{what} is required\n{USAGE}");
    Ok(Args {
        model_dir: model_dir.ok_or_else(|| missing("--model-dir"))?,
        sentences: sentences.ok_or_else(|| missing("--sentences"))?,
        batch: batch.ok_or_else(|| missing("--batch"))?,
        rounds: rounds.ok_or_else(|| missing("--rounds"))?,
        embeddings,
    })
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minilm-throughput: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    if args.batch > kernels::MAX_ROWS {
        return Err(format!("--batch is at most {}", kernels::MAX_ROWS).into());
    }
    let text = std::fs::read_to_string(&args.sentences)
        .map_err(|e| format!("reading {}: {e}", args.sentences.display()))?;
    let sentences: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if sentences.is_empty() {
        return Err(format!("{} holds no sentences", args.sentences.display()).into());
    }
    let model = Model::load(&args.model_dir)
        .map_err(|e| format!("loading {}: {e}", args.model_dir.display()))?;
    let mut tokens = 0usize;
    for s in &sentences {
        let ids = model
            .tokenize(s)
            .ok_or_else(|| format!("{} is not a text model", args.model_dir.display()))?;
        tokens += ids.len();
    }
    let cpu = CpuBackend::new();
    let inputs: Vec<Vec<u8>> = sentences
        .chunks(args.batch)
        .map(|texts| {
            serde_json::json!({ "texts": texts })
                .to_string()
                .into_bytes()
        })
        .collect();

    // Warm-up, whose output is also the embeddings written out.
    let mut rows = Vec::with_capacity(sentences.len());
    let mut dim = 0;
    for input in &inputs {
        let out = model.run(&cpu, input)?;
        dim = out.shape.last().copied().unwrap_or(0);
        match out.rows_json() {
            serde_json::Value::Array(r) => rows.extend(r),
            _ => return Err("model output has no rows".into()),
        }
    }
    if let Some(path) = &args.embeddings {
        let json = serde_json::json!({ "shape": [sentences.len(), dim], "embeddings": rows });
        std::fs::write(path, json.to_string())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }

    let mut seconds = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let start = Instant::now();
        for input in &inputs {
            std::hint::black_box(model.run(&cpu, input)?);
        }
        seconds.push(start.elapsed().as_secs_f64());
    }
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    let line = serde_json::json!({
        "system": "proofmesh",
        "batch": args.batch,
        "sentences": sentences.len(),
        "tokens": tokens,
        "seconds": median,
        "sentences_per_s": sentences.len() as f64 / median,
        "tokens_per_s": tokens as f64 / median,
        "passes": seconds,
    });
    println!("{line}");
    Ok(())
}
