//! `model_reply`: the network decoder and the checks after it (`actors::fuzz`).
#![no_main]

use actors::fuzz::Target;

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("model_reply"), |data: &[u8]| {
    Target::ModelReply.run(data);
});
