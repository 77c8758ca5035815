//! The actors of a proofmesh node (actix): Network (libp2p), Gateway, Inference, Attestation, Verifier,
//! Mempool, Consensus and Settlement, one per file, each owning its state and reached only by
//! messages; plus the wire protocol and the metrics they share.
//!
//! Protocol logic lives in `chain` (consensus core, ledger rules) and `kernels` (models); actors
//! are the shell that feeds it inputs and carries out its outputs.

pub mod anchor;
pub mod attestation;
pub mod batcher;
pub mod bridge;
pub mod consensus;
pub mod gateway;
pub mod hub;
pub mod inference;
pub mod mempool;
pub mod metrics;
pub mod models;
pub mod network;
pub mod protocol;
pub mod settlement;
pub mod verifier;

/// The network decoders as fuzz targets: property tests here, libFuzzer targets in `fuzz/`.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
