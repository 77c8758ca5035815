//! The Consensus actor: wires the pure Tendermint core (`chain::consensus`) to gossip, the
//! Verifier, the Mempool and Settlement, and catches up from peers (sync) when behind.
//!
//! Validators sign proposals and votes only through the [`signer::Signer`], which writes what
//! it signs to a synced write-ahead log first and refuses to sign anything conflicting, so a
//! restarted validator never double-signs. Every other node runs the same core as an observer
//! and commits a block once it holds the proposal and more than 2/3 of precommits. Messages
//! from gossip are checked ([`inbox`]) before they are buffered, fed to the core or relayed.

pub mod inbox;
pub mod signer;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chain::consensus::{self as core, Input, Output, TimeoutConfig, ValidatorSet};
use chain::{
    Address, B256, Block, CommitCertificate, Genesis, Height, PrivateKeySigner, SignedVote, Store,
    VoteKind,
};
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;

use crate::mempool::{Candidates, DropInvalid, Mempool};
use crate::metrics::METRICS;
use crate::network::{
    GetPeers, GossipConsensus, Network, PenalisePeer, Publish, ReportValidation, SendSync,
};
use crate::protocol::{self, ConsensusMsg, MAX_SYNC_BLOCKS, SyncReply, SyncRequest, topics};
use crate::settlement::{
    BuildBlock, CommitBlock, GetTipSet, NextValidators, Settlement, ValidateBlock,
};
use crate::verifier::{Verifier, VerifyRecords};

use inbox::{FutureBuffer, Place, Position, Verdict};
use signer::{Signer, StoreWal, kind, lock_of, vote_type};

/// Without a commit for this long, ask a peer for blocks.
const STALL: Duration = Duration::from_secs(4);
/// How often a node announces its height (and sends votes of a slow height again).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A peer's claimed height is believed for this long; heartbeats renew honest claims.
const CLAIM_TTL: Duration = Duration::from_secs(10);
/// After a failed commit of a decided block, try again after this long.
const COMMIT_RETRY: Duration = Duration::from_millis(500);
/// Heights after an offender's reported offence before this node reports it again (a report
/// that never made it into a block is retried then; a jailed offender is not slashed again).
const REPORT_AGAIN_AFTER: Height = 20;
/// A peer that failed this many sync requests in a row (within [`SYNC_STRIKE_TTL`]) is not
/// asked again until its strikes expire.
const MAX_SYNC_STRIKES: u32 = 3;
const SYNC_STRIKE_TTL: Duration = Duration::from_secs(60);

type Core = core::Consensus<Address, B256>;

/// Consensus settings from the node config.
pub struct ConsensusConfig {
    pub timeouts: TimeoutConfig,
    pub byzantine: Option<Byzantine>,
}

/// Testnet fault injection on a validator's consensus messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Byzantine {
    /// Publish bytes that no peer can decode in place of each proposal (the proposal is still
    /// signed and kept, as a buggy or hostile encoder would): the round must time out and the
    /// next proposer's block be decided.
    GarbageProposals,
    /// After each prevote for a block, also sign and publish a nil prevote for the same round
    /// (bypassing the signer, which would refuse): peers must keep the pair as evidence.
    DoubleVote,
}

/// The settlement requests consensus makes. The node wires all of them to its [`Settlement`]
/// actor (`Ledger::from`); a test can put a fault between consensus and one of them.
#[derive(Clone)]
pub struct Ledger {
    pub tip: Recipient<GetTipSet>,
    pub build: Recipient<BuildBlock>,
    pub validate: Recipient<ValidateBlock>,
    pub commit: Recipient<CommitBlock>,
}

impl From<Addr<Settlement>> for Ledger {
    fn from(a: Addr<Settlement>) -> Self {
        Ledger {
            tip: a.clone().recipient(),
            build: a.clone().recipient(),
            validate: a.clone().recipient(),
            commit: a.recipient(),
        }
    }
}

/// All equivocation evidence this node has stored.
#[derive(Message)]
#[rtype(result = "Result<Vec<chain::Evidence>, String>")]
pub struct GetEvidence;

pub struct Consensus {
    genesis: Arc<Genesis>,
    /// What this network's signatures are bound to (computed once from the genesis).
    domain: chain::signing::Domain,
    /// `None` on observers, and on a validator whose write-ahead log is unreadable (it must
    /// not sign what it cannot check against what it signed before).
    signer: Option<Signer<StoreWal>>,
    /// Where evidence of equivocation is kept (the WAL lives there too, through the signer).
    store: Arc<Store>,
    core: Core,
    byzantine: Option<Byzantine>,
    /// A copy of the validator key for [`Byzantine::DoubleVote`] only: the fault signs what
    /// the signer refuses to.
    fault_key: Option<Arc<PrivateKeySigner>>,
    validators: ValidatorSet<Address>,
    /// This node's validator key: it reports the equivocations it sees as transactions.
    reporter: Option<Arc<PrivateKeySigner>>,
    /// The offence height of the last report per offender.
    reported: HashMap<Address, Height>,
    network: Addr<Network>,
    settlement: Ledger,
    mempool: Addr<Mempool>,
    verifier: Option<Addr<Verifier>>,
    /// Where bridge deposits are checked against this node's EVM RPC; without it, no block
    /// with a deposit is voted for.
    deposits: Option<Recipient<crate::bridge::CheckDeposits>>,
    /// Current height (tip + 1); 0 until the tip is known.
    height: Height,
    blocks: HashMap<B256, Arc<Block>>,
    votes: HashMap<(u32, VoteKind, Address), SignedVote>,
    /// The proposal seen for each round of the current height (one proposer per round).
    proposals: HashMap<u32, chain::SignedProposal>,
    future: FutureBuffer,
    last_commit: Instant,
    /// Heights peers claim, with when they claimed it; claims expire after [`CLAIM_TTL`].
    peer_heights: HashMap<PeerId, (Height, Instant)>,
    /// Peers whose claimed heights did not come with blocks: skipped by sync for a while.
    sync_strikes: HashMap<PeerId, (u32, Instant)>,
    /// Rotates sync requests among peers that claim enough height.
    sync_turn: usize,
    syncing: bool,
    committing: bool,
    /// Whether the settlement told the validator set yet.
    started: bool,
}

impl Consensus {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        genesis: Arc<Genesis>,
        key: Option<PrivateKeySigner>,
        config: ConsensusConfig,
        store: Arc<Store>,
        network: Addr<Network>,
        settlement: impl Into<Ledger>,
        mempool: Addr<Mempool>,
        verifier: Option<Addr<Verifier>>,
    ) -> Self {
        // The genesis set until the settlement tells the set of the tip's next height.
        let validators = ValidatorSet::new(genesis.validator_powers());
        let reporter = key.clone().map(Arc::new);
        let fault_key = key
            .clone()
            .filter(|_| config.byzantine == Some(Byzantine::DoubleVote))
            .map(Arc::new);
        let signer = key.and_then(|k| {
            match Signer::open(StoreWal(store.clone()), Arc::new(k), genesis.domain()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "the consensus write-ahead log is unreadable: observing only, signing nothing until it is repaired or removed");
                    None
                }
            }
        });
        let me = signer.as_ref().map(|s| s.address());
        Consensus {
            core: Core::new(me, validators.clone(), config.timeouts),
            byzantine: config.byzantine,
            fault_key,
            validators,
            reporter,
            reported: HashMap::new(),
            signer,
            store,
            domain: genesis.domain(),
            genesis,
            network,
            settlement: settlement.into(),
            mempool,
            verifier,
            deposits: None,
            height: 0,
            blocks: HashMap::new(),
            votes: HashMap::new(),
            proposals: HashMap::new(),
            future: FutureBuffer::default(),
            last_commit: Instant::now(),
            peer_heights: HashMap::new(),
            sync_strikes: HashMap::new(),
            sync_turn: 0,
            syncing: false,
            committing: false,
            started: false,
        }
    }

    /// Checks the bridge deposits of proposals with `checker` (a validator's bridge actor).
    pub fn with_deposit_checker(
        mut self,
        checker: Recipient<crate::bridge::CheckDeposits>,
    ) -> Self {
        self.deposits = Some(checker);
        self
    }

    fn publish(&self, msg: &ConsensusMsg) {
        let mut data = protocol::encode(msg);
        if self.byzantine == Some(Byzantine::GarbageProposals)
            && let ConsensusMsg::Proposal { proposal, .. } = msg
        {
            tracing::warn!(
                round = proposal.proposal.round,
                "fault injection: publishing an undecodable proposal"
            );
            // The envelope's version, then the proposal's variant tag with a body cut short.
            data.truncate(data.len() / 2);
        }
        self.network.do_send(Publish {
            topic: topics::CONSENSUS,
            data,
        });
    }

    /// [`Byzantine::DoubleVote`]: a nil prevote beside each prevote for a block.
    fn double_vote_fault(&self, sv: &SignedVote) {
        let Some(key) = &self.fault_key else { return };
        if sv.vote.kind != VoteKind::Prevote || sv.vote.block.is_none() {
            return;
        }
        let nil = chain::Vote {
            block: None,
            ..sv.vote.clone()
        };
        if let Ok(second) = SignedVote::sign(nil, key, &self.domain) {
            tracing::warn!(
                height = sv.vote.height,
                round = sv.vote.round,
                "fault injection: publishing a second, nil prevote"
            );
            self.publish(&ConsensusMsg::Vote(second));
        }
    }

    /// Takes the validator set that decides the next height (the settlement's, after each
    /// commit: an epoch may have changed it). This node votes while it is in the set.
    fn set_validators(&mut self, set: NextValidators) {
        let set = ValidatorSet::new(set);
        if set.is_empty() || set.validators() == self.validators.validators() && self.started {
            return;
        }
        let me = self.signer.as_ref().map(|s| s.address());
        let was = self.core.is_validator();
        self.core.set_validators(set.clone(), me);
        let now = self.core.is_validator();
        if !self.started || was != now {
            if now {
                tracing::info!(validators = set.validators().len(), "consensus: validating");
            } else {
                tracing::info!(
                    validators = set.validators().len(),
                    "consensus: observing (not in the validator set)"
                );
            }
        }
        self.validators = set;
        self.started = true;
    }

    /// Starts consensus at `height` (tip + 1), restoring what the signer signed there before a
    /// restart, then feeds the messages buffered for it.
    fn start_height(&mut self, height: Height, ctx: &mut Context<Self>) {
        self.height = height;
        self.blocks.clear();
        self.votes.clear();
        self.proposals.clear();
        self.last_commit = Instant::now();
        let mut outputs = self.core.handle(Input::StartHeight(height));
        if let Some(signer) = &self.signer {
            let (restored, blocks) = signer.restore_core(&mut self.core, height);
            if !restored.is_empty() || !blocks.is_empty() {
                tracing::info!(height, "consensus state restored from the write-ahead log");
            }
            outputs.extend(restored);
            for b in blocks {
                self.blocks.insert(b.hash(), b);
            }
        }
        self.apply(outputs, ctx);
        for (msg, origin, size) in self.future.take(height) {
            self.on_message(msg, origin, size, ctx);
        }
    }

    fn apply(&mut self, outputs: Vec<Output<Address, B256>>, ctx: &mut Context<Self>) {
        for out in outputs {
            match out {
                Output::RequestValue { height, round } => self.propose(height, round, ctx),
                Output::Proposal(_) | Output::Vote(_) => {
                    let Some(signer) = self.signer.as_mut() else {
                        continue;
                    };
                    let lock = lock_of(&self.core);
                    let blocks = &self.blocks;
                    let lookup = |h: &B256| blocks.get(h).cloned();
                    match signer.sign_output(&out, lock, &lookup) {
                        Some(Ok(msg)) => {
                            match &msg {
                                ConsensusMsg::Vote(sv) => {
                                    let v = &sv.vote;
                                    tracing::debug!(height = v.height, round = v.round, kind = ?v.kind, block = ?v.block, "voting");
                                    self.votes
                                        .insert((v.round, v.kind, v.validator), sv.clone());
                                    self.double_vote_fault(sv);
                                }
                                ConsensusMsg::Proposal { proposal, .. } => {
                                    tracing::debug!(height = proposal.proposal.height, round = proposal.proposal.round, block = %proposal.proposal.block_hash, "proposing");
                                    self.proposals
                                        .insert(proposal.proposal.round, proposal.clone());
                                }
                                ConsensusMsg::Status { .. } | ConsensusMsg::Evidence(_) => {}
                            }
                            self.publish(&msg);
                        }
                        Some(Err(e)) => {
                            METRICS
                                .consensus_sign_refused
                                .with_label_values(&[e.label()])
                                .inc();
                            tracing::error!(error = %e, "not signed, not sent");
                        }
                        None => {}
                    }
                }
                Output::ScheduleTimeout {
                    height,
                    round,
                    step,
                    duration,
                } => {
                    if round > 0 && step == core::Step::Propose {
                        METRICS.consensus_rounds.inc();
                        tracing::info!(height, round, "consensus entered a new round");
                    }
                    ctx.run_later(duration, move |act, ctx| {
                        let outs = act.core.handle(Input::Timeout {
                            height,
                            round,
                            step,
                        });
                        act.apply(outs, ctx);
                    });
                }
                Output::Decide {
                    height,
                    round,
                    value,
                    ..
                } => self.decide(height, round, value, ctx),
                Output::Equivocation { first, second } => {
                    // The signed pair is kept as evidence where the second vote arrives.
                    tracing::debug!(validator = %first.validator, height = first.height, round = first.round,
                        first = ?first.value, second = ?second.value, "core saw an equivocation");
                }
            }
        }
    }

    fn propose(&mut self, height: Height, round: u32, ctx: &mut Context<Self>) {
        let Some(signer) = &self.signer else { return };
        // After a restart, the block already proposed in this round, never another one.
        if let Some(block) = signer.repeat_proposal(height, round) {
            self.propose_block(height, round, block, ctx);
            return;
        }
        let proposer = signer.address();
        let interval = Duration::from_millis(self.genesis.params.block_interval_ms);
        let wait = interval.saturating_sub(self.last_commit.elapsed());
        let (max_records, max_txs) = (
            self.genesis.params.max_block_records as usize,
            self.genesis.params.max_block_txs as usize,
        );
        ctx.run_later(wait, move |act, ctx| {
            let mempool = act.mempool.clone();
            let settlement = act.settlement.build.clone();
            let fut = async move {
                let (records, txs) = mempool
                    .send(Candidates {
                        max_records,
                        max_txs,
                    })
                    .await
                    .ok()?;
                let built = settlement
                    .send(BuildBlock {
                        proposer,
                        timestamp_ms: chain::types::now_ms(),
                        records,
                        txs,
                    })
                    .await;
                match built {
                    Ok(Ok(built)) => {
                        if !built.dropped_records.is_empty() || !built.dropped_txs.is_empty() {
                            mempool.do_send(DropInvalid {
                                records: built.dropped_records,
                                txs: built.dropped_txs,
                            });
                        }
                        Some(Arc::new(built.block))
                    }
                    Ok(Err(e)) => {
                        // Nothing to propose: the round times out and the next proposer goes.
                        tracing::error!(height, round, error = %e, "cannot build a block");
                        None
                    }
                    Err(_) => None,
                }
            };
            ctx.spawn(fut.into_actor(act).map(move |block, act, ctx| {
                let Some(block) = block else { return };
                if act.height != height || act.core.round() != round {
                    return;
                }
                act.propose_block(height, round, block, ctx);
            }));
        });
    }

    /// Holds `block` and hands its hash to the core as our proposal for (`height`, `round`).
    fn propose_block(
        &mut self,
        height: Height,
        round: u32,
        block: Arc<Block>,
        ctx: &mut Context<Self>,
    ) {
        let hash = block.hash();
        self.blocks.insert(hash, block);
        let outs = self.core.handle(Input::ProposeValue {
            height,
            round,
            value: hash,
        });
        self.apply(outs, ctx);
    }

    /// Commits the decided block with a certificate of the precommits for exactly that block
    /// and round. A failed commit is tried again (with the votes known by then) until the
    /// height is committed, by this path or by sync.
    fn decide(&mut self, height: Height, round: u32, value: B256, ctx: &mut Context<Self>) {
        if height != self.height || self.committing {
            return;
        }
        let votes: Vec<SignedVote> = self
            .votes
            .values()
            .filter(|sv| {
                let v = &sv.vote;
                v.height == height
                    && v.round == round
                    && v.kind == VoteKind::Precommit
                    && v.block == Some(value)
            })
            .cloned()
            .collect();
        let Some(block) = self.blocks.get(&value).cloned() else {
            tracing::warn!(height, block = %value, "decided a block we do not hold; will sync");
            return;
        };
        let certificate = CommitCertificate {
            height,
            round,
            block_hash: value,
            votes,
        };
        self.committing = true;
        let fut = self
            .settlement
            .commit
            .send(CommitBlock { block, certificate });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.committing = false;
            let error = match res {
                Ok(Ok(set)) => {
                    act.set_validators(set);
                    return act.committed(height, ctx);
                }
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            };
            tracing::error!(height, error = %error, "decided block failed to commit; retrying");
            ctx.run_later(COMMIT_RETRY, move |act, ctx| {
                act.decide(height, round, value, ctx)
            });
        }));
    }

    fn committed(&mut self, height: Height, ctx: &mut Context<Self>) {
        if height + 1 > self.height {
            self.start_height(height + 1, ctx);
        }
    }

    /// Whether this exact signed vote (same bytes) is already held for the current height: it
    /// was checked when it first arrived, and heartbeats send it again every second while the
    /// height is slow, so it is not checked again.
    fn known_vote(&self, sv: &SignedVote) -> bool {
        is_held(&self.votes, self.height, sv)
    }

    fn position(&self) -> Position<'_> {
        Position {
            height: self.height,
            round: self.core.round(),
            validators: &self.validators,
            domain: &self.domain,
        }
    }

    /// Checks a message and, if it passes, feeds it to the core or buffers it. Returns what
    /// gossipsub should do with it.
    fn on_message(
        &mut self,
        msg: ConsensusMsg,
        origin: PeerId,
        size: usize,
        ctx: &mut Context<Self>,
    ) -> Verdict {
        match msg {
            ConsensusMsg::Status { height, votes, .. } => {
                // Every vote is checked before the claim counts: a peer relaying forged votes
                // is penalised, and its status is not relayed.
                let mut fresh = Vec::new();
                for v in votes {
                    if self.known_vote(&v) {
                        METRICS.consensus_known_votes.inc();
                        continue;
                    }
                    match self.position().check_vote(&v) {
                        Ok(place) => fresh.push((v, place)),
                        Err(Verdict::Reject(why)) => return Verdict::Reject(why),
                        Err(_) => {}
                    }
                }
                self.peer_heights.insert(origin, (height, Instant::now()));
                if height >= self.height && self.height > 0 {
                    self.sync(ctx);
                }
                // Votes its author signed before and sends again while its height is slow: the
                // ones we missed are what our round is waiting for.
                for (v, place) in fresh {
                    self.take_vote(v, place, origin, 0, ctx);
                }
                Verdict::Accept
            }
            ConsensusMsg::Evidence(e) => {
                // Checked against the set that decided the offence's height.
                let set = match self.store.validator_set_at(e.height()) {
                    Ok(Some(set)) => set,
                    Ok(None) | Err(_) => self.validators.validators().to_vec(),
                };
                if let Err(err) = e.verify(&set, &self.domain) {
                    tracing::warn!(%origin, error = %err, "invalid evidence");
                    return Verdict::Reject("invalid evidence");
                }
                if self.record_evidence(*e, false) {
                    Verdict::Accept
                } else {
                    Verdict::Ignore("known evidence")
                }
            }
            ConsensusMsg::Vote(sv) if self.known_vote(&sv) => {
                METRICS.consensus_known_votes.inc();
                Verdict::Ignore("known vote")
            }
            ConsensusMsg::Vote(sv) => match self.position().check_vote(&sv) {
                Ok(place) => {
                    self.take_vote(sv, place, origin, size, ctx);
                    Verdict::Accept
                }
                Err(v) => v,
            },
            ConsensusMsg::Proposal { proposal, block } => {
                let place = match self.position().check_proposal(&proposal, &block) {
                    Ok(place) => place,
                    Err(v) => return v,
                };
                let p = proposal.proposal.clone();
                if place == Place::Later {
                    let msg = ConsensusMsg::Proposal { proposal, block };
                    if let Some(ConsensusMsg::Proposal {
                        proposal: first, ..
                    }) = self.future.slot_of(p.height, &msg)
                        && let ConsensusMsg::Proposal { proposal, .. } = &msg
                        && let Some(e) =
                            chain::Evidence::double_proposal(first.clone(), proposal.clone())
                    {
                        self.record_evidence(e, true);
                    }
                    return match self.future.push(p.height, msg, origin, size) {
                        Ok(()) => Verdict::Accept,
                        Err(why) => Verdict::Ignore(why),
                    };
                }
                // One proposal per round: a second, different one from the same proposer is
                // equivocation, kept as evidence and not fed to the core.
                if let Some(first) = self.proposals.get(&p.round) {
                    if first.proposal.block_hash == p.block_hash {
                        return Verdict::Ignore("duplicate proposal");
                    }
                    if let Some(e) = chain::Evidence::double_proposal(first.clone(), proposal) {
                        self.record_evidence(e, true);
                    }
                    return Verdict::Ignore("second proposal of a round");
                }
                self.proposals.insert(p.round, proposal);
                self.blocks.insert(p.block_hash, block.clone());
                let core_p = core::Proposal {
                    height: p.height,
                    round: p.round,
                    value: p.block_hash,
                    pol_round: p.pol_round,
                    proposer: p.proposer,
                };
                let settlement = self.settlement.validate.clone();
                let verifier = self.verifier.clone();
                let deposits = self.deposits.clone();
                // An observer votes for nothing: it decides by the validators' precommits, and
                // a deposit it cannot check must not keep it from deciding.
                let observer = self.signer.is_none();
                let started = Instant::now();
                let fut = async move {
                    // Each deposit is checked against this validator's own EVM RPC.
                    let claims: Vec<_> = block
                        .txs
                        .iter()
                        .filter_map(|t| crate::bridge::ClaimedDeposit::of(&t.action))
                        .collect();
                    if !claims.is_empty() && !observer {
                        let Some(checker) = deposits else {
                            return Err(
                                "a bridge deposit this validator cannot check against the EVM"
                                    .to_string(),
                            );
                        };
                        checker
                            .send(crate::bridge::CheckDeposits(claims))
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| e.to_string())?;
                    }
                    if let Some(v) = verifier {
                        v.send(VerifyRecords(block.records.clone()))
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()))?;
                        // Fraud reports: their claims re-executed before this validator votes
                        // for a block that slashes by them.
                        let claims: Vec<chain::evidence::FraudEvidence> = block
                            .txs
                            .iter()
                            .filter_map(|t| match &t.action {
                                chain::Action::ReportFraud(f) => Some((**f).clone()),
                                _ => None,
                            })
                            .collect();
                        if !claims.is_empty() {
                            v.send(crate::verifier::CheckFraud(claims))
                                .await
                                .map_err(|e| e.to_string())?
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    settlement
                        .send(ValidateBlock(block))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()))
                };
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                    if act.height != core_p.height {
                        return;
                    }
                    tracing::debug!(height = core_p.height, round = core_p.round, ok = res.is_ok(),
                        ms = started.elapsed().as_millis() as u64, "proposal checked");
                    let valid = match res {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(height = core_p.height, round = core_p.round, error = %e, "proposal invalid: prevoting nil");
                            false
                        }
                    };
                    let outs = act.core.handle(Input::Proposal { proposal: core_p, valid });
                    act.apply(outs, ctx);
                }));
                Verdict::Accept
            }
        }
    }

    /// Keeps verified evidence (stored, counted, logged) and, when `publish`, gossips it.
    /// Returns whether it was new.
    fn record_evidence(&mut self, e: chain::Evidence, publish: bool) -> bool {
        match self.store.put_evidence(&e) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(err) => {
                tracing::error!(error = %err, "cannot store evidence");
                return false;
            }
        }
        METRICS.consensus_equivocations.inc();
        tracing::warn!(offender = %e.offender(), height = e.height(), evidence = %e.id(),
            kind = match &e { chain::Evidence::DoubleVote { .. } => "double vote", chain::Evidence::DoubleProposal { .. } => "double proposal" },
            "equivocation: evidence stored");
        if publish {
            self.publish(&ConsensusMsg::Evidence(Box::new(e.clone())));
        }
        // Reported to the chain, which slashes and jails the offender. Every validator that
        // saw it reports; the mempool refuses the report once the chain has punished the
        // offence (its dry run fails), so few pay a fee for nothing.
        // One report per offender while its punishment lasts: a jailed validator is not
        // slashed again, and every later height it double-signs would be one more report.
        let recently = self
            .reported
            .get(&e.offender())
            .is_some_and(|h| e.height() < h.saturating_add(REPORT_AGAIN_AFTER));
        if let Some(key) = self.reporter.as_ref().filter(|_| !recently) {
            self.reported.insert(e.offender(), e.height());
            let id = e.id();
            let fut = self.mempool.send(crate::mempool::AddOwnTx {
                key: key.clone(),
                action: chain::Action::ReportEvidence(e),
            });
            actix::spawn(async move {
                match fut.await {
                    Ok(Ok(hash)) => {
                        tracing::info!(evidence = %id, tx = %hash, "evidence reported to the chain")
                    }
                    Ok(Err(err)) => {
                        tracing::info!(evidence = %id, error = %err, "evidence not reported")
                    }
                    Err(err) => tracing::warn!(evidence = %id, error = %err, "mempool unavailable"),
                }
            });
        }
        true
    }

    /// A checked vote: to the core now, or to the buffer for its height.
    fn take_vote(
        &mut self,
        sv: SignedVote,
        place: Place,
        origin: PeerId,
        size: usize,
        ctx: &mut Context<Self>,
    ) {
        if place == Place::Later {
            let h = sv.vote.height;
            let msg = ConsensusMsg::Vote(sv);
            if let Some(ConsensusMsg::Vote(first)) = self.future.slot_of(h, &msg)
                && let ConsensusMsg::Vote(sv) = &msg
                && let Some(e) = chain::Evidence::double_vote(first.clone(), sv.clone())
            {
                self.record_evidence(e, true);
            }
            // A full buffer or a duplicate is not the sender's fault: dropped quietly.
            let _ = self.future.push(h, msg, origin, size.max(256));
            return;
        }
        let v = &sv.vote;
        let key = (v.round, v.kind, v.validator);
        let input = core::Vote {
            height: v.height,
            round: v.round,
            vote_type: vote_type(v.kind),
            value: v.block,
            validator: v.validator,
        };
        match self.votes.get(&key) {
            Some(first) if first.vote.block != sv.vote.block => {
                if let Some(e) = chain::Evidence::double_vote(first.clone(), sv) {
                    self.record_evidence(e, true);
                }
            }
            Some(_) => {}
            None => {
                self.votes.insert(key, sv);
            }
        }
        let outs = self.core.handle(Input::Vote(input));
        self.apply(outs, ctx);
    }

    /// Every [`HEARTBEAT`]: announce our height, with the votes the core wants sent again while
    /// the height is slow, and sync when stalled.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.height > 0 {
            let mut votes: Vec<SignedVote> = Vec::new();
            for v in self.core.heartbeat() {
                let key = (v.round, kind(v.vote_type), v.validator);
                if let Some(sv) = self.votes.get(&key) {
                    votes.push(sv.clone());
                    continue;
                }
                // Signed before a restart: the write-ahead log kept the value, not the
                // signature. The signer signs the same value again (the same bytes: RFC 6979).
                // Without this, the prevotes of a proof-of-lock round are lost once their
                // signers restarted, and a re-proposed locked block can never gather a polka.
                let Some(signer) = self.signer.as_mut() else {
                    continue;
                };
                let lock = lock_of(&self.core);
                let blocks = &self.blocks;
                let lookup = |h: &B256| blocks.get(h).cloned();
                match signer.sign_output(&Output::Vote(v), lock, &lookup) {
                    Some(Ok(ConsensusMsg::Vote(sv))) => {
                        self.votes.insert(key, sv.clone());
                        votes.push(sv);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cannot sign a restored vote again")
                    }
                    _ => {}
                }
            }
            if !votes.is_empty() {
                METRICS.consensus_rebroadcasts.inc_by(votes.len() as u64);
                tracing::debug!(
                    height = self.height,
                    round = self.core.round(),
                    votes = votes.len(),
                    "height is slow: sending our votes again"
                );
            }
            self.publish(&ConsensusMsg::Status {
                height: self.height - 1,
                votes,
                issued_ms: chain::types::now_ms(),
            });
        }
        if self.last_commit.elapsed() > STALL && !self.committing {
            self.sync(ctx);
        }
    }

    /// Peers to sync from: unexpired claims of at least `from`, without recent strikes.
    fn sync_candidates(&mut self, from: Height) -> Vec<(PeerId, Height)> {
        let now = Instant::now();
        self.peer_heights
            .retain(|_, (_, at)| now.duration_since(*at) < CLAIM_TTL);
        self.sync_strikes
            .retain(|_, (_, at)| now.duration_since(*at) < SYNC_STRIKE_TTL);
        let mut c: Vec<(PeerId, Height)> = self
            .peer_heights
            .iter()
            .filter(|(p, (h, _))| {
                *h >= from
                    && self
                        .sync_strikes
                        .get(*p)
                        .is_none_or(|(n, _)| *n < MAX_SYNC_STRIKES)
            })
            .map(|(p, (h, _))| (*p, *h))
            .collect();
        c.sort_by_key(|(p, _)| *p);
        c
    }

    /// A peer claimed heights it did not serve (or served blocks that do not commit): its
    /// claim is dropped, it is skipped for a while, and the network lowers its score.
    fn strike(&mut self, peer: PeerId, why: &'static str) {
        self.peer_heights.remove(&peer);
        let e = self.sync_strikes.entry(peer).or_insert((0, Instant::now()));
        e.0 += 1;
        e.1 = Instant::now();
        tracing::info!(%peer, why, strikes = e.0, "sync peer did not serve what it claimed");
        self.network.do_send(PenalisePeer { peer, reason: why });
    }

    /// Fetches finalized blocks, from the peers that claim them in turn (or any connected
    /// peer when none does, e.g. when stalled). Every number from a peer is used with checked
    /// arithmetic, and a claim that is not served costs the peer.
    fn sync(&mut self, ctx: &mut Context<Self>) {
        if self.syncing || self.height == 0 {
            return;
        }
        let from = self.height;
        let last = from.saturating_add(MAX_SYNC_BLOCKS - 1);
        let candidates = self.sync_candidates(from);
        let turn = self.sync_turn;
        self.sync_turn = self.sync_turn.wrapping_add(1);
        let chosen = (!candidates.is_empty()).then(|| candidates[turn % candidates.len()]);
        let network = self.network.clone();
        self.syncing = true;
        let fut = async move {
            let (peer, to, claimed) = match chosen {
                Some((p, h)) => (p, h.min(last), true),
                None => {
                    let peers = network.send(GetPeers).await.unwrap_or_default();
                    if peers.is_empty() {
                        return Err(None);
                    }
                    (peers[turn % peers.len()], last, false)
                }
            };
            let reply = network
                .send(SendSync {
                    peer,
                    request: SyncRequest { from, to },
                })
                .await;
            match reply {
                Ok(Ok(SyncReply::Blocks(b))) if !b.is_empty() || !claimed => Ok((peer, b, claimed)),
                Ok(Ok(SyncReply::Blocks(_))) => Err(Some((peer, "claimed blocks, sent none"))),
                Ok(Ok(SyncReply::Error(e))) => {
                    tracing::debug!(%peer, error = %e, "sync refused");
                    Err(claimed.then_some((peer, "claimed blocks, refused to send them")))
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "sync request failed");
                    Err(None)
                }
                Err(_) => Err(None),
            }
        };
        ctx.spawn(
            fut.into_actor(self)
                .then(move |res, act, _| {
                    let settlement = act.settlement.commit.clone();
                    let (peer, blocks, claimed) = match res {
                        Ok((peer, blocks, claimed)) => {
                            if !blocks.is_empty() {
                                tracing::info!(%peer, from, count = blocks.len(), "syncing blocks");
                            }
                            (Some(peer), blocks, claimed)
                        }
                        Err(Some((peer, why))) => {
                            act.strike(peer, why);
                            (None, Vec::new(), false)
                        }
                        Err(None) => (None, Vec::new(), false),
                    };
                    async move {
                        let mut last = None;
                        let mut set = None;
                        let mut refused = false;
                        for (block, certificate) in blocks {
                            let h = block.header.height;
                            match settlement
                                .send(CommitBlock {
                                    block: Arc::new(block),
                                    certificate,
                                })
                                .await
                            {
                                Ok(Ok(next)) => {
                                    METRICS.sync_blocks.inc();
                                    last = Some(h);
                                    set = Some(next);
                                }
                                Ok(Err(e)) => {
                                    tracing::warn!(height = h, error = %e, "synced block refused");
                                    refused = true;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        (last, set, refused.then_some(peer).flatten(), claimed)
                    }
                    .into_actor(act)
                })
                .map(|(last, set, bad_peer, _claimed), act, ctx| {
                    act.syncing = false;
                    if let Some(peer) = bad_peer {
                        act.strike(peer, "served blocks that do not commit");
                    }
                    if let Some(set) = set {
                        act.set_validators(set);
                    }
                    if let Some(h) = last {
                        act.committed(h, ctx);
                    }
                }),
        );
    }
}

/// Whether `votes`, the votes held at `height`, hold `sv` itself (same vote, same signature).
fn is_held(
    votes: &HashMap<(u32, VoteKind, Address), SignedVote>,
    height: Height,
    sv: &SignedVote,
) -> bool {
    let v = &sv.vote;
    v.height == height
        && votes
            .get(&(v.round, v.kind, v.validator))
            .is_some_and(|held| held == sv)
}

impl Actor for Consensus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::network::CONSENSUS_MAILBOX);
        let settlement = self.settlement.tip.clone();
        ctx.spawn(
            async move { settlement.send(GetTipSet).await }
                .into_actor(self)
                .map(|tip, act, ctx| match tip {
                    Ok((tip, set)) => {
                        act.set_validators(set);
                        act.start_height(tip.height + 1, ctx)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "settlement unavailable; consensus stopped");
                        ctx.stop();
                    }
                }),
        );
        ctx.run_interval(HEARTBEAT, |act, ctx| act.heartbeat(ctx));
    }
}

impl Handler<GetEvidence> for Consensus {
    type Result = Result<Vec<chain::Evidence>, String>;
    fn handle(&mut self, _: GetEvidence, _: &mut Self::Context) -> Self::Result {
        self.store.evidence().map_err(|e| e.to_string())
    }
}

impl Handler<GossipConsensus> for Consensus {
    type Result = ();
    fn handle(&mut self, msg: GossipConsensus, ctx: &mut Self::Context) {
        let verdict = self.on_message(msg.msg, msg.origin, msg.size, ctx);
        let acceptance = match verdict {
            Verdict::Accept => MessageAcceptance::Accept,
            Verdict::Reject(why) => {
                METRICS
                    .gossip_rejected
                    .with_label_values(&[topics::CONSENSUS, why])
                    .inc();
                tracing::warn!(source = %msg.source, why, "consensus message rejected");
                MessageAcceptance::Reject
            }
            Verdict::Ignore(why) => {
                tracing::trace!(source = %msg.source, why, "consensus message ignored");
                MessageAcceptance::Ignore
            }
        };
        self.network.do_send(ReportValidation {
            id: msg.id,
            source: msg.source,
            acceptance,
        });
    }
}
