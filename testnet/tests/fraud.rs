//! Proof by re-execution on real processes: an inference node that signs wrong outputs has its
//! records rejected by every validator (logged and counted as fraud), its client is not charged,
//! honest jobs keep finalizing, and the validators' fraud report reaches the chain: the node
//! loses `slash_fraud_bps` of its stake, is jailed, and is routed no more jobs.

mod common;

use std::time::{Duration, Instant};

use chain::ModelId;
use common::{Running, balance, fresh_nonce, metric};
use testnet::client::{Client, signed_job};

#[test]
fn a_faulty_inference_node_is_caught_by_re_execution() {
    // inference-1 (node 5) flips its output hash before signing.
    let run = Running::up(4, 2, vec![1]);
    let net = run.net();
    let client = Client::new();
    let model = &net.models[0];
    let model_id: ModelId = model.id.parse().unwrap();
    let price: u128 = model.price.parse().unwrap();
    let input = std::fs::read_to_string(&model.example_input).unwrap();
    let key = net.client_key().unwrap();
    let (honest, faulty) = (&net.nodes[4], &net.nodes[5]);
    assert_eq!(faulty.name, "inference-1");
    let v0 = &net.nodes[0].http;
    let paid_before = balance(&client, v0, &net.client_address.to_string());

    // Submitted at the faulty node, the job runs there (local first) and gets a wrong result.
    let body = signed_job(&key, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
    let reply = client
        .post(&format!("{}/v1/jobs", faulty.http), &body)
        .unwrap()
        .ok()
        .unwrap();
    let bad_job = reply["job_id"].as_str().unwrap().to_string();

    // An honest job submitted afterwards finalizes...
    let body = signed_job(&key, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
    let reply = client
        .post(&format!("{}/v1/jobs", honest.http), &body)
        .unwrap()
        .ok()
        .unwrap();
    let good_job = reply["job_id"].as_str().unwrap().to_string();
    let st = client
        .wait_job(v0, &good_job, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", run.logs()));
    assert_eq!(st["status"], "finalized");
    assert_eq!(
        st["executed_by"].as_str().unwrap().to_lowercase(),
        honest.address.to_string().to_lowercase()
    );

    // ...while every validator re-executed the faulty record (its gossiped copy, or the first
    // validator's fraud report when that came first), saw another output hash and refused it:
    // it never reaches a block, and it is logged and counted as fraud on each.
    let deadline = Instant::now() + Duration::from_secs(30);
    for v in net.validators() {
        loop {
            if metric(&client, &v.http, "proofmesh_fraud_detected_total ") >= 1.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} counted no fraud:\n{}",
                v.name,
                client
                    .get_text(&format!("{}/metrics", v.http))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(v.home.join("node.log")).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("fraud") && l.contains(&bad_job)),
            "{} logged no fraud line for {bad_job}",
            v.name
        );
    }
    let height = client.get(&format!("{v0}/v1/status")).unwrap().body["height"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(&format!("{v0}/v1/status")).unwrap().body["height"]
        .as_u64()
        .unwrap()
        < height + 3
    {
        assert!(Instant::now() < deadline, "chain stalled");
        std::thread::sleep(Duration::from_millis(100));
    }
    for v in net.validators() {
        let st = client
            .get(&format!("{}/v1/jobs/{bad_job}", v.http))
            .unwrap();
        assert!(
            st.status == 404 || st.body["status"] != "finalized",
            "{} settled a fraudulent job: {}",
            v.name,
            st.body
        );
    }
    // Only the honest job was charged.
    let paid = paid_before - balance(&client, v0, &net.client_address.to_string());
    assert_eq!(paid, price);
    // The faulty node earned nothing.
    assert_eq!(balance(&client, v0, &faulty.address.to_string()), 0);

    // The chain punished it: slashed by the parameter, jailed.
    let node_stake = 10_000 * common::OPG;
    let slash = node_stake * testnet::net::testnet_params().slash_fraud_bps as u128 / 10_000;
    let deadline = Instant::now() + Duration::from_secs(30);
    let entry = loop {
        let list = client
            .get(&format!("{v0}/v1/inference-nodes"))
            .unwrap()
            .ok()
            .unwrap();
        let entry = list["inference_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| {
                n["address"].as_str().unwrap().to_lowercase()
                    == faulty.address.to_string().to_lowercase()
            })
            .cloned()
            .unwrap();
        if !entry["jailed_until"].is_null() {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "the faulty node was never jailed: {entry}\n{}",
            run.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(entry["slashes"], 1);
    assert_eq!(entry["serving"], false);
    assert_eq!(entry["bonded"], (node_stake - slash).to_string());
    assert!(metric(&client, v0, "proofmesh_frauds_slashed_total ") >= 1.0);
    // It gets no more jobs: through any validator, every job runs on the honest node.
    for _ in 0..4 {
        let body = signed_job(&key, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
        let reply = client
            .post(&format!("{v0}/v1/jobs"), &body)
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(
            reply["executed_by"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase(),
            honest.address.to_string().to_lowercase(),
            "{reply}"
        );
    }
    // Submitted at the jailed node itself, a job is refused rather than run there.
    let body = signed_job(&key, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
    let r = client
        .post(&format!("{}/v1/jobs", faulty.http), &body)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["executed_by"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase(),
        honest.address.to_string().to_lowercase(),
        "the jailed node's gateway routes to the honest node"
    );

    // A fraud report against an honest record is refused where it is sent, before it is
    // admitted or relayed: every validator re-executes the record first. The accuser's
    // account does not move.
    let truth: chain::B256 = st["output_hash"].as_str().unwrap().parse().unwrap();
    let honest_key = testnet::economy::node_key(honest).unwrap();
    let job = chain::JobRequest {
        client: key.address(),
        model_id,
        input_hash: alloy::primitives::keccak256(input.as_bytes()),
        max_fee: price,
        nonce: fresh_nonce(),
        expiry: u64::MAX,
    }
    .sign(&key, &net.domain)
    .unwrap();
    let units = input.len() as u64;
    let record = chain::InferenceRecord::create(
        job,
        input.clone(),
        (truth, units),
        chain::Proof::Reexec,
        &honest_key,
        &net.domain,
    )
    .unwrap();
    let accuser = &net.client_address.to_string();
    let before = client
        .get(&format!("{v0}/v1/accounts/{accuser}"))
        .unwrap()
        .ok()
        .unwrap();
    use chain::evidence::FraudClaim;
    for (claim, why) in [
        (
            FraudClaim::Output { recomputed: truth },
            "is what re-execution gives",
        ),
        (
            FraudClaim::Output {
                recomputed: chain::B256::repeat_byte(0x5a),
            },
            "re-execution gives",
        ),
        (
            FraudClaim::Units { recomputed: units },
            "units are what re-execution gives",
        ),
        (
            FraudClaim::Units {
                recomputed: units + 5,
            },
            "re-execution gives",
        ),
    ] {
        let report = chain::Action::ReportFraud(Box::new(chain::evidence::FraudEvidence {
            record: record.clone(),
            claim,
        }));
        for v in net.validators() {
            let e = testnet::economy::send(net, &v.http, &key, report.clone()).unwrap_err();
            let text = format!("{e:#}");
            assert!(
                text.starts_with("HTTP 400 false_fraud_claim") && text.contains(why),
                "{}: {text}",
                v.name
            );
        }
    }
    let after = client
        .get(&format!("{v0}/v1/accounts/{accuser}"))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(after["nonce"], before["nonce"]);
    assert_eq!(after["next_nonce"], before["next_nonce"]);
    let honest_entry = client
        .get(&format!("{v0}/v1/inference-nodes"))
        .unwrap()
        .ok()
        .unwrap()["inference_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["peer_id"] == honest.peer_id)
        .cloned()
        .unwrap();
    assert_eq!(honest_entry["slashes"], 0, "{honest_entry}");
}
