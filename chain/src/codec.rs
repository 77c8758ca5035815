//! The one place where bytes are encoded and decoded, on disk and on the wire.
//!
//! bincode 2 (serde mode, fixed-width little-endian integers) with a hard size limit. Every decode
//! rejects oversized input, claimed lengths past the limit and trailing bytes, and returns an error
//! rather than panicking. Swapping the format later touches only this file.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// Upper bound of anything the codec will decode (bytes), whatever the caller's own limit.
pub const MAX_DECODE: usize = 32 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_DECODE>()
}

/// Encodes `value`. Encoding of our own types cannot fail except on a serde bug; it is still
/// reported as an error instead of a panic.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Our types are plain data (no maps with non-string keys, no unsized streams): encoding only
    // fails past the size limit, which callers bound by construction. Fall back to an empty
    // vector, which every decoder rejects, instead of panicking.
    bincode::serde::encode_to_vec(value, config()).unwrap_or_default()
}

/// Decodes a `T` from exactly `bytes`, refusing anything longer than `limit`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T> {
    let limit = limit.min(MAX_DECODE);
    if bytes.len() > limit {
        return Err(Error::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| Error::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(Error::Decode(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Sample {
        a: u64,
        b: Vec<u8>,
        c: String,
    }

    #[test]
    fn round_trip_and_trailing_bytes() {
        let s = Sample {
            a: 7,
            b: vec![1, 2, 3],
            c: "x".into(),
        };
        let mut bytes = encode(&s);
        assert_eq!(decode::<Sample>(&bytes, 1024).unwrap(), s);
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(&bytes, 1024),
            Err(Error::Decode(_))
        ));
    }

    #[test]
    fn limit_is_enforced() {
        let s = Sample {
            a: 7,
            b: vec![0; 100],
            c: String::new(),
        };
        let bytes = encode(&s);
        assert!(matches!(
            decode::<Sample>(&bytes, 50),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn huge_claimed_length_is_refused_without_allocating() {
        // a: u64, then a Vec length of u64::MAX.
        let mut bytes = vec![0u8; 8];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Sample>(&bytes, 1024).is_err());
    }

    /// Encodes `v` on the wire and back, and in JSON and back; both must give `v` again, and
    /// every truncation of the wire form must be an error.
    fn round_trip<T>(v: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let wire = encode(v);
        assert!(!wire.is_empty(), "{v:?} did not encode");
        assert_eq!(&decode::<T>(&wire, MAX_DECODE).unwrap(), v);
        for cut in [0, 1, wire.len() / 2, wire.len() - 1] {
            assert!(
                decode::<T>(&wire[..cut], MAX_DECODE).is_err(),
                "cut at {cut}"
            );
        }
        let json = serde_json::to_string(v).unwrap();
        assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), v, "{json}");
    }

    /// Every type that crosses the wire or sits on disk, with every variant: a type that encodes
    /// but cannot decode (serde's internally tagged enums under bincode) fails here.
    #[test]
    fn every_chain_wire_type_round_trips() {
        use crate::block::{
            Block, BlockHeader, CommitCertificate, Proposal, SignedProposal, SignedVote, Vote,
            VoteKind,
        };
        use crate::record::{Proof, TeeProof, tests::sample_record};
        use crate::signing::seeded_key;
        use crate::state::{Account, JobEntry, JobStatus, TxOutcome};
        use alloy::primitives::{Address, B256};

        let domain = &crate::record::tests::D7;
        let key = seeded_key(3, 0);
        // One transaction of every kind (`one_of_each` matches every action exhaustively).
        let txs = crate::tx::tests::one_of_each(domain);
        for tx in &txs {
            round_trip(tx);
        }
        let transfer = txs[0].clone();
        let reexec = sample_record(domain);
        let mut tee = sample_record(domain);
        tee.proof = Proof::Tee(TeeProof {
            report: vec![1; 1184],
            vcek: vec![2; 40],
            path: vec![B256::repeat_byte(4); 3],
        });
        round_trip(&reexec);
        round_trip(&tee);
        round_trip(&reexec.job);
        let header = BlockHeader {
            height: 9,
            parent: B256::repeat_byte(1),
            proposer: key.address(),
            timestamp_ms: 1_700_000_000_000,
            records_root: Block::records_root(&[reexec.clone(), tee.clone()], domain),
            txs_root: Block::txs_root(&txs, domain),
            state_root: B256::repeat_byte(3),
            last_commit_hash: Default::default(),
            next_validators_hash: Default::default(),
            anchor_records_root: Default::default(),
            anchor_withdrawals_root: Default::default(),
        };
        round_trip(&header);
        let block = Block {
            header,
            records: vec![reexec, tee],
            txs,
            last_commit: None,
        };
        round_trip(&block);
        let vote = |kind, block| {
            SignedVote::sign(
                Vote {
                    height: 9,
                    round: 2,
                    kind,
                    block,
                    validator: key.address(),
                },
                &key,
                domain,
            )
            .unwrap()
        };
        let votes = vec![
            vote(VoteKind::Prevote, None),
            vote(VoteKind::Prevote, Some(block.hash())),
            vote(VoteKind::Precommit, Some(block.hash())),
        ];
        for v in &votes {
            round_trip(v);
        }
        for pol_round in [None, Some(1)] {
            let p = SignedProposal::sign(
                Proposal {
                    height: 9,
                    round: 2,
                    block_hash: block.hash(),
                    pol_round,
                    proposer: key.address(),
                },
                &key,
                domain,
            )
            .unwrap();
            round_trip(&p);
        }
        round_trip(&CommitCertificate {
            height: 9,
            round: 2,
            block_hash: block.hash(),
            votes: votes[2..].to_vec(),
        });
        round_trip(&Account {
            balance: u128::MAX,
            bonded: 5,
            unbonding: vec![crate::state::Unbonding {
                amount: 4,
                release_height: 9,
            }],
            nonce: 3,
            vesting: Some(crate::genesis::Vesting {
                start_ms: 1,
                cliff_ms: 2,
                duration_ms: 3,
                amount: 4,
            }),
        });
        round_trip(&crate::state::Registry::from_genesis(
            &crate::genesis::tests::sample(),
        ));
        for (status, reason) in [
            (JobStatus::Finalized, None),
            (JobStatus::Failed, Some("expired".to_string())),
        ] {
            round_trip(&JobEntry {
                job_id: block.records[0].job_id(domain),
                status,
                height: 9,
                output_hash: B256::repeat_byte(6),
                executed_by: Address::repeat_byte(7),
                client: Address::repeat_byte(8),
                model_id: crate::types::ModelId([9; 32]),
                fee: 10,
                reason,
            });
        }
        round_trip(&TxOutcome {
            hash: transfer.hash(domain),
            ok: false,
            reason: Some("nonce".into()),
            fee: 7,
        });
    }

    #[test]
    fn transaction_json_shape_is_stable() {
        use crate::tx::{Action, Tx, UnsignedTx};
        let key = crate::signing::seeded_key(3, 0);
        let tx = UnsignedTx {
            from: key.address(),
            nonce: 0,
            max_fee: 9,
            action: Action::Transfer {
                to: alloy::primitives::Address::ZERO,
                amount: 5,
            },
        }
        .sign(&key, &crate::signing::test_domain(1))
        .unwrap();
        let v = serde_json::to_value(&tx).unwrap();
        assert_eq!(v["action"]["transfer"]["amount"], "5");
        assert_eq!(v["max_fee"], "9");
        assert!(v["signature"].as_str().unwrap().starts_with("0x"));
        let mut unknown = v.clone();
        unknown["action"] = serde_json::json!({"mint": {"amount": "5"}});
        assert!(serde_json::from_value::<Tx>(unknown).is_err());
        // The wire form is not JSON's: the action is a variant index, then its body.
        let wire = encode(&tx);
        let at = encode(&(tx.from, tx.nonce)).len() + 16;
        assert_eq!(&wire[at..at + 4], &0u32.to_le_bytes());
        let mut bad_variant = wire.clone();
        bad_variant[at] = 70;
        assert!(decode::<Tx>(&bad_variant, MAX_DECODE).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Sample>(&bytes, 1024);
            let _ = decode::<crate::block::Block>(&bytes, 1024);
            let _ = decode::<crate::record::InferenceRecord>(&bytes, 1024);
            let _ = decode::<crate::tx::Tx>(&bytes, 1024);
            let _ = decode::<crate::block::CommitCertificate>(&bytes, 1024);
            let _ = decode::<crate::block::SignedVote>(&bytes, 1024);
            let _ = decode::<crate::block::SignedProposal>(&bytes, 1024);
        }

        #[test]
        fn round_trips(a in any::<u64>(), b in proptest::collection::vec(any::<u8>(), 0..64), c in ".{0,20}") {
            let s = Sample { a, b, c };
            prop_assert_eq!(decode::<Sample>(&encode(&s), 4096).unwrap(), s);
        }
    }
}
