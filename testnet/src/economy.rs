//! The open network on a live testnet: nodes that join by stake, a validator that
//! double-signs, governance by stake and vesting. Each scenario drives real processes through
//! the HTTP API and returns a JSON report, or an error naming the expectation that failed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chain::{Action, Address, PrivateKeySigner, ProposalKind, VoteOption};
use serde_json::{Value, json};

use crate::client::Client;
use crate::net::{NodeInfo, OPG, Testnet};

/// How long an epoch change may take to show (an epoch is 20 blocks of ~0.3 s).
const EPOCH_BOUND: Duration = Duration::from_secs(60);

/// A node's account key (`account.key` in its home).
pub fn node_key(node: &NodeInfo) -> Result<PrivateKeySigner> {
    Ok(chain::signing::load_key(&node.home.join("account.key"))?)
}

/// A key the testnet keeps in its directory (`ecosystem.key`, `team.key`, ...).
pub fn dir_key(dir: &Path, name: &str) -> Result<PrivateKeySigner> {
    Ok(chain::signing::load_key(&dir.join(format!("{name}.key")))?)
}

/// Signs `action` for `key` at its next nonce (after its transactions pending at `node`),
/// paying the chain's fee, and submits it there. Returns the transaction hash, or the node's
/// refusal as an error (`HTTP <status> <code>: <message>`).
pub fn send(net: &Testnet, node: &str, key: &PrivateKeySigner, action: Action) -> Result<String> {
    let client = Client::new();
    let status = client.get(&format!("{node}/v1/status"))?.ok()?;
    let fee: u128 = status["tx_fee"]
        .as_str()
        .and_then(|f| f.parse().ok())
        .context("status has no tx_fee")?;
    let account = client
        .get(&format!("{node}/v1/accounts/{}", key.address()))?
        .ok()?;
    let nonce = account["next_nonce"]
        .as_u64()
        .context("account has no next_nonce")?;
    let tx = chain::UnsignedTx {
        from: key.address(),
        nonce,
        max_fee: fee,
        action,
    }
    .sign(key, &net.domain)?;
    let r = client.post(&format!("{node}/v1/txs"), &serde_json::to_value(&tx)?)?;
    if r.status != 200 {
        bail!(
            "HTTP {} {}: {}",
            r.status,
            r.code(),
            r.body["error"]["message"]
        );
    }
    r.body["hash"]
        .as_str()
        .map(str::to_string)
        .context("reply has no hash")
}

/// Waits until a block includes `hash`; returns `GET /v1/txs/{hash}`.
pub fn wait_tx(node: &str, hash: &str, timeout: Duration) -> Result<Value> {
    let client = Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        let r = client.get(&format!("{node}/v1/txs/{hash}"))?;
        if r.status == 200 && r.body["status"] == "included" {
            return Ok(r.body);
        }
        if Instant::now() > deadline {
            bail!(
                "transaction {hash} not included after {timeout:?}: {}",
                r.body
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`send`] then [`wait_tx`]; an error if the action failed.
pub fn apply(net: &Testnet, node: &str, key: &PrivateKeySigner, action: Action) -> Result<Value> {
    let name = action.name();
    let hash = send(net, node, key, action).with_context(|| format!("sending {name}"))?;
    let outcome = wait_tx(node, &hash, Duration::from_secs(30))?;
    if outcome["ok"] != true {
        bail!("{name} {hash} included but failed: {}", outcome["reason"]);
    }
    Ok(outcome)
}

/// An address in JSON (any case: the API writes lowercase, `Address`'s `Display` checksums).
fn address_of(v: &Value) -> Option<Address> {
    v.as_str()?.parse().ok()
}

fn get(node: &str, path: &str) -> Result<Value> {
    Client::new().get(&format!("{node}{path}"))?.ok()
}

/// The active validators' addresses at `node`.
pub fn active_set(node: &str) -> Result<Vec<Address>> {
    let v = get(node, "/v1/validators")?;
    Ok(v["validators"]
        .as_array()
        .context("no validators")?
        .iter()
        .filter(|v| v["active"] == true)
        .filter_map(|v| v["address"].as_str()?.parse().ok())
        .collect())
}

/// The active validators and their voting power at `node`.
pub fn active_powers(node: &str) -> Result<std::collections::BTreeMap<Address, u64>> {
    let v = get(node, "/v1/validators")?;
    Ok(v["validators"]
        .as_array()
        .context("no validators")?
        .iter()
        .filter(|v| v["active"] == true)
        .filter_map(|v| Some((address_of(&v["address"])?, v["power"].as_u64()?)))
        .collect())
}

/// Polls `until(node)` every 200 ms for `timeout`.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut until: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let t = Instant::now();
    loop {
        if until()? {
            return Ok(t.elapsed());
        }
        if t.elapsed() > timeout {
            bail!("{what}: not after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The lowest height at or after `from` whose commit certificate (at `node`) has a precommit
/// by `validator`, looking up to `to`.
fn first_signed(node: &str, validator: Address, from: u64, to: u64) -> Result<Option<u64>> {
    for h in from..=to {
        let b = get(node, &format!("/v1/blocks/{h}"))?;
        let signed = b["certificate"]["signers"]
            .as_array()
            .is_some_and(|s| s.iter().any(|a| address_of(a) == Some(validator)));
        if signed {
            return Ok(Some(h));
        }
    }
    Ok(None)
}

/// Every running node has the same block hash at every height up to the lowest tip, and an
/// exact supply. Returns the heights compared. A stopped node is left out (its process is
/// gone); one that runs but does not answer fails the check.
pub fn assert_agreement(net: &Testnet) -> Result<u64> {
    let client = Client::new();
    let live: Vec<&NodeInfo> = net
        .nodes
        .iter()
        .filter(|n| crate::net::is_ours(n.pid))
        .collect();
    let mut low = u64::MAX;
    for n in &live {
        let mut h = None;
        wait_for(
            &format!("{} answering", n.name),
            Duration::from_secs(10),
            || {
                h = client.height(&n.http);
                Ok(h.is_some())
            },
        )?;
        low = low.min(h.unwrap_or(0));
    }
    if live.is_empty() {
        low = 0;
    }
    for h in 1..=low {
        let mut hash = None;
        for n in &live {
            let b = get(&n.http, &format!("/v1/blocks/{h}"))?;
            let this = b["hash"].clone();
            match &hash {
                None => hash = Some(this),
                Some(first) if *first != this => {
                    bail!("{} has block {h} = {this}, others {first}", n.name)
                }
                _ => {}
            }
        }
    }
    for n in &live {
        let s = get(&n.http, "/v1/supply")?;
        if s["exact"] != true || s["total"] != chain::TOTAL_SUPPLY.to_string() {
            bail!("{}: supply {s}", n.name);
        }
    }
    Ok(low)
}

/// Funds `key`'s account from `from` with `amount`, then bonds `bond` of it; the bond's
/// outcome.
fn fund_and_bond(
    net: &Testnet,
    node: &str,
    from: &PrivateKeySigner,
    key: &PrivateKeySigner,
    amount: u128,
    bond: u128,
) -> Result<Value> {
    apply(
        net,
        node,
        from,
        Action::Transfer {
            to: key.address(),
            amount,
        },
    )?;
    apply(net, node, key, Action::Bond { amount: bond })
}

/// `scenario join`: a new validator joins by stake and an original one leaves; then a new
/// inference node joins and serves jobs.
pub fn join(net: &mut Testnet) -> Result<Value> {
    let v0 = net.nodes[0].http.clone();
    let eco = dir_key(&net.dir, "ecosystem")?;
    let start_height = Client::new().height(&v0).unwrap_or(0);

    // A new operator: `proofmesh init`, funded, bonds, registers.
    let i = net.add_node("validator")?;
    let newcomer = net.nodes[i].clone();
    let key = node_key(&newcomer)?;
    let bonded = fund_and_bond(net, &v0, &eco, &key, 2_000_000 * OPG, 1_500_000 * OPG)?;
    let bond_height = bonded["height"].as_u64().unwrap_or(0);
    let bond_at = Instant::now();
    apply(
        net,
        &v0,
        &key,
        Action::RegisterValidator {
            peer_id: newcomer.peer_id.clone(),
            moniker: newcomer.name.clone(),
        },
    )?;
    let entered = wait_for("the newcomer in the set", EPOCH_BOUND, || {
        Ok(active_set(&v0)?.contains(&newcomer.address))
    })?;
    // Its precommits in commit certificates.
    let mut first = None;
    wait_for("a certificate signed by the newcomer", EPOCH_BOUND, || {
        let tip = Client::new().height(&v0).unwrap_or(0);
        first = first_signed(&v0, newcomer.address, bond_height, tip)?;
        Ok(first.is_some())
    })?;
    let bond_to_precommit = bond_at.elapsed();

    // An original validator unbonds everything and leaves at the next epoch.
    let leaving = net
        .validators()
        .find(|n| n.name == "validator-3")
        .or_else(|| net.validators().last())
        .cloned()
        .context("no validator to leave")?;
    let leaving_key = node_key(&leaving)?;
    let stake: u128 = get(&v0, &format!("/v1/accounts/{}", leaving.address))?["bonded"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no bonded")?;
    apply(net, &v0, &leaving_key, Action::Unbond { amount: stake })?;
    wait_for("the leaver out of the set", EPOCH_BOUND, || {
        Ok(!active_set(&v0)?.contains(&leaving.address))
    })?;
    // The chain goes on with the new set.
    let h = Client::new().height(&v0).unwrap_or(0);
    wait_for(
        "blocks after the set changed",
        Duration::from_secs(30),
        || Ok(Client::new().height(&v0).unwrap_or(0) >= h + 5),
    )?;

    // An inference node joins and serves jobs.
    let j = net.add_node("inference")?;
    let node = net.nodes[j].clone();
    let node_key = node_key(&node)?;
    fund_and_bond(net, &v0, &eco, &node_key, 20_000 * OPG, 10_000 * OPG)?;
    let models: Vec<chain::ModelId> = net
        .models
        .iter()
        .filter(|m| m.mode == chain::VerificationMode::Reexec)
        .filter_map(|m| m.id.parse().ok())
        .collect();
    apply(
        net,
        &v0,
        &node_key,
        Action::RegisterInferenceNode {
            peer_id: node.peer_id.clone(),
            models,
            tee_chip: None,
        },
    )?;
    // Jobs sent through it run on it (a gateway runs a model it serves itself).
    let model = net
        .models
        .iter()
        .find(|m| m.mode == chain::VerificationMode::Reexec)
        .context("no reexec model")?
        .clone();
    let served = wait_for(
        "a job executed by the new node",
        Duration::from_secs(60),
        || {
            let (_, status) = crate::scenario::submit_model_and_wait(
                net,
                j,
                &model,
                chain::types::now_ms() * 1000,
                Duration::from_secs(30),
            )?;
            Ok(status["status"] == "finalized"
                && address_of(&status["executed_by"]) == Some(node.address))
        },
    )?;
    let compared = assert_agreement(net)?;
    Ok(json!({
        "scenario": "join",
        "newcomer": newcomer.address,
        "entered_set_after_s": entered.as_secs_f64(),
        "first_precommit_height": first,
        "bond_to_first_precommit_s": bond_to_precommit.as_secs_f64(),
        "left": leaving.address,
        "inference_node": node.address,
        "inference_serving_after_s": served.as_secs_f64(),
        "heights_compared": compared,
        "from_height": start_height,
    }))
}

/// `scenario equivocate`: an active validator (the last one listed, never the first) restarts
/// configured to double-sign; the others' evidence reaches the chain, which slashes it and
/// jails it; it leaves the set at the next epoch and the chain goes on.
pub fn equivocate(net: &mut Testnet) -> Result<Value> {
    let v0 = net.nodes[0].http.clone();
    let powers = active_powers(&v0)?;
    if powers.len() < 4 {
        bail!("the scenario needs 4 active validators (3 stay live without the offender)");
    }
    // The least powerful (the others keep more than 2/3 while it restarts), never the first
    // node, which the scenario asks.
    let i = (1..net.nodes.len())
        .rev()
        .filter(|i| net.nodes[*i].role == "validator")
        .filter_map(|i| powers.get(&net.nodes[i].address).map(|p| (i, *p)))
        .min_by_key(|(_, p)| *p)
        .map(|(i, _)| i)
        .context("no active validator besides the first")?;
    let offender = net.nodes[i].address;
    let bonded_of = |a: Address| -> Result<u128> {
        get(&v0, &format!("/v1/accounts/{a}"))?["bonded"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("no bonded")
    };
    let before = bonded_of(offender)?;
    let community_before = community(&v0)?;
    net.set_byzantine(i, Some("double-vote"))?;
    let jailed = wait_for("the double-signer jailed", Duration::from_secs(90), || {
        let v = get(&v0, "/v1/validators")?;
        Ok(v["validators"].as_array().is_some_and(|l| {
            l.iter().any(|x| {
                address_of(&x["address"]) == Some(offender) && !x["jailed_until"].is_null()
            })
        }))
    })?;
    let after = bonded_of(offender)?;
    let params = get(&v0, "/v1/params")?;
    let bps: u128 = params["params"]["slash_double_sign_bps"]
        .as_u64()
        .context("no slash_double_sign_bps")? as u128;
    if after != before - before * bps / 10_000 {
        bail!("bonded {before} → {after}, expected a {bps} bps slash");
    }
    if community(&v0)? < community_before + before * bps / 10_000 {
        bail!("the slashed stake did not reach the community pool");
    }
    wait_for("the double-signer out of the set", EPOCH_BOUND, || {
        Ok(!active_set(&v0)?.contains(&offender))
    })?;
    let h = Client::new().height(&v0).unwrap_or(0);
    wait_for("blocks after the slash", Duration::from_secs(30), || {
        Ok(Client::new().height(&v0).unwrap_or(0) >= h + 5)
    })?;
    net.set_byzantine(i, None)?;
    let compared = assert_agreement(net)?;
    Ok(json!({
        "scenario": "equivocate",
        "offender": offender,
        "bonded_before": before.to_string(),
        "bonded_after": after.to_string(),
        "jailed_after_s": jailed.as_secs_f64(),
        "heights_compared": compared,
    }))
}

fn community(node: &str) -> Result<u128> {
    get(node, "/v1/supply")?["pools"]["community"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no community pool")
}

/// Submits a proposal from the ecosystem account; returns its id.
fn propose(net: &Testnet, node: &str, kind: ProposalKind) -> Result<u64> {
    let eco = dir_key(&net.dir, "ecosystem")?;
    let deposit: u128 = get(node, "/v1/params")?["params"]["min_deposit"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no min_deposit")?;
    let before = get(node, "/v1/proposals")?["proposals"]
        .as_array()
        .map_or(0, |l| l.len());
    apply(net, node, &eco, Action::Propose { kind, deposit })?;
    let list = get(node, "/v1/proposals")?;
    let proposals = list["proposals"].as_array().context("no proposals")?;
    if proposals.len() != before + 1 {
        bail!("expected one more proposal, got {list}");
    }
    proposals[0]["id"].as_u64().context("no id")
}

fn vote(
    net: &Testnet,
    node: &str,
    voters: &[&NodeInfo],
    proposal: u64,
    option: VoteOption,
) -> Result<()> {
    for v in voters {
        apply(net, node, &node_key(v)?, Action::Vote { proposal, option })?;
    }
    Ok(())
}

fn closed(node: &str, id: u64) -> Result<Value> {
    let mut last = Value::Null;
    wait_for("the proposal closed", Duration::from_secs(60), || {
        last = get(node, &format!("/v1/proposals/{id}"))?;
        Ok(last["status"] != "voting")
    })?;
    Ok(last)
}

/// `scenario governance`: a fee-split change passes by stake and applies to the jobs after it;
/// a proposal below quorum fails; a vetoed one loses its deposit to the community pool.
pub fn governance(net: &mut Testnet) -> Result<Value> {
    let v0 = net.nodes[0].http.clone();
    let validators: Vec<NodeInfo> = net.validators().cloned().collect();
    if validators.len() < 4 {
        bail!("the scenario needs 4 validators");
    }
    let refs: Vec<&NodeInfo> = validators.iter().collect();
    // 1. The fee split: 3 of 4 equal stakes yes.
    let split = ProposalKind::Params(
        [
            ("executor_bps".to_string(), "6000".to_string()),
            ("model_owner_bps".to_string(), "2000".to_string()),
        ]
        .into(),
    );
    let id = propose(net, &v0, split)?;
    vote(net, &v0, &refs[..3], id, VoteOption::Yes)?;
    vote(net, &v0, &refs[3..], id, VoteOption::No)?;
    let passed = closed(&v0, id)?;
    if passed["status"] != "passed" {
        bail!("the fee split did not pass: {passed}");
    }
    let applied_at = passed["voting_end"].as_u64().unwrap_or(0);
    let params = get(&v0, "/v1/params")?;
    if params["params"]["executor_bps"] != 6000 {
        bail!("executor_bps not changed: {params}");
    }
    // A job after it pays the executor 60 % (plus the nodes' part of its block's reward: the
    // testnet is otherwise idle, so it is the block's only job).
    let model = net
        .models
        .iter()
        .find(|m| m.mode == chain::VerificationMode::Reexec)
        .context("no reexec model")?
        .clone();
    let executors: Vec<Address> = net.inference().map(|n| n.address).collect();
    let before: Vec<u128> = executors
        .iter()
        .map(|a| balance(&v0, *a))
        .collect::<Result<_>>()?;
    let (job, status) = crate::scenario::submit_model_and_wait(
        net,
        0,
        &model,
        chain::types::now_ms() * 1000,
        Duration::from_secs(30),
    )?;
    let height = status["height"].as_u64().unwrap_or(0);
    if height <= applied_at {
        bail!("job {job} settled at {height}, not after the applying block {applied_at}");
    }
    let executor: Address = status["executed_by"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .context("no executor")?;
    let fee: u128 = status["fee"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let k = executors
        .iter()
        .position(|a| *a == executor)
        .context("executed by an unknown node")?;
    let paid = balance(&v0, executor)? - before[k];
    let reward = block_reward_to_nodes(&v0)?;
    if paid != fee * 6 / 10 + reward {
        bail!(
            "the executor got {paid} for job {job}, expected 60 % of {fee} plus the reward {reward}"
        );
    }

    // 2. One quarter votes: no quorum; the deposit comes back.
    let text = |t: &str| ProposalKind::Text {
        title: t.into(),
        body: String::new(),
    };
    let id = propose(net, &v0, text("below quorum"))?;
    vote(net, &v0, &refs[..1], id, VoteOption::Yes)?;
    let p = closed(&v0, id)?;
    if p["status"] != "no_quorum" {
        bail!("expected no_quorum: {p}");
    }
    // 3. Two of four veto: the deposit goes to the community pool.
    let pool = community(&v0)?;
    let id = propose(net, &v0, text("vetoed"))?;
    vote(net, &v0, &refs[..2], id, VoteOption::Veto)?;
    vote(net, &v0, &refs[2..], id, VoteOption::Yes)?;
    let p = closed(&v0, id)?;
    if p["status"] != "vetoed" {
        bail!("expected vetoed: {p}");
    }
    let deposit: u128 = p["deposit"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if community(&v0)? < pool + deposit {
        bail!("the vetoed deposit did not reach the community pool");
    }
    let compared = assert_agreement(net)?;
    Ok(json!({
        "scenario": "governance",
        "fee_split_applied_at": applied_at,
        "job_after": job,
        "heights_compared": compared,
    }))
}

fn balance(node: &str, address: Address) -> Result<u128> {
    get(node, &format!("/v1/accounts/{address}"))?["balance"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no balance")
}

/// The inference nodes' part of one block reward.
fn block_reward_to_nodes(node: &str) -> Result<u128> {
    let p = get(node, "/v1/params")?["params"].clone();
    let reward: u128 = p["reward_per_block"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no reward_per_block")?;
    let bps = p["reward_validators_bps"].as_u64().context("no bps")? as u128;
    Ok(reward - reward * bps / 10_000)
}

/// `scenario vesting`: the vesting demo account cannot move locked tokens before its cliff and
/// can move exactly what vested after.
pub fn vesting(net: &mut Testnet) -> Result<Value> {
    let v0 = net.nodes[0].http.clone();
    let key = dir_key(&net.dir, "vesting-demo")?;
    let to = PrivateKeySigner::random().address();
    let account = get(&v0, &format!("/v1/accounts/{}", key.address()))?;
    let vesting = account["vesting"].clone();
    let start = vesting["start_ms"].as_u64().context("no vesting")?;
    let cliff = vesting["cliff_ms"].as_u64().context("no cliff")?;
    let now = chain::types::now_ms();
    let refused = if now < start + cliff {
        match send(net, &v0, &key, Action::Transfer { to, amount: 1 }) {
            Ok(hash) => bail!("a transfer before the cliff was accepted: {hash}"),
            Err(e) if e.to_string().contains("vested") => e.to_string(),
            Err(e) => bail!("refused, but without the vested amount: {e:#}"),
        }
    } else {
        bail!("the cliff passed before the scenario ran; run it on a fresh testnet");
    };
    // After the cliff: what vested moves, exactly; one base unit more does not.
    let wait = (start + cliff).saturating_sub(chain::types::now_ms()) + 1_000;
    std::thread::sleep(Duration::from_millis(wait));
    let a = get(&v0, &format!("/v1/accounts/{}", key.address()))?;
    let spendable: u128 = a["spendable"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no spendable")?;
    let fee: u128 = get(&v0, "/v1/status")?["tx_fee"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if spendable <= fee {
        bail!("nothing vested after the cliff: {a}");
    }
    let moved = spendable - fee;
    apply(net, &v0, &key, Action::Transfer { to, amount: moved })?;
    let got = get(&v0, &format!("/v1/accounts/{to}"))?["balance"].clone();
    if got != moved.to_string() {
        bail!("the recipient has {got}, expected {moved}");
    }
    let a = get(&v0, &format!("/v1/accounts/{}", key.address()))?;
    let locked: u128 = a["locked"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if locked == 0 {
        bail!("everything vested before the scenario could try to move locked tokens: {a}");
    }
    // The whole balance, its locked part included.
    let too_much: u128 = a["balance"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let over = match send(
        net,
        &v0,
        &key,
        Action::Transfer {
            to,
            amount: too_much,
        },
    ) {
        Ok(hash) => bail!("a transfer of locked tokens was accepted: {hash}"),
        Err(e) => e.to_string(),
    };
    if !over.contains("vested") {
        bail!("refused without the vested amount: {over}");
    }
    Ok(json!({
        "scenario": "vesting",
        "before_cliff": refused,
        "moved_after_cliff": moved.to_string(),
        "over_vested": over,
    }))
}

/// Fails unless `e` names the HTTP status `status`.
pub fn expect_status(e: &anyhow::Error, status: u16) -> Result<()> {
    let text = e.to_string();
    if text.starts_with(&format!("HTTP {status} ")) {
        Ok(())
    } else {
        Err(anyhow!("expected HTTP {status}, got: {text}"))
    }
}

/// `scenario downtime`: an active validator (the least powerful besides the first, whose loss
/// keeps more than 2/3 of the power live) is stopped; once it is missing from the commit
/// certificates of more than the allowed share of `downtime_window` blocks the chain jails it,
/// without a slash. Restarted, it sends `unjail` after `jail_blocks` and is back in the set at
/// the next epoch.
pub fn downtime(net: &mut Testnet) -> Result<Value> {
    let v0 = net.nodes[0].http.clone();
    let powers = active_powers(&v0)?;
    let total: u64 = powers.values().sum();
    let i = (1..net.nodes.len())
        .filter(|i| net.nodes[*i].role == "validator")
        .filter_map(|i| powers.get(&net.nodes[i].address).map(|p| (i, *p)))
        .filter(|(_, p)| (total - p) * 3 > total * 2)
        .min_by_key(|(_, p)| *p)
        .map(|(i, _)| i)
        .context("no validator whose absence keeps more than 2/3 of the power")?;
    let who = net.nodes[i].clone();
    let bonded_of = |a: Address| -> Result<u128> {
        get(&v0, &format!("/v1/accounts/{a}"))?["bonded"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("no bonded")
    };
    let before = bonded_of(who.address)?;
    let params = get(&v0, "/v1/params")?["params"].clone();
    let window = params["downtime_window"].as_u64().unwrap_or(100);
    net.kill(i);
    let stopped = Instant::now();
    let jailed = |net: &Testnet| -> Result<Option<u64>> {
        let v = get(&net.nodes[0].http, "/v1/validators")?;
        Ok(v["validators"].as_array().and_then(|l| {
            l.iter()
                .find(|x| address_of(&x["address"]) == Some(who.address))
                .and_then(|x| x["jailed_until"].as_u64())
        }))
    };
    // A block every ~0.3 s: the window fills in window × 0.3 s, plus margin.
    let bound = Duration::from_millis(window * 1_000 + 30_000);
    let mut until = None;
    wait_for("the absent validator jailed", bound, || {
        until = jailed(net)?;
        Ok(until.is_some())
    })?;
    let jailed_after = stopped.elapsed();
    if bonded_of(who.address)? != before {
        bail!("downtime slashed {}: it must only jail", who.address);
    }
    // Back: restarted, it waits out the jail, unjails and returns at the next epoch.
    net.restart(i)?;
    let until = until.unwrap_or(0);
    wait_for("the jail period over", Duration::from_secs(60), || {
        Ok(Client::new().height(&v0).unwrap_or(0) >= until)
    })?;
    apply(net, &v0, &node_key(&who)?, Action::Unjail)?;
    wait_for("the validator back in the set", EPOCH_BOUND, || {
        Ok(active_set(&v0)?.contains(&who.address))
    })?;
    let compared = assert_agreement(net)?;
    Ok(json!({
        "scenario": "downtime",
        "validator": who.address,
        "downtime_window": window,
        "jailed_after_s": jailed_after.as_secs_f64(),
        "heights_compared": compared,
    }))
}
