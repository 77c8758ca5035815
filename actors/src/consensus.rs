//! The Consensus actor: wires the pure Tendermint core (`chain::consensus`) to gossip, the
//! Verifier, the Mempool and Settlement, and catches up from peers (sync) when behind.
//!
//! Validators sign proposals and votes; every other node runs the same core as an observer and
//! commits a block once it holds the proposal and more than 2/3 of precommits. Before any vote is
//! broadcast, the core's state is written to RocksDB (synced), so a restarted validator never
//! signs a conflicting vote.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chain::consensus::{self as core, Input, Output, TimeoutConfig, ValidatorSet, VoteType};
use chain::{
    Address, B256, Block, CommitCertificate, Genesis, Height, PrivateKeySigner, SignedProposal,
    SignedVote, Store, VoteKind,
};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::mempool::{Candidates, Mempool};
use crate::metrics::METRICS;
use crate::network::{GetPeers, GossipConsensus, Network, Publish, SendSync};
use crate::protocol::{self, ConsensusMsg, MAX_SYNC_BLOCKS, SyncReply, SyncRequest, topics};
use crate::settlement::{BuildBlock, CommitBlock, GetTip, Settlement, ValidateBlock};
use crate::verifier::{Verifier, VerifyRecords};

const WAL_KEY: &str = "consensus_wal";
/// Messages for future heights kept while we catch up.
const MAX_BUFFERED: usize = 2_000;
/// Without a commit for this long, ask a peer for blocks.
const STALL: Duration = Duration::from_secs(4);
/// How often a node announces its height (and sends votes of a slow height again).
const HEARTBEAT: Duration = Duration::from_secs(1);

type Core = core::Consensus<Address, B256>;

/// What the write-ahead log holds: the core's signing state at a height and the blocks it may
/// have to re-propose.
#[derive(Serialize, Deserialize)]
struct Wal {
    height: Height,
    locked: Option<(B256, u32)>,
    valid: Option<(B256, u32)>,
    signed: Vec<(u32, VoteKind, Option<B256>)>,
    blocks: Vec<Block>,
}

fn kind(t: VoteType) -> VoteKind {
    match t {
        VoteType::Prevote => VoteKind::Prevote,
        VoteType::Precommit => VoteKind::Precommit,
    }
}

fn vote_type(k: VoteKind) -> VoteType {
    match k {
        VoteKind::Prevote => VoteType::Prevote,
        VoteKind::Precommit => VoteType::Precommit,
    }
}

/// Consensus settings from the node config.
pub struct ConsensusConfig {
    pub timeouts: TimeoutConfig,
}

pub struct Consensus {
    genesis: Arc<Genesis>,
    key: Option<Arc<PrivateKeySigner>>,
    core: Core,
    validators: ValidatorSet<Address>,
    store: Arc<Store>,
    network: Addr<Network>,
    settlement: Addr<Settlement>,
    mempool: Addr<Mempool>,
    verifier: Option<Addr<Verifier>>,
    /// Current height (tip + 1); 0 until the tip is known.
    height: Height,
    blocks: HashMap<B256, Arc<Block>>,
    votes: HashMap<(u32, VoteKind, Address), SignedVote>,
    future: Vec<(ConsensusMsg, PeerId)>,
    last_commit: Instant,
    peer_heights: HashMap<PeerId, Height>,
    syncing: bool,
    committing: bool,
}

impl Consensus {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        genesis: Arc<Genesis>,
        key: Option<PrivateKeySigner>,
        config: ConsensusConfig,
        store: Arc<Store>,
        network: Addr<Network>,
        settlement: Addr<Settlement>,
        mempool: Addr<Mempool>,
        verifier: Option<Addr<Verifier>>,
    ) -> Self {
        let validators = ValidatorSet::new(genesis.validator_powers());
        let me = key
            .as_ref()
            .map(|k| k.address())
            .filter(|a| validators.power(a).is_some());
        if me.is_some() {
            tracing::info!("consensus: validating");
        } else {
            tracing::info!("consensus: observing (not a validator)");
        }
        Consensus {
            core: Core::new(me, validators.clone(), config.timeouts),
            validators,
            key: key.filter(|k| me == Some(k.address())).map(Arc::new),
            genesis,
            store,
            network,
            settlement,
            mempool,
            verifier,
            height: 0,
            blocks: HashMap::new(),
            votes: HashMap::new(),
            future: Vec::new(),
            last_commit: Instant::now(),
            peer_heights: HashMap::new(),
            syncing: false,
            committing: false,
        }
    }

    fn chain_id(&self) -> u64 {
        self.genesis.chain_id
    }

    fn publish(&self, msg: &ConsensusMsg) {
        self.network.do_send(Publish {
            topic: topics::CONSENSUS,
            data: protocol::encode(msg),
        });
    }

    /// Starts consensus at `height` (tip + 1), restoring the write-ahead state if it is for it.
    fn start_height(&mut self, height: Height, ctx: &mut Context<Self>) {
        self.height = height;
        self.blocks.clear();
        self.votes.clear();
        self.last_commit = Instant::now();
        let mut outputs = self.core.handle(Input::StartHeight(height));
        if let Ok(Some(wal)) = self.store.get_meta::<Wal>(WAL_KEY)
            && wal.height == height
        {
            {
                for b in wal.blocks {
                    self.blocks.insert(b.hash(), Arc::new(b));
                }
                let restored = self.core.restore(
                    height,
                    core::RestoreState {
                        locked_value: wal.locked.map(|l| l.0),
                        locked_round: wal.locked.map(|l| l.1),
                        valid_value: wal.valid.map(|v| v.0),
                        valid_round: wal.valid.map(|v| v.1),
                        signed: wal
                            .signed
                            .into_iter()
                            .map(|(r, k, v)| (r, vote_type(k), v))
                            .collect(),
                    },
                );
                outputs.extend(restored);
                tracing::info!(height, "consensus state restored from the write-ahead log");
            }
        }
        self.apply(outputs, ctx);
        let buffered = std::mem::take(&mut self.future);
        for (msg, origin) in buffered {
            self.on_message(msg, origin, ctx);
        }
    }

    fn write_wal(&self) {
        let snap = self.core.snapshot();
        let mut blocks = Vec::new();
        for v in [&snap.locked_value, &snap.valid_value]
            .into_iter()
            .flatten()
        {
            if let Some(b) = self.blocks.get(v)
                && !blocks.iter().any(|x: &Block| x.hash() == *v)
            {
                blocks.push((**b).clone());
            }
        }
        let wal = Wal {
            height: self.height,
            locked: snap.locked_value.zip(snap.locked_round),
            valid: snap.valid_value.zip(snap.valid_round),
            signed: snap
                .signed
                .iter()
                .map(|(r, t, v)| (*r, kind(*t), *v))
                .collect(),
            blocks,
        };
        if let Err(e) = self.store.put_meta(WAL_KEY, &wal) {
            tracing::error!(error = %e, "cannot write the consensus write-ahead log");
        }
    }

    fn apply(&mut self, outputs: Vec<Output<Address, B256>>, ctx: &mut Context<Self>) {
        for out in outputs {
            match out {
                Output::RequestValue { height, round } => self.propose(height, round, ctx),
                Output::Proposal(p) => {
                    let (Some(key), Some(block)) =
                        (self.key.clone(), self.blocks.get(&p.value).cloned())
                    else {
                        tracing::warn!(
                            height = p.height,
                            round = p.round,
                            "no block for our proposal; skipping"
                        );
                        continue;
                    };
                    let proposal = chain::Proposal {
                        height: p.height,
                        round: p.round,
                        block_hash: p.value,
                        pol_round: p.pol_round,
                        proposer: p.proposer,
                    };
                    match SignedProposal::sign(proposal, &key, self.chain_id()) {
                        Ok(sp) => {
                            tracing::debug!(height = p.height, round = p.round, block = %p.value, "proposing");
                            self.publish(&ConsensusMsg::Proposal {
                                proposal: sp,
                                block: Box::new((*block).clone()),
                            });
                        }
                        Err(e) => tracing::error!(error = %e, "cannot sign proposal"),
                    }
                }
                Output::Vote(v) => {
                    let Some(key) = self.key.clone() else {
                        continue;
                    };
                    self.write_wal();
                    let vote = chain::Vote {
                        height: v.height,
                        round: v.round,
                        kind: kind(v.vote_type),
                        block: v.value,
                        validator: v.validator,
                    };
                    match SignedVote::sign(vote, &key, self.chain_id()) {
                        Ok(sv) => {
                            self.votes
                                .insert((v.round, kind(v.vote_type), v.validator), sv.clone());
                            self.publish(&ConsensusMsg::Vote(sv));
                        }
                        Err(e) => tracing::error!(error = %e, "cannot sign vote"),
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
                    commits,
                } => self.decide(height, round, value, commits, ctx),
                Output::Equivocation { first, second } => {
                    tracing::warn!(validator = %first.validator, height = first.height, round = first.round,
                        first = ?first.value, second = ?second.value, "equivocation: validator signed two different votes");
                }
            }
        }
    }

    fn propose(&mut self, height: Height, round: u32, ctx: &mut Context<Self>) {
        let Some(key) = self.key.clone() else { return };
        let interval = Duration::from_millis(self.genesis.params.block_interval_ms);
        let wait = interval.saturating_sub(self.last_commit.elapsed());
        let (max_records, max_txs) = (
            self.genesis.params.max_block_records as usize,
            self.genesis.params.max_block_txs as usize,
        );
        ctx.run_later(wait, move |act, ctx| {
            let mempool = act.mempool.clone();
            let settlement = act.settlement.clone();
            let proposer = key.address();
            let fut = async move {
                let (records, txs) = mempool
                    .send(Candidates {
                        max_records,
                        max_txs,
                    })
                    .await
                    .ok()?;
                let block = settlement
                    .send(BuildBlock {
                        proposer,
                        timestamp_ms: chain::types::now_ms(),
                        records,
                        txs,
                    })
                    .await
                    .ok()?;
                Some(block)
            };
            ctx.spawn(fut.into_actor(act).map(move |block, act, ctx| {
                let Some(block) = block else { return };
                if act.height != height || act.core.round() != round {
                    return;
                }
                let hash = block.hash();
                act.blocks.insert(hash, Arc::new(block));
                let outs = act.core.handle(Input::ProposeValue {
                    height,
                    round,
                    value: hash,
                });
                act.apply(outs, ctx);
            }));
        });
    }

    fn decide(
        &mut self,
        height: Height,
        round: u32,
        value: B256,
        commits: Vec<core::Vote<Address, B256>>,
        ctx: &mut Context<Self>,
    ) {
        let votes: Vec<SignedVote> = commits
            .iter()
            .filter_map(|v| {
                self.votes
                    .get(&(v.round, VoteKind::Precommit, v.validator))
                    .cloned()
            })
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
        let fut = self.settlement.send(CommitBlock { block, certificate });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.committing = false;
            match res {
                Ok(Ok(())) => act.committed(height, ctx),
                Ok(Err(e)) => tracing::error!(height, error = %e, "decided block failed to commit"),
                Err(e) => tracing::error!(height, error = %e, "settlement unavailable"),
            }
        }));
    }

    fn committed(&mut self, height: Height, ctx: &mut Context<Self>) {
        if height + 1 > self.height {
            self.start_height(height + 1, ctx);
        }
    }

    fn on_message(&mut self, msg: ConsensusMsg, origin: PeerId, ctx: &mut Context<Self>) {
        let chain_id = self.chain_id();
        match msg {
            ConsensusMsg::Status { height, votes, .. } => {
                self.peer_heights.insert(origin, height);
                if height >= self.height && self.height > 0 {
                    self.sync(ctx);
                }
                // Votes its author signed before and sends again while its height is slow: the
                // ones we missed are what our round is waiting for.
                for v in votes {
                    self.on_message(ConsensusMsg::Vote(v), origin, ctx);
                }
            }
            ConsensusMsg::Vote(sv) => {
                let h = sv.vote.height;
                if h > self.height || self.height == 0 {
                    self.buffer(ConsensusMsg::Vote(sv), origin);
                    return;
                }
                if h < self.height {
                    return;
                }
                if let Err(e) = sv.verify(chain_id) {
                    tracing::warn!(%origin, error = %e, "vote with a bad signature dropped");
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
                self.votes.entry(key).or_insert(sv);
                let outs = self.core.handle(Input::Vote(input));
                self.apply(outs, ctx);
            }
            ConsensusMsg::Proposal { proposal, block } => {
                let p = &proposal.proposal;
                if p.height > self.height || self.height == 0 {
                    self.buffer(ConsensusMsg::Proposal { proposal, block }, origin);
                    return;
                }
                if p.height < self.height {
                    return;
                }
                if let Err(e) = proposal.verify(chain_id) {
                    tracing::warn!(%origin, error = %e, "proposal with a bad signature dropped");
                    return;
                }
                if self.validators.proposer(p.height, p.round) != Some(&p.proposer) {
                    tracing::warn!(%origin, proposer = %p.proposer, round = p.round, "proposal from a validator whose turn it is not");
                    return;
                }
                if block.hash() != p.block_hash {
                    tracing::warn!(%origin, "proposal names another block than it carries");
                    return;
                }
                let block = Arc::new(*block);
                self.blocks.insert(p.block_hash, block.clone());
                let core_p = core::Proposal {
                    height: p.height,
                    round: p.round,
                    value: p.block_hash,
                    pol_round: p.pol_round,
                    proposer: p.proposer,
                };
                let settlement = self.settlement.clone();
                let verifier = self.verifier.clone();
                let fut = async move {
                    if let Some(v) = verifier {
                        v.send(VerifyRecords(block.records.clone()))
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()))?;
                    }
                    settlement
                        .send(ValidateBlock(block))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()))
                };
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
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
            }
        }
    }

    /// Every [`HEARTBEAT`]: announce our height, with the votes the core wants sent again while
    /// the height is slow, and sync when stalled.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.height > 0 {
            let votes: Vec<SignedVote> = self
                .core
                .heartbeat()
                .into_iter()
                .filter_map(|v| {
                    self.votes
                        .get(&(v.round, kind(v.vote_type), v.validator))
                        .cloned()
                })
                .collect();
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

    fn buffer(&mut self, msg: ConsensusMsg, origin: PeerId) {
        // Heartbeats repeat votes every second: keep one copy.
        if let ConsensusMsg::Vote(v) = &msg
            && self
                .future
                .iter()
                .any(|(m, _)| matches!(m, ConsensusMsg::Vote(w) if w == v))
        {
            return;
        }
        if self.future.len() < MAX_BUFFERED {
            self.future.push((msg, origin));
        }
    }

    /// Fetches finalized blocks from the highest peer we know of (or any peer when stalled).
    fn sync(&mut self, ctx: &mut Context<Self>) {
        if self.syncing || self.height == 0 {
            return;
        }
        let from = self.height;
        let best = self
            .peer_heights
            .iter()
            .filter(|(_, h)| **h >= from)
            .max_by_key(|(_, h)| **h)
            .map(|(p, h)| (*p, *h));
        let network = self.network.clone();
        self.syncing = true;
        let fut = async move {
            let (peer, to) = match best {
                Some(b) => b,
                None => {
                    let peers = network.send(GetPeers).await.unwrap_or_default();
                    let Some(p) = peers.first().copied() else {
                        return Err("no peers".to_string());
                    };
                    (p, from + MAX_SYNC_BLOCKS - 1)
                }
            };
            let to = to.min(from + MAX_SYNC_BLOCKS - 1);
            match network
                .send(SendSync {
                    peer,
                    request: SyncRequest { from, to },
                })
                .await
            {
                Ok(Ok(SyncReply::Blocks(b))) => Ok((peer, b)),
                Ok(Ok(SyncReply::Error(e))) => Err(format!("peer {peer}: {e}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        ctx.spawn(
            fut.into_actor(self)
                .then(move |res, act, _| {
                    let settlement = act.settlement.clone();
                    let blocks = match res {
                        Ok((peer, blocks)) => {
                            if !blocks.is_empty() {
                                tracing::info!(%peer, from, count = blocks.len(), "syncing blocks");
                            }
                            blocks
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "sync request failed");
                            Vec::new()
                        }
                    };
                    async move {
                        let mut last = None;
                        for (block, certificate) in blocks {
                            let h = block.header.height;
                            match settlement
                                .send(CommitBlock {
                                    block: Arc::new(block),
                                    certificate,
                                })
                                .await
                            {
                                Ok(Ok(())) => {
                                    METRICS.sync_blocks.inc();
                                    last = Some(h);
                                }
                                Ok(Err(e)) => {
                                    tracing::warn!(height = h, error = %e, "synced block refused");
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        last
                    }
                    .into_actor(act)
                })
                .map(|last, act, ctx| {
                    act.syncing = false;
                    if let Some(h) = last {
                        act.committed(h, ctx);
                    }
                }),
        );
    }
}

impl Actor for Consensus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let settlement = self.settlement.clone();
        ctx.spawn(
            async move { settlement.send(GetTip).await }
                .into_actor(self)
                .map(|tip, act, ctx| match tip {
                    Ok(tip) => act.start_height(tip.height + 1, ctx),
                    Err(e) => {
                        tracing::error!(error = %e, "settlement unavailable; consensus stopped");
                        ctx.stop();
                    }
                }),
        );
        ctx.run_interval(HEARTBEAT, |act, ctx| act.heartbeat(ctx));
    }
}

impl Handler<GossipConsensus> for Consensus {
    type Result = ();
    fn handle(&mut self, msg: GossipConsensus, ctx: &mut Self::Context) {
        self.on_message(msg.msg, msg.origin, ctx);
    }
}
