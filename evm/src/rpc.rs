//! A JSON-RPC client for an EVM node (anvil, a Base node): one request at a time over HTTP,
//! answers bounded in size and time, errors that say which call failed and how.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Largest answer read from the node: a block of logs, not an unbounded stream.
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The node could not be reached or did not answer in time: worth trying again.
    #[error("{method}: {url} unreachable: {reason}")]
    Transport {
        method: &'static str,
        url: String,
        reason: String,
    },
    /// The node answered with a JSON-RPC error.
    #[error("{method}: node error {code}: {message}")]
    Node {
        method: &'static str,
        code: i64,
        message: String,
        data: Option<Value>,
    },
    /// The answer was not what the method returns.
    #[error("{method}: unexpected answer: {reason}")]
    Decode {
        method: &'static str,
        reason: String,
    },
}

impl RpcError {
    /// Whether trying the same call again may succeed (the node was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, RpcError::Transport { .. })
    }
}

pub struct Rpc {
    url: String,
    agent: ureq::Agent,
    next_id: AtomicU64,
}

impl Rpc {
    /// A client of the node at `url`, each call bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Rpc {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Rpc {
            url: url.to_string(),
            agent,
            next_id: AtomicU64::new(1),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls `method` with `params` and decodes its result.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: Value,
    ) -> Result<T, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let transport = |reason: String| RpcError::Transport {
            method,
            url: self.url.clone(),
            reason,
        };
        let mut response = self
            .agent
            .post(&self.url)
            .send_json(&request)
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| transport(e.to_string()))?;
        let answer: Value = serde_json::from_slice(&body).map_err(|e| RpcError::Decode {
            method,
            reason: format!("HTTP {status}, not JSON: {e}"),
        })?;
        if let Some(err) = answer.get("error") {
            return Err(RpcError::Node {
                method,
                code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                data: err.get("data").cloned(),
            });
        }
        let result = answer
            .get("result")
            .cloned()
            .ok_or_else(|| RpcError::Decode {
                method,
                reason: format!("HTTP {status}, no result"),
            })?;
        serde_json::from_value(result).map_err(|e| RpcError::Decode {
            method,
            reason: e.to_string(),
        })
    }
}

impl Rpc {
    /// `eth_call` of `data` on `to` in the state of `block` (`"latest"`, or a number as
    /// `0x…`).
    pub fn eth_call(
        &self,
        to: alloy::primitives::Address,
        data: alloy::primitives::Bytes,
        block: &str,
    ) -> Result<alloy::primitives::Bytes, RpcError> {
        self.call("eth_call", json!([{"to": to, "data": data}, block]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server answering `body` to the first request.
    fn serve(body: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(body);
            }
        });
        url
    }

    #[test]
    fn answers_errors_and_garbage() {
        let rpc = Rpc::new(
            &serve(br#"{"jsonrpc":"2.0","id":1,"result":"0x10"}"#),
            Duration::from_secs(5),
        );
        let n: String = rpc.call("eth_blockNumber", json!([])).unwrap();
        assert_eq!(n, "0x10");
        let rpc = Rpc::new(
            &serve(br#"{"jsonrpc":"2.0","id":1,"error":{"code":3,"message":"execution reverted","data":"0x08c379a0"}}"#),
            Duration::from_secs(5),
        );
        match rpc.call::<String>("eth_call", json!([])) {
            Err(RpcError::Node {
                code: 3,
                message,
                data: Some(_),
                ..
            }) => {
                assert_eq!(message, "execution reverted")
            }
            other => panic!("{other:?}"),
        }
        for garbage in [&b"not json"[..], b"{}", b"{\"result\": 5}", b"\xff\xfe"] {
            let leaked: &'static [u8] = Box::leak(garbage.to_vec().into_boxed_slice());
            let rpc = Rpc::new(&serve(leaked), Duration::from_secs(5));
            let e = rpc.call::<String>("eth_chainId", json!([])).unwrap_err();
            assert!(matches!(e, RpcError::Decode { .. }), "{e}");
            assert!(!e.is_transient());
        }
        // https: the TLS handshake is attempted (a plain server answers garbage to it), the
        // scheme is not refused as unsupported.
        let rpc = Rpc::new(
            &serve(b"not tls").replace("http://", "https://"),
            Duration::from_secs(5),
        );
        let e = rpc.call::<String>("eth_chainId", json!([])).unwrap_err();
        assert!(e.is_transient(), "{e}");
        let text = e.to_string().to_lowercase();
        // (Built without a TLS provider, ureq says "tls required, but transport is
        // unsecured".)
        assert!(
            !text.contains("tls required") && !text.contains("unsecured"),
            "{text}"
        );
        // Nobody listening: transient.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rpc = Rpc::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));
        let e = rpc.call::<String>("eth_chainId", json!([])).unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
}
