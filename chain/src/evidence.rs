//! Evidence of equivocation: two conflicting consensus messages signed by one validator, kept
//! with their signatures so that anyone can check them later.
//!
//! Two votes of one kind for different values in one (height, round), or two proposals of
//! different blocks for one (height, round). Checking needs only the chain id and the validator
//! set; punishing the offender is the ledger's business (staking), not this module's.

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

use crate::block::{SignedProposal, SignedVote};
use crate::codec;
use crate::error::{Error, Result};
use crate::signing::Domain;
use crate::types::Height;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Evidence {
    DoubleVote {
        first: SignedVote,
        second: SignedVote,
    },
    DoubleProposal {
        first: SignedProposal,
        second: SignedProposal,
    },
}

impl Evidence {
    /// Evidence from two votes, in a canonical order (so both orders give one id), or `None`
    /// when they do not conflict.
    pub fn double_vote(a: SignedVote, b: SignedVote) -> Option<Evidence> {
        let (x, y) = (&a.vote, &b.vote);
        let conflict = x.validator == y.validator
            && x.height == y.height
            && x.round == y.round
            && x.kind == y.kind
            && x.block != y.block;
        conflict.then(|| {
            let (first, second) = if codec::encode(&a) <= codec::encode(&b) {
                (a, b)
            } else {
                (b, a)
            };
            Evidence::DoubleVote { first, second }
        })
    }

    /// Evidence from two proposals, canonical order, or `None` when they do not conflict.
    pub fn double_proposal(a: SignedProposal, b: SignedProposal) -> Option<Evidence> {
        let (x, y) = (&a.proposal, &b.proposal);
        let conflict = x.proposer == y.proposer
            && x.height == y.height
            && x.round == y.round
            && x.block_hash != y.block_hash;
        conflict.then(|| {
            let (first, second) = if codec::encode(&a) <= codec::encode(&b) {
                (a, b)
            } else {
                (b, a)
            };
            Evidence::DoubleProposal { first, second }
        })
    }

    /// The validator who signed both.
    pub fn offender(&self) -> Address {
        match self {
            Evidence::DoubleVote { first, .. } => first.vote.validator,
            Evidence::DoubleProposal { first, .. } => first.proposal.proposer,
        }
    }

    pub fn height(&self) -> Height {
        match self {
            Evidence::DoubleVote { first, .. } => first.vote.height,
            Evidence::DoubleProposal { first, .. } => first.proposal.height,
        }
    }

    /// Content id: keccak of the encoding (canonical, since construction orders the pair).
    pub fn id(&self) -> B256 {
        keccak256(codec::encode(self))
    }

    /// Checks that the two messages conflict, are in canonical order, are both signed by the
    /// offender, and that the offender is one of `validators`.
    pub fn verify(&self, validators: &[(Address, u64)], domain: &Domain) -> Result<()> {
        let rebuilt = match self {
            Evidence::DoubleVote { first, second } => {
                Evidence::double_vote(first.clone(), second.clone())
            }
            Evidence::DoubleProposal { first, second } => {
                Evidence::double_proposal(first.clone(), second.clone())
            }
        };
        if rebuilt.as_ref() != Some(self) {
            return Err(Error::Invalid {
                field: "evidence",
                reason: "the two messages do not conflict, or are not in canonical order".into(),
            });
        }
        if !validators.iter().any(|(a, _)| *a == self.offender()) {
            return Err(Error::Invalid {
                field: "evidence",
                reason: format!("{} is not a validator", self.offender()),
            });
        }
        match self {
            Evidence::DoubleVote { first, second } => {
                first.verify(domain)?;
                second.verify(domain)
            }
            Evidence::DoubleProposal { first, second } => {
                first.verify(domain)?;
                second.verify(domain)
            }
        }
    }
}

/// Proof that an inference node signed a false record: the record itself (its executor's
/// signature binds the output hash it claims) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FraudEvidence {
    pub record: crate::record::InferenceRecord,
    pub claim: FraudClaim,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FraudClaim {
    /// Re-executing the job (deterministic kernels) gives `recomputed`, not the record's
    /// output hash. Validators re-execute before they admit or vote for such a report, so a
    /// false one never enters a block.
    Output { recomputed: B256 },
    /// Re-executing the job gives the record's output but `recomputed` units, not the ones the
    /// record is priced by (checked by re-execution, as `Output`).
    Units { recomputed: u64 },
    /// The record's model requires a TEE proof and the record's does not verify (or is
    /// missing): the chain checks that itself.
    TeeProof,
}

impl FraudEvidence {
    /// Content id: keccak of the encoding.
    pub fn id(&self) -> B256 {
        keccak256(codec::encode(self))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::block::{Proposal, Vote, VoteKind};
    use crate::signing::seeded_key;

    /// Evidence that `seeded_key(9, 0)` precommitted two values at height 4 (test domain 1).
    pub(crate) fn double_vote() -> Evidence {
        Evidence::double_vote(vote(0, 2, Some(B256::repeat_byte(1))), vote(0, 2, None)).unwrap()
    }

    fn vote(i: u64, round: u32, block: Option<B256>) -> SignedVote {
        let k = seeded_key(9, i);
        SignedVote::sign(
            Vote {
                height: 4,
                round,
                kind: VoteKind::Precommit,
                block,
                validator: k.address(),
            },
            &k,
            &crate::signing::test_domain(1),
        )
        .unwrap()
    }

    fn proposal(i: u64, block: B256) -> SignedProposal {
        let k = seeded_key(9, i);
        SignedProposal::sign(
            Proposal {
                height: 4,
                round: 1,
                block_hash: block,
                pol_round: None,
                proposer: k.address(),
            },
            &k,
            &crate::signing::test_domain(1),
        )
        .unwrap()
    }

    #[test]
    fn conflicting_messages_make_checkable_evidence() {
        let set = vec![
            (seeded_key(9, 0).address(), 1),
            (seeded_key(9, 1).address(), 1),
        ];
        let (a, b) = (vote(0, 2, Some(B256::repeat_byte(1))), vote(0, 2, None));
        let e = Evidence::double_vote(a.clone(), b.clone()).unwrap();
        assert_eq!(e, Evidence::double_vote(b.clone(), a.clone()).unwrap());
        assert_eq!(e.id(), Evidence::double_vote(b, a.clone()).unwrap().id());
        e.verify(&set, &crate::signing::test_domain(1)).unwrap();
        assert_eq!(e.offender(), seeded_key(9, 0).address());
        assert_eq!(e.height(), 4);
        // Not conflicts: the same vote, another round, another validator.
        assert!(Evidence::double_vote(a.clone(), a.clone()).is_none());
        assert!(Evidence::double_vote(a.clone(), vote(0, 3, None)).is_none());
        assert!(Evidence::double_vote(a.clone(), vote(1, 2, None)).is_none());
        // Forged, reordered, or by a stranger: refused.
        let Evidence::DoubleVote { first, second } = e.clone() else {
            unreachable!()
        };
        let mut forged = second.clone();
        forged.signature.0[3] ^= 1;
        assert!(
            Evidence::DoubleVote {
                first: first.clone(),
                second: forged
            }
            .verify(&set, &crate::signing::test_domain(1))
            .is_err()
        );
        assert!(
            Evidence::DoubleVote {
                first: second,
                second: first
            }
            .verify(&set, &crate::signing::test_domain(1))
            .is_err()
        );
        assert!(
            e.verify(&set[1..], &crate::signing::test_domain(1))
                .is_err()
        );
        assert!(
            e.verify(&set, &crate::signing::test_domain(2)).is_err(),
            "signatures are bound to the chain id"
        );

        let p = Evidence::double_proposal(
            proposal(1, B256::repeat_byte(1)),
            proposal(1, B256::repeat_byte(2)),
        )
        .unwrap();
        p.verify(&set, &crate::signing::test_domain(1)).unwrap();
        assert!(
            Evidence::double_proposal(proposal(1, B256::ZERO), proposal(1, B256::ZERO)).is_none()
        );
        let wire = codec::encode(&p);
        assert_eq!(codec::decode::<Evidence>(&wire, 1 << 16).unwrap(), p);
        assert!(codec::decode::<Evidence>(&wire[..wire.len() - 1], 1 << 16).is_err());
    }
}
