//! The Verifier actor: checks inference records before they are forwarded or included.
//!
//! Every node checks what needs no model: signatures, input hash, registered executor, known
//! model, and, for models whose mode includes `tee`, the record's SEV-SNP proof (VCEK chain to
//! the genesis roots, report signature, policy, measurement, TCB, and the Merkle binding of the
//! record to the report; chains and reports are cached, so a batch costs one signature check).
//! Validators also re-execute a deterministic, seeded sample of records of `reexec` and
//! `tee+reexec` models on their CPU backend (off the actix threads) and accept only a
//! bit-identical output hash; a mismatch is fraud. Rejected records are refused on gossip (the
//! relaying peer loses score), counted by reason and logged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chain::evidence::FraudClaim;
use chain::{Admission, AdmissionError, B256, InferenceRecord, JobId, VerifiedRecord};
use kernels::Backend;
use libp2p::gossipsub::MessageAcceptance;

use crate::mempool::{AddRecord, Committed, Mempool};
use crate::metrics::METRICS;
use crate::models::Models;
use crate::network::{GossipRecord, Network, ReportValidation};
use crate::settlement::GetJob;

/// Remember at most this many verified records (by leaf), so proposals need not re-execute what
/// gossip did. Records leave when their block is committed (settled records are refused by the
/// job lookup instead); the limit holds only while jobs pile up unsettled, as twice the
/// mempool's record capacity.
const VERIFIED_CACHE: usize = 100_000;

/// Remember at most this many records found false (by leaf).
const FRAUD_CACHE: usize = 4096;

/// Records found false here, by leaf, with the output re-execution gave: a copy arriving again
/// or a fraud report naming one is settled without running the model again, and each fraud is
/// counted and logged once, however it reached this node (its gossiped record, a proposal, or
/// another validator's report arriving first).
#[derive(Default)]
struct FraudLeaves {
    outputs: HashMap<B256, FraudClaim>,
    order: VecDeque<B256>,
}

impl FraudLeaves {
    fn get(&self, leaf: &B256) -> Option<&FraudClaim> {
        self.outputs.get(leaf)
    }

    fn contains(&self, leaf: &B256) -> bool {
        self.outputs.contains_key(leaf)
    }

    /// Whether `leaf` was new.
    fn insert(&mut self, leaf: B256, actual: FraudClaim) -> bool {
        if self.outputs.contains_key(&leaf) {
            return false;
        }
        self.outputs.insert(leaf, actual);
        self.order.push_back(leaf);
        while self.outputs.len() > FRAUD_CACHE {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.outputs.remove(&old);
        }
        true
    }
}

/// Leaves of records verified here, each with its job, until the job is settled or the cache
/// is full (then the oldest go first).
#[derive(Default)]
struct VerifiedLeaves {
    leaves: HashMap<B256, JobId>,
    /// The last leaf remembered for each job: the one its block is expected to carry.
    by_job: HashMap<JobId, B256>,
    /// Insertion order, for eviction; may hold leaves already removed, skipped on the way out
    /// and swept when they outnumber the live ones.
    order: VecDeque<B256>,
    limit: usize,
}

impl VerifiedLeaves {
    fn new(limit: usize) -> Self {
        VerifiedLeaves {
            limit,
            ..Default::default()
        }
    }

    fn contains(&self, leaf: &B256) -> bool {
        self.leaves.contains_key(leaf)
    }

    fn insert(&mut self, leaf: B256, job: JobId) {
        if self.leaves.insert(leaf, job).is_some() {
            return;
        }
        self.by_job.insert(job, leaf);
        self.order.push_back(leaf);
        while self.leaves.len() > self.limit {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.forget(&old);
        }
    }

    fn forget(&mut self, leaf: &B256) {
        if let Some(job) = self.leaves.remove(leaf)
            && self.by_job.get(&job) == Some(leaf)
        {
            self.by_job.remove(&job);
        }
    }

    /// The jobs of a committed block are settled: their records need no cache entry.
    fn settle(&mut self, jobs: &[JobId]) {
        for job in jobs {
            if let Some(leaf) = self.by_job.remove(job) {
                self.leaves.remove(&leaf);
            }
        }
        if self.order.len() > 2 * self.leaves.len() + 1024 {
            let leaves = &self.leaves;
            self.order.retain(|l| leaves.contains_key(l));
        }
    }

    fn len(&self) -> usize {
        self.leaves.len()
    }
}

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
    /// The executor or model may not serve jobs now (jailed, unbonded, deactivated).
    #[error("{0}")]
    Refused(String),
    #[error("invalid TEE proof: {0}")]
    Attestation(#[from] chain::attestation::AttestationError),
    #[error("fraud: executor {executor} claimed output {claimed}, re-execution gives {actual}")]
    Fraud {
        executor: chain::Address,
        claimed: chain::B256,
        actual: chain::B256,
    },
    #[error(
        "fraud: executor {executor} claimed {claimed} units, re-execution gives the output and {actual}"
    )]
    UnitsFraud {
        executor: chain::Address,
        claimed: u64,
        actual: u64,
    },
}

impl From<AdmissionError> for RecordError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::Chain(e) => RecordError::Chain(e),
            AdmissionError::Attestation(e) => RecordError::Attestation(e),
            AdmissionError::Refused(e) => RecordError::Refused(e),
        }
    }
}

impl RecordError {
    fn label(&self) -> String {
        match self {
            RecordError::Chain(chain::Error::UnknownModel(_)) => "unknown_model".into(),
            RecordError::Chain(chain::Error::UnknownExecutor(_)) => "unknown_executor".into(),
            RecordError::Chain(_) => "invalid".into(),
            RecordError::Attestation(e) => format!("tee_{}", e.label()),
            RecordError::ModelMissing(_) => "model_missing".into(),
            RecordError::Execution(_) => "execution".into(),
            RecordError::Refused(_) => "refused".into(),
            RecordError::Fraud { .. } | RecordError::UnitsFraud { .. } => "fraud".into(),
        }
    }

    /// What a fraud report of this rejection claims, when it is one re-execution proved.
    fn claim(&self) -> Option<FraudClaim> {
        match self {
            RecordError::Fraud { actual, .. } => Some(FraudClaim::Output {
                recomputed: *actual,
            }),
            RecordError::UnitsFraud { actual, .. } => Some(FraudClaim::Units {
                recomputed: *actual,
            }),
            _ => None,
        }
    }
}

pub struct Verifier {
    checker: Checker,
    network: Addr<Network>,
    mempool: Addr<Mempool>,
    /// Where settled jobs are looked up, so a replayed record costs one read, not a check.
    jobs: Recipient<GetJob>,
    /// Leaves of records verified here ([`InferenceRecord::leaf`]: job, model, input, output
    /// and executor), not job ids: a second record of a verified job, with another output
    /// signed by its executor, is not the record that was verified and is checked in full.
    verified: VerifiedLeaves,
    /// Gossiped records being checked now: a copy arriving meanwhile is not checked again.
    checking: HashSet<JobId>,
    /// This validator's key: the false records it catches are reported to the chain.
    reporter: Option<Arc<chain::PrivateKeySigner>>,
    /// Inference nodes reported, with when: one report per node while its jail lasts.
    reported: HashMap<chain::Address, Instant>,
    /// Records found false here.
    frauds: FraudLeaves,
}

/// Checks the fraud claims of `ReportFraud` transactions by re-executing each record: `Ok`
/// when every claimed output is what this node computes and differs from the record's.
#[derive(Message)]
#[rtype(result = "Result<(), FraudCheckError>")]
pub struct CheckFraud(pub Vec<chain::evidence::FraudEvidence>);

/// Why a fraud claim was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FraudCheckError {
    /// Re-execution contradicts the claim: whoever sends it is at fault.
    #[error("false fraud claim: {0}")]
    False(String),
    /// This node cannot tell (the model is not here, the run failed): nobody is at fault.
    #[error("cannot check the fraud claim: {0}")]
    Unable(String),
}

/// A node reported for fraud is not reported again for this long (it is jailed meanwhile).
const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// What the checks need, cheap to clone into a blocking task.
#[derive(Clone)]
struct Checker {
    admission: Admission,
    models: Models,
    backend: Arc<dyn Backend>,
    reexecute: bool,
}

impl Checker {
    /// The admission checks (signatures, executor, model, TEE proof), then re-execution when
    /// `reexecute`, the model's mode includes it and the job is sampled.
    fn check(&self, record: Arc<InferenceRecord>) -> Result<VerifiedRecord, RecordError> {
        let live = self.admission.registrations();
        let model_id = record.job.request.model_id;
        // Admission refuses an unknown model; `None` never reaches the modes below.
        let mode = live.registry.models.get(&model_id).map(|m| m.mode);
        let started = Instant::now();
        let verified = self.admission.check(record)?;
        if mode.is_some_and(|m| m.needs_tee()) {
            METRICS
                .tee_verify_seconds
                .observe(started.elapsed().as_secs_f64());
            METRICS.tee_verified.inc();
        }
        let record = verified.record();
        if self.reexecute
            && mode.is_some_and(|m| m.needs_reexec())
            && sampled(&verified.id(), live.registry.params.reexec_sample_bps)
        {
            let model = self
                .models
                .get(&model_id)
                .ok_or(RecordError::ModelMissing(model_id))?;
            let started = Instant::now();
            let (actual, units) = recompute(&model, self.backend.as_ref(), record)
                .map_err(|e| RecordError::Execution(e.to_string()))?;
            METRICS
                .reexec_seconds
                .observe(started.elapsed().as_secs_f64());
            if actual != record.output_hash {
                return Err(RecordError::Fraud {
                    executor: record.executor,
                    claimed: record.output_hash,
                    actual,
                });
            }
            if units != record.units {
                return Err(RecordError::UnitsFraud {
                    executor: record.executor,
                    claimed: record.units,
                    actual: units,
                });
            }
        }
        Ok(verified)
    }
}

/// What re-executing `record` gives: its output hash and units. A generation whose record is
/// that run cut short by its client (a stream left: fewer tokens, finish `cancelled`) gives
/// the record's own — the cut is the record's units, and its tokens a proper prefix of the
/// run's — so a client leaving is never taken for fraud, nor fraud for a client leaving.
///
/// A record counting fewer tokens than the job allowed is first checked against a run of
/// one token more than it kept ([`kernels::Model::run_for_units`]): a true cancellation is
/// settled there, without decoding the `max_tokens` its client asked for and left. Every
/// other outcome is decided on the whole run, as before, so the hash this returns (what a
/// fraud claim names) is always the whole run's.
fn recompute(
    model: &kernels::Model,
    backend: &dyn Backend,
    record: &InferenceRecord,
) -> Result<(B256, u64), kernels::Error> {
    let input = record.input.as_bytes();
    let (output, cut) = model.run_for_units(backend, input, record.units)?;
    let cancelled = |output: &kernels::Output| {
        output
            .cancelled_hash(record.units)
            .is_some_and(|cut| B256::from(cut) == record.output_hash)
    };
    if cut && cancelled(&output) {
        return Ok((record.output_hash, record.units));
    }
    let output = if cut {
        model.run(backend, input)?
    } else {
        output
    };
    let full = B256::from(output.hash());
    if full != record.output_hash && cancelled(&output) {
        return Ok((record.output_hash, record.units));
    }
    Ok((full, output.units(input.len())))
}

/// Deterministic sample: the first two bytes of the job id against the rate.
pub fn sampled(id: &JobId, rate_bps: u32) -> bool {
    let x = u16::from_be_bytes([id.0[0], id.0[1]]) as u32 % 10_000;
    x < rate_bps
}

impl Verifier {
    pub fn new(
        admission: Admission,
        models: Models,
        backend: Arc<dyn Backend>,
        reexecute: bool,
        network: Addr<Network>,
        mempool: Addr<Mempool>,
        jobs: Recipient<GetJob>,
    ) -> Self {
        Verifier {
            checker: Checker {
                admission,
                models,
                backend,
                reexecute,
            },
            network,
            mempool,
            jobs,
            verified: VerifiedLeaves::new(VERIFIED_CACHE),
            checking: HashSet::new(),
            reporter: None,
            reported: HashMap::new(),
            frauds: FraudLeaves::default(),
        }
    }

    /// Reports the false records this verifier catches, signed with `key`.
    pub fn with_reporter(mut self, key: chain::PrivateKeySigner) -> Self {
        self.reporter = Some(Arc::new(key));
        self
    }

    /// Reports `record` as fraud to the chain (through the mempool, as this node's own
    /// transaction), once per node while its punishment lasts.
    fn report(&mut self, record: &InferenceRecord, e: &RecordError) {
        use chain::attestation::AttestationError;
        let claim = match e {
            // Our own roots are unusable: that proves nothing against the node.
            RecordError::Attestation(AttestationError::BadRoots(_)) => return,
            RecordError::Attestation(_) => FraudClaim::TeeProof,
            e => match e.claim() {
                Some(claim) => claim,
                None => return,
            },
        };
        let Some(key) = self.reporter.clone() else {
            return;
        };
        let node = record.executor;
        if self
            .reported
            .get(&node)
            .is_some_and(|at| at.elapsed() < REPORT_AGAIN_AFTER)
        {
            return;
        }
        self.reported.insert(node, Instant::now());
        let evidence = chain::evidence::FraudEvidence {
            record: record.clone(),
            claim,
        };
        let fut = self.mempool.send(crate::mempool::AddOwnTx {
            key,
            action: chain::Action::ReportFraud(Box::new(evidence)),
        });
        actix::spawn(async move {
            match fut.await {
                Ok(Ok(hash)) => tracing::warn!(%node, tx = %hash, "fraud reported to the chain"),
                Ok(Err(err)) => tracing::info!(%node, error = %err, "fraud not reported"),
                Err(err) => tracing::warn!(%node, error = %err, "mempool unavailable"),
            }
        });
    }

    fn remember(&mut self, leaf: B256, job: JobId) {
        self.verified.insert(leaf, job);
        METRICS.verified_cache.set(self.verified.len() as i64);
    }

    fn log_rejection(&mut self, record: &InferenceRecord, e: &RecordError) {
        METRICS
            .records_rejected
            .with_label_values(&[&e.label()])
            .inc();
        let job = record.job_id(self.checker.admission.domain());
        if let Some(claim) = e.claim() {
            return self.note_fraud(record, claim, "record rejected");
        }
        match e {
            RecordError::Attestation(_) => {
                tracing::error!(%job, executor = %record.executor, check = %e.label(), error = %e, "INVALID TEE PROOF: record rejected")
            }
            _ => tracing::warn!(%job, error = %e, "record rejected"),
        }
    }

    /// `record`'s re-execution here gave what `claim` says, not what the record does: counted
    /// and logged the first time this node sees it, whichever way it came.
    fn note_fraud(&mut self, record: &InferenceRecord, claim: FraudClaim, what: &str) {
        let domain = *self.checker.admission.domain();
        let e = match &claim {
            FraudClaim::Output { recomputed } => RecordError::Fraud {
                executor: record.executor,
                claimed: record.output_hash,
                actual: *recomputed,
            },
            FraudClaim::Units { recomputed } => RecordError::UnitsFraud {
                executor: record.executor,
                claimed: record.units,
                actual: *recomputed,
            },
            FraudClaim::TeeProof => return,
        };
        if !self.frauds.insert(record.leaf(&domain), claim) {
            return;
        }
        METRICS.fraud_detected.inc();
        tracing::error!(job = %record.job_id(&domain), executor = %record.executor, error = %e, "FRAUD: {what}");
    }
}

impl Actor for Verifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::network::RECORDS_MAILBOX);
    }
}

/// Runs [`Checker::check`] on a blocking thread.
async fn check_blocking(
    v: Checker,
    record: Arc<InferenceRecord>,
) -> Result<VerifiedRecord, RecordError> {
    tokio::task::spawn_blocking(move || v.check(record))
        .await
        .unwrap_or_else(|e| {
            Err(RecordError::Execution(format!(
                "verification task failed: {e}"
            )))
        })
}

/// Why a gossiped record was dropped before any signature or execution work.
fn skip(reason: &'static str) -> Option<MessageAcceptance> {
    METRICS.records_rejected.with_label_values(&[reason]).inc();
    Some(MessageAcceptance::Ignore)
}

impl Handler<GossipRecord> for Verifier {
    type Result = ResponseActFuture<Self, ()>;
    /// The cheap checks first: a record already verified, being verified, expired, or of a job
    /// already settled is not checked, kept or relayed (none of that is the relaying peer's
    /// fault: honest peers relay in good faith). Only then signatures and re-execution.
    fn handle(&mut self, msg: GossipRecord, _: &mut Self::Context) -> Self::Result {
        let (mid, source) = (msg.id, msg.source);
        let id = msg.record.job_id(self.checker.admission.domain());
        let expiry_ms = msg.record.job.request.expiry.saturating_mul(1000);
        let leaf = msg.record.leaf(self.checker.admission.domain());
        let early = if self.verified.contains(&leaf) || self.checking.contains(&id) {
            skip("duplicate")
        } else if self.frauds.contains(&leaf) {
            // Found false here before: refused again without running the model.
            METRICS.records_rejected.with_label_values(&["fraud"]).inc();
            Some(MessageAcceptance::Reject)
        } else if expiry_ms < chain::types::now_ms() {
            skip("expired")
        } else {
            None
        };
        if let Some(acceptance) = early {
            self.network.do_send(ReportValidation {
                id: mid,
                source,
                acceptance,
            });
            return Box::pin(fut::ready(()));
        }
        self.checking.insert(id);
        let record = Arc::new(msg.record);
        let checker = self.checker.clone();
        let jobs = self.jobs.clone();
        let fut = {
            let record = record.clone();
            async move {
                match jobs.send(GetJob(id)).await {
                    Ok(Ok(Some(_))) => return None,
                    Ok(Ok(None)) => {}
                    // Cannot tell: check it; block validation refuses a settled job anyway.
                    Ok(Err(e)) => tracing::warn!(job = %id, error = %e, "job lookup failed"),
                    Err(e) => tracing::warn!(job = %id, error = %e, "job lookup failed"),
                }
                Some(check_blocking(checker, record).await)
            }
        };
        Box::pin(fut.into_actor(self).map(move |result, act, _| {
            act.checking.remove(&id);
            let Some(result) = result else {
                // Settled: the job lookup refuses any copy that comes later.
                skip("settled");
                act.network.do_send(ReportValidation {
                    id: mid,
                    source,
                    acceptance: MessageAcceptance::Ignore,
                });
                return;
            };
            let acceptance = match result {
                Ok(verified) => {
                    METRICS.records_verified.inc();
                    act.remember(leaf, id);
                    act.mempool.do_send(AddRecord(verified));
                    MessageAcceptance::Accept
                }
                Err(e) => {
                    act.log_rejection(&record, &e);
                    act.report(&record, &e);
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

impl Handler<Committed> for Verifier {
    type Result = ();
    fn handle(&mut self, msg: Committed, _: &mut Self::Context) {
        self.verified.settle(&msg.jobs);
        METRICS.verified_cache.set(self.verified.len() as i64);
    }
}

impl Handler<VerifyRecords> for Verifier {
    type Result = ResponseActFuture<Self, Result<(), String>>;
    fn handle(&mut self, msg: VerifyRecords, _: &mut Self::Context) -> Self::Result {
        let domain = *self.checker.admission.domain();
        // Each record's leaf once: for the records found false, the verified ones, and after.
        let leaves: Vec<(B256, InferenceRecord)> =
            msg.0.into_iter().map(|r| (r.leaf(&domain), r)).collect();
        if let Some((_, r)) = leaves.iter().find(|(leaf, _)| self.frauds.contains(leaf)) {
            METRICS.records_rejected.with_label_values(&["fraud"]).inc();
            let e = format!(
                "record {}: found false here before (fraud)",
                r.job_id(&domain)
            );
            return Box::pin(fut::ready(Err(e)));
        }
        let todo: Vec<(B256, InferenceRecord)> = leaves
            .into_iter()
            .filter(|(leaf, _)| !self.verified.contains(leaf))
            .collect();
        let checker = self.checker.clone();
        let fut = async move {
            let mut ok = Vec::new();
            for (leaf, record) in todo {
                let record = Arc::new(record);
                match check_blocking(checker.clone(), record.clone()).await {
                    Ok(verified) => ok.push((leaf, verified.id())),
                    Err(e) => return (ok, Some((record, e))),
                }
            }
            (ok, None)
        };
        Box::pin(fut.into_actor(self).map(move |(ok, rejected), act, _| {
            for (leaf, job) in ok {
                act.remember(leaf, job);
            }
            match rejected {
                None => Ok(()),
                Some((record, e)) => {
                    act.log_rejection(&record, &e);
                    Err(format!("record {}: {e}", record.job_id(&domain)))
                }
            }
        }))
    }
}

impl Handler<CheckFraud> for Verifier {
    type Result = ResponseActFuture<Self, Result<(), FraudCheckError>>;
    /// Claims about records already found false here, with the same recomputed output, hold
    /// without running the model again; the others are re-executed off the actix threads, and
    /// each confirmed one is counted as fraud detected here.
    fn handle(&mut self, msg: CheckFraud, _: &mut Self::Context) -> Self::Result {
        let domain = *self.checker.admission.domain();
        let todo: Vec<chain::evidence::FraudEvidence> = msg
            .0
            .into_iter()
            .filter(|f| match &f.claim {
                FraudClaim::Output { .. } | FraudClaim::Units { .. } => {
                    self.frauds.get(&f.record.leaf(&domain)) != Some(&f.claim)
                }
                FraudClaim::TeeProof => false,
            })
            .collect();
        let checker = self.checker.clone();
        let fut = async move {
            tokio::task::spawn_blocking(move || {
                for f in &todo {
                    checker.check_fraud(f)?;
                }
                Ok(todo)
            })
            .await
            .map_err(|e| FraudCheckError::Unable(e.to_string()))?
        };
        Box::pin(fut.into_actor(self).map(|confirmed, act, _| {
            for f in confirmed? {
                act.note_fraud(&f.record, f.claim, "a reported record re-executed here");
            }
            Ok(())
        }))
    }
}

impl Checker {
    /// A fraud claim's re-execution: `Ok` when this node computes the claimed output (or, for a
    /// units claim, the record's output and the claimed units) and it differs from the record's.
    /// TEE claims are the chain's own check.
    fn check_fraud(&self, f: &chain::evidence::FraudEvidence) -> Result<(), FraudCheckError> {
        if f.claim == FraudClaim::TeeProof {
            return Ok(());
        }
        let record = &f.record;
        let model_id = record.job.request.model_id;
        let model = self
            .models
            .get(&model_id)
            .ok_or_else(|| FraudCheckError::Unable(format!("model {model_id} is not here")))?;
        let (actual, units) = recompute(&model, self.backend.as_ref(), record).map_err(|e| {
            FraudCheckError::Unable(format!("re-executing the accused record: {e}"))
        })?;
        let (same, claimed) = match f.claim {
            FraudClaim::Output { recomputed } => (
                (actual == record.output_hash)
                    .then(|| format!("the record's output {actual} is what re-execution gives")),
                (actual == recomputed).then_some(()).ok_or(format!(
                    "re-execution gives {actual}, the claim says {recomputed}"
                )),
            ),
            FraudClaim::Units { recomputed } => (
                (units == record.units)
                    .then(|| format!("the record's {units} units are what re-execution gives")),
                (actual == record.output_hash && units == recomputed)
                    .then_some(())
                    .ok_or(format!(
                        "re-execution gives {actual} and {units} units, the claim says the \
                         record's output and {recomputed} units"
                    )),
            ),
            FraudClaim::TeeProof => return Ok(()),
        };
        claimed.map_err(FraudCheckError::False)?;
        match same {
            Some(why) => Err(FraudCheckError::False(why)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chain::Genesis;
    use chain::attestation::Tcb;
    use chain::attestation::sim::{ReportRequest, SimRoot};
    use chain::genesis::{ModelEntry, Params, TeeParams, VerificationMode};
    use chain::record::{JobRequest, Proof, TeeProof};
    use chain::signing::seeded_key;

    /// Governance's TEE allowlist reaches admission: with the record's measurement revoked,
    /// its genuine report is refused; allowed again, accepted.
    #[test]
    fn admission_follows_the_tee_allowlist() {
        let (genesis, make) = tee_fixture();
        let output = chain::B256::repeat_byte(1);
        let record = Arc::new(make(&genesis, output, output, true));
        let admission = Admission::new(
            Arc::new(genesis.clone()),
            genesis
                .tee
                .as_ref()
                .map(|t| Arc::new(t.verifier().unwrap())),
        );
        admission.check(record.clone()).unwrap();
        let with = |measurements: Vec<String>| {
            let mut r = chain::Registrations::of(&chain::Ledger::from_genesis(&genesis));
            let mut reg = (*r.registry).clone();
            reg.measurements = measurements.into_iter().collect();
            r.registry = Arc::new(reg);
            admission.update(r);
        };
        with(vec!["ab".repeat(48)]);
        assert!(matches!(
            admission.check(record.clone()),
            Err(AdmissionError::Attestation(
                chain::attestation::AttestationError::Measurement(_)
            ))
        ));
        with(vec![]);
        assert!(admission.check(record.clone()).is_err(), "nothing approved");
        with(genesis.tee.as_ref().unwrap().measurements.clone());
        admission.check(record).unwrap();
    }

    /// A seeded model under `dir`, its true output hash and units for its example input, and
    /// records of that job with any output and units.
    fn fraud_fixture(
        dir: &std::path::Path,
    ) -> (
        Models,
        (B256, u64),
        impl Fn(B256, u64) -> InferenceRecord + use<>,
    ) {
        let spec = kernels::MlpSpec {
            input_dim: 4,
            hidden_dims: vec![8],
            num_classes: 3,
        };
        kernels::write_seeded_mlp(&dir.join("m"), "m", 5, &spec).unwrap();
        let models = Models::load_dir(dir).unwrap();
        let model_id = models.ids()[0];
        let model = models.get(&model_id).unwrap();
        let input = String::from_utf8(model.example_input()).unwrap();
        let truth = B256::from(
            model
                .run(kernels::select("cpu").unwrap().as_ref(), input.as_bytes())
                .unwrap()
                .hash(),
        );
        let units = input.len() as u64;
        let record = move |output, units| reexec_record(&input, model_id, output, units);
        (models, (truth, units), record)
    }

    /// A re-execution record of `input` on `model_id` claiming `output` and `units`, signed by
    /// seeded client and executor keys.
    fn reexec_record(
        input: &str,
        model_id: kernels::ModelId,
        output: B256,
        units: u64,
    ) -> InferenceRecord {
        let (client, exec) = (seeded_key(3, 1), seeded_key(3, 2));
        let domain = tee_fixture().0.domain();
        let job = JobRequest {
            client: client.address(),
            model_id,
            input_hash: alloy::primitives::keccak256(input.as_bytes()),
            max_fee: 1,
            nonce: 1,
            expiry: u64::MAX,
        }
        .sign(&client, &domain)
        .unwrap();
        InferenceRecord::create(
            job,
            input.into(),
            (output, units),
            Proof::Reexec,
            &exec,
            &domain,
        )
        .unwrap()
    }

    /// Re-executing a generation record: the whole run's record and a record of that run cut
    /// short by its client (after 0, 1 or 3 tokens, checked on one token more) are the record's
    /// own; a "cancelled" record whose tokens are not the run's, whose count is not where its
    /// tokens end, or that claims a cut at or past the run's end gives the whole run's hash
    /// and units, which the caller then reports.
    #[test]
    fn cancelled_generation_records_are_checked_on_their_tokens() {
        let model =
            kernels::Model::from_gguf_bytes("seeded", kernels::seeded_llama_gguf(3, 2)).unwrap();
        let cpu = kernels::CpuBackend::new();
        let input = r#"{"messages": [{"role": "user", "content": "the cat"}], "max_tokens": 20}"#;
        let full = model.run(&cpu, input.as_bytes()).unwrap();
        let c = full.completion.clone().unwrap();
        let (prompt, n) = (c.prompt_tokens.len() as u64, c.tokens.len() as u64);
        let whole = (B256::from(full.hash()), prompt + n);
        let check = |output: B256, units: u64| {
            let record = reexec_record(input, kernels::ModelId([7; 32]), output, units);
            recompute(&model, &cpu, &record).unwrap()
        };
        assert_eq!(check(whole.0, whole.1), whole);
        for kept in [0, 1, 3] {
            let units = prompt + kept;
            let cut = B256::from(full.cancelled_hash(units).unwrap());
            assert_eq!(check(cut, units), (cut, units), "left after {kept}");
            // The same cut counted one token more or less is not what those tokens cost.
            assert_eq!(check(cut, units + 1), whole);
            assert_eq!(check(cut, units - 1), whole);
        }
        // Other tokens, cut at 3.
        let mut other = c.clone();
        other.tokens[1] ^= 1;
        let forged = kernels::Output::completion(other)
            .cancelled_hash(prompt + 3)
            .unwrap();
        assert_eq!(check(B256::from(forged), prompt + 3), whole);
        // "Cancelled" at the run's own end (not a cut: the run ends there by itself).
        let mut at_end = c.clone();
        at_end.finish = kernels::FinishReason::Cancelled;
        let at_end = B256::from(at_end.hash());
        assert_eq!(check(at_end, prompt + n), whole);
        // The whole run's hash under a smaller count.
        assert_eq!(check(whole.0, prompt + 2), whole);
    }

    /// A fraud claim is re-executed: only the output (or units) this node computes, when it
    /// differs from the record's, passes; a claim of the record's own output or of another
    /// output is refused, and so is one whose model is not here.
    #[test]
    fn fraud_claims_are_re_executed() {
        use chain::evidence::{FraudClaim, FraudEvidence};
        let dir = tempfile::tempdir().unwrap();
        let (models, (truth, units), record) = fraud_fixture(dir.path());
        let backend = kernels::select("cpu").unwrap();
        let genesis = tee_fixture().0;
        let checker = Checker {
            admission: Admission::new(Arc::new(genesis), None),
            models: models.clone(),
            backend,
            reexecute: true,
        };
        let claim = |r: InferenceRecord, recomputed| FraudEvidence {
            record: r,
            claim: FraudClaim::Output { recomputed },
        };
        let liar = record(B256::repeat_byte(1), units);
        checker.check_fraud(&claim(liar.clone(), truth)).unwrap();
        // Contradicted by re-execution: false (the sender is at fault).
        let e = checker
            .check_fraud(&claim(liar.clone(), B256::repeat_byte(2)))
            .unwrap_err();
        assert!(
            matches!(&e, FraudCheckError::False(m) if m.contains("re-execution gives")),
            "{e}"
        );
        let honest = record(truth, units);
        let e = checker
            .check_fraud(&claim(honest.clone(), truth))
            .unwrap_err();
        assert!(
            matches!(&e, FraudCheckError::False(m) if m.contains("is what re-execution gives")),
            "{e}"
        );
        // Units: a record with the true output that miscounts is caught; claims of its own
        // units, of other units, or against an honest record are false.
        let units_claim = |r: InferenceRecord, recomputed| FraudEvidence {
            record: r,
            claim: FraudClaim::Units { recomputed },
        };
        let miscounted = record(truth, units - 1);
        checker
            .check_fraud(&units_claim(miscounted.clone(), units))
            .unwrap();
        for (r, n, why) in [
            (miscounted.clone(), units - 1, "re-execution gives"),
            (miscounted, units + 3, "re-execution gives"),
            (honest.clone(), units, "are what re-execution gives"),
            (honest, units + 1, "re-execution gives"),
            (liar.clone(), units, "re-execution gives"),
        ] {
            let e = checker.check_fraud(&units_claim(r, n)).unwrap_err();
            assert!(
                matches!(&e, FraudCheckError::False(m) if m.contains(why)),
                "{n}: {e}"
            );
        }
        // Not checkable here: nobody's fault.
        let empty = Checker {
            models: Models::default(),
            ..checker
        };
        let e = empty.check_fraud(&claim(liar, truth)).unwrap_err();
        assert!(
            matches!(&e, FraudCheckError::Unable(m) if m.contains("not here")),
            "{e}"
        );
    }

    fn leaf(i: u8) -> (B256, JobId) {
        (B256::repeat_byte(i), JobId(B256::repeat_byte(i ^ 0x80)))
    }

    #[test]
    fn verified_leaves_leave_when_settled_and_stay_bounded() {
        let mut cache = VerifiedLeaves::new(4);
        for i in 0..3 {
            let (l, j) = leaf(i);
            cache.insert(l, j);
        }
        assert_eq!(cache.len(), 3);
        // A block settles jobs 0 and 2: their leaves go, job 1's stays.
        cache.settle(&[leaf(0).1, leaf(2).1]);
        assert!(!cache.contains(&leaf(0).0) && !cache.contains(&leaf(2).0));
        assert!(cache.contains(&leaf(1).0));
        assert_eq!(cache.len(), 1);
        // Full: the oldest live leaf goes first; removed ones are skipped.
        for i in 3..7 {
            let (l, j) = leaf(i);
            cache.insert(l, j);
        }
        assert_eq!(cache.len(), 4);
        assert!(!cache.contains(&leaf(1).0), "oldest evicted");
        assert!((3..7).all(|i| cache.contains(&leaf(i).0)));
        // A second record of a job: both leaves known; settling the job drops the last one,
        // the first leaves by age.
        let (other, _) = leaf(40);
        cache.insert(other, leaf(6).1);
        assert!(cache.contains(&other) && cache.contains(&leaf(6).0));
        cache.settle(&[leaf(6).1]);
        assert!(!cache.contains(&other));
    }

    #[test]
    fn verified_leaves_order_is_swept_when_mostly_settled() {
        let mut cache = VerifiedLeaves::new(100_000);
        for round in 0..20u32 {
            let jobs: Vec<JobId> = (0..1000u32)
                .map(|i| {
                    let n = round * 1000 + i;
                    let mut b = [0u8; 32];
                    b[..4].copy_from_slice(&n.to_be_bytes());
                    let l = B256::from(b);
                    b[31] = 1;
                    let j = JobId(B256::from(b));
                    cache.insert(l, j);
                    j
                })
                .collect();
            cache.settle(&jobs);
        }
        assert_eq!(cache.len(), 0);
        assert!(cache.by_job.is_empty());
        // Settled leaves do not pile up in the eviction order either.
        assert!(
            cache.order.len() <= 2 * 1024,
            "order kept {}",
            cache.order.len()
        );
    }

    /// A network with one `tee` model served by one simulated chip, and a maker of records of
    /// one job: `make(genesis, claimed, proven, with_proof)` is signed for `genesis` and claims
    /// output `claimed`; its TEE proof (if `with_proof`) attests output `proven`.
    fn tee_fixture() -> (
        Genesis,
        impl Fn(&Genesis, chain::B256, chain::B256, bool) -> InferenceRecord,
    ) {
        let root = SimRoot::generate().unwrap();
        let tcb = Tcb::default();
        let chip = root.issue_chip(tcb).unwrap();
        let measurement = [3u8; 48];
        let (client, exec) = (seeded_key(9, 1), seeded_key(9, 2));
        let model_id = kernels::ModelId([8; 32]);
        let genesis = Genesis {
            chain_id: 5,
            genesis_time_ms: 0,
            accounts: vec![
                chain::genesis::GenesisAccount {
                    address: client.address(),
                    balance: chain::TOTAL_SUPPLY - Params::default().min_inference_stake,
                    stake: 0,
                    label: "client".into(),
                    vesting: None,
                },
                chain::genesis::GenesisAccount {
                    address: exec.address(),
                    balance: 0,
                    stake: Params::default().min_inference_stake,
                    label: "inference".into(),
                    vesting: None,
                },
            ],
            pools: Default::default(),
            validators: vec![],
            inference_nodes: vec![chain::genesis::GenesisInferenceNode {
                tee_chip: Some(chain::record::chip_binding(chip.chip_id())),
                ..chain::genesis::GenesisInferenceNode::new(exec.address())
            }],
            models: vec![ModelEntry {
                id: model_id,
                name: "m".into(),
                owner: client.address(),
                price_per_job: 1,
                price_per_unit: 0,
                mode: VerificationMode::Tee,
            }],
            params: Params::default(),
            tee: Some(TeeParams {
                product: None,
                roots_pem: Some(root.roots_pem().unwrap()),
                measurements: vec![hex::encode(measurement)],
                min_tcb: tcb,
            }),
            evm: None,
        };
        let input = "{}".to_string();
        let request = JobRequest {
            client: client.address(),
            model_id,
            input_hash: alloy::primitives::keccak256(input.as_bytes()),
            max_fee: 1,
            nonce: 1,
            expiry: u64::MAX,
        };
        let make = move |g: &Genesis, claimed, proven, with_proof: bool| {
            let domain = g.domain();
            let proof = if with_proof {
                let leaf = chain::record::leaf(&request, (&proven, 2), &exec.address(), &domain);
                let report = chip
                    .report(&ReportRequest {
                        report_data: chain::attestation::report_data(&leaf, &exec.address()),
                        measurement,
                        debug: false,
                    })
                    .unwrap();
                Proof::Tee(TeeProof {
                    report,
                    vcek: chip.vcek_der().to_vec(),
                    path: vec![],
                })
            } else {
                Proof::Reexec
            };
            let job = request.clone().sign(&client, &domain).unwrap();
            InferenceRecord::create(job, input.clone(), (claimed, 2), proof, &exec, &domain)
                .unwrap()
        };
        (genesis, make)
    }

    /// The model's mode decides the checks: `tee` needs a valid proof and no re-execution,
    /// `reexec` re-executes whatever the proof, `tee+reexec` does both (here re-execution is
    /// reached, and stops at the model this validator lacks, only once the proof holds).
    #[test]
    fn each_mode_runs_its_checks() {
        let (mut genesis, make) = tee_fixture();
        // Records are signed for one genesis (its hash is in the domain): each variant below
        // gets its own pair, with and without a TEE proof.
        let output = chain::B256::repeat_byte(1);
        let records = |g: &Genesis| {
            (
                make(g, output, output, true),
                make(g, output, output, false),
            )
        };
        let backend = kernels::select("cpu").unwrap();
        let models = Models::default();
        let run = |g: &Genesis, r: &InferenceRecord| {
            let checker = Checker {
                admission: Admission::new(
                    Arc::new(g.clone()),
                    g.tee.as_ref().map(|t| Arc::new(t.verifier().unwrap())),
                ),
                models: models.clone(),
                backend: backend.clone(),
                reexecute: true,
            };
            checker.check(Arc::new(r.clone()))
        };
        // tee: the proof is checked, nothing is re-executed (the model is not even here).
        let (with_tee, without) = records(&genesis);
        assert!(run(&genesis, &with_tee).is_ok());
        assert!(matches!(
            run(&genesis, &without),
            Err(RecordError::Attestation(
                chain::attestation::AttestationError::MissingProof
            ))
        ));
        // The same genuine report, from a node bound to another chip or to none: refused.
        for bound in [Some(chain::B256::repeat_byte(7)), None] {
            let mut g = genesis.clone();
            g.inference_nodes[0].tee_chip = bound;
            let (with_tee, _) = records(&g);
            assert!(matches!(
                run(&g, &with_tee),
                Err(RecordError::Attestation(
                    chain::attestation::AttestationError::WrongChip { .. }
                ))
            ));
        }
        // reexec: re-execution is attempted with or without a proof.
        genesis.models[0].mode = VerificationMode::Reexec;
        let (with_tee, without) = records(&genesis);
        assert!(matches!(
            run(&genesis, &with_tee),
            Err(RecordError::ModelMissing(_))
        ));
        assert!(matches!(
            run(&genesis, &without),
            Err(RecordError::ModelMissing(_))
        ));
        // tee+reexec: the proof first, then re-execution.
        genesis.models[0].mode = VerificationMode::TeeReexec;
        let (with_tee, without) = records(&genesis);
        assert!(matches!(
            run(&genesis, &without),
            Err(RecordError::Attestation(_))
        ));
        assert!(matches!(
            run(&genesis, &with_tee),
            Err(RecordError::ModelMissing(_))
        ));
    }

    /// A block may carry a second record of a job whose honest record was verified from
    /// gossip: another output, signed by the same executor, with the honest record's TEE proof.
    /// The verified cache knows records, not jobs: that one is checked in full and refused.
    /// A Verifier actor on a fresh store under `dir`, with its own mempool and network.
    fn start_verifier(genesis: Genesis, models: Models, dir: &std::path::Path) -> Addr<Verifier> {
        let genesis = Arc::new(genesis);
        let tee = genesis
            .tee
            .as_ref()
            .map(|t| Arc::new(t.verifier().unwrap()));
        let admission = Admission::new(genesis.clone(), tee);
        let store = Arc::new(chain::Store::open(dir).unwrap());
        let settlement = crate::settlement::Settlement::open(store, genesis)
            .unwrap()
            .start();
        let mempool = Mempool::new(admission.clone(), None, settlement.clone().recipient()).start();
        let network = Network::start(
            libp2p::identity::Keypair::generate_ed25519(),
            crate::network::NetworkConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                bootstrap: vec![],
            },
        )
        .unwrap()
        .addr;
        Verifier::new(
            admission,
            models,
            kernels::select("cpu").unwrap(),
            true,
            network,
            mempool,
            settlement.recipient(),
        )
        .start()
    }

    /// Another validator's report reaching this one first: its claim is re-executed and the
    /// fraud counted here once, however often the claim comes again; the record itself is then
    /// refused without running the model, and a claim with another output is still false.
    #[actix::test]
    async fn a_confirmed_fraud_report_counts_once_and_refuses_the_record() {
        use chain::evidence::{FraudClaim, FraudEvidence};
        let dir = tempfile::tempdir().unwrap();
        let (models, (truth, units), record) = fraud_fixture(&dir.path().join("models"));
        let verifier = start_verifier(tee_fixture().0, models, &dir.path().join("store"));
        let liar = record(B256::repeat_byte(1), units);
        let claim = |recomputed| {
            CheckFraud(vec![FraudEvidence {
                record: liar.clone(),
                claim: FraudClaim::Output { recomputed },
            }])
        };
        let detected = || METRICS.fraud_detected.get();
        let before = detected();
        verifier.send(claim(truth)).await.unwrap().unwrap();
        assert_eq!(detected(), before + 1);
        verifier.send(claim(truth)).await.unwrap().unwrap();
        assert_eq!(detected(), before + 1, "one fraud, counted once");
        let e = verifier
            .send(claim(B256::repeat_byte(2)))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, FraudCheckError::False(_)), "{e}");
        let refused = verifier
            .send(VerifyRecords(vec![liar.clone()]))
            .await
            .unwrap()
            .unwrap_err();
        assert!(refused.contains("found false here before"), "{refused}");
        assert_eq!(detected(), before + 1);
    }

    #[actix::test]
    async fn a_verified_job_does_not_vouch_for_another_record_of_it() {
        let (genesis, make) = tee_fixture();
        let honest = chain::B256::repeat_byte(1);
        let good = make(&genesis, honest, honest, true);
        let forged = make(&genesis, chain::B256::repeat_byte(2), honest, true);
        let domain = genesis.domain();
        assert_eq!(good.job_id(&domain), forged.job_id(&domain));

        let dir = tempfile::tempdir().unwrap();
        let verifier = start_verifier(genesis, Models::default(), dir.path());
        verifier
            .send(VerifyRecords(vec![good.clone()]))
            .await
            .unwrap()
            .unwrap();
        // Known now: not checked again.
        verifier
            .send(VerifyRecords(vec![good]))
            .await
            .unwrap()
            .unwrap();
        let refused = verifier
            .send(VerifyRecords(vec![forged]))
            .await
            .unwrap()
            .unwrap_err();
        assert!(refused.contains("report_data"), "{refused}");
    }

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
