//! Fault scenarios run against a live testnet; each returns a JSON report or an error saying
//! which expectation failed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::client::{Client, signed_job};
use crate::net::Testnet;

/// Submits one job through node `via` and waits until it is final there; returns (job id, status).
pub fn submit_and_wait(
    net: &Testnet,
    via: usize,
    nonce: u64,
    timeout: Duration,
) -> Result<(String, Value)> {
    let model = net.models.first().context("no model")?;
    submit_model_and_wait(net, via, model, nonce, timeout)
}

/// [`submit_and_wait`] for a job of `model`.
pub fn submit_model_and_wait(
    net: &Testnet,
    via: usize,
    model: &crate::net::ModelInfo,
    nonce: u64,
    timeout: Duration,
) -> Result<(String, Value)> {
    let client = Client::new();
    let key = net.client_key()?;
    let model_id: kernels::ModelId = model.id.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let input = std::fs::read_to_string(&model.example_input)?;
    let node = &net.nodes[via].http;
    let body = signed_job(
        &key,
        &net.domain,
        model_id,
        &input,
        model.price.parse()?,
        nonce,
    )?;
    let reply = client
        .post(&format!("{node}/v1/jobs"), &body)?
        .ok()
        .with_context(|| format!("submitting via {}", net.nodes[via].name))?;
    let id = reply["job_id"].as_str().context("no job_id")?.to_string();
    let status = client.wait_job(node, &id, timeout)?;
    Ok((id, status))
}

fn nonce_base() -> u64 {
    chain::types::now_ms() * 1000
}

/// Crash a validator (SIGKILL), keep finalizing jobs, restart it on its home and wait until it
/// has caught up.
pub fn kill(net: &mut Testnet) -> Result<Value> {
    let client = Client::new();
    let victim = net
        .nodes
        .iter()
        .rposition(|n| n.role == "validator")
        .context("no validator")?;
    let base = nonce_base();
    let alive: Vec<usize> = (0..net.nodes.len()).filter(|i| *i != victim).collect();
    let (before, _) = submit_and_wait(net, alive[0], base, Duration::from_secs(30))?;
    net.kill(victim);
    let killed_at = client.height(&net.nodes[alive[0]].http).unwrap_or(0);
    let t = Instant::now();
    let mut during = Vec::new();
    for (k, i) in alive.iter().enumerate() {
        let (id, st) = submit_and_wait(net, *i, base + 1 + k as u64, Duration::from_secs(60))?;
        if st["status"] != "finalized" {
            bail!(
                "job {id} via {} ended {st} while a validator was down",
                net.nodes[*i].name
            );
        }
        during.push(id);
    }
    let during_s = t.elapsed().as_secs_f64();
    net.restart(victim)?;
    let t = Instant::now();
    let target = client.height(&net.nodes[alive[0]].http).unwrap_or(0);
    loop {
        if client.height(&net.nodes[victim].http).unwrap_or(0) >= target {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} did not catch up to height {target} within 60 s",
                net.nodes[victim].name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(json!({
        "scenario": "kill",
        "victim": net.nodes[victim].name,
        "height_at_kill": killed_at,
        "job_before": before,
        "jobs_finalized_while_down": during.len(),
        "seconds_for_jobs_while_down": during_s,
        "caught_up_to": target,
        "catch_up_s": t.elapsed().as_secs_f64(),
    }))
}

/// A hostile peer sends garbage to every node; every node must stay up, count the rejections and
/// keep finalizing jobs.
pub fn garbage(net: &Testnet) -> Result<Value> {
    let client = Client::new();
    let mut per_node = Vec::new();
    for (i, n) in net.nodes.iter().enumerate() {
        let report = crate::garbage::send_garbage(&n.p2p, 1000 + i as u64)?;
        let metrics = client
            .get(&format!("{}/metrics", n.http))
            .map(|r| r.status)
            .unwrap_or(0);
        let status = client.get(&format!("{}/v1/status", n.http))?;
        if status.status != 200 {
            bail!("{} stopped answering after garbage", n.name);
        }
        per_node.push(json!({"node": n.name, "report": report, "metrics_status": metrics}));
    }
    let (id, st) = submit_and_wait(net, 0, nonce_base(), Duration::from_secs(30))?;
    if st["status"] != "finalized" {
        bail!("job {id} after garbage ended {st}");
    }
    Ok(json!({"scenario": "garbage", "nodes": per_node, "job_after": id}))
}
