//! The OpenAI-compatible API every node serves: `POST /v1/chat/completions`,
//! `POST /v1/embeddings`, `GET /v1/models` and `GET /v1/models/{model}` (in `http.rs`).
//!
//! A request is paid by the API key passed as its bearer token (see [`chain::apikey`]): the
//! gateway turns the request into a job input, signs the job with the key's delegate key (the
//! key holder's, not this node's), and runs it as any other job. The record carries the grant,
//! and the ledger charges the grant's client and counts the grant's spending against its cap.
//! Every answer carries a `proof` object naming the job and how it is verified; errors are
//! OpenAI's `{"error": {message, type, param, code}}`.
//!
//! Not served yet (a clear 400 says so): `n` above 1, tools, and `stream` from a node that does
//! not run the model itself.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::gateway::{GatewayError, SubmitJob};
use base64::Engine;
use chain::apikey::ApiKey;
use chain::{JobRequest, ModelId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{AppState, error_param, read_json, refusal_status, unavailable};

/// How long a job made from an API request may wait for a block (capped by the key's expiry).
const JOB_TTL_SECS: u64 = 600;

type S = web::Data<AppState>;

/// A refused request, before it becomes the OpenAI error response.
struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn response(self) -> HttpResponse {
        error_param(self.status, self.code, self.message, self.param)
    }
}

/// The API key of the request's `Authorization: Bearer` header, its grant checked against
/// this network: 401 otherwise.
fn api_key(s: &AppState, req: &HttpRequest) -> Result<ApiKey, ApiError> {
    let unauthorized = |code: &'static str, message: String| ApiError {
        status: 401,
        code,
        message,
        param: None,
    };
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing_api_key",
            "no API key: pass one as `Authorization: Bearer pm1_…` (make one with `proofmesh key create`)".into(),
        ));
    };
    let text = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            unauthorized(
                "invalid_api_key",
                "the Authorization header is not `Bearer <key>`".into(),
            )
        })?;
    let key = ApiKey::parse(text).map_err(|e| unauthorized("invalid_api_key", e.to_string()))?;
    key.grant.verify(&s.domain).map_err(|e| {
        unauthorized(
            "invalid_api_key",
            format!("the key's grant is not valid on this network: {e}"),
        )
    })?;
    let now_s = chain::types::now_ms() / 1000;
    if key.grant.grant.expiry <= now_s {
        return Err(unauthorized(
            "api_key_expired",
            format!(
                "the API key expired at {} (unix seconds; now {now_s})",
                key.grant.grant.expiry
            ),
        ));
    }
    Ok(key)
}

/// A registered, active model, by id (`0x…`) or by name: its id and registry entry (name,
/// price, verification mode), read once per request.
async fn resolve_model(
    s: &AppState,
    model: &str,
) -> Result<(ModelId, chain::state::Model), HttpResponse> {
    let state = s
        .settlement
        .send(actors::settlement::GetChainState)
        .await
        .map_err(unavailable)?;
    let not_found = |message: String| error_param(404, "model_not_found", message, Some("model"));
    let found: Vec<_> = match model.parse::<ModelId>() {
        Ok(id) => state
            .registry
            .models
            .get(&id)
            .map(|m| (id, m))
            .into_iter()
            .collect(),
        Err(_) => state
            .registry
            .models
            .iter()
            .filter(|(_, m)| m.name == model)
            .map(|(id, m)| (*id, m))
            .collect(),
    };
    match found[..] {
        [(id, m)] if m.active => Ok((id, m.clone())),
        [(id, _)] => Err(not_found(format!(
            "model {model} ({id}) is no longer active"
        ))),
        [] => Err(not_found(format!(
            "the model {model:?} does not exist on this network (see GET /v1/models)"
        ))),
        _ => Err(error_param(
            400,
            "ambiguous_model",
            format!("several models are named {model:?}: name one by its id (see GET /v1/models)"),
            Some("model"),
        )),
    }
}

/// Runs `input` on `model` as a job paid through `key` (see [`prepare_job`], [`submit_job`]).
async fn run_job(
    s: &AppState,
    key: &ApiKey,
    model: (ModelId, &chain::state::Model),
    input: String,
    input_param: &'static str,
) -> Result<actors::gateway::JobResult, HttpResponse> {
    let job = prepare_job(s, key, model, &input).map_err(ApiError::response)?;
    submit_job(s, job, input, input_param, None).await
}

/// The job that buys `input` on `model` through `key`: the job's price is the model's for
/// this input, its nonce fresh, its expiry at most the key's; signed by the key's delegate.
fn prepare_job(
    s: &AppState,
    key: &ApiKey,
    (model, entry): (ModelId, &chain::state::Model),
    input: &str,
) -> Result<chain::SignedJobRequest, ApiError> {
    if !key.grant.grant.allows(&model) {
        return Err(ApiError {
            status: 403,
            code: "model_not_allowed",
            message: format!("this API key does not cover model {model}"),
            param: Some("model"),
        });
    }
    let price = entry.price(kernels::units_bound(input.as_bytes()));
    let now_s = chain::types::now_ms() / 1000;
    let request = JobRequest {
        client: key.grant.grant.client,
        model_id: model,
        input_hash: alloy::primitives::keccak256(input.as_bytes()),
        max_fee: price,
        nonce: crate::submit::random_nonce(),
        expiry: (now_s + JOB_TTL_SECS).min(key.grant.grant.expiry),
    };
    request
        .sign_granted(&key.delegate, key.grant.clone(), &s.domain)
        .map_err(|e| ApiError {
            status: 500,
            code: "signing",
            message: e.to_string(),
            param: None,
        })
}

/// Runs a prepared job through the gateway, its text to `stream` as it is generated when
/// this node runs it. An inference node's refusal of the input is the request field
/// `input_param`'s fault.
async fn submit_job(
    s: &AppState,
    job: chain::SignedJobRequest,
    input: String,
    input_param: &'static str,
    stream: Option<actors::batcher::TextStream>,
) -> Result<actors::gateway::JobResult, HttpResponse> {
    match s.gateway.send(SubmitJob { job, input, stream }).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(GatewayError { kind, message })) => {
            let param = (kind == actors::gateway::Refusal::BadInput).then_some(input_param);
            Err(error_param(
                refusal_status(kind),
                kind.code(),
                message,
                param,
            ))
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// The `proof` object of an answer: the job, its commitments and how to check it.
fn proof(
    s: &AppState,
    req: &HttpRequest,
    r: &actors::gateway::JobResult,
    model: &chain::state::Model,
) -> Value {
    let conn = req.connection_info();
    let base = format!("{}://{}", conn.scheme(), conn.host());
    let request = &r.record.job.request;
    json!({
        "job_id": r.job_id,
        "model_id": request.model_id,
        "client": request.client,
        "input_hash": request.input_hash,
        "output_hash": r.record.output_hash,
        "executor": r.record.executor,
        "verification": model.mode,
        "proof": r.record.proof,
        "status": "executed",
        "units": r.record.units,
        "fee": model.price(r.record.units).to_string(),
        "max_fee": request.max_fee.to_string(),
        "grant_id": r.record.job.grant.as_ref().map(|g| g.grant.id(&s.domain)),
        "job_url": format!("{base}/v1/jobs/{}", r.job_id),
        "receipt_url": format!("{base}/v1/receipts/{}", r.job_id),
    })
}

fn unix_now() -> u64 {
    chain::types::now_ms() / 1000
}

/// A chat message's content: a string, or OpenAI's array of text parts.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Content>,
}

/// `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u64>,
    #[serde(default)]
    tools: Option<Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

fn bad(message: impl std::fmt::Display, param: &'static str) -> ApiError {
    ApiError {
        status: 400,
        code: "invalid_request",
        message: message.to_string(),
        param: Some(param),
    }
}

/// The job input (our generation request) of an OpenAI chat request, checked as the inference
/// node will check it, so that a request it would refuse is refused here, at no cost.
fn generation_input(c: ChatRequest) -> Result<String, ApiError> {
    if c.n.is_some_and(|n| n != 1) {
        return Err(bad("only n = 1 is served", "n"));
    }
    let logprobs = c.logprobs == Some(true);
    let top_logprobs = c.top_logprobs.unwrap_or(0);
    if top_logprobs > u64::from(kernels::MAX_TOP_LOGPROBS) || (top_logprobs > 0 && !logprobs) {
        return Err(bad(
            format!(
                "top_logprobs is {top_logprobs}; ask for 0 to {} with logprobs: true",
                kernels::MAX_TOP_LOGPROBS
            ),
            "top_logprobs",
        ));
    }
    if c.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(bad("tools are not served", "tools"));
    }
    let mut messages = Vec::with_capacity(c.messages.len());
    for (i, m) in c.messages.into_iter().enumerate() {
        // OpenAI's newer name for the system role.
        let role = if m.role == "developer" {
            "system".to_string()
        } else {
            m.role
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(bad(
                                format!(
                                    "messages[{i}]: content parts of type {kind:?} are not served; send text"
                                ),
                                "messages",
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(kernels::MessageJson { role, content });
    }
    let max_tokens = c.max_completion_tokens.or(c.max_tokens);
    let param = if c.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let stop = match c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let request = kernels::GenerateRequest {
        messages,
        max_tokens: match max_tokens {
            None => kernels::DEFAULT_MAX_TOKENS,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        },
        temperature: c.temperature.unwrap_or(1.0),
        top_p: c.top_p.unwrap_or(1.0),
        top_k: 0,
        seed: c.seed.unwrap_or(0),
        stop,
        logprobs,
        top_logprobs: top_logprobs as u32,
    };
    if let Err(e) = request.check() {
        let message = e.to_string();
        let param = ["messages", "temperature", "top_p", "stop"]
            .into_iter()
            .find(|p| message.contains(p))
            .unwrap_or(param);
        return Err(bad(message, param));
    }
    serde_json::to_string(&request).map_err(|e| ApiError {
        status: 500,
        code: "encoding",
        message: e.to_string(),
        param: None,
    })
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    s: S,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    // The key first: a request without a valid one is refused before its body is read.
    let key = match api_key(&s, &req) {
        Ok(k) => k,
        Err(e) => return e.response(),
    };
    let body: ChatRequest = match read_json(&s, &req, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (model, entry) = match resolve_model(&s, &body.model).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let (name, terms) = (entry.name.clone(), entry.clone());
    let stream = body.stream == Some(true);
    let include_usage = body
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let input = match generation_input(body) {
        Ok(i) => i,
        Err(e) => return e.response(),
    };
    if stream {
        return stream_chat(s, req, key, (model, &entry), input, include_usage).await;
    }
    let result = match run_job(&s, &key, (model, &entry), input, "messages").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let output: Value = serde_json::from_str(&result.output).unwrap_or(Value::Null);
    let Some(text) = output["text"].as_str() else {
        return error_param(
            400,
            "not_a_chat_model",
            format!(
                "model {name} does not generate text (its output has no text); use it through /v1/embeddings or /v1/jobs"
            ),
            Some("model"),
        );
    };
    let finish_reason = finish_reason(&output);
    HttpResponse::Ok().json(json!({
        "id": format!("chatcmpl-{}", hex::encode(result.job_id.0)),
        "object": "chat.completion",
        "created": unix_now(),
        "model": name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
            "logprobs": openai_logprobs(&output["logprobs"]),
        }],
        "usage": usage(&output),
        "proof": proof(&s, &req, &result, &terms),
    }))
}

/// OpenAI's `finish_reason` for a completion's output JSON ([`kernels::FinishReason::openai`]:
/// a cancelled generation reports "length", the nearest reason OpenAI has).
fn finish_reason(output: &Value) -> &'static str {
    serde_json::from_value::<kernels::FinishReason>(output["finish_reason"].clone())
        .map_or("length", kernels::FinishReason::openai)
}

/// The usage object of a completion's output JSON.
fn usage(output: &Value) -> Value {
    let prompt_tokens = output["prompt_tokens"].as_u64().unwrap_or(0);
    let completion_tokens = output["tokens"].as_array().map_or(0, |t| t.len() as u64);
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// `stream: true`: the answer as server-sent events while the inference node generates it.
/// `data: {chat.completion.chunk}` events: the first delta carries the role, each next one
/// the text generated since (complete characters, never part of a stop string), the last one
/// the `finish_reason` and the `proof`; then, with `stream_options.include_usage`, a chunk with
/// no choices and the usage; then `data: [DONE]`.
///
/// Tokens stream as the node that runs the job generates them: this node's own inference, or
/// the inference node the job is routed to, which sends its text to this gateway over
/// `/proofmesh/stream/1` before its answer. Text the stream did not carry (a piece lost on the
/// way) is sent from the answer before the last chunk. A refusal before
/// the first token is an ordinary error response; an error after it, an `error` event. A
/// client that disconnects stops the decode: the job finishes `cancelled`, committing to the
/// tokens so far, and is charged for those.
async fn stream_chat(
    s: S,
    req: HttpRequest,
    key: ApiKey,
    (model, entry): (ModelId, &chain::state::Model),
    input: String,
    include_usage: bool,
) -> HttpResponse {
    let (name, terms) = (entry.name.clone(), entry.clone());
    let job = match prepare_job(&s, &key, (model, entry), &input) {
        Ok(j) => j,
        Err(e) => return e.response(),
    };
    let id = format!("chatcmpl-{}", hex::encode(job.request.id(&s.domain).0));
    let created = unix_now();
    let (text_tx, mut text_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let app = s.clone();
    let mut running = actix_web::rt::spawn(async move {
        submit_job(&app, job, input, "messages", Some(text_tx)).await
    });
    let chunk = move |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    };
    // The first event decides: a refusal before any text is an ordinary error response.
    let mut first = Vec::new();
    let mut finished = None;
    tokio::select! {
        text = text_rx.recv() => first.extend(text),
        result = &mut running => finished = Some(result),
    }
    if let Some(result) = &finished {
        match result {
            Ok(Err(_)) | Err(_) => {
                return match finished {
                    Some(Ok(Err(response))) => response,
                    _ => error_param(500, "internal", "the job's task failed", None),
                };
            }
            Ok(Ok(_)) => {}
        }
    }
    let (events, body) = tokio::sync::mpsc::unbounded_channel::<web::Bytes>();
    let done = events.clone();
    // `false` once the client is gone (actix dropped the response body).
    let send = move |v: &Value| {
        events
            .send(web::Bytes::from(format!("data: {v}\n\n")))
            .is_ok()
    };
    let proof_base = (s.clone(), req.clone());
    actix_web::rt::spawn(async move {
        send(&chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
        let mut streamed = String::new();
        let mut reading = true;
        for text in first {
            reading &= send(&chunk(json!({"content": text}), Value::Null));
            streamed.push_str(&text);
        }
        while reading && let Some(text) = text_rx.recv().await {
            reading = send(&chunk(json!({"content": text}), Value::Null));
            streamed.push_str(&text);
        }
        // The client left: dropping the text's receiver stops the decode where it is (the
        // job commits to the tokens so far, finish `cancelled`, and is charged for those).
        drop(text_rx);
        let result = match finished {
            Some(r) => r,
            None => running.await,
        };
        match result {
            Ok(Ok(r)) => {
                let output: Value = serde_json::from_str(&r.output).unwrap_or(Value::Null);
                let proven = output["text"].as_str().unwrap_or_default();
                match proven.strip_prefix(streamed.as_str()) {
                    Some("") => {}
                    Some(rest) => {
                        send(&chunk(json!({"content": rest}), Value::Null));
                    }
                    // The node that ran it streamed text its proven output does not hold.
                    None => {
                        tracing::warn!(job = %r.job_id, executor = %r.record.executor, "streamed text differs from the proven output");
                        send(&json!({"error": {
                            "message": format!("the streamed text differs from the output job {} proves; its text is: {proven:?}", r.job_id),
                            "type": "server_error", "param": null, "code": "stream_mismatch"}}));
                        return;
                    }
                }
                let finish = finish_reason(&output);
                let mut last = chunk(json!({}), finish.into());
                last["proof"] = proof(&proof_base.0, &proof_base.1, &r, &terms);
                send(&last);
                if include_usage {
                    let mut u = chunk(json!({}), Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage(&output);
                    send(&u);
                }
                let _ = done.send(web::Bytes::from_static(b"data: [DONE]\n\n"));
            }
            Ok(Err(response)) => {
                let body = actix_web::body::to_bytes(response.into_body())
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .unwrap_or_else(|| json!({"error": {"message": "the job failed"}}));
                send(&body);
            }
            Err(e) => {
                send(
                    &json!({"error": {"message": format!("the job's task failed: {e}"),
                    "type": "server_error", "param": null, "code": "internal"}}),
                );
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(futures::stream::unfold(body, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, actix_web::Error>(b), rx))
        }))
}

/// The inference node's log-probabilities in OpenAI's shape: `{"content": [{token, logprob,
/// bytes, top_logprobs: [{token, logprob, bytes}]}]}`, `null` when not asked for. A token that
/// holds part of a character shows as replacement characters in `token`; `bytes` has it all.
fn openai_logprobs(reported: &Value) -> Value {
    let Some(list) = reported.as_array() else {
        return Value::Null;
    };
    let entry = |e: &Value| {
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u8)
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "token": String::from_utf8_lossy(&bytes),
            "logprob": e["logprob"],
            "bytes": bytes,
        })
    };
    let content: Vec<Value> = list
        .iter()
        .map(|e| {
            let mut out = entry(e);
            out["top_logprobs"] = e["top"]
                .as_array()
                .map(|t| t.iter().map(entry).collect())
                .unwrap_or_default();
            out
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// `input`: one string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    /// Token ids, or anything else: not served.
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: EmbeddingInput,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
}

/// The embedding width of each model this node has seen an output of.
fn dimensions() -> &'static std::sync::Mutex<std::collections::HashMap<ModelId, usize>> {
    static DIMS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<ModelId, usize>>> =
        std::sync::OnceLock::new();
    DIMS.get_or_init(Default::default)
}

fn known_dimensions(model: &ModelId) -> Option<usize> {
    dimensions().lock().ok()?.get(model).copied()
}

fn remember_dimensions(model: ModelId, dim: usize) {
    if let Ok(mut dims) = dimensions().lock() {
        dims.insert(model, dim);
    }
}

/// `POST /v1/embeddings`: one job embeds every input.
pub(crate) async fn embeddings(s: S, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let key = match api_key(&s, &req) {
        Ok(k) => k,
        Err(e) => return e.response(),
    };
    let body: EmbeddingRequest = match read_json(&s, &req, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return bad(
                format!("encoding_format {other:?}: use \"float\" or \"base64\""),
                "encoding_format",
            )
            .response();
        }
    };
    let texts = match body.input {
        EmbeddingInput::One(t) => vec![t],
        EmbeddingInput::Many(v) => v,
        EmbeddingInput::Other(_) => {
            return bad(
                "input must be a string or a list of strings (token ids are not served)",
                "input",
            )
            .response();
        }
    };
    if texts.is_empty() || texts.len() > kernels::MAX_ROWS {
        return bad(
            format!("{} inputs; send 1 to {}", texts.len(), kernels::MAX_ROWS),
            "input",
        )
        .response();
    }
    if let Some(i) = texts.iter().position(|t| t.len() > kernels::MAX_TEXT_BYTES) {
        return bad(
            format!(
                "input[{i}] has {} bytes, the limit is {}",
                texts[i].len(),
                kernels::MAX_TEXT_BYTES
            ),
            "input",
        )
        .response();
    }
    let (model, entry) = match resolve_model(&s, &body.model).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let (name, terms) = (entry.name.clone(), entry.clone());
    // A `dimensions` other than the model's is refused before the job runs when this node
    // holds the model (validators and inference nodes hold every registered one) or has seen
    // one of its outputs; a bare gateway that has neither learns it from the first output
    // (that job ran and is charged).
    let known = known_dimensions(&model).or_else(|| {
        let dim = s.models.get(&model)?.embedding_dim()?;
        remember_dimensions(model, dim);
        Some(dim)
    });
    if let (Some(d), Some(known)) = (body.dimensions, known)
        && d != known as u64
    {
        return bad(
            format!("model {name} has {known} dimensions; `dimensions` must be {known} or absent"),
            "dimensions",
        )
        .response();
    }
    let input = json!({ "texts": texts }).to_string();
    let result = match run_job(&s, &key, (model, &entry), input, "input").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let output: Value = serde_json::from_str(&result.output).unwrap_or(Value::Null);
    let Some(rows) = output["embeddings"].as_array() else {
        return error_param(
            400,
            "not_an_embedding_model",
            format!("model {name} does not embed text (its output has no embeddings)"),
            Some("model"),
        );
    };
    let dim = rows.first().and_then(Value::as_array).map_or(0, Vec::len);
    remember_dimensions(model, dim);
    if let Some(d) = body.dimensions
        && d != dim as u64
    {
        return bad(
            format!(
                "model {name} has {dim} dimensions; `dimensions` must be {dim} or absent (job {} ran and was charged)",
                result.job_id
            ),
            "dimensions",
        ).response();
    }
    let mut data = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let values: Vec<f32> = row
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
                    .collect()
            })
            .unwrap_or_default();
        let embedding = if base64 {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            row.clone()
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": output["input_tokens"], "total_tokens": output["input_tokens"]},
        "proof": proof(&s, &req, &result, &terms),
    }))
}
