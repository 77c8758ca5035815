//! `proofmesh-testnet`: local testnets of real `proofmesh` processes on 127.0.0.1.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use testnet::{Testnet, UpOptions};

#[derive(Parser)]
#[command(
    name = "proofmesh-testnet",
    version,
    about = "Local proofmesh testnets: up, down, bench, scenario"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Make keys, genesis and the demo model; start the nodes; wait until they finalize blocks.
    Up {
        #[arg(long, default_value_t = 4)]
        validators: usize,
        #[arg(long, default_value_t = 2)]
        inference: usize,
        #[arg(long)]
        dir: PathBuf,
        /// Seed of the demo model's weights.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Chain id of the new network (default: random, so signatures for one testnet are
        /// not valid on another).
        #[arg(long)]
        chain_id: Option<u64>,
        /// The `proofmesh` binary (default: next to this one).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Make inference node I (0-based) sign wrong outputs (repeatable).
        #[arg(long = "faulty-inference")]
        faulty_inference: Vec<usize>,
        #[arg(long, default_value_t = 90)]
        timeout: u64,
        /// all-MiniLM-L6-v2 to serve as the default model (default: where scripts/fetch-minilm
        /// puts it).
        #[arg(long)]
        minilm_dir: Option<PathBuf>,
        /// Serve only the seeded demo MLPs.
        #[arg(long, conflicts_with = "minilm_dir")]
        no_minilm: bool,
        /// Also serve SmolLM2-135M-Instruct (text generation), from DIR or, with no DIR, from
        /// where scripts/fetch-smollm2 puts it.
        #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "DIR")]
        smollm2: Option<String>,
        /// Reuse this simulated TEE root (root.json from `proofmesh attest simulate root` or a
        /// testnet's DIR/tee) instead of making one.
        #[arg(long)]
        tee_root: Option<PathBuf>,
        /// Make inference node I forge its TEE proofs (repeatable).
        #[arg(long = "forging-inference")]
        forging_inference: Vec<usize>,
        /// Make inference node I replay its first TEE proof on every record (repeatable).
        #[arg(long = "replaying-inference")]
        replaying_inference: Vec<usize>,
        /// Make validator I publish undecodable proposals (repeatable).
        #[arg(long = "garbage-proposer")]
        garbage_proposers: Vec<usize>,
        /// Make validator I follow each prevote for a block with a nil prevote (repeatable).
        #[arg(long = "double-voter")]
        double_voters: Vec<usize>,
        /// Run without an EVM chain: no anvil, no contracts, no anchoring.
        #[arg(long)]
        no_evm: bool,
        /// Only the first inference node starts with the models' files; the other nodes fetch
        /// them over the mesh, checked against each model id.
        #[arg(long)]
        single_holder: bool,
        /// With --single-holder: inference node I also holds the files but serves them
        /// corrupted (repeatable).
        #[arg(long = "corrupt-provider", requires = "single_holder")]
        corrupt_providers: Vec<usize>,
    },
    /// Stop every node of the testnet in DIR (by pid).
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Submit N jobs with C concurrent clients across all nodes; print a JSON report.
    Bench {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        jobs: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Model name (default: the testnet's first model), optionally with its own job
        /// count (`NAME:JOBS`); repeat it to bench several models one after the other in one
        /// run (`--stream` applies to the generating ones).
        #[arg(long)]
        model: Vec<String>,
        /// Pay each job by x402 from the client's OPG on the EVM chain.
        #[arg(long)]
        x402: bool,
        /// A text-generation model's jobs as streamed OpenAI chat completions (paid by an API
        /// key) through every node: reports time to first token.
        #[arg(long, conflicts_with = "x402")]
        stream: bool,
    },
    /// Transactions per second of each kind (transfer, bond, unbond, register_model, vote)
    /// from ACCOUNTS funded accounts at once, against transfers in the same run, and block
    /// intervals at epoch changes against the others; a JSON report.
    BenchTxs {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 32)]
        accounts: usize,
        #[arg(long, default_value_t = 8)]
        per_account: usize,
    },
    /// Scenarios: `kill` (crash a validator, keep finalizing, restart, catch up), `garbage` (a
    /// hostile peer sends malformed messages to every node), `join` (a validator and an
    /// inference node join by stake, a validator leaves), `equivocate` (a double-signer is
    /// slashed and jailed), `governance` (a fee split passes by stake; no quorum; a veto),
    /// `vesting` (locked tokens stay until the cliff; what vested moves), `downtime` (a stopped
    /// validator is jailed without a slash, then unjails).
    Scenario {
        name: String,
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Up {
            validators,
            inference,
            dir,
            seed,
            chain_id,
            bin,
            faulty_inference,
            timeout,
            minilm_dir,
            no_minilm,
            smollm2,
            tee_root,
            forging_inference,
            replaying_inference,
            garbage_proposers,
            double_voters,
            no_evm,
            single_holder,
            corrupt_providers,
        } => {
            let opts = UpOptions {
                dir,
                validators,
                inference,
                seed,
                chain_id,
                bin: bin.unwrap_or_else(testnet::net::default_bin),
                faulty_inference,
                ready_timeout: Duration::from_secs(timeout),
                minilm_dir: (!no_minilm)
                    .then(|| minilm_dir.unwrap_or_else(testnet::net::default_minilm_dir)),
                smollm2_dir: smollm2.map(|d| {
                    if d.is_empty() {
                        testnet::net::default_smollm2_dir()
                    } else {
                        PathBuf::from(d)
                    }
                }),
                tee_root,
                forging_inference,
                replaying_inference,
                garbage_proposers,
                double_voters,
                evm: !no_evm,
                single_holder,
                corrupt_providers,
                no_fetch: Vec::new(),
            };
            let net = Testnet::up(&opts)?;
            println!("{}", serde_json::to_string_pretty(&net)?);
            Ok(())
        }
        Cmd::Down { dir } => {
            let net = Testnet::load(&dir)?;
            net.down();
            std::fs::remove_file(dir.join("testnet.json")).context("removing testnet.json")?;
            eprintln!("stopped {} nodes", net.nodes.len());
            Ok(())
        }
        Cmd::Bench {
            dir,
            jobs,
            concurrency,
            seed,
            model,
            x402,
            stream,
        } => {
            let net = Testnet::load(&dir)?;
            if model.len() <= 1 {
                let (name, jobs) = match model.first() {
                    Some(m) => model_jobs(m, jobs)?,
                    None => (None, jobs),
                };
                let report =
                    testnet::bench::run(&net, name, jobs, concurrency, seed, x402, stream)?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let mut reports = Vec::new();
            for m in &model {
                let (name, jobs) = model_jobs(m, jobs)?;
                let info = net.model(name)?;
                let example = std::fs::read(&info.example_input)?;
                let generates = kernels::GenerateRequest::parse(&example).is_ok();
                eprintln!("bench: {} ({jobs} jobs)", info.name);
                let report = testnet::bench::run(
                    &net,
                    name,
                    jobs,
                    concurrency,
                    seed,
                    x402,
                    stream && generates,
                )?;
                reports.push(serde_json::json!({"model": info.name, "report": report}));
            }
            println!("{}", serde_json::to_string_pretty(&reports)?);
            Ok(())
        }
        Cmd::BenchTxs {
            dir,
            accounts,
            per_account,
        } => {
            let net = Testnet::load(&dir)?;
            let report = testnet::txbench::run(&net, accounts, per_account)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Cmd::Scenario { name, dir } => {
            let mut net = Testnet::load(&dir)?;
            let report = match name.as_str() {
                "kill" => testnet::scenario::kill(&mut net)?,
                "garbage" => testnet::scenario::garbage(&net)?,
                "join" => testnet::economy::join(&mut net)?,
                "equivocate" => testnet::economy::equivocate(&mut net)?,
                "governance" => testnet::economy::governance(&mut net)?,
                "vesting" => testnet::economy::vesting(&mut net)?,
                "downtime" => testnet::economy::downtime(&mut net)?,
                other => bail!(
                    "unknown scenario {other:?}; known: kill, garbage, join, equivocate, governance, vesting, downtime"
                ),
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

/// `NAME` or `NAME:JOBS` (a job count of its own for that model).
fn model_jobs(spec: &str, jobs: usize) -> Result<(Option<&str>, usize)> {
    match spec.rsplit_once(':') {
        Some((name, n)) => Ok((
            Some(name),
            n.parse()
                .with_context(|| format!("--model {spec}: {n:?} is not a job count"))?,
        )),
        None => Ok((Some(spec), jobs)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--smollm2` takes its directory or none (then the default), in any position; a
    /// repeated `--model` may carry its own job count.
    #[test]
    fn optional_values_parse() {
        for args in [
            &["t", "up", "--dir", "d", "--smollm2"][..],
            &["t", "up", "--smollm2", "--dir", "d"][..],
        ] {
            let Cmd::Up { smollm2, .. } = Cli::try_parse_from(args).unwrap().command else {
                panic!("not up");
            };
            assert_eq!(smollm2.as_deref(), Some(""), "{args:?}");
        }
        let cli = Cli::try_parse_from(["t", "up", "--dir", "d", "--smollm2", "/m"]).unwrap();
        let Cmd::Up { smollm2, .. } = cli.command else {
            panic!("not up");
        };
        assert_eq!(smollm2.as_deref(), Some("/m"));
        assert_eq!(model_jobs("smol:12", 5).unwrap(), (Some("smol"), 12));
        assert_eq!(model_jobs("smol", 5).unwrap(), (Some("smol"), 5));
        assert!(model_jobs("smol:x", 5).is_err());
    }
}
