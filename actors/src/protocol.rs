//! Everything that crosses the wire between nodes: gossip topics, request-response protocol
//! names, message types, and the versioned, size-limited envelope they travel in.
//!
//! Every decoder returns `Err` on malformed, oversized or wrong-version input, never panics.

use std::sync::Arc;

use chain::codec;
use chain::signing::Domain;
use chain::{
    Address, Block, CommitCertificate, Height, InferenceRecord, JobId, ModelId, SignedJobRequest,
    SignedProposal, SignedVote, Tx,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Version of the envelope and of every message inside it.
pub const WIRE_VERSION: u16 = 2;

/// Gossipsub topics.
pub mod topics {
    pub const RECORDS: &str = "/proofmesh/1/records";
    pub const TXS: &str = "/proofmesh/1/txs";
    pub const CONSENSUS: &str = "/proofmesh/1/consensus";
    pub const CAPABILITIES: &str = "/proofmesh/1/capabilities";
    pub const ALL: [&str; 4] = [RECORDS, TXS, CONSENSUS, CAPABILITIES];
}

/// Request-response protocol names.
pub const JOB_PROTOCOL: &str = "/proofmesh/job/1";
pub const SYNC_PROTOCOL: &str = "/proofmesh/sync/1";
/// A model's manifest and files by model id, in chunks (request-response).
pub const MODEL_PROTOCOL: &str = "/proofmesh/model/1";
/// A streamed job's text as it is generated: inference node → the gateway that routed it.
pub const STREAM_PROTOCOL: &str = "/proofmesh/stream/1";
/// Kademlia protocol name (our own DHT, not the public IPFS one).
pub const KAD_PROTOCOL: &str = "/proofmesh/kad/1.0.0";

/// Size limits per message kind (bytes, encoded). A record carries at most a 64 KiB input and
/// a TEE proof.
pub const MAX_GOSSIP_BYTES: usize = 256 * 1024;
/// A transaction (a transfer is ~180 bytes).
pub const MAX_TX_BYTES: usize = 4 * 1024;
/// An inference node's capability (its served models).
pub const MAX_CAPABILITY_BYTES: usize = 16 * 1024;
pub const MAX_CONSENSUS_BYTES: usize = chain::block::MAX_BLOCK_BYTES;
pub const MAX_JOB_BYTES: usize = 1024 * 1024;
pub const MAX_SYNC_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Blocks per sync response at most.
pub const MAX_SYNC_BLOCKS: u64 = 64;
/// Bytes of a model file one `/proofmesh/model/1` reply carries at most.
pub const MODEL_CHUNK_BYTES: usize = 1 << 20;
/// A model request (an id, a file name, an offset) is small.
pub const MAX_MODEL_REQUEST_BYTES: usize = 1024;
/// A chunk and its envelope.
pub const MAX_MODEL_REPLY_BYTES: usize = MODEL_CHUNK_BYTES + 4096;
/// Text one [`StreamChunk`] carries at most (what was generated while the last one was in
/// flight; more waits for the next).
pub const MAX_STREAM_TEXT_BYTES: usize = 8 * 1024;
/// A stream chunk and its envelope.
pub const MAX_STREAM_CHUNK_BYTES: usize = MAX_STREAM_TEXT_BYTES + 256;

/// Wire decode failure.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("wire version {0} is not supported (this node speaks {WIRE_VERSION})")]
    Version(u16),
    #[error(transparent)]
    Codec(#[from] chain::Error),
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u16,
    body: T,
}

/// Encodes `body` in the versioned envelope.
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    codec::encode(&Envelope {
        version: WIRE_VERSION,
        body,
    })
}

/// Decodes an envelope of at most `limit` bytes; checks the version before the body.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(chain::Error::TooLarge {
            size: bytes.len(),
            limit,
        }
        .into());
    }
    if bytes.len() < 2 {
        return Err(chain::Error::Decode("envelope shorter than its version".into()).into());
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let env: Envelope<T> = codec::decode(bytes, limit)?;
    Ok(env.body)
}

/// On `/proofmesh/1/consensus`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ConsensusMsg {
    /// A signed proposal and the block it proposes.
    Proposal {
        proposal: SignedProposal,
        /// Shared, not copied, between the consensus actor, the signer's log and the wire.
        block: Arc<Block>,
    },
    Vote(SignedVote),
    /// A node's heartbeat, every second: its committed height, so laggards notice and sync, and
    /// while its current height is slow, votes it already signed at it, again (see
    /// `chain::consensus::Consensus::heartbeat`). Gossip is fire-and-forget: a vote published
    /// before the peers were connected reaches no one, and consensus waits for it forever.
    Status {
        height: Height,
        /// At most [`MAX_STATUS_VOTES`].
        votes: Vec<SignedVote>,
        /// When it was issued (unix ms). Message ids are content hashes: without it an unchanged
        /// status would be a duplicate, which gossipsub refuses to publish again.
        issued_ms: u64,
    },
    /// Two conflicting messages signed by one validator (variants are only ever appended).
    Evidence(Box<chain::Evidence>),
}

/// Votes a [`ConsensusMsg::Status`] carries at most: a prevote and a precommit of the current
/// round and the prevote of a proof-of-lock round.
pub const MAX_STATUS_VOTES: usize = 3;

/// On `/proofmesh/1/capabilities`: which models an inference node serves, and at which peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capability {
    /// The node's account (executor address): it signs the advertisement.
    pub address: Address,
    /// The libp2p peer id (bytes) that serves the jobs: gateways send jobs only to the peer
    /// that published the advertisement, and only if this names it.
    pub peer: Vec<u8>,
    pub models: Vec<ModelId>,
    /// Jobs in flight on the node.
    pub load: u32,
    /// When it was issued (unix ms). Message ids are content hashes, so without it a repeated
    /// advertisement would be dropped as a duplicate; it also lets gateways ignore stale ones.
    pub issued_ms: u64,
}

/// A [`Capability`] signed by its executor's account key: nobody else can advertise (or
/// replay from another peer) a registered node's capability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedCapability {
    pub capability: Capability,
    pub signature: chain::Sig,
}

impl SignedCapability {
    fn digest(capability: &Capability, domain: &Domain) -> chain::B256 {
        let mut bytes = b"proofmesh capability".to_vec();
        bytes.extend_from_slice(&domain.chain_id.to_be_bytes());
        bytes.extend_from_slice(domain.salt.as_slice());
        bytes.extend_from_slice(&codec::encode(capability));
        alloy::primitives::keccak256(bytes)
    }

    pub fn sign(
        capability: Capability,
        key: &chain::PrivateKeySigner,
        domain: &Domain,
    ) -> chain::Result<Self> {
        let signature = chain::signing::sign(key, &Self::digest(&capability, domain))?;
        Ok(SignedCapability {
            capability,
            signature,
        })
    }

    /// Checks that the advertised executor signed it, for this chain.
    pub fn verify(&self, domain: &Domain) -> chain::Result<()> {
        chain::signing::verify(
            &self.signature,
            &Self::digest(&self.capability, domain),
            self.capability.address,
        )
    }
}

/// `/proofmesh/job/1` request: gateway → inference node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobCall {
    pub job: SignedJobRequest,
    pub input: String,
    /// The gateway streams the job's text to its client: send it as it is generated
    /// ([`StreamChunk`]), before the reply.
    pub stream: bool,
}

/// `/proofmesh/stream/1` request: the next piece of a streamed job's text, from the inference
/// node running it to the gateway that routed it there. The answer is whether to go on
/// (`false`: nobody waits for it any more).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamChunk {
    pub job: JobId,
    /// 0, 1, 2, … per job: pieces arrive in order, each once.
    pub seq: u32,
    pub text: String,
}

/// `/proofmesh/job/1` response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum JobReply {
    Done {
        record: Box<InferenceRecord>,
        /// The model output as JSON text.
        output: String,
    },
    Refused {
        code: String,
        message: String,
    },
}

/// `/proofmesh/sync/1` request: finalized blocks `from..=to`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncRequest {
    pub from: Height,
    pub to: Height,
}

/// `/proofmesh/sync/1` response: blocks with their commit certificates, in height order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SyncReply {
    Blocks(Vec<(Block, CommitCertificate)>),
    Error(String),
}

/// `/proofmesh/model/1` request: a model's manifest, or a chunk of one of its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelRequest {
    Manifest(ModelId),
    /// Up to [`MODEL_CHUNK_BYTES`] of `file` (a name in the manifest) from `offset`.
    Chunk {
        model: ModelId,
        file: String,
        offset: u64,
    },
}

/// `/proofmesh/model/1` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelReply {
    /// The manifest's bytes (its keccak is the model id).
    Manifest(#[serde(with = "chain::types::bytes_hex")] Vec<u8>),
    /// The file's size and its bytes from the requested offset (the whole rest of the file,
    /// or [`MODEL_CHUNK_BYTES`] of it).
    Chunk {
        size: u64,
        #[serde(with = "chain::types::bytes_hex")]
        data: Vec<u8>,
    },
    /// This node does not have it (or cannot read it).
    NotFound(String),
}

/// Decodes a record gossip payload.
pub fn decode_record(bytes: &[u8]) -> Result<InferenceRecord, WireError> {
    decode(bytes, MAX_GOSSIP_BYTES)
}

pub fn decode_tx(bytes: &[u8]) -> Result<Tx, WireError> {
    decode(bytes, MAX_TX_BYTES)
}

pub fn decode_consensus(bytes: &[u8]) -> Result<ConsensusMsg, WireError> {
    let msg = decode(bytes, MAX_CONSENSUS_BYTES)?;
    if let ConsensusMsg::Status { votes, .. } = &msg
        && votes.len() > MAX_STATUS_VOTES
    {
        return Err(chain::Error::Decode(format!(
            "status with {} votes (at most {MAX_STATUS_VOTES})",
            votes.len()
        ))
        .into());
    }
    Ok(msg)
}

pub fn decode_capability(bytes: &[u8]) -> Result<SignedCapability, WireError> {
    decode(bytes, MAX_CAPABILITY_BYTES)
}

/// The largest message gossipsub takes on `topic` (its payload plus the signed envelope's
/// author, sequence number and signature): larger ones are dropped by the transport, before
/// any decoding, and count against the sender's score as invalid.
pub fn max_topic_bytes(topic: &str) -> usize {
    const ENVELOPE: usize = 1024;
    ENVELOPE
        + match topic {
            topics::TXS => MAX_TX_BYTES,
            topics::CAPABILITIES => MAX_CAPABILITY_BYTES,
            topics::RECORDS => MAX_GOSSIP_BYTES,
            _ => MAX_CONSENSUS_BYTES,
        }
}

/// Valid messages of every kind, for codec tests and the fuzzer's seed corpus.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod samples {
    use super::*;

    pub struct Samples {
        pub key: chain::PrivateKeySigner,
        pub domain: Domain,
        pub record: InferenceRecord,
        pub tx: Tx,
        pub block: Block,
        pub vote: SignedVote,
        pub proposal: SignedProposal,
        pub certificate: CommitCertificate,
    }

    pub fn sample_record(key: &chain::PrivateKeySigner, domain: &Domain) -> InferenceRecord {
        let input = "{\"inputs\":[[1.0]]}".to_string();
        let job = chain::JobRequest {
            client: key.address(),
            model_id: ModelId([5; 32]),
            input_hash: alloy::primitives::keccak256(input.as_bytes()),
            max_fee: 10,
            nonce: 1,
            expiry: 2_000_000_000,
        }
        .sign(key, domain)
        .unwrap();
        InferenceRecord::create(
            job,
            input,
            (chain::B256::repeat_byte(9), 1),
            chain::Proof::Reexec,
            key,
            domain,
        )
        .unwrap()
    }

    impl Samples {
        pub fn new(key: &chain::PrivateKeySigner, domain: &Domain) -> Samples {
            let key = key.clone();
            let record = sample_record(&key, domain);
            let tx = chain::UnsignedTx {
                from: key.address(),
                nonce: 0,
                max_fee: 1,
                action: chain::Action::Transfer {
                    to: Address::repeat_byte(3),
                    amount: 12,
                },
            }
            .sign(&key, domain)
            .unwrap();
            let header = chain::BlockHeader {
                height: 2,
                parent: chain::B256::repeat_byte(1),
                proposer: key.address(),
                timestamp_ms: 1_700_000_000_000,
                records_root: Block::records_root(std::slice::from_ref(&record), domain),
                txs_root: Block::txs_root(std::slice::from_ref(&tx), domain),
                state_root: chain::B256::repeat_byte(2),
                last_commit_hash: Default::default(),
                next_validators_hash: Default::default(),
                anchor_records_root: Default::default(),
                anchor_withdrawals_root: Default::default(),
            };
            let block = Block {
                header,
                records: vec![record.clone()],
                txs: vec![tx.clone()],
                last_commit: None,
            };
            let vote = SignedVote::sign(
                chain::Vote {
                    height: 2,
                    round: 0,
                    kind: chain::VoteKind::Precommit,
                    block: Some(block.hash()),
                    validator: key.address(),
                },
                &key,
                domain,
            )
            .unwrap();
            let proposal = SignedProposal::sign(
                chain::Proposal {
                    height: 2,
                    round: 0,
                    block_hash: block.hash(),
                    pol_round: None,
                    proposer: key.address(),
                },
                &key,
                domain,
            )
            .unwrap();
            let certificate = CommitCertificate {
                height: 2,
                round: 0,
                block_hash: block.hash(),
                votes: vec![vote.clone()],
            };
            Samples {
                key,
                domain: *domain,
                record,
                tx,
                block,
                vote,
                proposal,
                certificate,
            }
        }

        pub fn consensus(&self) -> Vec<ConsensusMsg> {
            let nil = SignedVote::sign(
                chain::Vote {
                    block: None,
                    ..self.vote.vote.clone()
                },
                &self.key,
                &self.domain,
            )
            .unwrap();
            vec![
                ConsensusMsg::Proposal {
                    proposal: self.proposal.clone(),
                    block: Arc::new(self.block.clone()),
                },
                ConsensusMsg::Vote(self.vote.clone()),
                ConsensusMsg::Status {
                    height: 1,
                    votes: vec![self.vote.clone()],
                    issued_ms: 3,
                },
                ConsensusMsg::Evidence(Box::new(
                    chain::Evidence::double_vote(self.vote.clone(), nil).unwrap(),
                )),
            ]
        }

        pub fn capability(&self) -> SignedCapability {
            SignedCapability::sign(
                Capability {
                    address: self.key.address(),
                    peer: libp2p::PeerId::random().to_bytes(),
                    models: vec![ModelId([1; 32]), ModelId([2; 32])],
                    load: 4,
                    issued_ms: 6,
                },
                &self.key,
                &self.domain,
            )
            .unwrap()
        }

        pub fn job_call(&self) -> JobCall {
            JobCall {
                job: self.record.job.clone(),
                input: self.record.input.clone(),
                stream: true,
            }
        }

        pub fn job_replies(&self) -> Vec<JobReply> {
            vec![
                JobReply::Done {
                    record: Box::new(self.record.clone()),
                    output: "[[0.5]]".into(),
                },
                JobReply::Refused {
                    code: "busy".into(),
                    message: "later".into(),
                },
            ]
        }

        pub fn stream_chunk(&self) -> StreamChunk {
            StreamChunk {
                job: JobId(chain::B256::repeat_byte(4)),
                seq: 3,
                text: " Paris ✓".into(),
            }
        }

        pub fn model_requests(&self) -> Vec<ModelRequest> {
            vec![
                ModelRequest::Manifest(ModelId([3; 32])),
                ModelRequest::Chunk {
                    model: ModelId([3; 32]),
                    file: "model.gguf".into(),
                    offset: 1 << 20,
                },
            ]
        }

        pub fn model_replies(&self) -> Vec<ModelReply> {
            vec![
                ModelReply::Manifest(
                    format!(
                        "{{\"files\":[{{\"name\":\"model.gguf\",\"keccak\":\"0x{}\"}}]}}",
                        "ab".repeat(32)
                    )
                    .into_bytes(),
                ),
                ModelReply::Chunk {
                    size: 10,
                    data: vec![1, 2, 3],
                },
                ModelReply::NotFound("no such model here".into()),
            ]
        }

        pub fn sync_replies(&self) -> Vec<SyncReply> {
            vec![
                SyncReply::Blocks(vec![(self.block.clone(), self.certificate.clone())]),
                SyncReply::Error("no".into()),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(chain_id: u64) -> Domain {
        Domain {
            chain_id,
            salt: chain::B256::ZERO,
            payments: None,
        }
    }

    #[test]
    fn envelope_round_trip_and_version() {
        let key = chain::signing::seeded_key(4, 0);
        let c = SignedCapability::sign(
            Capability {
                address: key.address(),
                peer: vec![0, 36, 8],
                models: vec![ModelId([1; 32])],
                load: 3,
                issued_ms: 5,
            },
            &key,
            &d(7),
        )
        .unwrap();
        let bytes = encode(&c);
        assert_eq!(decode_capability(&bytes).unwrap(), c);
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(matches!(
            decode_capability(&other),
            Err(WireError::Version(9))
        ));
        assert!(decode_capability(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_capability(&[]).is_err());
    }

    /// A capability verifies only for its signer and chain; any change to it breaks it.
    #[test]
    fn capabilities_are_bound_to_their_executor_and_chain() {
        let (key, other) = (
            chain::signing::seeded_key(4, 0),
            chain::signing::seeded_key(4, 1),
        );
        let cap = Capability {
            address: key.address(),
            peer: libp2p::PeerId::random().to_bytes(),
            models: vec![ModelId([1; 32])],
            load: 0,
            issued_ms: 5,
        };
        let signed = SignedCapability::sign(cap.clone(), &key, &d(7)).unwrap();
        signed.verify(&d(7)).unwrap();
        assert!(signed.verify(&d(8)).is_err(), "another chain");
        let elsewhere = Domain {
            salt: chain::B256::repeat_byte(1),
            ..d(7)
        };
        assert!(signed.verify(&elsewhere).is_err(), "another network");
        let mut moved = signed.clone();
        moved.capability.peer = libp2p::PeerId::random().to_bytes();
        assert!(moved.verify(&d(7)).is_err(), "another peer");
        let mut lighter = signed.clone();
        lighter.capability.load = 99;
        assert!(lighter.verify(&d(7)).is_err(), "another load");
        let forged = SignedCapability::sign(cap, &other, &d(7)).unwrap();
        assert!(forged.verify(&d(7)).is_err(), "signed by someone else");
    }

    #[test]
    fn a_status_carries_at_most_three_votes() {
        let key = chain::PrivateKeySigner::random();
        let vote = |round| {
            SignedVote::sign(
                chain::Vote {
                    height: 4,
                    round,
                    kind: chain::VoteKind::Prevote,
                    block: None,
                    validator: key.address(),
                },
                &key,
                &d(1),
            )
            .unwrap()
        };
        let status = |n: u32| {
            encode(&ConsensusMsg::Status {
                height: 3,
                votes: (0..n).map(vote).collect(),
                issued_ms: 9,
            })
        };
        match decode_consensus(&status(MAX_STATUS_VOTES as u32)).unwrap() {
            ConsensusMsg::Status {
                height: 3,
                votes,
                issued_ms: 9,
            } => assert_eq!(votes, (0..3).map(vote).collect::<Vec<_>>()),
            other => panic!("{other:?}"),
        }
        assert!(decode_consensus(&status(MAX_STATUS_VOTES as u32 + 1)).is_err());
        // Two heartbeats at one height are two messages (gossip ids are content hashes).
        let again = encode(&ConsensusMsg::Status {
            height: 3,
            votes: Vec::new(),
            issued_ms: 10,
        });
        assert_ne!(status(0), again);
    }

    /// Encodes through the envelope, decodes with the decoder the node uses, and encodes again:
    /// the bytes must be the same, and every truncation an error.
    fn round_trip<T: Serialize + DeserializeOwned>(
        v: &T,
        decoder: impl Fn(&[u8]) -> Result<T, WireError>,
    ) {
        let bytes = encode(v);
        let back = decoder(&bytes).unwrap_or_else(|e| panic!("does not decode: {e}"));
        assert_eq!(encode(&back), bytes);
        for cut in [2, bytes.len() / 2, bytes.len() - 1] {
            assert!(decoder(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Every message of every topic and protocol, every variant, as the node decodes it.
    #[test]
    fn every_wire_message_round_trips() {
        let key = chain::signing::seeded_key(8, 1);
        let s = samples::Samples::new(&key, &d(5));
        round_trip(&s.record, decode_record);
        round_trip(&s.tx, decode_tx);
        for msg in s.consensus() {
            match &msg {
                ConsensusMsg::Proposal { .. }
                | ConsensusMsg::Vote(_)
                | ConsensusMsg::Status { .. }
                | ConsensusMsg::Evidence(_) => round_trip(&msg, decode_consensus),
            }
        }
        round_trip(&s.capability(), decode_capability);
        round_trip(&s.job_call(), |b| decode::<JobCall>(b, MAX_JOB_BYTES));
        for reply in s.job_replies() {
            match &reply {
                JobReply::Done { .. } | JobReply::Refused { .. } => {
                    round_trip(&reply, |b| decode::<JobReply>(b, MAX_JOB_BYTES))
                }
            }
        }
        round_trip(&SyncRequest { from: 1, to: 64 }, |b| {
            decode::<SyncRequest>(b, 1024)
        });
        for reply in s.sync_replies() {
            match &reply {
                SyncReply::Blocks(_) | SyncReply::Error(_) => {
                    round_trip(&reply, |b| decode::<SyncReply>(b, MAX_SYNC_RESPONSE_BYTES))
                }
            }
        }
        round_trip(&s.stream_chunk(), |b| {
            decode::<StreamChunk>(b, MAX_STREAM_CHUNK_BYTES)
        });
        round_trip(&true, |b| decode::<bool>(b, 16));
        for request in s.model_requests() {
            match &request {
                ModelRequest::Manifest(_) | ModelRequest::Chunk { .. } => {
                    round_trip(&request, |b| {
                        decode::<ModelRequest>(b, MAX_MODEL_REQUEST_BYTES)
                    })
                }
            }
        }
        let full = ModelReply::Chunk {
            size: 1 << 30,
            data: vec![7; MODEL_CHUNK_BYTES],
        };
        for reply in s.model_replies().into_iter().chain([full]) {
            match &reply {
                ModelReply::Manifest(_) | ModelReply::Chunk { .. } | ModelReply::NotFound(_) => {
                    round_trip(&reply, |b| decode::<ModelReply>(b, MAX_MODEL_REPLY_BYTES))
                }
            }
        }
    }

    #[test]
    fn garbage_is_refused_by_every_decoder() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for len in [0usize, 1, 2, 3, 17, 64, 1000, 70_000] {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let mut versioned = bytes.clone();
                if versioned.len() >= 2 {
                    versioned[..2].copy_from_slice(&WIRE_VERSION.to_le_bytes());
                }
                for b in [&bytes, &versioned] {
                    assert!(decode_record(b).is_err());
                    assert!(decode_tx(b).is_err());
                    assert!(decode_consensus(b).is_err());
                    assert!(decode::<JobCall>(b, MAX_JOB_BYTES).is_err());
                    assert!(decode::<JobReply>(b, MAX_JOB_BYTES).is_err());
                    assert!(decode::<SyncRequest>(b, 1024).is_err() || b.len() == 18);
                    assert!(decode::<SyncReply>(b, MAX_SYNC_RESPONSE_BYTES).is_err());
                    assert!(decode::<ModelRequest>(b, MAX_MODEL_REQUEST_BYTES).is_err());
                    assert!(decode::<StreamChunk>(b, MAX_STREAM_CHUNK_BYTES).is_err());
                    assert!(decode::<ModelReply>(b, MAX_MODEL_REPLY_BYTES).is_err());
                }
            }
        }
    }

    #[test]
    fn oversized_is_refused_before_decoding() {
        let big = vec![0u8; MAX_GOSSIP_BYTES + 1];
        assert!(matches!(
            decode_record(&big),
            Err(WireError::Codec(chain::Error::TooLarge { .. }))
        ));
    }
}
