//! `gguf`: a model file as a peer may send it (the model hub checks its hash against the
//! manifest, but anyone can register the id of a hostile file): parsed and loaded as a node
//! loads a model, then, if it loads, asked for two tokens.
#![no_main]

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("gguf"), |data: &[u8]| {
    let Ok(model) = kernels::Model::from_gguf_bytes("fuzz", data.to_vec()) else {
        return;
    };
    let _ = model.tokenize("Hello, world! 123 é");
    let req = kernels::GenerateRequest {
        messages: vec![kernels::MessageJson {
            role: "user".into(),
            content: "hi".into(),
        }],
        max_tokens: 2,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        seed: 0,
        stop: Vec::new(),
        logprobs: true,
        top_logprobs: 2,
    };
    let _ = model.generate(&kernels::CpuBackend::new(), &req, &mut |_| true);
});
