//! A testnet anchored to a real EVM chain (anvil): the validators post anchors by their commit
//! certificates, a finalized job's receipt carries its anchor proof and the settlement
//! contract's `verifyInference` accepts it (and refuses forgeries), and so does `proofmesh
//! verify`, which names the step each tampered receipt fails; anvil killed and started
//! again mid-run (on its saved state): anchoring resumes by itself, heights stay increasing and
//! distinct, nothing is anchored twice.

mod common;

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::sol_types::{SolCall, SolEvent};
use chain::ModelId;
use common::{Running, fresh_nonce, metric};
use evm::contracts::{IOPG, ISettlement};
use serde_json::json;
use testnet::client::{Client, signed_job};

fn view(url: &str, to: Address, data: Vec<u8>) -> Vec<u8> {
    let out: Bytes = evm::Rpc::new(url, Duration::from_secs(5))
        .call(
            "eth_call",
            json!([{"to": to, "data": Bytes::from(data)}, "latest"]),
        )
        .unwrap();
    out.to_vec()
}

fn last_anchored(url: &str, settlement: Address) -> u64 {
    let data = evm::Rpc::new(url, Duration::from_secs(5))
        .call::<Bytes>(
            "eth_call",
            json!([{"to": settlement, "data": Bytes::from(ISettlement::lastAnchoredHeightCall {}.abi_encode())}, "latest"]),
        )
        .map(|b| b.to_vec());
    data.ok()
        .and_then(|d| ISettlement::lastAnchoredHeightCall::abi_decode_returns(&d).ok())
        .unwrap_or(0)
}

fn wait(what: &str, timeout: Duration, mut until: impl FnMut() -> bool) {
    let t = Instant::now();
    while !until() {
        assert!(t.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn anchors_reach_the_evm_and_prove_jobs() {
    let mut run = Running::up_with(4, 1, |o| {
        o.minilm_dir = None;
        o.evm = true;
    });
    let net = run.net().clone();
    let info = net.evm.clone().expect("the testnet runs an EVM chain");
    let (url, settlement) = (info.rpc_url.clone(), info.settlement);
    let client = Client::new();
    let v0 = net.nodes[0].http.clone();

    // OPG's whole supply exists once on the EVM side.
    let supply = IOPG::totalSupplyCall::abi_decode_returns(&view(
        &url,
        info.opg,
        IOPG::totalSupplyCall {}.abi_encode(),
    ))
    .unwrap();
    assert_eq!(supply, U256::from(chain::TOTAL_SUPPLY));
    // The testnet client holds OPG on this side too.
    let held = IOPG::balanceOfCall::abi_decode_returns(&view(
        &url,
        info.opg,
        IOPG::balanceOfCall {
            owner: net.client_address,
        }
        .abi_encode(),
    ))
    .unwrap();
    assert_eq!(held, U256::from(testnet::evmnet::CLIENT_OPG));

    // A job, finalized; its receipt names the anchor that covers it once that block exists.
    let model = &net.models[0];
    let model_id: ModelId = model.id.parse().unwrap();
    let input = std::fs::read_to_string(&model.example_input).unwrap();
    let key = net.client_key().unwrap();
    let price: u128 = model.price.parse().unwrap();
    let body = signed_job(&key, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
    let reply = client
        .post(&format!("{v0}/v1/jobs"), &body)
        .unwrap()
        .ok()
        .unwrap();
    let job = reply["job_id"].as_str().unwrap().to_string();
    client.wait_job(&v0, &job, Duration::from_secs(60)).unwrap();
    let mut receipt = serde_json::Value::Null;
    wait("the job's anchor", Duration::from_secs(60), || {
        receipt = client
            .get(&format!("{v0}/v1/receipts/{job}"))
            .unwrap()
            .ok()
            .unwrap();
        !receipt["anchor"].is_null()
    });
    let anchor_height = receipt["anchor"]["height"].as_u64().unwrap();
    assert_eq!(
        anchor_height % testnet::net::testnet_params().anchor_interval,
        0
    );
    wait(
        "the anchor on the EVM chain",
        Duration::from_secs(60),
        || last_anchored(&url, settlement) >= anchor_height,
    );
    // Once on the EVM, the receipt names the anchor's transaction, mined on the settlement
    // contract.
    wait(
        "the anchor's EVM transaction in the receipt",
        Duration::from_secs(30),
        || {
            receipt = client
                .get(&format!("{v0}/v1/receipts/{job}"))
                .unwrap()
                .ok()
                .unwrap();
            receipt["anchor"]["evm_tx"].is_string()
        },
    );
    let tx: B256 = receipt["anchor"]["evm_tx"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mined: serde_json::Value = evm::Rpc::new(&url, Duration::from_secs(5))
        .call("eth_getTransactionReceipt", json!([tx]))
        .unwrap();
    assert_eq!(mined["status"], "0x1", "{mined}");
    assert_eq!(
        mined["to"].as_str().unwrap().parse::<Address>().unwrap(),
        settlement
    );
    let leaf: B256 = receipt["leaf"].as_str().unwrap().parse().unwrap();
    let proof: Vec<B256> = serde_json::from_value(receipt["anchor"]["proof"].clone()).unwrap();
    let verify = |leaf: B256, proof: Vec<B256>, height: u64| {
        ISettlement::verifyInferenceCall::abi_decode_returns(&view(
            &url,
            settlement,
            ISettlement::verifyInferenceCall {
                leaf,
                proof,
                height,
            }
            .abi_encode(),
        ))
        .unwrap()
    };
    assert!(verify(leaf, proof.clone(), anchor_height), "{receipt}");
    assert!(
        !verify(B256::repeat_byte(0x42), proof.clone(), anchor_height),
        "forged leaf"
    );
    let mut forged = proof.clone();
    forged.push(B256::repeat_byte(1));
    assert!(!verify(leaf, forged, anchor_height), "forged proof");
    let stored = ISettlement::anchorsCall::abi_decode_returns(&view(
        &url,
        settlement,
        ISettlement::anchorsCall {
            height: anchor_height,
        }
        .abi_encode(),
    ))
    .unwrap();
    let block = client
        .get(&format!("{v0}/v1/blocks/{anchor_height}"))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        format!("{}", stored.blockHash),
        block["hash"].as_str().unwrap()
    );

    // `proofmesh verify` checks the receipt offline and through the contract, and names the
    // step a tampered receipt fails.
    let genesis_file = net.dir.join("genesis.json");
    let settlement_arg = settlement.to_string();
    let verify_receipt = |r: &serde_json::Value, model: &str| {
        let model_dir = net.dir.join("models").join(model);
        common::proofmesh_verify(
            r,
            &[
                "--genesis".as_ref(),
                genesis_file.as_os_str(),
                "--model-dir".as_ref(),
                model_dir.as_os_str(),
                "--evm-rpc".as_ref(),
                url.as_ref(),
                "--settlement".as_ref(),
                settlement_arg.as_ref(),
            ],
        )
    };
    let (ok, report) = verify_receipt(&receipt, &model.name);
    assert!(ok, "{report}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "genesis",
            "record_signatures",
            "reexecution",
            "records_merkle_path",
            "block_hash",
            "commit_certificate",
            "anchor"
        ]
    );
    let tamper = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut r = receipt.clone();
        edit(&mut r);
        r
    };
    let other = B256::repeat_byte(0x77).to_string();
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (
            tamper(&|r| r["signed_record"]["output_hash"] = json!(other)),
            &model.name,
            "record_signatures",
        ),
        (receipt.clone(), testnet::net::TEE_MODEL, "reexecution"),
        (
            tamper(&|r| r["proof"].as_array_mut().unwrap().push(json!(other))),
            &model.name,
            "records_merkle_path",
        ),
        (
            tamper(&|r| r["header"]["state_root"] = json!(other)),
            &model.name,
            "block_hash",
        ),
        (
            tamper(&|r| r["commit"]["votes"].as_array_mut().unwrap().truncate(1)),
            &model.name,
            "commit_certificate",
        ),
        (
            tamper(&|r| {
                r["anchor"]["proof"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!(other))
            }),
            &model.name,
            "anchor",
        ),
    ];
    for (bad, model_dir, step) in cases {
        let (ok, report) = verify_receipt(&bad, model_dir);
        assert!(!ok, "{step}: {report}");
        assert_eq!(report["failed"], step, "{report}");
    }

    // anvil crashes (SIGKILL) and comes back on its saved state: anchoring resumes.
    let before = last_anchored(&url, settlement);
    // SAFETY: kill(2) on the anvil this testnet started (checked by its command line).
    assert!(testnet::evmnet::is_anvil(info.anvil_pid));
    unsafe { libc::kill(info.anvil_pid as i32, libc::SIGKILL) };
    wait("anvil gone", Duration::from_secs(10), || {
        !testnet::evmnet::is_anvil(info.anvil_pid)
    });
    std::thread::sleep(Duration::from_secs(3));
    let pid = testnet::evmnet::start_anvil(&net.dir, info.port).unwrap();
    if let Some(e) = run.net_mut().evm.as_mut() {
        e.anvil_pid = pid;
    }
    run.net().save().unwrap();
    let resumed_from = last_anchored(&url, settlement);
    assert!(
        resumed_from + 2 * 10 >= before,
        "the saved state kept the anchors: {resumed_from} vs {before}"
    );
    wait(
        "anchoring after the restart",
        Duration::from_secs(90),
        || last_anchored(&url, settlement) >= before.max(resumed_from) + 20,
    );

    // Every Anchored event: increasing, distinct, at anchor heights.
    let logs: Vec<serde_json::Value> = evm::Rpc::new(&url, Duration::from_secs(5))
        .call(
            "eth_getLogs",
            json!([{"address": settlement, "fromBlock": "0x0", "toBlock": "latest",
                    "topics": [ISettlement::Anchored::SIGNATURE_HASH]}]),
        )
        .unwrap();
    let heights: Vec<u64> = logs
        .iter()
        .map(|l| {
            let topic = l["topics"][1].as_str().unwrap().parse::<B256>().unwrap();
            U256::from_be_bytes(topic.0).to::<u64>()
        })
        .collect();
    assert!(heights.len() >= 3, "{heights:?}");
    assert!(heights.windows(2).all(|w| w[0] < w[1]), "{heights:?}");
    assert!(heights.iter().all(|h| h % 10 == 0), "{heights:?}");
    let sent: f64 = net
        .validators()
        .map(|v| {
            metric(
                &client,
                &v.http,
                "proofmesh_anchor_steps_total{outcome=\"sent\"}",
            )
        })
        .sum();
    assert!(
        sent >= heights.len() as f64,
        "{sent} sent, {} anchored",
        heights.len()
    );
    eprintln!("anchored heights {heights:?}; {sent} anchors sent by the validators");
}
