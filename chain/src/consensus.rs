//! The Tendermint BFT consensus core, as a pure state machine.
//!
//! This is the algorithm of Buchman, Kwon and Milosevic, "The latest gossip on BFT consensus"
//! (2018): rounds of propose / prevote / precommit, locking on a value once more than 2/3 of
//! the voting power prevoted for it, round timeouts that grow by `delta` per round, and
//! skipping ahead to a round that more than 1/3 of the power has reached. A value is decided
//! once more than 2/3 of the power precommitted it, which is final: with at most f of 3f+1
//! (by power) faulty, no two correct nodes decide different values at one height.
//!
//! The core does no I/O, keeps no clock and knows nothing of blocks or signatures. The caller
//! checks signatures and validity, feeds [`Input`]s and carries out the [`Output`]s:
//! broadcasting proposals and votes, arming timers, committing decisions. The core counts its
//! own proposal and votes as soon as it emits them. A node with no key (`me = None`) runs the
//! same rules as an observer: it follows rounds and decides, but never proposes or votes.
//!
//! Liveness needs every vote of a correct validator to reach every correct validator eventually:
//! the prevote and precommit timeouts are only armed once more than 2/3 of the votes of a step
//! arrived, so a vote lost for good (gossip is fire-and-forget: one published before the peers
//! were connected reaches no one) can leave every node waiting in that step forever. The caller
//! therefore calls [`Consensus::heartbeat`] periodically and re-broadcasts the votes it returns.
//!
//! Rule numbers in comments refer to the lines of Algorithm 1 in the paper.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use crate::types::Height;

pub type Round = u32;

/// A validator may hold votes in at most this many rounds ahead of ours; beyond it, its
/// oldest future-round votes are dropped. Honest validators are at most a round or two ahead,
/// so this only bounds the memory a faulty validator can make us spend.
pub const MAX_FUTURE_ROUNDS_PER_VALIDATOR: usize = 16;

/// Proposer schedules are built over at most this many slots.
const MAX_SCHEDULE: u128 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VoteType {
    Prevote,
    Precommit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    Propose,
    Prevote,
    Precommit,
}

/// A vote; `value: None` is a vote for nil.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote<V, H> {
    pub height: Height,
    pub round: Round,
    pub vote_type: VoteType,
    pub value: Option<H>,
    pub validator: V,
}

/// A proposal; `pol_round` is the round of the proof-of-lock (the round in which more than 2/3
/// prevoted `value`) when the proposer re-proposes a value it saw locked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal<V, H> {
    pub height: Height,
    pub round: Round,
    pub value: H,
    pub pol_round: Option<Round>,
    pub proposer: V,
}

/// The validators of a height with their voting power.
#[derive(Clone, Debug)]
pub struct ValidatorSet<V> {
    /// Sorted by validator, no duplicates, no zero power.
    validators: Vec<(V, u64)>,
    total: u128,
    /// Indices into `validators`: the proposer of slot `(height + round) % len`.
    schedule: Vec<usize>,
}

impl<V: Copy + Ord + Debug> ValidatorSet<V> {
    /// Builds the set. Validators with zero power are dropped; a validator listed twice keeps
    /// its first entry.
    pub fn new(mut validators: Vec<(V, u64)>) -> Self {
        validators.retain(|(_, p)| *p > 0);
        validators.sort_by_key(|v| v.0);
        validators.dedup_by(|b, a| a.0 == b.0);
        let total = validators.iter().map(|(_, p)| u128::from(*p)).sum();
        let schedule = schedule(&validators, total);
        ValidatorSet {
            validators,
            total,
            schedule,
        }
    }

    pub fn validators(&self) -> &[(V, u64)] {
        &self.validators
    }

    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    pub fn power(&self, v: &V) -> Option<u64> {
        self.validators
            .binary_search_by(|(x, _)| x.cmp(v))
            .ok()
            .map(|i| self.validators[i].1)
    }

    pub fn total_power(&self) -> u128 {
        self.total
    }

    /// The smallest power that is more than 2/3 of the total.
    pub fn quorum(&self) -> u128 {
        self.total * 2 / 3 + 1
    }

    /// More than 2/3 of the total power.
    pub fn is_quorum(&self, power: u128) -> bool {
        power * 3 > self.total * 2
    }

    /// More than 1/3 of the total power: at least one correct validator among them.
    pub fn is_one_third(&self, power: u128) -> bool {
        power * 3 > self.total
    }

    /// The proposer of `round` at `height`: a stake-weighted round robin (smooth weighted
    /// round-robin over the powers reduced by their gcd), advancing by one slot per height and
    /// per round, so a failed proposer is followed by another. `None` only for an empty set.
    pub fn proposer(&self, height: Height, round: Round) -> Option<&V> {
        if self.schedule.is_empty() {
            return None;
        }
        let slot = (u128::from(height) + u128::from(round)) % self.schedule.len() as u128;
        Some(&self.validators[self.schedule[slot as usize]].0)
    }
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Smooth weighted round-robin (each slot: every weight is added to its counter, the largest
/// counter wins and pays back the total), over the powers reduced by their gcd and, when the
/// cycle would still be longer than [`MAX_SCHEDULE`], scaled down proportionally.
fn schedule<V>(validators: &[(V, u64)], total: u128) -> Vec<usize> {
    if validators.is_empty() {
        return Vec::new();
    }
    let g = validators
        .iter()
        .fold(0u128, |g, (_, p)| gcd(g, u128::from(*p)));
    let mut weights: Vec<u128> = validators.iter().map(|(_, p)| u128::from(*p) / g).collect();
    if total / g > MAX_SCHEDULE {
        weights = validators
            .iter()
            .map(|(_, p)| (u128::from(*p) * MAX_SCHEDULE / total).max(1))
            .collect();
    }
    let sum: u128 = weights.iter().sum();
    let mut counters = vec![0i128; weights.len()];
    let mut out = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        for (c, w) in counters.iter_mut().zip(&weights) {
            *c += *w as i128;
        }
        let mut best = 0;
        for i in 1..counters.len() {
            if counters[i] > counters[best] {
                best = i;
            }
        }
        counters[best] -= sum as i128;
        out.push(best);
    }
    out
}

/// Round timeouts: each is `base + delta * round`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutConfig {
    pub propose: Duration,
    pub prevote: Duration,
    pub precommit: Duration,
    pub delta: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            propose: Duration::from_millis(1000),
            prevote: Duration::from_millis(500),
            precommit: Duration::from_millis(500),
            delta: Duration::from_millis(500),
        }
    }
}

impl TimeoutConfig {
    pub fn duration(&self, step: Step, round: Round) -> Duration {
        let base = match step {
            Step::Propose => self.propose,
            Step::Prevote => self.prevote,
            Step::Precommit => self.precommit,
        };
        base.saturating_add(self.delta.saturating_mul(round))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<V, H> {
    /// Begin `height` at round 0, forgetting everything of the previous height.
    StartHeight(Height),
    /// The value to propose, answering [`Output::RequestValue`].
    ProposeValue {
        height: Height,
        round: Round,
        value: H,
    },
    /// A proposal from the network whose signature the caller checked, with the caller's
    /// verdict on whether its value is valid.
    Proposal {
        proposal: Proposal<V, H>,
        valid: bool,
    },
    /// A vote from the network whose signature the caller checked.
    Vote(Vote<V, H>),
    /// A timer armed by [`Output::ScheduleTimeout`] fired.
    Timeout {
        height: Height,
        round: Round,
        step: Step,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<V, H> {
    /// We propose in this round: answer with [`Input::ProposeValue`].
    RequestValue { height: Height, round: Round },
    /// Sign and broadcast our proposal.
    Proposal(Proposal<V, H>),
    /// Sign and broadcast our vote. Persist [`Consensus::snapshot`] before it leaves the node.
    Vote(Vote<V, H>),
    /// Feed back [`Input::Timeout`] with these fields after `duration`.
    ScheduleTimeout {
        height: Height,
        round: Round,
        step: Step,
        duration: Duration,
    },
    /// `value` is final at `height`; `commits` are the precommits that prove it.
    Decide {
        height: Height,
        round: Round,
        value: H,
        commits: Vec<Vote<V, H>>,
    },
    /// A validator signed two different votes of one kind in one round.
    Equivocation {
        first: Vote<V, H>,
        second: Vote<V, H>,
    },
}

/// What a validator must remember across a restart so that it never signs a vote that
/// conflicts with one it already signed, and keeps its lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreState<H> {
    pub locked_value: Option<H>,
    pub locked_round: Option<Round>,
    pub valid_value: Option<H>,
    pub valid_round: Option<Round>,
    pub signed: Vec<(Round, VoteType, Option<H>)>,
}

impl<H> Default for RestoreState<H> {
    fn default() -> Self {
        RestoreState {
            locked_value: None,
            locked_round: None,
            valid_value: None,
            valid_round: None,
            signed: Vec::new(),
        }
    }
}

struct RoundState<V, H> {
    /// The proposer's proposal and whether its value is valid.
    proposal: Option<(Proposal<V, H>, bool)>,
    prevotes: BTreeMap<V, Option<H>>,
    precommits: BTreeMap<V, Option<H>>,
    /// Rule 34 fired.
    prevote_timeout_armed: bool,
    /// Rule 36 fired.
    polka_seen: bool,
    /// Rule 47 fired.
    precommit_timeout_armed: bool,
}

impl<V, H> Default for RoundState<V, H> {
    fn default() -> Self {
        RoundState {
            proposal: None,
            prevotes: BTreeMap::new(),
            precommits: BTreeMap::new(),
            prevote_timeout_armed: false,
            polka_seen: false,
            precommit_timeout_armed: false,
        }
    }
}

impl<V: Ord, H> RoundState<V, H> {
    fn votes(&self, t: VoteType) -> &BTreeMap<V, Option<H>> {
        match t {
            VoteType::Prevote => &self.prevotes,
            VoteType::Precommit => &self.precommits,
        }
    }

    fn votes_mut(&mut self, t: VoteType) -> &mut BTreeMap<V, Option<H>> {
        match t {
            VoteType::Prevote => &mut self.prevotes,
            VoteType::Precommit => &mut self.precommits,
        }
    }

    fn has_messages_from(&self, v: &V) -> bool {
        self.prevotes.contains_key(v)
            || self.precommits.contains_key(v)
            || self
                .proposal
                .as_ref()
                .is_some_and(|(p, _)| p.proposer == *v)
    }

    fn is_empty(&self) -> bool {
        self.proposal.is_none() && self.prevotes.is_empty() && self.precommits.is_empty()
    }
}

/// One node's view of consensus at its current height.
pub struct Consensus<V, H> {
    me: Option<V>,
    validators: ValidatorSet<V>,
    timeouts: TimeoutConfig,
    started: bool,
    height: Height,
    round: Round,
    step: Step,
    locked: Option<(H, Round)>,
    valid: Option<(H, Round)>,
    decided: Option<H>,
    /// The round for which we asked for a value and have not yet proposed.
    awaiting_value: Option<Round>,
    rounds: BTreeMap<Round, RoundState<V, H>>,
    /// Every vote we signed at this height.
    signed: HashMap<(Round, VoteType), Option<H>>,
    /// The height at the last [`Consensus::heartbeat`].
    last_heartbeat: Option<Height>,
}

impl<V, H> Consensus<V, H>
where
    V: Copy + Ord + Hash + Debug,
    H: Copy + Eq + Hash + Debug,
{
    /// A core for `me` (or an observer for `None`; a `me` outside the set also observes).
    /// It does nothing until [`Input::StartHeight`].
    pub fn new(me: Option<V>, validators: ValidatorSet<V>, timeouts: TimeoutConfig) -> Self {
        let me = me.filter(|m| validators.power(m).is_some());
        Consensus {
            me,
            validators,
            timeouts,
            started: false,
            height: 0,
            round: 0,
            step: Step::Propose,
            locked: None,
            valid: None,
            decided: None,
            awaiting_value: None,
            rounds: BTreeMap::new(),
            signed: HashMap::new(),
            last_heartbeat: None,
        }
    }

    pub fn height(&self) -> Height {
        self.height
    }

    pub fn round(&self) -> Round {
        self.round
    }

    pub fn step(&self) -> Step {
        self.step
    }

    pub fn decided(&self) -> Option<H> {
        self.decided
    }

    pub fn validators(&self) -> &ValidatorSet<V> {
        &self.validators
    }

    /// Replaces the validator set, for the next height (an epoch changed it): `me` votes if
    /// it is in the new set, and observes otherwise. Call it between a decision and the next
    /// [`Input::StartHeight`].
    pub fn set_validators(&mut self, validators: ValidatorSet<V>, me: Option<V>) {
        self.me = me.filter(|m| validators.power(m).is_some());
        self.validators = validators;
    }

    /// Whether this core votes (its `me` is in the set).
    pub fn is_validator(&self) -> bool {
        self.me.is_some()
    }

    /// Call periodically (a node does every second). While the height has not been decided
    /// since the previous call, returns votes we already signed for the caller to broadcast
    /// again: our prevote and precommit of the current round, and our prevote in the
    /// proof-of-lock round of the current round's proposal (a node without that polka cannot
    /// prevote a re-proposed locked value, and the locked nodes prevote nothing else). Every
    /// correct validator doing so makes the votes the rules wait for arrive eventually, whatever
    /// the network lost. Nothing new is signed: there is nothing to persist.
    pub fn heartbeat(&mut self) -> Vec<Vote<V, H>> {
        let slow =
            self.started && self.decided.is_none() && self.last_heartbeat == Some(self.height);
        self.last_heartbeat = Some(self.height);
        let Some(me) = self.me.filter(|_| slow) else {
            return Vec::new();
        };
        let pol_round = self
            .rounds
            .get(&self.round)
            .and_then(|rs| rs.proposal.as_ref())
            .and_then(|(p, _)| p.pol_round);
        [
            (Some(self.round), VoteType::Prevote),
            (Some(self.round), VoteType::Precommit),
            (pol_round, VoteType::Prevote),
        ]
        .into_iter()
        .filter_map(|(round, t)| {
            let round = round?;
            let value = *self.signed.get(&(round, t))?;
            Some(self.vote(round, t, value, me))
        })
        .collect()
    }

    /// The state to persist before any vote leaves the node.
    pub fn snapshot(&self) -> RestoreState<H> {
        let mut signed: Vec<(Round, VoteType, Option<H>)> =
            self.signed.iter().map(|((r, t), v)| (*r, *t, *v)).collect();
        signed.sort_by_key(|(r, t, _)| (*r, *t));
        RestoreState {
            locked_value: self.locked.map(|l| l.0),
            locked_round: self.locked.map(|l| l.1),
            valid_value: self.valid.map(|v| v.0),
            valid_round: self.valid.map(|v| v.1),
            signed,
        }
    }

    /// Restores what a previous run at `height` persisted, after [`Input::StartHeight`] for
    /// that height: the lock, the valid value and the signed votes. The core moves to the last
    /// round it signed in, re-broadcasts its votes there, and from then on signs only the
    /// values it signed before for any (round, kind) it already voted in.
    pub fn restore(&mut self, height: Height, state: RestoreState<H>) -> Vec<Output<V, H>> {
        let mut outs = Vec::new();
        if !self.started || height != self.height || self.decided.is_some() {
            return outs;
        }
        self.locked = state.locked_value.zip(state.locked_round);
        self.valid = state.valid_value.zip(state.valid_round);
        for (r, t, v) in &state.signed {
            self.signed.insert((*r, *t), *v);
        }
        let Some(me) = self.me else { return outs };
        // Our own votes count in every round we signed in, not only the last: a proof of lock
        // from an earlier round needs ours among its prevotes, and nobody else holds them
        // after a restart.
        for (r, t, v) in &state.signed {
            self.rounds
                .entry(*r)
                .or_default()
                .votes_mut(*t)
                .insert(me, *v);
        }
        let last = state.signed.iter().map(|(r, _, _)| *r).max();
        if let Some(last) = last {
            if last > self.round {
                self.start_round(last, &mut outs);
            }
            for t in [VoteType::Prevote, VoteType::Precommit] {
                if let Some(value) = self.signed.get(&(last, t)).copied() {
                    self.rounds
                        .entry(last)
                        .or_default()
                        .votes_mut(t)
                        .insert(me, value);
                    outs.push(Output::Vote(self.vote(last, t, value, me)));
                    self.step = self.step.max(match t {
                        VoteType::Prevote => Step::Prevote,
                        VoteType::Precommit => Step::Precommit,
                    });
                }
            }
        }
        self.process(&mut outs);
        outs
    }

    pub fn handle(&mut self, input: Input<V, H>) -> Vec<Output<V, H>> {
        let mut outs = Vec::new();
        match input {
            Input::StartHeight(h) => {
                self.started = true;
                self.height = h;
                self.round = 0;
                self.step = Step::Propose;
                self.locked = None;
                self.valid = None;
                self.decided = None;
                self.awaiting_value = None;
                self.rounds.clear();
                self.signed.clear();
                self.start_round(0, &mut outs);
            }
            // After a decision, votes are still recorded: equivocation evidence stays useful.
            Input::Vote(vote) if self.started => self.on_vote(vote, &mut outs),
            _ if !self.started || self.decided.is_some() => {}
            Input::ProposeValue {
                height,
                round,
                value,
            } => {
                if height == self.height
                    && round == self.round
                    && self.step == Step::Propose
                    && self.awaiting_value == Some(round)
                {
                    self.awaiting_value = None;
                    self.propose(value, None, &mut outs);
                }
            }
            Input::Proposal { proposal, valid } => self.on_proposal(proposal, valid, &mut outs),
            Input::Vote(_) => {}
            Input::Timeout {
                height,
                round,
                step,
            } => {
                if height == self.height {
                    self.on_timeout(round, step, &mut outs);
                }
            }
        }
        self.process(&mut outs);
        outs
    }

    fn vote(
        &self,
        round: Round,
        vote_type: VoteType,
        value: Option<H>,
        validator: V,
    ) -> Vote<V, H> {
        Vote {
            height: self.height,
            round,
            vote_type,
            value,
            validator,
        }
    }

    fn start_round(&mut self, round: Round, outs: &mut Vec<Output<V, H>>) {
        self.round = round;
        self.step = Step::Propose;
        self.awaiting_value = None;
        let height = self.height;
        if self.me.is_some() && self.validators.proposer(height, round) == self.me.as_ref() {
            match self.valid {
                Some((value, vr)) => self.propose(value, Some(vr), outs),
                None => {
                    self.awaiting_value = Some(round);
                    outs.push(Output::RequestValue { height, round });
                }
            }
        }
        // Armed for the proposer too: if the application never answers, the round moves on.
        let duration = self.timeouts.duration(Step::Propose, round);
        outs.push(Output::ScheduleTimeout {
            height,
            round,
            step: Step::Propose,
            duration,
        });
    }

    fn propose(&mut self, value: H, pol_round: Option<Round>, outs: &mut Vec<Output<V, H>>) {
        let Some(me) = self.me else { return };
        let proposal = Proposal {
            height: self.height,
            round: self.round,
            value,
            pol_round,
            proposer: me,
        };
        outs.push(Output::Proposal(proposal.clone()));
        self.rounds.entry(self.round).or_default().proposal = Some((proposal, true));
    }

    fn on_proposal(&mut self, proposal: Proposal<V, H>, valid: bool, _outs: &mut [Output<V, H>]) {
        if proposal.height != self.height
            || self.validators.proposer(proposal.height, proposal.round) != Some(&proposal.proposer)
        {
            return;
        }
        if proposal.pol_round.is_some_and(|vr| vr >= proposal.round) {
            return;
        }
        if !self.admit_round(proposal.round, &proposal.proposer) {
            return;
        }
        let rs = self.rounds.entry(proposal.round).or_default();
        // The first proposal of a round stands; a second one from the same proposer is ignored.
        if rs.proposal.is_none() {
            rs.proposal = Some((proposal, valid));
        }
    }

    fn on_vote(&mut self, vote: Vote<V, H>, outs: &mut Vec<Output<V, H>>) {
        if vote.height != self.height || self.validators.power(&vote.validator).is_none() {
            return;
        }
        if !self.admit_round(vote.round, &vote.validator) {
            return;
        }
        let rs = self.rounds.entry(vote.round).or_default();
        let votes = rs.votes_mut(vote.vote_type);
        match votes.get(&vote.validator) {
            None => {
                votes.insert(vote.validator, vote.value);
            }
            Some(prev) if *prev == vote.value => {}
            Some(prev) => {
                let first = Vote {
                    value: *prev,
                    ..vote.clone()
                };
                outs.push(Output::Equivocation {
                    first,
                    second: vote,
                });
            }
        }
    }

    /// Bounds how many rounds ahead of ours one validator can make us keep state for.
    fn admit_round(&mut self, round: Round, validator: &V) -> bool {
        if round <= self.round {
            return true;
        }
        if self
            .rounds
            .get(&round)
            .is_some_and(|rs| rs.has_messages_from(validator))
        {
            return true;
        }
        let future: Vec<Round> = self
            .rounds
            .range(self.round + 1..)
            .filter(|(_, rs)| rs.has_messages_from(validator))
            .map(|(r, _)| *r)
            .collect();
        if future.len() < MAX_FUTURE_ROUNDS_PER_VALIDATOR {
            return true;
        }
        let oldest = future[0];
        if round < oldest {
            return false;
        }
        if let Some(rs) = self.rounds.get_mut(&oldest) {
            rs.prevotes.remove(validator);
            rs.precommits.remove(validator);
            if rs
                .proposal
                .as_ref()
                .is_some_and(|(p, _)| p.proposer == *validator)
            {
                rs.proposal = None;
            }
            if rs.is_empty() {
                self.rounds.remove(&oldest);
            }
        }
        true
    }

    fn on_timeout(&mut self, round: Round, step: Step, outs: &mut Vec<Output<V, H>>) {
        if round != self.round {
            return;
        }
        match step {
            // Rule 57.
            Step::Propose if self.step == Step::Propose => {
                self.cast(VoteType::Prevote, None, outs);
                self.step = Step::Prevote;
            }
            // Rule 61.
            Step::Prevote if self.step == Step::Prevote => {
                self.cast(VoteType::Precommit, None, outs);
                self.step = Step::Precommit;
            }
            // Rule 65.
            Step::Precommit => self.start_round(round + 1, outs),
            _ => {}
        }
    }

    /// Signs (emits) and counts our vote. For a (round, kind) we already signed, the earlier
    /// value is emitted again instead: a restarted validator never equivocates.
    fn cast(&mut self, vote_type: VoteType, value: Option<H>, outs: &mut Vec<Output<V, H>>) {
        let Some(me) = self.me else { return };
        let round = self.round;
        let value = *self.signed.entry((round, vote_type)).or_insert(value);
        self.rounds
            .entry(round)
            .or_default()
            .votes_mut(vote_type)
            .insert(me, value);
        outs.push(Output::Vote(self.vote(round, vote_type, value, me)));
    }

    fn power_of<'a>(
        &self,
        votes: impl Iterator<Item = (&'a V, &'a Option<H>)>,
        pred: impl Fn(&Option<H>) -> bool,
    ) -> u128
    where
        V: 'a,
        H: 'a,
    {
        votes
            .filter(|(_, v)| pred(v))
            .map(|(val, _)| u128::from(self.validators.power(val).unwrap_or(0)))
            .sum()
    }

    fn quorum_for(&self, round: Round, t: VoteType, value: Option<H>) -> bool {
        self.rounds.get(&round).is_some_and(|rs| {
            self.validators
                .is_quorum(self.power_of(rs.votes(t).iter(), |v| *v == value))
        })
    }

    fn quorum_any(&self, round: Round, t: VoteType) -> bool {
        self.rounds.get(&round).is_some_and(|rs| {
            self.validators
                .is_quorum(self.power_of(rs.votes(t).iter(), |_| true))
        })
    }

    /// Applies the rules until none fires.
    fn process(&mut self, outs: &mut Vec<Output<V, H>>) {
        if !self.started {
            return;
        }
        while self.decided.is_none() {
            let fired = self.rule_decide(outs)
                || self.rule_skip_round(outs)
                || self.rule_proposal(outs)
                || self.rule_prevote_any(outs)
                || self.rule_polka(outs)
                || self.rule_polka_nil(outs)
                || self.rule_precommit_any(outs);
            if !fired {
                break;
            }
        }
    }

    /// Rule 49: a valid proposal of any round with more than 2/3 precommits for it is decided.
    fn rule_decide(&mut self, outs: &mut Vec<Output<V, H>>) -> bool {
        let found = self.rounds.iter().find_map(|(r, rs)| {
            let (p, valid) = rs.proposal.as_ref()?;
            (*valid && self.quorum_for(*r, VoteType::Precommit, Some(p.value)))
                .then_some((*r, p.value))
        });
        let Some((round, value)) = found else {
            return false;
        };
        let commits = self.rounds[&round]
            .precommits
            .iter()
            .filter(|(_, v)| **v == Some(value))
            .map(|(val, _)| self.vote(round, VoteType::Precommit, Some(value), *val))
            .collect();
        self.decided = Some(value);
        outs.push(Output::Decide {
            height: self.height,
            round,
            value,
            commits,
        });
        true
    }

    /// Rule 55: more than 1/3 of the power has sent messages for a later round: go there.
    fn rule_skip_round(&mut self, outs: &mut Vec<Output<V, H>>) -> bool {
        let target = self
            .rounds
            .range(self.round + 1..)
            .rev()
            .find(|(_, rs)| {
                let power = self
                    .validators
                    .validators()
                    .iter()
                    .filter(|(v, _)| rs.has_messages_from(v))
                    .map(|(_, p)| u128::from(*p))
                    .sum();
                self.validators.is_one_third(power)
            })
            .map(|(r, _)| *r);
        match target {
            Some(r) => {
                self.start_round(r, outs);
                true
            }
            None => false,
        }
    }

    /// Rules 22 and 28: prevote on the round's proposal.
    fn rule_proposal(&mut self, outs: &mut Vec<Output<V, H>>) -> bool {
        if self.step != Step::Propose {
            return false;
        }
        let Some((p, valid)) = self
            .rounds
            .get(&self.round)
            .and_then(|rs| rs.proposal.clone())
        else {
            return false;
        };
        let vote = match p.pol_round {
            None => valid && self.locked.is_none_or(|(lv, _)| lv == p.value),
            Some(vr) => {
                if !self.quorum_for(vr, VoteType::Prevote, Some(p.value)) {
                    return false;
                }
                valid && self.locked.is_none_or(|(lv, lr)| lr <= vr || lv == p.value)
            }
        };
        self.cast(VoteType::Prevote, vote.then_some(p.value), outs);
        self.step = Step::Prevote;
        true
    }

    /// Rule 34: more than 2/3 prevoted anything: arm the prevote timeout once.
    fn rule_prevote_any(&mut self, outs: &mut Vec<Output<V, H>>) -> bool {
        let round = self.round;
        if self.step != Step::Prevote || !self.quorum_any(round, VoteType::Prevote) {
            return false;
        }
        let rs = self.rounds.entry(round).or_default();
        if rs.prevote_timeout_armed {
            return false;
        }
        rs.prevote_timeout_armed = true;
        let duration = self.timeouts.duration(Step::Prevote, round);
        outs.push(Output::ScheduleTimeout {
            height: self.height,
            round,
            step: Step::Prevote,
            duration,
        });
        true
    }

    /// Rule 36: a valid proposal and more than 2/3 prevotes for it: lock and precommit it.
    fn rule_polka(&mut self, outs: &mut Vec<Output<V, H>>) -> bool {
        let round = self.round;
        if self.step == Step::Propose {
            return false;
        }
        let Some(rs) = self.rounds.get(&round) else {
            return false;
        };
        if rs.polka_seen {
            return false;
        }
        let Some((p, true)) = rs.proposal.clone() else {
            return false;
        };
        if !self.quorum_for(round, VoteType::Prevote, Some(p.value)) {
            return false;
        }
        self.rounds.entry(round).or_default().polka_seen = true;
        if self.step == Step::Prevote {
            self.locked = Some((p.value, round));
            self.cast(VoteType::Precommit, Some(p.value), outs);
            self.step = Step::Precommit;
        }
        self.valid = Some((p.value, round));
        true
    }

    /// Rule 44: more than 2/3 prevoted nil: precommit nil.
    fn rule_polka_nil(&mut self, outs: &mut Vec<Output<V, H>>) -> bool {
        if self.step != Step::Prevote || !self.quorum_for(self.round, VoteType::Prevote, None) {
            return false;
        }
        self.cast(VoteType::Precommit, None, outs);
        self.step = Step::Precommit;
        true
    }

    /// Rule 47: more than 2/3 precommitted anything: arm the precommit timeout once.
    fn rule_precommit_any(&mut self, outs: &mut Vec<Output<V, H>>) -> bool {
        let round = self.round;
        if !self.quorum_any(round, VoteType::Precommit) {
            return false;
        }
        let rs = self.rounds.entry(round).or_default();
        if rs.precommit_timeout_armed {
            return false;
        }
        rs.precommit_timeout_armed = true;
        let duration = self.timeouts.duration(Step::Precommit, round);
        outs.push(Output::ScheduleTimeout {
            height: self.height,
            round,
            step: Step::Precommit,
            duration,
        });
        true
    }
}

#[cfg(test)]
mod tests;
