//! Client commands: `submit` (sign and send a job, print result JSON) and `transfer`.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use alloy::primitives::keccak256;
use anyhow::{Context, Result, anyhow, bail};
use chain::{Address, JobRequest, ModelId};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct SubmitArgs {
    /// Any node's HTTP URL, e.g. http://127.0.0.1:7480
    #[arg(long)]
    node: String,
    /// Client private key file (hex).
    #[arg(long)]
    key: PathBuf,
    /// Model id (0x…), as in GET /v1/models.
    #[arg(long)]
    model: String,
    /// Input file, or - for standard input.
    #[arg(long)]
    input: String,
    /// Most to pay, base units (default: the model's price).
    #[arg(long)]
    max_fee: Option<u128>,
    /// Job nonce (default: random).
    #[arg(long)]
    nonce: Option<u64>,
    /// Seconds until the job expires.
    #[arg(long, default_value_t = 600)]
    expires_in: u64,
    /// Wait until a block settles the job and print its final status.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Pay by x402 instead of from a native account: the key's OPG on the EVM chain pays
    /// (an EIP-3009 authorization the gateway settles on the bridge), and the same signature
    /// authorizes the job.
    #[arg(long)]
    x402: bool,
}

#[derive(clap::Args)]
pub struct TransferArgs {
    #[arg(long)]
    to: Address,
    /// Base units, or OPG with a suffix: `1000opg`, `2.5OPG`.
    #[arg(long, value_parser = crate::chaincmd::parse_amount)]
    amount: u128,
    #[command(flatten)]
    tx: crate::chaincmd::TxArgs,
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// GET returning (status, JSON body).
pub(crate) fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, Value)> {
    let mut resp = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_json::<Value>()
        .with_context(|| format!("GET {url}: body is not JSON"))?;
    Ok((status, body))
}

pub(crate) fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Result<(u16, Value)> {
    let mut resp = agent
        .post(url)
        .send_json(body)
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_json::<Value>()
        .with_context(|| format!("POST {url}: body is not JSON"))?;
    Ok((status, body))
}

pub(crate) fn api_error(status: u16, body: &Value) -> anyhow::Error {
    let code = body["error"]["code"].as_str().unwrap_or("error");
    let message = body["error"]["message"].as_str().unwrap_or("");
    anyhow!("node answered {status} {code}: {message}")
}

/// A job nonce no other job of this process takes (the clock, the process and a counter,
/// hashed), below 2^53.
pub(crate) fn random_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut buf = t.to_be_bytes().to_vec();
    buf.extend_from_slice(&std::process::id().to_be_bytes());
    buf.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    let h = keccak256(&buf);
    // Keep nonces below 2^53 so JavaScript clients read them exactly.
    u64::from_be_bytes([0, h[1] & 0x1f, h[2], h[3], h[4], h[5], h[6], h[7]])
}

pub fn submit(a: SubmitArgs) -> Result<()> {
    let agent = agent();
    let node = a.node.trim_end_matches('/');
    let key = chain::signing::load_key(&a.key)?;
    let model: ModelId = a
        .model
        .parse()
        .map_err(|e| anyhow!("--model {:?}: {e}", a.model))?;
    let input = if a.input == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input))?
    };
    let (st, status) = get(&agent, &format!("{node}/v1/status"))?;
    if st != 200 {
        return Err(api_error(st, &status));
    }
    let domain = domain_of(&status)?;
    if a.x402 {
        return pay_x402(&a, &agent, node, domain, &key, model, &input);
    }
    let max_fee = match a.max_fee {
        Some(f) => f,
        None => {
            let (st, models) = get(&agent, &format!("{node}/v1/models"))?;
            if st != 200 {
                return Err(api_error(st, &models));
            }
            let list = models["data"].as_array().cloned().unwrap_or_default();
            let entry = list
                .iter()
                .find(|m| m["id"].as_str() == Some(&model.to_string()))
                .ok_or_else(|| {
                    anyhow!(
                        "model {model} is not registered on this network (see {node}/v1/models)"
                    )
                })?;
            let price = |field: &str| -> Result<u128> {
                entry[field]
                    .as_str()
                    .and_then(|p| p.parse::<u128>().ok())
                    .with_context(|| format!("model has no {field}"))
            };
            // The most this input can cost: per job plus per unit of its bound (a
            // generation's tokens are known once it has run; it is charged those).
            price("price_per_unit")?
                .saturating_mul(kernels::units_bound(input.as_bytes()) as u128)
                .saturating_add(price("price_per_job")?)
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let request = JobRequest {
        client: key.address(),
        model_id: model,
        input_hash: keccak256(input.as_bytes()),
        max_fee,
        nonce: a.nonce.unwrap_or_else(random_nonce),
        expiry: now + a.expires_in,
    };
    let job = request.sign(&key, &domain)?;
    let (st, mut body) = post(
        &agent,
        &format!("{node}/v1/jobs"),
        &json!({"job": job, "input": input}),
    )?;
    if st != 200 {
        return Err(api_error(st, &body));
    }
    if a.wait {
        let id = body["job_id"]
            .as_str()
            .context("reply has no job_id")?
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(a.timeout);
        loop {
            let (st, s) = get(&agent, &format!("{node}/v1/jobs/{id}"))?;
            if st == 200 && matches!(s["status"].as_str(), Some("finalized" | "failed")) {
                body["status"] = s["status"].clone();
                body["height"] = s["height"].clone();
                if let Some(r) = s.get("reason") {
                    body["reason"] = r.clone();
                }
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "job {id} not settled after {} s (last status {})",
                    a.timeout,
                    s["status"]
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("{body}");
    Ok(())
}

/// `submit --x402`: asks for the job, reads what the `402` says to pay, signs the EIP-3009
/// authorization bound to the job and sends it again with `PAYMENT-SIGNATURE`.
fn pay_x402(
    a: &SubmitArgs,
    agent: &ureq::Agent,
    node: &str,
    mut domain: chain::signing::Domain,
    key: &chain::PrivateKeySigner,
    model: ModelId,
    input: &str,
) -> Result<()> {
    let url = format!("{node}/v1/jobs");
    let body = json!({"model": model, "input": input});
    let send = |header: Option<&str>| -> Result<(u16, Option<String>, Value)> {
        let mut req = agent.post(&url);
        if let Some(h) = header {
            req = req.header("PAYMENT-SIGNATURE", h);
        }
        let mut resp = req
            .send_json(&body)
            .with_context(|| format!("POST {url}"))?;
        let st = resp.status().as_u16();
        let name = if header.is_some() {
            "payment-response"
        } else {
            "payment-required"
        };
        let h = resp
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let v = resp.body_mut().read_json::<Value>().unwrap_or(Value::Null);
        Ok((st, h, v))
    };
    let (st, required, answer) = send(None)?;
    let required = match (st, required) {
        (402, Some(h)) => evm::x402::decode_header(&h)?,
        _ => return Err(api_error(st, &answer)),
    };
    let accepts = required["accepts"]
        .as_array()
        .and_then(|l| l.iter().find(|o| o["scheme"] == evm::x402::SCHEME))
        .cloned()
        .context("the 402 offers no exact payment")?;
    let field = |k: &str| -> Result<&str> {
        accepts[k]
            .as_str()
            .with_context(|| format!("the 402's offer has no {k}"))
    };
    let payments = chain::signing::EvmPayments {
        chain_id: field("network")?
            .trim_start_matches("eip155:")
            .parse()
            .context("the offer's network is not eip155:<chain id>")?,
        opg: field("asset")?.parse().context("asset")?,
        settlement: field("payTo")?.parse().context("payTo")?,
    };
    domain.payments = Some(payments);
    let amount: u128 = field("amount")?.parse().context("amount")?;
    let value = a.max_fee.unwrap_or(amount).max(amount);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    // validAfter is the job's nonce: a random second of the past hour keeps two payments of
    // the same job apart.
    let after = now.saturating_sub(60 + random_nonce() % 3600);
    let before = now
        + accepts["maxTimeoutSeconds"]
            .as_u64()
            .unwrap_or(300)
            .min(a.expires_in);
    let job = JobRequest {
        client: key.address(),
        model_id: model,
        input_hash: keccak256(input.as_bytes()),
        max_fee: value,
        nonce: after,
        expiry: before,
    }
    .sign_payment(
        key,
        &domain,
        chain::record::Payment {
            value,
            valid_after: after,
            valid_before: before,
        },
    )?;
    let payload = evm::x402::payment_payload(2, &domain, &job, &accepts)?;
    let (st, response, mut answer) = send(Some(&evm::x402::encode_header(&payload)))?;
    if st != 200 {
        return Err(api_error(st, &answer));
    }
    if let Some(h) = response {
        answer["payment"] = evm::x402::decode_header(&h)?;
    }
    println!("{answer}");
    Ok(())
}

/// The signing domain a node's `/v1/status` names: its chain id and genesis hash.
pub(crate) fn domain_of(status: &serde_json::Value) -> Result<chain::signing::Domain> {
    let chain_id = status["chain_id"]
        .as_u64()
        .context("status has no chain_id")?;
    let salt = status["genesis_hash"]
        .as_str()
        .and_then(|h| h.parse().ok())
        .context("status has no genesis_hash")?;
    Ok(chain::signing::Domain {
        chain_id,
        salt,
        payments: None,
    })
}

pub fn transfer(a: TransferArgs) -> Result<()> {
    crate::chaincmd::send(
        &a.tx,
        chain::Action::Transfer {
            to: a.to,
            amount: a.amount,
        },
    )
}
