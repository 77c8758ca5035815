//! The ledger's tests: fees, jobs, transactions of every kind, epochs, governance, slashing,
//! vesting and the supply invariant.

use super::*;
use crate::block::{SignedVote, Vote, VoteKind};
use crate::evidence::Evidence;
use crate::genesis::tests::sample;
use crate::genesis::{GenesisAccount, Params};
use crate::record::{JobRequest, Proof};
use crate::signing::{PrivateKeySigner, seeded_key};
use crate::tx::{UnsignedTx, VoteOption};

const OPG: u128 = 10u128.pow(18);

/// The sample genesis without block rewards (job fees alone move tokens) and with short
/// periods, so that epochs, votes and unbonding end within a few blocks.
fn quiet() -> Genesis {
    let mut g = sample();
    g.params = Params {
        reward_per_block: 0,
        tx_fee: 0,
        ..short()
    };
    g
}

fn short() -> Params {
    Params {
        epoch_blocks: 2,
        voting_blocks: 3,
        unbonding_blocks: 5,
        evidence_max_age_blocks: 4,
        jail_blocks: 3,
        ..Params::default()
    }
}

/// The sample genesis with short periods, fees and rewards on.
fn busy() -> Genesis {
    let mut g = sample();
    g.params = short();
    g
}

fn key(i: u64) -> PrivateKeySigner {
    seeded_key(42, i)
}

fn job_with(
    g: &Genesis,
    nonce: u64,
    max_fee: u128,
    client_idx: u64,
    input: String,
) -> InferenceRecord {
    let units = input.len() as u64;
    job_units(g, (nonce, max_fee, client_idx), input, units)
}

/// A job record of client `client_idx` that the executor prices at `units`.
fn job_units(
    g: &Genesis,
    (nonce, max_fee, client_idx): (u64, u128, u64),
    input: String,
    units: u64,
) -> InferenceRecord {
    let client = key(client_idx);
    let exec = key(20);
    let req = JobRequest {
        client: client.address(),
        model_id: g.models[0].id,
        input_hash: keccak256(input.as_bytes()),
        max_fee,
        nonce,
        expiry: 4_000_000_000,
    };
    InferenceRecord::create(
        req.sign(&client, &g.domain()).unwrap(),
        input,
        (B256::repeat_byte(3), units),
        Proof::Reexec,
        &exec,
        &g.domain(),
    )
    .unwrap()
}

fn job(g: &Genesis, nonce: u64, max_fee: u128, client_idx: u64) -> InferenceRecord {
    job_with(g, nonce, max_fee, client_idx, format!("{{\"n\":{nonce}}}"))
}

/// Records through admission, as the mempool hands them to the block builder.
fn verified(g: &Genesis, records: Vec<InferenceRecord>) -> Vec<VerifiedRecord> {
    let admission = crate::Admission::new(std::sync::Arc::new(g.clone()), None);
    records
        .into_iter()
        .map(|r| admission.check(std::sync::Arc::new(r)).unwrap())
        .collect()
}

/// Builds, validates and commits the next block (one second after the tip).
fn next(l: &mut Ledger, g: &Genesis, records: Vec<InferenceRecord>, txs: Vec<Tx>) -> Changes {
    let at = l.tip_time_ms + 1000;
    next_at(l, g, at, records, txs)
}

fn next_at(
    l: &mut Ledger,
    g: &Genesis,
    at: u64,
    records: Vec<InferenceRecord>,
    txs: Vec<Tx>,
) -> Changes {
    next_without(l, g, at, records, txs, &[])
}

/// [`next_at`], certified without the precommits of `absent`.
fn next_without(
    l: &mut Ledger,
    g: &Genesis,
    at: u64,
    records: Vec<InferenceRecord>,
    txs: Vec<Tx>,
    absent: &[Address],
) -> Changes {
    let proposer = l.next_validators()[0].0;
    let records = records
        .into_iter()
        .map(|r| {
            let id = r.job_id(&g.domain());
            crate::record::VerifiedRecord::for_tests(id, r)
        })
        .collect();
    let n = txs.len();
    let built = l.build_block(g, proposer, at, records, txs).unwrap();
    assert_eq!(built.block.txs.len(), n, "dropped: {:?}", built.dropped_txs);
    let validated = l.validate(g, &built.block).unwrap();
    assert_eq!(validated, built.changes);
    l.commit(&built.changes);
    certify(l, g, &built.block, absent);
    assert_eq!(l.total_supply(), TOTAL_SUPPLY);
    // The header names the set deciding the next height, across epoch changes too.
    assert_eq!(
        built.block.header.next_validators_hash,
        crate::block::validator_set_hash(l.next_validators())
    );
    assert_eq!(l.state_root(), built.changes.state_root);
    built.changes
}

thread_local! {
    /// The keys of every account the tests use, by address.
    static KEYS: std::collections::HashMap<Address, PrivateKeySigner> =
        (0..100).map(key).map(|k| (k.address(), k)).collect();
}

/// Gives the ledger a commit certificate of its tip `block`: precommits of every validator of
/// the set that decided it but `absent`.
fn certify(l: &mut Ledger, g: &Genesis, block: &Block, absent: &[Address]) {
    let h = block.header.height;
    let set = l.registry().set_at(h).unwrap().to_vec();
    let votes = KEYS.with(|keys| {
        set.iter()
            .filter(|(a, _)| !absent.contains(a))
            .map(|(a, _)| {
                SignedVote::sign(
                    Vote {
                        height: h,
                        round: 0,
                        kind: VoteKind::Precommit,
                        block: Some(block.hash()),
                        validator: *a,
                    },
                    &keys[a],
                    &g.domain(),
                )
                .unwrap()
            })
            .collect()
    });
    l.set_last_commit(crate::block::CommitCertificate {
        height: h,
        round: 0,
        block_hash: block.hash(),
        votes,
    });
}

/// The next block built with `record` as its only candidate (not committed).
fn build_with(l: &Ledger, g: &Genesis, record: InferenceRecord) -> Built {
    let id = record.job_id(&g.domain());
    l.build_block(
        g,
        l.next_validators()[0].0,
        l.tip_time_ms + 1,
        vec![crate::record::VerifiedRecord::for_tests(id, record)],
        vec![],
    )
    .unwrap()
}

/// A signed transaction of `key(i)` at its next nonce in `l`.
fn tx(l: &Ledger, g: &Genesis, i: u64, action: Action) -> Tx {
    let k = key(i);
    UnsignedTx {
        from: k.address(),
        nonce: l.account(&k.address()).nonce,
        max_fee: u128::MAX,
        action,
    }
    .sign(&k, &g.domain())
    .unwrap()
}

/// Runs one transaction in its own block; its outcome.
fn run(l: &mut Ledger, g: &Genesis, i: u64, action: Action) -> TxOutcome {
    let t = tx(l, g, i, action);
    next(l, g, vec![], vec![t]).txs.remove(0)
}

fn ok(o: TxOutcome) {
    assert!(o.ok, "{:?}", o.reason);
}

fn fails(o: TxOutcome, want: &str) {
    assert!(!o.ok, "succeeded, expected {want}");
    let reason = o.reason.unwrap_or_default();
    assert!(reason.contains(want), "{reason} lacks {want}");
}

/// Advances to just after the next epoch boundary.
fn to_next_epoch(l: &mut Ledger, g: &Genesis) {
    let e = l.params().epoch_blocks;
    while !l.height.is_multiple_of(e) || l.height == 0 {
        next(l, g, vec![], vec![]);
    }
}

fn in_set(l: &Ledger, a: &Address) -> bool {
    l.next_validators().iter().any(|(v, _)| v == a)
}

#[test]
fn job_fee_is_split_and_supply_conserved() {
    let g = quiet();
    let mut l = Ledger::from_genesis(&g);
    let client = key(10).address();
    let exec = key(20).address();
    let before = l.account(&client).balance;
    let price = g.models[0].price_per_job;
    let c = next(&mut l, &g, vec![job(&g, 1, price, 10)], vec![]);
    assert_eq!(c.jobs[0].status, JobStatus::Finalized);
    assert_eq!(l.account(&client).balance, before - price);
    assert_eq!(l.account(&exec).balance, price * 7 / 10);
    assert_eq!(
        l.account(&key(30).address()).balance,
        g.accounts[6].balance + price / 10
    );
    let vals: u128 = g
        .validators
        .iter()
        .map(|v| l.account(&v.address).balance)
        .sum();
    assert_eq!(vals, price * 2 / 10);
}

/// A model's price has a per-job and a per-unit part: a 64 KiB input costs more, and a
/// generation costs its tokens.
#[test]
fn job_price_grows_with_the_input() {
    let mut g = quiet();
    g.models[0].price_per_unit = 10u128.pow(12);
    let mut l = Ledger::from_genesis(&g);
    let client = key(10).address();
    let per_job = g.models[0].price_per_job;
    let short = job_with(&g, 1, u128::MAX, 10, "hi".into());
    let long = job_with(&g, 2, u128::MAX, 10, "x".repeat(64 * 1024));
    let before = l.account(&client).balance;
    let c = next(&mut l, &g, vec![short, long], vec![]);
    assert_eq!(c.jobs[0].fee, per_job + 2 * 10u128.pow(12));
    assert_eq!(c.jobs[1].fee, per_job + 64 * 1024 * 10u128.pow(12));
    assert_eq!(
        l.account(&client).balance,
        before - c.jobs[0].fee - c.jobs[1].fee
    );
    // A fee cap that covers the per-job part only: the long job fails, naming the parts.
    let capped = job_with(&g, 3, per_job, 10, "x".repeat(1000));
    let c = next(&mut l, &g, vec![capped], vec![]);
    assert_eq!(c.jobs[0].status, JobStatus::Failed);
    let reason = c.jobs[0].reason.clone().unwrap();
    assert!(
        reason.contains("per unit") && reason.contains("1000 units"),
        "{reason}"
    );
    // A generation is priced by the tokens its record counts (prompt and completion), not
    // by its input's bytes; up to the bound its input allows.
    let chat = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#.to_string();
    let generated = job_units(&g, (4, u128::MAX, 10), chat.clone(), 130);
    let c = next(&mut l, &g, vec![generated], vec![]);
    assert_eq!(c.jobs[0].fee, per_job + 130 * 10u128.pow(12));
    let bound = kernels::units_bound(chat.as_bytes());
    assert_eq!(bound, chat.len() as u64 + kernels::TEMPLATE_ALLOWANCE + 100);
    let past = job_units(&g, (5, u128::MAX, 10), chat, bound + 1);
    let e = past.verify_signatures(&g.domain()).unwrap_err().to_string();
    assert!(e.contains("at most"), "{e}");
}

#[test]
fn failures_are_recorded_and_cost_nothing() {
    let g = quiet();
    let mut l = Ledger::from_genesis(&g);
    let price = g.models[0].price_per_job;
    // fee cap below price; unfunded client; then a replayed nonce with another job
    let c = next(
        &mut l,
        &g,
        vec![job(&g, 1, price - 1, 10), job(&g, 2, price, 11)],
        vec![],
    );
    assert!(c.jobs.iter().all(|j| j.status == JobStatus::Failed));
    assert!(c.jobs[0].reason.as_ref().unwrap().contains("max_fee"));
    assert!(c.jobs[1].reason.as_ref().unwrap().contains("insufficient"));
    let replay = job_with(&g, 1, price, 10, "{\"other\":1}".into());
    let c = next(&mut l, &g, vec![replay], vec![]);
    assert!(
        c.jobs[0]
            .reason
            .as_ref()
            .unwrap()
            .contains("nonce 1 already used")
    );
}

#[test]
fn same_job_twice_is_dropped_by_builder_and_refused_by_validator() {
    let g = quiet();
    let mut l = Ledger::from_genesis(&g);
    let r = job(&g, 1, u128::MAX, 10);
    next(&mut l, &g, vec![r.clone()], vec![]);
    let c = next(&mut l, &g, vec![r.clone(), r.clone()], vec![]);
    assert!(c.jobs.is_empty());
    // a hand-made block repeating it is invalid
    let mut block = l
        .build_block(
            &g,
            g.validators[0].address,
            l.tip_time_ms + 5,
            vec![],
            vec![],
        )
        .unwrap()
        .block;
    block.records = vec![r];
    block.header.records_root = Block::records_root(&block.records, &g.domain());
    assert!(
        l.execute(&g, &block)
            .unwrap_err()
            .to_string()
            .contains("already settled")
    );
}

/// Every transaction pays the flat fee when included, even if its action fails; one that
/// cannot pay, or is out of nonce order, is left out by the builder and makes a block invalid.
#[test]
fn transactions_pay_the_fee_and_apply_in_nonce_order() {
    let g = busy();
    let fee = g.params.tx_fee;
    let mut l = Ledger::from_genesis(&g);
    let (client, to) = (key(10).address(), Address::repeat_byte(9));
    let t = |_: &Ledger, nonce, amount, max_fee| {
        UnsignedTx {
            from: client,
            nonce,
            max_fee,
            action: Action::Transfer { to, amount },
        }
        .sign(&key(10), &g.domain())
        .unwrap()
    };
    let before = l.account(&client).balance;
    let proposer = l.next_validators()[0].0;
    let candidates = vec![
        t(&l, 0, 5, fee),
        t(&l, 0, 5, fee),         // nonce already taken in this block
        t(&l, 1, u128::MAX, fee), // payable fee, failing action: kept
        t(&l, 2, 7, fee - 1),     // max_fee below the fee
        t(&l, 2, 7, fee),
        t(&l, 4, 1, fee), // a gap
    ];
    let built = l
        .build_block(&g, proposer, l.tip_time_ms + 1, vec![], candidates.clone())
        .unwrap();
    assert_eq!(
        built.block.txs,
        vec![
            candidates[0].clone(),
            candidates[2].clone(),
            candidates[4].clone()
        ]
    );
    let dropped: Vec<&str> = built.dropped_txs.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(dropped.len(), 3, "{dropped:?}");
    assert!(
        dropped[0].contains("nonce 0 but the account"),
        "{dropped:?}"
    );
    assert!(
        dropped[1].contains("below the transaction fee"),
        "{dropped:?}"
    );
    assert!(dropped[2].contains("nonce 4"), "{dropped:?}");
    let c = l.validate(&g, &built.block).unwrap();
    assert_eq!(
        c.txs.iter().map(|t| t.ok).collect::<Vec<_>>(),
        vec![true, false, true]
    );
    assert!(
        c.txs[1]
            .reason
            .as_ref()
            .unwrap()
            .contains("insufficient balance")
    );
    assert!(c.txs.iter().all(|t| t.fee == fee));
    l.commit(&c);
    assert_eq!(l.account(&to).balance, 12);
    assert_eq!(l.account(&client).nonce, 3);
    assert_eq!(l.account(&client).balance, before - 12 - 3 * fee);
    assert_eq!(l.total_supply(), TOTAL_SUPPLY);
    certify(&mut l, &g, &built.block, &[]);

    // Another proposer's block may not carry a transaction out of order or unpayable.
    let empty = l
        .build_block(&g, proposer, l.tip_time_ms + 1, vec![], vec![])
        .unwrap()
        .block;
    for bad in [t(&l, 2, 1, fee), t(&l, 3, 1, fee - 1)] {
        let mut block = empty.clone();
        block.txs = vec![bad];
        block.header.txs_root = Block::txs_root(&block.txs, &g.domain());
        let e = l.execute(&g, &block).unwrap_err().to_string();
        assert!(e.contains("nonce") || e.contains("fee"), "{e}");
    }
    // An account that holds nothing cannot pay a fee.
    let stranger = UnsignedTx {
        from: key(99).address(),
        nonce: 0,
        max_fee: fee,
        action: Action::Withdraw,
    }
    .sign(&key(99), &g.domain())
    .unwrap();
    let built = l
        .build_block(&g, proposer, l.tip_time_ms + 1, vec![], vec![stranger])
        .unwrap();
    assert!(built.dropped_txs[0].1.contains("for the fee"));
}

/// The validators' income of a block (job shares, transaction fees, their part of the
/// reward) is shared by power; the inference part of the reward goes by jobs served.
#[test]
fn fees_and_rewards_reach_validators_and_nodes() {
    let g = busy();
    let p = &g.params;
    let mut l = Ledger::from_genesis(&g);
    let exec = key(20).address();
    let price = g.models[0].price_per_job;
    let vals = |l: &Ledger| -> u128 {
        g.validators
            .iter()
            .map(|v| l.account(&v.address).balance)
            .sum()
    };
    let bond = tx(&l, &g, 10, Action::Bond { amount: OPG });
    let c = next(&mut l, &g, vec![job(&g, 1, price, 10)], vec![bond]);
    assert!(c.txs[0].ok);
    let reward = p.reward_per_block;
    let to_vals = reward * p.reward_validators_bps as u128 / 10_000;
    assert_eq!(vals(&l), price * 2 / 10 + p.tx_fee + to_vals);
    assert_eq!(
        l.account(&exec).balance,
        price * 7 / 10 + (reward - to_vals)
    );
    assert_eq!(l.pools().rewards, g.pools.rewards - reward);
    // No jobs: the inference part stays in the pool.
    next(&mut l, &g, vec![], vec![]);
    assert_eq!(l.pools().rewards, g.pools.rewards - reward - to_vals);
}

#[test]
fn bond_unbond_withdraw() {
    let g = busy();
    let mut l = Ledger::from_genesis(&g);
    let a = key(10).address();
    let start = l.account(&a).balance;
    ok(run(&mut l, &g, 10, Action::Bond { amount: 100 * OPG }));
    assert_eq!(l.account(&a).bonded, 100 * OPG);
    fails(
        run(&mut l, &g, 10, Action::Bond { amount: start }),
        "insufficient balance to bond",
    );
    fails(
        run(&mut l, &g, 10, Action::Unbond { amount: 101 * OPG }),
        "cannot unbond",
    );
    fails(
        run(&mut l, &g, 10, Action::Withdraw),
        "nothing is unbonding",
    );
    ok(run(&mut l, &g, 10, Action::Unbond { amount: 40 * OPG }));
    let release = l.height + g.params.unbonding_blocks;
    assert_eq!(
        l.account(&a).unbonding,
        vec![Unbonding {
            amount: 40 * OPG,
            release_height: release
        }]
    );
    fails(
        run(&mut l, &g, 10, Action::Withdraw),
        &format!("before height {release}"),
    );
    while l.height + 1 < release {
        next(&mut l, &g, vec![], vec![]);
    }
    let before = l.account(&a).balance;
    ok(run(&mut l, &g, 10, Action::Withdraw));
    let acc = l.account(&a);
    assert_eq!(acc.balance, before + 40 * OPG - g.params.tx_fee);
    assert!(acc.unbonding.is_empty());
    assert_eq!(acc.bonded, 60 * OPG);
    // Unbonding entries are bounded.
    for _ in 0..g.params.max_unbonding_entries {
        ok(run(&mut l, &g, 10, Action::Unbond { amount: 1 }));
    }
    fails(
        run(&mut l, &g, 10, Action::Unbond { amount: 1 }),
        "withdraw first",
    );
}

/// A newcomer is funded, bonds, registers and enters the set at the next epoch; an original
/// validator unbonds and leaves it at the epoch after its unbond.
#[test]
fn validators_join_and_leave_at_epoch_boundaries() {
    let mut g = busy();
    g.params.epoch_blocks = 10;
    let mut l = Ledger::from_genesis(&g);
    let (newcomer, eco) = (key(50).address(), 30);
    ok(run(
        &mut l,
        &g,
        eco,
        Action::Transfer {
            to: newcomer,
            amount: 2_000_000 * OPG,
        },
    ));
    fails(
        run(
            &mut l,
            &g,
            50,
            Action::RegisterValidator {
                peer_id: "p50".into(),
                moniker: "new".into(),
            },
        ),
        "needs",
    );
    ok(run(
        &mut l,
        &g,
        50,
        Action::Bond {
            amount: 1_500_000 * OPG,
        },
    ));
    fails(
        run(
            &mut l,
            &g,
            50,
            Action::RegisterValidator {
                peer_id: "peer-1".into(),
                moniker: "new".into(),
            },
        ),
        "peer id peer-1 is already registered",
    );
    ok(run(
        &mut l,
        &g,
        50,
        Action::RegisterValidator {
            peer_id: "p50".into(),
            moniker: "new".into(),
        },
    ));
    fails(
        run(
            &mut l,
            &g,
            50,
            Action::RegisterValidator {
                peer_id: "p51".into(),
                moniker: "x".into(),
            },
        ),
        "already registered",
    );
    assert!(!in_set(&l, &newcomer), "not before the epoch ends");
    let set_before = l.next_validators().to_vec();
    to_next_epoch(&mut l, &g);
    assert!(in_set(&l, &newcomer));
    assert_eq!(l.registry().set_since, l.height + 1);
    let power = l
        .next_validators()
        .iter()
        .find(|(a, _)| *a == newcomer)
        .unwrap()
        .1;
    assert_eq!(power, 1_500_000);
    // The set that decided the blocks before the change is still known for evidence.
    assert_eq!(l.registry().set_at(l.height), Some(&set_before[..]));
    // The newcomer may propose now.
    let c = {
        let at = l.tip_time_ms + 1000;
        let b = l.build_block(&g, newcomer, at, vec![], vec![]).unwrap();
        l.validate(&g, &b.block).unwrap()
    };
    assert_eq!(c.height, l.height + 1);

    let leaving = key(1).address();
    ok(run(
        &mut l,
        &g,
        1,
        Action::Unbond {
            amount: 1_000_000 * OPG,
        },
    ));
    assert!(in_set(&l, &leaving), "in the set until the epoch ends");
    to_next_epoch(&mut l, &g);
    assert!(!in_set(&l, &leaving));
    assert_eq!(l.next_validators().len(), 4);
    // Its fees stop: income goes by the new set.
    let before = l.account(&leaving).balance;
    let bond = tx(&l, &g, 10, Action::Bond { amount: 1 });
    next(&mut l, &g, vec![], vec![bond]);
    assert_eq!(l.account(&leaving).balance, before);
}

#[test]
fn the_set_is_the_top_stakes_above_the_minimum() {
    let mut g = busy();
    g.params.max_validators = 3;
    let mut l = Ledger::from_genesis(&g);
    // Genesis sets the four; at the first epoch the cap applies, ties broken by address.
    to_next_epoch(&mut l, &g);
    assert_eq!(l.next_validators().len(), 3);
    let mut by_address: Vec<Address> = (0..4).map(|i| key(i).address()).collect();
    by_address.sort();
    let kept: Vec<Address> = l.next_validators().iter().map(|(a, _)| *a).collect();
    assert_eq!(kept, by_address[..3].to_vec());
    // The fourth bonds one more OPG and displaces the last.
    let fourth = by_address[3];
    let i = (0..4).find(|i| key(*i).address() == fourth).unwrap();
    ok(run(
        &mut l,
        &g,
        30,
        Action::Transfer {
            to: fourth,
            amount: 2 * OPG,
        },
    ));
    ok(run(&mut l, &g, i, Action::Bond { amount: OPG }));
    to_next_epoch(&mut l, &g);
    assert!(in_set(&l, &fourth));
    assert!(!in_set(&l, &by_address[2]));
}

#[test]
fn inference_nodes_register_serve_and_stop_when_unbonded() {
    let g = quiet();
    let mut l = Ledger::from_genesis(&g);
    let node = key(60).address();
    let model = g.models[0].id;
    ok(run(
        &mut l,
        &g,
        30,
        Action::Transfer {
            to: node,
            amount: 2_000 * OPG,
        },
    ));
    let register = |models: Vec<ModelId>, peer: &str| Action::RegisterInferenceNode {
        peer_id: peer.into(),
        models,
        tee_chip: None,
    };
    fails(run(&mut l, &g, 60, register(vec![model], "p60")), "needs");
    ok(run(
        &mut l,
        &g,
        60,
        Action::Bond {
            amount: 1_000 * OPG,
        },
    ));
    fails(
        run(&mut l, &g, 60, register(vec![ModelId([9; 32])], "p60")),
        "unknown model",
    );
    fails(
        run(&mut l, &g, 60, register(vec![model], "peer-20")),
        "already registered",
    );
    ok(run(&mut l, &g, 60, register(vec![model], "p60")));
    assert_eq!(l.refuse_executor(&node, &model), None);
    // Its records settle.
    let r = InferenceRecord::create(
        job(&g, 1, u128::MAX, 10).job,
        "{\"n\":1}".into(),
        (B256::repeat_byte(3), 7),
        Proof::Reexec,
        &key(60),
        &g.domain(),
    )
    .unwrap();
    let c = next(&mut l, &g, vec![r], vec![]);
    assert_eq!(c.jobs[0].executed_by, node);
    // Unbonded below the minimum: refused, and the builder leaves its records out.
    ok(run(&mut l, &g, 60, Action::Unbond { amount: 1 }));
    let refusal = l.refuse_executor(&node, &model).unwrap();
    assert!(refusal.contains("below the minimum"), "{refusal}");
    let r = InferenceRecord::create(
        job(&g, 2, u128::MAX, 10).job,
        "{\"n\":2}".into(),
        (B256::repeat_byte(3), 7),
        Proof::Reexec,
        &key(60),
        &g.domain(),
    )
    .unwrap();
    let built = build_with(&l, &g, r);
    assert!(built.block.records.is_empty());
    assert!(built.dropped_records[0].1.contains("below the minimum"));
}

#[test]
fn models_are_registered_by_anyone_and_pay_their_owner() {
    let g = quiet();
    let mut l = Ledger::from_genesis(&g);
    let manifest = "{\"files\":[{\"name\":\"w\",\"sha256\":\"00\"}]}".to_string();
    let id = ModelId(keccak256(manifest.as_bytes()).0);
    let register = |manifest: &str, mode| Action::RegisterModel {
        model_id: id,
        name: "mine".into(),
        manifest: manifest.into(),
        mode,
        price_per_job: 1_000,
        price_per_unit: 1,
    };
    fails(
        run(
            &mut l,
            &g,
            10,
            register(&manifest, crate::VerificationMode::Tee),
        ),
        "approves no TEE measurement",
    );
    ok(run(
        &mut l,
        &g,
        10,
        register(&manifest, crate::VerificationMode::Reexec),
    ));
    fails(
        run(
            &mut l,
            &g,
            11,
            register(&manifest, crate::VerificationMode::Reexec),
        ),
        "already registered",
    );
    let m = &l.registry().models[&id];
    assert_eq!(
        (m.owner, m.price_per_job, m.active),
        (key(10).address(), 1_000, true)
    );
    // The genesis node is not registered for it: its records are refused.
    assert!(
        l.refuse_executor(&key(20).address(), &id)
            .unwrap()
            .contains("not registered for model")
    );
}

/// The sample's validators, each holding a quarter of the stake, vote as told.
fn vote_all(l: &mut Ledger, g: &Genesis, proposal: u64, votes: &[(u64, VoteOption)]) {
    let txs = votes
        .iter()
        .map(|(i, option)| {
            tx(
                l,
                g,
                *i,
                Action::Vote {
                    proposal,
                    option: *option,
                },
            )
        })
        .collect();
    let c = next(l, g, vec![], txs);
    assert!(c.txs.iter().all(|t| t.ok), "{:?}", c.txs);
}

fn fund_validators(l: &mut Ledger, g: &Genesis) {
    let txs = (0..4u64)
        .scan(l.account(&key(30).address()).nonce, |n, i| {
            let t = UnsignedTx {
                from: key(30).address(),
                nonce: *n,
                max_fee: u128::MAX,
                action: Action::Transfer {
                    to: key(i).address(),
                    amount: 10 * OPG,
                },
            }
            .sign(&key(30), &g.domain())
            .unwrap();
            *n += 1;
            Some(t)
        })
        .collect();
    next(l, g, vec![], txs);
}

fn propose(l: &mut Ledger, g: &Genesis, kind: ProposalKind) -> u64 {
    let id = l.registry().next_proposal;
    ok(run(
        l,
        g,
        30,
        Action::Propose {
            kind,
            deposit: g.params.min_deposit,
        },
    ));
    id
}

fn close(l: &mut Ledger, g: &Genesis, id: u64) -> Proposal {
    while l.registry().proposals[&id].status == ProposalStatus::Voting {
        next(l, g, vec![], vec![]);
    }
    l.registry().proposals[&id].clone()
}

/// A fee-split change passes by stake and applies at the closing block; jobs after it split
/// by the new shares.
#[test]
fn governance_changes_parameters_by_stake() {
    let mut g = busy();
    g.params.reward_per_block = 0;
    let mut l = Ledger::from_genesis(&g);
    fund_validators(&mut l, &g);
    let eco = key(30).address();
    let eco_before = l.account(&eco).balance;
    let split: BTreeMap<String, String> = [
        ("executor_bps".to_string(), "6000".to_string()),
        ("model_owner_bps".to_string(), "2000".to_string()),
    ]
    .into();
    let id = propose(&mut l, &g, ProposalKind::Params(split));
    assert_eq!(l.pools().deposits, g.params.min_deposit);
    // Votes: 3 of 4 equal stakes yes, one no; validator 0 first votes no, then yes (the last
    // vote counts).
    vote_all(&mut l, &g, id, &[(0, VoteOption::No), (1, VoteOption::Yes)]);
    vote_all(
        &mut l,
        &g,
        id,
        &[
            (0, VoteOption::Yes),
            (2, VoteOption::Yes),
            (3, VoteOption::No),
        ],
    );
    let p = close(&mut l, &g, id);
    assert_eq!(p.status, ProposalStatus::Passed);
    let t = p.tally.unwrap();
    assert_eq!((t.yes, t.no), (3_000_000 * OPG, 1_000_000 * OPG));
    assert_eq!(l.params().executor_bps, 6000);
    assert_eq!(l.pools().deposits, 0);
    // Deposit refunded (fees paid aside).
    assert_eq!(l.account(&eco).balance, eco_before - g.params.tx_fee);
    fails(
        run(
            &mut l,
            &g,
            1,
            Action::Vote {
                proposal: id,
                option: VoteOption::No,
            },
        ),
        "voting ended",
    );
    fails(
        run(
            &mut l,
            &g,
            1,
            Action::Vote {
                proposal: 99,
                option: VoteOption::No,
            },
        ),
        "no proposal 99",
    );
    // The next job splits 60/20/20.
    let exec = key(20).address();
    let before = l.account(&exec).balance;
    let price = g.models[0].price_per_job;
    next(&mut l, &g, vec![job(&g, 1, price, 10)], vec![]);
    assert_eq!(l.account(&exec).balance - before, price * 6 / 10);
}

#[test]
fn governance_quorum_veto_and_invalid_proposals() {
    let mut g = busy();
    g.params.reward_per_block = 0;
    let mut l = Ledger::from_genesis(&g);
    fund_validators(&mut l, &g);
    let text = || ProposalKind::Text {
        title: "t".into(),
        body: String::new(),
    };
    // One quarter of the stake votes: below the 33.4 % quorum, refunded.
    let id = propose(&mut l, &g, text());
    vote_all(&mut l, &g, id, &[(0, VoteOption::Yes)]);
    assert_eq!(close(&mut l, &g, id).status, ProposalStatus::NoQuorum);
    assert_eq!(l.pools().community, g.pools.community);
    // Two veto of four: the deposit goes to the community pool.
    let id = propose(&mut l, &g, text());
    vote_all(
        &mut l,
        &g,
        id,
        &[
            (0, VoteOption::Yes),
            (1, VoteOption::Veto),
            (2, VoteOption::Veto),
            (3, VoteOption::Yes),
        ],
    );
    assert_eq!(close(&mut l, &g, id).status, ProposalStatus::Vetoed);
    assert_eq!(
        l.pools().community,
        g.pools.community + g.params.min_deposit
    );
    // Half yes, half no: not above the 50 % threshold.
    let id = propose(&mut l, &g, text());
    vote_all(
        &mut l,
        &g,
        id,
        &[
            (0, VoteOption::Yes),
            (1, VoteOption::No),
            (2, VoteOption::Abstain),
        ],
    );
    assert_eq!(close(&mut l, &g, id).status, ProposalStatus::Rejected);
    // Refused at submission: a fee split that does not add up, an unknown name, a small
    // deposit.
    for (kind, want) in [
        (
            ProposalKind::Params([("executor_bps".into(), "1".into())].into()),
            "must add up to 10000",
        ),
        (
            ProposalKind::Params([("no_such".into(), "1".into())].into()),
            "no parameter is named",
        ),
        (
            ProposalKind::Params([("epoch_blocks".into(), "-1".into())].into()),
            "not a whole number",
        ),
        (
            ProposalKind::ModelDeactivate(ModelId([7; 32])),
            "unknown model",
        ),
    ] {
        fails(
            run(
                &mut l,
                &g,
                30,
                Action::Propose {
                    kind,
                    deposit: g.params.min_deposit,
                },
            ),
            want,
        );
    }
    fails(
        run(
            &mut l,
            &g,
            30,
            Action::Propose {
                kind: text(),
                deposit: 1,
            },
        ),
        "below the minimum",
    );
    assert_eq!(l.pools().deposits, 0);
}

#[test]
fn governance_deactivates_models_and_edits_the_tee_allowlist() {
    let mut g = busy();
    g.params.reward_per_block = 0;
    let mut l = Ledger::from_genesis(&g);
    fund_validators(&mut l, &g);
    let model = g.models[0].id;
    let all_yes = [
        (0, VoteOption::Yes),
        (1, VoteOption::Yes),
        (2, VoteOption::Yes),
    ];
    let id = propose(&mut l, &g, ProposalKind::ModelDeactivate(model));
    vote_all(&mut l, &g, id, &all_yes);
    assert_eq!(close(&mut l, &g, id).status, ProposalStatus::Passed);
    assert!(!l.registry().models[&model].active);
    assert!(
        l.refuse_executor(&key(20).address(), &model).is_none(),
        "the node is fine"
    );
    let built = build_with(&l, &g, job(&g, 1, u128::MAX, 10));
    assert!(built.dropped_records[0].1.contains("deactivated"));
    let m = "ab".repeat(48);
    let id = propose(&mut l, &g, ProposalKind::TeeAllow(m.clone()));
    vote_all(&mut l, &g, id, &all_yes);
    assert_eq!(close(&mut l, &g, id).status, ProposalStatus::Passed);
    assert!(l.registry().measurements.contains(&m));
    fails(
        run(
            &mut l,
            &g,
            30,
            Action::Propose {
                kind: ProposalKind::TeeAllow(m),
                deposit: g.params.min_deposit,
            },
        ),
        "already approved",
    );
}

fn double_vote(g: &Genesis, signer: u64, height: Height) -> Evidence {
    let k = key(signer);
    let vote = |block| {
        SignedVote::sign(
            Vote {
                height,
                round: 0,
                kind: VoteKind::Precommit,
                block,
                validator: k.address(),
            },
            &k,
            &g.domain(),
        )
        .unwrap()
    };
    Evidence::double_vote(vote(Some(B256::repeat_byte(1))), vote(None)).unwrap()
}

/// Double-sign evidence slashes bonded and unbonding stake into the community pool, jails the
/// validator, and takes it out of the set at the next epoch; it may unjail after the jail.
#[test]
fn equivocation_is_slashed_and_jailed() {
    let mut g = busy();
    g.params.epoch_blocks = 10;
    let mut l = Ledger::from_genesis(&g);
    let offender = key(2).address();
    next(&mut l, &g, vec![], vec![]);
    ok(run(
        &mut l,
        &g,
        2,
        Action::Unbond {
            amount: 100_000 * OPG,
        },
    ));
    let ev = double_vote(&g, 2, l.height);
    let community = l.pools().community;
    let reporter_before = l.account(&key(10).address()).balance;
    ok(run(&mut l, &g, 10, Action::ReportEvidence(ev.clone())));
    let acc = l.account(&offender);
    let bps = g.params.slash_double_sign_bps as u128;
    assert_eq!(acc.bonded, 900_000 * OPG - 900_000 * OPG * bps / 10_000);
    assert_eq!(
        acc.unbonding[0].amount,
        100_000 * OPG - 100_000 * OPG * bps / 10_000
    );
    assert_eq!(
        l.pools().community,
        community + 1_000_000 * OPG * bps / 10_000
    );
    assert_eq!(
        l.account(&key(10).address()).balance,
        reporter_before - g.params.tx_fee
    );
    let jailed_until = l.registry().validators[&offender].jailed_until.unwrap();
    // Reported again: already punished. Not conflicting, or by a stranger: refused; the
    // reporter pays the fee each time.
    fails(
        run(&mut l, &g, 10, Action::ReportEvidence(ev)),
        "already punished",
    );
    let again = double_vote(&g, 2, l.height);
    fails(
        run(&mut l, &g, 10, Action::ReportEvidence(again)),
        "already jailed",
    );
    let Evidence::DoubleVote { first, .. } = double_vote(&g, 3, l.height) else {
        unreachable!()
    };
    let not_conflicting = Evidence::DoubleVote {
        first: first.clone(),
        second: first,
    };
    fails(
        run(&mut l, &g, 10, Action::ReportEvidence(not_conflicting)),
        "do not conflict",
    );
    let stranger = double_vote(&g, 77, l.height);
    fails(
        run(&mut l, &g, 10, Action::ReportEvidence(stranger)),
        "is not a validator",
    );
    let future = double_vote(&g, 3, l.height + 5);
    fails(
        run(&mut l, &g, 10, Action::ReportEvidence(future)),
        "is after this block",
    );
    assert!(in_set(&l, &offender));
    to_next_epoch(&mut l, &g);
    assert!(!in_set(&l, &offender), "out at the next epoch");
    if l.height < jailed_until {
        fails(run(&mut l, &g, 2, Action::Unjail), "jailed until");
    }
    while l.height + 1 < jailed_until {
        next(&mut l, &g, vec![], vec![]);
    }
    fails(run(&mut l, &g, 3, Action::Unjail), "is not jailed");
    ok(run(&mut l, &g, 2, Action::Unjail));
    to_next_epoch(&mut l, &g);
    assert!(in_set(&l, &offender), "back after unjailing");
    // Evidence past the maximum age is refused.
    let old = double_vote(&g, 3, 1);
    fails(
        run(&mut l, &g, 10, Action::ReportEvidence(old)),
        "older than",
    );
}

fn vesting_genesis() -> Genesis {
    let mut g = quiet();
    let team = key(70).address();
    let amount = 1_000 * OPG;
    let eco = g
        .accounts
        .iter_mut()
        .find(|a| a.address == key(30).address())
        .unwrap();
    eco.balance -= amount;
    g.accounts.push(GenesisAccount {
        address: team,
        balance: amount,
        stake: 0,
        label: "team".into(),
        vesting: Some(Vesting {
            start_ms: g.genesis_time_ms,
            cliff_ms: 10_000,
            duration_ms: 100_000,
            amount,
        }),
    });
    g.validate().unwrap();
    g
}

#[test]
fn vesting_locks_transfers_not_bonds() {
    let g = vesting_genesis();
    let mut l = Ledger::from_genesis(&g);
    let team = key(70).address();
    let to = Address::repeat_byte(5);
    let t0 = g.genesis_time_ms;
    let send = |l: &mut Ledger, at, amount| {
        let t = tx(l, &g, 70, Action::Transfer { to, amount });
        next_at(l, &g, at, vec![], vec![t]).txs.remove(0)
    };
    // Before the cliff: nothing moves; the error says how much vested.
    fails(
        send(&mut l, t0 + 5_000, 1),
        "0 of 1000000000000000000000 vested",
    );
    // After 30 % of the duration: exactly 300 OPG may move, not one base unit more.
    fails(
        send(&mut l, t0 + 30_000, 300 * OPG + 1),
        "300000000000000000000 of 1000000000000000000000 vested",
    );
    ok(send(&mut l, t0 + 30_001, 300 * OPG));
    assert_eq!(l.account(&to).balance, 300 * OPG);
    let s = l.supply();
    assert_eq!(s.locked, 1_000 * OPG - 1_000 * OPG * 30_001 / 100_000);
    // Locked tokens can be bonded: bonding 600 leaves 100 locked in the balance.
    let b = tx(&l, &g, 70, Action::Bond { amount: 600 * OPG });
    ok(next_at(&mut l, &g, t0 + 30_002, vec![], vec![b])
        .txs
        .remove(0));
    fails(
        send(&mut l, t0 + 30_003, 100 * OPG),
        "insufficient unlocked balance",
    );
    // Fully vested: everything left moves.
    let rest = l.account(&team).balance;
    ok(send(&mut l, t0 + 200_000, rest));
    assert_eq!(l.supply().locked, 0);
}

#[test]
fn block_times_are_bounded_by_parent_and_clock() {
    let g = quiet();
    let proposer = g.validators[0].address;
    let l = Ledger::from_genesis(&g);
    let now = l.tip_time_ms + 60_000;
    // An empty block's state root does not depend on its time.
    let empty = l
        .build_block(&g, proposer, now, vec![], vec![])
        .unwrap()
        .block;
    let at = |t: u64| {
        let mut b = empty.clone();
        b.header.timestamp_ms = t;
        b
    };
    let drift = g.params.max_clock_drift_ms;
    l.validate_proposal(&g, &at(now), now).unwrap();
    l.validate_proposal(&g, &at(now + drift), now).unwrap();
    let ten_years = 10 * 365 * 24 * 3600 * 1000;
    for t in [now + drift + 1, l.tip_time_ms + ten_years, u64::MAX] {
        let e = l.validate_proposal(&g, &at(t), now).unwrap_err();
        assert!(
            e.to_string().contains("ahead of this validator's clock"),
            "{e}"
        );
    }
    // A clock near u64::MAX does not overflow the bound.
    l.validate_proposal(&g, &at(now), u64::MAX).unwrap();
    // Not after the parent: refused whatever the clock says.
    for t in [l.tip_time_ms, l.tip_time_ms - 1] {
        assert!(l.validate_proposal(&g, &at(t), now).is_err());
    }

    // Building on a tip at the latest time allowed: the next block is one ms later and
    // valid once the validators' clocks are within the drift of it.
    let mut l2 = l.clone();
    let tip_block = at(now + drift);
    let c = l2.validate_proposal(&g, &tip_block, now).unwrap();
    l2.commit(&c);
    certify(&mut l2, &g, &tip_block, &[]);
    let built = l2.build_block(&g, proposer, now, vec![], vec![]).unwrap();
    assert_eq!(built.block.header.timestamp_ms, now + drift + 1);
    l2.validate_proposal(&g, &built.block, now + 1).unwrap();

    // A tip at u64::MAX (only a corrupt chain could have it) is an error, not an overflow.
    let stuck = Ledger::from_parts(
        1,
        B256::ZERO,
        u64::MAX,
        BTreeMap::new(),
        UsedNonces::default(),
        B256::ZERO,
        Registry::from_genesis(&g),
        g.pools,
        Liveness::default(),
        None,
    );
    let e = stuck
        .build_block(&g, proposer, now, vec![], vec![])
        .unwrap_err();
    assert!(e.to_string().contains("no later one"), "{e}");
}

#[test]
fn state_root_covers_nonces_and_the_job_index() {
    let g = quiet();
    let mut a = Ledger::from_genesis(&g);
    let b = a.clone();
    assert_eq!(a.state_root(), b.state_root());
    // A job that fails (fee cap below the price) changes no account, only the used nonces
    // and the job index: the roots must still differ.
    let price = g.models[0].price_per_job;
    let before: Vec<Account> = a.accounts().values().cloned().collect();
    let c = next(&mut a, &g, vec![job(&g, 1, price - 1, 10)], vec![]);
    assert_eq!(c.jobs[0].status, JobStatus::Failed);
    assert_eq!(a.accounts().values().cloned().collect::<Vec<_>>(), before);
    assert_ne!(a.state_root(), b.state_root());
    assert_eq!(a.state_root(), c.state_root);
    // Empty blocks leave the history alone; the root still matches the accounts.
    let h = a.history();
    let c = next(&mut a, &g, vec![], vec![]);
    assert_eq!(a.history(), h);
    assert_eq!(c.state_root, a.state_root());
}

#[test]
fn merge_sorted_matches_a_merged_copy() {
    let base: BTreeMap<u32, u32> = [(1, 1), (3, 3), (5, 5), (9, 9)].into();
    let overlay: BTreeMap<u32, u32> = [(0, 10), (3, 30), (6, 60), (9, 90), (12, 120)].into();
    let mut copy = base.clone();
    copy.extend(overlay.clone());
    let merged: Vec<(u32, u32)> = merge_sorted(&base, &overlay)
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(merged, copy.into_iter().collect::<Vec<_>>());
    let empty = BTreeMap::new();
    assert_eq!(merge_sorted(&empty, &overlay).count(), overlay.len());
    assert_eq!(merge_sorted(&base, &empty).count(), base.len());
}

/// Signatures recovered apart give the same changes as executing the block whole, and are
/// refused for another block.
#[test]
fn recovered_signatures_serve_their_block_only() {
    let g = quiet();
    let l = Ledger::from_genesis(&g);
    let build = |records| {
        l.build_block(
            &g,
            g.validators[0].address,
            l.tip_time_ms + 1,
            records,
            vec![],
        )
        .unwrap()
        .block
    };
    let block = build(verified(&g, vec![job(&g, 1, u128::MAX, 10)]));
    let other = build(verified(&g, vec![job(&g, 2, u128::MAX, 11)]));
    let now = block.header.timestamp_ms;
    let recovered = RecoveredRecords::of(&block, &g.domain()).unwrap();
    assert_eq!(recovered.ids, vec![block.records[0].job_id(&g.domain())]);
    assert_eq!(
        l.validate_proposal_recovered(&g, &block, now, &recovered)
            .unwrap(),
        l.validate_proposal(&g, &block, now).unwrap()
    );
    let e = l
        .validate_proposal_recovered(&g, &other, now, &recovered)
        .unwrap_err();
    assert!(e.to_string().contains("another block"), "{e}");
    assert_eq!(
        l.validate_recovered(&g, &block, &recovered).unwrap(),
        l.validate(&g, &block).unwrap()
    );
    assert!(l.validate_recovered(&g, &other, &recovered).is_err());
    // A record whose executor signature no longer matches is refused while recovering.
    let mut bad = block.clone();
    bad.records[0].output_hash = B256::ZERO;
    assert!(RecoveredRecords::of(&bad, &g.domain()).is_err());
}

#[test]
fn tampered_blocks_are_refused() {
    let g = quiet();
    let l = Ledger::from_genesis(&g);
    let block = l
        .build_block(
            &g,
            g.validators[0].address,
            l.tip_time_ms + 1,
            verified(&g, vec![job(&g, 1, u128::MAX, 10)]),
            vec![],
        )
        .unwrap()
        .block;
    l.validate(&g, &block).unwrap();
    let mut b = block.clone();
    b.header.state_root = B256::ZERO;
    assert!(l.validate(&g, &b).is_err());
    let mut b = block.clone();
    b.header.height = 5;
    assert!(l.validate(&g, &b).is_err());
    let mut b = block.clone();
    b.header.timestamp_ms = l.tip_time_ms;
    assert!(l.validate(&g, &b).is_err());
    let mut b = block.clone();
    b.records[0].output_hash = B256::ZERO;
    b.header.records_root = Block::records_root(&b.records, &g.domain());
    assert!(
        l.validate(&g, &b).is_err(),
        "executor signature no longer matches"
    );
    let mut b = block;
    b.header.proposer = Address::ZERO;
    assert!(l.validate(&g, &b).is_err());
}

/// Two ledgers that differ in anything that decides a future transaction have different
/// roots: an account's balance, bonded stake, unbonding entries, nonce or vesting; the
/// registry; the pools.
#[test]
fn state_root_covers_accounts_registry_and_pools() {
    let g = quiet();
    let base = Ledger::from_genesis(&g);
    let root = base.state_root();
    let a = key(10).address();
    let with_account = |edit: &dyn Fn(&mut Account)| {
        let mut accounts = base.accounts().clone();
        edit(accounts.get_mut(&a).unwrap());
        Ledger::from_parts(
            0,
            base.tip_hash,
            base.tip_time_ms,
            accounts,
            UsedNonces::default(),
            base.history(),
            (**base.registry()).clone(),
            base.pools(),
            Liveness::default(),
            None,
        )
        .state_root()
    };
    let with_registry = |edit: &dyn Fn(&mut Registry)| {
        let mut r = (**base.registry()).clone();
        edit(&mut r);
        Ledger::from_parts(
            0,
            base.tip_hash,
            base.tip_time_ms,
            base.accounts().clone(),
            UsedNonces::default(),
            base.history(),
            r,
            base.pools(),
            Liveness::default(),
            None,
        )
        .state_root()
    };
    assert_eq!(with_account(&|_| {}), root);
    assert_eq!(with_registry(&|_| {}), root);
    let roots = [
        with_account(&|acc| acc.balance += 1),
        with_account(&|acc| acc.bonded += 1),
        with_account(&|acc| acc.nonce += 1),
        with_account(&|acc| {
            acc.unbonding.push(Unbonding {
                amount: 0,
                release_height: 1,
            })
        }),
        with_account(&|acc| acc.vesting = Some(Vesting::default())),
        with_registry(&|r| r.params.tx_fee += 1),
        with_registry(&|r| r.set[0].1 += 1),
        with_registry(&|r| r.set_since += 1),
        with_registry(&|r| {
            r.validators.values_mut().next().unwrap().jailed_until = Some(9);
        }),
        with_registry(&|r| {
            r.nodes.values_mut().next().unwrap().models.clear();
        }),
        with_registry(&|r| {
            r.models.values_mut().next().unwrap().active = false;
        }),
        with_registry(&|r| r.next_proposal += 1),
        with_registry(&|r| {
            r.measurements.insert("00".into());
        }),
        with_registry(&|r| {
            r.slashed.insert((a, 1));
        }),
        {
            let mut pools = base.pools();
            pools.community += 1;
            Ledger::from_parts(
                0,
                base.tip_hash,
                base.tip_time_ms,
                base.accounts().clone(),
                UsedNonces::default(),
                base.history(),
                (**base.registry()).clone(),
                pools,
                Liveness::default(),
                None,
            )
            .state_root()
        },
        {
            let with_leaf = Ledger::from_parts(
                0,
                base.tip_hash,
                base.tip_time_ms,
                base.accounts().clone(),
                UsedNonces::default(),
                base.history(),
                (**base.registry()).clone(),
                base.pools(),
                Liveness::default(),
                None,
            );
            with_leaf
                .with_anchor_leaves(AnchorLeaves {
                    records: vec![B256::repeat_byte(1)],
                    withdrawals: vec![],
                })
                .state_root()
        },
    ];
    let mut distinct: Vec<B256> = roots.to_vec();
    distinct.push(root);
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), roots.len() + 1);
}

/// A dry run says what including a transaction would do, and changes nothing.
#[test]
fn dry_run_predicts_without_changing() {
    let g = busy();
    let l = Ledger::from_genesis(&g);
    let root = l.state_root();
    let now = l.tip_time_ms + 1;
    assert_eq!(
        l.dry_run(
            &g,
            g.domain(),
            &tx(&l, &g, 10, Action::Bond { amount: OPG }),
            now
        ),
        Ok(())
    );
    let e = l
        .dry_run(
            &g,
            g.domain(),
            &tx(&l, &g, 10, Action::Unbond { amount: OPG }),
            now,
        )
        .unwrap_err();
    assert!(e.contains("cannot unbond"), "{e}");
    let mut gap = tx(&l, &g, 10, Action::Withdraw);
    gap.nonce = 3;
    assert!(l.dry_run(&g, g.domain(), &gap, now).is_err());
    assert_eq!(l.state_root(), root);
}

mod invariant {
    use super::*;
    use proptest::prelude::*;

    /// One step of a random history.
    #[derive(Clone, Debug)]
    enum Step {
        Transfer(u8, u8, u32),
        Bond(u8, u32),
        Unbond(u8, u32),
        Withdraw(u8),
        RegisterValidator(u8),
        RegisterNode(u8),
        Propose(u8, u8),
        Vote(u8, u8),
        Unjail(u8),
        Equivocate(u8),
        /// A fraud report by the first account against a false record of the inference node.
        Fraud(u8),
        Job(u8, u16),
        Blocks(u8),
        /// Blocks that a validator does not sign (when the others hold more than 2/3).
        Absent(u8, u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..8u8, 0..8u8, any::<u32>()).prop_map(|(a, b, n)| Step::Transfer(a, b, n)),
            (0..8u8, any::<u32>()).prop_map(|(a, n)| Step::Bond(a, n)),
            (0..8u8, any::<u32>()).prop_map(|(a, n)| Step::Unbond(a, n)),
            (0..8u8).prop_map(Step::Withdraw),
            (0..8u8).prop_map(Step::RegisterValidator),
            (0..8u8).prop_map(Step::RegisterNode),
            (0..8u8, 0..4u8).prop_map(|(a, k)| Step::Propose(a, k)),
            (0..8u8, 0..4u8).prop_map(|(a, o)| Step::Vote(a, o)),
            (0..8u8).prop_map(Step::Unjail),
            (0..4u8).prop_map(Step::Equivocate),
            (0..8u8).prop_map(Step::Fraud),
            (0..2u8, 0..4096u16).prop_map(|(c, n)| Step::Job(c, n)),
            (1..4u8).prop_map(Step::Blocks),
            (0..4u8, 1..8u8).prop_map(|(v, n)| Step::Absent(v, n)),
        ]
    }

    /// Accounts the steps act for: the four validators, the client, the node, ecosystem, and
    /// a newcomer.
    const WHO: [u64; 8] = [0, 1, 2, 3, 10, 20, 30, 50];

    fn action(l: &Ledger, g: &Genesis, s: &Step) -> Option<(u64, Action)> {
        let who = |i: &u8| WHO[*i as usize % WHO.len()];
        // Amounts scaled to matter: up to ~4 M OPG.
        let amount = |n: &u32| *n as u128 * 10u128.pow(12);
        Some(match s {
            Step::Transfer(a, b, n) => (
                who(a),
                Action::Transfer {
                    to: key(who(b)).address(),
                    amount: amount(n),
                },
            ),
            Step::Bond(a, n) => (who(a), Action::Bond { amount: amount(n) }),
            Step::Unbond(a, n) => (who(a), Action::Unbond { amount: amount(n) }),
            Step::Withdraw(a) => (who(a), Action::Withdraw),
            Step::RegisterValidator(a) => (
                who(a),
                Action::RegisterValidator {
                    peer_id: format!("p{a}"),
                    moniker: "m".into(),
                },
            ),
            Step::RegisterNode(a) => (
                who(a),
                Action::RegisterInferenceNode {
                    peer_id: format!("n{a}"),
                    models: vec![g.models[0].id],
                    tee_chip: None,
                },
            ),
            Step::Propose(a, k) => (
                who(a),
                Action::Propose {
                    kind: match k {
                        0 => ProposalKind::Params(
                            [
                                ("executor_bps".into(), "6500".into()),
                                ("validators_bps".into(), "2500".into()),
                            ]
                            .into(),
                        ),
                        1 => ProposalKind::Params([("epoch_blocks".into(), "3".into())].into()),
                        2 => ProposalKind::ModelDeactivate(g.models[0].id),
                        _ => ProposalKind::Text {
                            title: "t".into(),
                            body: String::new(),
                        },
                    },
                    deposit: l.params().min_deposit,
                },
            ),
            Step::Vote(a, o) => (
                who(a),
                Action::Vote {
                    proposal: l.registry().next_proposal.saturating_sub(1).max(1),
                    option: [
                        VoteOption::Yes,
                        VoteOption::No,
                        VoteOption::Abstain,
                        VoteOption::Veto,
                    ][*o as usize],
                },
            ),
            Step::Unjail(a) => (who(a), Action::Unjail),
            Step::Equivocate(v) => {
                let at = l.height.max(1);
                (30, Action::ReportEvidence(double_vote(g, *v as u64, at)))
            }
            Step::Fraud(a) => {
                let record = job(g, 1_000_000 + *a as u64, u128::MAX, 10);
                (
                    who(a),
                    fraud(
                        record,
                        crate::evidence::FraudClaim::Output {
                            recomputed: B256::repeat_byte(0x5a),
                        },
                    ),
                )
            }
            Step::Job(..) | Step::Blocks(_) | Step::Absent(..) => return None,
        })
    }

    /// `v` if the rest of the set deciding the next height holds more than 2/3 of its power,
    /// so a certificate without it is valid.
    fn may_be_absent(l: &Ledger, v: u8) -> Option<Address> {
        let who = key(v as u64).address();
        let set = l.next_validators();
        let total: u64 = set.iter().map(|(_, p)| *p).sum();
        let mine: u64 = set.iter().filter(|(a, _)| *a == who).map(|(_, p)| *p).sum();
        ((total - mine) * 3 > total * 2).then_some(who)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Whatever happens — every transaction kind, failing ones included, jobs, epoch
        /// changes, slashes for double signs and fraud, downtime jails, proposals closing —
        /// every block conserves the supply exactly, the validator re-executing it agrees with
        /// its builder, and the set never empties.
        #[test]
        fn supply_is_exact_at_every_height(steps in proptest::collection::vec(step(), 1..40)) {
            let mut g = busy();
            g.params.voting_blocks = 4;
            g.params.downtime_window = 6;
            g.params.downtime_min_signed_bps = 5_000;
            let mut l = Ledger::from_genesis(&g);
            let mut job_nonce = 0;
            for s in &steps {
                let mut records = Vec::new();
                let mut txs = Vec::new();
                match s {
                    Step::Job(c, n) => {
                        job_nonce += 1;
                        let client = if *c == 0 { 10 } else { 0 };
                        records.push(job_with(&g, job_nonce, u128::MAX, client, "x".repeat(*n as usize)));
                    }
                    Step::Blocks(n) => {
                        for _ in 1..*n {
                            next(&mut l, &g, vec![], vec![]);
                        }
                    }
                    Step::Absent(v, n) => {
                        for _ in 1..*n {
                            let absent: Vec<Address> = may_be_absent(&l, *v).into_iter().collect();
                            let at = l.tip_time_ms + 1000;
                            next_without(&mut l, &g, at, vec![], vec![], &absent);
                        }
                    }
                    _ => {}
                }
                if let Some((i, a)) = action(&l, &g, s) {
                    let t = tx(&l, &g, i, a);
                    // An account with nothing to pay the fee with is left out by the builder.
                    if l.account(&t.from).spendable(l.tip_time_ms + 1000) >= l.params().tx_fee {
                        txs.push(t);
                    }
                }
                next(&mut l, &g, records, txs);
                let s = l.supply();
                prop_assert_eq!(s.total, TOTAL_SUPPLY);
                prop_assert_eq!(s.balances + s.locked + s.bonded + s.unbonding + s.pools.total(), TOTAL_SUPPLY);
                prop_assert!(!l.next_validators().is_empty());
            }
        }
    }
}

fn fraud(record: InferenceRecord, claim: crate::evidence::FraudClaim) -> Action {
    Action::ReportFraud(Box::new(crate::evidence::FraudEvidence { record, claim }))
}

/// A record with the true output but miscounted units, proven by re-execution (the claim's
/// units): its executor is slashed and jailed as for a false output.
#[test]
fn a_miscounted_record_is_slashed() {
    use crate::evidence::FraudClaim;
    let g = busy();
    let mut l = Ledger::from_genesis(&g);
    let node = key(20).address();
    let bonded = l.account(&node).bonded;
    let input = "{\"n\":1}".to_string();
    let record = job_units(&g, (1, u128::MAX, 10), input, 3);
    ok(run(
        &mut l,
        &g,
        30,
        fraud(record, FraudClaim::Units { recomputed: 7 }),
    ));
    let bps = g.params.slash_fraud_bps as u128;
    assert_eq!(l.account(&node).bonded, bonded - bonded * bps / 10_000);
    assert!(l.registry().nodes[&node].jailed_until.is_some());
}

/// A false record, proven: its executor loses `slash_fraud_bps` of its stake to the community
/// pool and is jailed (its records are refused from then on); the same proof again, a second
/// false record while jailed, a claim that changes nothing, an unsigned record and a
/// stranger's record are refused (each report still pays its fee).
#[test]
fn a_false_record_is_slashed_and_jails_its_node() {
    use crate::evidence::FraudClaim;
    let g = busy();
    let mut l = Ledger::from_genesis(&g);
    let node = key(20).address();
    let bonded = l.account(&node).bonded;
    let community = l.pools().community;
    let record = job(&g, 1, u128::MAX, 10);
    // Every record here claims 0x03…03 or 0x77…77.
    let claim = |_: &InferenceRecord| FraudClaim::Output {
        recomputed: B256::repeat_byte(0x5a),
    };
    fails(
        run(
            &mut l,
            &g,
            30,
            fraud(
                record.clone(),
                FraudClaim::Output {
                    recomputed: record.output_hash,
                },
            ),
        ),
        "nothing differs",
    );
    let mut unsigned = record.clone();
    unsigned.output_hash = B256::repeat_byte(0x77);
    fails(
        run(&mut l, &g, 30, fraud(unsigned.clone(), claim(&unsigned))),
        "does not check",
    );
    fails(
        run(
            &mut l,
            &g,
            30,
            fraud(
                record.clone(),
                FraudClaim::Units {
                    recomputed: record.units,
                },
            ),
        ),
        "nothing differs",
    );
    fails(
        run(&mut l, &g, 30, fraud(record.clone(), FraudClaim::TeeProof)),
        "requires no TEE proof",
    );
    ok(run(&mut l, &g, 30, fraud(record.clone(), claim(&record))));
    let bps = g.params.slash_fraud_bps as u128;
    assert_eq!(l.account(&node).bonded, bonded - bonded * bps / 10_000);
    assert_eq!(l.pools().community, community + bonded * bps / 10_000);
    assert!(l.registry().nodes[&node].jailed_until.is_some());
    assert_eq!(l.registry().nodes[&node].slashes, 1);
    fails(
        run(&mut l, &g, 30, fraud(record.clone(), claim(&record))),
        "already punished",
    );
    let second = job(&g, 2, u128::MAX, 10);
    fails(
        run(&mut l, &g, 30, fraud(second.clone(), claim(&second))),
        "already jailed",
    );
    // Jailed: its records are left out of blocks and refused.
    let built = build_with(&l, &g, job(&g, 3, u128::MAX, 10));
    assert!(
        built.dropped_records[0].1.contains("jailed"),
        "{:?}",
        built.dropped_records
    );
    assert!(l.refuse_executor(&node, &g.models[0].id).is_some());
    // A record by someone who is not an inference node proves nothing against a node.
    let stranger = InferenceRecord::create(
        record.job.clone(),
        record.input.clone(),
        (B256::repeat_byte(9), record.units),
        Proof::Reexec,
        &key(77),
        &g.domain(),
    )
    .unwrap();
    fails(
        run(&mut l, &g, 30, fraud(stranger.clone(), claim(&stranger))),
        "not a registered inference node",
    );
}

/// A record of a `tee` model without a valid proof, signed by a registered node, is fraud the
/// chain checks by itself.
#[test]
fn a_tee_record_without_a_valid_proof_is_fraud() {
    use crate::attestation::Product;
    use crate::evidence::FraudClaim;
    let mut g = busy();
    g.tee = Some(crate::genesis::TeeParams {
        product: Some(Product::Milan),
        roots_pem: None,
        measurements: vec!["ab".repeat(48)],
        min_tcb: Default::default(),
    });
    g.models[0].mode = crate::VerificationMode::Tee;
    let mut l = Ledger::from_genesis(&g);
    let record = job(&g, 1, u128::MAX, 10);
    ok(run(&mut l, &g, 30, fraud(record, FraudClaim::TeeProof)));
    assert!(
        l.registry().nodes[&key(20).address()]
            .jailed_until
            .is_some()
    );
}

/// Every block after the first carries its parent's commit certificate: checked against the
/// set that decided the parent; who is in it is counted, and a validator that signs too few
/// of the last `downtime_window` blocks is jailed without a slash (it leaves the set at the
/// next epoch).
#[test]
fn blocks_carry_the_parent_certificate_and_absent_validators_are_jailed() {
    let mut g = busy();
    g.params.downtime_window = 4;
    g.params.downtime_min_signed_bps = 5_000;
    g.params.epoch_blocks = 20;
    let mut l = Ledger::from_genesis(&g);
    next(&mut l, &g, vec![], vec![]);
    let proposer = l.next_validators()[0].0;
    let good = l
        .build_block(&g, proposer, l.tip_time_ms + 1, vec![], vec![])
        .unwrap()
        .block;
    l.validate(&g, &good).unwrap();
    // No certificate, another block's, too few signers, or one the header does not name.
    let mut none = good.clone();
    none.last_commit = None;
    none.header.last_commit_hash = B256::ZERO;
    let mut other = good.clone();
    if let Some(c) = &mut other.last_commit {
        c.block_hash = B256::repeat_byte(1);
    }
    other.header.last_commit_hash = Block::last_commit_hash(other.last_commit.as_ref());
    let mut thin = good.clone();
    if let Some(c) = &mut thin.last_commit {
        c.votes.truncate(2);
    }
    thin.header.last_commit_hash = Block::last_commit_hash(thin.last_commit.as_ref());
    let mut unnamed = good.clone();
    unnamed.header.last_commit_hash = B256::repeat_byte(2);
    for (block, want) in [
        (none, "no commit certificate"),
        (other, "not the parent"),
        (thin, "certificate"),
        (unnamed, "not the one the header names"),
    ] {
        let e = l.execute(&g, &block).unwrap_err().to_string();
        assert!(e.contains(want), "{e} lacks {want}");
    }
    // Validator 3 stops signing: after the window fills with more than half missed, jailed.
    let absent = key(3).address();
    let mut jailed_at = None;
    for _ in 0..6 {
        let proposer = l.next_validators()[0].0;
        let built = l
            .build_block(&g, proposer, l.tip_time_ms + 1000, vec![], vec![])
            .unwrap();
        assert_eq!(l.validate(&g, &built.block).unwrap(), built.changes);
        l.commit(&built.changes);
        certify(&mut l, &g, &built.block, &[absent]);
        if !built.changes.downtime_jailed.is_empty() {
            assert_eq!(built.changes.downtime_jailed, vec![absent]);
            jailed_at = Some(l.height);
            break;
        }
    }
    let at = jailed_at.expect("never jailed");
    assert!(l.registry().validators[&absent].jailed_until.is_some());
    assert_eq!(l.registry().validators[&absent].slashes, 0, "no slash");
    assert_eq!(l.account(&absent).bonded, 1_000_000 * OPG);
    // The others signed every block: not jailed.
    assert!((0..3).all(|i| {
        l.registry().validators[&key(i).address()]
            .jailed_until
            .is_none()
    }));
    assert!(at >= 4, "not before the window is full");
    to_next_epoch(&mut l, &g);
    assert!(!in_set(&l, &absent));
}

/// Every `anchor_interval` blocks the header carries the roots of every record since the
/// previous anchor height (zero elsewhere), and always the hash of the set deciding the next
/// height; a validator refuses a header that says otherwise.
#[test]
fn headers_derive_anchor_roots_and_the_next_set() {
    let mut g = busy();
    g.params.anchor_interval = 3;
    let mut l = Ledger::from_genesis(&g);
    let domain = g.domain();
    let mut leaves = Vec::new();
    for n in 1..=4u64 {
        let record = job(&g, n, u128::MAX, 10);
        leaves.push(record.leaf(&domain));
        let proposer = l.next_validators()[0].0;
        let built = l
            .build_block(
                &g,
                proposer,
                l.tip_time_ms + 1000,
                verified(&g, vec![record]),
                vec![],
            )
            .unwrap();
        let h = &built.block.header;
        if n == 3 {
            assert_eq!(h.anchor_records_root, crate::merkle::root(&leaves[..3]));
            assert_ne!(h.anchor_records_root, B256::ZERO);
            assert_eq!(h.anchor_withdrawals_root, B256::ZERO);
        } else {
            assert_eq!(h.anchor_records_root, B256::ZERO, "height {n}");
        }
        // Each derived field, changed, makes the block invalid.
        for edit in [
            |h: &mut BlockHeader| h.next_validators_hash = B256::repeat_byte(7),
            |h: &mut BlockHeader| h.anchor_records_root = B256::repeat_byte(7),
            |h: &mut BlockHeader| h.anchor_withdrawals_root = B256::repeat_byte(7),
        ] {
            let mut bad = built.block.clone();
            edit(&mut bad.header);
            let e = l.validate(&g, &bad).unwrap_err().to_string();
            assert!(e.contains("differs from the computed"), "{e}");
        }
        assert_eq!(l.validate(&g, &built.block).unwrap(), built.changes);
        l.commit(&built.changes);
        certify(&mut l, &g, &built.block, &[]);
        // The set that decides the next height.
        assert_eq!(
            built.block.header.next_validators_hash,
            crate::block::validator_set_hash(l.next_validators())
        );
        // After the anchor height the accumulator starts again.
        let waiting = if n < 3 { n as usize } else { n as usize - 3 };
        assert_eq!(l.anchor_leaves().records.len(), waiting);
    }
}

/// The sample genesis with `reserve` of the ecosystem account's tokens in the bridge reserve
/// (circulating on the EVM instead).
fn bridged(reserve: u128) -> Genesis {
    let mut g = quiet();
    let eco = g
        .accounts
        .iter_mut()
        .find(|a| a.label == "ecosystem")
        .unwrap();
    eco.balance -= reserve;
    g.pools.bridge_reserve = reserve;
    g.params.anchor_interval = 4;
    g
}

/// Deposits are credited by active validators from the reserve, in id order and once each;
/// a withdrawal moves the sender's tokens into the reserve and its leaf into the next
/// anchor's withdrawals root. The supply (reserve included) never changes.
#[test]
fn the_bridge_credits_deposits_once_in_order_and_takes_withdrawals() {
    let g = bridged(1_000 * OPG);
    let mut l = Ledger::from_genesis(&g);
    let validator = 0;
    assert!(in_set(&l, &key(validator).address()));
    let alice = key(11);
    let deposit = |id, amount| Action::BridgeDeposit {
        id,
        from: Address::repeat_byte(0xe0),
        recipient: alice.address(),
        amount,
    };
    ok(run(&mut l, &g, validator, deposit(0, 10 * OPG)));
    assert_eq!(l.account(&alice.address()).balance, 10 * OPG);
    assert_eq!(l.pools().bridge_reserve, 990 * OPG);
    assert_eq!(l.pools().bridge_deposits_credited, 1);
    assert_eq!(l.total_supply(), TOTAL_SUPPLY);
    // Once, in order, by validators, within the reserve.
    fails(
        run(&mut l, &g, validator, deposit(0, 10 * OPG)),
        "not the next to credit (1)",
    );
    fails(
        run(&mut l, &g, validator, deposit(2, OPG)),
        "not the next to credit (1)",
    );
    fails(
        run(&mut l, &g, 10, deposit(1, OPG)),
        "not an active validator",
    );
    fails(
        run(&mut l, &g, validator, deposit(1, 991 * OPG)),
        "exceeds the bridge reserve",
    );
    assert_eq!(l.pools().bridge_deposits_credited, 1);
    assert_eq!(l.account(&alice.address()).balance, 10 * OPG);

    // Alice withdraws 4 OPG to an EVM address.
    let evm = Address::repeat_byte(0xee);
    let withdraw = |amount| Action::BridgeWithdraw {
        recipient: evm,
        amount,
    };
    fails(run(&mut l, &g, 11, withdraw(11 * OPG)), "for 11");
    let t = tx(&l, &g, 11, withdraw(4 * OPG));
    let hash = t.hash(&g.domain());
    let c = next(&mut l, &g, vec![], vec![t]);
    assert!(c.txs[0].ok, "{:?}", c.txs[0].reason);
    assert_eq!(l.account(&alice.address()).balance, 6 * OPG);
    assert_eq!(l.pools().bridge_reserve, 994 * OPG);
    assert_eq!(l.total_supply(), TOTAL_SUPPLY);
    let leaf = withdrawal_leaf(hash, evm, 4 * OPG);
    assert_eq!(l.anchor_leaves().withdrawals, vec![leaf]);
    // The anchor height's header carries it.
    let mut last = None;
    while !l.height.is_multiple_of(g.params.anchor_interval) {
        let proposer = l.next_validators()[0].0;
        let built = l
            .build_block(&g, proposer, l.tip_time_ms + 1000, vec![], vec![])
            .unwrap();
        l.commit(&built.changes);
        certify(&mut l, &g, &built.block, &[]);
        last = Some(built.block.header);
    }
    let header = last.unwrap();
    assert_eq!(header.anchor_withdrawals_root, crate::merkle::root(&[leaf]));
    assert!(l.anchor_leaves().withdrawals.is_empty());
}

/// The genesis must account for the reserve: the supply counts it.
#[test]
fn the_bridge_reserve_is_part_of_the_genesis_supply() {
    let mut g = bridged(5 * OPG);
    g.validate().unwrap();
    g.pools.bridge_reserve += 1;
    let e = g.validate().unwrap_err().to_string();
    assert!(e.contains("the supply is"), "{e}");
    // Shape: no zero deposits or withdrawals, no zero recipient.
    let l = Ledger::from_genesis(&bridged(5 * OPG));
    let g = bridged(5 * OPG);
    for (action, want) in [
        (
            Action::BridgeWithdraw {
                recipient: Address::ZERO,
                amount: 1,
            },
            "zero address",
        ),
        (
            Action::BridgeWithdraw {
                recipient: Address::repeat_byte(1),
                amount: 0,
            },
            "amount",
        ),
    ] {
        let e = tx(&l, &g, 11, action).verify(&g.domain()).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

/// A job bought through an API grant of client 10 (delegate key 40), signed by `delegate`.
fn granted_job(
    g: &Genesis,
    grant: &crate::record::SignedGrant,
    delegate: &PrivateKeySigner,
    nonce: u64,
) -> InferenceRecord {
    let input = format!("{{\"granted\":{nonce}}}");
    let req = JobRequest {
        client: grant.grant.client,
        model_id: g.models[0].id,
        input_hash: keccak256(input.as_bytes()),
        max_fee: u128::MAX,
        nonce,
        expiry: 4_000_000_000,
    };
    let units = input.len() as u64;
    InferenceRecord::create(
        req.sign_granted(delegate, grant.clone(), &g.domain())
            .unwrap(),
        input,
        (B256::repeat_byte(3), units),
        Proof::Reexec,
        &key(20),
        &g.domain(),
    )
    .unwrap()
}

fn grant(g: &Genesis, cap: u128, expiry: u64) -> crate::record::SignedGrant {
    crate::record::ApiGrant {
        client: key(10).address(),
        delegate: key(40).address(),
        cap,
        expiry,
        models: vec![],
    }
    .sign(&key(10), &g.domain())
    .unwrap()
}

/// Jobs bought through an API grant are charged to the grant's client; the ledger counts what
/// the grant spent and refuses (at no cost) a job past its cap or after its expiry.
#[test]
fn api_grants_spend_up_to_their_cap_until_they_expire() {
    let g = quiet();
    let mut l = Ledger::from_genesis(&g);
    let price = g.models[0].price_per_job;
    let client = key(10).address();
    let before = l.account(&client).balance;
    let expiry = l.tip_time_ms / 1000 + 10;
    let grant = grant(&g, 2 * price + price / 2, expiry);
    let id = grant.grant.id(&g.domain());
    let delegate = key(40);
    let c = next(
        &mut l,
        &g,
        vec![
            granted_job(&g, &grant, &delegate, 1),
            granted_job(&g, &grant, &delegate, 2),
            granted_job(&g, &grant, &delegate, 3),
        ],
        vec![],
    );
    let status: Vec<_> = c.jobs.iter().map(|j| j.status).collect();
    assert_eq!(
        status,
        [
            JobStatus::Finalized,
            JobStatus::Finalized,
            JobStatus::Failed
        ]
    );
    let reason = c.jobs[2].reason.clone().unwrap();
    assert!(reason.contains("cap"), "{reason}");
    assert_eq!(c.grants, vec![(id, 2 * price)]);
    assert_eq!(l.grant_spent(&id), 2 * price);
    assert_eq!(l.account(&client).balance, before - 2 * price);
    // A second grant of the same client has a cap of its own.
    let mut other = grant.grant.clone();
    other.cap = price;
    let other = other.sign(&key(10), &g.domain()).unwrap();
    let c = next(
        &mut l,
        &g,
        vec![granted_job(&g, &other, &delegate, 4)],
        vec![],
    );
    assert_eq!(c.jobs[0].status, JobStatus::Finalized);
    assert_eq!(l.grant_spent(&id), 2 * price);
    // Past its expiry (block time), the grant buys nothing.
    let late = l.tip_time_ms + 20_000;
    let c = next_at(
        &mut l,
        &g,
        late,
        vec![granted_job(&g, &other, &delegate, 5)],
        vec![],
    );
    assert_eq!(c.jobs[0].status, JobStatus::Failed);
    assert!(c.jobs[0].reason.as_ref().unwrap().contains("expired"));
    assert_eq!(l.account(&client).balance, before - 3 * price);
    assert_eq!(l.total_supply(), TOTAL_SUPPLY);
}

/// A grant signed by someone else than its client, a job signed by a key other than the
/// delegate, a model outside the grant's list, a grant of another client, or a grant and a
/// payment at once: the record's authorization is invalid, so no block may carry it.
#[test]
fn forged_or_misused_grants_are_invalid() {
    let g = quiet();
    let domain = g.domain();
    let delegate = key(40);
    let good = grant(&g, u128::MAX, 4_000_000_000);
    assert!(
        granted_job(&g, &good, &delegate, 1)
            .verify_signatures(&domain)
            .is_ok()
    );
    let forged = good.grant.clone().sign(&key(11), &domain).unwrap();
    let wrong_delegate = granted_job(&g, &good, &key(41), 2);
    let mut other_model = good.grant.clone();
    other_model.models = vec![ModelId([9; 32])];
    let other_model = other_model.sign(&key(10), &domain).unwrap();
    let mut too_many = good.grant.clone();
    too_many.models = vec![g.models[0].id; crate::record::MAX_GRANT_MODELS + 1];
    let too_many = too_many.sign(&key(10), &domain).unwrap();
    let mut not_the_client = granted_job(&g, &good, &delegate, 3);
    not_the_client.job.request.client = key(11).address();
    let mut with_payment = granted_job(&g, &good, &delegate, 4);
    with_payment.job.payment = Some(crate::record::Payment {
        value: 1,
        valid_after: 0,
        valid_before: u64::MAX,
    });
    for (what, record, want) in [
        (
            "forged grant",
            granted_job(&g, &forged, &delegate, 5),
            "signature",
        ),
        ("wrong delegate", wrong_delegate, "signature"),
        (
            "model not granted",
            granted_job(&g, &other_model, &delegate, 6),
            "grant.models",
        ),
        (
            "too many models",
            granted_job(&g, &too_many, &delegate, 7),
            "grant.models",
        ),
        ("another client", not_the_client, "grant.client"),
        ("grant and payment", with_payment, "not both"),
    ] {
        let err = record.verify_signatures(&domain).unwrap_err().to_string();
        assert!(err.contains(want), "{what}: {err}");
    }
}

/// What grants spent is part of the state root: two ledgers that differ only in it differ.
#[test]
fn the_state_root_covers_grant_spending() {
    let g = quiet();
    let mut a = Ledger::from_genesis(&g);
    let mut b = Ledger::from_genesis(&g);
    let price = g.models[0].price_per_job;
    let delegate = key(40);
    let one = grant(&g, u128::MAX, 4_000_000_000);
    let mut two = one.grant.clone();
    two.cap = u128::MAX - 1;
    let two = two.sign(&key(10), &g.domain()).unwrap();
    let ca = next(
        &mut a,
        &g,
        vec![granted_job(&g, &one, &delegate, 1)],
        vec![],
    );
    let cb = next(
        &mut b,
        &g,
        vec![granted_job(&g, &two, &delegate, 1)],
        vec![],
    );
    assert_eq!(ca.jobs[0].fee, price);
    assert_eq!(cb.jobs[0].fee, price);
    assert_ne!(a.state_root(), b.state_root());
}
