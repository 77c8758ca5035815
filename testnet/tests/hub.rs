//! Models by id over the mesh (`/proofmesh/model/1`): a 4-validator + 3-inference testnet in
//! which only the first inference node starts with the models' files (all-MiniLM-L6-v2 and the
//! two seeded MLPs) and the second holds a copy it serves corrupted. Every validator finds the
//! providers in Kademlia and fetches every registered model; each file it keeps is the holder's,
//! byte for byte (the bytes counted equal the files' sizes), the corrupted provider's copies are
//! refused and taken from the honest one, and the fetched models re-execute jobs that finalize.
//! The third inference node fetches nothing by itself: `proofmesh model fetch` makes it fetch
//! one model, which it then serves.
//!
//! Needs the `proofmesh` binary (`cargo build --bin proofmesh`; `scripts/test` does it).

mod common;

use std::process::Command;
use std::time::Duration;

use chain::ModelId;
use common::{Running, fresh_nonce, metric, wait_metric};
use testnet::client::{Client, signed_job};

/// Bytes of a model's files as the manifest lists them.
fn model_bytes(dir: &std::path::Path) -> u64 {
    kernels::MODEL_FILES
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn models_travel_over_the_mesh_and_bad_copies_are_refused() {
    let run = Running::up_with(4, 3, |o| {
        o.single_holder = true;
        o.corrupt_providers = vec![1];
        // inference-2: node index 4 + 2.
        o.no_fetch = vec![6];
    });
    let net = run.net();
    let client = Client::new();
    let holder = &net.nodes[4];
    let lonely = &net.nodes[6];
    let models_dir = net.dir.join("models");
    let want_bytes: u64 = net
        .models
        .iter()
        .map(|m| model_bytes(&models_dir.join(&m.name)))
        .sum();
    let count = net.models.len() as f64;

    // Every validator holds every model, fetched and verified, the holder's bytes exactly.
    let mut refused = 0.0;
    for v in net.validators() {
        let ok = wait_metric(
            &client,
            &v.http,
            "proofmesh_model_fetches_total{outcome=\"ok\"}",
            count,
            Duration::from_secs(240),
        );
        assert_eq!(ok, count, "{} fetched {ok} of {count} models", v.name);
        let bytes = metric(&client, &v.http, "proofmesh_model_fetch_bytes_total");
        assert_eq!(bytes as u64, want_bytes, "{}", v.name);
        for m in &net.models {
            let dir = v.home.join("models").join(&m.name);
            assert_eq!(
                kernels::manifest(&dir).unwrap().1.to_string(),
                m.id,
                "{}: {}",
                v.name,
                m.name
            );
        }
        refused += metric(
            &client,
            &v.http,
            "proofmesh_model_bad_parts_total{part=\"file\"}",
        );
    }
    assert!(refused >= 1.0, "no validator met the corrupted provider");
    assert!(metric(&client, &holder.http, "proofmesh_model_served_bytes_total") > 0.0);

    // The fetched models are the ones jobs run on: a MiniLM job finalizes, re-executed by
    // every validator with its fetched copy.
    let key = net.client_key().unwrap();
    let minilm = net.model(Some(testnet::net::MINILM)).unwrap();
    let model_id: ModelId = minilm.id.parse().unwrap();
    let input = std::fs::read_to_string(&minilm.example_input).unwrap();
    let max_fee = minilm.max_fee(&input).unwrap();
    let body = signed_job(&key, &net.domain, model_id, &input, max_fee, fresh_nonce()).unwrap();
    let v0 = &net.nodes[0].http;
    let reply = client
        .post(&format!("{v0}/v1/jobs"), &body)
        .unwrap()
        .ok()
        .unwrap();
    let id = reply["job_id"].as_str().unwrap();
    for v in net.validators() {
        let st = client
            .wait_job(&v.http, id, Duration::from_secs(60))
            .unwrap();
        assert_eq!(st["status"], "finalized", "{}: {st}", v.name);
        let reexec = wait_metric(
            &client,
            &v.http,
            "proofmesh_reexec_seconds_count",
            1.0,
            Duration::from_secs(60),
        );
        assert!(reexec >= 1.0, "{} re-executed nothing", v.name);
    }

    // The node that fetches nothing by itself: empty until its operator fetches one model.
    let status = client
        .get(&format!("{}/v1/status", lonely.http))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(status["served_models"], serde_json::json!([]), "{status}");
    let mlp = net.model(Some("mlp-demo")).unwrap();
    let fetch = |model: &str| {
        Command::new(testnet::net::default_bin())
            .args(["model", "fetch", model, "--node", &lonely.http])
            .output()
            .unwrap()
    };
    let out = fetch("mlp-demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["model_id"], mlp.id.as_str(), "{printed}");
    assert_eq!(printed["already_held"], false);
    assert_eq!(
        printed["bytes"].as_u64(),
        Some(model_bytes(&models_dir.join("mlp-demo")))
    );
    assert_eq!(printed["served_here"], true, "{printed}");
    let status = client
        .get(&format!("{}/v1/status", lonely.http))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        status["served_models"],
        serde_json::json!([mlp.id]),
        "{status}"
    );
    let again: serde_json::Value = serde_json::from_slice(&fetch(&mlp.id).stdout).unwrap();
    assert_eq!(again["already_held"], true, "{again}");
    // An id nobody provides: a clear error, nothing written.
    let nobody = fetch(&format!("0x{}", "ab".repeat(32)));
    assert!(!nobody.status.success());
    let err = String::from_utf8_lossy(&nobody.stderr);
    assert!(err.contains("no_providers"), "{err}");

    // It runs the fetched model's jobs itself.
    let input = std::fs::read_to_string(&mlp.example_input).unwrap();
    let body = signed_job(
        &key,
        &net.domain,
        mlp.id.parse().unwrap(),
        &input,
        mlp.max_fee(&input).unwrap(),
        fresh_nonce(),
    )
    .unwrap();
    let reply = client
        .post(&format!("{}/v1/jobs", lonely.http), &body)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        reply["executed_by"].as_str().unwrap().to_lowercase(),
        lonely.address.to_string().to_lowercase(),
        "{reply}"
    );
}
