//! Transaction throughput by kind on a live testnet, against transfers measured in the same
//! run, and block intervals across epoch changes against the others.
//!
//! Funded accounts each send their transactions (sequential nonces, all to one validator, so
//! that none arrives ahead of its predecessor) concurrently; a kind's throughput is its count
//! over the time from the first submission to the inclusion of the last.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chain::{Action, PrivateKeySigner, ProposalKind, VoteOption};
use serde_json::{Value, json};

use crate::client::Client;
use crate::economy::{dir_key, wait_tx};
use crate::net::{OPG, Testnet};

/// How long the inclusion of one kind's batch may take.
const BATCH_BOUND: Duration = Duration::from_secs(300);

fn signed(
    net: &Testnet,
    key: &PrivateKeySigner,
    nonce: u64,
    fee: u128,
    action: Action,
) -> Result<chain::Tx> {
    Ok(chain::UnsignedTx {
        from: key.address(),
        nonce,
        max_fee: fee,
        action,
    }
    .sign(key, &net.domain)?)
}

/// Posts `txs` in order to `node`; returns their hashes.
fn post_all(client: &Client, node: &str, txs: &[chain::Tx]) -> Result<Vec<String>> {
    txs.iter()
        .map(|tx| {
            let r = client.post(&format!("{node}/v1/txs"), &serde_json::to_value(tx)?)?;
            if r.status != 200 {
                bail!("{} refused: {} {}", tx.action.name(), r.status, r.body);
            }
            r.body["hash"]
                .as_str()
                .map(str::to_string)
                .context("no hash")
        })
        .collect()
}

/// One kind's batch: each account's transactions to its validator, all accounts at once;
/// returns (transactions, seconds until the last is included, how many applied).
fn batch(
    net: &Testnet,
    keys: &[PrivateKeySigner],
    fee: u128,
    make: &(dyn Fn(usize, u64) -> Option<Action> + Sync),
    per_account: usize,
) -> Result<(usize, f64, usize)> {
    let validators: Vec<String> = net.validators().map(|v| v.http.clone()).collect();
    let client = Client::new();
    // Nonces first (outside the timed part).
    let mut plans = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let node = &validators[i % validators.len()];
        let account = client
            .get(&format!("{node}/v1/accounts/{}", key.address()))?
            .ok()?;
        let next = account["next_nonce"].as_u64().context("no next_nonce")?;
        let txs = (0..per_account as u64)
            .filter_map(|k| make(i, k).map(|a| (k, a)))
            .map(|(k, a)| signed(net, key, next + k, fee, a))
            .collect::<Result<Vec<_>>>()?;
        plans.push((node.clone(), txs));
    }
    let total: usize = plans.iter().map(|(_, t)| t.len()).sum();
    let started = Instant::now();
    let hashes: Vec<(String, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .map(|(node, txs)| {
                let client = client.clone();
                s.spawn(move || post_all(&client, node, txs).map(|h| (node.clone(), h)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a sender panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    let mut applied = 0;
    for (node, hs) in &hashes {
        // The last one's inclusion implies the others' (nonce order); each outcome is read.
        if let Some(last) = hs.last() {
            wait_tx(node, last, BATCH_BOUND)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for (node, hs) in &hashes {
        for h in hs {
            let o = wait_tx(node, h, BATCH_BOUND)?;
            applied += usize::from(o["ok"] == true);
        }
    }
    Ok((total, seconds, applied))
}

/// Runs the benchmark: `accounts` funded accounts, `per_account` transactions each per kind.
pub fn run(net: &Testnet, accounts: usize, per_account: usize) -> Result<Value> {
    let client = Client::new();
    let v0 = net.nodes[0].http.clone();
    let status = client.get(&format!("{v0}/v1/status"))?.ok()?;
    let fee: u128 = status["tx_fee"]
        .as_str()
        .and_then(|f| f.parse().ok())
        .context("no tx_fee")?;
    let eco = dir_key(&net.dir, "ecosystem")?;
    let keys: Vec<PrivateKeySigner> = (0..accounts).map(|_| PrivateKeySigner::random()).collect();

    // Fund every account from the ecosystem fund (64 pending per sender at most).
    for chunk in keys.chunks(48) {
        let next = client
            .get(&format!("{v0}/v1/accounts/{}", eco.address()))?
            .ok()?["next_nonce"]
            .as_u64()
            .context("no next_nonce")?;
        let txs = chunk
            .iter()
            .enumerate()
            .map(|(k, key)| {
                signed(
                    net,
                    &eco,
                    next + k as u64,
                    fee,
                    Action::Transfer {
                        to: key.address(),
                        amount: 10_000 * OPG,
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let hashes = post_all(&client, &v0, &txs)?;
        if let Some(last) = hashes.last() {
            wait_tx(&v0, last, BATCH_BOUND)?;
        }
    }

    let mut kinds = Vec::new();
    let sink = PrivateKeySigner::random().address();
    let unbonds = per_account.min(7);
    type Make = Box<dyn Fn(usize, u64) -> Option<Action> + Sync>;
    let plan: Vec<(&str, usize, Make)> = vec![
        (
            "transfer",
            per_account,
            Box::new(move |_, _| {
                Some(Action::Transfer {
                    to: sink,
                    amount: OPG,
                })
            }),
        ),
        (
            "bond",
            per_account,
            Box::new(|_, _| Some(Action::Bond { amount: 10 * OPG })),
        ),
        (
            "unbond",
            unbonds,
            Box::new(|_, _| Some(Action::Unbond { amount: OPG })),
        ),
        (
            "register_model",
            1,
            Box::new(|i, _| {
                let manifest = format!("{{\"bench\":{i},\"at\":{}}}", chain::types::now_ms());
                Some(Action::RegisterModel {
                    model_id: chain::ModelId(
                        chain::B256::from(alloy::primitives::keccak256(manifest.as_bytes())).0,
                    ),
                    name: format!("bench-{i}"),
                    manifest,
                    mode: chain::VerificationMode::Reexec,
                    price_per_job: OPG / 100,
                    price_per_unit: 0,
                })
            }),
        ),
    ];
    for (name, n, make) in &plan {
        let (count, seconds, applied) = batch(net, &keys, fee, make.as_ref(), *n)?;
        kinds.push((name.to_string(), count, seconds, applied));
    }
    // Votes, on a text proposal opened just before (its period must outlast the batch).
    let proposal = {
        let next_id = client.get(&format!("{v0}/v1/proposals"))?.ok()?["proposals"]
            .as_array()
            .map_or(0, |l| l.len()) as u64
            + 1;
        let deposit: u128 = client.get(&format!("{v0}/v1/params"))?.ok()?["params"]["min_deposit"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("no min_deposit")?;
        crate::economy::apply(
            net,
            &v0,
            &eco,
            Action::Propose {
                kind: ProposalKind::Text {
                    title: "bench".into(),
                    body: String::new(),
                },
                deposit,
            },
        )?;
        next_id
    };
    let vote = move |_: usize, k: u64| {
        Some(Action::Vote {
            proposal,
            option: if k.is_multiple_of(2) {
                VoteOption::Yes
            } else {
                VoteOption::No
            },
        })
    };
    let (count, seconds, applied) = batch(net, &keys, fee, &vote, per_account)?;
    kinds.push(("vote".into(), count, seconds, applied));

    let baseline = kinds
        .iter()
        .find(|k| k.0 == "transfer")
        .map(|k| k.1 as f64 / k.2)
        .unwrap_or(1.0);
    let report: Vec<Value> = kinds
        .iter()
        .map(|(name, count, seconds, applied)| {
            let tps = *count as f64 / seconds;
            json!({
                "kind": name, "txs": count, "applied": applied, "seconds": seconds,
                "tx_per_s": tps, "vs_transfer": tps / baseline,
            })
        })
        .collect();
    Ok(json!({
        "accounts": accounts,
        "kinds": report,
        "epoch_blocks": epoch_intervals(&v0)?,
    }))
}

/// Block intervals of the last 400 blocks: those that start an epoch's set (the block after a
/// boundary) against the others.
pub fn epoch_intervals(node: &str) -> Result<Value> {
    let client = Client::new();
    let tip = client.height(node).context("no height")?;
    let params = client.get(&format!("{node}/v1/params"))?.ok()?;
    let epoch = params["params"]["epoch_blocks"]
        .as_u64()
        .context("no epoch_blocks")?;
    let from = tip.saturating_sub(400).max(2);
    let mut time = std::collections::BTreeMap::new();
    for h in from - 1..=tip {
        let b = client.get(&format!("{node}/v1/blocks/{h}"))?.ok()?;
        time.insert(h, b["timestamp_ms"].as_u64().context("no timestamp_ms")?);
    }
    let (mut at_change, mut others) = (Vec::new(), Vec::new());
    for h in from..=tip {
        let dt = (time[&h] - time[&(h - 1)]) as f64;
        if (h - 1).is_multiple_of(epoch) {
            at_change.push(dt);
        } else {
            others.push(dt);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(json!({
        "epoch_blocks": epoch,
        "blocks": tip - from + 1,
        "first_blocks_of_an_epoch": at_change.len(),
        "mean_interval_ms_first_block_of_epoch": mean(&at_change),
        "mean_interval_ms_other_blocks": mean(&others),
        "ratio": mean(&at_change) / mean(&others).max(1.0),
    }))
}
