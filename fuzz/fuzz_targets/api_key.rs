//! `api_key`: an `Authorization: Bearer` token as any HTTP client may send it: parsed as the
//! OpenAI-compatible API parses it, then, if it parses, its grant checked as the gateway
//! checks it (signature, model list) and a job signed with its delegate key verified.
#![no_main]

libfuzzer_sys::fuzz_target!(init: proofmesh_fuzz::init("api_key"), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(key) = chain::apikey::ApiKey::parse(text) else {
        return;
    };
    let domain = proofmesh_fuzz::domain();
    let _ = key.grant.verify(&domain);
    let request = chain::JobRequest {
        client: key.grant.grant.client,
        model_id: chain::ModelId([1; 32]),
        input_hash: chain::B256::ZERO,
        max_fee: 1,
        nonce: 1,
        expiry: 1,
    };
    if let Ok(job) = request.sign_granted(&key.delegate, key.grant.clone(), &domain) {
        let _ = job.verify(&domain);
    }
});
