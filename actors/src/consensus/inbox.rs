//! Consensus messages from gossip, checked before they cost anything, and the bounded buffer of
//! valid ones for the next few heights.
//!
//! Checks run cheapest first: height window, then membership (a vote's validator is in the
//! set; a proposal comes from the proposer of its round), round window, the block matching the
//! proposal, and the signature last. Nothing is buffered, counted or relayed before all of them
//! passed. The buffer keeps one message per (height, round, kind, validator), is bounded in
//! bytes overall and per peer, and drops whole heights once consensus moved past them.
//!
//! It does not feed the consensus core (the actor does) and does not judge a block's contents
//! (Settlement and the Verifier do).

use std::collections::{BTreeMap, HashMap};

use chain::consensus::ValidatorSet;
use chain::{Address, Height, SignedProposal, SignedVote, VoteKind};
use libp2p::PeerId;

use crate::protocol::ConsensusMsg;

/// Heights ahead of ours whose messages are kept for later. Farther ones are ignored: a node
/// that far behind syncs blocks instead.
pub const FUTURE_HEIGHTS: u64 = 4;
/// Rounds ahead of ours whose proposals are accepted at our height (the core keeps votes of
/// at most as many future rounds per validator).
pub const FUTURE_ROUNDS: u32 = chain::consensus::MAX_FUTURE_ROUNDS_PER_VALIDATOR as u32;
/// Bytes of future-height messages kept in all: a few full blocks and every validator's votes.
pub const MAX_FUTURE_BYTES: usize = 4 * chain::block::MAX_BLOCK_BYTES;
/// Bytes of future-height messages kept per relaying peer: one full proposal and its votes.
pub const MAX_FUTURE_BYTES_PER_PEER: usize = chain::block::MAX_BLOCK_BYTES + (1 << 20);

/// What gossipsub is told about a message: relay it, penalise its sender, or neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// The sender relayed something no honest node would (bad signature, not a validator).
    Reject(&'static str),
    /// Not the sender's fault (old, too far ahead, duplicate); not relayed.
    Ignore(&'static str),
}

/// Where a message that passed the checks goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Our current height: feed it to the core now.
    Now,
    /// A future height within the window: buffer it.
    Later,
}

/// Our position, against which messages are checked.
#[derive(Clone, Copy, Debug)]
pub struct Position<'a> {
    pub height: Height,
    pub round: u32,
    pub validators: &'a ValidatorSet<Address>,
    pub domain: &'a chain::signing::Domain,
}

impl Position<'_> {
    fn place(&self, height: Height) -> Result<Place, Verdict> {
        if self.height == 0 {
            return Err(Verdict::Ignore("not started"));
        }
        if height < self.height {
            return Err(Verdict::Ignore("old height"));
        }
        if height - self.height > FUTURE_HEIGHTS {
            return Err(Verdict::Ignore("height too far ahead"));
        }
        Ok(if height == self.height {
            Place::Now
        } else {
            Place::Later
        })
    }

    /// Checks a vote; the signature last.
    pub fn check_vote(&self, sv: &SignedVote) -> Result<Place, Verdict> {
        let place = self.place(sv.vote.height)?;
        if self.validators.power(&sv.vote.validator).is_none() {
            // A later height may be decided by another set (an epoch ends in between): not
            // proof of misbehaviour, and not kept either (its author sends it again).
            return Err(match place {
                Place::Now => Verdict::Reject("vote by a non-validator"),
                Place::Later => Verdict::Ignore("vote by a non-validator of this height's set"),
            });
        }
        if sv.verify(self.domain).is_err() {
            return Err(Verdict::Reject("bad vote signature"));
        }
        Ok(place)
    }

    /// Checks a proposal and the block it carries; the signature last.
    pub fn check_proposal(
        &self,
        proposal: &SignedProposal,
        block: &chain::Block,
    ) -> Result<Place, Verdict> {
        let p = &proposal.proposal;
        let place = self.place(p.height)?;
        if self.validators.proposer(p.height, p.round) != Some(&p.proposer) {
            return Err(match place {
                Place::Now => Verdict::Reject("proposal by a validator whose turn it is not"),
                // The set may change before that height.
                Place::Later => Verdict::Ignore("proposal for a later height by another proposer"),
            });
        }
        if place == Place::Now && p.round > self.round.saturating_add(FUTURE_ROUNDS) {
            return Err(Verdict::Ignore("round too far ahead"));
        }
        if p.round > FUTURE_ROUNDS.saturating_mul(4) && place == Place::Later {
            return Err(Verdict::Ignore("round too far ahead"));
        }
        if block.header.height != p.height || block.hash() != p.block_hash {
            return Err(Verdict::Reject(
                "proposal names another block than it carries",
            ));
        }
        if proposal.verify(self.domain).is_err() {
            return Err(Verdict::Reject("bad proposal signature"));
        }
        Ok(place)
    }
}

/// One message per key is kept: a second, different one is equivocation, not news.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    Proposal {
        round: u32,
    },
    Vote {
        round: u32,
        kind: VoteKind,
        validator: Address,
    },
}

impl Key {
    fn of(msg: &ConsensusMsg) -> Option<Key> {
        match msg {
            ConsensusMsg::Proposal { proposal, .. } => Some(Key::Proposal {
                round: proposal.proposal.round,
            }),
            ConsensusMsg::Vote(v) => Some(Key::Vote {
                round: v.vote.round,
                kind: v.vote.kind,
                validator: v.vote.validator,
            }),
            ConsensusMsg::Status { .. } | ConsensusMsg::Evidence(_) => None,
        }
    }
}

struct Entry {
    msg: ConsensusMsg,
    origin: PeerId,
    size: usize,
}

/// Checked messages of future heights, bounded.
#[derive(Default)]
pub struct FutureBuffer {
    heights: BTreeMap<Height, BTreeMap<Key, Entry>>,
    bytes: usize,
    per_peer: HashMap<PeerId, usize>,
}

impl FutureBuffer {
    pub fn len(&self) -> usize {
        self.heights.values().map(|m| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.heights.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The message already buffered at `height` in the slot `msg` would take (same round, and
    /// same kind and validator for a vote): a different one there is equivocation.
    pub fn slot_of(&self, height: Height, msg: &ConsensusMsg) -> Option<&ConsensusMsg> {
        let key = Key::of(msg)?;
        self.heights.get(&height)?.get(&key).map(|e| &e.msg)
    }

    /// Keeps a checked proposal or vote of `height` (`size`: its encoded bytes) relayed by
    /// `origin`. Returns why not when it is a duplicate or a bound is reached.
    pub fn push(
        &mut self,
        height: Height,
        msg: ConsensusMsg,
        origin: PeerId,
        size: usize,
    ) -> Result<(), &'static str> {
        let Some(key) = Key::of(&msg) else {
            return Err("only proposals and votes are buffered");
        };
        if self
            .heights
            .get(&height)
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err("duplicate");
        }
        let peer_bytes = self.per_peer.get(&origin).copied().unwrap_or(0);
        if peer_bytes + size > MAX_FUTURE_BYTES_PER_PEER {
            return Err("peer's share of the future buffer is full");
        }
        if self.bytes + size > MAX_FUTURE_BYTES {
            return Err("future buffer full");
        }
        self.bytes += size;
        *self.per_peer.entry(origin).or_default() += size;
        self.heights
            .entry(height)
            .or_default()
            .insert(key, Entry { msg, origin, size });
        Ok(())
    }

    /// Everything kept for `height` (proposals first), and forgets every height up to it.
    /// Removes every message buffered for `height` or below; returns those for `height`,
    /// each with its origin and the size it was counted with.
    pub fn take(&mut self, height: Height) -> Vec<(ConsensusMsg, PeerId, usize)> {
        let later = self.heights.split_off(&(height + 1));
        let done = std::mem::replace(&mut self.heights, later);
        let mut out = Vec::new();
        for (h, entries) in done {
            for (_, e) in entries {
                self.bytes -= e.size;
                if let Some(b) = self.per_peer.get_mut(&e.origin) {
                    *b -= e.size;
                    if *b == 0 {
                        self.per_peer.remove(&e.origin);
                    }
                }
                if h == height {
                    out.push((e.msg, e.origin, e.size));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use chain::signing::seeded_key;
    use chain::{B256, Block, BlockHeader, Proposal, Vote};

    const CHAIN: chain::signing::Domain = chain::signing::Domain {
        chain_id: 3,
        salt: chain::B256::ZERO,
        payments: None,
    };

    fn keys() -> Vec<chain::PrivateKeySigner> {
        (0..4).map(|i| seeded_key(41, i)).collect()
    }

    fn set() -> ValidatorSet<Address> {
        ValidatorSet::new(keys().iter().map(|k| (k.address(), 1)).collect())
    }

    fn vote(key: &chain::PrivateKeySigner, height: Height, round: u32) -> SignedVote {
        SignedVote::sign(
            Vote {
                height,
                round,
                kind: VoteKind::Prevote,
                block: None,
                validator: key.address(),
            },
            key,
            &CHAIN,
        )
        .unwrap()
    }

    fn block(height: Height, pad: usize) -> Block {
        Block {
            header: BlockHeader {
                height,
                parent: B256::ZERO,
                proposer: Address::ZERO,
                timestamp_ms: pad as u64,
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

    fn proposal(height: Height, round: u32, b: &Block, signer: Option<usize>) -> SignedProposal {
        let set = set();
        let proposer = *set.proposer(height, round).unwrap();
        let keys = keys();
        let key = match signer {
            Some(i) => &keys[i],
            None => keys.iter().find(|k| k.address() == proposer).unwrap(),
        };
        SignedProposal::sign(
            Proposal {
                height,
                round,
                block_hash: b.hash(),
                pol_round: None,
                proposer,
            },
            key,
            &CHAIN,
        )
        .unwrap()
    }

    fn at_height_10(set: &ValidatorSet<Address>) -> Position<'_> {
        Position {
            height: 10,
            round: 0,
            validators: set,
            domain: &CHAIN,
        }
    }

    #[test]
    fn checks_decide_the_verdict() {
        let set = set();
        let pos = at_height_10(&set);
        let k = &keys()[1];
        assert_eq!(pos.check_vote(&vote(k, 10, 0)), Ok(Place::Now));
        assert_eq!(pos.check_vote(&vote(k, 12, 5)), Ok(Place::Later));
        assert_eq!(
            pos.check_vote(&vote(k, 9, 0)),
            Err(Verdict::Ignore("old height"))
        );
        assert_eq!(
            pos.check_vote(&vote(k, 10 + FUTURE_HEIGHTS + 1, 0)),
            Err(Verdict::Ignore("height too far ahead"))
        );
        let stranger = seeded_key(41, 99);
        assert_eq!(
            pos.check_vote(&vote(&stranger, 10, 0)),
            Err(Verdict::Reject("vote by a non-validator"))
        );
        let mut forged = vote(k, 10, 0);
        forged.vote.round = 1;
        assert_eq!(
            pos.check_vote(&forged),
            Err(Verdict::Reject("bad vote signature"))
        );

        let b = block(10, 0);
        assert_eq!(
            pos.check_proposal(&proposal(10, 0, &b, None), &b),
            Ok(Place::Now)
        );
        // Signed by a validator whose turn it is not (it names the right proposer).
        let proposer = *set.proposer(10, 0).unwrap();
        let wrong = keys().iter().position(|k| k.address() != proposer).unwrap();
        assert_eq!(
            pos.check_proposal(&proposal(10, 0, &b, Some(wrong)), &b),
            Err(Verdict::Reject("bad proposal signature"))
        );
        let mut not_turn = proposal(10, 0, &b, None);
        not_turn.proposal.proposer = keys()[wrong].address();
        assert!(matches!(
            pos.check_proposal(&not_turn, &b),
            Err(Verdict::Reject(_))
        ));
        let other = block(10, 1);
        assert!(matches!(
            pos.check_proposal(&proposal(10, 0, &b, None), &other),
            Err(Verdict::Reject(_))
        ));
        let far = proposal(10, FUTURE_ROUNDS + 1, &b, None);
        assert_eq!(
            pos.check_proposal(&far, &b),
            Err(Verdict::Ignore("round too far ahead"))
        );
    }

    /// 2,000 badly signed messages at height u64::MAX, then a valid vote at our height + 1:
    /// the junk costs no signature check and takes no buffer space, the vote is kept and comes
    /// out when we reach its height.
    #[test]
    fn junk_never_crowds_out_a_valid_vote() {
        let set = set();
        let pos = at_height_10(&set);
        let mut buf = FutureBuffer::default();
        let peer = PeerId::random();
        let k = &keys()[2];
        for i in 0..2000u32 {
            let mut junk = vote(k, u64::MAX, i);
            junk.signature.0[5] ^= 1;
            assert_eq!(
                pos.check_vote(&junk),
                Err(Verdict::Ignore("height too far ahead"))
            );
            let mut near = vote(k, 11, i);
            near.signature.0[5] ^= 1;
            assert!(matches!(pos.check_vote(&near), Err(Verdict::Reject(_))));
        }
        assert!(buf.is_empty());
        let good = vote(k, 11, 0);
        assert_eq!(pos.check_vote(&good), Ok(Place::Later));
        buf.push(11, ConsensusMsg::Vote(good.clone()), peer, 200)
            .unwrap();
        assert_eq!(
            buf.push(11, ConsensusMsg::Vote(good.clone()), peer, 200),
            Err("duplicate")
        );
        let out = buf.take(11);
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0].0, ConsensusMsg::Vote(v) if *v == good));
        assert_eq!(out[0].2, 200, "the size it was counted with");
        assert!(buf.is_empty() && buf.bytes() == 0);
    }

    #[test]
    fn the_buffer_is_bounded_per_peer_and_in_all() {
        let mut buf = FutureBuffer::default();
        let k = &keys()[0];
        let big = chain::block::MAX_BLOCK_BYTES;
        let (a, b) = (PeerId::random(), PeerId::random());
        let b0 = block(11, 0);
        let p = |h, r| ConsensusMsg::Proposal {
            proposal: proposal(h, r, &b0, None),
            block: Arc::new(b0.clone()),
        };
        buf.push(11, p(11, 0), a, big).unwrap();
        // One peer's share is one full proposal and some votes.
        assert_eq!(
            buf.push(12, p(12, 0), a, big),
            Err("peer's share of the future buffer is full")
        );
        buf.push(11, ConsensusMsg::Vote(vote(k, 11, 0)), a, 1000)
            .unwrap();
        // Other peers fill the rest, up to the total.
        let mut peers = vec![b];
        peers.extend((0..8).map(|_| PeerId::random()));
        let mut kept = 1;
        for (i, peer) in peers.iter().enumerate() {
            if buf
                .push(12 + (i as u64 % 3), p(12, i as u32), *peer, big)
                .is_ok()
            {
                kept += 1;
            }
        }
        assert!(buf.bytes() <= MAX_FUTURE_BYTES);
        assert_eq!(kept, (MAX_FUTURE_BYTES - 1000) / big);
        // Moving to height 12 frees heights 11 and 12.
        let _ = buf.take(12);
        assert!(buf.heights.keys().all(|h| *h > 12));
        assert_eq!(
            buf.bytes(),
            buf.heights
                .values()
                .flat_map(|m| m.values())
                .map(|e| e.size)
                .sum::<usize>()
        );
    }

    /// A second, different message for a buffered slot is found (so the actor can keep the
    /// pair as evidence) and not buffered; one for another slot is not mistaken for it.
    #[test]
    fn a_conflicting_message_for_a_buffered_slot_is_found() {
        let k = &keys()[1];
        let peer = PeerId::random();
        let mut buf = FutureBuffer::default();
        let nil = vote(k, 11, 0);
        let mut for_block = nil.clone();
        for_block.vote.block = Some(B256::repeat_byte(1));
        let for_block = SignedVote::sign(for_block.vote, k, &CHAIN).unwrap();
        buf.push(11, ConsensusMsg::Vote(nil.clone()), peer, 200)
            .unwrap();
        let second = ConsensusMsg::Vote(for_block.clone());
        let Some(ConsensusMsg::Vote(first)) = buf.slot_of(11, &second) else {
            panic!("the buffered vote holds the slot");
        };
        let e = chain::Evidence::double_vote(first.clone(), for_block).unwrap();
        e.verify(set().validators(), &CHAIN).unwrap();
        assert_eq!(buf.push(11, second, peer, 200), Err("duplicate"));
        assert!(buf.slot_of(12, &ConsensusMsg::Vote(nil.clone())).is_none());
        assert!(
            buf.slot_of(11, &ConsensusMsg::Vote(vote(k, 11, 1)))
                .is_none()
        );

        let (a, b) = (block(11, 1), block(11, 2));
        let first = ConsensusMsg::Proposal {
            proposal: proposal(11, 0, &a, None),
            block: Arc::new(a.clone()),
        };
        buf.push(11, first, peer, 500).unwrap();
        let second = proposal(11, 0, &b, None);
        let msg = ConsensusMsg::Proposal {
            proposal: second.clone(),
            block: Arc::new(b),
        };
        let Some(ConsensusMsg::Proposal { proposal: p, .. }) = buf.slot_of(11, &msg) else {
            panic!("the buffered proposal holds the slot");
        };
        assert!(chain::Evidence::double_proposal(p.clone(), second).is_some());
    }
}
