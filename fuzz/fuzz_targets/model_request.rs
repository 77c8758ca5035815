//! `model_request`: the network decoder and the checks after it (`actors::fuzz`).
#![no_main]

use actors::fuzz::Target;

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("model_request"), |data: &[u8]| {
    Target::ModelRequest.run(data);
});
