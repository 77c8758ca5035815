//! Transactions on real processes: transfers signed with EIP-712 and posted to a validator and
//! to an inference node are gossiped, ordered and applied on every node, balances and nonces
//! exact; what cannot apply is refused up front; and a job executed while the chain cannot
//! commit survives a restart of every validator. Throughout, one of the four validators
//! publishes undecodable bytes in place of every proposal it makes (its rounds time out and the
//! chain goes on), and another follows each prevote with a conflicting nil prevote (every other
//! node keeps the signed pair as evidence).
//!
//! Needs the `proofmesh` binary (`cargo build --bin proofmesh`; `scripts/test` does it).

mod common;

use std::time::{Duration, Instant};

use chain::{Address, PrivateKeySigner, Tx};
use common::{OPG, Running, fresh_nonce, transfer};
use serde_json::Value;
use testnet::client::{Client, signed_job};

/// (balance, nonce) of `address` at `node`.
fn account(client: &Client, node: &str, address: Address) -> (u128, u64) {
    let r = client
        .get(&format!("{node}/v1/accounts/{address}"))
        .unwrap()
        .ok()
        .unwrap();
    (
        r["balance"].as_str().unwrap().parse().unwrap(),
        r["nonce"].as_u64().unwrap(),
    )
}

/// The nonce `node` expects next from `address` (after its pending transactions).
fn next_nonce(client: &Client, node: &str, address: Address) -> u64 {
    client
        .get(&format!("{node}/v1/accounts/{address}"))
        .unwrap()
        .ok()
        .unwrap()["next_nonce"]
        .as_u64()
        .unwrap()
}

/// Posts `tx` to `node`; returns (status, body).
fn post(client: &Client, node: &str, tx: &Tx) -> (u16, Value) {
    let r = client
        .post(
            &format!("{node}/v1/txs"),
            &serde_json::to_value(tx).unwrap(),
        )
        .unwrap();
    (r.status, r.body)
}

/// Waits until every node reports `expected` (address, balance, nonce).
fn wait_accounts(run: &Running, client: &Client, expected: &[(Address, u128, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut wrong = Vec::new();
        for node in &run.net().nodes {
            for (a, balance, nonce) in expected {
                let got = account(client, &node.http, *a);
                if got != (*balance, *nonce) {
                    wrong.push(format!(
                        "{}: {a} is {got:?}, not {:?}",
                        node.name,
                        (balance, nonce)
                    ));
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "accounts never matched:\n{}",
            wrong.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn transfers_apply_on_every_node_and_executed_jobs_survive_validator_restarts() {
    let mut run = Running::up_with(4, 1, |o| {
        o.garbage_proposers = vec![1];
        o.double_voters = vec![2];
    });
    let client = Client::new();
    let net = run.net();
    let domain = net.domain;
    let key = net.client_key().unwrap();
    let me = key.address();
    let v0 = net.nodes[0].http.clone();
    let inf = net.inference().next().unwrap().http.clone();
    let (a, b) = (PrivateKeySigner::random(), PrivateKeySigner::random());
    let (balance, nonce) = account(&client, &v0, me);

    // Three transfers in one go, alternating between a validator and an inference node: each
    // is admitted on top of the ones still pending.
    let plan = [
        (&v0, a.address(), 5 * OPG),
        (&inf, b.address(), 7 * OPG),
        (&v0, a.address(), 11 * OPG),
    ];
    for (i, (node, to, amount)) in plan.iter().enumerate() {
        // Nonces are sequential: a node admits nonce n + 1 once it holds n, which gossip
        // brings from the node it was posted to (a gap is refused until then; waiting in the
        // pool for the missing nonce comes with the fee and staking work).
        let next = nonce + i as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        while next_nonce(&client, node, me) != next {
            assert!(
                Instant::now() < deadline,
                "{node} never saw nonce {}",
                next - 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let tx = transfer(&key, &domain, *to, *amount, next);
        let (status, body) = post(&client, node, &tx);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "pending");
        assert_eq!(body["hash"], format!("{}", tx.hash(&domain)), "{body}");
    }
    // What cannot apply is refused with its own status, and nothing of it is kept.
    let refusals = [
        (
            transfer(&key, &domain, a.address(), 1, nonce),
            409,
            "nonce_used",
        ),
        (
            transfer(&key, &domain, a.address(), 1, nonce + 100),
            400,
            "nonce_gap",
        ),
        (
            transfer(&key, &domain, a.address(), 0, nonce + 3),
            400,
            "zero_amount",
        ),
        (
            transfer(&key, &domain, a.address(), balance, nonce + 3),
            402,
            "insufficient_balance",
        ),
        (
            transfer(&PrivateKeySigner::random(), &domain, me, 1, 0),
            402,
            "insufficient_balance",
        ),
    ];
    for (tx, status, code) in &refusals {
        for node in [&v0, &inf] {
            let (got, body) = post(&client, node, tx);
            assert_eq!(
                (got, body["error"]["code"].as_str()),
                (*status, Some(*code)),
                "{body}"
            );
        }
    }
    wait_accounts(
        &run,
        &client,
        &[
            (me, balance - 23 * OPG - 3 * common::tx_fee(), nonce + 3),
            (a.address(), 16 * OPG, 0),
            (b.address(), 7 * OPG, 0),
        ],
    );
    // The new account spends what it received, through the inference node.
    let tx = transfer(&a, &domain, b.address(), 2 * OPG, 0);
    assert_eq!(post(&client, &inf, &tx).0, 200);
    wait_accounts(
        &run,
        &client,
        &[
            (a.address(), 14 * OPG - common::tx_fee(), 1),
            (b.address(), 9 * OPG, 0),
        ],
    );

    // The garbage proposer (validator 1; validators come first) really proposed garbage, and
    // its peers refused it as malformed.
    assert!((0..4).all(|i| run.net().nodes[i].role == "validator"));
    let log = std::fs::read_to_string(run.net().nodes[1].home.join("node.log")).unwrap();
    assert!(
        log.contains("publishing an undecodable proposal"),
        "the fault never fired"
    );
    let refused = [0, 2, 3]
        .iter()
        .filter(|i| {
            client
                .get_text(&format!("{}/metrics", run.net().nodes[**i].http))
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.starts_with("proofmesh_gossip_rejected_total")
                        && l.contains("/proofmesh/1/consensus")
                        && l.contains("malformed")
                })
        })
        .count();
    assert!(refused > 0, "no peer refused a garbage proposal");

    // Validator 2 signed two prevotes in some round: every other node holds the pair.
    let offender = run.net().nodes[2].address;
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in [0, 1, 3, 4] {
        let node = run.net().nodes[i].http.clone();
        loop {
            let list = client
                .get(&format!("{node}/v1/evidence"))
                .unwrap()
                .ok()
                .unwrap();
            let found = list["evidence"].as_array().unwrap().iter().any(|e| {
                e["kind"] == "double_vote"
                    && e["offender"]
                        .as_str()
                        .is_some_and(|o| o.eq_ignore_ascii_case(&format!("{offender}")))
            });
            if found {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} holds no evidence against validator 2: {list}",
                run.net().nodes[i].name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Two faulty validators of four is more than the chain tolerates once a third one is
    // down (below): the double voter's operator fixes its config and restarts it.
    let path = run.net().nodes[2].home.join("node.toml");
    run.net().kill(2);
    let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    if let Some(c) = cfg.get_mut("consensus").and_then(|c| c.as_table_mut()) {
        c.remove("byzantine");
    }
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    run.net_mut().restart(2).unwrap();
    run.net().wait_ready(Duration::from_secs(60), 0).unwrap();

    // A job executed while the chain cannot commit (two of four validators down) waits in the
    // other two's mempools; those two are then killed too. After every validator restarts, the
    // job is settled: the saved mempools brought it back.
    let validators: Vec<usize> = (0..run.net().nodes.len())
        .filter(|i| run.net().nodes[*i].role == "validator")
        .collect();
    assert_eq!(validators.len(), 4);
    for i in &validators[2..] {
        run.net().kill(*i);
    }
    let model = run.net().models[0].clone();
    let input = std::fs::read_to_string(&model.example_input).unwrap();
    let body = signed_job(
        &key,
        &domain,
        model.id.parse().unwrap(),
        &input,
        model.price.parse().unwrap(),
        fresh_nonce(),
    )
    .unwrap();
    let reply = client
        .post(&format!("{inf}/v1/jobs"), &body)
        .unwrap()
        .ok()
        .unwrap();
    let job = reply["job_id"].as_str().unwrap().to_string();
    let held = |node: &str| {
        client
            .get(&format!("{node}/v1/jobs/{job}"))
            .map(|r| r.body["status"] == "executed")
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in &validators[..2] {
        let node = run.net().nodes[*i].http.clone();
        while !held(&node) {
            assert!(
                Instant::now() < deadline,
                "validator {i} never held the record"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for i in &validators[..2] {
        run.net().kill(*i);
    }
    for i in &validators {
        run.net_mut().restart(*i).unwrap();
    }
    run.net().wait_ready(Duration::from_secs(60), 0).unwrap();
    let status = client
        .wait_job(
            &run.net().nodes[validators[3]].http.clone(),
            &job,
            Duration::from_secs(90),
        )
        .unwrap();
    assert_eq!(status["status"], "finalized", "{status}");

    lagging_node_catches_up_past_a_lying_peer(&mut run, &client);
    junk_proposals_leave_memory_bounded(&run, &client);
}

fn height(client: &Client, node: &str) -> u64 {
    client.height(node).unwrap_or(0)
}

/// Validator 3 is down while the chain moves on, then restarts next to a peer that claims
/// height 2^64 - 2 and answers every sync request with nothing: it still catches up (from the
/// honest peers), strikes the liar, and the liar's overflow request gets an error reply.
fn lagging_node_catches_up_past_a_lying_peer(run: &mut Running, client: &Client) {
    let v0 = run.net().nodes[0].http.clone();
    run.net().kill(3);
    let start = height(client, &v0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while height(client, &v0) < start + 5 {
        assert!(
            Instant::now() < deadline,
            "the chain stopped without validator 3"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run.net_mut().restart(3).unwrap();
    let target = run.net().nodes[3].p2p.clone();
    let liar = std::thread::spawn(move || {
        // Until the node listens again.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match testnet::garbage::lie_about_sync(
                &target,
                Duration::from_secs(15),
                testnet::garbage::Junk::default(),
            ) {
                Ok(r) => return r,
                Err(e) if Instant::now() > deadline => panic!("liar: {e:#}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    let lagging = run.net().nodes[3].http.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (mine, theirs) = (height(client, &lagging), height(client, &v0));
        if mine > start + 5 && mine + 1 >= theirs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "validator 3 stuck at {mine}, the chain is at {theirs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = liar.join().unwrap();
    assert!(report.claims_published > 0, "{report:?}");
    assert!(report.overflow_request_refused, "{report:?}");
    let log = std::fs::read_to_string(run.net().nodes[3].home.join("node.log")).unwrap();
    assert!(
        report.empty_answers == 0 || log.contains("sync peer did not serve what it claimed"),
        "the liar answered {} sync requests and was never struck",
        report.empty_answers
    );
}

/// The resident memory of `pid` (kB).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The bound this test states: 200 junk proposals of 1 MiB each cost a node at most this much
/// resident memory. They are refused before anything keeps them (the sender is not the
/// round's proposer; after a few, gossipsub graylists it and drops the rest undecoded).
const JUNK_RSS_BOUND_KB: u64 = 96 * 1024;

fn junk_proposals_leave_memory_bounded(run: &Running, client: &Client) {
    let net = run.net();
    let before: Vec<u64> = net.nodes.iter().map(|n| rss_kb(n.pid)).collect();
    let start = height(client, &net.nodes[0].http);
    let rejected = |node: &str| -> u64 {
        client
            .get_text(&format!("{node}/metrics"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.starts_with("proofmesh_gossip_rejected_total")
                    && l.contains("/proofmesh/1/consensus")
                    && l.contains("bad proposal signature")
            })
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let rejected_before = rejected(&net.nodes[0].http);
    let junk = testnet::garbage::Junk {
        count: 200,
        bytes: 1 << 20,
        height: start + 1,
        // The set deciding now: the double voter may have been jailed and left it at an
        // epoch boundary, which changes whose turn it is.
        validators: testnet::economy::active_powers(&net.nodes[0].http)
            .unwrap()
            .into_iter()
            .collect(),
    };
    let report =
        testnet::garbage::lie_about_sync(&net.nodes[0].p2p, Duration::from_secs(1), junk).unwrap();
    assert_eq!(report.junk_published, 200, "{report:?}");
    // It reached the node and was refused there, at the signature (the cheap checks passed).
    assert!(
        rejected(&net.nodes[0].http) > rejected_before,
        "no junk proposal reached the signature check"
    );
    std::thread::sleep(Duration::from_secs(2));
    for (i, n) in net.nodes.iter().enumerate() {
        let after = rss_kb(n.pid);
        eprintln!(
            "{}: RSS {} MiB before, {} MiB after 200 junk proposals",
            n.name,
            before[i] / 1024,
            after / 1024
        );
        assert!(
            after.saturating_sub(before[i]) <= JUNK_RSS_BOUND_KB,
            "{}: {} kB -> {} kB",
            n.name,
            before[i],
            after
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while height(client, &net.nodes[0].http) < start + 3 {
        assert!(
            Instant::now() < deadline,
            "the chain stopped after the junk"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
