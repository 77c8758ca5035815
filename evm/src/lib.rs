//! proofmesh's EVM side: a JSON-RPC client, transactions signed with alloy from one key with
//! one nonce counter, and the calls of `chain/contracts` (OPG, Settlement).

pub mod anchor;
pub mod artifacts;
pub mod bridge;
pub mod contracts;
pub mod rpc;
pub mod wallet;
pub mod x402;

pub use rpc::{Rpc, RpcError};
pub use wallet::{Receipt, SendError, Wallet};
