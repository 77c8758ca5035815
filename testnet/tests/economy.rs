//! The open network through real processes: vesting, governance by stake, a validator and an
//! inference node joining by stake, a validator leaving, a double-signer slashed and jailed,
//! and a stopped validator jailed for downtime and back after unjailing, one after the other
//! on one 4+2 testnet (each scenario asserts its own outcome; all
//! end with every node agreeing on every block and an exact supply). Then every transaction
//! kind's refusals through `POST /v1/txs`.

mod common;

use std::time::Duration;

use chain::{Action, Address, ProposalKind, VoteOption};
use common::Running;
use testnet::client::Client;
use testnet::economy::{self, apply, dir_key, node_key, send, wait_tx};

#[test]
fn operators_join_vote_vest_and_are_slashed() {
    let mut run = Running::up_with(4, 2, |o| o.minilm_dir = None);
    // Vesting first: its cliff is 45 s after genesis.
    let report = economy::vesting(run.net_mut()).unwrap_or_else(|e| panic!("vesting: {e:#}"));
    eprintln!("{report}");
    // A node that is away for many epochs while the set changes: a gateway that syncs now,
    // stops, and comes back after the scenarios below.
    let away = run.net_mut().add_node("gateway").unwrap();
    run.net().kill(away);
    let v0 = run.net().nodes[0].http.clone();
    let client = Client::new();
    let left_at = client.height(&v0).unwrap();
    let set_then = economy::active_powers(&v0).unwrap();
    let report = economy::governance(run.net_mut()).unwrap_or_else(|e| panic!("governance: {e:#}"));
    eprintln!("{report}");
    let report = economy::join(run.net_mut()).unwrap_or_else(|e| panic!("join: {e:#}"));
    eprintln!("{report}");
    let report = economy::equivocate(run.net_mut()).unwrap_or_else(|e| panic!("equivocate: {e:#}"));
    eprintln!("{report}");
    assert_eq!(report["scenario"], "equivocate");
    let offender: Address = report["offender"].as_str().unwrap().parse().unwrap();
    let report = economy::downtime(run.net_mut()).unwrap_or_else(|e| panic!("downtime: {e:#}"));
    eprintln!("{report}");

    // The gateway comes back: it fetches every block it missed, each certificate checked
    // against the set of its own height (several sets since it left), and agrees.
    let set_now = economy::active_powers(&v0).unwrap();
    assert_ne!(set_now, set_then, "the scenarios changed the set");
    let target = client.height(&v0).unwrap();
    let epochs = (target - left_at) / testnet::net::testnet_params().epoch_blocks;
    assert!(epochs >= 5, "away for {epochs} epochs only");
    run.net_mut().restart(away).unwrap();
    let g = run.net().nodes[away].http.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while client.height(&g).unwrap_or(0) < target {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not catch up from {left_at} to {target}: {}",
            run.net().log_tails(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(economy::active_powers(&g).unwrap(), set_now);
    let compared = economy::assert_agreement(run.net()).unwrap();
    assert!(compared >= target);
    eprintln!("gateway back after {epochs} epochs: synced {left_at}..{target}");

    // The explorer page, its script run against the node, shows the validators with their
    // stakes, the slashed one, the inference nodes, the proposals and the evidence.
    let scratch = tempfile::tempdir().unwrap();
    let page = testnet::explorer::render(&v0, scratch.path()).unwrap();
    let api = |path: &str| client.get(&format!("{v0}{path}")).unwrap().ok().unwrap();
    let short = |a: Address| format!("{}…", &a.to_string().to_lowercase()[..12]);
    assert!(
        page["supply"].starts_with("supply exact"),
        "{}",
        page["supply"]
    );
    let validators = testnet::explorer::rows(&page["validators"]);
    assert_eq!(
        validators.len(),
        api("/v1/validators")["validators"]
            .as_array()
            .unwrap()
            .len()
    );
    let row = validators
        .iter()
        .find(|r| r[1] == short(offender))
        .unwrap_or_else(|| panic!("no row for {offender}: {validators:?}"));
    // bonded, power, active, jailed until, slashes
    assert_eq!(row[4], "", "jailed out of the set: {row:?}");
    assert!(!row[5].is_empty(), "jailed: {row:?}");
    assert_eq!(row[6], "1", "slashed once: {row:?}");
    assert_eq!(
        validators.iter().filter(|r| r[4] == "yes").count(),
        economy::active_set(&v0).unwrap().len()
    );
    let inference = testnet::explorer::rows(&page["inference"]);
    assert_eq!(
        inference.len(),
        api("/v1/inference-nodes")["inference_nodes"]
            .as_array()
            .unwrap()
            .len()
    );
    assert!(inference.iter().all(|r| r[3] == "yes"), "{inference:?}");
    let proposals = testnet::explorer::rows(&page["proposals"]);
    let listed = api("/v1/proposals")["proposals"].as_array().unwrap().len();
    assert!(listed >= 3, "the governance scenario's proposals");
    assert_eq!(proposals.len(), listed.min(10));
    let evidence = testnet::explorer::rows(&page["evidence"]);
    assert!(
        evidence.iter().any(|r| r[0] == short(offender)),
        "{evidence:?}"
    );
}

/// Every kind of bad transaction a client can send is refused with its reason before it
/// costs anything, and the sender's balance and nonce do not move.
#[test]
fn bad_transactions_are_refused_and_cost_nothing() {
    let run = Running::up_with(4, 1, |o| o.minilm_dir = None);
    let net = run.net();
    let v0 = net.nodes[0].http.clone();
    let client = Client::new();
    let eco = dir_key(&net.dir, "ecosystem").unwrap();
    let validator = node_key(&net.nodes[1]).unwrap();
    let account = |a: Address| {
        client
            .get(&format!("{v0}/v1/accounts/{a}"))
            .unwrap()
            .ok()
            .unwrap()
    };
    let before = account(validator.address());
    let bonded: u128 = before["bonded"].as_str().unwrap().parse().unwrap();
    let refused = |key: &chain::PrivateKeySigner, action: Action, want: &str| {
        let name = action.name();
        let e = send(net, &v0, key, action).expect_err(name);
        let text = format!("{e:#}");
        assert!(text.contains(want), "{name}: {text} lacks {want}");
        assert!(text.starts_with("HTTP 4"), "{name}: {text}");
    };
    refused(
        &validator,
        Action::Unbond { amount: bonded + 1 },
        "cannot unbond",
    );
    refused(&validator, Action::Withdraw, "nothing is unbonding");
    refused(
        &validator,
        Action::RegisterValidator {
            peer_id: net.nodes[2].peer_id.clone(),
            moniker: "twin".into(),
        },
        "already registered",
    );
    refused(&validator, Action::Unjail, "is not jailed");
    refused(
        &validator,
        Action::Vote {
            proposal: 99,
            option: VoteOption::Yes,
        },
        "no proposal 99",
    );
    refused(
        &eco,
        Action::Propose {
            kind: ProposalKind::Params([("executor_bps".to_string(), "1".to_string())].into()),
            deposit: 1_000 * common::OPG,
        },
        "must add up to 10000",
    );
    let model = net.models[0].id.parse().unwrap();
    refused(
        &eco,
        Action::RegisterInferenceNode {
            peer_id: "12D3KooWnew".into(),
            models: vec![model],
            tee_chip: None,
        },
        "an inference node needs",
    );
    // Evidence that does not conflict: refused before it is included (the accuser would pay
    // the fee for nothing).
    let key = node_key(&net.nodes[2]).unwrap();
    let vote = chain::SignedVote::sign(
        chain::Vote {
            height: 1,
            round: 0,
            kind: chain::VoteKind::Precommit,
            block: None,
            validator: key.address(),
        },
        &key,
        &net.domain,
    )
    .unwrap();
    refused(
        &eco,
        Action::ReportEvidence(chain::Evidence::DoubleVote {
            first: vote.clone(),
            second: vote,
        }),
        "do not conflict",
    );
    // A stranger cannot pay the fee; a wrong chain's signature does not verify.
    let stranger = chain::PrivateKeySigner::random();
    refused(&stranger, Action::Withdraw, "can pay 0");
    let other = chain::signing::Domain {
        chain_id: net.domain.chain_id + 1,
        ..net.domain
    };
    let tx = chain::UnsignedTx {
        from: eco.address(),
        nonce: 0,
        max_fee: common::tx_fee(),
        action: Action::Withdraw,
    }
    .sign(&eco, &other)
    .unwrap();
    let r = client
        .post(&format!("{v0}/v1/txs"), &serde_json::to_value(&tx).unwrap())
        .unwrap();
    assert_eq!((r.status, r.code()), (400, "bad_signature"), "{}", r.body);
    // A nonce ahead of the next one waits for the missing one (202 queued) and follows it
    // into a block; one too far ahead is refused.
    let eco_nonce = account(eco.address())["next_nonce"].as_u64().unwrap();
    let sign_at = |nonce: u64, action: Action| {
        chain::UnsignedTx {
            from: eco.address(),
            nonce,
            max_fee: common::tx_fee(),
            action,
        }
        .sign(&eco, &net.domain)
        .unwrap()
    };
    let post = |tx: &chain::Tx| {
        client
            .post(&format!("{v0}/v1/txs"), &serde_json::to_value(tx).unwrap())
            .unwrap()
    };
    let far = post(&sign_at(eco_nonce + 100, Action::Withdraw));
    assert_eq!((far.status, far.code()), (400, "nonce_gap"), "{}", far.body);
    let later = sign_at(
        eco_nonce + 1,
        Action::Transfer {
            to: validator.address(),
            amount: common::OPG,
        },
    );
    let r = post(&later);
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (202, Some("queued")),
        "{}",
        r.body
    );
    assert_eq!(r.body["waiting_for_nonce"], eco_nonce, "{}", r.body);
    let queued_hash = r.body["hash"].as_str().unwrap().to_string();
    let r = client.get(&format!("{v0}/v1/txs/{queued_hash}")).unwrap();
    assert_eq!(r.body["status"], "queued", "{}", r.body);
    // Another transaction at the queued nonce does not replace it.
    let r = post(&sign_at(eco_nonce + 1, Action::Withdraw));
    assert_eq!((r.status, r.code()), (409, "nonce_used"), "{}", r.body);
    // Nothing was included: the nonce did not move (the balance grows with block rewards).
    let after = account(validator.address());
    assert_eq!(after["nonce"], before["nonce"]);

    // And one that applies, for contrast: a bond, its fee charged once.
    let fee = common::tx_fee();
    let balance: u128 = before["balance"].as_str().unwrap().parse().unwrap();
    apply(
        net,
        &v0,
        &eco,
        Action::Transfer {
            to: validator.address(),
            amount: 10 * common::OPG,
        },
    )
    .unwrap();
    // The missing nonce arrived: the queued transfer follows it.
    let queued = wait_tx(&v0, &queued_hash, Duration::from_secs(60)).unwrap();
    assert_eq!(queued["ok"], true, "{queued}");
    let outcome = apply(
        net,
        &v0,
        &validator,
        Action::Bond {
            amount: 5 * common::OPG,
        },
    )
    .unwrap();
    assert_eq!(outcome["fee"], fee.to_string());
    let now = account(validator.address());
    let bonded_now: u128 = now["bonded"].as_str().unwrap().parse().unwrap();
    assert_eq!(bonded_now, bonded + 5 * common::OPG);
    // Its balance: the 10 + 1 OPG received, less the 5 bonded and the fee, plus the rewards
    // and fees it earned meanwhile as a validator.
    let balance_now: u128 = now["balance"].as_str().unwrap().parse().unwrap();
    assert!(balance_now + fee + 5 * common::OPG >= balance + 11 * common::OPG);
    assert_eq!(now["nonce"], before["nonce"].as_u64().unwrap() + 1);
    economy::assert_agreement(net).unwrap();
}
