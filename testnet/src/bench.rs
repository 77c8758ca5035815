//! Load generation: submit jobs through every node with bounded concurrency, measure
//! submit→result and submit→finalized latency and throughput.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::sol_types::SolCall;
use anyhow::{Context, Result};
use serde::Serialize;

use crate::client::{Client, signed_job};
use crate::net::Testnet;

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn percentiles(mut v: Vec<f64>) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Some(Percentiles {
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    })
}

/// One node's resident memory (MiB) when the run started, when half its jobs were done and at
/// the end, and the size of its data directory (RocksDB) before and after.
#[derive(Debug, Serialize)]
pub struct NodeFootprint {
    pub name: String,
    pub rss_start_mib: f64,
    pub rss_middle_mib: f64,
    pub rss_end_mib: f64,
    /// Resident memory when each tenth of the jobs had been started (10 %, 20 %, … 90 %), then
    /// at the end: where it levels off, a soak shows it.
    pub rss_by_tenth_mib: Vec<f64>,
    pub disk_start_mib: f64,
    pub disk_end_mib: f64,
    /// Growth of the data directory per finalized job.
    pub disk_bytes_per_job: f64,
}

/// Resident set size of process `pid` in MiB (`VmRSS`), 0 when it cannot be read.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Total size in bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

const MIB: f64 = 1024.0 * 1024.0;

/// One job's timings: submit→result and submit→finalized (ms), whether it finalized, its
/// completion tokens (a generating model) and its time to first token (ms, streamed jobs).
type Outcome = (f64, f64, bool, Option<u64>, Option<f64>);

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub jobs: usize,
    pub concurrency: usize,
    pub nodes: usize,
    pub finalized: usize,
    pub failed: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub wall_s: f64,
    /// Finalized jobs per second over the whole run (submission to last finalization).
    pub jobs_per_s: f64,
    pub submit_to_result: Option<Percentiles>,
    pub submit_to_finalized: Option<Percentiles>,
    pub footprint: Vec<NodeFootprint>,
    /// Jobs paid by x402 from the client's OPG on the EVM (each settled on the bridge and
    /// credited before it runs) rather than signed from its native account.
    pub x402: bool,
    /// Anchors the validators posted on the EVM during the run, per minute.
    pub anchors_per_min: Option<f64>,
    /// For a text-generation model: completion tokens of the finalized jobs, their rate over
    /// the run (aggregate, every stream together) and each job's own decode rate (completion
    /// tokens over its submit→result time).
    pub completion_tokens: Option<u64>,
    pub completion_tokens_per_s: Option<f64>,
    pub job_tokens_per_s_p50: Option<f64>,
    /// Jobs sent as streamed OpenAI chat completions (paid by an API key) to the inference
    /// nodes, which stream what they run; `time_to_first_token` is from the request to the
    /// first chunk that carries text.
    pub stream: bool,
    pub time_to_first_token: Option<Percentiles>,
}

/// Runs `jobs` jobs with `concurrency` workers; each worker submits through the nodes in turn,
/// then waits for its job to be final on the same node.
/// `model` names one of the testnet's models; `None` is the first (the default model).
pub fn run(
    net: &Testnet,
    model: Option<&str>,
    jobs: usize,
    concurrency: usize,
    seed: u64,
    x402: bool,
    stream: bool,
) -> Result<BenchReport> {
    if x402 && net.domain.payments.is_none() {
        anyhow::bail!("--x402 needs a testnet with an EVM chain (started without --no-evm)");
    }
    let anchored = || {
        net.evm.as_ref().and_then(|e| {
            let rpc = evm::Rpc::new(&e.rpc_url, Duration::from_secs(5));
            let raw = rpc
                .eth_call(
                    e.settlement,
                    evm::contracts::ISettlement::lastAnchoredHeightCall {}
                        .abi_encode()
                        .into(),
                    "latest",
                )
                .ok()?;
            evm::contracts::ISettlement::lastAnchoredHeightCall::abi_decode_returns(&raw).ok()
        })
    };
    let anchored_before = anchored();
    let key = net.client_key()?;
    let model = net.model(model)?;
    let model_id: kernels::ModelId = model
        .id
        .parse()
        .map_err(|e| anyhow::anyhow!("model id: {e}"))?;
    let input = std::fs::read_to_string(&model.example_input)?;
    // Streamed jobs: an OpenAI chat request of the example chat, paid by one API key.
    let streamed = if stream {
        let example: serde_json::Value = serde_json::from_str(&input)?;
        let api_key = chain::apikey::ApiKey::create(
            &key,
            u128::MAX / 4,
            chain::types::now_ms() / 1000 + 86_400,
            vec![model_id],
            &net.domain,
        )?;
        Some((
            serde_json::json!({
                "model": model.name, "messages": example["messages"],
                "max_tokens": example["max_tokens"], "temperature": 0, "stream": true,
                "stream_options": {"include_usage": true},
            }),
            format!("Bearer {}", api_key.encode()),
        ))
    } else {
        None
    };
    // Every node takes jobs, streamed ones too: a node that does not run the model streams
    // what the inference node it routes to sends it.
    let urls: Vec<String> = net.nodes.iter().map(|n| n.http.clone()).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    // Memory at the start, when half the jobs are done, and at the end; disk before and after.
    let data_dirs: Vec<std::path::PathBuf> =
        net.nodes.iter().map(|n| n.home.join("data")).collect();
    let rss_start: Vec<f64> = net.nodes.iter().map(|n| rss_mib(n.pid)).collect();
    let disk_start: Vec<u64> = data_dirs.iter().map(|d| dir_bytes(d)).collect();
    // Per tenth of the jobs (index 0 = 10 %), each node's RSS when that job was taken.
    let rss_tenths = Arc::new(Mutex::new(vec![None::<Vec<f64>>; 9]));
    let started = Instant::now();
    let base_nonce =
        seed.wrapping_mul(1_000_003) % (1 << 40) + (chain::types::now_ms() % (1 << 20)) * (1 << 20);
    // x402 jobs' nonces (their validAfter, in the past): a run's block of `jobs` seconds,
    // placed by the clock so that runs do not overlap.
    let x402_base = (chain::types::now_ms() / 1000).saturating_sub(86_400)
        - (chain::types::now_ms() / 1000 % 600) * jobs as u64;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, results, urls, key, input, streamed) = (
                next.clone(),
                results.clone(),
                urls.clone(),
                key.clone(),
                input.clone(),
                streamed.clone(),
            );
            let rss_tenths = rss_tenths.clone();
            let info = model.clone();
            let pids: Vec<u32> = net.nodes.iter().map(|n| n.pid).collect();
            let domain = net.domain;
            std::thread::spawn(move || {
                let client = Client::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs {
                        break;
                    }
                    if let Some(tenth) = (1..10).find(|t| i == jobs * t / 10)
                        && let Ok(mut m) = rss_tenths.lock()
                    {
                        m[tenth - 1] = Some(pids.iter().map(|p| rss_mib(*p)).collect());
                    }
                    let node = &urls[i % urls.len()];
                    // Vary the input a little so jobs differ; the model ignores whitespace.
                    let text = format!("{input}{}", " ".repeat(i % 7));
                    let t0 = Instant::now();
                    let outcome = (|| -> Result<Outcome> {
                        let price = info.max_fee(&text)?;
                        if let Some((body, bearer)) = &streamed {
                            let url = format!("{node}/v1/chat/completions");
                            let (mut first, mut id, mut tokens, mut error) =
                                (None, None, 0u64, None);
                            let status = client.post_events(
                                &url,
                                body,
                                &[("authorization", bearer.as_str())],
                                &mut |data| {
                                    let Ok(chunk) = serde_json::from_str::<serde_json::Value>(data)
                                    else {
                                        return;
                                    };
                                    if chunk.get("error").is_some() {
                                        error = Some(chunk.to_string());
                                    }
                                    let text = chunk["choices"][0]["delta"]["content"].as_str();
                                    if text.is_some_and(|t| !t.is_empty()) && first.is_none() {
                                        first = Some(t0.elapsed().as_secs_f64() * 1000.0);
                                    }
                                    if let Some(j) = chunk["proof"]["job_id"].as_str() {
                                        id = Some(j.to_string());
                                    }
                                    if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                                        tokens = n;
                                    }
                                },
                            )?;
                            let t_result = t0.elapsed().as_secs_f64() * 1000.0;
                            if let Some(e) = error {
                                anyhow::bail!("HTTP {status}: {e}");
                            }
                            let id =
                                id.with_context(|| format!("HTTP {status}: no proof chunk"))?;
                            let fin = client.wait_job(node, &id, Duration::from_secs(120))?;
                            let t_final = t0.elapsed().as_secs_f64() * 1000.0;
                            return Ok((
                                t_result,
                                t_final,
                                fin["status"] == "finalized",
                                Some(tokens),
                                first,
                            ));
                        }
                        let url = format!("{node}/v1/jobs");
                        let reply = if x402 {
                            let (body, header) =
                                paid_job(&key, &domain, model_id, &text, price, i, x402_base)?;
                            client
                                .post_with(&url, &body, &[("PAYMENT-SIGNATURE", &header)])?
                                .ok()?
                        } else {
                            let body = signed_job(
                                &key,
                                &domain,
                                model_id,
                                &text,
                                price,
                                base_nonce + i as u64,
                            )?;
                            client.post(&url, &body)?.ok()?
                        };
                        let t_result = t0.elapsed().as_secs_f64() * 1000.0;
                        let id = reply["job_id"].as_str().context("no job_id")?.to_string();
                        let tokens = reply["output"]["tokens"].as_array().map(|t| t.len() as u64);
                        let fin = client.wait_job(node, &id, Duration::from_secs(120))?;
                        let t_final = t0.elapsed().as_secs_f64() * 1000.0;
                        Ok((
                            t_result,
                            t_final,
                            fin["status"] == "finalized",
                            tokens,
                            None,
                        ))
                    })();
                    results
                        .lock()
                        .map(|mut r| r.push(outcome.map_err(|e| format!("{e:#}"))))
                        .ok();
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let wall = started.elapsed().as_secs_f64();
    let interval = crate::net::testnet_params().anchor_interval.max(1);
    let anchors_per_min = anchored_before
        .zip(anchored())
        .map(|(a, b)| (b.saturating_sub(a) / interval) as f64 * 60.0 / wall);
    let results = std::mem::take(
        &mut *results
            .lock()
            .map_err(|_| anyhow::anyhow!("worker panicked"))?,
    );
    let mut to_result = Vec::new();
    let mut to_final = Vec::new();
    let (mut finalized, mut failed, mut errors, mut first_error) = (0, 0, 0, None);
    let (mut completion_tokens, mut job_rates, mut firsts) = (None::<u64>, Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok((a, b, ok, tokens, first)) => {
                firsts.extend(first);
                to_result.push(a);
                to_final.push(b);
                if ok {
                    finalized += 1
                } else {
                    failed += 1
                }
                if let (true, Some(n)) = (ok, tokens) {
                    *completion_tokens.get_or_insert(0) += n;
                    job_rates.push(n as f64 / (a / 1000.0));
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let rss_tenths = rss_tenths.lock().map(|m| m.clone()).unwrap_or_default();
    let at_tenth = |t: usize, node: usize| {
        rss_tenths
            .get(t)
            .and_then(|s| s.as_ref())
            .map_or(0.0, |s| s[node])
    };
    let footprint = net
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let disk_end = dir_bytes(&data_dirs[i]);
            let rss_end = rss_mib(n.pid);
            let mut rss_by_tenth_mib: Vec<f64> = (0..9).map(|t| at_tenth(t, i)).collect();
            rss_by_tenth_mib.push(rss_end);
            NodeFootprint {
                name: n.name.clone(),
                rss_start_mib: rss_start[i],
                rss_middle_mib: at_tenth(4, i),
                rss_end_mib: rss_end,
                rss_by_tenth_mib,
                disk_start_mib: disk_start[i] as f64 / MIB,
                disk_end_mib: disk_end as f64 / MIB,
                disk_bytes_per_job: disk_end.saturating_sub(disk_start[i]) as f64
                    / finalized.max(1) as f64,
            }
        })
        .collect();
    Ok(BenchReport {
        footprint,
        jobs,
        concurrency,
        nodes: urls.len(),
        finalized,
        failed,
        errors,
        first_error,
        wall_s: wall,
        jobs_per_s: finalized as f64 / wall,
        submit_to_result: percentiles(to_result),
        submit_to_finalized: percentiles(to_final),
        x402,
        anchors_per_min,
        completion_tokens,
        completion_tokens_per_s: completion_tokens.map(|n| n as f64 / wall),
        job_tokens_per_s_p50: percentiles(job_rates).map(|p| p.p50_ms),
        stream,
        time_to_first_token: percentiles(firsts),
    })
}

/// Job `i` paid by x402, as a client library builds it: the body without a signed job, and
/// the `PAYMENT-SIGNATURE` header (the EIP-3009 authorization bound to the job; its
/// `validAfter`, the job's nonce, differs per job).
fn paid_job(
    key: &chain::PrivateKeySigner,
    domain: &chain::signing::Domain,
    model: kernels::ModelId,
    input: &str,
    price: u128,
    i: usize,
    base: u64,
) -> Result<(serde_json::Value, String)> {
    let payments = domain.payments.context("no x402 on this testnet")?;
    let now = chain::types::now_ms() / 1000;
    // validAfter is the job's nonce for this payer: distinct per job and per run (`base`).
    let after = base.saturating_sub(i as u64);
    let job = chain::JobRequest {
        client: key.address(),
        model_id: model,
        input_hash: alloy::primitives::keccak256(input.as_bytes()),
        max_fee: price,
        nonce: after,
        expiry: now + 300,
    }
    .sign_payment(
        key,
        domain,
        chain::record::Payment {
            value: price,
            valid_after: after,
            valid_before: now + 300,
        },
    )?;
    let offer = serde_json::json!({
        "scheme": "exact",
        "network": evm::x402::network(payments.chain_id),
        "amount": price.to_string(),
        "asset": payments.opg,
        "payTo": payments.settlement,
    });
    let payload = evm::x402::payment_payload(2, domain, &job, &offer)?;
    Ok((
        serde_json::json!({"model": model, "input": input}),
        evm::x402::encode_header(&payload),
    ))
}
