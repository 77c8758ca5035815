//! TEE proofs on real processes: a testnet whose genesis declares a simulated SEV-SNP root and a
//! `tee` model. Records carry batched reports that every validator verifies; an inference node
//! that forges reports and one that replays an old proof have those records rejected (logged,
//! counted by the failed check), their clients are not charged, honest jobs keep finalizing, and
//! the validators' fraud reports (checked by the chain itself for TEE claims) slash and jail
//! both cheats while the honest node stays in service.

mod common;

use std::time::{Duration, Instant};

use chain::ModelId;
use chain::attestation::sim::measure_file;
use common::{Running, balance, fresh_nonce, metric};
use serde_json::Value;
use testnet::client::{Client, signed_job};
use testnet::net::TEE_MODEL;

#[test]
fn tee_records_are_verified_and_forged_or_replayed_proofs_are_rejected() {
    // inference-0 honest, inference-1 forges, inference-2 replays.
    let run = Running::up_with(4, 3, |o| {
        o.minilm_dir = None;
        o.forging_inference = vec![1];
        o.replaying_inference = vec![2];
    });
    let net = run.net();
    let client = Client::new();
    let model = net.model(Some(TEE_MODEL)).unwrap();
    assert_eq!(model.mode, chain::VerificationMode::Tee);
    let model_id: ModelId = model.id.parse().unwrap();
    let price: u128 = model.price.parse().unwrap();
    let input = std::fs::read_to_string(&model.example_input).unwrap();
    let key = net.client_key().unwrap();
    let v0 = &net.nodes[0].http;
    let (honest, forger, replayer) = (&net.nodes[4], &net.nodes[5], &net.nodes[6]);
    assert_eq!(replayer.name, "inference-2");
    let paid_before = balance(&client, v0, &net.client_address.to_string());
    // The genesis approves the node binary's measurement under the testnet's own roots.
    let genesis: Value =
        serde_json::from_str(&std::fs::read_to_string(net.dir.join("genesis.json")).unwrap())
            .unwrap();
    assert_eq!(
        genesis["tee"]["measurements"][0],
        hex::encode(measure_file(&net.bin).unwrap())
    );

    // Jobs submitted at an inference node run there (local first).
    let submit = |node: &testnet::NodeInfo| -> Value {
        let body = signed_job(&key, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
        let reply = client
            .post(&format!("{}/v1/jobs", node.http), &body)
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    };

    // Honest: several concurrent jobs share batched reports; each finalizes.
    let honest_jobs: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| submit(honest))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for reply in &honest_jobs {
        let tee = &reply["proof"]["tee"];
        assert_eq!(
            tee["report"].as_str().unwrap().len(),
            2 + 2 * 0x4A0,
            "{reply}"
        );
        assert!(tee["vcek"].as_str().unwrap().len() > 100);
    }
    // Replay: its first proof is genuine (and finalizes); the next record carries it again.
    let replay_first = submit(replayer);
    let replay_second = submit(replayer);
    assert_eq!(
        replay_first["proof"]["tee"]["report"],
        replay_second["proof"]["tee"]["report"]
    );
    let forged = submit(forger);

    let finalized = |job: &Value| {
        let id = job["job_id"].as_str().unwrap();
        let st = client
            .wait_job(v0, id, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", run.logs()));
        assert_eq!(st["status"], "finalized", "{st}");
    };
    for j in honest_jobs.iter().chain([&replay_first]) {
        finalized(j);
    }

    // Every validator rejected the forged and the replayed record, each by its own check,
    // counted in metrics and logged with the job id.
    let bad = [
        (&forged, "tee_signature"),
        (&replay_second, "tee_report_data"),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    for v in net.validators() {
        for (job, reason) in bad {
            let series = format!("proofmesh_records_rejected_total{{reason=\"{reason}\"}}");
            while metric(&client, &v.http, &series) < 1.0 {
                assert!(
                    Instant::now() < deadline,
                    "{} did not count {reason}\n{}",
                    v.name,
                    run.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            let id = job["job_id"].as_str().unwrap();
            let log = std::fs::read_to_string(v.home.join("node.log")).unwrap();
            assert!(
                log.lines()
                    .any(|l| l.contains("INVALID TEE PROOF") && l.contains(id)),
                "{} logged no rejection of {id}",
                v.name
            );
        }
        assert!(metric(&client, &v.http, "proofmesh_tee_proofs_verified_total") >= 5.0);
    }

    // The chain moves on; the bad jobs are never settled.
    let height_of = || {
        client.get(&format!("{v0}/v1/status")).unwrap().body["height"]
            .as_u64()
            .unwrap()
    };
    let target = height_of() + 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    while height_of() < target {
        assert!(Instant::now() < deadline, "chain stalled");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (job, _) in bad {
        let id = job["job_id"].as_str().unwrap();
        for v in net.validators() {
            let st = client.get(&format!("{}/v1/jobs/{id}", v.http)).unwrap();
            assert!(
                st.status == 404 || st.body["status"] != "finalized",
                "{} settled {id}: {}",
                v.name,
                st.body
            );
        }
    }
    // Only the honest and the first replayed job were charged; the forger earned nothing.
    let paid = paid_before - balance(&client, v0, &net.client_address.to_string());
    assert_eq!(paid, 5 * price);
    assert_eq!(balance(&client, v0, &forger.address.to_string()), 0);
    // The honest node obtained its reports from its TEE (batching itself is tested in the
    // Attestation actor's unit tests, where timing is controlled).
    let reports = metric(&client, &honest.http, "proofmesh_attestation_reports_total");
    assert!(reports >= 1.0, "{reports}");
    // Both cheats were reported, proven on chain, slashed and jailed; the honest node serves on.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = client
            .get(&format!("{v0}/v1/inference-nodes"))
            .unwrap()
            .ok()
            .unwrap();
        let state = |n: &testnet::NodeInfo| {
            list["inference_nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| {
                    e["address"].as_str().unwrap().to_lowercase()
                        == n.address.to_string().to_lowercase()
                })
                .map(|e| (e["slashes"].as_u64().unwrap(), e["serving"] == true))
                .unwrap()
        };
        if state(forger) == (1, false) && state(replayer) == (1, false) {
            assert_eq!(state(honest), (0, true));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cheats not punished: {list}\n{}",
            run.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // `proofmesh verify` checks an honest job's TEE proof against the genesis roots and the
    // executor's bound chip, and refuses it with one byte of the report changed.
    let job = honest_jobs[0]["job_id"].as_str().unwrap();
    let receipt = client
        .get(&format!("{v0}/v1/receipts/{job}"))
        .unwrap()
        .ok()
        .unwrap();
    let genesis_file = net.dir.join("genesis.json");
    let verify =
        |r: &Value| common::proofmesh_verify(r, &["--genesis".as_ref(), genesis_file.as_os_str()]);
    let (ok, report) = verify(&receipt);
    assert!(ok, "{report}");
    let tee_step = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "tee_proof")
        .cloned()
        .unwrap_or_else(|| panic!("no tee_proof step: {report}"));
    assert!(
        tee_step["detail"]
            .as_str()
            .unwrap()
            .contains("bound at genesis"),
        "{tee_step}"
    );
    let mut tampered = receipt.clone();
    let hexed = tampered["signed_record"]["proof"]["tee"]["report"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", receipt["signed_record"]["proof"]))
        .to_string();
    let mut bytes = hexed.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
    tampered["signed_record"]["proof"]["tee"]["report"] =
        Value::String(String::from_utf8(bytes).unwrap());
    let (ok, report) = verify(&tampered);
    assert!(!ok, "{report}");
    assert_eq!(report["failed"], "tee_proof", "{report}");
}
