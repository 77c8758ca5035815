//! `tx`: the network decoder and the checks after it (`actors::fuzz`).
#![no_main]

use actors::fuzz::Target;

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("tx"), |data: &[u8]| {
    if let Some(target) = Target::from_name("tx") {
        target.run(data);
    }
});
