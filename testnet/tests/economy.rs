//! The open network through real processes: vesting, governance by stake, a validator and an
//! inference node joining by stake, a validator leaving, a double-signer slashed and jailed,
//! and a stopped validator jailed for downtime and back after unjailing, one after the other
//! on one 4+2 testnet (each scenario asserts its own outcome; all
//! end with every node agreeing on every block and an exact supply). Then every transaction
//! kind's refusals through `POST /v1/txs`.

mod common;

use chain::{Action, Address, ProposalKind, VoteOption};
use common::Running;
use testnet::client::Client;
use testnet::economy::{self, apply, dir_key, node_key, send};

#[test]
fn operators_join_vote_vest_and_are_slashed() {
    let mut run = Running::up_with(4, 2, |o| o.minilm_dir = None);
    // Vesting first: its cliff is 45 s after genesis.
    let report = economy::vesting(run.net_mut()).unwrap_or_else(|e| panic!("vesting: {e:#}"));
    eprintln!("{report}");
    let report = economy::governance(run.net_mut()).unwrap_or_else(|e| panic!("governance: {e:#}"));
    eprintln!("{report}");
    let report = economy::join(run.net_mut()).unwrap_or_else(|e| panic!("join: {e:#}"));
    eprintln!("{report}");
    let report = economy::equivocate(run.net_mut()).unwrap_or_else(|e| panic!("equivocate: {e:#}"));
    eprintln!("{report}");
    assert_eq!(report["scenario"], "equivocate");
    let report = economy::downtime(run.net_mut()).unwrap_or_else(|e| panic!("downtime: {e:#}"));
    eprintln!("{report}");
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
    // A nonce gap.
    let gap = chain::UnsignedTx {
        nonce: 5,
        ..tx.unsigned()
    }
    .sign(&eco, &net.domain)
    .unwrap();
    let r = client
        .post(
            &format!("{v0}/v1/txs"),
            &serde_json::to_value(&gap).unwrap(),
        )
        .unwrap();
    assert_eq!((r.status, r.code()), (400, "nonce_gap"), "{}", r.body);
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
    // Its balance: the 10 OPG received, less the 5 bonded and the fee, plus the rewards
    // and fees it earned meanwhile as a validator.
    let balance_now: u128 = now["balance"].as_str().unwrap().parse().unwrap();
    assert!(balance_now + fee + 5 * common::OPG >= balance + 10 * common::OPG);
    assert_eq!(now["nonce"], before["nonce"].as_u64().unwrap() + 1);
    economy::assert_agreement(net).unwrap();
}
