//! x402 on `POST /v1/jobs`: a job request without a signed native job (`{"model": ID or
//! name, "input": ...}`) is answered `402` with `PAYMENT-REQUIRED`; retried with
//! `PAYMENT-SIGNATURE` (or v1 `X-PAYMENT`), the payment is checked ([`evm::x402::job_of`]: the
//! signature also authorizes the job), settled on the bridge from this node's EVM wallet (the
//! one the Anchor actor uses: one nonce counter per key), credited by the validators to the
//! payer's native account, and the job runs as any other, charged from that account; the
//! answer carries `PAYMENT-RESPONSE` (v1 `X-PAYMENT-RESPONSE`).
//!
//! A settlement that outlives its call (RPC timeout, node restart, client retry) is recovered
//! from the authorization's state on OPG: a used authorization whose job has not run is taken
//! as settled and the job runs once the credit arrives (the job is charged natively, so it
//! never runs unpaid); a used authorization whose job ran is a replay and refused. The
//! authorization's nonce is the job id, so it pays at most once and the job runs at most once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse};
use actors::gateway::SubmitJob;
use actors::settlement::{GetAccount, GetChainState, GetJob};
use chain::signing::EvmPayments;
use chain::{Address, ModelId, PrivateKeySigner};
use evm::x402::{Offer, Payment, X402Error};
use serde_json::{Value, json};

use crate::http::{AppState, error, job_response, unavailable};

/// What a node needs to take x402 payments.
pub struct X402 {
    pub payments: EvmPayments,
    pub rpc_url: String,
    pub rpc_timeout: Duration,
    pub key: PrivateKeySigner,
    /// Shared with the Anchor actor: one nonce counter for this key.
    pub wallet: Arc<Mutex<Option<evm::Wallet>>>,
    /// How long a settled payment may take to be credited before the request gives up (the
    /// client retries with the same payment to run the job).
    pub credit_timeout: Duration,
    /// `maxTimeoutSeconds` offered.
    pub max_timeout_seconds: u64,
}

/// The x402 header a request paid with, and the header to answer in.
fn payment_header(req: &HttpRequest) -> Option<(String, &'static str)> {
    let get = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    get("payment-signature")
        .map(|h| (h, "PAYMENT-RESPONSE"))
        .or_else(|| get("x-payment").map(|h| (h, "X-PAYMENT-RESPONSE")))
}

/// `r` with the x402 header `name` carrying `value` (base64 JSON).
fn with_header(mut r: HttpResponse, name: &'static str, value: &Value) -> HttpResponse {
    use actix_web::http::header::{HeaderName, HeaderValue};
    if let Ok(v) = HeaderValue::from_str(&evm::x402::encode_header(value)) {
        r.headers_mut().insert(HeaderName::from_static(name), v);
    }
    r
}

fn paid_error(offer: &Offer, e: &X402Error) -> HttpResponse {
    let required = offer.payment_required(2, e.code);
    with_header(error(402, e.code, &e.reason), "payment-required", &required)
}

fn now_s() -> u64 {
    chain::types::now_ms() / 1000
}

/// `POST /v1/jobs` with an x402 body.
pub async fn job(s: &AppState, req: &HttpRequest, body: Value) -> HttpResponse {
    let Some(x) = s.x402.clone() else {
        return error(
            400,
            "bad_request",
            "the body has no signed \"job\", and this node takes no x402 payments (no [evm] section, or a genesis without evm)",
        );
    };
    let (Some(model_ref), Some(input)) = (body["model"].as_str(), body["input"].as_str()) else {
        return error(
            400,
            "bad_request",
            "body: {\"job\": <signed JobRequest>, \"input\": ...} or, paid by x402, {\"model\": <id or name>, \"input\": <string>}",
        );
    };
    let state = match s.settlement.send(GetChainState).await {
        Ok(c) => c,
        Err(e) => return unavailable(e),
    };
    let found = state.registry.models.iter().find(|(id, m)| {
        m.name == model_ref || model_ref.parse::<ModelId>().is_ok_and(|r| r == **id)
    });
    let Some((model_id, model)) = found else {
        return error(404, "unknown_model", format!("no model {model_ref:?}"));
    };
    let resource = {
        let conn = req.connection_info();
        format!("{}://{}{}", conn.scheme(), conn.host(), req.path())
    };
    let offer = Offer {
        payments: x.payments,
        model: *model_id,
        // The most the job can cost; what it does not use stays on the client's account.
        amount: model.price(kernels::units_bound(input.as_bytes())),
        resource,
        max_timeout_seconds: x.max_timeout_seconds,
    };
    let Some((header, answer_in)) = payment_header(req) else {
        let required = offer.payment_required(2, "payment required");
        let r = HttpResponse::PaymentRequired().json(&required);
        return with_header(r, "payment-required", &required);
    };
    let payment = match evm::x402::decode_payment(&header, &x.payments) {
        Ok(p) => p,
        Err(e) => return paid_error(&offer, &e),
    };
    let job = match evm::x402::job_of(&payment, &s.domain, *model_id, input, offer.amount, now_s())
    {
        Ok(j) => j,
        Err(e) => return paid_error(&offer, &e),
    };
    let id = job.request.id(&s.domain);
    match s.settlement.send(GetJob(id)).await {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(_))) => {
            return paid_error(
                &offer,
                &X402Error {
                    code: "invalid_exact_evm_payload_authorization_used",
                    reason: format!("this payment's job {id} has run; GET /v1/jobs/{id}"),
                },
            );
        }
        Ok(Err(e)) => return error(500, "storage", e),
        Err(e) => return unavailable(e),
    }
    // The job's nonce (the authorization's validAfter) used by another job of this payer:
    // refused before anything is paid.
    match s
        .settlement
        .send(actors::settlement::NonceUsed {
            client: job.request.client,
            nonce: job.request.nonce,
        })
        .await
    {
        Ok(Ok(Some(other))) if other != id => {
            return paid_error(
                &offer,
                &X402Error {
                    code: "invalid_exact_evm_payload_authorization_valid_after",
                    reason: format!(
                        "validAfter {} is this payer's job nonce and job {other} used it; sign with another validAfter",
                        job.request.nonce
                    ),
                },
            );
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return error(500, "storage", e),
        Err(e) => return unavailable(e),
    }
    // Taken by this gateway already and not in a block yet: the same payment again.
    if let Ok(Some(_)) = s.gateway.send(actors::gateway::PendingJob(id)).await {
        return paid_error(
            &offer,
            &X402Error {
                code: "invalid_exact_evm_payload_authorization_used",
                reason: format!("this payment's job {id} is running; GET /v1/jobs/{id}"),
            },
        );
    }
    let settled = {
        let (x, payment) = (x.clone(), payment.clone());
        tokio::task::spawn_blocking(move || settle(&x, &payment)).await
    };
    let (deposit, tx) = match settled {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return paid_error(&offer, &e),
        Err(e) => return unavailable(e),
    };
    if let Err(r) = credited(s, &x, deposit, payment.authorization.from, offer.amount).await {
        return r;
    }
    let payer = payment.authorization.from;
    let response = evm::x402::settlement_response(&x.payments, payer, tx);
    // The executor checks the balance against its own ledger, which may be a block behind
    // this one's, and this gateway's own check may run after an earlier job of the payer is
    // charged but before this payment's deposit (settled elsewhere: no deposit id to wait
    // for) is credited: a refusal for the balance is retried for a few blocks.
    let deadline = Instant::now() + Duration::from_secs(10);
    let result = loop {
        let result = match s
            .gateway
            .send(SubmitJob {
                job: job.clone(),
                input: input.to_string(),
                stream: None,
            })
            .await
        {
            Ok(result) => result,
            Err(e) => return unavailable(e),
        };
        match &result {
            Err(e)
                if ((e.kind == actors::gateway::Refusal::ExecutorRefused
                    && e.message.contains("insufficient_balance"))
                    || e.kind == actors::gateway::Refusal::InsufficientBalance)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            _ => break result,
        }
    };
    let header = if answer_in == "PAYMENT-RESPONSE" {
        "payment-response"
    } else {
        "x-payment-response"
    };
    with_header(job_response(result), header, &response)
}

/// Blocking: settles `payment` on the bridge, or finds it settled already. Returns the
/// deposit id when this call made it, and its EVM transaction. RPC failures are retried each
/// second until the authorization expires; the authorization's state on OPG says whether an
/// earlier attempt landed, and sending again cannot pay twice (its nonce is used once).
fn settle(x: &X402, payment: &Payment) -> Result<(Option<u64>, Option<chain::B256>), X402Error> {
    let a = &payment.authorization;
    let rpc = evm::Rpc::new(&x.rpc_url, x.rpc_timeout);
    let until = u64::try_from(a.valid_before)
        .unwrap_or(u64::MAX)
        .saturating_sub(5);
    let give_up = |why: String| X402Error {
        code: "unexpected_settle_error",
        reason: format!("not settled ({why}); nothing was charged"),
    };
    let retry = |why: String| -> Result<(), X402Error> {
        if now_s() >= until {
            return Err(give_up(why));
        }
        tracing::warn!(payer = %a.from, error = %why, "x402 settlement not confirmed: trying again");
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    };
    let mut funds_checked = false;
    let mut reverted: Option<String> = None;
    loop {
        // Used already: settled by an earlier attempt or call whose answer was lost (the job
        // has not run: checked before), or cancelled by the payer; the job then runs on the
        // payer's native balance, which must cover it.
        match evm::x402::authorization_used(&rpc, x.payments.opg, a.from, a.nonce) {
            Ok(true) => return Ok((None, None)),
            Ok(false) if reverted.is_some() => {
                return Err(give_up(reverted.unwrap_or_default()));
            }
            Ok(false) => {}
            Err(e) if e.is_transient() => {
                retry(e.to_string())?;
                continue;
            }
            Err(e) => return Err(give_up(e.to_string())),
        }
        if !funds_checked {
            match evm::bridge::balance_of(&rpc, x.payments.opg, a.from, "latest") {
                Ok(b) if b < a.value => {
                    return Err(X402Error {
                        code: "insufficient_funds",
                        reason: format!(
                            "{} holds {b} OPG base units; the payment is {}",
                            a.from, a.value
                        ),
                    });
                }
                Ok(_) => funds_checked = true,
                Err(e) => {
                    retry(e.to_string())?;
                    continue;
                }
            }
        }
        let sent = {
            let mut guard = x
                .wallet
                .lock()
                .map_err(|_| give_up("wallet lock poisoned".into()))?;
            if guard.is_none() {
                let rpc = evm::Rpc::new(&x.rpc_url, x.rpc_timeout);
                match evm::Wallet::new(rpc, x.key.clone(), x.payments.chain_id) {
                    Ok(w) => *guard = Some(w),
                    Err(e) => {
                        drop(guard);
                        retry(e.to_string())?;
                        continue;
                    }
                }
            }
            match guard.as_mut() {
                Some(w) => {
                    let sent = evm::x402::settle(w, x.payments.settlement, payment);
                    if sent.as_ref().is_err_and(|e| !e.is_transient()) {
                        // A wallet that may have lost its place is rebuilt from the node.
                        *guard = None;
                    }
                    sent
                }
                None => return Err(give_up("no wallet".into())),
            }
        };
        match sent {
            Ok((id, receipt)) => return Ok((Some(id), Some(receipt.transaction_hash))),
            // Lost (timeout, RPC down): sent again after the state is read again.
            Err(e) if e.is_transient() => retry(e.to_string())?,
            // Refused by the chain: settled meanwhile by another attempt, or not at all.
            Err(e) => reverted = Some(e.to_string()),
        }
    }
}

/// Waits until the validators credit the payment: deposit `id` when known, else until the
/// payer's spendable balance covers `price`.
async fn credited(
    s: &AppState,
    x: &X402,
    deposit: Option<u64>,
    payer: Address,
    price: u128,
) -> Result<(), HttpResponse> {
    let deadline = Instant::now() + x.credit_timeout;
    loop {
        let done = match deposit {
            Some(id) => s
                .settlement
                .send(GetChainState)
                .await
                .map(|c| c.pools.bridge_deposits_credited > id),
            None => s
                .settlement
                .send(GetAccount(payer))
                .await
                .map(|a| a.balance >= price),
        }
        .map_err(unavailable)?;
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(error(
                504,
                "credit_pending",
                format!(
                    "the payment is settled on the EVM but not credited here after {} s; send the same request with the same payment again to run the job (it pays once)",
                    x.credit_timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET /v1/x402/supported`: the kinds this node takes, as a facilitator lists them.
pub fn supported(x: Option<&X402>) -> Value {
    let Some(x) = x else {
        return json!({"kinds": [], "extensions": [], "signers": {}});
    };
    let network = evm::x402::network(x.payments.chain_id);
    json!({
        "kinds": [
            {"x402Version": 2, "scheme": evm::x402::SCHEME, "network": network},
            {"x402Version": 1, "scheme": evm::x402::SCHEME, "network": network},
        ],
        "extensions": [],
        "signers": {"eip155:*": [x.key.address()]},
        "asset": x.payments.opg,
        "payTo": x.payments.settlement,
    })
}
