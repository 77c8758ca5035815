//! The whole path on real processes: a 4-validator + 2-inference testnet of `proofmesh` nodes on
//! 127.0.0.1 serves, proves, verifies, orders and settles jobs; refuses bad input; survives a
//! crashed validator and garbage on every protocol; a restarted node resumes from RocksDB.
//!
//! Needs the `proofmesh` binary (`cargo build --bin proofmesh`; `scripts/test` does it).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chain::{ModelId, PrivateKeySigner, TOTAL_SUPPLY};
use common::{Running, balance, fresh_nonce};
use serde_json::{Value, json};
use testnet::client::{Client, signed_job};
use testnet::{garbage, scenario};

const FINAL: Duration = Duration::from_secs(60);

/// The default model is the real all-MiniLM-L6-v2: the network's embeddings of the example
/// pair have the published cosine similarity, and its output hash is the one a local run gives.
fn check_minilm_output(model: &testnet::net::ModelInfo, body: &Value, output_hash: &str) {
    assert_eq!(model.name, testnet::net::MINILM);
    let rows = body["output"]["embeddings"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{body}");
    let row = |r: &Value| -> Vec<f64> {
        r.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (a, b) = (row(&rows[0]), row(&rows[1]));
    assert_eq!(a.len(), 384);
    let cosine: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!((cosine - 0.7553).abs() <= 0.0005, "cosine {cosine}");
    let local = kernels::Model::load(&common::minilm_dir()).unwrap();
    let input = std::fs::read(&model.example_input).unwrap();
    let out = local.run(&kernels::CpuBackend::new(), &input).unwrap();
    assert_eq!(output_hash, format!("0x{}", hex::encode(out.hash())));
}

#[test]
fn testnet_serves_proves_verifies_orders_and_settles_jobs() {
    let mut run = Running::up(4, 2, vec![]);
    let client = Client::new();
    let net = run.net();
    let model = net.models[0].clone();
    let model_id: ModelId = model.id.parse().unwrap();
    let price: u128 = model.price.parse().unwrap();
    let input = std::fs::read_to_string(&model.example_input).unwrap();
    let key = net.client_key().unwrap();
    let n = net.nodes.len();
    let v0 = net.nodes[0].http.clone();

    // Each node was given two bootstrap peers; Kademlia finds the rest.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for node in &net.nodes {
        loop {
            let peers = client
                .get(&format!("{}/v1/status", node.http))
                .unwrap()
                .body["peers"]
                .as_u64()
                .unwrap_or(0);
            if peers as usize == n - 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} found only {peers} of {} peers",
                node.name,
                n - 1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let supply_before = client
        .get(&format!("{v0}/v1/supply"))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(supply_before["total"], TOTAL_SUPPLY.to_string());
    let client_before = balance(&client, &v0, &net.client_address.to_string());
    let executors_before: BTreeMap<String, u128> = net
        .inference()
        .map(|i| {
            (
                i.address.to_string().to_lowercase(),
                balance(&client, &v0, &i.address.to_string()),
            )
        })
        .collect();

    // One job through every node, validators included.
    let base = fresh_nonce();
    let mut finalized: Vec<(String, Value)> = Vec::new();
    let mut first_body = None;
    for (i, node) in net.nodes.iter().enumerate() {
        let body = signed_job(&key, &net.domain, model_id, &input, price, base + i as u64).unwrap();
        let reply = client
            .post(&format!("{}/v1/jobs", node.http), &body)
            .unwrap();
        assert_eq!(
            reply.status, 200,
            "{} refused a good job: {}",
            node.name, reply.body
        );
        assert!(
            reply.body["output"].is_object() || reply.body["output"].is_array(),
            "{}",
            reply.body
        );
        let id = reply.body["job_id"].as_str().unwrap().to_string();
        let output_hash = reply.body["output_hash"].as_str().unwrap().to_string();
        if i == 0 {
            check_minilm_output(&model, &reply.body, &output_hash);
        }
        let st = client
            .wait_job(&node.http, &id, FINAL)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", run.logs()));
        assert_eq!(st["status"], "finalized", "via {}: {st}", node.name);
        assert_eq!(st["output_hash"], output_hash.as_str());
        // Visible, identically, from a node that did not take the job.
        let other = &net.nodes[(i + 3) % n];
        let seen = client.wait_job(&other.http, &id, FINAL).unwrap();
        assert_eq!(
            seen["status"], "finalized",
            "{} does not see {id}: {seen}",
            other.name
        );
        assert_eq!(seen["height"], st["height"]);
        assert_eq!(seen["output_hash"], st["output_hash"]);
        assert_eq!(seen["executed_by"], st["executed_by"]);
        if first_body.is_none() {
            first_body = Some(body);
        }
        finalized.push((id, st));
    }
    // The jobs were spread over both inference nodes: routing is not stuck on one.
    let executors: HashSet<String> = finalized
        .iter()
        .map(|(_, st)| st["executed_by"].as_str().unwrap().to_lowercase())
        .collect();
    assert!(
        executors.iter().all(|e| executors_before.contains_key(e)),
        "executed by a non-inference node: {executors:?}"
    );
    // Every job has a receipt whose Merkle proof the node serves.
    let (id0, _) = &finalized[0];
    let receipt = client
        .get(&format!("{}/v1/receipts/{id0}", net.nodes[5].http))
        .unwrap()
        .ok()
        .unwrap();
    assert!(
        receipt["proof"].is_array() && receipt["record"].is_object(),
        "{receipt}"
    );

    // Bad input: each refused with its own status and code, the node keeps serving.
    let bad = |node: &str, body: &Value, status: u16, code: &str| {
        let r = client.post(&format!("{node}/v1/jobs"), body).unwrap();
        assert_eq!(
            r.status, status,
            "expected {status} {code}, got {} {}",
            r.status, r.body
        );
        assert_eq!(r.code(), code, "{}", r.body);
        assert!(!r.body["error"]["message"].as_str().unwrap_or("").is_empty());
    };
    let inf = net.nodes[4].http.clone();
    for node in [&v0, &inf] {
        // A signature over other fields (the fee was raised after signing).
        let mut tampered =
            signed_job(&key, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
        tampered["job"]["request"]["max_fee"] = json!((price * 2).to_string());
        bad(node, &tampered, 401, "bad_signature");
        // A signature that is not one.
        let mut garbled =
            signed_job(&key, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
        garbled["job"]["signature"] = json!(format!("0x{}", "ab".repeat(65)));
        bad(node, &garbled, 401, "bad_signature");
        // The same signed job again: it is settled already.
        bad(node, first_body.as_ref().unwrap(), 409, "duplicate");
        // Another job that reuses a spent nonce: replay protection.
        let reuse = signed_job(
            &key,
            &net.domain,
            model_id,
            &format!("{input} "),
            price,
            base,
        )
        .unwrap();
        bad(node, &reuse, 409, "nonce_used");
        // A model nobody registered.
        let unknown = signed_job(
            &key,
            &net.domain,
            ModelId([7u8; 32]),
            &input,
            price,
            fresh_nonce(),
        )
        .unwrap();
        bad(node, &unknown, 404, "unknown_model");
        // A client with nothing to pay.
        let pauper = PrivateKeySigner::random();
        let broke =
            signed_job(&pauper, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
        bad(node, &broke, 402, "insufficient_balance");
        // Input that is not what was signed.
        let mut swapped =
            signed_job(&key, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
        swapped["input"] = json!(input.replacen('{', "{ ", 1));
        bad(node, &swapped, 400, "bad_input_hash");
        // Not JSON at all.
        let r = client
            .post_raw(
                &format!("{node}/v1/jobs"),
                "application/json",
                b"\x00\xffnot json",
            )
            .unwrap();
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body["error"]["code"].is_string());
    }
    // An overdrawing transfer is refused too.
    let pauper = PrivateKeySigner::random();
    let signed = common::transfer(&pauper, &net.domain, net.client_address, 5, 0);
    let r = client
        .post(
            &format!("{v0}/v1/txs"),
            &serde_json::to_value(signed).unwrap(),
        )
        .unwrap();
    assert_eq!(r.status, 402, "{}", r.body);
    assert_eq!(r.code(), "insufficient_balance");

    // Garbage on every gossip topic and request-response protocol, at every node.
    for (i, node) in net.nodes.iter().enumerate() {
        let report = garbage::send_garbage(&node.p2p, 100 + i as u64).unwrap();
        assert!(report.gossip_published >= 40, "{report:?}");
        // Every garbage request was answered with a refusal or had its stream closed.
        assert_eq!(
            report.refusals + report.stream_errors,
            report.requests_sent,
            "{} {report:?}",
            node.name
        );
        // Malformed requests are answered with a refusal until the peer is banned; after that
        // its streams are closed unanswered.
        assert!(report.refusals >= 3, "{} {report:?}", node.name);
        let st = client.get(&format!("{}/v1/status", node.http)).unwrap();
        assert_eq!(
            st.status, 200,
            "{} stopped answering after garbage",
            node.name
        );
        // Every node names the same signing domain, the one the jobs above were signed under.
        let domain = &st.body["eip712_domain"];
        assert_eq!(domain["chainId"], net.domain.chain_id, "{}", node.name);
        assert_eq!(domain["salt"], net.domain.salt.to_string(), "{}", node.name);
    }
    for node in &net.nodes {
        let log = std::fs::read_to_string(node.home.join("node.log")).unwrap();
        assert!(
            log.contains("banning peer"),
            "{} did not ban the hostile peer",
            node.name
        );
    }
    let metrics = client.get_text(&format!("{v0}/metrics")).unwrap();
    for topic in ["records", "txs", "consensus", "capabilities"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("proofmesh_gossip_rejected_total")
                    && l.contains(&format!("/proofmesh/1/{topic}"))),
            "no gossip rejections counted on {topic}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("proofmesh_rpc_rejected_total"),
        "{metrics}"
    );
    let after_garbage = scenario::submit_and_wait(net, 1, fresh_nonce(), FINAL).unwrap();
    assert_eq!(after_garbage.1["status"], "finalized");
    finalized.push(after_garbage);

    // All validators hold the same blocks.
    let heights: Vec<u64> = net
        .validators()
        .map(|v| {
            client.get(&format!("{}/v1/status", v.http)).unwrap().body["height"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let common = *heights.iter().min().unwrap();
    assert!(common >= 3, "{heights:?}");
    for h in [1, common / 2, common] {
        let hashes: HashSet<String> = net
            .validators()
            .map(|v| {
                client
                    .get(&format!("{}/v1/blocks/{h}", v.http))
                    .unwrap()
                    .ok()
                    .unwrap()["hash"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            hashes.len(),
            1,
            "validators disagree at height {h}: {hashes:?}"
        );
    }

    // Crash a validator: jobs keep finalizing; its restart resumes from RocksDB and catches up.
    let victim = net
        .nodes
        .iter()
        .rposition(|n| n.role == "validator")
        .unwrap();
    let report = scenario::kill(run.net_mut()).unwrap_or_else(|e| panic!("{e:#}"));
    let net = run.net();
    let during = report["jobs_finalized_while_down"].as_u64().unwrap() as usize;
    assert_eq!(during, n - 1);
    let log = std::fs::read_to_string(net.nodes[victim].home.join("node.log")).unwrap();
    let loaded: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("ledger loaded"))
        .filter_map(|l| {
            l.split("height=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(
        loaded.len(),
        2,
        "expected two starts in the log: {loaded:?}"
    );
    assert!(
        loaded[1] >= report["height_at_kill"].as_u64().unwrap().saturating_sub(2) && loaded[1] > 0,
        "{loaded:?} {report}"
    );
    let job_before: String = report["job_before"].as_str().unwrap().into();
    let restarted = client
        .wait_job(&net.nodes[victim].http, &job_before, FINAL)
        .unwrap();
    assert_eq!(restarted["status"], "finalized");
    let total_jobs = finalized.len() + 1 + during;

    // Settlement: supply conserved everywhere; the client paid exactly the fees of the jobs that
    // finalized (refused ones cost nothing); the inference nodes earned their share.
    std::thread::sleep(Duration::from_secs(1));
    for node in &net.nodes {
        common::assert_supply_exact(&client, node);
    }
    let client_after = balance(&client, &v0, &net.client_address.to_string());
    assert_eq!(
        client_before - client_after,
        price * total_jobs as u128,
        "client paid the wrong amount"
    );
    let earned: u128 = net
        .inference()
        .map(|i| balance(&client, &v0, &i.address.to_string()))
        .sum::<u128>()
        - executors_before.values().sum::<u128>();
    // 70 % of the fees, plus the inference nodes' half of the block reward of each block
    // that finalized jobs (one block per job at most).
    let share = price * 7000 / 10_000 * total_jobs as u128;
    let params = testnet::net::testnet_params();
    let per_block = params.reward_per_block
        - params.reward_per_block * params.reward_validators_bps as u128 / 10_000;
    assert!(
        earned > share && earned <= share + per_block * total_jobs as u128,
        "executors earned {earned}: fees' share {share}, {total_jobs} jobs, {per_block} per block"
    );
    for e in &executors {
        let now = balance(&client, &v0, e);
        assert!(
            now > executors_before[e],
            "{e} executed jobs but earned nothing"
        );
    }
    run.down();
}

#[test]
fn a_malformed_config_is_refused_with_a_clear_error() {
    let bin = testnet::net::default_bin();
    assert!(
        bin.is_file(),
        "build the node first: cargo build --bin proofmesh"
    );
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&bin)
        .args(["init", "--home"])
        .arg(home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (text, expect) in [
        (
            "roles = [\"validator\"]\n[consensus]\ntimeout_propose_ms = \"soon\"\n",
            "timeout_propose_ms",
        ),
        ("rolez = [\"validator\"]\n", "rolez"),
        ("roles = [\"validator\"\n", "node.toml"),
        ("\u{0}\u{1}garbage", "node.toml"),
    ] {
        std::fs::write(home.path().join("node.toml"), text).unwrap();
        let out = std::process::Command::new(&bin)
            .args(["run", "--home"])
            .arg(home.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a bad config was accepted: {text:?}");
        assert!(
            err.contains(expect),
            "error for {text:?} does not name {expect:?}: {err}"
        );
    }
}
