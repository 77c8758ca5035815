//! The OpenAI-compatible API through real processes: a 1-validator + 1-inference testnet serving
//! SmolLM2-135M-Instruct and all-MiniLM-L6-v2. An API key made by `proofmesh key create` pays
//! for chat completions and embeddings; the ledger charges the key's account and counts the
//! key's spending; a key past its cap, expired, or signed by someone else buys nothing; errors
//! have OpenAI's shape. Then the stock `openai` Python client (scripts/fetch-openai-client; its
//! python in PROOFMESH_OPENAI_PYTHON) does the same through its own code.
//!
//! Needs the `proofmesh` binary (`cargo build --bin proofmesh`; `scripts/test` does it).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Running, balance};
use serde_json::{Value, json};
use testnet::client::Client;

/// Runs `proofmesh ARGS`, which must succeed; its JSON output.
fn proofmesh(args: &[&str]) -> Value {
    let out = Command::new(testnet::net::default_bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "proofmesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn post(client: &Client, url: &str, body: &Value, key: &str) -> testnet::client::Reply {
    let bearer = format!("Bearer {key}");
    client
        .post_with(url, body, &[("authorization", bearer.as_str())])
        .unwrap()
}

/// An OpenAI error of `status`, `type` and `code`.
fn assert_error(r: &testnet::client::Reply, status: u16, kind: &str, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"]["type"], kind, "{}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(r.body["error"].get("param").is_some(), "{}", r.body);
}

fn chat(max_tokens: u64) -> Value {
    json!({
        "model": testnet::net::SMOLLM2,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

#[test]
fn api_keys_pay_for_openai_requests() {
    let run = Running::up_with(1, 1, |o| {
        o.smollm2_dir = Some(common::smollm2_dir());
    });
    let client = Client::new();
    let net = run.net();
    let v0 = net.nodes[0].http.clone();
    let key_file = net.client_key.to_str().unwrap().to_string();
    let payer = net.client_key().unwrap().address().to_string();
    let create = |cap: &str, expires: &str, models: &[&str]| {
        let mut args = vec![
            "key",
            "create",
            "--node",
            &v0,
            "--key",
            &key_file,
            "--cap",
            cap,
            "--expires",
            expires,
        ];
        for m in models {
            args.extend(["--model", m]);
        }
        proofmesh(&args)
    };
    let made = create("1000opg", "1h", &[]);
    let key = made["api_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("pm1_"), "{made}");
    let address = |v: &Value| v.as_str().and_then(|a| a.parse::<chain::Address>().ok());
    assert_eq!(address(&made["client"]), payer.parse().ok(), "{made}");
    let grant_id = made["grant_id"].as_str().unwrap().to_string();

    // A chat completion: the answer of a local exact-mode run, with usage and proof.
    let before = balance(&client, &v0, &payer);
    let r = post(
        &client,
        &format!("{v0}/v1/chat/completions"),
        &chat(24),
        &key,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let b = &r.body;
    assert_eq!(b["object"], "chat.completion");
    assert_eq!(b["model"], testnet::net::SMOLLM2);
    assert_eq!(b["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        b["choices"][0]["message"]["content"], "The capital of France is Paris.",
        "{b}"
    );
    assert_eq!(b["choices"][0]["finish_reason"], "stop");
    let usage = &b["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 10 && completion > 3, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));
    let proof = &b["proof"];
    assert_eq!(proof["verification"], "reexec", "{proof}");
    assert_eq!(address(&proof["client"]), payer.parse().ok(), "{proof}");
    assert_eq!(proof["grant_id"], grant_id.as_str());
    assert_eq!(
        b["id"].as_str().unwrap(),
        format!("chatcmpl-{}", &proof["job_id"].as_str().unwrap()[2..])
    );
    // The same input run locally gives the committed output.
    let local = kernels::Model::load(&common::smollm2_dir()).unwrap();
    let input = json!({"messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 0, "stop": [],
        "logprobs": false});
    let want = local
        .run(&kernels::CpuBackend::new(), input.to_string().as_bytes())
        .unwrap();
    assert_eq!(
        proof["output_hash"],
        format!("0x{}", hex::encode(want.hash())),
        "{proof}"
    );
    assert_eq!(b["choices"][0]["logprobs"], Value::Null);
    let job_id = proof["job_id"].as_str().unwrap().to_string();
    let done = client
        .wait_job(&v0, &job_id, Duration::from_secs(120))
        .unwrap();
    assert_eq!(done["status"], "finalized", "{done}");
    // Priced per token: the job's prompt and completion tokens, under the bound it reserved.
    let fee: u128 = proof["fee"].as_str().unwrap().parse().unwrap();
    let max_fee: u128 = proof["max_fee"].as_str().unwrap().parse().unwrap();
    let per_job: u128 = net
        .models
        .iter()
        .find(|m| m.name == testnet::net::SMOLLM2)
        .unwrap()
        .price
        .parse()
        .unwrap();
    assert_eq!(
        proof["units"].as_u64(),
        Some(prompt + completion),
        "{proof}"
    );
    assert_eq!(
        fee,
        per_job + testnet::net::SMOLLM2_PRICE_PER_TOKEN * (prompt + completion) as u128
    );
    assert!(fee < max_fee, "{proof}");
    assert_eq!(balance(&client, &v0, &payer), before - fee);
    let grant = client.get(&format!("{v0}/v1/grants/{grant_id}")).unwrap();
    assert_eq!(grant.body["spent"], fee.to_string(), "{}", grant.body);
    let receipt = client.get(proof["receipt_url"].as_str().unwrap()).unwrap();
    assert_eq!(receipt.status, 200, "{}", receipt.body);

    // Log-probabilities: the same answer, each token with its alternatives (greedy: the
    // chosen token is the most likely one).
    let mut asked = chat(24);
    asked["logprobs"] = true.into();
    asked["top_logprobs"] = 2.into();
    let r = post(&client, &format!("{v0}/v1/chat/completions"), &asked, &key);
    assert_eq!(r.status, 200, "{}", r.body);
    let choice = &r.body["choices"][0];
    assert_eq!(
        choice["message"]["content"],
        "The capital of France is Paris."
    );
    let content = choice["logprobs"]["content"].as_array().unwrap();
    let joined: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, "The capital of France is Paris.", "{content:?}");
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["token"], t["token"]);
        assert_eq!(top[0]["logprob"], t["logprob"]);
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }

    // Streaming from the node that runs the model: server-sent chunks whose text is the
    // answer, the finish reason and proof on the last, the usage after, then [DONE]; the job
    // is the non-streamed one's (same output hash) and finalizes.
    let runner = net.inference().next().unwrap().http.clone();
    let mut streamed = chat(24);
    streamed["stream"] = true.into();
    streamed["stream_options"] = json!({"include_usage": true});
    let bearer = format!("Bearer {key}");
    let (status, kind, text) = client
        .post_text(
            &format!("{runner}/v1/chat/completions"),
            &streamed,
            &[("authorization", bearer.as_str())],
        )
        .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an event: {e:?}"))
        })
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "The capital of France is Paris.", "{text}");
    assert!(chunks.len() >= 5, "tokens arrive in several chunks: {text}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    let last = &chunks[chunks.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], "stop", "{last}");
    assert_eq!(last["proof"]["output_hash"], proof["output_hash"], "{last}");
    let usage_chunk = &chunks[chunks.len() - 1];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], b["usage"]);
    let streamed_job = last["proof"]["job_id"].as_str().unwrap();
    let done = client
        .wait_job(&v0, streamed_job, Duration::from_secs(120))
        .unwrap();
    assert_eq!(done["status"], "finalized", "{done}");
    // Through a node that does not run the model: the inference node streams the text
    // across the mesh (`/proofmesh/stream/1`) to this gateway as it generates it, so the
    // first piece arrives well before the end, and the answer is the same.
    let started = std::time::Instant::now();
    let (mut pieces, mut first, mut finished, mut routed_job) = (Vec::new(), None, None, None);
    let status = client
        .post_events(
            &format!("{v0}/v1/chat/completions"),
            &streamed,
            &[("authorization", bearer.as_str())],
            &mut |data| {
                let Ok(c) = serde_json::from_str::<Value>(data) else {
                    return;
                };
                if let Some(t) = c["choices"][0]["delta"]["content"].as_str()
                    && !t.is_empty()
                {
                    first.get_or_insert(started.elapsed());
                    pieces.push(t.to_string());
                }
                if c["choices"][0]["finish_reason"].is_string() {
                    finished = Some(started.elapsed());
                    routed_job = c["proof"]["job_id"].as_str().map(str::to_string);
                }
            },
        )
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(pieces.concat(), "The capital of France is Paris.");
    assert!(pieces.len() >= 3, "text arrives in pieces: {pieces:?}");
    let (first, finished) = (first.unwrap(), finished.unwrap());
    assert!(
        finished > first + Duration::from_millis(100),
        "first text at {first:?}, the end at {finished:?}: not streamed"
    );
    let done = client
        .wait_job(&v0, &routed_job.unwrap(), Duration::from_secs(120))
        .unwrap();
    assert_eq!(done["status"], "finalized", "{done}");

    // A streaming client that leaves after the first text: the inference node (reached
    // across the mesh) stops the decode there; the job finalizes, committing to the tokens so
    // far (validators derive that from their whole run), and is charged for those only.
    let mut long = json!({"model": testnet::net::SMOLLM2, "max_tokens": 64, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "stream": true});
    let job = leave_after_first_text(&v0, &long, &key);
    let done = client
        .wait_job(&v0, &job, Duration::from_secs(180))
        .unwrap();
    assert_eq!(done["status"], "finalized", "{done}");
    let fee: u128 = done["fee"].as_str().unwrap().parse().unwrap();
    let units = ((fee - per_job) / testnet::net::SMOLLM2_PRICE_PER_TOKEN) as u64;
    long["stream"] = false.into();
    let input = json!({"messages": long["messages"], "max_tokens": 64, "temperature": 0.0,
        "top_p": 1.0, "top_k": 0, "seed": 0, "stop": [], "logprobs": false});
    let whole = local
        .run(&kernels::CpuBackend::new(), input.to_string().as_bytes())
        .unwrap();
    let prompt = whole.completion.as_ref().unwrap().prompt_tokens.len() as u64;
    assert!(
        units > prompt && units < whole.units(0),
        "charged {units} units; the prompt is {prompt}, the whole run {}",
        whole.units(0)
    );
    assert_eq!(
        done["output_hash"],
        format!("0x{}", hex::encode(whole.cancelled_hash(units).unwrap())),
        "{done}"
    );

    // Embeddings: float and base64 carry the same f32 values.
    let texts = json!(["The cat sat on the mat.", "proofmesh"]);
    let emb = |format: &str| {
        let r = post(
            &client,
            &format!("{v0}/v1/embeddings"),
            &json!({"model": testnet::net::MINILM, "input": texts, "encoding_format": format}),
            &key,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };
    let floats = emb("float");
    let b64 = emb("base64");
    assert_eq!(floats["object"], "list");
    // Usage counts the tokens the texts became, [CLS] and [SEP] included.
    let minilm = kernels::Model::load(&common::minilm_dir()).unwrap();
    let want: usize = ["The cat sat on the mat.", "proofmesh"]
        .iter()
        .map(|t| minilm.tokenize(t).unwrap().len())
        .sum();
    assert_eq!(
        floats["usage"]["prompt_tokens"], want,
        "{}",
        floats["usage"]
    );
    assert_eq!(floats["usage"]["total_tokens"], want);
    for i in 0..2 {
        let f: Vec<f32> = floats["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64["data"][i]["embedding"].as_str().unwrap())
            .unwrap();
        let g: Vec<f32> = raw
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(f.len(), 384);
        assert_eq!(f, g);
        assert_eq!(floats["data"][i]["index"], i);
    }

    // Models: OpenAI's list shape, ours alongside; one model by name.
    let models = client.get(&format!("{v0}/v1/models")).unwrap().body;
    assert_eq!(models["object"], "list");
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            m["name"].as_str().unwrap()
        })
        .collect();
    assert!(names.contains(&testnet::net::SMOLLM2), "{models}");
    let one = client
        .get(&format!("{v0}/v1/models/{}", testnet::net::SMOLLM2))
        .unwrap();
    assert_eq!(one.body["name"], testnet::net::SMOLLM2, "{}", one.body);

    // Bad requests: clear OpenAI errors, nothing charged.
    let settled = balance(&client, &v0, &payer);
    let url = format!("{v0}/v1/chat/completions");
    let no_key = client.post(&url, &chat(4)).unwrap();
    assert_error(&no_key, 401, "authentication_error", "missing_api_key");
    // The key is checked before the body is read: a keyless garbage body is a 401, not a 400.
    let r = client
        .post_raw(&url, "application/json", b"{\"model\": ")
        .unwrap();
    assert_error(&r, 401, "authentication_error", "missing_api_key");
    assert_error(
        &post(&client, &url, &chat(4), "pm1_garbage"),
        401,
        "authentication_error",
        "invalid_api_key",
    );
    let mut bad = chat(4);
    bad["model"] = "no-such-model".into();
    assert_error(
        &post(&client, &url, &bad, &key),
        404,
        "not_found_error",
        "model_not_found",
    );
    // `dimensions` other than the model's, at a node that has seen no output of it but holds
    // it: refused before any job runs.
    let r = post(
        &client,
        &format!("{}/v1/embeddings", net.nodes[1].http),
        &json!({"model": testnet::net::MINILM, "input": "x", "dimensions": 7}),
        &key,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["param"], "dimensions", "{}", r.body);
    assert!(
        !r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("charged"),
        "{}",
        r.body
    );
    for (field, value) in [
        ("temperature", json!(2.5)),
        ("top_p", json!(0)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(100_000)),
        ("n", json!(2)),
        ("top_logprobs", json!(21)),
        ("messages", json!([])),
        ("messages", json!([{"role": "wizard", "content": "hi"}])),
    ] {
        let mut bad = chat(4);
        bad[field] = value.clone();
        let r = post(&client, &url, &bad, &key);
        assert_error(&r, 400, "invalid_request_error", "invalid_request");
        assert_eq!(
            r.body["error"]["param"], field,
            "{field}={value}: {}",
            r.body
        );
    }
    let r = client
        .post_raw_with(
            &url,
            "application/json",
            b"{\"model\": ",
            &[("authorization", bearer.as_str())],
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.body["error"]["type"], "invalid_request_error",
        "{}",
        r.body
    );
    // A model that does not generate text, asked to chat: its inference node refuses the
    // input; nothing ran, nothing is charged.
    let mut bad = chat(4);
    bad["model"] = testnet::net::MINILM.into();
    let r = post(&client, &url, &bad, &key);
    assert_error(&r, 400, "invalid_request_error", "bad_input");
    assert_eq!(r.body["error"]["param"], "messages", "{}", r.body);
    // A prompt past the model's context (8192 tokens): the inference node refuses it; an
    // input past a record's 64 KiB: the gateway does. Neither is charged.
    let mut long = chat(4);
    long["messages"][0]["content"] = "lorem ipsum dolor ".repeat(3000).into();
    let r = post(&client, &url, &long, &key);
    assert_error(&r, 400, "invalid_request_error", "bad_input");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context"),
        "{}",
        r.body
    );
    long["messages"][0]["content"] = "x".repeat(70_000).into();
    let r = post(&client, &url, &long, &key);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(balance(&client, &v0, &payer), settled);

    // A key with a cap of one job's bound: the second job is refused (402), not charged.
    let capped = create(&max_fee.to_string(), "1h", &[testnet::net::SMOLLM2]);
    let capped_key = capped["api_key"].as_str().unwrap();
    let r = post(&client, &url, &chat(24), capped_key);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(&client, &url, &chat(24), capped_key);
    assert_error(&r, 402, "insufficient_quota", "grant_exhausted");
    // A key for one model buys no other.
    let r = post(
        &client,
        &format!("{v0}/v1/embeddings"),
        &json!({"model": testnet::net::MINILM, "input": "x"}),
        capped_key,
    );
    assert_error(&r, 403, "permission_error", "model_not_allowed");
    // An expired key.
    let short = create("1opg", "1s", &[]);
    std::thread::sleep(Duration::from_millis(2100));
    let r = post(&client, &url, &chat(4), short["api_key"].as_str().unwrap());
    assert_error(&r, 401, "authentication_error", "api_key_expired");
    // A grant naming the payer but signed by another key.
    let domain = net.domain;
    let thief = chain::signing::seeded_key(99, 1);
    let mut forged =
        chain::apikey::ApiKey::create(&thief, u128::MAX, u64::MAX / 2, vec![], &domain).unwrap();
    forged.grant.grant.client = payer.parse().unwrap();
    let r = post(&client, &url, &chat(4), &forged.encode());
    assert_error(&r, 401, "authentication_error", "invalid_api_key");

    // The stock OpenAI Python client, through its own request and response code.
    let python = std::env::var("PROOFMESH_OPENAI_PYTHON").unwrap_or_else(|_| {
        panic!("PROOFMESH_OPENAI_PYTHON is unset: run scripts/fetch-openai-client and export its output (scripts/test does)")
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai/client.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("PM_BASE", &v0)
        .env("PM_STREAM_BASE", &runner)
        .env("PM_KEY", &key)
        .env("PM_CHAT_MODEL", testnet::net::SMOLLM2)
        .env("PM_EMBED_MODEL", testnet::net::MINILM)
        .env("PM_EXPECT", "The capital of France is Paris.")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openai client: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["chat"]["content"], "The capital of France is Paris.");
    assert_eq!(seen["embeddings"]["dims"], 384);
    let job = seen["chat"]["job_id"].as_str().unwrap();
    let done = client.wait_job(&v0, job, Duration::from_secs(120)).unwrap();
    assert_eq!(done["status"], "finalized", "{done}");
}

/// Sends a streamed chat request over a raw connection, reads until the first piece of text,
/// then closes the connection (a client that leaves); returns the job's id (from the chunk's
/// `chatcmpl-…` id).
fn leave_after_first_text(node: &str, body: &Value, key: &str) -> String {
    use std::io::{Read, Write};
    let addr = node.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // The role chunk's content is empty; the first piece of text is not.
    let has_text = |seen: &str| {
        seen.match_indices("\"content\":\"").any(|(at, m)| {
            seen[at + m.len()..]
                .chars()
                .next()
                .is_some_and(|c| c != '"')
        })
    };
    while !has_text(&seen) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before any text: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(s);
    let at = seen.find("chatcmpl-").unwrap() + "chatcmpl-".len();
    format!("0x{}", &seen[at..at + 64])
}
