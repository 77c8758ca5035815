//! Chain rules of proofmesh: identifiers, EIP-712 signed job requests and transactions, inference
//! records, blocks and commit certificates, genesis, the deterministic ledger state machine, the
//! Tendermint consensus core, Merkle trees, the wire/storage codec and the RocksDB store.
//!
//! Everything here but [`store`] is plain Rust with no I/O: the `actors` crate feeds it inputs
//! and carries out its outputs.

pub mod apikey;
pub mod attestation;
pub mod block;
pub mod codec;
pub mod consensus;
pub mod error;
pub mod evidence;
pub mod fuzzing;
pub mod genesis;
pub mod merkle;
pub mod record;
pub mod signing;
pub mod state;
pub mod store;
pub mod tx;
pub mod types;

pub use block::{
    Block, BlockHeader, CommitCertificate, Proposal, SignedProposal, SignedVote, Vote, VoteKind,
};
pub use error::{Error, Result};
pub use evidence::Evidence;
pub use genesis::{Genesis, ModelEntry, Params, Pools, VerificationMode, Vesting};
pub use record::{
    Admission, AdmissionError, ApiGrant, InferenceRecord, JobRequest, Proof, Registrations,
    SignedGrant, SignedJobRequest, VerifiedRecord,
};
pub use signing::PrivateKeySigner;
pub use state::{
    Account, Built, Changes, JobEntry, JobStatus, Ledger, RecoveredRecords, Registry, Supply,
    TxOutcome,
};
pub use store::{Pending, Store, Tip};
pub use tx::{Action, ProposalKind, Tx, UnsignedTx, VoteOption};
pub use types::{Address, B256, Height, JobId, ModelId, Sig, TOTAL_SUPPLY};
