//! `stream_chunk`: the network decoder and the checks after it (`actors::fuzz`).
#![no_main]

use actors::fuzz::Target;

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("stream_chunk"), |data: &[u8]| {
    Target::StreamChunk.run(data);
});
