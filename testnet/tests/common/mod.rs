//! Shared pieces of the multi-process tests: a testnet that is always torn down.

#![allow(dead_code)]

use std::time::Duration;

use chain::signing::Domain;
use testnet::client::Client;
use testnet::{Testnet, UpOptions};

#[path = "../../../kernels/src/testing.rs"]
mod testing;
#[allow(unused_imports)]
pub(crate) use testing::{minilm_dir, smollm2_dir};

/// A running testnet in a temporary directory; dropping it stops every node (by pid) and removes
/// the directory, also when the test fails.
pub struct Running {
    net: Option<Testnet>,
    dir: Option<tempfile::TempDir>,
}

impl Running {
    pub fn up(validators: usize, inference: usize, faulty_inference: Vec<usize>) -> Running {
        Running::up_with(validators, inference, |o| {
            o.faulty_inference = faulty_inference
        })
    }

    /// A testnet whose options `adjust` changes from the defaults of [`Running::up`].
    pub fn up_with(
        validators: usize,
        inference: usize,
        adjust: impl FnOnce(&mut UpOptions),
    ) -> Running {
        let bin = testnet::net::default_bin();
        assert!(
            bin.is_file(),
            "build the node first: cargo build --bin proofmesh ({} missing)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("proofmesh-test-")
            .tempdir()
            .unwrap();
        let mut opts = UpOptions {
            dir: dir.path().join("net"),
            validators,
            inference,
            seed: 7,
            chain_id: None,
            bin,
            faulty_inference: Vec::new(),
            ready_timeout: Duration::from_secs(120),
            minilm_dir: Some(minilm_dir()),
            smollm2_dir: None,
            tee_root: None,
            forging_inference: Vec::new(),
            replaying_inference: Vec::new(),
            garbage_proposers: Vec::new(),
            double_voters: Vec::new(),
            // Tests that need the EVM chain turn it on.
            evm: false,
            single_holder: false,
            corrupt_providers: Vec::new(),
            no_fetch: Vec::new(),
        };
        adjust(&mut opts);
        let net = match Testnet::up(&opts) {
            Ok(net) => net,
            Err(e) => {
                if std::env::var_os("PROOFMESH_KEEP_FAILED").is_some() {
                    eprintln!("keeping {}", dir.keep().display());
                }
                panic!("testnet did not come up: {e:#}");
            }
        };
        Running {
            net: Some(net),
            dir: Some(dir),
        }
    }

    pub fn net(&self) -> &Testnet {
        self.net.as_ref().expect("testnet is up")
    }

    pub fn net_mut(&mut self) -> &mut Testnet {
        self.net.as_mut().expect("testnet is up")
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.net
            .as_ref()
            .map(|n| n.log_tails(30))
            .unwrap_or_default()
    }

    pub fn down(&mut self) {
        if let Some(net) = self.net.take() {
            net.down();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            if std::env::var_os("PROOFMESH_KEEP_FAILED").is_some()
                && let Some(dir) = self.dir.take()
            {
                eprintln!("keeping {}", dir.keep().display());
            }
        }
        self.down();
    }
}

/// The balance of `address` as `node` reports it.
pub fn balance(client: &Client, node: &str, address: &str) -> u128 {
    let r = client
        .get(&format!("{node}/v1/accounts/{address}"))
        .unwrap()
        .ok()
        .unwrap();
    r["balance"].as_str().unwrap().parse().unwrap()
}

/// Asserts that `node` reports the total supply unchanged.
pub fn assert_supply_exact(client: &Client, node: &testnet::net::NodeInfo) {
    let s = client
        .get(&format!("{}/v1/supply", node.http))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(s["total"], chain::TOTAL_SUPPLY.to_string(), "{}", node.name);
}

/// A job nonce no earlier test or run used (nonces are unordered, per client).
pub fn fresh_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    chain::types::now_ms() * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The value of the Prometheus series `series` (name with labels) at `node`; 0 when absent.
pub fn metric(client: &Client, node: &str, series: &str) -> f64 {
    client
        .get_text(&format!("{node}/metrics"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Waits up to `timeout` for the series `series` at `node` to reach `at_least`; returns its
/// last value (which the caller asserts: a value still short of it means the wait ran out).
pub fn wait_metric(
    client: &Client,
    node: &str,
    series: &str,
    at_least: f64,
    timeout: std::time::Duration,
) -> f64 {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let value = metric(client, node, series);
        if value >= at_least || std::time::Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// One OPG in base units.
pub const OPG: u128 = 1_000_000_000_000_000_000;

/// The fee every transaction pays on a testnet (its genesis parameter).
pub fn tx_fee() -> u128 {
    testnet::net::testnet_params().tx_fee
}

/// A transfer signed by `key` for the network `domain`, paying the testnet's fee.
pub fn transfer(
    key: &chain::PrivateKeySigner,
    domain: &Domain,
    to: chain::Address,
    amount: u128,
    nonce: u64,
) -> chain::Tx {
    signed(key, domain, nonce, chain::Action::Transfer { to, amount })
}

/// A transaction of `key` at `nonce` for the network `domain`, paying the testnet's fee.
pub fn signed(
    key: &chain::PrivateKeySigner,
    domain: &Domain,
    nonce: u64,
    action: chain::Action,
) -> chain::Tx {
    chain::UnsignedTx {
        from: key.address(),
        nonce,
        max_fee: tx_fee(),
        action,
    }
    .sign(key, domain)
    .unwrap()
}

/// Runs `proofmesh verify` on `receipt` (written to a temporary file) with `args`: whether it
/// succeeded, and its JSON report.
#[allow(dead_code)]
pub fn proofmesh_verify(
    receipt: &serde_json::Value,
    args: &[&std::ffi::OsStr],
) -> (bool, serde_json::Value) {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("receipt.json");
    std::fs::write(&path, receipt.to_string()).unwrap();
    let out = std::process::Command::new(testnet::net::default_bin())
        .arg("verify")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (out.status.success(), report)
}
