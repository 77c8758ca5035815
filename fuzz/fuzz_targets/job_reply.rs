//! `job_reply`: the network decoder and the checks after it (`actors::fuzz`).
#![no_main]

use actors::fuzz::Target;

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("job_reply"), |data: &[u8]| {
    Target::JobReply.run(data);
});
