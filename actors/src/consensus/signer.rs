//! The validator's signer: the only place a consensus proposal or vote is signed, and the owner
//! of the write-ahead log that makes signing safe across crashes.
//!
//! Before it signs, the signer records what it is about to sign in the WAL and syncs it; if the
//! write fails, nothing is signed and nothing can be sent (fail-closed). It keeps, per height,
//! every (round, kind) it voted in and every round it proposed in, and refuses to sign a
//! different value for any of them, whatever the consensus core asks: like a slashing-protection
//! database, it does not rely on the core being restored correctly. After a restart the core is
//! restored from the same state ([`SignedState::restore`]), and the blocks it proposed or locked
//! on come back with it, so it re-proposes the same block rather than building another.
//!
//! It does not decide what to sign (the core does) and does not send anything (the actor does,
//! only with what this returns).

use std::sync::Arc;

use chain::consensus::{Output, RestoreState, VoteType};
use chain::{
    Address, B256, Block, Height, PrivateKeySigner, Proposal, SignedProposal, SignedVote, Store,
    Vote, VoteKind,
};

use crate::protocol::ConsensusMsg;
use serde::{Deserialize, Serialize};

/// The store key of the write-ahead log.
pub const WAL_KEY: &str = "consensus_wal";

/// What has been signed at one height: persisted before each signature.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedState {
    pub height: Height,
    /// The core's lock and valid value (Tendermint's `lockedValue/lockedRound`,
    /// `validValue/validRound`).
    pub locked: Option<(B256, u32)>,
    pub valid: Option<(B256, u32)>,
    /// (round, kind, value) of every vote signed at this height.
    pub votes: Vec<(u32, VoteKind, Option<B256>)>,
    /// (round, block hash) of every proposal signed at this height.
    pub proposals: Vec<(u32, B256)>,
    /// The blocks named by `proposals`, `locked` and `valid`, so they can be proposed again.
    /// Shared with the consensus actor: a signature copies the state, never a block.
    pub blocks: Vec<Arc<Block>>,
}

impl SignedState {
    fn vote(&self, round: u32, kind: VoteKind) -> Option<Option<B256>> {
        self.votes
            .iter()
            .find(|(r, k, _)| *r == round && *k == kind)
            .map(|(_, _, v)| *v)
    }

    /// The block this validator proposed in `round`, if any.
    pub fn proposal(&self, round: u32) -> Option<B256> {
        self.proposals
            .iter()
            .find(|(r, _)| *r == round)
            .map(|(_, h)| *h)
    }

    /// The state to restore the consensus core with.
    pub fn restore(&self) -> RestoreState<B256> {
        RestoreState {
            locked_value: self.locked.map(|l| l.0),
            locked_round: self.locked.map(|l| l.1),
            valid_value: self.valid.map(|v| v.0),
            valid_round: self.valid.map(|v| v.1),
            signed: self
                .votes
                .iter()
                .map(|(r, k, v)| (*r, vote_type(*k), *v))
                .collect(),
        }
    }
}

pub fn kind(t: VoteType) -> VoteKind {
    match t {
        VoteType::Prevote => VoteKind::Prevote,
        VoteType::Precommit => VoteKind::Precommit,
    }
}

pub fn vote_type(k: VoteKind) -> VoteType {
    match k {
        VoteKind::Prevote => VoteType::Prevote,
        VoteKind::Precommit => VoteType::Precommit,
    }
}

/// Why nothing was signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(
        "already signed {signed:?} for height {height} round {round} ({what}); refusing {asked:?}"
    )]
    Conflict {
        what: &'static str,
        height: Height,
        round: u32,
        signed: Option<B256>,
        asked: Option<B256>,
    },
    #[error("height {asked} is below the signed height {signed}")]
    Stale { asked: Height, signed: Height },
    #[error("the write-ahead log cannot be written, so nothing is signed: {0}")]
    Wal(String),
    #[error("signing failed: {0}")]
    Key(String),
}

impl SignError {
    pub fn label(&self) -> &'static str {
        match self {
            SignError::Conflict { .. } => "conflict",
            SignError::Stale { .. } => "stale",
            SignError::Wal(_) => "wal",
            SignError::Key(_) => "key",
        }
    }
}

/// Where the signed state is persisted.
pub trait Wal {
    fn load(&self) -> Result<Option<SignedState>, String>;
    /// Must be durable (synced) when it returns `Ok`.
    fn save(&mut self, state: &SignedState) -> Result<(), String>;
}

/// The WAL in the node's RocksDB store (a synced write per signature).
pub struct StoreWal(pub Arc<Store>);

impl Wal for StoreWal {
    fn load(&self) -> Result<Option<SignedState>, String> {
        self.0.get_meta(WAL_KEY).map_err(|e| e.to_string())
    }

    fn save(&mut self, state: &SignedState) -> Result<(), String> {
        self.0.put_meta(WAL_KEY, state).map_err(|e| e.to_string())
    }
}

pub struct Signer<W> {
    wal: W,
    key: Arc<PrivateKeySigner>,
    domain: chain::signing::Domain,
    state: SignedState,
}

impl<W: Wal> Signer<W> {
    /// Opens the signer on `wal`. An unreadable WAL is an error: the caller must not sign at
    /// all then, since it cannot know what it signed before.
    pub fn open(
        wal: W,
        key: Arc<PrivateKeySigner>,
        domain: chain::signing::Domain,
    ) -> Result<Self, String> {
        let state = wal.load()?.unwrap_or_default();
        Ok(Signer {
            wal,
            key,
            domain,
            state,
        })
    }

    pub fn address(&self) -> chain::Address {
        self.key.address()
    }

    /// What was signed at `height`, if this signer signed anything there.
    pub fn state_at(&self, height: Height) -> Option<&SignedState> {
        (self.state.height == height).then_some(&self.state)
    }

    /// The state that would hold after signing, for `height`: the current one or a fresh one.
    fn next_state(&self, height: Height) -> Result<SignedState, SignError> {
        match height.cmp(&self.state.height) {
            std::cmp::Ordering::Less => Err(SignError::Stale {
                asked: height,
                signed: self.state.height,
            }),
            std::cmp::Ordering::Equal => Ok(self.state.clone()),
            std::cmp::Ordering::Greater => Ok(SignedState {
                height,
                ..SignedState::default()
            }),
        }
    }

    /// Persists `next`, then makes it current. On a failed write the current state stays.
    fn commit(&mut self, next: SignedState) -> Result<(), SignError> {
        self.wal.save(&next).map_err(SignError::Wal)?;
        self.state = next;
        Ok(())
    }

    /// Keeps only the blocks the state still names.
    fn prune_blocks(state: &mut SignedState) {
        let named: Vec<B256> = state
            .proposals
            .iter()
            .map(|(_, h)| *h)
            .chain(state.locked.map(|l| l.0))
            .chain(state.valid.map(|v| v.0))
            .collect();
        state.blocks.retain(|b| named.contains(&b.hash()));
        state.blocks.dedup_by_key(|b| b.hash());
    }

    /// Signs a proposal of `block` (whose hash it names), after persisting it.
    pub fn sign_proposal(
        &mut self,
        proposal: Proposal,
        block: &Arc<Block>,
        lock: Lock,
    ) -> Result<SignedProposal, SignError> {
        let mut next = self.next_state(proposal.height)?;
        match next.proposal(proposal.round) {
            Some(h) if h != proposal.block_hash => {
                return Err(SignError::Conflict {
                    what: "proposal",
                    height: proposal.height,
                    round: proposal.round,
                    signed: Some(h),
                    asked: Some(proposal.block_hash),
                });
            }
            Some(_) => {}
            None => next.proposals.push((proposal.round, proposal.block_hash)),
        }
        if !next.blocks.iter().any(|b| b.hash() == proposal.block_hash) {
            next.blocks.push(Arc::clone(block));
        }
        (next.locked, next.valid) = lock;
        Self::prune_blocks(&mut next);
        self.commit(next)?;
        SignedProposal::sign(proposal, &self.key, &self.domain)
            .map_err(|e| SignError::Key(e.to_string()))
    }

    /// Signs a vote, after persisting it with the core's current lock. `blocks` are blocks this
    /// node holds at the height, so a newly locked block is kept with the lock.
    pub fn sign_vote(
        &mut self,
        vote: Vote,
        lock: Lock,
        blocks: &dyn Fn(&B256) -> Option<Arc<Block>>,
    ) -> Result<SignedVote, SignError> {
        let mut next = self.next_state(vote.height)?;
        match next.vote(vote.round, vote.kind) {
            Some(v) if v != vote.block => {
                return Err(SignError::Conflict {
                    what: match vote.kind {
                        VoteKind::Prevote => "prevote",
                        VoteKind::Precommit => "precommit",
                    },
                    height: vote.height,
                    round: vote.round,
                    signed: v,
                    asked: vote.block,
                });
            }
            Some(_) => {}
            None => next.votes.push((vote.round, vote.kind, vote.block)),
        }
        (next.locked, next.valid) = lock;
        for h in [next.locked.map(|l| l.0), next.valid.map(|v| v.0)]
            .into_iter()
            .flatten()
        {
            if !next.blocks.iter().any(|b| b.hash() == h)
                && let Some(b) = blocks(&h)
            {
                next.blocks.push(b);
            }
        }
        Self::prune_blocks(&mut next);
        self.commit(next)?;
        SignedVote::sign(vote, &self.key, &self.domain).map_err(|e| SignError::Key(e.to_string()))
    }
}

impl<W: Wal> Signer<W> {
    /// The block this validator already proposed at (`height`, `round`), to propose again
    /// after a restart instead of building a different one.
    pub fn repeat_proposal(&self, height: Height, round: u32) -> Option<Arc<Block>> {
        let state = self.state_at(height)?;
        let hash = state.proposal(round)?;
        state.blocks.iter().find(|b| b.hash() == hash).cloned()
    }

    /// Restores `core`, just started at `height`, from what this signer signed there: the
    /// core's outputs, and the blocks to hold again (proposed or locked before the restart).
    pub fn restore_core(
        &self,
        core: &mut chain::consensus::Consensus<Address, B256>,
        height: Height,
    ) -> (Vec<Output<Address, B256>>, Vec<Arc<Block>>) {
        match self.state_at(height) {
            Some(state) => (core.restore(height, state.restore()), state.blocks.clone()),
            None => (Vec::new(), Vec::new()),
        }
    }

    /// Carries out one output of the consensus core that needs a signature: returns the
    /// message to publish, or why nothing may be published. `None` for outputs that sign
    /// nothing. The actor and the crash harness both go through here.
    pub fn sign_output(
        &mut self,
        out: &Output<Address, B256>,
        lock: Lock,
        blocks: &dyn Fn(&B256) -> Option<Arc<Block>>,
    ) -> Option<Result<ConsensusMsg, SignError>> {
        match out {
            Output::Proposal(p) => {
                let Some(block) = blocks(&p.value) else {
                    return Some(Err(SignError::Key(format!(
                        "no block {} for our proposal at {}/{}",
                        p.value, p.height, p.round
                    ))));
                };
                let proposal = Proposal {
                    height: p.height,
                    round: p.round,
                    block_hash: p.value,
                    pol_round: p.pol_round,
                    proposer: p.proposer,
                };
                Some(
                    self.sign_proposal(proposal, &block, lock)
                        .map(|proposal| ConsensusMsg::Proposal { proposal, block }),
                )
            }
            Output::Vote(v) => {
                let vote = Vote {
                    height: v.height,
                    round: v.round,
                    kind: kind(v.vote_type),
                    block: v.value,
                    validator: v.validator,
                };
                Some(self.sign_vote(vote, lock, blocks).map(ConsensusMsg::Vote))
            }
            _ => None,
        }
    }
}

/// The core's lock and valid value, as the signer persists them.
pub type Lock = (Option<(B256, u32)>, Option<(B256, u32)>);

/// The lock of `core` now.
pub fn lock_of(core: &chain::consensus::Consensus<Address, B256>) -> Lock {
    let s = core.snapshot();
    (
        s.locked_value.zip(s.locked_round),
        s.valid_value.zip(s.valid_round),
    )
}

#[cfg(test)]
mod tests;
