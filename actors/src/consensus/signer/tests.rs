//! The crash harness: one validator (the real consensus core and [`Signer`]) is killed at every
//! output boundary of a height (after each WAL write, after each publish), restarted from its
//! WAL, and fed the height again; across the runs no (height, round) may carry two different
//! proposals or votes of one kind signed by it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use chain::consensus::{
    Consensus as Core, Input, Proposal as CoreProposal, Step, TimeoutConfig, ValidatorSet,
    Vote as CoreVote, VoteType,
};
use chain::signing::seeded_key;
use chain::{Address, B256, Block, BlockHeader};

use super::*;

const CHAIN: chain::signing::Domain = chain::signing::Domain {
    chain_id: 31,
    salt: chain::B256::ZERO,
    payments: None,
};
const HEIGHT: Height = 1;

/// A WAL in memory that outlives the node using it (the "disk"). `forgetful` loses everything
/// at a restart, as a node without a WAL would; `fail` refuses every write.
#[derive(Clone, Default)]
struct MemWal {
    disk: Rc<RefCell<Option<SignedState>>>,
    forgetful: bool,
    fail: bool,
}

impl Wal for MemWal {
    fn load(&self) -> Result<Option<SignedState>, String> {
        if self.forgetful {
            return Ok(None);
        }
        Ok(self.disk.borrow().clone())
    }

    fn save(&mut self, state: &SignedState) -> Result<(), String> {
        if self.fail {
            return Err("no space left on device".into());
        }
        *self.disk.borrow_mut() = Some(state.clone());
        Ok(())
    }
}

fn validators() -> Vec<chain::PrivateKeySigner> {
    (0..4).map(|i| seeded_key(77, i)).collect()
}

fn set() -> ValidatorSet<Address> {
    ValidatorSet::new(validators().iter().map(|k| (k.address(), 10)).collect())
}

fn block(stamp: u64) -> Block {
    Block {
        header: BlockHeader {
            height: HEIGHT,
            parent: B256::ZERO,
            proposer: Address::ZERO,
            timestamp_ms: stamp,
            records_root: B256::ZERO,
            txs_root: B256::ZERO,
            state_root: B256::ZERO,
            last_commit_hash: Default::default(),
            next_validators_hash: Default::default(),
            anchor_records_root: Default::default(),
            anchor_withdrawals_root: Default::default(),
        },
        records: Vec::new(),
        txs: Vec::new(),
        last_commit: None,
    }
}

/// The validator under test: core, signer and the blocks it holds.
struct Node {
    core: Core<Address, B256>,
    signer: Signer<MemWal>,
    blocks: HashMap<B256, Arc<Block>>,
}

struct Crash;

/// Drives nodes through the same calls the actor makes, counting output boundaries.
#[derive(Default)]
struct Harness {
    /// Boundaries passed so far in this harness (over all runs).
    boundaries: usize,
    crash_at: Option<usize>,
    /// Everything signed (so possibly seen by others), over all runs.
    signed: Vec<ConsensusMsg>,
    /// Blocks built: each build gives a new block, as a real builder would after a restart
    /// (new mempool contents, new clock).
    built: u64,
    decided: Option<B256>,
    refused: usize,
}

impl Harness {
    fn boundary(&mut self) -> Result<(), Crash> {
        self.boundaries += 1;
        if Some(self.boundaries) == self.crash_at {
            return Err(Crash);
        }
        Ok(())
    }

    fn start(&mut self, wal: MemWal, me: &chain::PrivateKeySigner) -> Result<Node, Crash> {
        let signer = Signer::open(wal, Arc::new(me.clone()), CHAIN).unwrap();
        let mut node = Node {
            core: Core::new(Some(me.address()), set(), TimeoutConfig::default()),
            signer,
            blocks: HashMap::new(),
        };
        let mut outs = node.core.handle(Input::StartHeight(HEIGHT));
        let (restored, blocks) = node.signer.restore_core(&mut node.core, HEIGHT);
        outs.extend(restored);
        for b in blocks {
            node.blocks.insert(b.hash(), b);
        }
        self.apply(&mut node, outs)?;
        Ok(node)
    }

    fn feed(&mut self, node: &mut Node, input: Input<Address, B256>) -> Result<(), Crash> {
        let outs = node.core.handle(input);
        self.apply(node, outs)
    }

    fn apply(&mut self, node: &mut Node, outs: Vec<Output<Address, B256>>) -> Result<(), Crash> {
        let mut queue: std::collections::VecDeque<_> = outs.into();
        while let Some(out) = queue.pop_front() {
            match &out {
                Output::RequestValue { height, round } => {
                    let block = node
                        .signer
                        .repeat_proposal(*height, *round)
                        .unwrap_or_else(|| {
                            self.built += 1;
                            Arc::new(block(1_000 + self.built))
                        });
                    let value = block.hash();
                    node.blocks.insert(value, block);
                    queue.extend(node.core.handle(Input::ProposeValue {
                        height: *height,
                        round: *round,
                        value,
                    }));
                }
                Output::Decide { value, .. } => self.decided = Some(*value),
                _ => {
                    let lock = lock_of(&node.core);
                    let blocks = |h: &B256| node.blocks.get(h).cloned();
                    match node.signer.sign_output(&out, lock, &blocks) {
                        None => {}
                        Some(Err(SignError::Conflict { .. })) => self.refused += 1,
                        Some(Err(e)) => panic!("{e}"),
                        Some(Ok(msg)) => {
                            self.signed.push(msg);
                            self.boundary()?; // crashed after the WAL write, before publishing
                            self.boundary()?; // crashed after publishing
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The height as the rest of the network plays it. Round 0: the node under test proposes;
    /// two validators prevote its block, then everyone else precommits nil (it has locked on
    /// its block). Round 1: another validator proposes C, and also D (it equivocates); three
    /// prevote C and two precommit it, which decides C with our precommit.
    fn script(
        &mut self,
        node: &mut Node,
        others: &[Address],
        c: B256,
        d: B256,
    ) -> Result<(), Crash> {
        let vote = |validator, round, vote_type, value| {
            Input::Vote(CoreVote {
                height: HEIGHT,
                round,
                vote_type,
                value,
                validator,
            })
        };
        let ours = node.signer.state_at(HEIGHT).and_then(|s| s.proposal(0));
        for v in &others[..2] {
            self.feed(node, vote(*v, 0, VoteType::Prevote, ours))?;
        }
        for v in others {
            self.feed(node, vote(*v, 0, VoteType::Precommit, None))?;
        }
        self.feed(
            node,
            Input::Timeout {
                height: HEIGHT,
                round: 0,
                step: Step::Precommit,
            },
        )?;
        let proposer = *set().proposer(HEIGHT, 1).unwrap();
        for value in [c, d] {
            self.feed(
                node,
                Input::Proposal {
                    proposal: CoreProposal {
                        height: HEIGHT,
                        round: 1,
                        value,
                        pol_round: None,
                        proposer,
                    },
                    valid: true,
                },
            )?;
        }
        self.feed(
            node,
            Input::Timeout {
                height: HEIGHT,
                round: 1,
                step: Step::Propose,
            },
        )?;
        for v in others {
            self.feed(node, vote(*v, 1, VoteType::Prevote, Some(c)))?;
        }
        for v in &others[..2] {
            self.feed(node, vote(*v, 1, VoteType::Precommit, Some(c)))?;
        }
        Ok(())
    }

    /// Runs the height; if it crashes, restarts from the WAL and runs the height again.
    fn run(&mut self, wal: MemWal) {
        let keys = validators();
        let me = keys
            .iter()
            .find(|k| set().proposer(HEIGHT, 0) == Some(&k.address()))
            .unwrap()
            .clone();
        let others: Vec<Address> = keys
            .iter()
            .map(|k| k.address())
            .filter(|a| *a != me.address())
            .collect();
        let (c, d) = (block(7).hash(), block(8).hash());
        let first = self
            .start(wal.clone(), &me)
            .and_then(|mut node| self.script(&mut node, &others, c, d));
        if first.is_err() {
            self.crash_at = None;
            let mut node = self.start(wal, &me).ok().unwrap();
            let _ = self.script(&mut node, &others, c, d);
        }
    }

    /// Pairs of different messages signed for the same (round, kind) or proposal round.
    fn double_signs(&self) -> Vec<String> {
        let mut seen: BTreeMap<(u32, &'static str), B256> = BTreeMap::new();
        let mut out = Vec::new();
        for msg in &self.signed {
            let (key, value) = match msg {
                ConsensusMsg::Proposal { proposal, .. } => (
                    (proposal.proposal.round, "proposal"),
                    proposal.proposal.block_hash,
                ),
                ConsensusMsg::Vote(v) => (
                    (
                        v.vote.round,
                        match v.vote.kind {
                            VoteKind::Prevote => "prevote",
                            VoteKind::Precommit => "precommit",
                        },
                    ),
                    v.vote.block.unwrap_or(B256::ZERO),
                ),
                ConsensusMsg::Status { .. } | ConsensusMsg::Evidence(_) => continue,
            };
            match seen.get(&key) {
                Some(prev) if *prev != value => out.push(format!("{key:?}: {prev} and {value}")),
                _ => {
                    seen.insert(key, value);
                }
            }
        }
        out
    }
}

#[test]
fn a_crash_at_any_output_boundary_never_double_signs() {
    // The height without a crash: how many boundaries there are, and that it decides C.
    let mut clean = Harness::default();
    clean.run(MemWal::default());
    let c = block(7).hash();
    assert_eq!(clean.decided, Some(c));
    assert!(clean.double_signs().is_empty());
    let total = clean.boundaries;
    assert!(
        total >= 10,
        "only {total} boundaries: the script signs too little"
    );

    for crash_at in 1..=total {
        let mut h = Harness {
            crash_at: Some(crash_at),
            ..Harness::default()
        };
        h.run(MemWal::default());
        assert_eq!(
            h.double_signs(),
            Vec::<String>::new(),
            "crash at boundary {crash_at} of {total}"
        );
        assert_eq!(
            h.decided,
            Some(c),
            "crash at boundary {crash_at}: the restarted node did not decide"
        );
    }
}

/// The harness can fail: a node that forgets what it signed proposes another block in the
/// round it already proposed in after a restart, and votes again.
#[test]
fn without_the_wal_a_crash_double_signs() {
    let total = {
        let mut clean = Harness::default();
        clean.run(MemWal::default());
        clean.boundaries
    };
    let caught = (1..=total).filter(|crash_at| {
        let mut h = Harness {
            crash_at: Some(*crash_at),
            ..Harness::default()
        };
        h.run(MemWal {
            forgetful: true,
            ..MemWal::default()
        });
        !h.double_signs().is_empty()
    });
    assert!(caught.count() > 0);
}

#[test]
fn a_failed_wal_write_signs_nothing() {
    let me = validators()[0].clone();
    let wal = MemWal {
        fail: true,
        ..MemWal::default()
    };
    let mut signer = Signer::open(wal.clone(), Arc::new(me.clone()), CHAIN).unwrap();
    let vote = chain::consensus::Vote {
        height: HEIGHT,
        round: 0,
        vote_type: VoteType::Prevote,
        value: None,
        validator: me.address(),
    };
    let out = signer.sign_output(&Output::Vote(vote), (None, None), &|_| None);
    assert!(matches!(out, Some(Err(SignError::Wal(_)))), "{out:?}");
    assert!(signer.state_at(HEIGHT).is_none());
    assert!(wal.disk.borrow().is_none());
}

#[test]
fn the_signer_refuses_conflicts_itself_and_repeats_its_proposal() {
    let me = validators()[0].clone();
    let wal = MemWal::default();
    let mut signer = Signer::open(wal.clone(), Arc::new(me.clone()), CHAIN).unwrap();
    let (a, b) = (Arc::new(block(1)), Arc::new(block(2)));
    let proposal = |blk: &Block, round| Proposal {
        height: HEIGHT,
        round,
        block_hash: blk.hash(),
        pol_round: None,
        proposer: me.address(),
    };
    signer
        .sign_proposal(proposal(&a, 0), &a, (None, None))
        .unwrap();
    // Again, same block: fine (a restart re-sends it). Another block: refused.
    signer
        .sign_proposal(proposal(&a, 0), &a, (None, None))
        .unwrap();
    assert!(matches!(
        signer.sign_proposal(proposal(&b, 0), &b, (None, None)),
        Err(SignError::Conflict { .. })
    ));
    signer
        .sign_proposal(proposal(&b, 1), &b, (None, None))
        .unwrap();
    let vote = |round, value| Vote {
        height: HEIGHT,
        round,
        kind: VoteKind::Precommit,
        block: value,
        validator: me.address(),
    };
    let lock = (Some((a.hash(), 0)), Some((a.hash(), 0)));
    signer
        .sign_vote(vote(0, Some(a.hash())), lock, &|_| None)
        .unwrap();
    assert!(matches!(
        signer.sign_vote(vote(0, None), lock, &|_| None),
        Err(SignError::Conflict { .. })
    ));
    // Reopened from the same WAL: the same refusals, and the round-0 block comes back.
    let mut reopened = Signer::open(wal, Arc::new(me.clone()), CHAIN).unwrap();
    assert_eq!(reopened.repeat_proposal(HEIGHT, 0), Some(a.clone()));
    assert_eq!(reopened.repeat_proposal(HEIGHT, 1), Some(b.clone()));
    assert_eq!(reopened.repeat_proposal(HEIGHT, 2), None);
    assert!(matches!(
        reopened.sign_vote(vote(0, Some(b.hash())), lock, &|_| None),
        Err(SignError::Conflict { .. })
    ));
    // A lower height is never signed again; a higher one starts afresh.
    assert!(matches!(
        reopened.sign_vote(
            Vote {
                height: 0,
                ..vote(0, None)
            },
            lock,
            &|_| None
        ),
        Err(SignError::Stale { .. })
    ));
    reopened
        .sign_vote(
            Vote {
                height: HEIGHT + 1,
                ..vote(0, None)
            },
            (None, None),
            &|_| None,
        )
        .unwrap();
    assert_eq!(reopened.repeat_proposal(HEIGHT, 0), None);
}
