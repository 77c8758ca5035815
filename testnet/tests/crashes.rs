//! kill -9 under load, on real processes: over 50 rounds a random validator is killed with
//! SIGKILL at a random moment and restarted after a random pause, while clients keep posting
//! jobs (to whichever validator is up) and transfers. Afterwards: one chain on every node (no
//! fork), every job that was answered `executed` finalized exactly once and every job seen
//! finalized during the storm is still finalized at the same height (none lost), the client paid
//! exactly the fees of its jobs and the amounts of its transfers (nothing charged twice), every
//! accepted transfer applied once, and the supply is exact on every node.
//!
//! `PROOFMESH_CRASH_SEED` replays a run's kill schedule (the seed is printed).
//!
//! Needs the `proofmesh` binary (`cargo build --bin proofmesh`; `scripts/test` does it).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chain::fuzzing::Rng;
use chain::{Address, PrivateKeySigner};
use common::{OPG, Running, assert_supply_exact, balance, fresh_nonce, transfer};
use testnet::client::{Client, signed_job};

const ROUNDS: usize = 50;
/// After the last restart, every accepted job and transfer must be final within this long:
/// five rounds of the mempool's 30 s re-gossip (measured alone: 18–44 s).
const SETTLE_BOUND: Duration = Duration::from_secs(150);

/// What the load threads saw.
#[derive(Default)]
struct Seen {
    /// Jobs answered `executed`, by id.
    executed: Vec<String>,
    /// Jobs refused or not answered (the gateway was down, or died while the job ran: then the
    /// executor's record may still be settled and charged, once).
    not_executed: usize,
    /// Accepted transfers: (recipient, amount).
    transfers: Vec<(Address, u128)>,
    /// Jobs a node reported finalized during the storm, with the height it named.
    finalized: HashMap<String, u64>,
}

#[test]
fn validators_killed_at_random_under_load_lose_and_double_charge_nothing() {
    let mut run = Running::up(4, 1, Vec::new());
    let net = run.net().clone();
    let client = Client::new();
    let seed = std::env::var("PROOFMESH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| chain::types::now_ms() | 1);
    println!("kill schedule seed {seed} (PROOFMESH_CRASH_SEED={seed} replays it)");

    let model = net.model(Some("mlp-demo")).unwrap().clone();
    let model_id: chain::ModelId = model.id.parse().unwrap();
    let price: u128 = model.price.parse().unwrap();
    let input = std::fs::read_to_string(&model.example_input).unwrap();
    let key = net.client_key().unwrap();
    let inference = net.inference().next().unwrap().http.clone();
    let validators: Vec<String> = net.validators().map(|v| v.http.clone()).collect();
    let client_before = balance(&client, &inference, &net.client_address.to_string());
    let recipients: Vec<Address> = (0..3)
        .map(|_| PrivateKeySigner::random().address())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut load = Vec::new();
    // Two job clients, each posting to a random validator (its gateway), up or not.
    for t in 0..2u64 {
        let (stop, seen, key, input) = (stop.clone(), seen.clone(), key.clone(), input.clone());
        let (validators, domain) = (validators.clone(), net.domain);
        load.push(std::thread::spawn(move || {
            let client = Client::new();
            let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            while !stop.load(Ordering::SeqCst) {
                let node = &validators[rng.below(validators.len())];
                let body =
                    signed_job(&key, &domain, model_id, &input, price, fresh_nonce()).unwrap();
                match client.post(&format!("{node}/v1/jobs"), &body) {
                    Ok(r) if r.status == 200 => {
                        let id = r.body["job_id"].as_str().unwrap().to_string();
                        seen.lock().unwrap().executed.push(id);
                    }
                    _ => {
                        seen.lock().unwrap().not_executed += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }));
    }
    // Transfers from the client, through the inference node (never killed), which orders them
    // by nonce in its mempool and gossips them to the validators.
    {
        let (stop, seen, key, inference) =
            (stop.clone(), seen.clone(), key.clone(), inference.clone());
        let (recipients, domain) = (recipients.clone(), net.domain);
        load.push(std::thread::spawn(move || {
            let client = Client::new();
            let me = key.address();
            let mut i = 0u128;
            while !stop.load(Ordering::SeqCst) {
                let nonce = client
                    .get(&format!("{inference}/v1/accounts/{me}"))
                    .ok()
                    .and_then(|r| r.body["next_nonce"].as_u64());
                if let Some(nonce) = nonce {
                    let to = recipients[i as usize % recipients.len()];
                    let amount = OPG + i;
                    let tx = transfer(&key, &domain, to, amount, nonce);
                    let r = client
                        .post(
                            &format!("{inference}/v1/txs"),
                            &serde_json::to_value(&tx).unwrap(),
                        )
                        .unwrap();
                    // While the chain stalls (two validators down at once), pending transfers
                    // may reach the per-sender limit: 429, nothing taken.
                    assert!(
                        r.status == 200 || r.code() == "sender_full",
                        "transfer refused: {}",
                        r.body
                    );
                    if r.status == 200 {
                        seen.lock().unwrap().transfers.push((to, amount));
                        i += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        }));
    }

    // The storm: one validator at a time, killed at a random moment, restarted after a random
    // pause. The next victim may be one still starting up.
    let mut rng = Rng(seed);
    let started = Instant::now();
    for round in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(200 + rng.below(1300) as u64));
        let victim = rng.below(validators.len());
        run.net().kill(victim);
        std::thread::sleep(Duration::from_millis(rng.below(800) as u64));
        run.net_mut().restart(victim).unwrap();
        // Ask a random live validator about a random executed job: what it calls finalized
        // must stay so.
        let probe = {
            let s = seen.lock().unwrap();
            (!s.executed.is_empty()).then(|| s.executed[rng.below(s.executed.len())].clone())
        };
        let asked = &validators[(victim + 1) % validators.len()];
        if let Some(id) = probe
            && let Ok(r) = client.get(&format!("{asked}/v1/jobs/{id}"))
            && r.body["status"] == "finalized"
        {
            let h = r.body["height"].as_u64().unwrap();
            let mut s = seen.lock().unwrap();
            if let Some(before) = s.finalized.insert(id.clone(), h) {
                assert_eq!(
                    before, h,
                    "job {id} moved from height {before} (round {round})"
                );
            }
        }
    }
    let storm = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    println!(
        "{ROUNDS} kills in {:.1} s; {} jobs executed, {} refused or unanswered, {} transfers, {} \
         seen finalized mid-storm",
        storm.as_secs_f64(),
        seen.executed.len(),
        seen.not_executed,
        seen.transfers.len(),
        seen.finalized.len()
    );
    assert!(
        seen.executed.len() >= 20 && seen.transfers.len() >= 20,
        "too little load to mean anything"
    );

    // Everything accepted becomes final, on every node. The last victim may still be starting.
    let settle = Instant::now();
    run.net()
        .wait_ready(SETTLE_BOUND, 0)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", run.logs()));
    let mut paid_transfers: BTreeMap<Address, u128> = BTreeMap::new();
    for (to, amount) in &seen.transfers {
        *paid_transfers.entry(*to).or_default() += amount;
    }
    let me = net.client_address;
    for node in &net.nodes {
        for id in &seen.executed {
            let left = SETTLE_BOUND.saturating_sub(settle.elapsed());
            let r = client
                .wait_job(&node.http, id, left)
                .unwrap_or_else(|e| panic!("{}: {e:#}\n{}", node.name, run.logs()));
            assert_eq!(r["status"], "finalized", "{}: {r}", node.name);
            if let Some(h) = seen.finalized.get(id) {
                assert_eq!(r["height"], *h, "{}: job {id} moved", node.name);
            }
        }
        loop {
            let nonce = client
                .get(&format!("{}/v1/accounts/{me}", node.http))
                .unwrap()
                .body["nonce"]
                .as_u64()
                .unwrap();
            if nonce == seen.transfers.len() as u64 {
                break;
            }
            assert!(
                settle.elapsed() < SETTLE_BOUND,
                "{}: client nonce {nonce}, {} transfers accepted",
                node.name,
                seen.transfers.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!(
        "all settled {} ms after the last restart",
        settle.elapsed().as_millis()
    );

    // One chain, and every job in it exactly once.
    let top = net
        .nodes
        .iter()
        .map(|n| client.height(&n.http).unwrap())
        .min()
        .unwrap();
    let mut in_blocks: HashSet<String> = HashSet::new();
    for h in 1..=top {
        let blocks: Vec<serde_json::Value> = net
            .nodes
            .iter()
            .map(|n| {
                client
                    .get(&format!("{}/v1/blocks/{h}", n.http))
                    .unwrap()
                    .ok()
                    .unwrap()
            })
            .collect();
        for (b, n) in blocks.iter().zip(&net.nodes) {
            assert_eq!(b["hash"], blocks[0]["hash"], "fork at {h} on {}", n.name);
        }
        for r in blocks[0]["records"].as_array().unwrap() {
            let id = r["job_id"].as_str().unwrap().to_string();
            assert!(in_blocks.insert(id.clone()), "job {id} included twice");
        }
    }
    let executed: HashSet<String> = seen.executed.iter().cloned().collect();
    assert_eq!(
        executed.len(),
        seen.executed.len(),
        "a job id answered twice"
    );
    assert!(
        executed.is_subset(&in_blocks),
        "an executed job is in no block"
    );

    // Money: each job charged once, each transfer applied once and its fee paid once,
    // nothing else moved; the supply is exact everywhere.
    let charged = price * in_blocks.len() as u128;
    let sent: u128 =
        paid_transfers.values().sum::<u128>() + common::tx_fee() * seen.transfers.len() as u128;
    for node in &net.nodes {
        assert_supply_exact(&client, node);
        assert_eq!(
            client_before - balance(&client, &node.http, &me.to_string()),
            charged + sent,
            "{}: the client paid the wrong amount",
            node.name
        );
        for (to, amount) in &paid_transfers {
            assert_eq!(
                balance(&client, &node.http, &to.to_string()),
                *amount,
                "{}: {to}",
                node.name
            );
        }
    }
    run.down();
}
