//! Structure-aware fuzzing of every decoder of outside bytes in the node's network layer, each
//! driving the real checks that follow decoding.
//!
//! Each target starts from valid encodings of its messages (built here) and the files under
//! `actors/fuzz/corpus/<target>/` (kept in the repository: inputs worth keeping, such as ones
//! that once failed), and mutates them the way a hostile peer would: bit flips, interesting
//! bytes, huge length prefixes, truncations, insertions, splices of two messages. Whatever
//! decodes goes on to the same checks the node runs next (signatures, consensus inbox, mempool
//! admission, sync ranges, certificates). A panic anywhere fails the test, prints the input in
//! hex and saves it under `target/fuzz-crashes/`, ready to be added to the corpus.
//!
//! Each target runs for `PROOFMESH_FUZZ_MS` milliseconds (default 1000; `scripts/test` keeps
//! the default), from a seed taken from `PROOFMESH_FUZZ_SEED` or the clock (printed, so a run
//! can be repeated).
//!
//! With the `fuzzing` feature the same targets are public ([`Target`], [`Target::run`],
//! [`Target::seeds`]) for the coverage-guided libFuzzer build in `fuzz/` (`scripts/fuzz`).

use std::sync::OnceLock;

use chain::consensus::ValidatorSet;
use chain::{Account, Address, Block, CommitCertificate, InferenceRecord, SignedVote, Tx};

use crate::consensus::inbox::{FutureBuffer, Place, Position};
use crate::mempool::TxPool;
use crate::protocol::{
    self, ConsensusMsg, JobCall, JobReply, ModelReply, ModelRequest, SyncReply, SyncRequest,
};

const CHAIN: chain::signing::Domain = chain::signing::Domain {
    chain_id: 5,
    salt: chain::B256::ZERO,
    payments: None,
};

/// What the node holds when messages arrive: one validator (the signer of the samples) at
/// height 2.
struct World {
    validators: ValidatorSet<Address>,
    powers: Vec<(Address, u64)>,
}

impl World {
    fn new(key: &chain::PrivateKeySigner) -> Self {
        let powers = vec![(key.address(), 10)];
        World {
            validators: ValidatorSet::new(powers.clone()),
            powers,
        }
    }

    fn position(&self) -> Position<'_> {
        Position {
            height: 2,
            round: 0,
            validators: &self.validators,
            domain: &CHAIN,
        }
    }

    fn record(&self, r: &InferenceRecord) {
        if r.verify_signatures(&CHAIN).is_ok() {
            let _ = r.leaf(&CHAIN);
        }
    }

    fn tx(&self, tx: Tx) {
        let mut pool = TxPool::default();
        if let Ok(hash) = pool.precheck(&tx, &CHAIN) {
            let ctx = crate::mempool::TxContext {
                account: Account {
                    balance: u128::MAX,
                    ..Account::default()
                },
                ..Default::default()
            };
            let _ = pool.admit(tx, hash, &ctx, crate::mempool::Origin::Gossip);
        }
    }

    fn vote(&self, v: &SignedVote, buffer: &mut FutureBuffer) {
        if let Ok(Place::Later) = self.position().check_vote(v) {
            let _ = buffer.push(
                v.vote.height,
                ConsensusMsg::Vote(v.clone()),
                libp2p::PeerId::random(),
                256,
            );
        }
    }

    fn consensus(&self, msg: ConsensusMsg, buffer: &mut FutureBuffer) {
        match msg {
            ConsensusMsg::Vote(v) => self.vote(&v, buffer),
            ConsensusMsg::Proposal { proposal, block } => {
                if let Ok(Place::Later) = self.position().check_proposal(&proposal, &block) {
                    let h = proposal.proposal.height;
                    let _ = buffer.push(
                        h,
                        ConsensusMsg::Proposal { proposal, block },
                        libp2p::PeerId::random(),
                        1 << 20,
                    );
                }
            }
            ConsensusMsg::Status { votes, .. } => {
                for v in &votes {
                    self.vote(v, buffer);
                }
            }
            ConsensusMsg::Evidence(e) => {
                let _ = e.verify(&self.powers, &CHAIN);
            }
        }
    }

    fn blocks(&self, blocks: &[(Block, CommitCertificate)]) {
        for (block, certificate) in blocks {
            if certificate.verify(&self.powers, &CHAIN).is_ok() {
                let _ = Block::records_root(&block.records, &CHAIN);
                let _ = Block::txs_root(&block.txs, &CHAIN);
                let _ = block.hash();
            }
        }
    }
}

/// The key that signs the seeds, and the world that knows it as its one validator.
fn fixture() -> &'static (chain::PrivateKeySigner, World) {
    static FIXTURE: OnceLock<(chain::PrivateKeySigner, World)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = chain::signing::seeded_key(8, 1);
        let world = World::new(&key);
        (key, world)
    })
}

/// Every decoder the network layer runs on outside bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Record,
    Tx,
    Consensus,
    Capability,
    JobCall,
    JobReply,
    SyncRequest,
    SyncReply,
    ModelRequest,
    ModelReply,
    StreamChunk,
}

impl Target {
    pub const ALL: [Target; 11] = [
        Target::Record,
        Target::Tx,
        Target::Consensus,
        Target::Capability,
        Target::JobCall,
        Target::JobReply,
        Target::SyncRequest,
        Target::SyncReply,
        Target::ModelRequest,
        Target::ModelReply,
        Target::StreamChunk,
    ];

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Record => "record",
            Target::Tx => "tx",
            Target::Consensus => "consensus",
            Target::Capability => "capability",
            Target::JobCall => "job_call",
            Target::JobReply => "job_reply",
            Target::SyncRequest => "sync_request",
            Target::SyncReply => "sync_reply",
            Target::ModelRequest => "model_request",
            Target::ModelReply => "model_reply",
            Target::StreamChunk => "stream_chunk",
        }
    }

    /// Decodes `bytes` as the node does and, if that works, runs what the node runs next, with
    /// an empty future buffer.
    pub fn run(self, bytes: &[u8]) {
        let mut buffer = FutureBuffer::default();
        self.drive(bytes, &fixture().1, &mut buffer);
    }

    /// Valid encodings of every message of this target: a seed corpus.
    pub fn seeds(self) -> Vec<Vec<u8>> {
        seeds(self, &fixture().0)
    }

    /// Decodes `bytes` as the node does and, if that works, runs what the node runs next.
    fn drive(self, bytes: &[u8], world: &World, buffer: &mut FutureBuffer) {
        match self {
            Target::Record => {
                if let Ok(r) = protocol::decode_record(bytes) {
                    world.record(&r);
                }
            }
            Target::Tx => {
                if let Ok(tx) = protocol::decode_tx(bytes) {
                    world.tx(tx);
                }
            }
            Target::Consensus => {
                if let Ok(msg) = protocol::decode_consensus(bytes) {
                    world.consensus(msg, buffer);
                }
            }
            Target::Capability => {
                if let Ok(c) = protocol::decode_capability(bytes) {
                    let _ = c.verify(&CHAIN);
                }
            }
            Target::JobCall => {
                if let Ok(call) = protocol::decode::<JobCall>(bytes, protocol::MAX_JOB_BYTES) {
                    let _ = call.job.verify(&CHAIN);
                    let _ = alloy::primitives::keccak256(call.input.as_bytes());
                }
            }
            Target::JobReply => {
                if let Ok(JobReply::Done { record, .. }) =
                    protocol::decode::<JobReply>(bytes, protocol::MAX_JOB_BYTES)
                {
                    world.record(&record);
                }
            }
            Target::SyncRequest => {
                if let Ok(r) = protocol::decode::<SyncRequest>(bytes, 1024) {
                    let _ = crate::settlement::sync_range(&r, 10);
                }
            }
            Target::SyncReply => {
                if let Ok(SyncReply::Blocks(blocks)) =
                    protocol::decode::<SyncReply>(bytes, protocol::MAX_SYNC_RESPONSE_BYTES)
                {
                    world.blocks(&blocks);
                }
            }
            Target::ModelRequest => {
                if let Ok(ModelRequest::Chunk { file, .. }) =
                    protocol::decode::<ModelRequest>(bytes, protocol::MAX_MODEL_REQUEST_BYTES)
                {
                    let _ = kernels::MODEL_FILES.contains(&file.as_str());
                }
            }
            Target::StreamChunk => {
                if let Ok(c) = protocol::decode::<protocol::StreamChunk>(
                    bytes,
                    protocol::MAX_STREAM_CHUNK_BYTES,
                ) {
                    let _ = c.text.len() <= protocol::MAX_STREAM_TEXT_BYTES;
                }
            }
            Target::ModelReply => {
                if let Ok(ModelReply::Manifest(m)) =
                    protocol::decode::<ModelReply>(bytes, protocol::MAX_MODEL_REPLY_BYTES)
                {
                    let _ = kernels::Manifest::parse(&m);
                }
            }
        }
    }
}

/// Valid encodings of every message of `target`.
fn seeds(target: Target, key: &chain::PrivateKeySigner) -> Vec<Vec<u8>> {
    let s = protocol::samples::Samples::new(key, &CHAIN);
    match target {
        Target::Record => vec![protocol::encode(&s.record)],
        Target::Tx => vec![protocol::encode(&s.tx)],
        Target::Consensus => s.consensus().iter().map(protocol::encode).collect(),
        Target::Capability => vec![protocol::encode(&s.capability())],
        Target::JobCall => vec![protocol::encode(&s.job_call())],
        Target::JobReply => s.job_replies().iter().map(protocol::encode).collect(),
        Target::SyncRequest => vec![protocol::encode(&SyncRequest { from: 1, to: 64 })],
        Target::SyncReply => s.sync_replies().iter().map(protocol::encode).collect(),
        Target::ModelRequest => s.model_requests().iter().map(protocol::encode).collect(),
        Target::ModelReply => s.model_replies().iter().map(protocol::encode).collect(),
        Target::StreamChunk => vec![protocol::encode(&s.stream_chunk())],
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::path::Path;
    use std::time::{Duration, Instant};

    use chain::fuzzing::{Rng, mutate};

    use super::*;

    /// The corpus files kept for `target`.
    fn kept(target: Target) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target.name());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .collect()
    }

    fn budget() -> Duration {
        let ms = std::env::var("PROOFMESH_FUZZ_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        Duration::from_millis(ms)
    }

    #[test]
    fn every_network_decoder_and_its_checks_survive_mutated_input() {
        let seed = std::env::var("PROOFMESH_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| chain::types::now_ms() | 1);
        println!("PROOFMESH_FUZZ_SEED={seed}");
        let world = &fixture().1;
        let mut rng = Rng(seed);
        let mut report = Vec::new();
        assert!(
            !kept(Target::SyncRequest).is_empty(),
            "the kept corpus is read"
        );
        for target in Target::ALL {
            let mut corpus = target.seeds();
            corpus.extend(kept(target));
            let mut buffer = FutureBuffer::default();
            // Every seed as it is, first: the valid messages must pass through the checks.
            for input in &corpus {
                target.drive(input, world, &mut buffer);
            }
            let started = Instant::now();
            let mut runs = 0u64;
            while started.elapsed() < budget() {
                let a = &corpus[rng.below(corpus.len())];
                let b = &corpus[rng.below(corpus.len())];
                let input = mutate(a, b, &mut rng);
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    target.drive(&input, world, &mut buffer)
                }));
                if outcome.is_err() {
                    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-crashes");
                    let _ = std::fs::create_dir_all(&dir);
                    let file = dir.join(format!("{}-{seed}-{runs}.bin", target.name()));
                    let _ = std::fs::write(&file, &input);
                    panic!(
                        "{} panicked on {} (saved as {}): {}",
                        target.name(),
                        alloy::primitives::hex::encode(&input),
                        file.display(),
                        seed
                    );
                }
                runs += 1;
            }
            report.push(format!("{} {runs}", target.name()));
            // The buffer stayed within its bounds throughout.
            assert!(buffer.bytes() <= crate::consensus::inbox::MAX_FUTURE_BYTES);
        }
        println!("runs per target: {}", report.join(", "));
    }

    /// The entry points the libFuzzer targets in `fuzz/` call: every target is found by its
    /// name and runs its own seeds.
    #[test]
    fn public_entry_points_run_every_target() {
        for target in Target::ALL {
            assert_eq!(Target::from_name(target.name()), Some(target));
            let seeds = target.seeds();
            assert!(!seeds.is_empty(), "{}", target.name());
            for seed in &seeds {
                target.run(seed);
            }
        }
        assert_eq!(Target::from_name("nothing"), None);
    }

    /// Mutation keeps inputs near the valid ones (most still decode as far as their body), and
    /// yields every kind of edit.
    #[test]
    fn mutation_is_structure_aware() {
        let seeds = Target::Tx.seeds();
        let mut rng = Rng(7);
        let mutants: Vec<Vec<u8>> = (0..500)
            .map(|_| mutate(&seeds[0], &seeds[0], &mut rng))
            .collect();
        assert!(mutants.iter().any(|m| m.len() < seeds[0].len()));
        assert!(mutants.iter().any(|m| m.len() > seeds[0].len()));
        assert!(mutants.iter().all(|m| m.len() < seeds[0].len() * 3 + 64));
        // Most mutants keep the envelope's version bytes.
        let versioned = mutants
            .iter()
            .filter(|m| m.len() > 2 && m[..2] == seeds[0][..2])
            .count();
        assert!(versioned > 250, "{versioned}");
    }
}
