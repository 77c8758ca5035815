//! A small blocking HTTP client for the node API, and job signing for load and tests.

use std::time::{Duration, Instant};

use alloy::primitives::keccak256;
use anyhow::{Context, Result, anyhow};
use chain::signing::Domain;
use chain::{JobRequest, ModelId, PrivateKeySigner};
use serde_json::{Value, json};

/// A reply: HTTP status and JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(self) -> Result<Value> {
        if self.status == 200 {
            Ok(self.body)
        } else {
            Err(anyhow!("HTTP {}: {}", self.status, self.body))
        }
    }

    /// The `error.code` of an error reply.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Client { agent }
    }

    pub fn get(&self, url: &str) -> Result<Reply> {
        let mut r = self
            .agent
            .get(url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = r.status().as_u16();
        let body = r.body_mut().read_json::<Value>().unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    /// GET a text body (e.g. `/metrics`).
    pub fn get_text(&self, url: &str) -> Result<String> {
        let mut r = self
            .agent
            .get(url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        Ok(r.body_mut().read_to_string()?)
    }

    pub fn post(&self, url: &str, body: &Value) -> Result<Reply> {
        let mut r = self
            .agent
            .post(url)
            .send_json(body)
            .with_context(|| format!("POST {url}"))?;
        let status = r.status().as_u16();
        let body = r.body_mut().read_json::<Value>().unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    /// POST JSON with extra `headers`.
    pub fn post_with(&self, url: &str, body: &Value, headers: &[(&str, &str)]) -> Result<Reply> {
        let mut req = self.agent.post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send_json(body).with_context(|| format!("POST {url}"))?;
        let status = r.status().as_u16();
        let body = r.body_mut().read_json::<Value>().unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    /// POST JSON with extra `headers`; the status, the content type and the whole body as
    /// text (a server-sent event stream is read to its end).
    pub fn post_text(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String, String)> {
        let mut req = self.agent.post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send_json(body).with_context(|| format!("POST {url}"))?;
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        Ok((status, kind, text))
    }

    pub fn post_raw(&self, url: &str, content_type: &str, body: &[u8]) -> Result<Reply> {
        self.post_raw_with(url, content_type, body, &[])
    }

    /// POSTs JSON with extra `headers` and hands each server-sent event's data to `on_event`
    /// as it arrives (the line after `data: `), until the stream ends; returns the status.
    /// Any other answer's body is handed over whole, once.
    pub fn post_events(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&str, &str)],
        on_event: &mut dyn FnMut(&str),
    ) -> Result<u16> {
        use std::io::BufRead;
        let mut req = self.agent.post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send_json(body).with_context(|| format!("POST {url}"))?;
        let status = r.status().as_u16();
        if status != 200 {
            on_event(&r.body_mut().read_to_string().unwrap_or_default());
            return Ok(status);
        }
        let reader = std::io::BufReader::new(r.body_mut().as_reader());
        for line in reader.lines() {
            let line = line.with_context(|| format!("reading the events of {url}"))?;
            if let Some(data) = line.strip_prefix("data: ") {
                on_event(data);
            }
        }
        Ok(status)
    }

    /// [`Client::post_raw`] with extra `headers`.
    pub fn post_raw_with(
        &self,
        url: &str,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let mut req = self.agent.post(url).header("content-type", content_type);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send(body).with_context(|| format!("POST {url}"))?;
        let status = r.status().as_u16();
        let body = r.body_mut().read_json::<Value>().unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    /// The committed height `node` reports, `None` when it does not answer.
    pub fn height(&self, node: &str) -> Option<u64> {
        self.get(&format!("{node}/v1/status"))
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| r.body["height"].as_u64())
    }

    /// Polls `GET /v1/jobs/{id}` on `node` until the status is final or `timeout` passes. A
    /// node that does not answer (restarting, or not yet listening) is asked again until then;
    /// the error names its last answer or failure.
    pub fn wait_job(&self, node: &str, job_id: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.get(&format!("{node}/v1/jobs/{job_id}")) {
                Ok(r)
                    if r.status == 200
                        && matches!(r.body["status"].as_str(), Some("finalized" | "failed")) =>
                {
                    return Ok(r.body);
                }
                Ok(r) => r.body.to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "job {job_id} on {node} not final after {timeout:?}: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Signs a job request; returns the JSON body for `POST /v1/jobs`.
pub fn signed_job(
    key: &PrivateKeySigner,
    domain: &Domain,
    model: ModelId,
    input: &str,
    max_fee: u128,
    nonce: u64,
) -> Result<Value> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let req = JobRequest {
        client: key.address(),
        model_id: model,
        input_hash: keccak256(input.as_bytes()),
        max_fee,
        nonce,
        expiry: now + 600,
    };
    let job = req.sign(key, domain)?;
    Ok(json!({"job": job, "input": input}))
}
