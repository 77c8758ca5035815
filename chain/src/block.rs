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
    /// [`validator_set_hash`] of the set that decides the next height.
    pub next_validators_hash: B256,
    /// At an anchor height (a multiple of `anchor_interval`): the Merkle root of the record
    /// leaves of every block since the previous anchor height, this one included; zero
    /// elsewhere.
    pub anchor_records_root: B256,
    /// Likewise for withdrawals to the EVM chain.
    pub anchor_withdrawals_root: B256,
}

impl BlockHeader {
    /// The block hash: the EIP-712 struct hash of the header (`BlockHeader(uint64 height,
    /// bytes32 parent, address proposer, uint64 timestampMs, bytes32 recordsRoot, bytes32
    /// txsRoot, bytes32 stateRoot, bytes32 lastCommitHash, bytes32 nextValidatorsHash, bytes32
    /// anchorRecordsRoot, bytes32 anchorWithdrawalsRoot)`), which the EVM settlement contract
    /// recomputes from the fields.
    pub fn hash(&self) -> B256 {
        use alloy::sol_types::SolStruct;
        signing::typed::consensus::BlockHeader {
            height: self.height,
            parent: self.parent,
            proposer: self.proposer,
            timestampMs: self.timestamp_ms,
            recordsRoot: self.records_root,
            txsRoot: self.txs_root,
            stateRoot: self.state_root,
            lastCommitHash: self.last_commit_hash,
            nextValidatorsHash: self.next_validators_hash,
            anchorRecordsRoot: self.anchor_records_root,
            anchorWithdrawalsRoot: self.anchor_withdrawals_root,
        }
        .eip712_hash_struct()
    }
}

/// What a header names for a validator set: `keccak256(abi.encode(address[] validators,
/// uint64[] powers))`, validators in ascending address order (the EVM settlement contract's
/// `hashValidatorSet`).
pub fn validator_set_hash(set: &[(Address, u64)]) -> B256 {
    use alloy::sol_types::SolValue;
    let mut sorted = set.to_vec();
    sorted.sort_by_key(|(a, _)| *a);
    let (addrs, powers): (Vec<Address>, Vec<u64>) = sorted.into_iter().unzip();
    keccak256((addrs, powers).abi_encode_params())
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

/// The EIP-712 signing hash of a vote: `ConsensusVote(uint64 height, uint32 round, uint8 kind,
/// bytes32 blockHash)` (kind 0 prevote, 1 precommit; nil is the zero hash) under the network's
/// domain, so the EVM settlement contract can check a commit certificate's precommits. The
/// validator is who recovers from the signature, not part of what is signed.
pub fn vote_digest(vote: &Vote, domain: &Domain) -> B256 {
    signing::signing_hash(
        &signing::typed::consensus::ConsensusVote {
            height: vote.height,
            round: vote.round,
            kind: match vote.kind {
                VoteKind::Prevote => 0,
                VoteKind::Precommit => 1,
            },
            blockHash: vote.block.unwrap_or(B256::ZERO),
        },
        domain,
    )
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

/// The same header, set, vote digest and signatures as `chain/contracts/test/Settlement.t.sol`
/// (`test_agreesWithTheProofmeshNode`) recomputes on the EVM: block hashes, set hashes and
/// precommits made here are what the settlement contract checks.
#[cfg(test)]
mod evm_agreement {
    use super::*;
    use crate::signing::seeded_key;

    pub(super) fn fixture() -> (BlockHeader, Vec<(PrivateKeySigner, u64)>, Domain) {
        let keys: Vec<(PrivateKeySigner, u64)> =
            (0..3).map(|i| (seeded_key(4242, i), 10 + i)).collect();
        let set: Vec<(Address, u64)> = keys.iter().map(|(k, p)| (k.address(), *p)).collect();
        let header = BlockHeader {
            height: 20,
            parent: keccak256("parent"),
            proposer: Address::repeat_byte(0x12),
            timestamp_ms: 1_700_000_000_000,
            records_root: keccak256("records"),
            txs_root: keccak256("txs"),
            state_root: keccak256("state"),
            last_commit_hash: keccak256("commit"),
            next_validators_hash: validator_set_hash(&set),
            anchor_records_root: keccak256("anchor records"),
            anchor_withdrawals_root: B256::ZERO,
        };
        let domain = Domain {
            chain_id: 4242,
            salt: keccak256("genesis"),
            payments: None,
        };
        (header, keys, domain)
    }

    #[test]
    fn hashes_and_precommits_match_the_contract() {
        let (header, keys, domain) = fixture();
        let mut signed: Vec<(Address, Sig)> = keys
            .iter()
            .map(|(k, _)| {
                let v = SignedVote::sign(
                    Vote {
                        height: header.height,
                        round: 2,
                        kind: VoteKind::Precommit,
                        block: Some(header.hash()),
                        validator: k.address(),
                    },
                    k,
                    &domain,
                )
                .unwrap();
                (k.address(), v.signature)
            })
            .collect();
        signed.sort_by_key(|(a, _)| *a);
        let digest = vote_digest(
            &Vote {
                height: 20,
                round: 2,
                kind: VoteKind::Precommit,
                block: Some(header.hash()),
                validator: Address::ZERO,
            },
            &domain,
        );
        // The constants in the forge test.
        let b = |h: &str| h.parse::<B256>().unwrap();
        assert_eq!(
            header.next_validators_hash,
            b("0xa80275b4994bf71d4669924088703eb5806e49a58ff4eb73be6a4e1cd7373217")
        );
        assert_eq!(
            header.hash(),
            b("0xe62518cb98fee6492f48bdfdaaf42884f1482449040a79acc86a87cb0562d9fc")
        );
        assert_eq!(
            digest,
            b("0xe7a60bbaa1032d8574f3bc1e4cefe84019a4137293291df670c73f4be75e44a0")
        );
        let want = [
            (
                "0x0D8bfe2f039b5bA384287B7358f99483785BD13a",
                "5dffa0beaab90bf504fb94f17e8a10fdc08dc1b8cda5a5ea7123342a276ae4004ba1a466afea85d1f2950738673ce68b832ec199e23f24d1feabb3fe0df6122e1c",
            ),
            (
                "0x88B39A4537FC887855e59c5da9bB8683E2F0BA37",
                "93d3a76ff616bc43bc8490d4f736e972f942627e0de05fded8bf0a8ed070c29c586b0514f90e7cf86cb007c2fc5d8cb1d5a6ac3a0888fc9184226257903438ee1b",
            ),
            (
                "0xe6096DA3F33cC1641c583cFd216A781cc71376a7",
                "517987e4103d2da6b8256b61630386acce798876bd67337e4b6f737cf5577f0c4e57033d7e786f7ccbef61a236397aed6d325c1f77bac7b91f2168f7991557e01c",
            ),
        ];
        for ((a, sig), (wa, ws)) in signed.iter().zip(want) {
            assert_eq!(*a, wa.parse::<Address>().unwrap());
            assert_eq!(hex::encode(sig.0), ws);
        }
        // A withdrawal's leaf, as `Settlement.withdrawalLeaf` computes it.
        assert_eq!(
            crate::state::withdrawal_leaf(
                keccak256("withdrawal"),
                Address::repeat_byte(0x34),
                5 * 10u128.pow(18)
            ),
            b("0xe17f3fa9259933c5a72597883a0e8492f4c9caefc64baec39f6503399a48fb3e")
        );
    }
}
