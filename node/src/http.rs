//! The HTTP API every node serves (actix-web): jobs, blocks, accounts, supply, models,
//! transactions, status, Prometheus metrics and a small explorer page. Errors are
//! `{"error": {"code", "message"}}` with a fitting status.

use std::time::Duration;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use actors::gateway::{Gateway, GatewayError, KnownExecutors, PendingJob, Refusal, SubmitJob};
use actors::mempool::{
    AddTx, Admitted, Mempool, MempoolError, NextNonce, PendingRecord, TxPending,
};
use actors::network::{BlockPeer, GetPeers, Network};
use actors::settlement::{
    ChainState, GetAccount, GetBlock, GetChainState, GetJob, GetSetAt, GetSupply, GetTip, GetTx,
    Settlement,
};
use chain::{Address, JobId, JobStatus, SignedJobRequest, Tx};
use futures::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The largest request body (a job's input and signature, or a transaction), in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the handlers reach.
#[derive(Clone)]
pub struct AppState {
    pub gateway: Addr<Gateway>,
    pub settlement: Addr<Settlement>,
    pub mempool: Addr<Mempool>,
    pub network: Addr<Network>,
    pub consensus: Addr<actors::consensus::Consensus>,
    /// What signatures on this network are bound to (from the genesis).
    pub domain: chain::signing::Domain,
    pub peer_id: String,
    pub address: Address,
    pub roles: Vec<String>,
    /// The models this node's inference serves (models fetched from peers join it).
    pub served: actors::hub::Served,
    /// The model hub, on nodes that hold models (validators and inference nodes).
    pub hub: Option<Addr<actors::hub::Hub>>,
    /// The models this node holds (fetched ones join).
    pub models: actors::models::Models,
    /// How long a client may take to send a request body, from the end of its headers.
    pub body_timeout: Duration,
    /// x402 payments, when this node takes them ([evm] and a genesis with `evm`).
    pub x402: Option<std::sync::Arc<crate::x402::X402>>,
    /// The EVM RPC and settlement contract ([evm]), to name the transaction of an anchor.
    pub evm: Option<(String, Address)>,
}

type S = web::Data<AppState>;

/// The JSON error every failure returns, in OpenAI's shape (which the OpenAI-compatible
/// endpoints need and every client can read): `{"error": {"message", "type", "param",
/// "code"}}`, `type` the class of the status.
pub fn error(status: u16, code: &str, message: impl std::fmt::Display) -> HttpResponse {
    error_param(status, code, message, None)
}

/// [`error`] naming the request field at fault.
pub fn error_param(
    status: u16,
    code: &str,
    message: impl std::fmt::Display,
    param: Option<&str>,
) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        401 => "authentication_error",
        402 => "insufficient_quota",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    HttpResponse::build(status).json(json!({"error": {
        "message": message.to_string(),
        "type": kind,
        "param": param,
        "code": code,
    }}))
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> HttpResponse {
    error(
        503,
        "unavailable",
        format!("node component unavailable: {e}"),
    )
}

/// Every endpoint answers its one method; another method on it gets 405 with `Allow`, and a
/// path that is no endpoint 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/").to(explorer))
        .service(get("/metrics").to(metrics))
        .service(get("/v1/status").to(status))
        .service(post("/v1/jobs").to(submit_job))
        .service(get("/v1/jobs/{id}").to(get_job))
        .service(get("/v1/receipts/{id}").to(get_receipt))
        .service(get("/v1/blocks/{height}").to(get_block))
        .service(get("/v1/accounts/{address}").to(get_account))
        .service(get("/v1/supply").to(supply))
        .service(get("/v1/models").to(models))
        .service(get("/v1/models/{model}").to(model))
        .service(get("/v1/grants/{id}").to(get_grant))
        .service(post("/v1/chat/completions").to(crate::openai::chat_completions))
        .service(post("/v1/embeddings").to(crate::openai::embeddings))
        .service(get("/v1/validators").to(validators))
        .service(get("/v1/inference-nodes").to(inference_nodes))
        .service(get("/v1/proposals").to(proposals))
        .service(get("/v1/proposals/{id}").to(proposal))
        .service(get("/v1/params").to(params))
        .service(post("/v1/txs").to(submit_tx))
        .service(get("/v1/txs/{hash}").to(get_tx))
        .service(get("/v1/withdrawals/{hash}").to(get_withdrawal))
        .service(get("/v1/x402/supported").to(x402_supported))
        .service(get("/v1/evidence").to(evidence))
        .service(post("/v1/admin/models/{model}/fetch").to(fetch_model))
        .service(post("/v1/admin/peers/{peer}/block").to(block_peer))
        .service(post("/v1/admin/peers/{peer}/unblock").to(unblock_peer))
        .default_service(web::to(|| async {
            error(404, "not_found", "no such endpoint; see GET /v1/status")
        }));
}

/// A GET endpoint (HEAD too, as HTTP expects; actix answers it without the body).
fn get(path: &str) -> EndpointBuilder {
    EndpointBuilder::new(path, actix_web::http::Method::GET, "GET, HEAD")
}

fn post(path: &str) -> EndpointBuilder {
    EndpointBuilder::new(path, actix_web::http::Method::POST, "POST")
}

struct EndpointBuilder {
    path: String,
    method: actix_web::http::Method,
    allow: &'static str,
}

impl EndpointBuilder {
    fn new(path: &str, method: actix_web::http::Method, allow: &'static str) -> Self {
        EndpointBuilder {
            path: path.to_string(),
            method,
            allow,
        }
    }

    fn to<F, Args>(self, handler: F) -> actix_web::Resource
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        let allow = self.allow;
        let mut resource =
            web::resource(self.path).route(web::method(self.method.clone()).to(handler.clone()));
        if self.method == actix_web::http::Method::GET {
            resource = resource.route(web::head().to(handler));
        }
        resource.default_service(web::to(move |req: HttpRequest| async move {
            let mut r = error(
                405,
                "method_not_allowed",
                format!("{} {} is not served; use {allow}", req.method(), req.path()),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }))
    }
}

/// Reads and parses a JSON body: 413 when it is (or declares itself) larger than
/// [`MAX_BODY_BYTES`], before buffering past the limit; 408 when the client takes longer than
/// the body timeout to send it (a slow sender holds a connection for that long at most); 400
/// when it is not the expected JSON.
pub(crate) async fn read_json<T: DeserializeOwned>(
    s: &AppState,
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<T, HttpResponse> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(closing(too_large(), payload));
    }
    let deadline = tokio::time::Instant::now() + s.body_timeout;
    let mut body = web::BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, payload.next()).await {
            Err(_) => {
                let timeout = s.body_timeout.as_millis();
                return Err(closing(
                    error(
                        408,
                        "request_timeout",
                        format!("the request body was not received within {timeout} ms"),
                    ),
                    payload,
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(error(400, "bad_request", e)),
            Ok(Some(Ok(chunk))) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(closing(too_large(), payload));
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
    serde_json::from_slice(&body).map_err(|e| error(400, "bad_request", format!("body: {e}")))
}

fn too_large() -> HttpResponse {
    error(
        413,
        "payload_too_large",
        format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
    )
}

/// `response`, after which the connection is closed and the rest of the request body never
/// read. actix drains an unread chunked body to keep the connection (for as long as the client
/// cares to send it) unless the body is still held when the response ends: the response's
/// body holds it.
fn closing(response: HttpResponse, unread: web::Payload) -> HttpResponse {
    let (mut head, body) = response.into_parts();
    head.head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    let bytes = actix_web::body::MessageBody::try_into_bytes(body).unwrap_or_default();
    head.set_body(HoldingBody {
        bytes: Some(bytes),
        _unread: unread,
    })
    .map_into_boxed_body()
}

/// A response body that keeps the request's unread payload alive until it is sent.
struct HoldingBody {
    bytes: Option<web::Bytes>,
    _unread: web::Payload,
}

impl actix_web::body::MessageBody for HoldingBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        let n = self.bytes.as_ref().map_or(0, |b| b.len());
        actix_web::body::BodySize::Sized(n as u64)
    }

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<web::Bytes, Self::Error>>> {
        std::task::Poll::Ready(self.bytes.take().filter(|b| !b.is_empty()).map(Ok))
    }
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(actors::metrics::render())
}

async fn status(s: S) -> HttpResponse {
    let tip = match s.settlement.send(GetTip).await {
        Ok(t) => t,
        Err(e) => return unavailable(e),
    };
    let peers = s.network.send(GetPeers).await.unwrap_or_default();
    let state = match chain_state(&s).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    HttpResponse::Ok().json(json!({
        "height": tip.height,
        // The fee every transaction pays now (base units).
        "tx_fee": state.registry.params.tx_fee.to_string(),
        "tip_hash": tip.hash,
        "peer_id": s.peer_id,
        "role": s.roles.first().cloned().unwrap_or_default(),
        "roles": s.roles,
        "address": s.address,
        "peers": peers.len(),
        "chain_id": s.domain.chain_id,
        "genesis_hash": s.domain.salt,
        // The EIP-712 domain a wallet signs job requests and transactions under.
        "eip712_domain": {
            "name": "proofmesh",
            "version": "1",
            "chainId": s.domain.chain_id,
            "salt": s.domain.salt,
        },
        "served_models": s.served.list(),
    }))
}

#[derive(Deserialize)]
struct JobBody {
    job: SignedJobRequest,
    input: String,
}

async fn submit_job(s: S, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let body: Value = match read_json(&s, &req, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Without a signed native job, the job is paid by x402 (or answered 402).
    if body.get("job").is_none() {
        return crate::x402::job(&s, &req, body).await;
    }
    let body: JobBody = match serde_json::from_value(body) {
        Ok(b) => b,
        Err(e) => return error(400, "bad_request", format!("body: {e}")),
    };
    match s
        .gateway
        .send(SubmitJob {
            job: body.job,
            input: body.input,
            stream: None,
        })
        .await
    {
        Ok(result) => job_response(result),
        Err(e) => unavailable(e),
    }
}

/// The answer to an executed (or refused) job.
pub(crate) fn job_response(
    result: Result<actors::gateway::JobResult, GatewayError>,
) -> HttpResponse {
    match result {
        Ok(r) => {
            let output: Value = serde_json::from_str(&r.output).unwrap_or(Value::String(r.output));
            HttpResponse::Ok().json(json!({
                "job_id": r.job_id,
                "status": "executed",
                "output": output,
                "output_hash": r.record.output_hash,
                "units": r.record.units,
                "executed_by": r.record.executor,
                "model_id": r.record.job.request.model_id,
                "proof": r.record.proof,
            }))
        }
        Err(GatewayError { kind, message }) => error(refusal_status(kind), kind.code(), message),
    }
}

async fn x402_supported(s: S) -> HttpResponse {
    HttpResponse::Ok().json(crate::x402::supported(s.x402.as_deref()))
}

/// The HTTP status of each way a job can be refused or fail at the gateway.
pub(crate) fn refusal_status(kind: Refusal) -> u16 {
    match kind {
        Refusal::BadInputHash | Refusal::Expired | Refusal::BadInput => 400,
        Refusal::BadSignature => 401,
        Refusal::FeeTooLow | Refusal::InsufficientBalance | Refusal::GrantExhausted => 402,
        Refusal::UnknownModel => 404,
        Refusal::Duplicate | Refusal::NonceUsed => 409,
        Refusal::InputTooLarge => 413,
        Refusal::Storage => 500,
        Refusal::ExecutorFailed | Refusal::ExecutorRefused => 502,
        Refusal::Unavailable | Refusal::NoExecutor | Refusal::ExecutorBusy => 503,
    }
}

async fn get_job(s: S, path: web::Path<String>) -> HttpResponse {
    let id = match path.parse::<JobId>() {
        Ok(id) => id,
        Err(e) => return error(400, "bad_job_id", e),
    };
    match s.settlement.send(GetJob(id)).await {
        Ok(Ok(Some(e))) => {
            return HttpResponse::Ok().json(json!({
                "job_id": id,
                "status": match e.status { JobStatus::Finalized => "finalized", JobStatus::Failed => "failed" },
                "height": e.height,
                "output_hash": e.output_hash,
                "executed_by": e.executed_by,
                "client": e.client,
                "model_id": e.model_id,
                "fee": e.fee.to_string(),
                "reason": e.reason,
            }));
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => return error(500, "storage", e),
        Err(e) => return unavailable(e),
    }
    if let Ok(Some((hash, executor))) = s.mempool.send(PendingRecord(id)).await {
        return HttpResponse::Ok().json(json!({
            "job_id": id, "status": "executed", "height": null, "output_hash": hash, "executed_by": executor,
        }));
    }
    match s.gateway.send(PendingJob(id)).await {
        Ok(Some(Some((hash, executor)))) => HttpResponse::Ok().json(json!({
            "job_id": id, "status": "executed", "height": null, "output_hash": hash, "executed_by": executor,
        })),
        Ok(Some(None)) => HttpResponse::Ok().json(json!({
            "job_id": id, "status": "pending", "height": null, "output_hash": null, "executed_by": null,
        })),
        _ => error(404, "not_found", format!("job {id} is not known to this node")),
    }
}

async fn get_receipt(s: S, path: web::Path<String>) -> HttpResponse {
    let id = match path.parse::<JobId>() {
        Ok(id) => id,
        Err(e) => return error(400, "bad_job_id", e),
    };
    let entry = match s.settlement.send(GetJob(id)).await {
        Ok(Ok(Some(e))) => e,
        Ok(Ok(None)) => {
            return error(
                404,
                "not_found",
                format!("job {id} is not in a block (yet)"),
            );
        }
        Ok(Err(e)) => return error(500, "storage", e),
        Err(e) => return unavailable(e),
    };
    let (block, cert) = match s.settlement.send(GetBlock(entry.height)).await {
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => return error(500, "storage", format!("block {} missing", entry.height)),
        Ok(Err(e)) => return error(500, "storage", e),
        Err(e) => return unavailable(e),
    };
    let domain = &s.domain;
    let leaves: Vec<chain::B256> = block.records.iter().map(|r| r.leaf(domain)).collect();
    let Some(index) = block.records.iter().position(|r| r.job_id(domain) == id) else {
        return error(500, "storage", "job index names a block without the record");
    };
    let record = &block.records[index];
    let validators = match s.settlement.send(GetSetAt(entry.height)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return error(500, "storage", e),
        Err(e) => return unavailable(e),
    };
    let mut anchor = match anchor_proof(&s, entry.height, leaves[index]).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    // The EVM transaction that posted the anchor, when this node reaches the EVM and it is
    // there; the receipt does not wait for it.
    if let (Some(height), Some((url, settlement))) = (anchor["height"].as_u64(), s.evm.clone()) {
        let find = tokio::task::spawn_blocking(move || {
            let rpc = evm::Rpc::new(&url, Duration::from_secs(3));
            evm::anchor::anchor_transaction(&rpc, settlement, height)
        });
        if let Ok(Ok(Some(tx))) = find.await {
            anchor["evm_tx"] = json!(tx);
        }
    }
    HttpResponse::Ok().json(json!({
        "job_id": id,
        "status": match entry.status { JobStatus::Finalized => "finalized", JobStatus::Failed => "failed" },
        "chain_id": domain.chain_id,
        "genesis_hash": domain.salt,
        "evm_payments": domain.payments,
        "height": entry.height,
        "block_hash": block.hash(),
        "records_root": block.header.records_root,
        "leaf": leaves[index],
        "proof": chain::merkle::proof(&leaves, index).unwrap_or_default(),
        "record": {
            "model_id": record.job.request.model_id,
            "input_hash": record.job.request.input_hash,
            "output_hash": record.output_hash,
            "units": record.units,
            "executor": record.executor,
            "client": record.job.request.client,
        },
        "certificate": cert.as_ref().map(|c| json!({
            "round": c.round,
            "signers": c.votes.iter().map(|v| v.vote.validator).collect::<Vec<_>>(),
        })),
        "anchor": anchor,
        // What `proofmesh verify` checks offline: the signed record, the header, the commit
        // certificate with its signatures and the set that decided the block.
        "signed_record": record,
        "header": block.header,
        "commit": cert,
        "validators": validators,
    }))
}

/// Where the record `leaf` of block `height` is in the anchor that covers it: the anchor
/// height (the next multiple of `anchor_interval`), its records root and the leaf's Merkle
/// path to it, for the settlement contract's `verifyInference(leaf, proof, height)`; `null`
/// while that block is not committed.
async fn anchor_proof(s: &AppState, height: u64, leaf: chain::B256) -> Result<Value, HttpResponse> {
    let state = chain_state(s).await?;
    let interval = state.registry.params.anchor_interval.max(1);
    let anchor = height.div_ceil(interval) * interval;
    if anchor > state.height {
        return Ok(Value::Null);
    }
    let mut leaves = Vec::new();
    let mut root = chain::B256::ZERO;
    for h in anchor + 1 - interval..=anchor {
        let b = block_at(s, h).await?;
        leaves.extend(b.records.iter().map(|r| r.leaf(&s.domain)));
        root = b.header.anchor_records_root;
    }
    let Some(index) = leaves.iter().position(|l| *l == leaf) else {
        return Err(error(500, "storage", "the anchor's blocks lack the record"));
    };
    if chain::merkle::root(&leaves) != root {
        // The interval changed by governance within this window: not served rather than wrong.
        return Ok(Value::Null);
    }
    Ok(json!({
        "height": anchor,
        "records_root": root,
        "proof": chain::merkle::proof(&leaves, index).unwrap_or_default(),
    }))
}

async fn get_block(s: S, path: web::Path<String>) -> HttpResponse {
    let height: u64 = match path.parse() {
        Ok(h) => h,
        Err(_) => {
            return error(
                400,
                "bad_height",
                format!("{:?} is not a block height", path.as_str()),
            );
        }
    };
    let domain = &s.domain;
    match s.settlement.send(GetBlock(height)).await {
        Ok(Ok(Some((b, cert)))) => HttpResponse::Ok().json(json!({
            "height": b.header.height,
            "hash": b.hash(),
            "parent": b.header.parent,
            "proposer": b.header.proposer,
            "timestamp_ms": b.header.timestamp_ms,
            "records_root": b.header.records_root,
            "txs_root": b.header.txs_root,
            "state_root": b.header.state_root,
            "last_commit_hash": b.header.last_commit_hash,
            "next_validators_hash": b.header.next_validators_hash,
            "anchor_records_root": b.header.anchor_records_root,
            "anchor_withdrawals_root": b.header.anchor_withdrawals_root,
            "records": b.records.iter().map(|r| json!({
                "job_id": r.job_id(domain),
                "model_id": r.job.request.model_id,
                "client": r.job.request.client,
                "executor": r.executor,
                "output_hash": r.output_hash,
                "units": r.units,
            })).collect::<Vec<_>>(),
            "txs": b.txs,
            "certificate": cert.map(|c| json!({
                "round": c.round,
                "signers": c.votes.iter().map(|v| v.vote.validator).collect::<Vec<_>>(),
            })),
        })),
        Ok(Ok(None)) => error(404, "not_found", format!("no block at height {height}")),
        Ok(Err(e)) => error(500, "storage", e),
        Err(e) => unavailable(e),
    }
}

async fn get_account(s: S, path: web::Path<String>) -> HttpResponse {
    let address: Address = match path.parse() {
        Ok(a) => a,
        Err(_) => {
            return error(
                400,
                "bad_address",
                format!("{:?} is not a 0x-prefixed 20-byte address", path.as_str()),
            );
        }
    };
    // The nonce the next transaction must carry: after this node's pending ones. The mempool is
    // asked before the ledger: the settlement applies a block before the mempool forgets what
    // it included, so in this order a block committing between the two reads is seen by one
    // of them (the other order could answer a nonce that block just spent).
    let pending_next = match s.mempool.send(NextNonce(address)).await {
        Ok(n) => n,
        Err(e) => return unavailable(e),
    };
    let account = match s.settlement.send(GetAccount(address)).await {
        Ok(a) => a,
        Err(e) => return unavailable(e),
    };
    let tip = match s.settlement.send(GetTip).await {
        Ok(t) => t,
        Err(e) => return unavailable(e),
    };
    let next = pending_next.unwrap_or(account.nonce).max(account.nonce);
    let now = tip.timestamp_ms;
    HttpResponse::Ok().json(json!({
        "address": address,
        "balance": account.balance.to_string(),
        "spendable": account.spendable(now).to_string(),
        "locked": account.locked_in_balance(now).to_string(),
        "vested": account.vesting.map(|v| v.vested(now).to_string()),
        "vesting": account.vesting,
        "bonded": account.bonded.to_string(),
        "unbonding": account.unbonding,
        "nonce": account.nonce,
        "next_nonce": next,
        "height": tip.height,
    }))
}

async fn supply(s: S) -> HttpResponse {
    match s.settlement.send(GetSupply).await {
        Ok(supply) => HttpResponse::Ok().json(json!({
            "total": supply.total.to_string(),
            "genesis": chain::TOTAL_SUPPLY.to_string(),
            "exact": supply.total == chain::TOTAL_SUPPLY,
            "balances": supply.balances.to_string(),
            "locked": supply.locked.to_string(),
            "bonded": supply.bonded.to_string(),
            "unbonding": supply.unbonding.to_string(),
            "pools": supply.pools,
            // What circulates here rather than on the EVM: the total less the bridge reserve.
            "circulating": supply.total.saturating_sub(supply.pools.bridge_reserve).to_string(),
        })),
        Err(e) => unavailable(e),
    }
}

async fn chain_state(s: &AppState) -> Result<ChainState, HttpResponse> {
    s.settlement.send(GetChainState).await.map_err(unavailable)
}

/// A registered model in OpenAI's model shape (`id`, `object`, `created`, `owned_by`), with
/// ours alongside: name, prices, verification mode, whether it is active and who serves it.
/// `id` is the model id, which the API takes as `model` (so does the name).
async fn model_entry(s: &AppState, id: &chain::ModelId, m: &chain::state::Model) -> Value {
    let executors = s.gateway.send(KnownExecutors(*id)).await.unwrap_or(0);
    json!({
        "id": id, "object": "model", "created": 0, "owned_by": m.owner,
        "name": m.name, "owner": m.owner,
        "price_per_job": m.price_per_job.to_string(),
        "price_per_unit": m.price_per_unit.to_string(),
        "mode": m.mode, "active": m.active,
        "served_here": s.served.contains(id), "executors": executors,
    })
}

/// The registered models, from the chain's state, as OpenAI's list.
async fn models(s: S) -> HttpResponse {
    let state = match chain_state(&s).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut list: Vec<Value> = Vec::new();
    for (id, m) in &state.registry.models {
        list.push(model_entry(&s, id, m).await);
    }
    HttpResponse::Ok().json(json!({"object": "list", "data": list, "height": state.height}))
}

/// What an API grant (`grant_id` of `proofmesh key create`) has spent, in settled jobs.
async fn get_grant(s: S, path: web::Path<String>) -> HttpResponse {
    let id = match path.parse::<chain::B256>() {
        Ok(id) => id,
        Err(e) => return error(400, "bad_grant_id", format!("{path}: {e}")),
    };
    match s.settlement.send(actors::settlement::GrantSpent(id)).await {
        Ok(spent) => HttpResponse::Ok().json(json!({"grant_id": id, "spent": spent.to_string()})),
        Err(e) => unavailable(e),
    }
}

/// The registered model `wanted` names, by id (`0x…`) or by name.
fn registered_model<'a>(
    state: &'a ChainState,
    wanted: &str,
) -> Option<(&'a chain::ModelId, &'a chain::state::Model)> {
    let by_id = wanted.parse::<chain::ModelId>().ok();
    state
        .registry
        .models
        .iter()
        .find(|(id, m)| Some(**id) == by_id || m.name == wanted)
}

/// One registered model, by id or name.
async fn model(s: S, path: web::Path<String>) -> HttpResponse {
    let state = match chain_state(&s).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let wanted = path.into_inner();
    match registered_model(&state, &wanted) {
        Some((id, m)) => HttpResponse::Ok().json(model_entry(&s, id, m).await),
        None => error_param(
            404,
            "model_not_found",
            format!("the model {wanted:?} does not exist on this network"),
            Some("model"),
        ),
    }
}

async fn validators(s: S) -> HttpResponse {
    let state = match chain_state(&s).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let r = &state.registry;
    let list: Vec<Value> = r
        .validators
        .iter()
        .map(|(a, v)| {
            let power = r.set.iter().find(|(x, _)| x == a).map(|(_, p)| *p);
            json!({
                "address": a, "peer_id": v.peer_id, "moniker": v.moniker,
                "bonded": state.bonded.get(a).copied().unwrap_or(0).to_string(),
                "active": power.is_some(), "power": power.unwrap_or(0),
                "jailed_until": v.jailed_until, "slashes": v.slashes,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "height": state.height,
        "set_since": r.set_since,
        "total_power": r.set.iter().map(|(_, p)| *p).sum::<u64>(),
        "validators": list,
    }))
}

async fn inference_nodes(s: S) -> HttpResponse {
    let state = match chain_state(&s).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let r = &state.registry;
    let list: Vec<Value> = r
        .nodes
        .iter()
        .map(|(a, n)| {
            let bonded = state.bonded.get(a).copied().unwrap_or(0);
            json!({
                "address": a, "peer_id": n.peer_id, "models": n.models, "tee_chip": n.tee_chip,
                "bonded": bonded.to_string(),
                "serving": n.jailed_until.is_none() && bonded >= r.params.min_inference_stake,
                "jailed_until": n.jailed_until, "slashes": n.slashes,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"height": state.height, "inference_nodes": list}))
}

async fn proposals(s: S) -> HttpResponse {
    let state = match chain_state(&s).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let list: Vec<&chain::state::Proposal> = state.registry.proposals.values().rev().collect();
    HttpResponse::Ok().json(json!({"height": state.height, "proposals": list}))
}

async fn proposal(s: S, path: web::Path<String>) -> HttpResponse {
    let Ok(id) = path.parse::<u64>() else {
        return error(
            400,
            "bad_proposal_id",
            format!("{:?} is not a proposal number", path.as_str()),
        );
    };
    let state = match chain_state(&s).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match state.registry.proposals.get(&id) {
        Some(p) => HttpResponse::Ok().json(p),
        None => error(404, "not_found", format!("no proposal {id}")),
    }
}

async fn params(s: S) -> HttpResponse {
    match chain_state(&s).await {
        Ok(c) => HttpResponse::Ok().json(json!({
            "height": c.height,
            "params": c.registry.params,
            "tee_measurements": c.registry.measurements,
        })),
        Err(r) => r,
    }
}

/// A transaction's status: `included` (with its height, whether its action applied, why not,
/// and the fee it paid), `pending` here, or `queued` here (waiting for an earlier nonce); 404 when this node knows nothing of it.
async fn get_tx(s: S, path: web::Path<String>) -> HttpResponse {
    let Ok(hash) = path.parse::<chain::B256>() else {
        return error(
            400,
            "bad_hash",
            format!("{:?} is not 0x + 64 hex digits", path.as_str()),
        );
    };
    match s.settlement.send(GetTx(hash)).await {
        Ok(Ok(Some((height, t)))) => HttpResponse::Ok().json(json!({
            "hash": hash, "status": "included", "height": height, "ok": t.ok,
            "reason": t.reason, "fee": t.fee.to_string(),
        })),
        Ok(Ok(None)) => match s.mempool.send(TxPending(hash)).await {
            Ok(Some(status)) => HttpResponse::Ok().json(json!({"hash": hash, "status": status})),
            Ok(None) => error(404, "not_found", format!("no transaction {hash} here")),
            Err(e) => unavailable(e),
        },
        Ok(Err(e)) => error(500, "storage", e),
        Err(e) => unavailable(e),
    }
}

/// A bridge withdrawal (a committed `bridge_withdraw` transaction) with what
/// `Settlement.withdraw` needs: recipient, amount, the anchor height covering its block, the
/// withdrawals root there and the leaf's Merkle path to it. `anchor_height` is `null` while
/// the anchor's block is not committed.
async fn get_withdrawal(s: S, path: web::Path<String>) -> HttpResponse {
    let Ok(hash) = path.parse::<chain::B256>() else {
        return error(
            400,
            "bad_hash",
            format!("{:?} is not 0x + 64 hex digits", path.as_str()),
        );
    };
    let (height, outcome) = match s.settlement.send(GetTx(hash)).await {
        Ok(Ok(Some(t))) => t,
        Ok(Ok(None)) => {
            return error(
                404,
                "not_found",
                format!("transaction {hash} is not in a block (yet)"),
            );
        }
        Ok(Err(e)) => return error(500, "storage", e),
        Err(e) => return unavailable(e),
    };
    let block = match block_at(&s, height).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some((recipient, amount)) = block
        .txs
        .iter()
        .find(|t| t.hash(&s.domain) == hash)
        .and_then(|t| match t.action {
            chain::Action::BridgeWithdraw { recipient, amount } => Some((recipient, amount)),
            _ => None,
        })
    else {
        return error(
            400,
            "not_a_withdrawal",
            format!("transaction {hash} is not a bridge_withdraw"),
        );
    };
    if !outcome.ok {
        return error(
            409,
            "withdrawal_failed",
            format!(
                "withdrawal {hash} failed in block {height}: {}",
                outcome.reason.unwrap_or_default()
            ),
        );
    }
    let leaf = chain::state::withdrawal_leaf(hash, recipient, amount);
    let mut body = json!({
        "id": hash,
        "height": height,
        "recipient": recipient,
        "amount": amount.to_string(),
        "leaf": leaf,
        "anchor_height": null,
    });
    match withdrawal_proof(&s, height, leaf).await {
        Ok(Some((anchor, root, proof))) => {
            body["anchor_height"] = json!(anchor);
            body["withdrawals_root"] = json!(root);
            body["proof"] = json!(proof);
        }
        Ok(None) => {}
        Err(r) => return r,
    }
    HttpResponse::Ok().json(body)
}

async fn block_at(s: &AppState, height: u64) -> Result<chain::Block, HttpResponse> {
    match s.settlement.send(GetBlock(height)).await {
        Ok(Ok(Some((b, _)))) => Ok(b),
        Ok(Ok(None)) => Err(error(500, "storage", format!("block {height} missing"))),
        Ok(Err(e)) => Err(error(500, "storage", e)),
        Err(e) => Err(unavailable(e)),
    }
}

/// The anchor covering block `height`, its withdrawals root and `leaf`'s path to it: the
/// successful withdrawals of the anchor's blocks, in order; `None` while the anchor's block
/// is not committed.
async fn withdrawal_proof(
    s: &AppState,
    height: u64,
    leaf: chain::B256,
) -> Result<Option<(u64, chain::B256, Vec<chain::B256>)>, HttpResponse> {
    let state = chain_state(s).await?;
    let interval = state.registry.params.anchor_interval.max(1);
    let anchor = height.div_ceil(interval) * interval;
    if anchor > state.height {
        return Ok(None);
    }
    let mut leaves = Vec::new();
    let mut root = chain::B256::ZERO;
    for h in anchor + 1 - interval..=anchor {
        let b = block_at(s, h).await?;
        for t in &b.txs {
            let chain::Action::BridgeWithdraw { recipient, amount } = t.action else {
                continue;
            };
            let id = t.hash(&s.domain);
            match s.settlement.send(GetTx(id)).await {
                Ok(Ok(Some((_, o)))) if o.ok => {
                    leaves.push(chain::state::withdrawal_leaf(id, recipient, amount))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(error(500, "storage", e)),
                Err(e) => return Err(unavailable(e)),
            }
        }
        root = b.header.anchor_withdrawals_root;
    }
    let Some(index) = leaves.iter().position(|l| *l == leaf) else {
        return Err(error(
            500,
            "storage",
            "the anchor's blocks lack the withdrawal",
        ));
    };
    if chain::merkle::root(&leaves) != root {
        // The interval changed by governance within this window: not served rather than wrong.
        return Ok(None);
    }
    Ok(Some((
        anchor,
        root,
        chain::merkle::proof(&leaves, index).unwrap_or_default(),
    )))
}

async fn submit_tx(s: S, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let tx: Tx = match read_json(&s, &req, payload).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // The mempool admits only what applies on the committed state plus the sender's pending
    // transactions, so nothing is accepted here that a block would refuse; it gossips what it
    // admits.
    match s.mempool.send(AddTx(tx)).await {
        Ok(Ok((hash, Admitted::Pending))) => {
            HttpResponse::Ok().json(json!({"hash": hash, "status": "pending"}))
        }
        // Ahead of the sender's next nonce: it waits (bounded in number and time) for the
        // missing ones.
        Ok(Ok((hash, Admitted::Queued { next }))) => HttpResponse::Accepted().json(json!({
            "hash": hash, "status": "queued", "waiting_for_nonce": next,
        })),
        Ok(Err(e)) => {
            let status = match &e {
                MempoolError::InsufficientBalance { .. } => 402,
                MempoolError::NonceUsed { .. } => 409,
                MempoolError::Full | MempoolError::SenderFull { .. } => 429,
                MempoolError::Unavailable(_) => 503,
                MempoolError::BadSignature(_)
                | MempoolError::ZeroAmount
                | MempoolError::WouldFail(_)
                | MempoolError::FalseFraudClaim(_)
                | MempoolError::FalseDeposit(_)
                | MempoolError::NonceGap { .. } => 400,
            };
            error(status, e.label(), e)
        }
        Err(e) => unavailable(e),
    }
}

async fn block_peer(s: S, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    set_blocked(&s, &req, &path, true).await
}

async fn unblock_peer(s: S, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    set_blocked(&s, &req, &path, false).await
}

/// Operator only (the request must come from this machine): fetches a model (by id, or by
/// its registered name) from the peers that provide it, checks every file against the id's
/// manifest, loads it and serves it; answers once it is held (or at once if it was).
async fn fetch_model(s: S, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    if !req.peer_addr().is_some_and(|a| a.ip().is_loopback()) {
        return error(
            403,
            "forbidden",
            "admin endpoints answer only on this machine",
        );
    }
    let Some(hub) = s.hub.clone() else {
        return error(
            409,
            "no_models",
            "this node holds no models (neither validator nor inference)",
        );
    };
    let state = match chain_state(&s).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let wanted = path.into_inner();
    let by_id = wanted.parse::<chain::ModelId>().ok();
    let (id, name) = match (registered_model(&state, &wanted), by_id) {
        (Some((id, m)), _) => (*id, Some(m.name.clone())),
        // Not registered (yet): fetched by id all the same, named by it.
        (None, Some(id)) => (id, None),
        (None, None) => {
            return error_param(
                404,
                "model_not_found",
                format!("no model is registered as {wanted:?}; name one by its id (0x…)"),
                Some("model"),
            );
        }
    };
    match hub.send(actors::hub::FetchModel { id, name }).await {
        Ok(Ok(f)) => HttpResponse::Ok().json(json!({
            "model_id": f.id,
            "already_held": f.already,
            "bytes": f.bytes,
            "seconds": f.seconds,
            "providers": f.providers,
            "rejected_parts": f.rejected,
            "path": f.path,
            "served_here": s.served.contains(&id),
        })),
        Ok(Err(e @ actors::hub::HubError::InProgress(_))) => error(409, "in_progress", e),
        Ok(Err(e @ actors::hub::HubError::NoProviders(_))) => error(404, "no_providers", e),
        Ok(Err(e)) => error(502, "fetch_failed", e),
        Err(e) => unavailable(e),
    }
}

/// Operator only (the request must come from this machine): blocks or unblocks a peer.
async fn set_blocked(s: &AppState, req: &HttpRequest, peer: &str, blocked: bool) -> HttpResponse {
    if !req.peer_addr().is_some_and(|a| a.ip().is_loopback()) {
        return error(
            403,
            "forbidden",
            "admin endpoints answer only on this machine",
        );
    }
    let peer: libp2p::PeerId = match peer.parse() {
        Ok(p) => p,
        Err(e) => return error(400, "bad_peer_id", format!("{peer:?}: {e}")),
    };
    match s.network.send(BlockPeer { peer, blocked }).await {
        Ok(Ok(())) => {
            HttpResponse::Ok().json(json!({"peer": peer.to_string(), "blocked": blocked}))
        }
        Ok(Err(e)) => unavailable(e),
        Err(e) => unavailable(e),
    }
}

/// Equivocation evidence this node has stored: who, where, what, and the signed pair.
async fn evidence(s: S) -> HttpResponse {
    match s.consensus.send(actors::consensus::GetEvidence).await {
        Ok(Ok(list)) => {
            let items: Vec<Value> = list
                .iter()
                .map(|e| {
                    json!({
                        "id": e.id(),
                        "offender": e.offender(),
                        "height": e.height(),
                        "kind": match e {
                            chain::Evidence::DoubleVote { .. } => "double_vote",
                            chain::Evidence::DoubleProposal { .. } => "double_proposal",
                        },
                        "evidence": e,
                    })
                })
                .collect();
            HttpResponse::Ok().json(json!({ "evidence": items }))
        }
        Ok(Err(e)) => error(500, "storage", e),
        Err(e) => unavailable(e),
    }
}

async fn explorer() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(EXPLORER)
}

const EXPLORER: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>proofmesh explorer</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}td,th{padding:2px 10px;text-align:left}
code{font-size:12px}h1{font-size:20px}h2{font-size:16px;margin-top:1.5em}.r{text-align:right}</style></head>
<body><h1>proofmesh node</h1><div id="status">loading…</div><div id="supply"></div>
<h2>Validators</h2>
<table><thead><tr><th>moniker</th><th>address</th><th class="r">bonded OPG</th><th class="r">power</th><th>active</th><th>jailed until</th><th class="r">slashes</th></tr></thead><tbody id="validators"></tbody></table>
<h2>Inference nodes</h2>
<table><thead><tr><th>address</th><th>peer</th><th class="r">bonded OPG</th><th>serving</th><th>jailed until</th><th class="r">slashes</th><th class="r">models</th></tr></thead><tbody id="inference"></tbody></table>
<h2>Proposals</h2>
<table><thead><tr><th>id</th><th>kind</th><th>status</th><th>voting ends</th><th class="r">votes</th></tr></thead><tbody id="proposals"></tbody></table>
<h2>Equivocations seen</h2>
<table><thead><tr><th>offender</th><th>height</th><th>kind</th></tr></thead><tbody id="evidence"></tbody></table>
<h2>Latest blocks</h2>
<table><thead><tr><th>height</th><th>hash</th><th>proposer</th><th>records</th><th>txs</th></tr></thead><tbody id="blocks"></tbody></table>
<script>
const opg=s=>(BigInt(s)/10n**18n).toLocaleString();
const esc=s=>String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
async function refresh(){
 const s=await (await fetch('/v1/status')).json();
 document.getElementById('status').innerHTML=`height <b>${s.height}</b> · peers ${s.peers} · roles ${s.roles.join(', ')} · chain ${s.chain_id} · fee ${esc(s.tx_fee)}<br><code>${s.peer_id}</code>`;
 const sup=await (await fetch('/v1/supply')).json();
 document.getElementById('supply').innerHTML=`supply ${sup.exact?'exact':'<b>NOT EXACT</b>'}: balances ${opg(sup.balances)} · locked ${opg(sup.locked)} · bonded ${opg(sup.bonded)} · unbonding ${opg(sup.unbonding)} · rewards pool ${opg(sup.pools.rewards)} · community pool ${opg(sup.pools.community)} OPG`;
 const v=await (await fetch('/v1/validators')).json();
 document.getElementById('validators').innerHTML=v.validators.map(x=>`<tr><td>${esc(x.moniker)}</td><td><code>${x.address.slice(0,12)}…</code></td><td class="r">${opg(x.bonded)}</td><td class="r">${x.power}</td><td>${x.active?'yes':''}</td><td>${x.jailed_until??''}</td><td class="r">${x.slashes}</td></tr>`).join('');
 const n=await (await fetch('/v1/inference-nodes')).json();
 document.getElementById('inference').innerHTML=n.inference_nodes.map(x=>`<tr><td><code>${x.address.slice(0,12)}…</code></td><td><code>${esc(x.peer_id.slice(0,16))}…</code></td><td class="r">${opg(x.bonded)}</td><td>${x.serving?'yes':''}</td><td>${x.jailed_until??''}</td><td class="r">${x.slashes}</td><td class="r">${x.models.length}</td></tr>`).join('');
 const p=await (await fetch('/v1/proposals')).json();
 document.getElementById('proposals').innerHTML=p.proposals.slice(0,10).map(x=>`<tr><td>${x.id}</td><td>${esc(Object.keys(x.kind)[0])}</td><td>${esc(typeof x.status==='string'?x.status:'failed')}</td><td>${x.voting_end}</td><td class="r">${Object.keys(x.votes).length}</td></tr>`).join('');
 const e=await (await fetch('/v1/evidence')).json();
 document.getElementById('evidence').innerHTML=e.evidence.slice(0,10).map(x=>`<tr><td><code>${x.offender.slice(0,12)}…</code></td><td>${x.height}</td><td>${x.kind}</td></tr>`).join('');
 let rows='';
 for(let h=s.height;h>0&&h>s.height-15;h--){
  const b=await (await fetch('/v1/blocks/'+h)).json();
  rows+=`<tr><td>${b.height}</td><td><code>${b.hash.slice(0,18)}…</code></td><td><code>${b.proposer.slice(0,10)}…</code></td><td>${b.records.length}</td><td>${b.txs.length}</td></tr>`;
 }
 document.getElementById('blocks').innerHTML=rows;
}
globalThis.explorerLoaded=refresh();setInterval(refresh,2000);
</script></body></html>"#;

#[cfg(test)]
mod tests {
    use super::*;
    use chain::fuzzing::{Rng, mutate};

    /// Each gateway refusal has its own code and a client (4xx) or server (5xx) status as the
    /// README documents: a client error is never blamed on the node, nor the reverse.
    #[test]
    fn refusals_map_to_documented_statuses() {
        use actors::gateway::Refusal::*;
        let all = [
            (InputTooLarge, 413),
            (BadInputHash, 400),
            (BadSignature, 401),
            (UnknownModel, 404),
            (Expired, 400),
            (FeeTooLow, 402),
            (Duplicate, 409),
            (NonceUsed, 409),
            (InsufficientBalance, 402),
            (Storage, 500),
            (Unavailable, 503),
            (NoExecutor, 503),
            (ExecutorBusy, 503),
            (ExecutorFailed, 502),
            (ExecutorRefused, 502),
            (BadInput, 400),
            (GrantExhausted, 402),
        ];
        let codes: std::collections::HashSet<&str> = all.iter().map(|(k, _)| k.code()).collect();
        assert_eq!(codes.len(), all.len());
        for (kind, status) in all {
            assert_eq!(refusal_status(kind), status, "{kind:?}");
        }
    }

    /// The JSON bodies the API reads (a transaction, a job), mutated: parsed or refused,
    /// never a panic; the unmutated ones parse.
    #[test]
    fn mutated_json_bodies_parse_or_fail_cleanly() {
        let key = chain::signing::seeded_key(3, 1);
        let domain = chain::signing::Domain {
            chain_id: 9,
            salt: chain::B256::ZERO,
            payments: None,
        };
        let tx = chain::UnsignedTx {
            from: key.address(),
            nonce: 0,
            max_fee: 1,
            action: chain::Action::Transfer {
                to: Address::repeat_byte(2),
                amount: 5,
            },
        }
        .sign(&key, &domain)
        .unwrap();
        let job = chain::JobRequest {
            client: key.address(),
            model_id: kernels::ModelId([1; 32]),
            input_hash: alloy::primitives::keccak256(b"{}"),
            max_fee: 1,
            nonce: 1,
            expiry: 2_000_000_000,
        }
        .sign(&key, &domain)
        .unwrap();
        let tx_json = serde_json::to_vec(&tx).unwrap();
        let job_json = serde_json::to_vec(&json!({"job": job, "input": "{}"})).unwrap();
        assert!(serde_json::from_slice::<Tx>(&tx_json).is_ok());
        assert!(serde_json::from_slice::<JobBody>(&job_json).is_ok());
        let mut rng = Rng(0x004a_504e);
        for _ in 0..2000 {
            let t = mutate(&tx_json, &job_json, &mut rng);
            let _ = serde_json::from_slice::<Tx>(&t);
            let j = mutate(&job_json, &tx_json, &mut rng);
            let _ = serde_json::from_slice::<JobBody>(&j);
        }
    }
}
