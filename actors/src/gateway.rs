//! The Gateway actor: takes client jobs (HTTP), checks them (signature, model, expiry, fee,
//! nonce, balance), routes them to an inference node that advertises the model (this node's own
//! Inference actor first) and returns result and record. Tracks jobs until a block settles them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::fut::LocalBoxActorFuture;
use actix::prelude::*;
use alloy::primitives::keccak256;
use chain::{Address, B256, InferenceRecord, JobId, SignedJobRequest};
use futures::future::LocalBoxFuture;
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;

use crate::inference::{Inference, RunJob};
use crate::mempool::Committed;
use crate::metrics::METRICS;
use crate::network::{GossipCapability, InboundStream, NetError, Network, PenalisePeer, SendJob};
use crate::protocol::{Capability, JobCall, JobReply};
use crate::settlement::{GetAccount, GrantSpent, NonceUsed, Settlement};

/// A capability older than this is ignored when routing.
const CAPABILITY_TTL: Duration = Duration::from_secs(10);
/// Rounds over the executors while none of them can be reached (the job was delivered to none,
/// so trying again cannot run it twice), pausing 250 ms, then 500 ms, ... between rounds: 3.75 s
/// in all, as long as a node just started was seen to take to reach an executor it knew of.
const UNREACHABLE_PASSES: u32 = 6;
const UNREACHABLE_PAUSE: Duration = Duration::from_millis(250);

/// Why the gateway refused or could not finish a job. The HTTP API decides the status each
/// maps to (`node/src/http.rs`); [`Refusal::code`] is the stable code clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    InputTooLarge,
    BadInputHash,
    BadSignature,
    UnknownModel,
    Expired,
    FeeTooLow,
    Duplicate,
    NonceUsed,
    Storage,
    Unavailable,
    InsufficientBalance,
    /// The job's API grant has spent its cap (settled and in-flight jobs counted).
    GrantExhausted,
    NoExecutor,
    ExecutorBusy,
    ExecutorFailed,
    ExecutorRefused,
    /// The inference node found the input invalid for the model (a chat for an encoder, a
    /// prompt past the context, ...): the client's error; nothing ran, nothing is charged.
    BadInput,
}

impl Refusal {
    /// The stable error code (API `error.code`, metric label).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::InputTooLarge => "input_too_large",
            Refusal::BadInputHash => "bad_input_hash",
            Refusal::BadSignature => "bad_signature",
            Refusal::UnknownModel => "unknown_model",
            Refusal::Expired => "expired",
            Refusal::FeeTooLow => "fee_too_low",
            Refusal::Duplicate => "duplicate",
            Refusal::NonceUsed => "nonce_used",
            Refusal::Storage => "storage",
            Refusal::Unavailable => "unavailable",
            Refusal::InsufficientBalance => "insufficient_balance",
            Refusal::GrantExhausted => "grant_exhausted",
            Refusal::NoExecutor => "no_executor",
            Refusal::ExecutorBusy => "executor_busy",
            Refusal::ExecutorFailed => "executor_failed",
            Refusal::ExecutorRefused => "executor_refused",
            Refusal::BadInput => "bad_input",
        }
    }
}

/// A refused or failed job: why, and the details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct GatewayError {
    pub kind: Refusal,
    pub message: String,
}

impl GatewayError {
    fn new(kind: Refusal, message: impl Into<String>) -> Self {
        METRICS.jobs_refused.with_label_values(&[kind.code()]).inc();
        GatewayError {
            kind,
            message: message.into(),
        }
    }
}

/// What a client gets back for an executed job.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub job_id: JobId,
    pub output: String,
    pub record: InferenceRecord,
}

#[derive(Message)]
#[rtype(result = "Result<JobResult, GatewayError>")]
pub struct SubmitJob {
    pub job: SignedJobRequest,
    pub input: String,
    /// Where a generation's text goes as it is produced, when this node runs the job itself
    /// (jobs routed to another node stream nothing yet: the sender is dropped).
    pub stream: Option<crate::batcher::TextStream>,
}

/// A job this gateway took that no block has settled yet: (output hash, executor) once executed.
#[derive(Message)]
#[rtype(result = "Option<Option<(B256, Address)>>")]
pub struct PendingJob(pub JobId);

/// How many inference nodes this gateway can route jobs for `model` to (itself included).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct KnownExecutors(pub kernels::ModelId);

struct Pending {
    client: Address,
    nonce: u64,
    price: u128,
    /// The id of the API grant that pays for the job, if one does.
    grant: Option<B256>,
    /// The request's expiry (unix seconds): past it no block may include the job.
    expiry: u64,
    executed: Option<(B256, Address)>,
}

pub struct Gateway {
    /// The record checks, with the chain's registrations at the tip: which models exist and
    /// which inference nodes may be routed jobs.
    admission: chain::Admission,
    /// What this network's signatures are bound to (computed once from the genesis).
    domain: chain::signing::Domain,
    network: Addr<Network>,
    settlement: Addr<Settlement>,
    inference: Option<Addr<Inference>>,
    local_models: Vec<kernels::ModelId>,
    /// The same list, as the HTTP API reads it.
    served: crate::hub::Served,
    /// This node's account, when it runs inference: jobs run here only while the chain lets
    /// it serve (registered, bonded, not jailed).
    local_executor: Option<Address>,
    capabilities: HashMap<PeerId, (Capability, Instant)>,
    pending: HashMap<JobId, Pending>,
    /// Streamed jobs routed to another node: where their text goes, and from whom it may come.
    streams: HashMap<JobId, StreamSlot>,
    next: usize,
}

impl Gateway {
    /// The models this node's inference serves, kept current as models are fetched.
    pub fn served(&self) -> crate::hub::Served {
        self.served.clone()
    }

    pub fn new(
        admission: chain::Admission,
        network: Addr<Network>,
        settlement: Addr<Settlement>,
        inference: Option<(Addr<Inference>, Vec<kernels::ModelId>)>,
    ) -> Self {
        let (inference, local_models) = match inference {
            Some((a, m)) => (Some(a), m),
            None => (None, Vec::new()),
        };
        Gateway {
            domain: *admission.domain(),
            admission,
            network,
            settlement,
            inference,
            served: crate::hub::Served::new(local_models.clone()),
            local_models,
            local_executor: None,
            capabilities: HashMap::new(),
            pending: HashMap::new(),
            streams: HashMap::new(),
            next: 0,
        }
    }

    /// This node's own inference runs under `address`.
    pub fn with_local_executor(mut self, address: Address) -> Self {
        self.local_executor = Some(address);
        self
    }

    /// Balance already promised to this client's jobs in flight.
    fn reserved(&self, client: &Address) -> u128 {
        self.pending
            .values()
            .filter(|p| p.client == *client)
            .map(|p| p.price)
            .sum()
    }

    /// What jobs in flight bought through the grant `id` reserve of its cap.
    fn grant_reserved(&self, id: &B256) -> u128 {
        self.pending
            .values()
            .filter(|p| p.grant.as_ref() == Some(id))
            .map(|p| p.price)
            .sum()
    }

    /// Remote inference nodes advertising `model` that the chain lets serve it now
    /// (registered for it, bonded, not jailed), least loaded first.
    fn executors(&self, model: &kernels::ModelId) -> Vec<PeerId> {
        let live = self.admission.registrations();
        let mut v: Vec<(PeerId, u32)> = self
            .capabilities
            .iter()
            .filter(|(_, (c, at))| at.elapsed() < CAPABILITY_TTL && c.models.contains(model))
            .filter(|(_, (c, _))| live.refuse_executor(&c.address, model).is_none())
            .map(|(p, (c, _))| (*p, c.load))
            .collect();
        v.sort_by_key(|(p, load)| (*load, p.to_bytes()));
        v.into_iter().map(|(p, _)| p).collect()
    }

    fn stateless_checks(&self, msg: &SubmitJob) -> Result<(JobId, u128), GatewayError> {
        let req = &msg.job.request;
        if msg.input.len() > chain::record::MAX_INPUT_BYTES {
            return Err(GatewayError::new(
                Refusal::InputTooLarge,
                format!(
                    "input has {} bytes, the limit is {}",
                    msg.input.len(),
                    chain::record::MAX_INPUT_BYTES
                ),
            ));
        }
        if keccak256(msg.input.as_bytes()) != req.input_hash {
            return Err(GatewayError::new(
                Refusal::BadInputHash,
                "keccak256(input) differs from request.input_hash",
            ));
        }
        let id = msg.job.verify(&self.domain).map_err(|e| {
            GatewayError::new(Refusal::BadSignature, format!("job signature invalid: {e}"))
        })?;
        let live = self.admission.registrations();
        let model = live.registry.active_model(&req.model_id).map_err(|e| {
            GatewayError::new(Refusal::UnknownModel, format!("{e} (see GET /v1/models)"))
        })?;
        // The most the job can cost: a generation's tokens are known once it has run.
        let units = kernels::units_bound(msg.input.as_bytes());
        let price = model.price(units);
        let now_s = chain::types::now_ms() / 1000;
        if req.expiry <= now_s {
            return Err(GatewayError::new(
                Refusal::Expired,
                format!("job expired at {} (now {now_s})", req.expiry),
            ));
        }
        if let Some(g) = &msg.job.grant
            && g.grant.expiry <= now_s
        {
            return Err(GatewayError::new(
                Refusal::Expired,
                format!("the API key expired at {} (now {now_s})", g.grant.expiry),
            ));
        }
        if price > req.max_fee {
            return Err(GatewayError::new(
                Refusal::FeeTooLow,
                format!(
                    "the job may cost {price} base units ({} per job + {} per unit × at most {units} units), max_fee is {}",
                    model.price_per_job, model.price_per_unit, req.max_fee
                ),
            ));
        }
        self.in_flight_checks(id, req)?;
        Ok((id, price))
    }

    /// Neither this job nor another with its nonce is in flight here. Checked when the job
    /// arrives and again once the chain's answers are in: a copy may have arrived meanwhile.
    fn in_flight_checks(&self, id: JobId, req: &chain::JobRequest) -> Result<(), GatewayError> {
        if self.pending.contains_key(&id) {
            return Err(GatewayError::new(
                Refusal::Duplicate,
                format!("job {id} is already in flight"),
            ));
        }
        if self
            .pending
            .values()
            .any(|p| p.client == req.client && p.nonce == req.nonce)
        {
            return Err(GatewayError::new(
                Refusal::NonceUsed,
                format!("nonce {} is in use by another job", req.nonce),
            ));
        }
        Ok(())
    }
}

impl Actor for Gateway {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(30), |act, _| {
            act.capabilities
                .retain(|_, (_, at)| at.elapsed() < CAPABILITY_TTL * 6);
            // Jobs no block settled by their expiry (a vanished executor, a rejected record)
            // can no longer be settled: forget them and release the client's reservation.
            let now_s = chain::types::now_ms() / 1000;
            let before = act.pending.len();
            act.pending.retain(|_, p| p.expiry >= now_s);
            if act.pending.len() < before {
                tracing::info!(
                    expired = before - act.pending.len(),
                    "pending jobs expired unsettled"
                );
            }
        });
    }
}

impl Gateway {
    /// The checks that need the chain's state, once its answers are in: the nonce unused (or
    /// this very job already settled) and the balance, minus what this client's jobs in flight
    /// reserve, covering the price.
    fn stateful_checks(
        &self,
        id: JobId,
        job: &SignedJobRequest,
        price: u128,
        used: Result<Result<Option<JobId>, String>, MailboxError>,
        account: Result<chain::Account, MailboxError>,
        grant_spent: Option<(B256, Result<u128, MailboxError>)>,
    ) -> Result<(), GatewayError> {
        let req = &job.request;
        match used {
            Ok(Ok(Some(prev))) if prev == id => {
                return Err(GatewayError::new(
                    Refusal::Duplicate,
                    format!("job {id} is already settled"),
                ));
            }
            Ok(Ok(Some(prev))) => {
                return Err(GatewayError::new(
                    Refusal::NonceUsed,
                    format!("nonce {} was used by job {prev}", req.nonce),
                ));
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(GatewayError::new(Refusal::Storage, e)),
            Err(e) => return Err(GatewayError::new(Refusal::Unavailable, e.to_string())),
        }
        self.in_flight_checks(id, req)?;
        let balance = account
            .map_err(|e| GatewayError::new(Refusal::Unavailable, e.to_string()))?
            .balance;
        let reserved = self.reserved(&req.client);
        if balance < reserved.saturating_add(price) {
            return Err(GatewayError::new(
                Refusal::InsufficientBalance,
                format!(
                    "balance {balance} minus {reserved} reserved by jobs in flight is below the job's most {price}"
                ),
            ));
        }
        if let (Some(g), Some((grant_id, spent))) = (&job.grant, grant_spent) {
            let spent =
                spent.map_err(|e| GatewayError::new(Refusal::Unavailable, e.to_string()))?;
            let reserved = self.grant_reserved(&grant_id);
            if spent.saturating_add(reserved).saturating_add(price) > g.grant.cap {
                return Err(GatewayError::new(
                    Refusal::GrantExhausted,
                    format!(
                        "the API key has spent {spent} of its cap {} ({reserved} more reserved by jobs in flight): this job, up to {price}, could pass it",
                        g.grant.cap
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where the job runs: this node's own Inference actor when it serves the model, else the
    /// advertising inference nodes in turn (see [`route_remote`]).
    fn route(
        &mut self,
        id: JobId,
        mut call: JobCall,
        stream: Option<crate::batcher::TextStream>,
        me: Addr<Gateway>,
    ) -> Result<LocalBoxFuture<'static, Result<JobReply, GatewayError>>, GatewayError> {
        let model = call.job.request.model_id;
        // This node's own inference runs it, while the chain lets this node serve the model.
        let local_allowed = self.local_executor.is_none_or(|a| {
            self.admission
                .registrations()
                .refuse_executor(&a, &model)
                .is_none()
        });
        if let (Some(inf), true) = (
            self.inference.clone(),
            self.local_models.contains(&model) && local_allowed,
        ) {
            return Ok(Box::pin(async move {
                inf.send(RunJob(call, stream))
                    .await
                    .map_err(|e| GatewayError::new(Refusal::Unavailable, e.to_string()))
            }));
        }
        let mut peers = self.executors(&model);
        if peers.is_empty() {
            return Err(GatewayError::new(
                Refusal::NoExecutor,
                format!("no inference node currently serves model {model}"),
            ));
        }
        // Start from a rotating node, so load spreads over nodes that advertise the same load.
        self.next = self.next.wrapping_add(1);
        let first = self.next % peers.len();
        peers.rotate_left(first);
        // A streamed job's text comes back piece by piece from the node that runs it.
        let targets = stream.map(|tx| {
            call.stream = true;
            self.streams.insert(
                id,
                StreamSlot {
                    peer: None,
                    earlier: Vec::new(),
                    tx,
                    next: 0,
                    relayed: 0,
                },
            );
            me
        });
        Ok(Box::pin(route_remote(
            self.network.clone(),
            id,
            peers,
            call,
            targets,
        )))
    }

    /// Checks an executor's reply and records the outcome against the pending job.
    fn finish(
        &mut self,
        id: JobId,
        started: Instant,
        reply: Result<JobReply, GatewayError>,
    ) -> Result<JobResult, GatewayError> {
        // The executor sent its text before its reply: the stream is complete.
        self.streams.remove(&id);
        let result = match reply {
            Ok(JobReply::Done { record, output }) => {
                if record.job_id(&self.domain) != id {
                    Err(GatewayError::new(
                        Refusal::ExecutorFailed,
                        "record is for another job",
                    ))
                } else if let Err(e) = record.verify_signatures(&self.domain) {
                    Err(GatewayError::new(
                        Refusal::ExecutorFailed,
                        format!("record invalid: {e}"),
                    ))
                } else {
                    Ok(JobResult {
                        job_id: id,
                        output,
                        record: *record,
                    })
                }
            }
            Ok(JobReply::Refused { code, message }) if code == "bad_input" => {
                Err(GatewayError::new(Refusal::BadInput, message))
            }
            Ok(JobReply::Refused { code, message }) => Err(GatewayError::new(
                Refusal::ExecutorRefused,
                format!("{code}: {message}"),
            )),
            Err(e) => Err(e),
        };
        match &result {
            Ok(r) => {
                if let Some(p) = self.pending.get_mut(&id) {
                    p.executed = Some((r.record.output_hash, r.record.executor));
                }
                METRICS.job_latency.observe(started.elapsed().as_secs_f64());
                tracing::info!(job = %id, executor = %r.record.executor, "job executed");
            }
            Err(e) => {
                self.pending.remove(&id);
                tracing::warn!(job = %id, error = %e, "job failed");
            }
        }
        result
    }
}

/// Tries each advertising inference node once, in `peers`' order. A busy or broken node is
/// passed over for the next. When none could even be reached (no connection yet, e.g. just
/// after start), the job was delivered to none, so nothing ran: all are tried again, up to
/// [`UNREACHABLE_PASSES`] rounds, pausing a little longer each time.
async fn route_remote(
    network: Addr<Network>,
    id: JobId,
    peers: Vec<PeerId>,
    call: JobCall,
    stream_to: Option<Addr<Gateway>>,
) -> Result<JobReply, GatewayError> {
    let mut last = GatewayError::new(Refusal::NoExecutor, "no inference node answered");
    for pass in 0..UNREACHABLE_PASSES {
        if pass > 0 {
            tokio::time::sleep(UNREACHABLE_PAUSE * pass).await;
        }
        let mut all_unreachable = true;
        for &peer in &peers {
            // Only the node the job goes to now may stream its text.
            if let Some(g) = &stream_to {
                g.do_send(StreamTarget { job: id, peer });
            }
            let sent = network
                .send(SendJob {
                    peer,
                    call: call.clone(),
                })
                .await;
            match sent {
                Ok(Ok(JobReply::Refused { code, message }))
                    if matches!(
                        code.as_str(),
                        "busy" | "internal" | "attestation_failed" | "unavailable"
                    ) =>
                {
                    tracing::warn!(job = %id, %peer, code, message, "inference node declined, trying the next");
                    last = GatewayError::new(Refusal::ExecutorBusy, format!("{code}: {message}"));
                    all_unreachable = false;
                }
                Ok(Ok(reply)) => return Ok(reply),
                // A streamed job that reached a node may have sent its client text already:
                // it is not run again elsewhere (the client would read two answers).
                Ok(Err(e)) if stream_to.is_some() && !matches!(e, NetError::Unreachable { .. }) => {
                    return Err(GatewayError::new(Refusal::ExecutorFailed, e.to_string()));
                }
                Ok(Err(e)) => {
                    tracing::warn!(job = %id, %peer, error = %e, "inference node failed, trying the next");
                    all_unreachable &= matches!(e, NetError::Unreachable { .. });
                    last = GatewayError::new(Refusal::ExecutorFailed, e.to_string());
                }
                Err(e) => return Err(GatewayError::new(Refusal::Unavailable, e.to_string())),
            }
        }
        if !all_unreachable {
            break;
        }
    }
    Err(last)
}

impl Handler<SubmitJob> for Gateway {
    type Result = ResponseActFuture<Self, Result<JobResult, GatewayError>>;

    /// Stateless checks here; the nonce and balance from Settlement; then the job is pending
    /// (its price reserved) while it runs; the reply is checked before it is returned.
    fn handle(&mut self, msg: SubmitJob, _: &mut Self::Context) -> Self::Result {
        let (id, price) = match self.stateless_checks(&msg) {
            Ok(v) => v,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        let (client, nonce) = (msg.job.request.client, msg.job.request.nonce);
        let grant = msg.job.grant.as_ref().map(|g| g.grant.id(&self.domain));
        let settlement = self.settlement.clone();
        let started = Instant::now();
        let lookups = async move {
            let used = settlement.send(NonceUsed { client, nonce }).await;
            let account = settlement.send(GetAccount(client)).await;
            let spent = match grant {
                Some(id) => Some((id, settlement.send(GrantSpent(id)).await)),
                None => None,
            };
            (used, account, spent)
        };
        Box::pin(
            lookups
                .into_actor(self)
                .then(move |(used, account, spent), act, ctx| {
                    let call = JobCall {
                        job: msg.job,
                        input: msg.input,
                        stream: false,
                    };
                    let stream = msg.stream;
                    let req = &call.job.request;
                    let pending = Pending {
                        client: req.client,
                        nonce: req.nonce,
                        price,
                        grant,
                        expiry: req.expiry,
                        executed: None,
                    };
                    let admitted = act
                        .stateful_checks(id, &call.job, price, used, account, spent)
                        .and_then(|()| {
                            act.pending.insert(id, pending);
                            METRICS.jobs_submitted.inc();
                            act.route(id, call, stream, ctx.address()).inspect_err(|_| {
                                act.pending.remove(&id);
                            })
                        });
                    match admitted {
                        Ok(running) => Box::pin(
                            running
                                .into_actor(act)
                                .map(move |reply, act, _| act.finish(id, started, reply)),
                        ) as LocalBoxActorFuture<Gateway, _>,
                        Err(e) => {
                            tracing::debug!(job = %id, error = %e, "job refused");
                            Box::pin(actix::fut::ready(Err(e)))
                        }
                    }
                }),
        )
    }
}

impl Gateway {
    /// Whether a gossiped capability may route jobs: signed by a registered inference node's
    /// key, naming the peer that published it, and fresh. Forgeries and replays from another
    /// peer are rejected (they cost the peer score); a stale one is only ignored.
    fn check_capability(
        &self,
        msg: &GossipCapability,
    ) -> Result<(), (MessageAcceptance, &'static str)> {
        let cap = &msg.capability.capability;
        if !self
            .admission
            .registrations()
            .registry
            .nodes
            .contains_key(&cap.address)
        {
            return Err((MessageAcceptance::Reject, "unregistered_executor"));
        }
        if msg.capability.verify(&self.domain).is_err() {
            return Err((MessageAcceptance::Reject, "bad_signature"));
        }
        if cap.peer != msg.peer.to_bytes() {
            return Err((MessageAcceptance::Reject, "wrong_peer"));
        }
        let age_ms = chain::types::now_ms().abs_diff(cap.issued_ms);
        if age_ms > CAPABILITY_TTL.as_millis() as u64 {
            return Err((MessageAcceptance::Ignore, "stale"));
        }
        Ok(())
    }
}

impl Handler<GossipCapability> for Gateway {
    type Result = MessageResult<GossipCapability>;
    fn handle(&mut self, msg: GossipCapability, _: &mut Self::Context) -> Self::Result {
        MessageResult(match self.check_capability(&msg) {
            Ok(()) => {
                self.capabilities
                    .insert(msg.peer, (msg.capability.capability, Instant::now()));
                MessageAcceptance::Accept
            }
            Err((acceptance, reason)) => {
                METRICS
                    .gossip_rejected
                    .with_label_values(&[crate::protocol::topics::CAPABILITIES, reason])
                    .inc();
                tracing::debug!(peer = %msg.peer, address = %msg.capability.capability.address, reason, "capability refused");
                acceptance
            }
        })
    }
}

impl Handler<Committed> for Gateway {
    type Result = ();
    fn handle(&mut self, msg: Committed, _: &mut Self::Context) {
        for id in &msg.jobs {
            self.pending.remove(id);
        }
    }
}

impl Handler<KnownExecutors> for Gateway {
    type Result = usize;
    fn handle(&mut self, msg: KnownExecutors, _: &mut Self::Context) -> usize {
        let local = usize::from(self.inference.is_some() && self.local_models.contains(&msg.0));
        local + self.executors(&msg.0).len()
    }
}

impl Handler<crate::hub::ServeModel> for Gateway {
    type Result = ResponseActFuture<Self, ()>;
    /// A model fetched from peers: this node's inference serves it if it may, and jobs for it
    /// are then routed here.
    fn handle(&mut self, msg: crate::hub::ServeModel, _: &mut Self::Context) -> Self::Result {
        let Some(inf) = self.inference.clone() else {
            return Box::pin(actix::fut::ready(()));
        };
        let work = async move {
            inf.send(msg).await.ok()?;
            inf.send(crate::inference::ServedModels).await.ok()
        };
        Box::pin(work.into_actor(self).map(|served, act, _| {
            if let Some(served) = served {
                act.served.set(served.clone());
                act.local_models = served;
            }
        }))
    }
}

/// A streamed job routed to another node: where its text goes and which peer may send it.
struct StreamSlot {
    /// The node the job was sent to last (`None` before the first attempt).
    peer: Option<PeerId>,
    /// Nodes it was sent to before (their text is refused, without blame).
    earlier: Vec<PeerId>,
    tx: crate::batcher::TextStream,
    /// The piece expected next.
    next: u32,
    /// Bytes relayed so far (at most [`MAX_STREAMED_BYTES`]).
    relayed: usize,
}

/// Text one streamed job may relay at most: far more than any completion's (4096 tokens of a
/// few bytes each), so only a node sending text it does not generate reaches it.
const MAX_STREAMED_BYTES: usize = 1 << 20;

/// The streamed job `job` is being sent to `peer`: its text is taken from that peer only.
#[derive(Message)]
#[rtype(result = "()")]
struct StreamTarget {
    job: JobId,
    peer: PeerId,
}

impl Handler<StreamTarget> for Gateway {
    type Result = ();
    fn handle(&mut self, msg: StreamTarget, _: &mut Self::Context) {
        if let Some(slot) = self.streams.get_mut(&msg.job) {
            if let Some(before) = slot.peer.replace(msg.peer) {
                slot.earlier.push(before);
            }
            slot.next = 0;
        }
    }
}

impl Handler<InboundStream> for Gateway {
    type Result = bool;
    /// A piece of a streamed job's text: relayed to the client only when it comes from the
    /// node the job was routed to, in order; the answer says whether anyone still reads.
    fn handle(&mut self, msg: InboundStream, _: &mut Self::Context) -> bool {
        let InboundStream { chunk, peer } = msg;
        let Some(slot) = self.streams.get_mut(&chunk.job) else {
            return false;
        };
        if slot.peer != Some(peer) && slot.earlier.contains(&peer) {
            // A node the job went to before (it timed out there): no longer read.
            return false;
        }
        if slot.peer != Some(peer) {
            tracing::warn!(job = %chunk.job, %peer, "stream text from a node the job was not routed to: refused");
            self.network.do_send(PenalisePeer {
                peer,
                reason: "streamed text of a job it does not run",
            });
            return false;
        }
        if chunk.seq != slot.next {
            tracing::warn!(job = %chunk.job, %peer, seq = chunk.seq, expected = slot.next, "stream text out of order: the rest comes with the answer");
            return false;
        }
        slot.next += 1;
        slot.relayed += chunk.text.len();
        if slot.relayed > MAX_STREAMED_BYTES {
            tracing::warn!(job = %chunk.job, %peer, "more streamed text than a completion holds: refused");
            return false;
        }
        slot.tx.send(chunk.text).is_ok()
    }
}

impl Handler<PendingJob> for Gateway {
    type Result = Option<Option<(B256, Address)>>;
    fn handle(&mut self, msg: PendingJob, _: &mut Self::Context) -> Self::Result {
        self.pending.get(&msg.0).map(|p| p.executed)
    }
}
