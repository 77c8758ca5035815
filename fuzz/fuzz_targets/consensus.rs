//! `consensus`: the network decoder and the checks after it (`actors::fuzz`).
#![no_main]

use actors::fuzz::Target;

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("consensus"), |data: &[u8]| {
    Target::Consensus.run(data);
});
