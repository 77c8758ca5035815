//! The Inference actor (inference nodes): runs jobs on the loaded models, proves them (a TEE
//! proof from the Attestation actor for models whose mode includes `tee`), signs the record,
//! publishes it on gossip and answers the gateway. Model execution runs on a blocking thread,
//! never on the actix threads. Advertises the models it can serve on the capabilities topic.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use alloy::primitives::keccak256;
use chain::{
    Address, Admission, InferenceRecord, JobId, PrivateKeySigner, Proof, SignedJobRequest,
};
use kernels::Backend;
use libp2p::PeerId;

use crate::attestation::{Attest, Attestation};
use crate::mempool::{AddRecord, Mempool};
use crate::metrics::METRICS;
use crate::models::Models;
use crate::network::{InboundJob, Network, Publish};
use crate::protocol::{self, Capability, JobCall, JobReply, SignedCapability, topics};
use crate::settlement::{GetAccount, GrantSpent, NonceUsed, Settlement};

/// Run a job locally (the gateway on the same node).
#[derive(Message)]
#[rtype(result = "JobReply")]
pub struct RunJob(pub JobCall, pub Option<crate::batcher::TextStream>);

/// Which models this node serves.
#[derive(Message)]
#[rtype(result = "Vec<kernels::ModelId>")]
pub struct ServedModels;

/// Jobs run at once on this node; beyond it callers get `busy` (and gateways try another node).
pub const MAX_IN_FLIGHT: usize = 64;
/// Jobs one peer (a gateway) may have in flight here at once.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 16;
/// Executed jobs remembered (by client and nonce) until they expire, so that the same job, or
/// another with its nonce, is not run again before a block settles it; the oldest go first.
const RECENT_JOBS: usize = 100_000;

/// Who this inference node is: the account that signs its records and capabilities, and the
/// libp2p peer that serves its jobs.
pub struct Executor {
    pub key: PrivateKeySigner,
    pub peer: PeerId,
}

/// The actors an inference node talks to.
pub struct Links {
    pub network: Addr<Network>,
    pub mempool: Addr<Mempool>,
    /// Nonces and balances, for admitting a job as a gateway would.
    pub settlement: Addr<Settlement>,
}

/// A job admitted here and not finished yet.
struct Running {
    client: Address,
    price: u128,
    /// The API grant that pays for it, if one does.
    grant: Option<chain::B256>,
    /// The gateway that sent it; `None` for this node's own gateway.
    peer: Option<PeerId>,
}

/// How an inference node proves its runs.
pub struct Proving {
    /// The TEE that proves runs of `tee` models; `None` on a node without one.
    pub attestation: Option<Addr<Attestation>>,
    /// Testnet fault injection: sign a wrong output hash (a cheating node).
    pub faulty: bool,
    /// Testnet fault injection (a lying TEE): records that fail this node's own checks are
    /// still returned and gossiped, for the validators to refuse, instead of the job failing.
    pub unchecked: bool,
}

pub struct Inference {
    /// The genesis and the domain this network's signatures are bound to, with the record checks.
    admission: Admission,
    models: Models,
    backend: Arc<dyn Backend>,
    key: Arc<PrivateKeySigner>,
    peer: PeerId,
    network: Addr<Network>,
    mempool: Addr<Mempool>,
    settlement: Addr<Settlement>,
    /// Proves runs of `tee` models; `None` on a node without a TEE.
    attestation: Option<Addr<Attestation>>,
    /// Models loaded here whose verification mode this node can satisfy.
    served: Vec<kernels::ModelId>,
    /// Jobs admitted and not finished, from the moment their checks start.
    in_flight: HashMap<JobId, Running>,
    /// Jobs executed here that no block has settled yet, with their expiry (unix seconds):
    /// their prices stay reserved against the client's balance and its grant's cap, which
    /// the ledger changes only when a block settles them.
    unsettled: HashMap<JobId, (Running, u64)>,
    /// Jobs executed here: (client, nonce) → (job, expiry in unix seconds).
    recent: HashMap<(Address, u64), (JobId, u64)>,
    recent_order: VecDeque<(Address, u64)>,
    /// Testnet fault injection: sign a wrong output hash (a cheating node).
    faulty: bool,
    /// See [`Proving::unchecked`].
    unchecked: bool,
    /// One continuous-batching decode thread per generating model, started on its first job.
    batchers: HashMap<kernels::ModelId, crate::batcher::Batcher>,
}

impl Inference {
    /// `admission` checks each record made here before it enters the mempool, as the
    /// Verifier checks gossiped ones.
    pub fn new(
        admission: Admission,
        models: Models,
        backend: Arc<dyn Backend>,
        executor: Executor,
        links: Links,
        proving: Proving,
    ) -> Self {
        let Proving {
            attestation,
            faulty,
            unchecked,
        } = proving;
        let live = admission.registrations();
        if faulty {
            tracing::warn!("FAULT INJECTION: this inference node signs wrong output hashes");
        }
        let served = models
            .ids()
            .into_iter()
            .filter(|id| can_serve(&live.registry, id, attestation.is_some()))
            .collect();
        Inference {
            admission,
            models,
            backend,
            key: Arc::new(executor.key),
            peer: executor.peer,
            network: links.network,
            mempool: links.mempool,
            settlement: links.settlement,
            attestation,
            served,
            in_flight: HashMap::new(),
            unsettled: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            faulty,
            unchecked,
            batchers: HashMap::new(),
        }
    }

    fn advertise(&self) {
        let cap = Capability {
            address: self.key.address(),
            peer: self.peer.to_bytes(),
            models: self.served.clone(),
            load: self.in_flight.len() as u32,
            issued_ms: chain::types::now_ms(),
        };
        match SignedCapability::sign(cap, &self.key, self.admission.domain()) {
            Ok(signed) => self.network.do_send(Publish {
                topic: topics::CAPABILITIES,
                data: protocol::encode(&signed),
            }),
            Err(e) => tracing::error!(error = %e, "cannot sign our capability"),
        }
    }

    fn refuse(code: &str, message: impl Into<String>) -> JobReply {
        JobReply::Refused {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The checks that need no ledger, cheapest first, before any compute: room for the job,
    /// signature, input, model, expiry, fee. Returns the job id, model and price.
    fn precheck(
        &self,
        job: &SignedJobRequest,
        input: &str,
        peer: Option<PeerId>,
    ) -> Result<(JobId, Arc<kernels::Model>, u128), JobReply> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return Err(Self::refuse(
                "busy",
                format!("{MAX_IN_FLIGHT} jobs in flight here; try another node"),
            ));
        }
        if peer.is_some()
            && self.in_flight.values().filter(|r| r.peer == peer).count() >= MAX_IN_FLIGHT_PER_PEER
        {
            return Err(Self::refuse(
                "busy",
                format!("{MAX_IN_FLIGHT_PER_PEER} of your jobs are in flight here"),
            ));
        }
        if input.len() > chain::record::MAX_INPUT_BYTES {
            return Err(Self::refuse("bad_input", "input too large"));
        }
        let id = job
            .verify(self.admission.domain())
            .map_err(|e| Self::refuse("bad_signature", e.to_string()))?;
        if self.in_flight.contains_key(&id) {
            return Err(Self::refuse("duplicate", format!("job {id} is in flight")));
        }
        let req = &job.request;
        match self.recent.get(&(req.client, req.nonce)) {
            Some((done, _)) if *done == id => {
                return Err(Self::refuse(
                    "duplicate",
                    format!("job {id} was executed here"),
                ));
            }
            Some((other, _)) => {
                return Err(Self::refuse(
                    "nonce_used",
                    format!("nonce {} is used by job {other}", req.nonce),
                ));
            }
            None => {}
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
        let price = self
            .admission
            .registrations()
            .registry
            .active_model(&job.request.model_id)
            .map(|m| m.price(kernels::units_bound(input.as_bytes())))
            .map_err(|e| Self::refuse("unknown_model", e))?;
        let now_s = chain::types::now_ms() / 1000;
        if job.request.expiry <= now_s {
            return Err(Self::refuse(
                "expired",
                format!("job expired at {} (now {now_s})", job.request.expiry),
            ));
        }
        if price > job.request.max_fee {
            return Err(Self::refuse(
                "fee_too_low",
                format!(
                    "the job may cost {price} (its units' bound priced), above max_fee {}",
                    job.request.max_fee
                ),
            ));
        }
        if let Some(g) = &job.grant
            && g.grant.expiry <= now_s
        {
            return Err(Self::refuse(
                "expired",
                format!("the API grant expired at {} (now {now_s})", g.grant.expiry),
            ));
        }
        Ok((id, model, price))
    }

    /// Admits a job as a gateway would (nobody gets unpaid work by calling an inference node
    /// directly), runs it, proves it, signs and publishes the record.
    fn run(
        &mut self,
        call: JobCall,
        peer: Option<PeerId>,
        stream: Option<crate::batcher::TextStream>,
    ) -> ResponseActFuture<Self, JobReply> {
        let (id, model, price) = match self.precheck(&call.job, &call.input, peer) {
            Ok(v) => v,
            Err(reply) => {
                Self::count_refusal(&reply);
                return Box::pin(actix::fut::ready(reply));
            }
        };
        let client = call.job.request.client;
        let grant = call
            .job
            .grant
            .as_ref()
            .map(|g| (g.grant.id(self.admission.domain()), g.grant.cap));
        // Reserved from here on: concurrent calls see it in the limits and the balance.
        self.forget_expired();
        let reserving = || {
            self.in_flight
                .values()
                .chain(self.unsettled.values().map(|(r, _)| r))
        };
        let reserved: u128 = reserving()
            .filter(|r| r.client == client)
            .map(|r| r.price)
            .sum();
        let grant_reserved: u128 = reserving()
            .filter(|r| r.grant.is_some() && r.grant == grant.map(|(id, _)| id))
            .map(|r| r.price)
            .sum();
        self.in_flight.insert(
            id,
            Running {
                client,
                price,
                grant: grant.map(|(id, _)| id),
                peer,
            },
        );
        let settlement = self.settlement.clone();
        let nonce = call.job.request.nonce;
        let ledger_checks = async move {
            let used = settlement
                .send(NonceUsed { client, nonce })
                .await
                .map_err(|e| Self::refuse("unavailable", e.to_string()))?
                .map_err(|e| Self::refuse("internal", e))?;
            if let Some(prev) = used {
                return Err(if prev == id {
                    Self::refuse("duplicate", format!("job {id} is already settled"))
                } else {
                    Self::refuse(
                        "nonce_used",
                        format!("nonce {nonce} was used by job {prev}"),
                    )
                });
            }
            let balance = settlement
                .send(GetAccount(client))
                .await
                .map_err(|e| Self::refuse("unavailable", e.to_string()))?
                .balance;
            if balance < reserved.saturating_add(price) {
                return Err(Self::refuse(
                    "insufficient_balance",
                    format!(
                        "balance {balance} minus {reserved} reserved here is below the price {price}"
                    ),
                ));
            }
            // An API grant's cap, as the ledger will hold it: a gateway that let a job past
            // it would have this node run a job that pays nothing.
            if let Some((grant, cap)) = grant {
                let spent = settlement
                    .send(GrantSpent(grant))
                    .await
                    .map_err(|e| Self::refuse("unavailable", e.to_string()))?;
                if spent.saturating_add(grant_reserved).saturating_add(price) > cap {
                    return Err(Self::refuse(
                        "grant_exhausted",
                        format!(
                            "the API grant has spent {spent} of its cap {cap} ({grant_reserved} more reserved here): this job, up to {price}, could pass it"
                        ),
                    ));
                }
            }
            Ok(())
        };
        Box::pin(
            ledger_checks
                .into_actor(self)
                .then(move |checked, act, _| match checked {
                    Ok(()) => act.execute(id, call, model, stream),
                    Err(reply) => {
                        act.in_flight.remove(&id);
                        Self::count_refusal(&reply);
                        Box::pin(actix::fut::ready(reply))
                    }
                }),
        )
    }

    /// Executed jobs past their expiry can no longer be settled: their reservations go.
    fn forget_expired(&mut self) {
        let now_s = chain::types::now_ms() / 1000;
        self.unsettled.retain(|_, (_, expiry)| *expiry > now_s);
    }

    /// Keeps an executed job's (client, nonce) until its expiry, within [`RECENT_JOBS`].
    fn remember(&mut self, record: &InferenceRecord) {
        let req = &record.job.request;
        let key = (req.client, req.nonce);
        let id = record.job_id(self.admission.domain());
        if self.recent.insert(key, (id, req.expiry)).is_none() {
            self.recent_order.push_back(key);
        }
        let now_s = chain::types::now_ms() / 1000;
        while let Some(oldest) = self.recent_order.front().copied() {
            let expired = self.recent.get(&oldest).is_none_or(|(_, e)| *e <= now_s);
            if !expired && self.recent_order.len() <= RECENT_JOBS {
                break;
            }
            self.recent_order.pop_front();
            self.recent.remove(&oldest);
        }
    }

    fn count_refusal(reply: &JobReply) {
        if let JobReply::Refused { code, .. } = reply {
            METRICS
                .jobs_declined
                .with_label_values(&[code.as_str()])
                .inc();
        }
    }

    fn execute(
        &mut self,
        job_id: JobId,
        call: JobCall,
        model: Arc<kernels::Model>,
        stream: Option<crate::batcher::TextStream>,
    ) -> ResponseActFuture<Self, JobReply> {
        tracing::debug!(job = %job_id, "job admitted");
        let backend = self.backend.clone();
        let key = self.key.clone();
        let domain = *self.admission.domain();
        let admission = self.admission.clone();
        let (faulty, unchecked) = (self.faulty, self.unchecked);
        let started = Instant::now();
        let attestation = self
            .admission
            .registrations()
            .registry
            .models
            .get(&call.job.request.model_id)
            .filter(|m| m.mode.needs_tee())
            .and(self.attestation.clone());
        // A generating model's jobs join its decode batch; others run on a blocking thread.
        let batcher = if model.generates() {
            match self.batchers.entry(model.id()) {
                std::collections::hash_map::Entry::Occupied(b) => Some(b.get().clone()),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    match crate::batcher::Batcher::spawn(model.clone(), backend.clone()) {
                        Ok(b) => Some(slot.insert(b).clone()),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot start a decode thread: jobs run alone");
                            None
                        }
                    }
                }
            }
        } else {
            None
        };
        let work = async move {
            let computed = match batcher {
                Some(b) => b
                    .run_streaming(call.input.as_bytes().to_vec(), stream)
                    .await
                    .map(|output| {
                        (
                            output.hash(),
                            output.units(call.input.len()),
                            output.to_json().to_string(),
                            call,
                        )
                    })
                    .map_err(|e| Self::refuse("bad_input", e)),
                // The call travels to the blocking thread and back: no copy of the input.
                None => tokio::task::spawn_blocking(move || {
                    model
                        .run(backend.as_ref(), call.input.as_bytes())
                        .map(|output| {
                            let units = output.units(call.input.len());
                            (output.hash(), units, output.to_json().to_string(), call)
                        })
                        .map_err(|e| Self::refuse("bad_input", e.to_string()))
                })
                .await
                .unwrap_or_else(|e| {
                    Err(Self::refuse(
                        "internal",
                        format!("inference task failed: {e}"),
                    ))
                }),
            }?;
            let (hash, units, output, call) = computed;
            let mut hash = chain::B256::from(hash);
            if faulty {
                hash.0[0] ^= 0xff;
            }
            let proof = match attestation {
                Some(att) => {
                    let leaf = chain::record::leaf(
                        &call.job.request,
                        (&hash, units),
                        &key.address(),
                        &domain,
                    );
                    let proof = att
                        .send(Attest { leaf })
                        .await
                        .map_err(|e| Self::refuse("attestation_failed", e.to_string()))?
                        .map_err(|e| Self::refuse("attestation_failed", e))?;
                    Proof::Tee(proof)
                }
                None => Proof::Reexec,
            };
            // Signed and checked as any record is before it enters a mempool, off the actix
            // thread (ECDSA signing and recovery).
            let signed = tokio::task::spawn_blocking(move || {
                let record =
                    InferenceRecord::create(call.job, call.input, (hash, units), proof, &key, &domain)
                        .map_err(|e| Self::refuse("internal", e.to_string()))?;
                let record = Arc::new(record);
                match admission.check(record.clone()) {
                    Ok(verified) => Ok((record, Some(verified))),
                    Err(e) if unchecked => {
                        tracing::warn!(job = %job_id, error = %e, "FAULT INJECTION: a record that fails its checks leaves this node");
                        Ok((record, None))
                    }
                    Err(e) => Err(Self::refuse("internal", format!("own record refused: {e}"))),
                }
            })
            .await
            .unwrap_or_else(|e| Err(Self::refuse("internal", format!("signing task failed: {e}"))))?;
            Ok::<_, JobReply>((signed, output))
        };
        Box::pin(work.into_actor(self).map(move |res, act, _| {
            let running = act.in_flight.remove(&job_id);
            if let Ok(((record, _), _)) = &res {
                act.remember(record);
                if let Some(r) = running {
                    act.unsettled
                        .insert(job_id, (r, record.job.request.expiry));
                }
            }
            match res {
                Ok(((record, verified), output)) => {
                    METRICS.jobs_executed.inc();
                    tracing::info!(job = %job_id, ms = started.elapsed().as_millis() as u64, "job executed");
                    act.network.do_send(Publish { topic: topics::RECORDS, data: protocol::encode(&*record) });
                    // Gossip does not deliver our own messages back to us.
                    if let Some(verified) = verified {
                        act.mempool.do_send(AddRecord(verified));
                    }
                    let record = Arc::try_unwrap(record).unwrap_or_else(|r| (*r).clone());
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
    /// A job from a gateway. A streamed one's text goes back to that gateway piece by piece
    /// as it is generated, all of it before the reply.
    fn handle(&mut self, msg: InboundJob, _: &mut Self::Context) -> Self::Result {
        if !msg.call.stream {
            return self.run(msg.call, Some(msg.peer), None);
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let job = msg.call.job.request.id(self.admission.domain());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let forward = forward_stream(self.network.clone(), msg.peer, job, rx);
        actix::spawn(async move {
            forward.await;
            let _ = done_tx.send(());
        });
        Box::pin(
            self.run(msg.call, Some(msg.peer), Some(tx))
                .then(|reply, act, _| {
                    async move {
                        // The decode dropped its sender: the forwarder flushes and ends.
                        let _ = done_rx.await;
                        reply
                    }
                    .into_actor(act)
                }),
        )
    }
}

/// Sends a streamed job's text to `peer` (the gateway that routed it here) as it comes,
/// one request at a time: pieces generated while one is in flight go together in the next
/// (up to [`crate::protocol::MAX_STREAM_TEXT_BYTES`]). When the gateway says nobody reads any
/// more (the client left), it stops and drops the receiver, which cancels the decode; when
/// the gateway cannot be reached, the rest goes with the answer only.
async fn forward_stream(
    network: Addr<Network>,
    peer: PeerId,
    job: chain::JobId,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use crate::protocol::{MAX_STREAM_TEXT_BYTES, StreamChunk};
    let mut seq = 0u32;
    let mut carry: Option<String> = None;
    loop {
        let mut text = match carry.take() {
            Some(t) => t,
            None => match rx.recv().await {
                Some(t) => t,
                None => return,
            },
        };
        while let Ok(more) = rx.try_recv() {
            if text.len() + more.len() > MAX_STREAM_TEXT_BYTES {
                carry = Some(more);
                break;
            }
            text.push_str(&more);
        }
        if text.len() > MAX_STREAM_TEXT_BYTES {
            // One piece is never this long (a step's text); cut at a character boundary.
            let mut cut = MAX_STREAM_TEXT_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            carry = Some(text.split_off(cut));
        }
        let sent = network
            .send(crate::network::SendStream {
                peer,
                chunk: StreamChunk { job, seq, text },
            })
            .await;
        seq += 1;
        match sent {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::debug!(%job, %peer, "the gateway takes no more of this stream");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(%job, %peer, error = %e, "stream text not delivered: the rest goes with the answer");
                while rx.recv().await.is_some() {}
                return;
            }
            Err(_) => {
                while rx.recv().await.is_some() {}
                return;
            }
        }
    }
}

impl Handler<RunJob> for Inference {
    type Result = ResponseActFuture<Self, JobReply>;
    fn handle(&mut self, msg: RunJob, _: &mut Self::Context) -> Self::Result {
        self.run(msg.0, None, msg.1)
    }
}

/// Whether this node may serve `id`: a model whose mode needs a TEE proof needs a TEE.
fn can_serve(registry: &chain::state::Registry, id: &kernels::ModelId, tee: bool) -> bool {
    let needs_tee = registry.models.get(id).is_some_and(|m| m.mode.needs_tee());
    if needs_tee && !tee {
        tracing::warn!(model = %id, "model requires a TEE proof and this node has no TEE ([attestation] tee = \"none\"): not serving it");
    }
    !needs_tee || tee
}

impl Handler<crate::hub::ServeModel> for Inference {
    type Result = ();
    /// A model fetched from peers: served from now on (and advertised), as one found on disk
    /// at start would be.
    fn handle(&mut self, msg: crate::hub::ServeModel, _: &mut Self::Context) {
        let id = msg.0;
        let live = self.admission.registrations();
        if self.models.get(&id).is_some()
            && !self.served.contains(&id)
            && can_serve(&live.registry, &id, self.attestation.is_some())
        {
            self.served.push(id);
            self.advertise();
        }
    }
}

impl Handler<crate::mempool::Committed> for Inference {
    type Result = ();
    /// A block settled these jobs: the ledger now holds what they cost.
    fn handle(&mut self, msg: crate::mempool::Committed, _: &mut Self::Context) {
        for id in &msg.jobs {
            self.unsettled.remove(id);
        }
        self.forget_expired();
    }
}

impl Handler<ServedModels> for Inference {
    type Result = Vec<kernels::ModelId>;
    fn handle(&mut self, _: ServedModels, _: &mut Self::Context) -> Self::Result {
        self.served.clone()
    }
}
