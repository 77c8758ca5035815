//! The Verifier actor: checks inference records before they are forwarded or included.
//!
//! Every node checks what needs no model: signatures, input hash, registered executor, known
//! model. Validators also re-execute a deterministic, seeded sample of `reexec` records on their
//! CPU backend (off the actix threads) and accept only a bit-identical output hash; a mismatch
//! is fraud: rejected on gossip (the relaying peer loses score) and logged.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use chain::{Genesis, InferenceRecord, JobId};
use kernels::Backend;
use libp2p::gossipsub::MessageAcceptance;

use crate::mempool::{AddRecord, Mempool};
use crate::metrics::METRICS;
use crate::models::Models;
use crate::network::{GossipRecord, Network, ReportValidation};

/// Remember this many verified job ids, so proposals need not re-execute what gossip did.
const VERIFIED_CACHE: usize = 100_000;

/// Verify records proposed in a block. `Err` names the first bad record.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct VerifyRecords(pub Vec<InferenceRecord>);

/// Why a record is refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Chain(#[from] chain::Error),
    #[error("model {0} is not available on this validator; cannot re-execute")]
    ModelMissing(kernels::ModelId),
    #[error("re-execution failed: {0}")]
    Execution(String),
    #[error("fraud: executor {executor} claimed output {claimed}, re-execution gives {actual}")]
    Fraud {
        executor: chain::Address,
        claimed: chain::B256,
        actual: chain::B256,
    },
}

impl RecordError {
    fn label(&self) -> &'static str {
        match self {
            RecordError::Chain(chain::Error::UnknownModel(_)) => "unknown_model",
            RecordError::Chain(chain::Error::UnknownExecutor(_)) => "unknown_executor",
            RecordError::Chain(_) => "invalid",
            RecordError::ModelMissing(_) => "model_missing",
            RecordError::Execution(_) => "execution",
            RecordError::Fraud { .. } => "fraud",
        }
    }
}

#[derive(Clone)]
pub struct Verifier {
    genesis: Arc<Genesis>,
    models: Models,
    backend: Arc<dyn Backend>,
    reexecute: bool,
    network: Addr<Network>,
    mempool: Addr<Mempool>,
    verified: HashSet<JobId>,
    verified_order: VecDeque<JobId>,
}

/// Stateless record checks, then re-execution when `reexecute` and the job is sampled.
fn check(
    genesis: &Genesis,
    models: &Models,
    backend: &dyn Backend,
    reexecute: bool,
    record: &InferenceRecord,
) -> Result<JobId, RecordError> {
    let id = record.verify_signatures(genesis.chain_id)?;
    if !genesis.is_inference_node(&record.executor) {
        return Err(chain::Error::UnknownExecutor(record.executor).into());
    }
    let model_id = record.job.request.model_id;
    if genesis.model(&model_id).is_none() {
        return Err(chain::Error::UnknownModel(model_id).into());
    }
    if reexecute && sampled(&id, genesis.params.reexec_sample_bps) {
        let model = models
            .get(&model_id)
            .ok_or(RecordError::ModelMissing(model_id))?;
        let started = Instant::now();
        let output = model
            .run(backend, record.input.as_bytes())
            .map_err(|e| RecordError::Execution(e.to_string()))?;
        METRICS
            .reexec_seconds
            .observe(started.elapsed().as_secs_f64());
        let actual = chain::B256::from(output.hash());
        if actual != record.output_hash {
            return Err(RecordError::Fraud {
                executor: record.executor,
                claimed: record.output_hash,
                actual,
            });
        }
    }
    Ok(id)
}

/// Deterministic sample: the first two bytes of the job id against the rate.
pub fn sampled(id: &JobId, rate_bps: u32) -> bool {
    let x = u16::from_be_bytes([id.0[0], id.0[1]]) as u32 % 10_000;
    x < rate_bps
}

impl Verifier {
    pub fn new(
        genesis: Arc<Genesis>,
        models: Models,
        backend: Arc<dyn Backend>,
        reexecute: bool,
        network: Addr<Network>,
        mempool: Addr<Mempool>,
    ) -> Self {
        Verifier {
            genesis,
            models,
            backend,
            reexecute,
            network,
            mempool,
            verified: HashSet::new(),
            verified_order: VecDeque::new(),
        }
    }

    fn remember(&mut self, id: JobId) {
        if self.verified.insert(id) {
            self.verified_order.push_back(id);
            if self.verified_order.len() > VERIFIED_CACHE
                && let Some(old) = self.verified_order.pop_front()
            {
                self.verified.remove(&old);
            }
        }
    }

    fn log_rejection(record: &InferenceRecord, e: &RecordError, chain_id: u64) {
        METRICS
            .records_rejected
            .with_label_values(&[e.label()])
            .inc();
        if let RecordError::Fraud { .. } = e {
            METRICS.fraud_detected.inc();
            tracing::error!(job = %record.job_id(chain_id), executor = %record.executor, error = %e, "FRAUD: record rejected");
        } else {
            tracing::warn!(job = %record.job_id(chain_id), error = %e, "record rejected");
        }
    }
}

impl Actor for Verifier {
    type Context = Context<Self>;
}

/// Runs [`check`] on a blocking thread.
async fn check_blocking(
    genesis: Arc<Genesis>,
    models: Models,
    backend: Arc<dyn Backend>,
    reexecute: bool,
    record: Arc<InferenceRecord>,
) -> Result<JobId, RecordError> {
    tokio::task::spawn_blocking(move || {
        check(&genesis, &models, backend.as_ref(), reexecute, &record)
    })
    .await
    .unwrap_or_else(|e| {
        Err(RecordError::Execution(format!(
            "verification task failed: {e}"
        )))
    })
}

impl Handler<GossipRecord> for Verifier {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: GossipRecord, _: &mut Self::Context) -> Self::Result {
        let record = Arc::new(msg.record);
        let fut = check_blocking(
            self.genesis.clone(),
            self.models.clone(),
            self.backend.clone(),
            self.reexecute,
            record.clone(),
        );
        let (mid, source) = (msg.id, msg.source);
        Box::pin(fut.into_actor(self).map(move |result, act, _| {
            let acceptance = match result {
                Ok(id) => {
                    METRICS.records_verified.inc();
                    act.remember(id);
                    let record = Arc::try_unwrap(record).unwrap_or_else(|r| (*r).clone());
                    act.mempool.do_send(AddRecord { id, record });
                    MessageAcceptance::Accept
                }
                Err(e) => {
                    Verifier::log_rejection(&record, &e, act.genesis.chain_id);
                    match e {
                        // Not the sender's fault: we lack the model.
                        RecordError::ModelMissing(_) => MessageAcceptance::Ignore,
                        _ => MessageAcceptance::Reject,
                    }
                }
            };
            act.network.do_send(ReportValidation {
                id: mid,
                source,
                acceptance,
            });
        }))
    }
}

impl Handler<VerifyRecords> for Verifier {
    type Result = ResponseActFuture<Self, Result<(), String>>;
    fn handle(&mut self, msg: VerifyRecords, _: &mut Self::Context) -> Self::Result {
        let chain_id = self.genesis.chain_id;
        let todo: Vec<InferenceRecord> = msg
            .0
            .into_iter()
            .filter(|r| !self.verified.contains(&r.job_id(chain_id)))
            .collect();
        let (g, m, b, re) = (
            self.genesis.clone(),
            self.models.clone(),
            self.backend.clone(),
            self.reexecute,
        );
        let fut = async move {
            let mut ok = Vec::new();
            for record in todo {
                let record = Arc::new(record);
                match check_blocking(g.clone(), m.clone(), b.clone(), re, record.clone()).await {
                    Ok(id) => ok.push(id),
                    Err(e) => {
                        Verifier::log_rejection(&record, &e, g.chain_id);
                        return (
                            ok,
                            Err(format!("record {}: {e}", record.job_id(g.chain_id))),
                        );
                    }
                }
            }
            (ok, Ok(()))
        };
        Box::pin(fut.into_actor(self).map(|(ok, result), act, _| {
            for id in ok {
                act.remember(id);
            }
            result
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_deterministic_and_follows_the_rate() {
        let ids: Vec<JobId> = (0..2000u64)
            .map(|i| JobId(alloy::primitives::keccak256(i.to_be_bytes())))
            .collect();
        assert!(ids.iter().all(|id| sampled(id, 10_000)));
        assert!(ids.iter().all(|id| !sampled(id, 0)));
        let n = ids.iter().filter(|id| sampled(id, 2_500)).count();
        assert!((400..600).contains(&n), "{n} of 2000 sampled at 25%");
        assert_eq!(
            ids.iter().filter(|id| sampled(id, 2_500)).count(),
            ids.iter().filter(|id| sampled(id, 2_500)).count()
        );
    }
}
