//! `tx_json`: a transaction as `POST /v1/txs` receives it, then the mempool's checks.
#![no_main]

use actors::fuzz::Target;

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("tx_json"), |data: &[u8]| {
    if let Ok(tx) = serde_json::from_slice::<chain::Tx>(data) {
        Target::Tx.run(&actors::protocol::encode(&tx));
    }
});
