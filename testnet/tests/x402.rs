//! x402 on a live testnet with a real EVM chain (anvil): a client with OPG on the EVM and
//! nothing on the native chain asks for a job, gets `402` with `PAYMENT-REQUIRED`, signs the
//! EIP-3009 authorization with alloy's EIP-712 typed-data signing from what the 402 says
//! (v2 `PAYMENT-SIGNATURE`, and v1 `X-PAYMENT`), and gets the job's output with
//! `PAYMENT-RESPONSE`; the payment settles once on the bridge, is credited to the payer's native
//! account and the job is charged from it, its record finalized by validators that check the
//! payment signature. A replayed payment, a forged one and one without funds are refused with
//! their x402 codes; a payment settled before the request (its answer lost) runs the job
//! without charging again.

mod common;

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256, keccak256};
use alloy::signers::SignerSync;
use alloy::sol_types::{SolCall, SolStruct, eip712_domain};
use chain::{JobRequest, ModelId, PrivateKeySigner};
use common::{Running, fresh_nonce};
use serde_json::{Value, json};
use testnet::client::{Client, signed_job};

alloy::sol! {
    /// EIP-3009, as a wallet signs it.
    struct ReceiveWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// POST `body` with `headers`: status, the headers asked for (lowercase), JSON body.
fn post(
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
    want: &[&str],
) -> (u16, Vec<Option<String>>, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send_json(body).unwrap();
    let status = resp.status().as_u16();
    let got = want
        .iter()
        .map(|h| {
            resp.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .collect();
    let body = resp.body_mut().read_json::<Value>().unwrap_or(Value::Null);
    (status, got, body)
}

/// What an x402 client builds from one entry of `accepts`: the authorization by the job's
/// client of `max_fee` for the job `request` (its nonce), signed by `key` as EIP-712 typed
/// data under the domain the 402 names.
fn pay(
    key: &PrivateKeySigner,
    accepts: &Value,
    request: &JobRequest,
    domain: &chain::signing::Domain,
    version: u8,
) -> String {
    let chain_id: u64 = accepts["network"]
        .as_str()
        .unwrap()
        .trim_start_matches("eip155:")
        .parse()
        .unwrap();
    let asset: Address = accepts["asset"].as_str().unwrap().parse().unwrap();
    let pay_to: Address = accepts["payTo"].as_str().unwrap().parse().unwrap();
    assert_eq!(accepts["extra"]["name"], "OPG");
    assert_eq!(accepts["extra"]["version"], "1");
    let eip712 = eip712_domain! { name: "OPG", version: "1", chain_id: chain_id, verifying_contract: asset, };
    let nonce = request.id(domain).0;
    let auth = ReceiveWithAuthorization {
        from: request.client,
        to: pay_to,
        value: U256::from(request.max_fee),
        validAfter: U256::from(request.nonce),
        validBefore: U256::from(request.expiry),
        nonce,
    };
    let sig = key
        .sign_hash_sync(&auth.eip712_signing_hash(&eip712))
        .unwrap();
    let payload = json!({
        "signature": format!("0x{}", hex::encode(sig.as_bytes())),
        "authorization": {
            "from": request.client,
            "to": pay_to,
            "value": request.max_fee.to_string(),
            "validAfter": request.nonce.to_string(),
            "validBefore": request.expiry.to_string(),
            "nonce": nonce,
        },
    });
    let envelope = if version == 1 {
        json!({"x402Version": 1, "scheme": "exact", "network": accepts["network"], "payload": payload})
    } else {
        json!({"x402Version": 2, "accepted": accepts, "payload": payload})
    };
    evm::x402::encode_header(&envelope)
}

fn now_s() -> u64 {
    chain::types::now_ms() / 1000
}

#[test]
fn jobs_are_paid_by_x402_once_and_replays_are_refused() {
    let mut run = Running::up_with(4, 1, |o| {
        o.minilm_dir = None;
        o.evm = true;
    });
    let net = run.net().clone();
    let info = net.evm.clone().expect("the testnet runs an EVM chain");
    let rpc = evm::Rpc::new(&info.rpc_url, Duration::from_secs(10));
    let client = Client::new();
    let v0 = net.nodes[0].http.clone();
    let jobs = format!("{v0}/v1/jobs");
    let model = &net.models[0];
    let model_id: ModelId = model.id.parse().unwrap();
    let input = std::fs::read_to_string(&model.example_input).unwrap();
    let price: u128 = model.price.parse().unwrap();

    let supported = client
        .get(&format!("{v0}/v1/x402/supported"))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        supported["kinds"][0]["network"], "eip155:31337",
        "{supported}"
    );
    assert_eq!(supported["kinds"].as_array().unwrap().len(), 2, "v2 and v1");

    // A payer with OPG on the EVM only.
    let payer = PrivateKeySigner::random();
    let mut funder = evm::Wallet::new(
        evm::Rpc::new(&info.rpc_url, Duration::from_secs(10)),
        net.client_key().unwrap(),
        info.chain_id,
    )
    .unwrap();
    let funded = 10 * common::OPG;
    funder
        .send(
            Some(info.opg),
            evm::contracts::IOPG::transferCall {
                to: payer.address(),
                value: U256::from(funded),
            }
            .abi_encode(),
        )
        .unwrap();
    let evm_balance = |a: Address| evm::bridge::balance_of(&rpc, info.opg, a, "latest").unwrap();
    let native_balance = |a: Address| common::balance(&client, &v0, &a.to_string());

    // No signed job, no payment: 402 with what to pay.
    let body = json!({"model": model.name, "input": input});
    let (status, headers, answer) = post(&jobs, &body, &[], &["payment-required"]);
    assert_eq!(status, 402, "{answer}");
    let required = evm::x402::decode_header(headers[0].as_deref().unwrap()).unwrap();
    assert_eq!(required, answer);
    assert_eq!(required["x402Version"], 2);
    let accepts = required["accepts"][0].clone();
    assert_eq!(accepts["scheme"], "exact");
    assert_eq!(accepts["amount"], price.to_string());
    assert_eq!(
        accepts["asset"]
            .as_str()
            .unwrap()
            .parse::<Address>()
            .unwrap(),
        info.opg
    );
    assert_eq!(
        accepts["payTo"]
            .as_str()
            .unwrap()
            .parse::<Address>()
            .unwrap(),
        info.settlement
    );
    assert_eq!(
        accepts["extra"]["modelId"]
            .as_str()
            .unwrap()
            .parse::<ModelId>()
            .unwrap(),
        model_id
    );

    let job = |after: u64| JobRequest {
        client: payer.address(),
        model_id,
        input_hash: keccak256(input.as_bytes()),
        max_fee: price,
        nonce: after,
        expiry: now_s() + 300,
    };

    // Paid (v2): the job runs, the payment settles once and is charged natively.
    let first = job(now_s() - 60);
    let header = pay(&payer, &accepts, &first, &net.domain, 2);
    let t = Instant::now();
    let (status, headers, answer) = post(
        &jobs,
        &body,
        &[("PAYMENT-SIGNATURE", &header)],
        &["payment-response"],
    );
    let x402_latency = t.elapsed();
    assert_eq!(status, 200, "{answer}");
    let response = evm::x402::decode_header(headers[0].as_deref().unwrap()).unwrap();
    assert_eq!(response["success"], true, "{response}");
    assert_eq!(response["network"], "eip155:31337");
    assert!(
        response["transaction"]
            .as_str()
            .is_some_and(|t| t.parse::<B256>().is_ok()),
        "{response}"
    );
    let id = first.id(&net.domain);
    assert_eq!(answer["job_id"], json!(id));
    client
        .wait_job(&v0, &id.to_string(), Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        evm_balance(payer.address()),
        funded - price,
        "paid once on the EVM"
    );
    assert_eq!(
        native_balance(payer.address()),
        0,
        "credited, then charged the price"
    );

    // The same payment again: refused, nothing paid.
    let (status, _, answer) = post(&jobs, &body, &[("PAYMENT-SIGNATURE", &header)], &[]);
    assert_eq!(status, 402, "{answer}");
    assert_eq!(
        answer["error"]["code"],
        "invalid_exact_evm_payload_authorization_used"
    );
    assert_eq!(evm_balance(payer.address()), funded - price);

    // Another job with the first one's validAfter (this payer's job nonce): refused before
    // anything is paid.
    let other_input = format!("{input} ");
    let clash = JobRequest {
        input_hash: keccak256(other_input.as_bytes()),
        ..first.clone()
    };
    let (status, _, answer) = post(
        &jobs,
        &json!({"model": model.name, "input": other_input}),
        &[(
            "PAYMENT-SIGNATURE",
            &pay(&payer, &accepts, &clash, &net.domain, 2),
        )],
        &[],
    );
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (
            402,
            Some("invalid_exact_evm_payload_authorization_valid_after")
        ),
        "{answer}"
    );
    assert_eq!(evm_balance(payer.address()), funded - price);

    // v1: X-PAYMENT, answered in X-PAYMENT-RESPONSE.
    let second = job(now_s() - 59);
    let v1 = pay(&payer, &accepts, &second, &net.domain, 1);
    let (status, headers, answer) =
        post(&jobs, &body, &[("X-PAYMENT", &v1)], &["x-payment-response"]);
    assert_eq!(status, 200, "{answer}");
    assert!(headers[0].is_some());
    assert_eq!(evm_balance(payer.address()), funded - 2 * price);

    // Forged (signed by another key for this payer) and unfunded payments.
    let other = PrivateKeySigner::random();
    let forged = pay(&other, &accepts, &job(now_s() - 58), &net.domain, 2);
    let (status, _, answer) = post(&jobs, &body, &[("PAYMENT-SIGNATURE", &forged)], &[]);
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (402, Some("invalid_exact_evm_payload_signature")),
        "{answer}"
    );
    let broke = PrivateKeySigner::random();
    let broke_job = JobRequest {
        client: broke.address(),
        ..job(now_s() - 57)
    };
    let (status, _, answer) = post(
        &jobs,
        &body,
        &[(
            "PAYMENT-SIGNATURE",
            &pay(&broke, &accepts, &broke_job, &net.domain, 2),
        )],
        &[],
    );
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (402, Some("insufficient_funds")),
        "{answer}"
    );

    // Settled before the request reached a gateway (the answer of an earlier attempt lost):
    // the job runs, and the payment is not taken again.
    let third = job(now_s() - 56);
    let header = pay(&payer, &accepts, &third, &net.domain, 2);
    let payment = evm::x402::decode_payment(&header, &net.domain.payments.unwrap()).unwrap();
    evm::x402::settle(&mut funder, info.settlement, &payment).unwrap();
    assert_eq!(evm_balance(payer.address()), funded - 3 * price);
    let (status, headers, answer) = post(
        &jobs,
        &body,
        &[("PAYMENT-SIGNATURE", &header)],
        &["payment-response"],
    );
    assert_eq!(status, 200, "{answer}");
    let response = evm::x402::decode_header(headers[0].as_deref().unwrap()).unwrap();
    assert_eq!(
        response["transaction"],
        Value::Null,
        "settled by someone else: {response}"
    );
    assert_eq!(
        evm_balance(payer.address()),
        funded - 3 * price,
        "paid once"
    );

    // `proofmesh submit --x402` does the same from the command line.
    let payer_key = tempfile::tempdir().unwrap();
    let payer_file = payer_key.path().join("payer.key");
    chain::signing::write_key(&payer_file, &payer).unwrap();
    let input_file = payer_key.path().join("input.json");
    std::fs::write(&input_file, &input).unwrap();
    let out = std::process::Command::new(testnet::net::default_bin())
        .args(["submit", "--x402", "--node", &v0, "--model", &model.id])
        .arg("--key")
        .arg(&payer_file)
        .arg("--input")
        .arg(&input_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["status"], "executed", "{cli}");
    assert_eq!(cli["payment"]["payer"], json!(payer.address()), "{cli}");
    assert_eq!(evm_balance(payer.address()), funded - 4 * price);

    // anvil stopped while a payment is being settled, started again (on its saved state):
    // the gateway keeps trying, the job runs, the payment is taken once.
    testnet::evmnet::stop_anvil(info.anvil_pid, Duration::from_secs(10));
    let fifth = job(now_s() - 55);
    let header = pay(&payer, &accepts, &fifth, &net.domain, 2);
    let paying = {
        let (jobs, body, header) = (jobs.clone(), body.clone(), header.clone());
        std::thread::spawn(move || post(&jobs, &body, &[("PAYMENT-SIGNATURE", &header)], &[]))
    };
    std::thread::sleep(Duration::from_secs(3));
    let pid = testnet::evmnet::start_anvil(&net.dir, info.port).unwrap();
    if let Some(e) = run.net_mut().evm.as_mut() {
        e.anvil_pid = pid;
    }
    run.net().save().unwrap();
    let (status, _, answer) = paying.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        evm_balance(payer.address()),
        funded - 5 * price,
        "paid once"
    );
    let (status, _, answer) = post(&jobs, &body, &[("PAYMENT-SIGNATURE", &header)], &[]);
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (402, Some("invalid_exact_evm_payload_authorization_used")),
        "a replay while its job is in flight: {answer}"
    );

    // The same job paid natively, for the latency figure.
    let key = net.client_key().unwrap();
    let native = signed_job(&key, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
    let t = Instant::now();
    client.post(&jobs, &native).unwrap().ok().unwrap();
    eprintln!(
        "x402 job (settle on the EVM, credit, run): {:.2} s; native signed job: {:.2} s",
        x402_latency.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
