//! The Inference actor (inference nodes): runs jobs on the loaded models, proves them (a TEE
//! proof from the Attestation actor for models whose mode includes `tee`), signs the record,
//! publishes it on gossip and answers the gateway. Model execution runs on a blocking thread,
//! never on the actix threads. Advertises the models it can serve on the capabilities topic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use alloy::primitives::keccak256;
use chain::{Genesis, InferenceRecord, PrivateKeySigner, Proof, SignedJobRequest};
use kernels::Backend;

use crate::attestation::{Attest, Attestation};
use crate::mempool::{AddRecord, Mempool};
use crate::metrics::METRICS;
use crate::models::Models;
use crate::network::{InboundJob, Network, Publish};
use crate::protocol::{self, Capability, JobCall, JobReply, topics};

/// Run a job locally (the gateway on the same node).
#[derive(Message)]
#[rtype(result = "JobReply")]
pub struct RunJob(pub JobCall);

/// Which models this node serves.
#[derive(Message)]
#[rtype(result = "Vec<kernels::ModelId>")]
pub struct ServedModels;

/// How an inference node proves its runs.
pub struct Proving {
    /// The TEE that proves runs of `tee` models; `None` on a node without one.
    pub attestation: Option<Addr<Attestation>>,
    /// Testnet fault injection: sign a wrong output hash (a cheating node).
    pub faulty: bool,
}

pub struct Inference {
    genesis: Arc<Genesis>,
    models: Models,
    backend: Arc<dyn Backend>,
    key: Arc<PrivateKeySigner>,
    network: Addr<Network>,
    mempool: Addr<Mempool>,
    /// Proves runs of `tee` models; `None` on a node without a TEE.
    attestation: Option<Addr<Attestation>>,
    /// Models loaded here whose verification mode this node can satisfy.
    served: Vec<kernels::ModelId>,
    in_flight: u32,
    /// Testnet fault injection: sign a wrong output hash (a cheating node).
    faulty: bool,
}

impl Inference {
    pub fn new(
        genesis: Arc<Genesis>,
        models: Models,
        backend: Arc<dyn Backend>,
        key: PrivateKeySigner,
        network: Addr<Network>,
        mempool: Addr<Mempool>,
        proving: Proving,
    ) -> Self {
        let Proving {
            attestation,
            faulty,
        } = proving;
        if faulty {
            tracing::warn!("FAULT INJECTION: this inference node signs wrong output hashes");
        }
        let served = models
            .ids()
            .into_iter()
            .filter(|id| {
                let tee = genesis.model(id).is_some_and(|m| m.mode.needs_tee());
                if tee && attestation.is_none() {
                    tracing::warn!(model = %id, "model requires a TEE proof and this node has no TEE ([attestation] tee = \"none\"): not serving it");
                }
                !tee || attestation.is_some()
            })
            .collect();
        Inference {
            genesis,
            models,
            backend,
            key: Arc::new(key),
            network,
            mempool,
            attestation,
            served,
            in_flight: 0,
            faulty,
        }
    }

    fn advertise(&self) {
        let cap = Capability {
            address: self.key.address(),
            models: self.served.clone(),
            load: self.in_flight,
            issued_ms: chain::types::now_ms(),
        };
        self.network.do_send(Publish {
            topic: topics::CAPABILITIES,
            data: protocol::encode(&cap),
        });
    }

    fn refuse(code: &str, message: impl Into<String>) -> JobReply {
        JobReply::Refused {
            code: code.into(),
            message: message.into(),
        }
    }

    /// Checks the call before spending compute on it.
    fn admit(&self, job: &SignedJobRequest, input: &str) -> Result<Arc<kernels::Model>, JobReply> {
        let id = job
            .verify(self.genesis.chain_id)
            .map_err(|e| Self::refuse("bad_signature", e.to_string()))?;
        if input.len() > chain::record::MAX_INPUT_BYTES {
            return Err(Self::refuse("bad_input", "input too large"));
        }
        if keccak256(input.as_bytes()) != job.request.input_hash {
            return Err(Self::refuse("bad_input", "input does not match input_hash"));
        }
        let model = self
            .models
            .get(&job.request.model_id)
            .filter(|_| self.served.contains(&job.request.model_id))
            .ok_or_else(|| {
                Self::refuse(
                    "unknown_model",
                    format!("model {} is not served here", job.request.model_id),
                )
            })?;
        tracing::debug!(job = %id, "job admitted");
        Ok(model)
    }

    fn run(&mut self, call: JobCall, ctx: &mut Context<Self>) -> ResponseActFuture<Self, JobReply> {
        let model = match self.admit(&call.job, &call.input) {
            Ok(m) => m,
            Err(reply) => return Box::pin(actix::fut::ready(reply)),
        };
        self.in_flight += 1;
        let backend = self.backend.clone();
        let key = self.key.clone();
        let chain_id = self.genesis.chain_id;
        let faulty = self.faulty;
        let started = Instant::now();
        let _ = ctx;
        let job_id = call.job.request.id(chain_id);
        let attestation = self
            .genesis
            .model(&call.job.request.model_id)
            .filter(|m| m.mode.needs_tee())
            .and(self.attestation.clone());
        let work = async move {
            // The call travels to the blocking thread and back: no copy of the input.
            let computed = tokio::task::spawn_blocking(move || {
                model
                    .run(backend.as_ref(), call.input.as_bytes())
                    .map(|output| (output.hash(), output.to_json().to_string(), call))
                    .map_err(|e| Self::refuse("bad_input", e.to_string()))
            })
            .await
            .unwrap_or_else(|e| {
                Err(Self::refuse(
                    "internal",
                    format!("inference task failed: {e}"),
                ))
            })?;
            let (hash, output, call) = computed;
            let mut hash = chain::B256::from(hash);
            if faulty {
                hash.0[0] ^= 0xff;
            }
            let proof = match attestation {
                Some(att) => {
                    let leaf =
                        chain::record::leaf(&call.job.request, &hash, &key.address(), chain_id);
                    let proof = att
                        .send(Attest { leaf })
                        .await
                        .map_err(|e| Self::refuse("attestation_failed", e.to_string()))?
                        .map_err(|e| Self::refuse("attestation_failed", e))?;
                    Proof::Tee(proof)
                }
                None => Proof::Reexec,
            };
            let record = InferenceRecord::create(call.job, call.input, hash, proof, &key, chain_id)
                .map_err(|e| Self::refuse("internal", e.to_string()))?;
            Ok::<_, JobReply>((record, output))
        };
        Box::pin(work.into_actor(self).map(move |res, act, _| {
            act.in_flight = act.in_flight.saturating_sub(1);
            match res {
                Ok((record, output)) => {
                    METRICS.jobs_executed.inc();
                    tracing::info!(job = %job_id, ms = started.elapsed().as_millis() as u64, "job executed");
                    act.network.do_send(Publish { topic: topics::RECORDS, data: protocol::encode(&record) });
                    // Gossip does not deliver our own messages back to us.
                    act.mempool.do_send(AddRecord { id: job_id, record: record.clone() });
                    JobReply::Done { record: Box::new(record), output }
                }
                Err(reply) => reply,
            }
        }))
    }
}

impl Actor for Inference {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.advertise();
        ctx.run_interval(Duration::from_secs(2), |act, _| act.advertise());
    }
}

impl Handler<InboundJob> for Inference {
    type Result = ResponseActFuture<Self, JobReply>;
    fn handle(&mut self, msg: InboundJob, ctx: &mut Self::Context) -> Self::Result {
        self.run(msg.call, ctx)
    }
}

impl Handler<RunJob> for Inference {
    type Result = ResponseActFuture<Self, JobReply>;
    fn handle(&mut self, msg: RunJob, ctx: &mut Self::Context) -> Self::Result {
        self.run(msg.0, ctx)
    }
}

impl Handler<ServedModels> for Inference {
    type Result = Vec<kernels::ModelId>;
    fn handle(&mut self, _: ServedModels, _: &mut Self::Context) -> Self::Result {
        self.served.clone()
    }
}
