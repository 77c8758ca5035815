//! Blocks, consensus votes and commit certificates.

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};
use crate::merkle;
use crate::record::InferenceRecord;
use crate::signing::{self, Domain, PrivateKeySigner};
use crate::tx::Tx;
use crate::types::{Height, Sig};

/// Largest encoded block accepted from the network or the store.
pub const MAX_BLOCK_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub height: Height,
    pub parent: B256,
    pub proposer: Address,
    /// Proposer's wall clock, milliseconds; strictly increasing along the chain.
    pub timestamp_ms: u64,
    /// Merkle root (OpenZeppelin-compatible) of the records' leaves.
    pub records_root: B256,
    /// Merkle root of the transactions' hashes.
    pub txs_root: B256,
    /// Root over all accounts after applying this block.
    pub state_root: B256,
    /// keccak of the parent's commit certificate the block carries (zero at height 1).
    pub last_commit_hash: B256,
}

impl BlockHeader {
    pub fn hash(&self) -> B256 {
        keccak256(codec::encode(self))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub header: BlockHeader,
    pub records: Vec<InferenceRecord>,
    pub txs: Vec<Tx>,
    /// The parent's commit certificate (none at height 1): who precommitted the parent, which
    /// the ledger counts to jail validators that stop signing.
    pub last_commit: Option<CommitCertificate>,
}

impl Block {
    pub fn hash(&self) -> B256 {
        self.header.hash()
    }

    pub fn records_root(records: &[InferenceRecord], domain: &Domain) -> B256 {
        let leaves: Vec<B256> = records.iter().map(|r| r.leaf(domain)).collect();
        merkle::root(&leaves)
    }

    /// What a header names for a carried certificate.
    pub fn last_commit_hash(cert: Option<&CommitCertificate>) -> B256 {
        cert.map_or(B256::ZERO, |c| keccak256(codec::encode(c)))
    }

    pub fn txs_root(txs: &[Tx], domain: &Domain) -> B256 {
        let leaves: Vec<B256> = txs.iter().map(|t| t.hash(domain)).collect();
        merkle::root(&leaves)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum VoteKind {
    Prevote,
    Precommit,
}

/// A consensus vote as signed: `None` is a vote for nil.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub height: Height,
    pub round: u32,
    pub kind: VoteKind,
    pub block: Option<B256>,
    pub validator: Address,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVote {
    pub vote: Vote,
    pub signature: Sig,
}

fn vote_digest(vote: &Vote, domain: &Domain) -> B256 {
    signing::tagged_digest(b"proofmesh/vote/1", domain, &codec::encode(vote))
}

impl SignedVote {
    pub fn sign(vote: Vote, key: &PrivateKeySigner, domain: &Domain) -> Result<Self> {
        let signature = signing::sign(key, &vote_digest(&vote, domain))?;
        Ok(SignedVote { vote, signature })
    }

    pub fn verify(&self, domain: &Domain) -> Result<()> {
        signing::verify(
            &self.signature,
            &vote_digest(&self.vote, domain),
            self.vote.validator,
        )
    }
}

/// A proposal for `block_hash` at (height, round); `pol_round` is Tendermint's proof-of-lock round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub height: Height,
    pub round: u32,
    pub block_hash: B256,
    pub pol_round: Option<u32>,
    pub proposer: Address,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedProposal {
    pub proposal: Proposal,
    pub signature: Sig,
}

impl SignedProposal {
    pub fn sign(proposal: Proposal, key: &PrivateKeySigner, domain: &Domain) -> Result<Self> {
        let digest =
            signing::tagged_digest(b"proofmesh/proposal/1", domain, &codec::encode(&proposal));
        Ok(SignedProposal {
            signature: signing::sign(key, &digest)?,
            proposal,
        })
    }

    pub fn verify(&self, domain: &Domain) -> Result<()> {
        let digest = signing::tagged_digest(
            b"proofmesh/proposal/1",
            domain,
            &codec::encode(&self.proposal),
        );
        signing::verify(&self.signature, &digest, self.proposal.proposer)
    }
}

/// More than 2/3 of voting power precommitted `block_hash` at (height, round): the block is final.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCertificate {
    pub height: Height,
    pub round: u32,
    pub block_hash: B256,
    pub votes: Vec<SignedVote>,
}

impl CommitCertificate {
    /// Checks every signature and that distinct validators of `validators` (address, power)
    /// holding more than 2/3 of the power precommitted this block.
    pub fn verify(&self, validators: &[(Address, u64)], domain: &Domain) -> Result<()> {
        let total: u64 = validators.iter().map(|(_, p)| *p).sum();
        let mut seen = std::collections::BTreeSet::new();
        let mut power = 0u64;
        for v in &self.votes {
            let vote = &v.vote;
            if vote.height != self.height
                || vote.round != self.round
                || vote.kind != VoteKind::Precommit
                || vote.block != Some(self.block_hash)
            {
                return Err(Error::InvalidCertificate(format!(
                    "vote by {} is not a precommit for this block at {}/{}",
                    vote.validator, self.height, self.round
                )));
            }
            let Some((_, p)) = validators.iter().find(|(a, _)| *a == vote.validator) else {
                return Err(Error::InvalidCertificate(format!(
                    "{} is not a validator",
                    vote.validator
                )));
            };
            if !seen.insert(vote.validator) {
                return Err(Error::InvalidCertificate(format!(
                    "{} voted twice",
                    vote.validator
                )));
            }
            v.verify(domain)?;
            power += p;
        }
        if power * 3 <= total * 2 {
            return Err(Error::InvalidCertificate(format!(
                "precommits hold {power} of {total} voting power, need more than 2/3"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::seeded_key;

    fn cert(signers: &[u64], hash: B256) -> CommitCertificate {
        let votes = signers
            .iter()
            .map(|i| {
                let k = seeded_key(0, *i);
                let vote = Vote {
                    height: 3,
                    round: 1,
                    kind: VoteKind::Precommit,
                    block: Some(hash),
                    validator: k.address(),
                };
                SignedVote::sign(vote, &k, &crate::signing::test_domain(1)).unwrap()
            })
            .collect();
        CommitCertificate {
            height: 3,
            round: 1,
            block_hash: hash,
            votes,
        }
    }

    fn vals() -> Vec<(Address, u64)> {
        (0..4).map(|i| (seeded_key(0, i).address(), 10)).collect()
    }

    #[test]
    fn certificate_needs_two_thirds() {
        let h = B256::repeat_byte(1);
        cert(&[0, 1, 2], h)
            .verify(&vals(), &crate::signing::test_domain(1))
            .unwrap();
        assert!(
            cert(&[0, 1], h)
                .verify(&vals(), &crate::signing::test_domain(1))
                .is_err()
        );
        assert!(
            cert(&[0, 1, 1], h)
                .verify(&vals(), &crate::signing::test_domain(1))
                .is_err(),
            "duplicates do not count"
        );
        assert!(
            cert(&[0, 1, 7], h)
                .verify(&vals(), &crate::signing::test_domain(1))
                .is_err(),
            "outsider"
        );
        let mut c = cert(&[0, 1, 2], h);
        c.block_hash = B256::repeat_byte(2);
        assert!(c.verify(&vals(), &crate::signing::test_domain(1)).is_err());
        let mut c = cert(&[0, 1, 2, 3], h);
        c.votes[3].signature.0[5] ^= 1;
        assert!(
            c.verify(&vals(), &crate::signing::test_domain(1)).is_err(),
            "a bad signature fails the whole certificate"
        );
    }

    #[test]
    fn proposal_signature() {
        let k = seeded_key(0, 0);
        let p = Proposal {
            height: 1,
            round: 0,
            block_hash: B256::ZERO,
            pol_round: None,
            proposer: k.address(),
        };
        let mut sp = SignedProposal::sign(p, &k, &crate::signing::test_domain(1)).unwrap();
        sp.verify(&crate::signing::test_domain(1)).unwrap();
        sp.proposal.round = 1;
        assert!(sp.verify(&crate::signing::test_domain(1)).is_err());
    }
}
