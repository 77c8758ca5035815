//! The consensus core on a deterministic simulated network: virtual time, seeded message
//! delays and reordering, crashed and equivocating validators, dropped messages.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};

use super::*;

type V = u8;
type Val = u64;
type Core = Consensus<V, Val>;
/// (delivery time, sequence, to, from, input)
type Event = Reverse<(u64, u64, usize, usize, Wrapped)>;
/// (who saw it, first vote, second vote)
type Evidence = (usize, Vote<V, Val>, Vote<V, Val>);
/// A decider's commit certificate: (round, value, the precommits that decided it).
type Certificate = (Round, Val, Vec<Vote<V, Val>>);
/// Whether to drop a message (time sent, from, to, input).
type DropRule = Box<dyn Fn(u64, usize, usize, &Input<V, Val>) -> bool>;

fn timeouts() -> TimeoutConfig {
    TimeoutConfig {
        propose: Duration::from_millis(100),
        prevote: Duration::from_millis(50),
        precommit: Duration::from_millis(50),
        delta: Duration::from_millis(50),
    }
}

/// A tiny deterministic PRNG (splitmix64) so every run of a seed is the same.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    Crashed,
    /// Also sends a conflicting vote to the odd-numbered nodes.
    Equivocating,
    /// Proposes two real values when it is the proposer (one to the even-numbered nodes, one to
    /// the odd-numbered ones), and besides its own votes sends the odd-numbered nodes votes for
    /// every other value really proposed in that round: the attacks that can threaten safety.
    Byzantine,
}

struct Sim {
    nodes: Vec<Core>,
    behaviour: Vec<Behaviour>,
    /// (time, seq) → (to, from, input)
    queue: BinaryHeap<Event>,
    now: u64,
    seq: u64,
    rng: Rng,
    max_delay: u64,
    height: Height,
    decisions: BTreeMap<usize, (Round, Val)>,
    equivocations: Vec<Evidence>,
    invalid: HashSet<Val>,
    /// Drops a message from → to when it returns true.
    drop: DropRule,
    delivered: u64,
    /// Every proposal and vote broadcast, for re-gossip after a partition heals.
    sent: Vec<(usize, Input<V, Val>)>,
    /// Nodes that took the decision from a peer (sync) rather than deciding it themselves.
    synced: HashSet<usize>,
    /// Every value really proposed, per (height, round).
    proposed: BTreeMap<(Height, Round), Vec<Val>>,
    /// Each decider's commit certificate: (round, value, the precommits that decided it).
    certificates: BTreeMap<usize, Certificate>,
}

/// `Input` wrapped with a total order so it can sit in the heap (ties broken by `seq`).
#[derive(Clone, PartialEq, Eq)]
struct Wrapped(Input<V, Val>);
impl PartialOrd for Wrapped {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wrapped {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Sim {
    fn new(powers: &[u64], behaviour: Vec<Behaviour>, seed: u64) -> Sim {
        let set = ValidatorSet::new(
            powers
                .iter()
                .enumerate()
                .map(|(i, p)| (i as V, *p))
                .collect(),
        );
        let nodes = (0..powers.len())
            .map(|i| Core::new(Some(i as V), set.clone(), timeouts()))
            .collect();
        Sim {
            nodes,
            behaviour,
            queue: BinaryHeap::new(),
            now: 0,
            seq: 0,
            rng: Rng(seed),
            max_delay: 20,
            height: 1,
            decisions: BTreeMap::new(),
            equivocations: Vec::new(),
            invalid: HashSet::new(),
            drop: Box::new(|_, _, _, _| false),
            delivered: 0,
            sent: Vec::new(),
            synced: HashSet::new(),
            proposed: BTreeMap::new(),
            certificates: BTreeMap::new(),
        }
    }

    fn honest(n: usize) -> Sim {
        Sim::new(&vec![1; n], vec![Behaviour::Honest; n], 7)
    }

    fn value(height: Height, round: Round, proposer: usize) -> Val {
        height * 10_000 + u64::from(round) * 100 + proposer as u64
    }

    fn push(&mut self, at: u64, from: usize, to: usize, input: Input<V, Val>) {
        if (self.drop)(self.now, from, to, &input) {
            return;
        }
        self.seq += 1;
        self.queue
            .push(Reverse((at, self.seq, to, from, Wrapped(input))));
    }

    fn broadcast(&mut self, from: usize, make: impl Fn(usize) -> Input<V, Val>) {
        self.sent.push((from, make(0)));
        for to in 0..self.nodes.len() {
            if to != from {
                let delay = 1 + self.rng.below(self.max_delay);
                self.push(self.now + delay, from, to, make(to));
            }
        }
    }

    fn apply(&mut self, i: usize, outs: Vec<Output<V, Val>>) {
        for out in outs {
            match out {
                Output::RequestValue { height, round } => {
                    let value = Sim::value(height, round, i);
                    self.push(
                        self.now + 1,
                        i,
                        i,
                        Input::ProposeValue {
                            height,
                            round,
                            value,
                        },
                    );
                }
                Output::Proposal(p) if self.behaviour[i] == Behaviour::Byzantine => {
                    let twin = Proposal {
                        value: p.value + 5_000,
                        ..p.clone()
                    };
                    let values = self.proposed.entry((p.height, p.round)).or_default();
                    values.extend([p.value, twin.value]);
                    self.broadcast(i, |to| Input::Proposal {
                        proposal: if to % 2 == 0 { p.clone() } else { twin.clone() },
                        valid: true,
                    });
                }
                Output::Proposal(p) => {
                    self.proposed
                        .entry((p.height, p.round))
                        .or_default()
                        .push(p.value);
                    let valid = !self.invalid.contains(&p.value);
                    self.broadcast(i, |_| Input::Proposal {
                        proposal: p.clone(),
                        valid,
                    });
                }
                Output::Vote(v) if self.behaviour[i] == Behaviour::Byzantine => {
                    self.broadcast(i, |_| Input::Vote(v.clone()));
                    let others: Vec<Val> = self
                        .proposed
                        .get(&(v.height, v.round))
                        .map(|vals| {
                            vals.iter()
                                .copied()
                                .filter(|x| Some(*x) != v.value)
                                .collect()
                        })
                        .unwrap_or_default();
                    let n = self.nodes.len();
                    for value in others {
                        let conflicting = Vote {
                            value: Some(value),
                            ..v.clone()
                        };
                        let delay = 1 + self.rng.below(self.max_delay);
                        for to in (1..n).step_by(2).filter(|to| *to != i) {
                            self.push(self.now + delay, i, to, Input::Vote(conflicting.clone()));
                        }
                    }
                }
                Output::Vote(v) => {
                    if self.behaviour[i] == Behaviour::Equivocating {
                        let other = Vote {
                            value: Some(v.value.map_or(1, |x| x + 1)),
                            ..v.clone()
                        };
                        // Everyone gets the real vote; the odd-numbered nodes also get the other.
                        self.broadcast(i, |_| Input::Vote(v.clone()));
                        let (n, delay) = (self.nodes.len(), 1 + self.rng.below(self.max_delay));
                        for to in (1..n).step_by(2).filter(|to| *to != i) {
                            self.push(self.now + delay, i, to, Input::Vote(other.clone()));
                        }
                    } else {
                        self.broadcast(i, |_| Input::Vote(v.clone()));
                    }
                }
                Output::ScheduleTimeout {
                    height,
                    round,
                    step,
                    duration,
                } => {
                    let at = self.now + duration.as_millis() as u64;
                    self.push(
                        at,
                        i,
                        i,
                        Input::Timeout {
                            height,
                            round,
                            step,
                        },
                    );
                }
                Output::Decide {
                    round,
                    value,
                    commits,
                    height,
                } => {
                    assert_eq!(height, self.height);
                    assert!(
                        self.nodes[i].validators().is_quorum(
                            commits
                                .iter()
                                .map(|c| u128::from(
                                    self.nodes[i].validators().power(&c.validator).unwrap_or(0)
                                ))
                                .sum()
                        )
                    );
                    assert!(
                        commits
                            .iter()
                            .all(|c| c.value == Some(value) && c.round == round)
                    );
                    self.decisions.insert(i, (round, value));
                    self.certificates.insert(i, (round, value, commits));
                }
                Output::Equivocation { first, second } => {
                    self.equivocations.push((i, first, second))
                }
            }
        }
    }

    fn start(&mut self) {
        for i in 0..self.nodes.len() {
            if self.behaviour[i] != Behaviour::Crashed {
                let outs = self.nodes[i].handle(Input::StartHeight(self.height));
                self.apply(i, outs);
            }
        }
    }

    /// The next event due by `until` ms, if any; later ones stay queued.
    fn next_by(&mut self, until: u64) -> Option<(u64, usize, Input<V, Val>)> {
        if self
            .queue
            .peek()
            .is_none_or(|Reverse((at, ..))| *at > until)
        {
            return None;
        }
        let Reverse((at, _, to, _, Wrapped(input))) = self.queue.pop()?;
        Some((at, to, input))
    }

    fn all_live_decided(&self) -> bool {
        (0..self.nodes.len())
            .filter(|i| self.behaviour[*i] != Behaviour::Crashed)
            .all(|i| self.decisions.contains_key(&i))
    }

    /// Runs until every non-crashed node decided or virtual time passes `until` ms.
    fn run(&mut self, until: u64) {
        while let Some((at, to, input)) = self.next_by(until) {
            self.now = at;
            if self.behaviour[to] == Behaviour::Crashed {
                continue;
            }
            self.delivered += 1;
            let outs = self.nodes[to].handle(input);
            self.apply(to, outs);
            if self.all_live_decided() {
                break;
            }
        }
    }

    /// Like [`Sim::run`], with the node's heartbeat: every `every` ms each live node calls
    /// [`Consensus::heartbeat`] and broadcasts the votes it returns again. A node that has not
    /// decided when another has syncs the decision from it, as the node does when a peer's
    /// status shows a higher height (deciders move on and stop voting at this height).
    fn run_with_heartbeat(&mut self, until: u64, every: u64) {
        let mut next = (self.now / every + 1) * every;
        while !self.all_live_decided() && next <= until {
            self.run(next);
            if self.all_live_decided() {
                break;
            }
            self.now = next;
            let live: Vec<usize> = (0..self.nodes.len())
                .filter(|i| self.behaviour[*i] != Behaviour::Crashed)
                .collect();
            self.sync_from_certificates(&live);
            for i in live {
                if !self.decisions.contains_key(&i) {
                    for v in self.nodes[i].heartbeat() {
                        self.broadcast(i, |_| Input::Vote(v.clone()));
                    }
                }
            }
            next += every;
        }
    }

    /// Block sync, as the node does when a peer's status shows it is behind: a decider sends
    /// the block and its commit certificate, and each of `nodes` that has not decided adopts it
    /// only if the certificate holds: precommits for that value in that round from distinct
    /// validators with more than 2/3 of the power, by the node's own validator set. (Its core
    /// may be unable to decide by itself: a node that got the other of two equivocating
    /// proposals holds a proposal for that round already.) Nothing is adopted unchecked.
    fn sync_from_certificates(&mut self, nodes: &[usize]) {
        let Some((round, value, commits)) =
            nodes.iter().find_map(|i| self.certificates.get(i).cloned())
        else {
            return;
        };
        for &to in nodes {
            if self.decisions.contains_key(&to) {
                continue;
            }
            let set = self.nodes[to].validators();
            let mut signers = HashSet::new();
            let power: u128 = commits
                .iter()
                .filter(|c| {
                    c.height == self.height
                        && c.round == round
                        && c.vote_type == VoteType::Precommit
                        && c.value == Some(value)
                        && signers.insert(c.validator)
                })
                .map(|c| u128::from(set.power(&c.validator).unwrap_or(0)))
                .sum();
            if set.is_quorum(power) {
                self.decisions.insert(to, (round, value));
                self.synced.insert(to);
            }
        }
    }

    /// Delivers whatever is still in flight, decided or not (bounded by `until` ms).
    fn drain(&mut self, until: u64) {
        while let Some((at, to, input)) = self.next_by(until) {
            self.now = at;
            if self.behaviour[to] != Behaviour::Crashed {
                let outs = self.nodes[to].handle(input);
                self.apply(to, outs);
            }
        }
    }

    /// Gossip's anti-entropy: every message ever sent reaches everyone again.
    fn resend_all(&mut self) {
        for (from, input) in std::mem::take(&mut self.sent) {
            self.broadcast(from, |_| input.clone());
        }
    }

    /// Agreement: every node that decided, decided the same value.
    fn agreed(&self) -> Option<Val> {
        let values: HashSet<Val> = self.decisions.values().map(|(_, v)| *v).collect();
        assert!(
            values.len() <= 1,
            "two values decided at one height: {values:?}"
        );
        values.into_iter().next()
    }
}

#[test]
fn four_honest_validators_decide_the_first_proposal_in_round_zero() {
    let mut sim = Sim::honest(4);
    sim.start();
    sim.run(10_000);
    assert_eq!(sim.decisions.len(), 4);
    let proposer = *sim.nodes[0].validators().proposer(1, 0).unwrap() as usize;
    assert_eq!(sim.agreed(), Some(Sim::value(1, 0, proposer)));
    assert!(sim.decisions.values().all(|(r, _)| *r == 0));
}

#[test]
fn a_crashed_proposer_costs_one_round() {
    let mut behaviour = vec![Behaviour::Honest; 4];
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let p0 = *set.proposer(1, 0).unwrap() as usize;
    behaviour[p0] = Behaviour::Crashed;
    let mut sim = Sim::new(&[1, 1, 1, 1], behaviour, 11);
    sim.start();
    sim.run(10_000);
    assert_eq!(sim.decisions.len(), 3);
    let p1 = *set.proposer(1, 1).unwrap() as usize;
    assert_ne!(p0, p1);
    assert_eq!(sim.agreed(), Some(Sim::value(1, 1, p1)));
}

#[test]
fn two_of_four_crashed_is_safe_but_not_live() {
    let mut behaviour = vec![Behaviour::Honest; 4];
    behaviour[1] = Behaviour::Crashed;
    behaviour[2] = Behaviour::Crashed;
    let mut sim = Sim::new(&[1, 1, 1, 1], behaviour, 3);
    sim.start();
    sim.run(20_000);
    assert!(sim.decisions.is_empty());
    // Without more than 2/3 of any vote no timeout past the propose one is armed: the survivors
    // prevoted nil and wait, rather than spinning through rounds nobody can complete.
    assert_eq!(sim.nodes[0].step(), Step::Prevote);
    assert!(sim.queue.is_empty());
}

#[test]
fn an_invalid_proposal_gets_nil_prevotes_and_the_next_round_decides() {
    let mut sim = Sim::honest(4);
    let p0 = *sim.nodes[0].validators().proposer(1, 0).unwrap() as usize;
    sim.invalid.insert(Sim::value(1, 0, p0));
    sim.start();
    sim.run(10_000);
    assert_eq!(sim.decisions.len(), 4);
    let p1 = *sim.nodes[0].validators().proposer(1, 1).unwrap() as usize;
    assert_eq!(sim.agreed(), Some(Sim::value(1, 1, p1)));
}

#[test]
fn a_locked_value_is_carried_into_the_next_round() {
    // We lock on round 0's value through its prevotes, but round 0 ends without a decision
    // (the others precommitted nil). As round 1's proposer we must re-propose the locked value
    // with its proof-of-lock round, not ask for a new one.
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let me = *set.proposer(1, 1).unwrap();
    let p0 = *set.proposer(1, 0).unwrap();
    assert_ne!(me, p0);
    let mut c = Core::new(Some(me), set.clone(), timeouts());
    c.handle(Input::StartHeight(1));
    c.handle(Input::Proposal {
        proposal: Proposal {
            height: 1,
            round: 0,
            value: 7,
            pol_round: None,
            proposer: p0,
        },
        valid: true,
    });
    let others: Vec<u8> = (0..4u8).filter(|v| *v != me).collect();
    for v in &others[..2] {
        c.handle(Input::Vote(Vote {
            height: 1,
            round: 0,
            vote_type: VoteType::Prevote,
            value: Some(7),
            validator: *v,
        }));
    }
    assert_eq!(c.snapshot().locked_value, Some(7));
    let mut outs = Vec::new();
    for v in &others[..2] {
        outs.extend(c.handle(Input::Vote(Vote {
            height: 1,
            round: 0,
            vote_type: VoteType::Precommit,
            value: None,
            validator: *v,
        })));
    }
    assert!(
        outs.iter().any(|o| matches!(
            o,
            Output::ScheduleTimeout {
                step: Step::Precommit,
                round: 0,
                ..
            }
        )),
        "{outs:?}"
    );
    assert!(c.decided().is_none());
    let outs = c.handle(Input::Timeout {
        height: 1,
        round: 0,
        step: Step::Precommit,
    });
    assert_eq!(c.round(), 1);
    assert!(
        outs.iter()
            .all(|o| !matches!(o, Output::RequestValue { .. })),
        "{outs:?}"
    );
    assert!(
        outs.contains(&Output::Proposal(Proposal {
            height: 1,
            round: 1,
            value: 7,
            pol_round: Some(0),
            proposer: me
        })),
        "{outs:?}"
    );
    // And we prevote our own re-proposal.
    assert!(outs.iter().any(|o| matches!(o, Output::Vote(v) if v.round == 1 && v.vote_type == VoteType::Prevote && v.value == Some(7))));
}

#[test]
fn a_proof_of_lock_from_a_later_round_unlocks() {
    // Locked on 7 at round 0; round 2's proposal re-proposes 8 with a polka for 8 at round 1,
    // newer than our lock: we prevote 8 (rule 28).
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let me = (0..4u8)
        .find(|v| Some(v) != set.proposer(1, 0) && Some(v) != set.proposer(1, 2))
        .unwrap();
    let mut c = Core::new(Some(me), set.clone(), timeouts());
    c.handle(Input::StartHeight(1));
    c.restore(
        1,
        RestoreState {
            locked_value: Some(7),
            locked_round: Some(0),
            valid_value: Some(7),
            valid_round: Some(0),
            signed: vec![],
        },
    );
    c.handle(Input::Timeout {
        height: 1,
        round: 0,
        step: Step::Propose,
    });
    let others: Vec<u8> = (0..4u8).filter(|v| *v != me).collect();
    for v in &others {
        c.handle(Input::Vote(Vote {
            height: 1,
            round: 1,
            vote_type: VoteType::Prevote,
            value: Some(8),
            validator: *v,
        }));
        c.handle(Input::Vote(Vote {
            height: 1,
            round: 2,
            vote_type: VoteType::Precommit,
            value: None,
            validator: *v,
        }));
    }
    assert_eq!(c.round(), 2);
    let p2 = *set.proposer(1, 2).unwrap();
    let outs = c.handle(Input::Proposal {
        proposal: Proposal {
            height: 1,
            round: 2,
            value: 8,
            pol_round: Some(1),
            proposer: p2,
        },
        valid: true,
    });
    assert!(outs.iter().any(|o| matches!(o, Output::Vote(v) if v.round == 2 && v.vote_type == VoteType::Prevote && v.value == Some(8))), "{outs:?}");
}

#[test]
fn a_node_locked_on_a_value_prevotes_nil_for_another_without_a_newer_polka() {
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let me = (0..4u8)
        .find(|v| Some(v) != set.proposer(1, 0) && Some(v) != set.proposer(1, 1))
        .unwrap();
    let mut c = Core::new(Some(me), set.clone(), timeouts());
    c.handle(Input::StartHeight(1));
    let p0 = *set.proposer(1, 0).unwrap();
    c.handle(Input::Proposal {
        proposal: Proposal {
            height: 1,
            round: 0,
            value: 7,
            pol_round: None,
            proposer: p0,
        },
        valid: true,
    });
    let mut outs = Vec::new();
    for v in (0..4u8).filter(|v| *v != me) {
        outs.extend(c.handle(Input::Vote(Vote {
            height: 1,
            round: 0,
            vote_type: VoteType::Prevote,
            value: Some(7),
            validator: v,
        })));
    }
    assert!(outs.iter().any(
        |o| matches!(o, Output::Vote(v) if v.vote_type == VoteType::Precommit && v.value == Some(7))
    ));
    // Round 1 (after the precommit timeout) brings another value without a proof of lock.
    c.handle(Input::Timeout {
        height: 1,
        round: 0,
        step: Step::Precommit,
    });
    assert_eq!(c.round(), 1);
    let p1 = *set.proposer(1, 1).unwrap();
    let outs = c.handle(Input::Proposal {
        proposal: Proposal {
            height: 1,
            round: 1,
            value: 8,
            pol_round: None,
            proposer: p1,
        },
        valid: true,
    });
    assert!(outs.iter().any(|o| matches!(o, Output::Vote(v) if v.round == 1 && v.vote_type == VoteType::Prevote && v.value.is_none())), "{outs:?}");
}

#[test]
fn one_equivocating_validator_of_four_cannot_break_agreement_or_liveness() {
    for seed in 0..60 {
        let mut behaviour = vec![Behaviour::Honest; 4];
        behaviour[(seed % 4) as usize] = Behaviour::Equivocating;
        let mut sim = Sim::new(&[1, 1, 1, 1], behaviour, seed);
        sim.max_delay = 1 + seed % 90;
        sim.start();
        sim.run(60_000);
        let honest = (0..4).filter(|i| sim.behaviour[*i] == Behaviour::Honest);
        assert!(
            honest.clone().all(|i| sim.decisions.contains_key(&i)),
            "seed {seed}: {:?}",
            sim.decisions
        );
        sim.agreed();
        sim.drain(120_000);
        assert!(
            !sim.equivocations.is_empty(),
            "seed {seed}: equivocation went unnoticed"
        );
        let bad = (seed % 4) as V;
        assert!(
            sim.equivocations
                .iter()
                .all(|(_, a, b)| a.validator == bad && b.validator == bad && a.value != b.value)
        );
    }
}

#[test]
fn random_delays_and_losses_never_break_agreement() {
    for seed in 0..100 {
        let n = 4 + (seed % 4) as usize;
        let mut sim = Sim::new(&vec![1; n], vec![Behaviour::Honest; n], seed);
        sim.max_delay = 1 + seed * 7 % 200;
        // Lose one message in eight during the first two seconds.
        let lossy = std::cell::Cell::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        sim.drop = Box::new(move |_, from, to, _| {
            if from == to {
                return false;
            }
            let x = lossy
                .get()
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lossy.set(x);
            (x >> 33) % 8 == 0
        });
        sim.start();
        sim.run(2_000);
        sim.agreed();
        // Losses can make rounds fail, not the height: once the network heals and gossip
        // re-sends what was lost, every node decides, and all decide the same value.
        sim.drop = Box::new(|_, _, _, _| false);
        sim.resend_all();
        sim.run(200_000);
        sim.agreed();
        assert_eq!(
            sim.decisions.len(),
            n,
            "seed {seed}: only {:?} decided",
            sim.decisions
        );
    }
}

/// The testnet's startup stall: validators came up at different moments, and for their first
/// seconds the round-0 proposer and one other validator were connected to nobody, the other two
/// only to each other. Gossip dropped what they published meanwhile (no subscribed peer), so
/// after the network healed each node held at most two prevotes of round 0, fewer than the
/// 2/3 that arms the prevote timeout, and nothing was ever sent again.
fn startup_partition(heal_at: u64) -> DropRule {
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let proposer = *set.proposer(1, 0).unwrap() as usize;
    let lonely = (proposer + 1) % 4;
    let group = move |i: usize| {
        if i == proposer || i == lonely { i } else { 4 }
    };
    Box::new(move |at, from, to, _| at < heal_at && from != to && group(from) != group(to))
}

#[test]
fn votes_lost_before_peers_connect_stall_the_round_without_the_heartbeat() {
    let mut sim = Sim::honest(4);
    sim.drop = startup_partition(5_000);
    sim.start();
    sim.run(60_000);
    assert!(sim.decisions.is_empty());
    assert!(sim.queue.is_empty(), "no timer left to fire");
    for node in &sim.nodes {
        assert_eq!((node.round(), node.step()), (0, Step::Prevote));
    }
}

#[test]
fn the_heartbeat_rebroadcasts_votes_lost_before_peers_connect() {
    let mut sim = Sim::honest(4);
    sim.drop = startup_partition(5_000);
    sim.start();
    sim.run_with_heartbeat(60_000, 1_000);
    assert_eq!(sim.decisions.len(), 4, "only {:?} decided", sim.decisions);
    assert!(sim.synced.is_empty(), "{:?} had to sync", sim.synced);
    sim.agreed();
    // Healed at 5 s; the next heartbeats deliver the lost votes and round 1 decides.
    assert!(sim.now < 10_000, "decided at {} ms", sim.now);
}

#[test]
fn the_heartbeat_alone_recovers_from_late_joiners_and_losses() {
    for seed in 0..60 {
        let n = 4 + (seed % 4) as usize;
        let mut sim = Sim::new(&vec![1; n], vec![Behaviour::Honest; n], seed);
        sim.max_delay = 1 + seed * 7 % 200;
        // Each node is cut off until its own moment in the first 4 s (it starts, or connects,
        // late), and one message in eight is lost during the first 3 s.
        let mut rng = Rng(seed ^ 0x5DEE_CE66);
        let joins: Vec<u64> = (0..n).map(|_| rng.below(4_000)).collect();
        let lossy = std::cell::Cell::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        sim.drop = Box::new(move |at, from, to, _| {
            if from == to {
                return false;
            }
            if at < joins[from].max(joins[to]) {
                return true;
            }
            let x = lossy
                .get()
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lossy.set(x);
            at < 3_000 && (x >> 33) % 8 == 0
        });
        sim.start();
        // No resend_all: what the network lost comes back only through heartbeats (and the
        // decision itself through sync, for a node that joined after the others decided).
        sim.run_with_heartbeat(120_000, 1_000);
        sim.agreed();
        if sim.decisions.len() != n {
            eprintln!(
                "joins {:?} now {} queue {}",
                (0..n).map(|_| 0).collect::<Vec<_>>(),
                sim.now,
                sim.queue.len()
            );
            for (i, node) in sim.nodes.iter().enumerate() {
                let rs = node.rounds.get(&node.round());
                eprintln!(
                    "seed {seed} node {i}: round {} step {:?} proposal {:?} prevotes {:?} precommits {:?} rounds {:?} locked {:?}",
                    node.round(),
                    node.step(),
                    rs.and_then(|r| r.proposal.clone()),
                    rs.map(|r| r.prevotes.clone()),
                    rs.map(|r| r.precommits.clone()),
                    node.rounds.keys().collect::<Vec<_>>(),
                    node.locked
                );
            }
        }
        assert_eq!(
            sim.decisions.len(),
            n,
            "seed {seed}: only {:?} decided",
            sim.decisions
        );
    }
}

#[test]
fn the_heartbeat_returns_our_votes_of_a_slow_height() {
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let (p0, p1) = (*set.proposer(1, 0).unwrap(), *set.proposer(1, 1).unwrap());
    assert!(p0 != 0 && p1 != 0);
    let mut c = Core::new(Some(0), set.clone(), timeouts());
    assert!(c.heartbeat().is_empty(), "not started");
    c.handle(Input::StartHeight(1));
    assert!(c.heartbeat().is_empty(), "the height just started");
    assert!(c.heartbeat().is_empty(), "nothing signed yet");
    let proposal = |round, pol_round, proposer| Input::Proposal {
        proposal: Proposal {
            height: 1,
            round,
            value: 7,
            pol_round,
            proposer,
        },
        valid: true,
    };
    let vote = |round, vote_type, value, validator| Vote {
        height: 1,
        round,
        vote_type,
        value,
        validator,
    };
    c.handle(proposal(0, None, p0));
    assert_eq!(c.heartbeat(), vec![vote(0, VoteType::Prevote, Some(7), 0)]);
    for v in 1..3 {
        c.handle(Input::Vote(vote(0, VoteType::Prevote, None, v)));
    }
    c.handle(Input::Timeout {
        height: 1,
        round: 0,
        step: Step::Prevote,
    });
    assert_eq!(c.step(), Step::Precommit);
    assert_eq!(
        c.heartbeat(),
        vec![
            vote(0, VoteType::Prevote, Some(7), 0),
            vote(0, VoteType::Precommit, None, 0)
        ]
    );
    // Pulled into round 1, where 7 is re-proposed with round 0 as its proof of lock: our
    // prevote of round 0 is part of that proof, which a node that missed it needs.
    for v in 1..3 {
        c.handle(Input::Vote(vote(1, VoteType::Prevote, None, v)));
    }
    assert_eq!(c.round(), 1);
    assert!(c.heartbeat().is_empty(), "nothing signed in round 1");
    c.handle(proposal(1, Some(0), p1));
    assert_eq!(c.heartbeat(), vec![vote(0, VoteType::Prevote, Some(7), 0)]);
    // Decided: nothing more to send at this height.
    for v in 1..4 {
        c.handle(Input::Vote(vote(1, VoteType::Precommit, Some(7), v)));
    }
    assert_eq!(c.decided(), Some(7));
    assert!(c.heartbeat().is_empty());
    // An observer has nothing to send.
    let mut o = Core::new(None, set, timeouts());
    o.handle(Input::StartHeight(1));
    assert!(o.heartbeat().is_empty() && o.heartbeat().is_empty());
}

#[test]
fn stake_weighted_quorums() {
    // Validator 0 holds 3 of 6: it plus any one other is not enough (4 of 6), plus two is.
    let set = ValidatorSet::new(vec![(0u8, 3), (1, 1), (2, 1), (3, 1)]);
    assert_eq!(set.total_power(), 6);
    assert_eq!(set.quorum(), 5);
    assert!(!set.is_quorum(4));
    assert!(set.is_quorum(5));
    assert!(set.is_one_third(3));
    assert!(!set.is_one_third(2));
    // Three small validators (3 of 6) cannot decide without 0; 0 with two of them can.
    let mut behaviour = vec![Behaviour::Honest; 4];
    behaviour[0] = Behaviour::Crashed;
    let mut sim = Sim::new(&[3, 1, 1, 1], behaviour, 5);
    sim.start();
    sim.run(20_000);
    assert!(sim.decisions.is_empty());
    let mut behaviour = vec![Behaviour::Honest; 4];
    behaviour[3] = Behaviour::Crashed;
    let mut sim = Sim::new(&[3, 1, 1, 1], behaviour, 5);
    sim.start();
    sim.run(20_000);
    assert_eq!(sim.decisions.len(), 3);
    sim.agreed();
}

#[test]
fn proposer_schedule_is_a_stake_weighted_round_robin() {
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 5)).collect());
    let seq: Vec<u8> = (0..8).map(|h| *set.proposer(h, 0).unwrap()).collect();
    assert_eq!(seq, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    // A failed round moves to the next proposer.
    assert_ne!(set.proposer(5, 0), set.proposer(5, 1));
    let set = ValidatorSet::new(vec![(9u8, 3), (4, 1)]);
    let seq: Vec<u8> = (0..4).map(|h| *set.proposer(h, 0).unwrap()).collect();
    assert_eq!(seq.iter().filter(|v| **v == 9).count(), 3);
    // Huge, coprime stakes still give a bounded schedule in proportion.
    let set = ValidatorSet::new(vec![(1u8, 1_000_000_007), (2, 2_000_000_011)]);
    let n = 3 * MAX_SCHEDULE as u64;
    let twos = (0..n)
        .filter(|h| *set.proposer(*h, 0).unwrap() == 2)
        .count() as f64;
    assert!((twos / n as f64 - 2.0 / 3.0).abs() < 0.01);
    assert!(ValidatorSet::<u8>::new(vec![]).proposer(1, 0).is_none());
    assert!(ValidatorSet::new(vec![(1u8, 0)]).is_empty());
}

#[test]
fn an_observer_follows_and_decides_without_voting() {
    let mut sim = Sim::honest(4);
    let set = sim.nodes[0].validators().clone();
    let mut observer = Core::new(None, set, timeouts());
    let outs = observer.handle(Input::StartHeight(1));
    assert!(
        outs.iter()
            .all(|o| matches!(o, Output::ScheduleTimeout { .. }))
    );
    sim.start();
    // Record every message the validators send and replay them to the observer.
    let mut log = Vec::new();
    while let Some(Reverse((at, _, to, from, Wrapped(input)))) = sim.queue.pop() {
        sim.now = at;
        if to != from && to == 0 {
            log.push(input.clone());
        }
        let outs = sim.nodes[to].handle(input);
        sim.apply(to, outs);
        if sim.decisions.len() == 4 {
            break;
        }
    }
    // What was still on its way to node 0 when the validators had decided.
    while let Some(Reverse((_, _, to, from, Wrapped(input)))) = sim.queue.pop() {
        if to != from && to == 0 {
            log.push(input);
        }
    }
    // Node 0's own messages never reach itself through the queue: add them from its view.
    let mut decided = None;
    for input in log {
        for out in observer.handle(input) {
            assert!(!matches!(
                out,
                Output::Vote(_) | Output::Proposal(_) | Output::RequestValue { .. }
            ));
            if let Output::Decide { value, .. } = out {
                decided = Some(value);
            }
        }
    }
    // Node 0 voted too; the observer saw the other three's votes, which are a quorum.
    assert_eq!(decided, sim.agreed());
}

#[test]
fn a_restored_validator_never_signs_a_conflicting_vote() {
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let me = (0..4u8).find(|v| Some(v) != set.proposer(1, 0)).unwrap();
    let p0 = *set.proposer(1, 0).unwrap();
    let mut c = Core::new(Some(me), set.clone(), timeouts());
    c.handle(Input::StartHeight(1));
    let outs = c.handle(Input::Proposal {
        proposal: Proposal {
            height: 1,
            round: 0,
            value: 42,
            pol_round: None,
            proposer: p0,
        },
        valid: true,
    });
    assert!(outs.contains(&Output::Vote(Vote {
        height: 1,
        round: 0,
        vote_type: VoteType::Prevote,
        value: Some(42),
        validator: me
    })));
    let saved = c.snapshot();
    assert_eq!(saved.signed, vec![(0, VoteType::Prevote, Some(42))]);

    // The process restarts and the proposal is gone: the propose timeout would prevote nil,
    // but the restored core re-sends its earlier prevote instead.
    let mut c = Core::new(Some(me), set, timeouts());
    c.handle(Input::StartHeight(1));
    let outs = c.restore(1, saved);
    assert!(outs.contains(&Output::Vote(Vote {
        height: 1,
        round: 0,
        vote_type: VoteType::Prevote,
        value: Some(42),
        validator: me
    })));
    assert_eq!(c.step(), Step::Prevote);
    let outs = c.handle(Input::Timeout {
        height: 1,
        round: 0,
        step: Step::Propose,
    });
    assert!(outs.iter().all(
        |o| !matches!(o, Output::Vote(v) if v.vote_type == VoteType::Prevote && v.value != Some(42))
    ));
    // A restore for another height is ignored.
    assert!(c.restore(2, RestoreState::default()).is_empty());
}

#[test]
fn a_restored_validator_resumes_in_its_last_round_with_its_lock() {
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let me = 0u8;
    let mut c = Core::new(Some(me), set, timeouts());
    c.handle(Input::StartHeight(3));
    let state = RestoreState {
        locked_value: Some(9),
        locked_round: Some(2),
        valid_value: Some(9),
        valid_round: Some(2),
        signed: vec![
            (2, VoteType::Prevote, Some(9)),
            (2, VoteType::Precommit, Some(9)),
        ],
    };
    c.restore(3, state.clone());
    assert_eq!(c.round(), 2);
    assert_eq!(c.step(), Step::Precommit);
    assert_eq!(c.snapshot(), state);
}

/// Found by killing validators under load: a validator that prevoted X in round 0 and then
/// restarted must count that prevote of its own in the proof of lock of a later proposal of X
/// (`pol_round` 0). Before, only its last round's votes were restored into the vote sets, so with
/// the two other round-0 prevotes (re-sent by their signers) it saw no quorum, prevoted nil, and
/// every restarted validator did the same: the height never ended.
#[test]
fn a_restored_validator_counts_its_own_earlier_prevotes_in_a_proof_of_lock() {
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let me = 2u8;
    let mut c = Core::new(Some(me), set.clone(), timeouts());
    c.handle(Input::StartHeight(1));
    // Before the restart: prevoted 7 in round 0, nil in round 1.
    c.restore(
        1,
        RestoreState {
            signed: vec![
                (0, VoteType::Prevote, Some(7)),
                (1, VoteType::Prevote, None),
                (1, VoteType::Precommit, None),
            ],
            ..RestoreState::default()
        },
    );
    assert_eq!(c.round(), 1);
    // Round 1 ends: everyone precommitted nil.
    for v in [0u8, 1, 3] {
        c.handle(Input::Vote(Vote {
            height: 1,
            round: 1,
            vote_type: VoteType::Precommit,
            value: None,
            validator: v,
        }));
    }
    c.handle(Input::Timeout {
        height: 1,
        round: 1,
        step: Step::Precommit,
    });
    assert_eq!(c.round(), 2);
    // The round-0 prevotes of two others arrive (re-sent by their signers), then the round-2
    // proposal re-proposing 7 with its proof of lock.
    for v in [0u8, 1] {
        c.handle(Input::Vote(Vote {
            height: 1,
            round: 0,
            vote_type: VoteType::Prevote,
            value: Some(7),
            validator: v,
        }));
    }
    let proposer = *set.proposer(1, 2).unwrap();
    let outs = c.handle(Input::Proposal {
        proposal: Proposal {
            height: 1,
            round: 2,
            value: 7,
            pol_round: Some(0),
            proposer,
        },
        valid: true,
    });
    assert!(
        outs.contains(&Output::Vote(Vote {
            height: 1,
            round: 2,
            vote_type: VoteType::Prevote,
            value: Some(7),
            validator: me
        })),
        "{outs:?}"
    );
}

#[test]
fn messages_of_other_heights_and_strangers_are_ignored() {
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let mut c = Core::new(Some(0), set.clone(), timeouts());
    // Before StartHeight nothing happens.
    assert!(
        c.handle(Input::Vote(Vote {
            height: 0,
            round: 0,
            vote_type: VoteType::Prevote,
            value: None,
            validator: 1
        }))
        .is_empty()
    );
    c.handle(Input::StartHeight(5));
    for h in [4, 6] {
        for v in 1..4u8 {
            let outs = c.handle(Input::Vote(Vote {
                height: h,
                round: 0,
                vote_type: VoteType::Prevote,
                value: None,
                validator: v,
            }));
            assert!(outs.is_empty());
        }
    }
    assert_eq!(c.step(), Step::Propose);
    // A vote from a validator outside the set, and a proposal from the wrong proposer.
    assert!(
        c.handle(Input::Vote(Vote {
            height: 5,
            round: 0,
            vote_type: VoteType::Prevote,
            value: None,
            validator: 77
        }))
        .is_empty()
    );
    let wrong = (0..4u8).find(|v| Some(v) != set.proposer(5, 0)).unwrap();
    let outs = c.handle(Input::Proposal {
        proposal: Proposal {
            height: 5,
            round: 0,
            value: 1,
            pol_round: None,
            proposer: wrong,
        },
        valid: true,
    });
    assert!(outs.iter().all(|o| !matches!(o, Output::Vote(_))));
    // A proposal whose proof-of-lock round is not earlier than its round.
    let right = *set.proposer(5, 0).unwrap();
    let outs = c.handle(Input::Proposal {
        proposal: Proposal {
            height: 5,
            round: 0,
            value: 1,
            pol_round: Some(0),
            proposer: right,
        },
        valid: true,
    });
    assert!(outs.iter().all(|o| !matches!(o, Output::Vote(_))));
}

#[test]
fn f_plus_one_in_a_later_round_pulls_a_node_forward() {
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let mut c = Core::new(Some(0), set, timeouts());
    c.handle(Input::StartHeight(1));
    c.handle(Input::Vote(Vote {
        height: 1,
        round: 7,
        vote_type: VoteType::Prevote,
        value: None,
        validator: 1,
    }));
    assert_eq!(c.round(), 0, "one validator of four is not enough");
    c.handle(Input::Vote(Vote {
        height: 1,
        round: 7,
        vote_type: VoteType::Precommit,
        value: None,
        validator: 2,
    }));
    assert_eq!(c.round(), 7);
}

#[test]
fn a_faulty_validator_cannot_make_us_keep_unbounded_future_rounds() {
    let set = ValidatorSet::new((0..4u8).map(|i| (i, 1)).collect());
    let mut c = Core::new(Some(0), set, timeouts());
    c.handle(Input::StartHeight(1));
    for r in 1..10_000 {
        c.handle(Input::Vote(Vote {
            height: 1,
            round: r,
            vote_type: VoteType::Prevote,
            value: None,
            validator: 3,
        }));
    }
    assert!(
        c.rounds.len() <= MAX_FUTURE_ROUNDS_PER_VALIDATOR + 1,
        "{} rounds kept",
        c.rounds.len()
    );
    assert_eq!(c.round(), 0);
}

#[test]
fn timeouts_grow_by_delta_per_round() {
    let t = timeouts();
    assert_eq!(t.duration(Step::Propose, 0), Duration::from_millis(100));
    assert_eq!(t.duration(Step::Propose, 3), Duration::from_millis(250));
    assert_eq!(
        t.duration(Step::Prevote, u32::MAX),
        Duration::from_millis(50).saturating_add(Duration::from_millis(50) * u32::MAX)
    );
}

impl Sim {
    /// A crash and restart of node `i`: its core is rebuilt from what it persisted (the
    /// snapshot the actor writes before signing), and everything in flight to it is lost.
    fn restart(&mut self, i: usize) {
        let saved = self.nodes[i].snapshot();
        let set = self.nodes[i].validators().clone();
        self.nodes[i] = Core::new(Some(i as V), set, timeouts());
        let mut outs = self.nodes[i].handle(Input::StartHeight(self.height));
        outs.extend(self.nodes[i].restore(self.height, saved));
        let pending = std::mem::take(&mut self.queue);
        self.queue = pending
            .into_iter()
            .filter(|Reverse((_, _, to, _, _))| *to != i)
            .collect();
        self.apply(i, outs);
    }

    fn honest_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.behaviour[*i] == Behaviour::Honest)
            .collect()
    }

    /// Runs until every honest node decided: by itself, or by block sync with a commit
    /// certificate that its own validator set checks (no decision is copied unchecked),
    /// with the heartbeat re-sending votes every `every` ms, up to `until` ms.
    fn run_until_honest_decide(&mut self, until: u64, every: u64) -> bool {
        let honest = self.honest_nodes();
        let mut next = (self.now / every + 1) * every;
        loop {
            while let Some((at, to, input)) = self.next_by(next.min(until)) {
                self.now = at;
                if self.behaviour[to] == Behaviour::Crashed {
                    continue;
                }
                let outs = self.nodes[to].handle(input);
                self.apply(to, outs);
            }
            if honest.iter().all(|i| self.decisions.contains_key(i)) {
                return true;
            }
            if next >= until {
                return false;
            }
            self.now = next;
            self.sync_from_certificates(&honest);
            for i in 0..self.nodes.len() {
                if self.behaviour[i] != Behaviour::Crashed {
                    for v in self.nodes[i].heartbeat() {
                        self.broadcast(i, |_| Input::Vote(v.clone()));
                    }
                }
            }
            next += every;
        }
    }

    /// Agreement among the honest nodes.
    fn honest_agreed(&self) -> Option<Val> {
        let values: HashSet<Val> = self
            .honest_nodes()
            .iter()
            .filter_map(|i| self.decisions.get(i).map(|(_, v)| *v))
            .collect();
        assert!(values.len() <= 1, "honest nodes decided {values:?}");
        values.into_iter().next()
    }
}

/// Five heights with unequal voting power ([3, 2, 2, 2]: the byzantine validator holds 2 of 9,
/// under a third), a byzantine validator that proposes two real values and votes for every
/// value really proposed, random delays, and an honest validator that crashes and restarts in
/// the middle of a round at every height. Every honest node decides every height by itself,
/// and all decide the same value.
#[test]
fn byzantine_proposer_and_voters_with_restarts_over_several_heights() {
    for seed in 0..40 {
        let bad = 1 + (seed % 3) as usize;
        let mut behaviour = vec![Behaviour::Honest; 4];
        behaviour[bad] = Behaviour::Byzantine;
        let mut sim = Sim::new(&[3, 2, 2, 2], behaviour, seed);
        sim.max_delay = 1 + seed * 13 % 120;
        let restarted = (bad + 1 + (seed as usize % 2)) % 4;
        let restarted = if restarted == bad { 0 } else { restarted };
        let mut twins = 0;
        for height in 1..=5 {
            sim.height = height;
            sim.decisions.clear();
            sim.certificates.clear();
            sim.queue.clear();
            sim.start();
            // Crash in the middle of the first round, while votes are in flight.
            let crash_at = sim.now + 1 + sim.rng.below(60);
            sim.run_until_honest_decide(crash_at, 1_000);
            sim.now = sim.now.max(crash_at);
            sim.restart(restarted);
            assert!(
                sim.run_until_honest_decide(sim.now + 120_000, 1_000),
                "seed {seed} height {height}: only {:?} decided",
                sim.decisions
            );
            let decided = sim.honest_agreed().unwrap();
            let by_itself = sim
                .honest_nodes()
                .into_iter()
                .filter(|i| !sim.synced.contains(i))
                .count();
            assert!(
                by_itself >= 1,
                "seed {seed} height {height}: nobody decided by itself"
            );
            sim.synced.clear();
            let real = sim
                .proposed
                .iter()
                .filter(|((h, _), _)| *h == height)
                .any(|(_, vals)| vals.contains(&decided));
            assert!(
                real,
                "seed {seed} height {height}: decided {decided}, never proposed"
            );
            twins += sim
                .proposed
                .iter()
                .filter(|((h, _), vals)| *h == height && vals.len() > 1)
                .count();
        }
        // The byzantine validator was the proposer of some round and did equivocate.
        assert!(
            twins > 0,
            "seed {seed}: the byzantine proposer never proposed twice"
        );
    }
}

/// An epoch change between two heights: a validator leaves (it observes from then on) and a
/// newcomer joins (it proposes and votes). Both heights decide, each by its own set's quorum.
#[test]
fn the_set_changes_between_heights() {
    let mut sim = Sim::new(&[1; 5], vec![Behaviour::Honest; 5], 11);
    let first = ValidatorSet::new(vec![(0, 1), (1, 1), (2, 1), (3, 1)]);
    for (i, node) in sim.nodes.iter_mut().enumerate() {
        node.set_validators(first.clone(), Some(i as V));
    }
    assert!(!sim.nodes[4].is_validator());
    let voters = |sim: &Sim, height: Height| -> std::collections::BTreeSet<V> {
        sim.sent
            .iter()
            .filter_map(|(_, input)| match input {
                Input::Vote(v) if v.height == height => Some(v.validator),
                _ => None,
            })
            .collect()
    };
    sim.start();
    sim.run(60_000);
    assert_eq!(sim.decisions.len(), 5, "the observer follows too");
    assert_eq!(voters(&sim, 1), [0, 1, 2, 3].into());

    let second = ValidatorSet::new(vec![(1, 1), (2, 1), (3, 1), (4, 1)]);
    for (i, node) in sim.nodes.iter_mut().enumerate() {
        node.set_validators(second.clone(), Some(i as V));
    }
    assert!(!sim.nodes[0].is_validator() && sim.nodes[4].is_validator());
    sim.height = 2;
    sim.decisions.clear();
    sim.queue.clear();
    sim.start();
    sim.run(60_000);
    assert_eq!(sim.decisions.len(), 5);
    assert_eq!(voters(&sim, 2), [1, 2, 3, 4].into());
    assert!(sim.agreed().is_some());
}
