//! Local multi-process testnets of real `proofmesh` nodes on 127.0.0.1: genesis and keys, node
//! processes, readiness checks, an HTTP client, load generation and fault injection. Used by the
//! `proofmesh-testnet` binary and by the multi-process tests under `tests/`.

pub mod bench;
pub mod client;
pub mod economy;
pub mod evmnet;
pub mod explorer;
pub mod garbage;
pub mod net;
pub mod scenario;
pub mod txbench;

pub use net::{NodeInfo, Testnet, UpOptions};
