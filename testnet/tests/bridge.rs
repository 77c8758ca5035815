//! The OPG bridge between a live testnet and a real EVM chain (anvil), through the `proofmesh
//! bridge` commands: a deposit on the EVM is credited once on the native chain by the
//! validators (each checks it against its own RPC), pays for a job, a native withdrawal is
//! anchored and released once on the EVM; a false deposit is refused; after an anvil restart
//! deposits go on being credited. At every step native circulating + EVM circulating + what is
//! in flight = the supply.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chain::{Address, ModelId};
use common::{OPG, Running, fresh_nonce, metric, signed};
use serde_json::Value;
use testnet::client::{Client, signed_job};

/// Runs `proofmesh ARGS`; its last JSON line, or the failure with stderr.
fn proofmesh(args: &[&str]) -> Result<Value, String> {
    let out = Command::new(testnet::net::default_bin())
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "proofmesh {args:?}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("proofmesh {args:?} printed no JSON: {stdout}"))
}

fn wait(what: &str, timeout: Duration, mut until: impl FnMut() -> bool) {
    let t = Instant::now();
    while !until() {
        assert!(t.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn amount(v: &Value) -> u128 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an amount: {v}"))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Native circulating, EVM circulating and the deposits not credited yet; asserts that they
/// add up to the supply with `withdrawing` (withdrawn natively, not released yet) in flight.
fn assert_conserved(
    client: &Client,
    node: &str,
    rpc: &evm::Rpc,
    settlement: Address,
    withdrawing: u128,
) {
    let supply = client
        .get(&format!("{node}/v1/supply"))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(amount(&supply["total"]), chain::TOTAL_SUPPLY, "{supply}");
    let native = amount(&supply["circulating"]);
    let credited = supply["pools"]["bridge_deposits_credited"]
        .as_u64()
        .unwrap();
    let on_evm = evm::bridge::circulating(rpc, settlement, "latest").unwrap();
    let tip = evm::bridge::confirmed_block(rpc, 0).unwrap().unwrap();
    let uncredited: u128 = evm::bridge::deposits_from(rpc, settlement, credited, 1_000, tip)
        .unwrap()
        .iter()
        .map(|d| d.amount)
        .sum();
    assert_eq!(
        native + on_evm + uncredited + withdrawing,
        chain::TOTAL_SUPPLY,
        "native {native} + EVM {on_evm} + deposits in flight {uncredited} + withdrawals in flight {withdrawing}"
    );
}

#[test]
fn opg_crosses_the_bridge_both_ways_once_and_the_supply_is_conserved() {
    let mut run = Running::up_with(4, 1, |o| {
        o.minilm_dir = None;
        o.evm = true;
    });
    let net = run.net().clone();
    let info = net.evm.clone().expect("the testnet runs an EVM chain");
    let settlement = info.settlement;
    let (url, s) = (info.rpc_url.clone(), settlement.to_string());
    let rpc = evm::Rpc::new(&url, Duration::from_secs(10));
    let client = Client::new();
    let v0 = net.nodes[0].http.clone();
    let scratch = tempfile::tempdir().unwrap();
    // `proofmesh bridge ARGS --evm-rpc URL --settlement S`.
    let bridge = |args: &[&str], url: &str, s: &str| {
        let mut all = vec!["bridge"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--evm-rpc", url, "--settlement", s]);
        proofmesh(&all).unwrap()
    };

    // Genesis: the native side's bridge reserve is what circulates on the EVM.
    let status = bridge(&["status", "--node", &v0], &url, &s);
    assert_eq!(status["exact"], true, "{status}");
    assert_eq!(
        amount(&status["evm_circulating"]),
        testnet::evmnet::EVM_CIRCULATING
    );
    assert_eq!(
        amount(&status["bridge_reserve"]),
        testnet::evmnet::EVM_CIRCULATING
    );
    assert_conserved(&client, &v0, &rpc, settlement, 0);

    // A deposit from the client's EVM OPG to a new native account, credited once.
    let holder = chain::PrivateKeySigner::random();
    let holder_key = scratch.path().join("holder.key");
    chain::signing::write_key(&holder_key, &holder).unwrap();
    let client_key = path(&net.client_key);
    let deposited = 100 * OPG;
    // `proofmesh bridge deposit`, from the client's EVM OPG to the holder, waiting for credit.
    let holder_address = holder.address().to_string();
    let deposit = |amount: &str| {
        bridge(
            &[
                "deposit",
                "--amount",
                amount,
                "--recipient",
                &holder_address,
                "--node",
                &v0,
                "--evm-key",
                &client_key,
            ],
            &url,
            &s,
        )
    };
    let d = deposit("100opg");
    assert_eq!(
        (d["id"].as_u64(), &d["credited"]),
        (Some(0), &Value::Bool(true)),
        "{d}"
    );
    for n in &net.nodes {
        wait(
            "the deposit credited everywhere",
            Duration::from_secs(30),
            || common::balance(&client, &n.http, &holder.address().to_string()) == deposited,
        );
    }
    // Several more ticks of every validator's bridge: still credited once.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        common::balance(&client, &v0, &holder.address().to_string()),
        deposited
    );
    let sent: f64 = net
        .nodes
        .iter()
        .take(4)
        .map(|n| metric(&client, &n.http, "proofmesh_bridge_deposits_sent_total"))
        .sum();
    assert!(
        (1.0..=4.0).contains(&sent),
        "bridge_deposit transactions sent: {sent}"
    );
    assert_conserved(&client, &v0, &rpc, settlement, 0);

    // A validator's deposit claim that differs from the EVM's is refused, and one the EVM does
    // not hold cannot be checked: neither enters the pool.
    let validator = chain::signing::load_key(&net.nodes[1].home.join("account.key")).unwrap();
    let nonce = client
        .get(&format!("{v0}/v1/accounts/{}", validator.address()))
        .unwrap()
        .ok()
        .unwrap()["next_nonce"]
        .as_u64()
        .unwrap();
    for (id, value, code) in [
        (0, 1_000 * OPG, "false_bridge_deposit"),
        (7, OPG, "would_fail"),
    ] {
        let claim = signed(
            &validator,
            &net.domain,
            nonce,
            chain::Action::BridgeDeposit {
                id,
                from: net.client_address,
                recipient: validator.address(),
                amount: value,
            },
        );
        let reply = client
            .post(
                &format!("{v0}/v1/txs"),
                &serde_json::to_value(&claim).unwrap(),
            )
            .unwrap();
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert_eq!(reply.body["error"]["code"], code, "{}", reply.body);
    }

    // The deposit pays for a job like any balance.
    let model = &net.models[0];
    let model_id: ModelId = model.id.parse().unwrap();
    let input = std::fs::read_to_string(&model.example_input).unwrap();
    let price: u128 = model.price.parse().unwrap();
    let body = signed_job(&holder, &net.domain, model_id, &input, price, fresh_nonce()).unwrap();
    let job = client
        .post(&format!("{v0}/v1/jobs"), &body)
        .unwrap()
        .ok()
        .unwrap();
    client
        .wait_job(
            &v0,
            job["job_id"].as_str().unwrap(),
            Duration::from_secs(60),
        )
        .unwrap();
    wait("the job charged", Duration::from_secs(30), || {
        common::balance(&client, &v0, &holder.address().to_string()) == deposited - price
    });
    assert_conserved(&client, &v0, &rpc, settlement, 0);

    // A withdrawal to a new EVM account: in flight once included natively ...
    let payee = Address::repeat_byte(0x5e);
    let withdrawn = 50 * OPG;
    let w = proofmesh(&[
        "bridge",
        "withdraw",
        "--amount",
        "50opg",
        "--recipient",
        &payee.to_string(),
        "--node",
        &v0,
        "--key",
        &path(&holder_key),
    ])
    .unwrap();
    let id = w["id"].as_str().unwrap().to_string();
    assert_eq!(w["released"], false, "{w}");
    assert_conserved(&client, &v0, &rpc, settlement, withdrawn);
    // ... released on the EVM against its anchor (the client pays the gas) ...
    let opg = evm::bridge::token(&rpc, settlement).unwrap();
    let r = bridge(
        &[
            "release",
            "--node",
            &v0,
            "--id",
            &id,
            "--timeout",
            "120",
            "--evm-key",
            &client_key,
        ],
        &url,
        &s,
    );
    assert!(r["evm_tx"].is_string(), "{r}");
    assert_eq!(
        evm::bridge::balance_of(&rpc, opg, payee, "latest").unwrap(),
        withdrawn
    );
    assert_conserved(&client, &v0, &rpc, settlement, 0);
    // ... and once: a second release sends nothing.
    let again = bridge(
        &[
            "release",
            "--node",
            &v0,
            "--id",
            &id,
            "--evm-key",
            &client_key,
        ],
        &url,
        &s,
    );
    assert_eq!(again["already_released"], true, "{again}");
    assert_eq!(
        evm::bridge::balance_of(&rpc, opg, payee, "latest").unwrap(),
        withdrawn
    );
    let leftover = deposited - price - withdrawn - common::tx_fee();
    assert_eq!(
        common::balance(&client, &v0, &holder.address().to_string()),
        leftover
    );

    // anvil stopped and started again (on its saved state): deposits go on being credited.
    let pid = info.anvil_pid;
    testnet::evmnet::stop_anvil(pid, Duration::from_secs(10));
    assert!(!testnet::evmnet::is_anvil(pid));
    std::thread::sleep(Duration::from_secs(2));
    let pid = testnet::evmnet::start_anvil(&net.dir, info.port).unwrap();
    if let Some(e) = run.net_mut().evm.as_mut() {
        e.anvil_pid = pid;
    }
    run.net().save().unwrap();
    let d = deposit("1opg");
    assert_eq!(d["id"].as_u64(), Some(1), "{d}");
    assert_eq!(
        common::balance(&client, &v0, &holder.address().to_string()),
        leftover + OPG
    );
    assert_conserved(&client, &v0, &rpc, settlement, 0);
    let status = bridge(&["status", "--node", &v0], &url, &s);
    assert_eq!(status["exact"], true, "{status}");
    assert_eq!(status["deposits_credited"], 2, "{status}");
}
