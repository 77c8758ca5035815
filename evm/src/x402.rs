//! x402 (version 2, and version 1 accepted) for proofmesh jobs: what a gateway answers `402`
//! with, the payment a client retries with, the checks that need no chain, and the settlement
//! answer. Headers carry base64 JSON: `PAYMENT-REQUIRED`, `PAYMENT-SIGNATURE` (v1 `X-PAYMENT`)
//! and `PAYMENT-RESPONSE` (v1 `X-PAYMENT-RESPONSE`).
//!
//! The scheme is `exact` on `eip155:<chain id>` with OPG as the asset and the bridge (the
//! Settlement contract) as `payTo`. The bridge pulls the payment itself with EIP-3009
//! `receiveWithAuthorization` and records it as a deposit to the payer's own native account, so
//! the payer signs `ReceiveWithAuthorization` (not the transfer form, which anyone holding the
//! signature could submit to the token directly, moving the tokens without a deposit record).
//! The authorization's nonce is the id of the job it pays for: the proofmesh `JobRequest` with
//! `client` = `from`, the model named in the requirements, `inputHash` = keccak of the input,
//! `maxFee` = `value`, `nonce` = `validAfter`, `expiry` = `validBefore`. That one signature
//! pays and commits to the job ([`chain::record::Payment`]).

use alloy::primitives::{Address, B256, Bytes, keccak256};
use base64::Engine;
use chain::signing::{Domain, EvmPayments};
use chain::{JobRequest, ModelId, SignedJobRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The only scheme taken.
pub const SCHEME: &str = "exact";
/// How long before its `validBefore` an authorization is still taken: time to settle it.
pub const MIN_VALIDITY_S: u64 = 30;
/// Largest header decoded.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A refusal, with its x402 error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct X402Error {
    pub code: &'static str,
    pub reason: String,
}

fn refuse(code: &'static str, reason: impl Into<String>) -> X402Error {
    X402Error {
        code,
        reason: reason.into(),
    }
}

/// `eip155:<chain id>`, the CAIP-2 name of an EVM chain (x402 v2).
pub fn network(chain_id: u64) -> String {
    format!("eip155:{chain_id}")
}

/// What a job costs and where it is paid: one entry of `accepts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub payments: EvmPayments,
    pub model: ModelId,
    /// Base units of OPG.
    pub amount: u128,
    pub resource: String,
    pub max_timeout_seconds: u64,
}

impl Offer {
    fn accepts(&self, version: u8) -> Value {
        let mut a = json!({
            "scheme": SCHEME,
            "network": network(self.payments.chain_id),
            "asset": self.payments.opg,
            "payTo": self.payments.settlement,
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "extra": {
                "name": "OPG",
                "version": "1",
                "primaryType": "ReceiveWithAuthorization",
                "modelId": self.model,
                "nonce": "the proofmesh JobRequest id: client = from, modelId, inputHash = keccak256(input), maxFee = value, nonce = validAfter, expiry = validBefore",
            },
        });
        if version == 1 {
            a["maxAmountRequired"] = json!(self.amount.to_string());
            a["resource"] = json!(self.resource);
            a["description"] = json!("one proofmesh inference job");
            a["mimeType"] = json!("application/json");
            a["network"] = json!(network(self.payments.chain_id));
        } else {
            a["amount"] = json!(self.amount.to_string());
        }
        a
    }

    /// The `402` body (and, base64, the `PAYMENT-REQUIRED` header) for x402 `version`.
    pub fn payment_required(&self, version: u8, error: &str) -> Value {
        if version == 1 {
            return json!({"x402Version": 1, "error": error, "accepts": [self.accepts(1)]});
        }
        json!({
            "x402Version": 2,
            "error": error,
            "resource": {
                "url": self.resource,
                "description": "one proofmesh inference job",
                "mimeType": "application/json",
            },
            "accepts": [self.accepts(2)],
        })
    }
}

/// base64 of JSON, as x402 headers carry it.
pub fn encode_header(v: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

/// JSON from a base64 header, bounded.
pub fn decode_header(h: &str) -> Result<Value, X402Error> {
    if h.len() > MAX_HEADER_BYTES {
        return Err(refuse(
            "invalid_payload",
            format!("payment header over {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(h.trim())
        .map_err(|e| {
            refuse(
                "invalid_payload",
                format!("payment header is not base64: {e}"),
            )
        })?;
    serde_json::from_slice(&raw).map_err(|e| {
        refuse(
            "invalid_payload",
            format!("payment header is not JSON: {e}"),
        )
    })
}

/// The EIP-3009 authorization of an `exact` EVM payload (amounts and times as decimal
/// strings, as x402 writes them; numbers are taken too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    pub from: Address,
    pub to: Address,
    #[serde(with = "decimal")]
    pub value: u128,
    #[serde(with = "decimal")]
    pub valid_after: u128,
    #[serde(with = "decimal")]
    pub valid_before: u128,
    pub nonce: B256,
}

mod decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Num {
            S(String),
            N(u64),
        }
        match Num::deserialize(d)? {
            Num::N(n) => Ok(n as u128),
            Num::S(s) => s
                .parse()
                .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}"))),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
struct ExactPayload {
    signature: Bytes,
    authorization: Authorization,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    x402_version: u8,
    /// v1: at the top level; v2: in `accepted`.
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    accepted: Option<Accepted>,
    payload: ExactPayload,
}

#[derive(Clone, Debug, Deserialize)]
struct Accepted {
    scheme: String,
    network: String,
}

/// A decoded payment: its x402 version, the authorization and its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub version: u8,
    pub authorization: Authorization,
    pub signature: chain::Sig,
}

/// Decodes a `PAYMENT-SIGNATURE` / `X-PAYMENT` header: version, scheme and network checked.
pub fn decode_payment(header: &str, payments: &EvmPayments) -> Result<Payment, X402Error> {
    let v = decode_header(header)?;
    let e: Envelope = serde_json::from_value(v)
        .map_err(|e| refuse("invalid_payload", format!("payment payload: {e}")))?;
    if !(1..=2).contains(&e.x402_version) {
        return Err(refuse(
            "invalid_x402_version",
            format!("x402 version {} (1 and 2 are taken)", e.x402_version),
        ));
    }
    let (scheme, net) = match (&e.accepted, &e.scheme, &e.network) {
        (Some(a), _, _) => (a.scheme.clone(), a.network.clone()),
        (None, Some(s), Some(n)) => (s.clone(), n.clone()),
        _ => {
            return Err(refuse(
                "invalid_payload",
                "the payload names no scheme and network",
            ));
        }
    };
    if scheme != SCHEME {
        return Err(refuse(
            "unsupported_scheme",
            format!("scheme {scheme:?}; only \"exact\""),
        ));
    }
    let want = network(payments.chain_id);
    if net != want {
        return Err(refuse(
            "invalid_network",
            format!("network {net:?}; this node takes {want:?}"),
        ));
    }
    let signature = <[u8; 65]>::try_from(e.payload.signature.as_ref())
        .map(chain::Sig)
        .map_err(|_| {
            refuse(
                "invalid_exact_evm_payload_signature",
                format!(
                    "signature of {} bytes (65 expected)",
                    e.payload.signature.len()
                ),
            )
        })?;
    Ok(Payment {
        version: e.x402_version,
        authorization: e.payload.authorization,
        signature,
    })
}

/// The job `payment` pays for, checked without the chain: the bridge as recipient, at least
/// `amount`, valid now (`now_s`) and for [`MIN_VALIDITY_S`] more, its nonce the job's id, its
/// signature by `from`. Returns the signed job, authorized by the payment.
pub fn job_of(
    payment: &Payment,
    domain: &Domain,
    model: ModelId,
    input: &str,
    amount: u128,
    now_s: u64,
) -> Result<SignedJobRequest, X402Error> {
    let payments = domain
        .payments
        .ok_or_else(|| refuse("invalid_network", "this network takes no x402 payments"))?;
    let a = &payment.authorization;
    if a.to != payments.settlement {
        return Err(refuse(
            "invalid_exact_evm_payload_recipient_mismatch",
            format!(
                "authorization to {}; payTo is {}",
                a.to, payments.settlement
            ),
        ));
    }
    if a.value < amount {
        return Err(refuse(
            "invalid_exact_evm_payload_authorization_value",
            format!("authorization of {} < the job's price {amount}", a.value),
        ));
    }
    let (after, before) = (
        u64::try_from(a.valid_after).unwrap_or(u64::MAX),
        u64::try_from(a.valid_before).unwrap_or(u64::MAX),
    );
    if after > now_s {
        return Err(refuse(
            "invalid_exact_evm_payload_authorization_valid_after",
            format!("valid after {after}, now {now_s}"),
        ));
    }
    if before < now_s.saturating_add(MIN_VALIDITY_S) {
        return Err(refuse(
            "invalid_exact_evm_payload_authorization_valid_before",
            format!("valid before {before}: less than {MIN_VALIDITY_S} s from now ({now_s})"),
        ));
    }
    let request = JobRequest {
        client: a.from,
        model_id: model,
        input_hash: keccak256(input.as_bytes()),
        max_fee: a.value,
        nonce: after,
        expiry: before,
    };
    let id = request.id(domain);
    if a.nonce != id.0 {
        return Err(refuse(
            "invalid_exact_evm_payload_authorization_nonce",
            format!("nonce {} is not this job's id {id}", a.nonce),
        ));
    }
    let job = SignedJobRequest {
        request,
        signature: payment.signature,
        payment: Some(chain::record::Payment {
            value: a.value,
            valid_after: after,
            valid_before: before,
        }),
        grant: None,
    };
    job.verify(domain)
        .map_err(|e| refuse("invalid_exact_evm_payload_signature", e.to_string()))?;
    Ok(job)
}

/// The `PAYMENT-RESPONSE` body.
pub fn settlement_response(payments: &EvmPayments, payer: Address, tx: Option<B256>) -> Value {
    json!({
        "success": true,
        "transaction": tx,
        "network": network(payments.chain_id),
        "payer": payer,
    })
}

/// The payload a client sends for `job` (authorized by its x402 payment) in x402 `version`,
/// `offer` being the entry of `accepts` it pays: what an x402 client library builds.
pub fn payment_payload(
    version: u8,
    domain: &Domain,
    job: &SignedJobRequest,
    offer: &Value,
) -> Result<Value, X402Error> {
    let payments = domain
        .payments
        .ok_or_else(|| refuse("invalid_network", "this network takes no x402 payments"))?;
    let p = job
        .payment
        .ok_or_else(|| refuse("invalid_payload", "the job is not paid by x402"))?;
    let authorization = Authorization {
        from: job.request.client,
        to: payments.settlement,
        value: p.value,
        valid_after: p.valid_after as u128,
        valid_before: p.valid_before as u128,
        nonce: job.request.id(domain).0,
    };
    let payload = json!({
        "signature": Bytes::copy_from_slice(&job.signature.0),
        "authorization": authorization,
    });
    Ok(if version == 1 {
        json!({"x402Version": 1, "scheme": SCHEME, "network": network(payments.chain_id), "payload": payload})
    } else {
        json!({"x402Version": 2, "accepted": offer, "payload": payload})
    })
}

/// Whether `from`'s authorization `nonce` is used (or cancelled) on OPG, at the tip.
pub fn authorization_used(
    rpc: &crate::Rpc,
    opg: Address,
    from: Address,
    nonce: B256,
) -> Result<bool, crate::RpcError> {
    use alloy::sol_types::SolCall;
    let call = crate::contracts::IOPG::authorizationStateCall {
        authorizer: from,
        nonce,
    };
    let raw = rpc.eth_call(opg, Bytes::from(call.abi_encode()), "latest")?;
    crate::contracts::IOPG::authorizationStateCall::abi_decode_returns(&raw).map_err(|e| {
        crate::RpcError::Decode {
            method: "eth_call",
            reason: format!("authorizationState: {e}"),
        }
    })
}

/// Settles `payment` on the bridge (`depositWithAuthorization`: the bridge pulls the OPG and
/// records a deposit to the payer's own native account) from `wallet`; returns the deposit id
/// and the receipt.
pub fn settle(
    wallet: &mut crate::Wallet,
    settlement: Address,
    payment: &Payment,
) -> Result<(u64, crate::Receipt), crate::SendError> {
    use alloy::primitives::U256;
    use alloy::sol_types::SolCall;
    let a = &payment.authorization;
    let call = crate::contracts::ISettlement::depositWithAuthorizationCall {
        from: a.from,
        amount: U256::from(a.value),
        validAfter: U256::from(a.valid_after),
        validBefore: U256::from(a.valid_before),
        nonce: a.nonce,
        signature: Bytes::copy_from_slice(&payment.signature.0),
    };
    let receipt = wallet.send(Some(settlement), call.abi_encode())?;
    let id = crate::bridge::deposit_id(&receipt, settlement).ok_or_else(|| {
        crate::SendError::Rpc(crate::RpcError::Decode {
            method: "eth_getTransactionReceipt",
            reason: format!("{} has no Deposited event", receipt.transaction_hash),
        })
    })?;
    Ok((id, receipt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chain::PrivateKeySigner;

    fn domain() -> Domain {
        Domain {
            chain_id: 7,
            salt: B256::repeat_byte(3),
            payments: Some(EvmPayments {
                chain_id: 31_337,
                opg: Address::repeat_byte(0x0a),
                settlement: Address::repeat_byte(0x5e),
            }),
        }
    }

    fn offer(d: &Domain) -> Offer {
        Offer {
            payments: d.payments.unwrap(),
            model: ModelId([9; 32]),
            amount: 1_000,
            resource: "http://127.0.0.1:1/v1/jobs".into(),
            max_timeout_seconds: 300,
        }
    }

    /// A client's payment for a job: its request, authorized by an EIP-3009 signature.
    fn paid(
        key: &PrivateKeySigner,
        d: &Domain,
        value: u128,
        after: u64,
        before: u64,
    ) -> SignedJobRequest {
        JobRequest {
            client: key.address(),
            model_id: ModelId([9; 32]),
            input_hash: keccak256(b"hello"),
            max_fee: value,
            nonce: after,
            expiry: before,
        }
        .sign_payment(
            key,
            d,
            chain::record::Payment {
                value,
                valid_after: after,
                valid_before: before,
            },
        )
        .unwrap()
    }

    fn header(d: &Domain, job: &SignedJobRequest, version: u8) -> String {
        let accepts = offer(d).payment_required(2, "")["accepts"][0].clone();
        encode_header(&payment_payload(version, d, job, &accepts).unwrap())
    }

    /// A payment built as a client library builds it decodes (v2 and v1) to the same job,
    /// whose authorization the chain accepts.
    #[test]
    fn a_payment_round_trips_to_its_job() {
        let d = domain();
        let key = PrivateKeySigner::random();
        let job = paid(&key, &d, 1_000, 100, 1_000);
        for version in [2, 1] {
            let p = decode_payment(&header(&d, &job, version), &d.payments.unwrap()).unwrap();
            assert_eq!(p.version, version);
            let back = job_of(&p, &d, ModelId([9; 32]), "hello", 1_000, 500).unwrap();
            assert_eq!(back, job);
            assert_eq!(back.verify(&d).unwrap(), job.request.id(&d));
        }
        let required = offer(&d).payment_required(2, "payment required");
        assert_eq!(decode_header(&encode_header(&required)).unwrap(), required);
        assert_eq!(required["accepts"][0]["amount"], "1000");
        assert_eq!(required["accepts"][0]["network"], "eip155:31337");
    }

    /// Each way a payment can be wrong is refused with its x402 code.
    #[test]
    fn bad_payments_are_refused_with_their_codes() {
        let d = domain();
        let pay = d.payments.unwrap();
        let key = PrivateKeySigner::random();
        let job = paid(&key, &d, 1_000, 100, 1_000);
        let ok = decode_payment(&header(&d, &job, 2), &pay).unwrap();
        let code = |p: &Payment, input: &str, amount: u128, now: u64| {
            job_of(p, &d, ModelId([9; 32]), input, amount, now)
                .unwrap_err()
                .code
        };
        for (input, amount, now, want) in [
            (
                "hello",
                1_001,
                500,
                "invalid_exact_evm_payload_authorization_value",
            ),
            (
                "hello",
                1_000,
                99,
                "invalid_exact_evm_payload_authorization_valid_after",
            ),
            (
                "hello",
                1_000,
                980,
                "invalid_exact_evm_payload_authorization_valid_before",
            ),
            (
                "other input",
                1_000,
                500,
                "invalid_exact_evm_payload_authorization_nonce",
            ),
        ] {
            assert_eq!(code(&ok, input, amount, now), want);
        }
        let mut to_other = ok.clone();
        to_other.authorization.to = Address::repeat_byte(1);
        assert_eq!(
            code(&to_other, "hello", 1_000, 500),
            "invalid_exact_evm_payload_recipient_mismatch"
        );
        let mut forged = ok.clone();
        forged.signature.0[10] ^= 1;
        assert_eq!(
            code(&forged, "hello", 1_000, 500),
            "invalid_exact_evm_payload_signature"
        );
        // Signed by another key for this payer's job.
        let other = PrivateKeySigner::random();
        let mut theirs = ok.clone();
        theirs.signature = paid(&other, &d, 1_000, 100, 1_000).signature;
        assert_eq!(
            code(&theirs, "hello", 1_000, 500),
            "invalid_exact_evm_payload_signature"
        );

        let envelope = |v: Value| encode_header(&v);
        let mut v: Value = decode_header(&header(&d, &job, 2)).unwrap();
        v["x402Version"] = json!(3);
        assert_eq!(
            decode_payment(&envelope(v), &pay).unwrap_err().code,
            "invalid_x402_version"
        );
        let mut v: Value = decode_header(&header(&d, &job, 2)).unwrap();
        v["accepted"]["network"] = json!("eip155:1");
        assert_eq!(
            decode_payment(&envelope(v), &pay).unwrap_err().code,
            "invalid_network"
        );
        let mut v: Value = decode_header(&header(&d, &job, 1)).unwrap();
        v["scheme"] = json!("upto");
        assert_eq!(
            decode_payment(&envelope(v), &pay).unwrap_err().code,
            "unsupported_scheme"
        );
        for garbage in [
            "",
            "!!!",
            "bm90IGpzb24=",
            &"A".repeat(MAX_HEADER_BYTES + 1),
            "e30=",
        ] {
            assert_eq!(
                decode_payment(garbage, &pay).unwrap_err().code,
                "invalid_payload",
                "{garbage:.20}"
            );
        }
    }
}
