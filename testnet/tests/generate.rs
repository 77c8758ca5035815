//! Text generation on real processes: a 4-validator + 1-inference testnet serving the real
//! SmolLM2-135M-Instruct (registered `reexec`) runs a chat job, the validators re-execute its
//! whole decode and finalize it, and the network's completion is the one a local run gives,
//! token for token; a sampled job with a seed is reproduced the same way; the same weights
//! registered `tee` (another id) give the same answer proven by an SEV-SNP report.
//!
//! Needs the `proofmesh` binary (`cargo build --bin proofmesh`; `scripts/test` does it).

mod common;

use std::time::Duration;

use chain::ModelId;
use common::{Running, fresh_nonce, metric, wait_metric};
use serde_json::json;
use testnet::client::{Client, signed_job};

#[test]
fn validators_reexecute_and_finalize_generation_jobs() {
    let run = Running::up_with(4, 1, |o| {
        o.minilm_dir = None;
        o.smollm2_dir = Some(common::smollm2_dir());
    });
    let client = Client::new();
    let net = run.net();
    let model = net
        .models
        .iter()
        .find(|m| m.name == testnet::net::SMOLLM2)
        .unwrap()
        .clone();
    let model_id: ModelId = model.id.parse().unwrap();
    let key = net.client_key().unwrap();
    let local = kernels::Model::load(&common::smollm2_dir()).unwrap();
    let cpu = kernels::CpuBackend::new();
    let v0 = net.nodes[0].http.clone();
    let base = fresh_nonce();
    let chats = [
        json!({"messages": [{"role": "user", "content": "What is the capital of France?"}],
               "max_tokens": 24}),
        json!({"messages": [{"role": "user", "content": "Write a haiku about the sea."}],
               "max_tokens": 16, "temperature": 0.8, "top_p": 0.95, "seed": 42}),
    ];
    for (i, chat) in chats.iter().enumerate() {
        let input = chat.to_string();
        let max_fee = model.max_fee(&input).unwrap();
        let body = signed_job(
            &key,
            &net.domain,
            model_id,
            &input,
            max_fee,
            base + i as u64,
        )
        .unwrap();
        let reply = client.post(&format!("{v0}/v1/jobs"), &body).unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        let want = local.run(&cpu, input.as_bytes()).unwrap();
        let completion = want.completion.as_ref().unwrap();
        assert_eq!(
            reply.body["output"]["text"],
            completion.text.as_str(),
            "{}",
            reply.body
        );
        assert_eq!(
            reply.body["output_hash"],
            format!("0x{}", hex::encode(want.hash())),
            "{}",
            reply.body
        );
        if i == 0 {
            assert_eq!(completion.text, "The capital of France is Paris.");
        }
        let id = reply.body["job_id"].as_str().unwrap();
        let done = client.wait_job(&v0, id, Duration::from_secs(120)).unwrap();
        assert_eq!(done["status"], "finalized", "{done}");
        // Priced per token: the prompt's and the completion's, as the record counted them.
        let units = (completion.prompt_tokens.len() + completion.tokens.len()) as u64;
        assert_eq!(reply.body["units"], units, "{}", reply.body);
        let per_job: u128 = model.price.parse().unwrap();
        let fee = per_job + testnet::net::SMOLLM2_PRICE_PER_TOKEN * units as u128;
        assert_eq!(done["fee"], fee.to_string(), "{done}");
        for node in net.validators() {
            let st = client
                .wait_job(&node.http, id, Duration::from_secs(60))
                .unwrap();
            assert_eq!(st["status"], "finalized", "{}: {st}", node.name);
        }
    }
    // The TEE variant (same weights, another id, mode `tee`): the same answer, proven by the
    // inference node's SEV-SNP report instead of re-execution.
    let tee = net
        .models
        .iter()
        .find(|m| m.name == testnet::net::SMOLLM2_TEE)
        .unwrap();
    assert_ne!(tee.id, model.id);
    let input = chats[0].to_string();
    let body = signed_job(
        &key,
        &net.domain,
        tee.id.parse().unwrap(),
        &input,
        tee.max_fee(&input).unwrap(),
        base + 2,
    )
    .unwrap();
    let reply = client.post(&format!("{v0}/v1/jobs"), &body).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body["output"]["text"], "The capital of France is Paris.",
        "{}",
        reply.body
    );
    assert!(
        reply.body["proof"]["tee"]["report"].as_str().is_some(),
        "{}",
        reply.body
    );
    let id = reply.body["job_id"].as_str().unwrap();
    for node in net.validators() {
        let st = client
            .wait_job(&node.http, id, Duration::from_secs(120))
            .unwrap();
        assert_eq!(st["status"], "finalized", "{}: {st}", node.name);
    }

    // Concurrent jobs join one decode batch on the inference node; each gets the completion
    // it gets alone (the local run), so validators re-executing them one by one agree.
    let concurrent: Vec<String> = (0..3)
        .map(|i| {
            json!({"messages": [{"role": "user", "content": format!("Name a fruit, {i}.")}],
                   "max_tokens": 6 + 4 * i, "temperature": 0.7, "seed": i})
            .to_string()
        })
        .collect();
    let threads: Vec<_> = concurrent
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let body = signed_job(
                &key,
                &net.domain,
                model_id,
                input,
                model.max_fee(input).unwrap(),
                base + 10 + i as u64,
            )
            .unwrap();
            let url = format!("{v0}/v1/jobs");
            std::thread::spawn(move || Client::new().post(&url, &body).unwrap())
        })
        .collect();
    for (input, t) in concurrent.iter().zip(threads) {
        let reply = t.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        let want = local.run(&cpu, input.as_bytes()).unwrap();
        assert_eq!(
            reply.body["output_hash"],
            format!("0x{}", hex::encode(want.hash())),
            "{input}: {}",
            reply.body
        );
        let id = reply.body["job_id"].as_str().unwrap();
        let done = client.wait_job(&v0, id, Duration::from_secs(120)).unwrap();
        assert_eq!(done["status"], "finalized", "{done}");
    }

    // Every validator re-executed both reexec decodes (the sample rate is 100 %) and found no fraud. A
    // record finalizes on a quorum (3 of 4) of attestations, so the slowest validator may still
    // be re-executing the last decode when it does: its count is awaited, not read once.
    for v in net.validators() {
        let reexecuted = wait_metric(
            &client,
            &v.http,
            "proofmesh_reexec_seconds_count ",
            2.0,
            Duration::from_secs(60),
        );
        assert!(
            reexecuted >= 2.0,
            "{} re-executed {reexecuted} records",
            v.name
        );
        assert_eq!(
            metric(&client, &v.http, "proofmesh_fraud_detected_total "),
            0.0
        );
    }
}
