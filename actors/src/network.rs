//! The Network actor: owns the libp2p Swarm (TCP + noise + yamux, identify, ping, gossipsub,
//! Kademlia, request-response for jobs and sync) and routes what arrives to the other actors.
//!
//! The Swarm is driven by one task that the actor spawns and alone holds (the rust-libp2p
//! `select!` loop): commands come in over a channel, events go out over another into this actor,
//! which decodes them, reports gossip validation and dispatches typed messages. Nobody else
//! touches the Swarm.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, allow_block_list, connection_limits, identify, identity,
    kad, noise, ping, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::METRICS;
use crate::protocol::{
    self, ConsensusMsg, JobCall, JobReply, SignedCapability, SyncReply, SyncRequest, topics,
};

/// Network failures reported to callers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("libp2p setup: {0}")]
    Setup(String),
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("the network task has stopped")]
    Stopped,
    #[error("the network task is overloaded; try again")]
    Busy,
    #[error(transparent)]
    Wire(#[from] protocol::WireError),
}

/// Where decoded network input goes. Set once all actors exist (they refer to each other).
#[derive(Clone)]
pub struct Routes {
    pub records: Recipient<GossipRecord>,
    pub txs: Recipient<GossipTx>,
    pub consensus: Recipient<GossipConsensus>,
    pub capabilities: Recipient<GossipCapability>,
    /// Inbound job calls; `None` when this node runs no inference.
    pub jobs: Option<Recipient<InboundJob>>,
    pub sync: Recipient<InboundSync>,
}

// ---- messages the Network actor handles ----

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetRoutes(pub Routes);

/// Publish `data` (already encoded) on `topic`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub topic: &'static str,
    pub data: Vec<u8>,
}

/// The outcome of validating a gossip message that was handed out with its id.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportValidation {
    pub id: MessageId,
    pub source: PeerId,
    pub acceptance: MessageAcceptance,
}

/// Send a job to an inference node and wait for its reply.
#[derive(Message)]
#[rtype(result = "Result<JobReply, NetError>")]
pub struct SendJob {
    pub peer: PeerId,
    pub call: JobCall,
}

/// Ask a peer for finalized blocks.
#[derive(Message)]
#[rtype(result = "Result<SyncReply, NetError>")]
pub struct SendSync {
    pub peer: PeerId,
    pub request: SyncRequest,
}

/// Connected peers.
#[derive(Message)]
#[rtype(result = "Vec<PeerId>")]
pub struct GetPeers;

/// A peer misbehaved outside gossip validation (e.g. claimed blocks it does not serve): lower
/// its score; enough of these ban it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PenalisePeer {
    pub peer: PeerId,
    pub reason: &'static str,
}

/// The operator blocks (`blocked: true`) or unblocks a peer: a blocked peer is disconnected at
/// once and no connection to or from it is allowed until it is unblocked.
#[derive(Message)]
#[rtype(result = "Result<(), NetError>")]
pub struct BlockPeer {
    pub peer: PeerId,
    pub blocked: bool,
}

// ---- messages the Network actor sends ----

/// A record from gossip: the receiver validates it and answers with [`ReportValidation`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct GossipRecord {
    pub record: chain::InferenceRecord,
    pub id: MessageId,
    pub source: PeerId,
}

/// A transaction from gossip. The receiver (the mempool) runs admission and answers what
/// gossipsub should do with the message: only admitted transactions are relayed.
#[derive(Message)]
#[rtype(result = "MessageAcceptance")]
pub struct GossipTx(pub chain::Tx);

/// A consensus message from gossip (signatures are checked by the Consensus actor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct GossipConsensus {
    pub msg: ConsensusMsg,
    /// Its gossipsub id: the Consensus actor reports the validation result with it.
    pub id: MessageId,
    /// Encoded size in bytes (buffers are bounded in bytes).
    pub size: usize,
    /// The peer that relayed it to us.
    pub source: PeerId,
    /// The peer that published it (gossipsub signed messages name their author).
    pub origin: PeerId,
}

/// A capability from gossip, with the peer that authored it (signed gossip). The receiver (the
/// gateway) checks it and answers what gossipsub should do with the message.
#[derive(Message)]
#[rtype(result = "MessageAcceptance")]
pub struct GossipCapability {
    pub capability: SignedCapability,
    pub peer: PeerId,
}

/// A job call from a gateway; answer with the reply (the actor sends it back over the stream).
#[derive(Message)]
#[rtype(result = "JobReply")]
pub struct InboundJob {
    pub call: JobCall,
    pub peer: PeerId,
}

/// A sync request from a peer.
#[derive(Message)]
#[rtype(result = "SyncReply")]
pub struct InboundSync {
    pub request: SyncRequest,
    pub peer: PeerId,
}

// ---- the Swarm ----

/// Length-prefixed byte frames with a size limit; the envelope is decoded by the actor, which
/// knows the peer and can penalise it.
#[derive(Clone)]
pub struct FrameCodec {
    max_request: usize,
    max_response: usize,
}

impl FrameCodec {
    pub fn new(max_request: usize, max_response: usize) -> Self {
        FrameCodec {
            max_request,
            max_response,
        }
    }
}

async fn read_frame<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    use futures::AsyncReadExt;
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    data: Vec<u8>,
) -> std::io::Result<()> {
    use futures::AsyncWriteExt;
    let len = u32::try_from(data.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&data).await?;
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        read_frame(io, self.max_request).await
    }
    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        read_frame(io, self.max_response).await
    }
    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        write_frame(io, req).await
    }
    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()> {
        write_frame(io, res).await
    }
}

/// Connections being set up from outside at once (TCP accepted, noise or yamux not done).
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Connections from outside, and in all.
pub const MAX_ESTABLISHED_INCOMING: u32 = 256;
pub const MAX_ESTABLISHED: u32 = 512;
/// Connections to one peer (two lets simultaneous dials from both sides succeed).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Listen addresses taken from one peer's identify message: the rest are not dialed.
const MAX_IDENTIFY_ADDRS: usize = 8;
/// Peers we dial on our own (from the DHT) until we have this many; beyond it only others
/// connect to us.
const DIAL_TARGET_PEERS: usize = 48;

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    /// Peers the operator blocked: disconnected, and refused both ways until unblocked.
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    job: request_response::Behaviour<FrameCodec>,
    sync: request_response::Behaviour<FrameCodec>,
}

/// Network settings.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub listen: Vec<Multiaddr>,
    /// `/ip4/…/tcp/…/p2p/<peer id>` addresses to dial and seed Kademlia with.
    pub bootstrap: Vec<Multiaddr>,
}

enum Command {
    Publish {
        topic: &'static str,
        data: Vec<u8>,
    },
    Validation {
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    Job {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
    RespondJob {
        id: u64,
        data: Vec<u8>,
    },
    Sync {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
    RespondSync {
        id: u64,
        data: Vec<u8>,
    },
    Penalise {
        peer: PeerId,
        reason: &'static str,
    },
    Block {
        peer: PeerId,
        blocked: bool,
    },
}

impl Command {
    fn kind(&self) -> &'static str {
        match self {
            Command::Publish { .. } => "publish",
            Command::Validation { .. } => "validation",
            Command::Job { .. } => "job",
            Command::RespondJob { .. } => "respond_job",
            Command::Sync { .. } => "sync",
            Command::RespondSync { .. } => "respond_sync",
            Command::Penalise { .. } => "penalise",
            Command::Block { .. } => "block",
        }
    }
}

/// Gossip transactions and capabilities waiting for their owner's verdict at most; beyond it
/// new ones are ignored (and counted) until verdicts come back.
pub const MAX_PENDING_VERDICTS: usize = 1024;
/// Mailbox capacities of the actors gossip is routed to: a full mailbox drops the message
/// (`queue_dropped_total{queue="records"|"consensus"}`) and ignores it on gossip.
pub const RECORDS_MAILBOX: usize = 256;
pub const CONSENSUS_MAILBOX: usize = 4096;

/// Commands from the actors to the Swarm task waiting at most.
pub const COMMAND_QUEUE: usize = 4096;
/// Events from the Swarm task to the Network actor waiting at most (gossip, requests).
pub const EVENT_QUEUE: usize = 4096;

/// The bounded command queue's sending side: a full queue drops the command and counts it
/// (`queue_dropped_total{queue="commands"}`) instead of growing.
#[derive(Clone)]
struct Commands(mpsc::Sender<Command>);

impl Commands {
    fn send(&self, command: Command) -> Result<(), NetError> {
        let kind = command.kind();
        let sent = self.0.try_send(command);
        METRICS
            .queue_len
            .with_label_values(&["commands"])
            .set((COMMAND_QUEUE - self.0.capacity()) as i64);
        match sent {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                METRICS
                    .queue_dropped
                    .with_label_values(&["commands", kind])
                    .inc();
                Err(NetError::Busy)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NetError::Stopped),
        }
    }
}

enum Event {
    Gossip {
        topic: TopicHash,
        data: Vec<u8>,
        id: MessageId,
        source: PeerId,
        origin: Option<PeerId>,
    },
    JobRequest {
        id: u64,
        peer: PeerId,
        data: Vec<u8>,
    },
    SyncRequest {
        id: u64,
        peer: PeerId,
        data: Vec<u8>,
    },
    Peers(Vec<PeerId>),
    Listening(Multiaddr),
}

/// Inbound requests one peer may make per second on a protocol, and how many it may save up:
/// jobs (a busy gateway sends many) and sync (each reply carries up to 64 blocks, so a
/// catching-up node syncs 512 blocks a second). Beyond it the request's stream is closed.
pub const JOB_REQUESTS: RateLimit = RateLimit {
    per_second: 32.0,
    burst: 64.0,
};
pub const SYNC_REQUESTS: RateLimit = RateLimit {
    per_second: 8.0,
    burst: 32.0,
};

#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: RateLimit) -> Self {
        Bucket {
            tokens: limit.burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * limit.per_second;
        self.tokens = (self.tokens + earned).min(limit.burst);
        self.at = now;
    }

    /// Takes a token if there is one.
    fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Penalty points after which a peer is disconnected and refused for [`BAN_TIME`].
const BAN_THRESHOLD: u32 = 20;
const BAN_TIME: Duration = Duration::from_secs(60);

/// How long gossipsub remembers a message id, refusing to publish or deliver it again. Well
/// above the time a message takes to cross the mesh (gossip about it stops after three
/// heartbeats); below [`crate::mempool::REBROADCAST_AFTER`], so a pending entry can be sent
/// again.
pub const DUPLICATE_CACHE: Duration = Duration::from_secs(20);

fn build_swarm(key: identity::Keypair) -> Result<libp2p::Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_behaviour(|key| {
            let mut gs_config = gossipsub::ConfigBuilder::default();
            for t in topics::ALL {
                gs_config.max_transmit_size_for_topic(
                    protocol::max_topic_bytes(t),
                    IdentTopic::new(t).hash(),
                );
            }
            let gs_config = gs_config
                .heartbeat_interval(Duration::from_millis(700))
                .duplicate_cache_time(DUPLICATE_CACHE)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(protocol::max_topic_bytes(topics::CONSENSUS))
                .mesh_n_low(2)
                .mesh_n(4)
                .mesh_n_high(8)
                .mesh_outbound_min(1)
                .message_id_fn(|m: &gossipsub::Message| {
                    // Content-addressed ids over (topic, author, payload): one message however
                    // many peers relay it, while two nodes saying the same thing (a status at the
                    // same height) stay two messages.
                    let mut h = m.topic.as_str().as_bytes().to_vec();
                    h.extend_from_slice(&m.source.map(|p| p.to_bytes()).unwrap_or_default());
                    h.extend_from_slice(&m.data);
                    MessageId::from(chain::B256::from(alloy::primitives::keccak256(&h)).to_vec())
                })
                .build()
                .map_err(|e| format!("gossipsub config: {e}"))?;
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gs_config,
            )?;
            let mut params = gossipsub::PeerScoreParams::default();
            for t in topics::ALL {
                let tp = gossipsub::TopicScoreParams {
                    invalid_message_deliveries_weight: -10.0,
                    invalid_message_deliveries_decay: 0.9,
                    ..Default::default()
                };
                params.topics.insert(IdentTopic::new(t).hash(), tp);
            }
            gossipsub.with_peer_score(params, gossipsub::PeerScoreThresholds::default())?;
            let peer_id = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(StreamProtocol::new(protocol::KAD_PROTOCOL));
            kad_config.set_query_timeout(Duration::from_secs(10));
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad_config,
            );
            kad.set_mode(Some(kad::Mode::Server));
            let rr = |proto: &'static str, max_request, max_response, timeout| {
                request_response::Behaviour::with_codec(
                    FrameCodec {
                        max_request,
                        max_response,
                    },
                    [(StreamProtocol::new(proto), ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(timeout),
                )
            };
            Ok(Behaviour {
                gossipsub,
                kad,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/proofmesh/id/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
                blocked: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                        .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
                        .with_max_established(Some(MAX_ESTABLISHED))
                        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
                ),
                job: rr(
                    protocol::JOB_PROTOCOL,
                    protocol::MAX_JOB_BYTES,
                    protocol::MAX_JOB_BYTES,
                    Duration::from_secs(60),
                ),
                sync: rr(
                    protocol::SYNC_PROTOCOL,
                    1024,
                    protocol::MAX_SYNC_RESPONSE_BYTES,
                    Duration::from_secs(30),
                ),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

struct SwarmTask {
    swarm: libp2p::Swarm<Behaviour>,
    events: mpsc::Sender<Event>,
    pending_out:
        HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<Vec<u8>, String>>>,
    job_channels: HashMap<u64, request_response::ResponseChannel<Vec<u8>>>,
    sync_channels: HashMap<u64, request_response::ResponseChannel<Vec<u8>>>,
    next_inbound: u64,
    penalties: HashMap<PeerId, u32>,
    /// Inbound request budgets per (peer, is a job request).
    buckets: HashMap<(PeerId, bool), Bucket>,
    banned: HashMap<PeerId, Instant>,
    /// Banned peers to disconnect once the answers already queued for them are flushed.
    to_disconnect: Vec<(PeerId, Instant)>,
    bootstrap: Vec<Multiaddr>,
    /// Per bootstrap peer we are not connected to: the redial tick to dial it at next and the
    /// backoff (in ticks) after that.
    redial: HashMap<PeerId, (u64, u64)>,
    /// Redial ticks so far.
    redial_ticks: u64,
}

/// How often unreachable bootstrap peers are considered for a redial, and the longest backoff
/// between two dials of one of them.
const REDIAL_TICK: Duration = Duration::from_secs(1);
const REDIAL_MAX_TICKS: u64 = 30;

impl SwarmTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut redial = tokio::time::interval(REDIAL_TICK);
        let mut flush = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = flush.tick(), if !self.to_disconnect.is_empty() => {
                    let now = Instant::now();
                    let (due, later): (Vec<_>, Vec<_>) = self.to_disconnect.drain(..).partition(|(_, at)| *at <= now);
                    self.to_disconnect = later;
                    for (peer, _) in due {
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.swarm_event(ev),
                _ = tick.tick() => self.maintain(),
                _ = redial.tick() => self.redial_bootstrap(),
            }
        }
    }

    /// Dials every bootstrap peer we are not connected to, backing off per peer from one
    /// [`REDIAL_TICK`] to [`REDIAL_MAX_TICKS`]. Nodes start in any order: a peer that was not
    /// listening yet when we first dialed it is reached about a second after it is, not at the
    /// next [`SwarmTask::maintain`], and not only when we have no connection at all.
    fn redial_bootstrap(&mut self) {
        self.redial_ticks += 1;
        let tick = self.redial_ticks;
        let me = *self.swarm.local_peer_id();
        for addr in self.bootstrap.clone() {
            let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
                continue;
            };
            if peer == me || self.banned.contains_key(&peer) {
                continue;
            }
            if self.swarm.is_connected(&peer) {
                self.redial.remove(&peer);
                continue;
            }
            let (next, backoff) = *self.redial.entry(peer).or_insert((tick, 1));
            if next > tick {
                continue;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                .build();
            let entry = match self.swarm.dial(opts) {
                Ok(()) => {
                    tracing::debug!(%peer, "dialing bootstrap peer");
                    (tick + backoff, (backoff * 2).min(REDIAL_MAX_TICKS))
                }
                // Refused while a dial to it is still in flight: look again at the next tick.
                Err(_) => (tick + 1, backoff),
            };
            self.redial.insert(peer, entry);
        }
    }

    fn maintain(&mut self) {
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        if connected.is_empty() {
            // Bootstrap addresses without a peer id (the others are redialed per peer).
            for addr in self.bootstrap.clone() {
                if !matches!(
                    addr.iter().last(),
                    Some(libp2p::multiaddr::Protocol::P2p(_))
                ) {
                    let _ = self.swarm.dial(addr);
                }
            }
        }
        if self.swarm.behaviour_mut().kad.bootstrap().is_err() {
            tracing::trace!("kademlia bootstrap: no known peers yet");
        }
        self.banned.retain(|_, until| *until > Instant::now());
        // Penalties decay (a point per tick), so only a peer that keeps misbehaving is banned,
        // and the map holds only peers that misbehaved lately.
        self.penalties.retain(|_, points| {
            *points = points.saturating_sub(1);
            *points > 0
        });
        // Buckets that have refilled say nothing a fresh one would not.
        let now = Instant::now();
        self.buckets.retain(|(_, is_job), b| {
            let limit = if *is_job { JOB_REQUESTS } else { SYNC_REQUESTS };
            b.refill(limit, now);
            b.tokens < limit.burst
        });
    }

    fn penalise(&mut self, peer: PeerId, reason: &'static str) {
        let points = self.penalties.entry(peer).or_default();
        *points += 5;
        tracing::warn!(%peer, reason, points = *points, "peer misbehaved");
        if *points >= BAN_THRESHOLD {
            tracing::warn!(%peer, "disconnecting and banning peer for {}s", BAN_TIME.as_secs());
            self.banned.insert(peer, Instant::now() + BAN_TIME);
            self.penalties.remove(&peer);
            // The refusals already queued for it go out first; new requests are dropped.
            self.to_disconnect
                .push((peer, Instant::now() + Duration::from_millis(500)));
        }
    }

    fn command(&mut self, cmd: Command) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            Command::Publish { topic, data } => {
                if let Err(e) = b.gossipsub.publish(IdentTopic::new(topic), data) {
                    tracing::debug!(topic, error = %e, "publish failed");
                }
            }
            Command::Validation {
                id,
                source,
                acceptance,
            } => {
                b.gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Job { peer, data, reply } => {
                let id = b.job.send_request(&peer, data);
                self.pending_out.insert(id, reply);
            }
            Command::Sync { peer, data, reply } => {
                let id = b.sync.send_request(&peer, data);
                self.pending_out.insert(id, reply);
            }
            Command::RespondJob { id, data } => {
                if let Some(ch) = self.job_channels.remove(&id) {
                    let _ = b.job.send_response(ch, data);
                }
            }
            Command::RespondSync { id, data } => {
                if let Some(ch) = self.sync_channels.remove(&id) {
                    let _ = b.sync.send_response(ch, data);
                }
            }
            Command::Penalise { peer, reason } => self.penalise(peer, reason),
            Command::Block { peer, blocked } => {
                if blocked {
                    tracing::warn!(%peer, "peer blocked by the operator");
                    b.blocked.block_peer(peer);
                } else {
                    tracing::info!(%peer, "peer unblocked by the operator");
                    b.blocked.unblock_peer(peer);
                    self.redial.remove(&peer);
                }
            }
        }
    }

    fn rr_event(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>, is_job: bool) {
        use request_response::{Event as E, Message as M};
        match ev {
            E::Message {
                peer,
                message: M::Request {
                    request, channel, ..
                },
                ..
            } => {
                if self.banned.contains_key(&peer) {
                    // Dropping the channel closes the stream: banned peers get no answers.
                    drop(channel);
                    return;
                }
                let limit = if is_job { JOB_REQUESTS } else { SYNC_REQUESTS };
                let allowed = self
                    .buckets
                    .entry((peer, is_job))
                    .or_insert_with(|| Bucket::full(limit))
                    .take(limit, Instant::now());
                if !allowed {
                    let proto = if is_job {
                        protocol::JOB_PROTOCOL
                    } else {
                        protocol::SYNC_PROTOCOL
                    };
                    METRICS
                        .rpc_rejected
                        .with_label_values(&[proto, "rate_limited"])
                        .inc();
                    drop(channel);
                    return;
                }
                self.next_inbound += 1;
                let id = self.next_inbound;
                if is_job {
                    self.job_channels.insert(id, channel);
                    self.emit(Event::JobRequest {
                        id,
                        peer,
                        data: request,
                    });
                } else {
                    self.sync_channels.insert(id, channel);
                    self.emit(Event::SyncRequest {
                        id,
                        peer,
                        data: request,
                    });
                }
            }
            E::Message {
                message:
                    M::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(tx) = self.pending_out.remove(&request_id) {
                    let _ = tx.send(Ok(response));
                }
            }
            E::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(tx) = self.pending_out.remove(&request_id) {
                    let _ = tx.send(Err(error.to_string()));
                }
            }
            E::InboundFailure { peer, error, .. } => {
                let proto = if is_job {
                    protocol::JOB_PROTOCOL
                } else {
                    protocol::SYNC_PROTOCOL
                };
                tracing::warn!(%peer, protocol = proto, %error, "inbound request failed");
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    METRICS
                        .rpc_rejected
                        .with_label_values(&[proto, "malformed"])
                        .inc();
                    self.penalise(peer, "malformed request frame");
                }
            }
            E::ResponseSent { .. } => {}
        }
    }

    fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.emit(Event::Listening(address));
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                if self.banned.contains_key(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                tracing::debug!(%peer_id, "connected");
                self.peers_changed();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    tracing::debug!(%peer_id, "disconnected");
                }
                self.peers_changed();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                self.emit(Event::Gossip {
                    origin: message.source,
                    topic: message.topic,
                    data: message.data,
                    id: message_id,
                    source: propagation_source,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs.into_iter().take(MAX_IDENTIFY_ADDRS) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            // Small networks: connect to everyone we learn about, so gossip meshes fill.
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                addresses,
                ..
            })) if !self.swarm.is_connected(&peer)
                && !self.banned.contains_key(&peer)
                && self.swarm.connected_peers().count() < DIAL_TARGET_PEERS =>
            {
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addresses.into_vec())
                    .build();
                let _ = self.swarm.dial(opts);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Job(ev)) => self.rr_event(ev, true),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(ev)) => self.rr_event(ev, false),
            _ => {}
        }
    }

    /// Hands an event to the Network actor. A full queue drops it and counts it: a gossip
    /// message is ignored (neither relayed nor held against its sender), a request's stream is
    /// closed unanswered.
    fn emit(&mut self, event: Event) {
        let sent = self.events.try_send(event);
        METRICS
            .queue_len
            .with_label_values(&["events"])
            .set((EVENT_QUEUE - self.events.capacity()) as i64);
        let Err(mpsc::error::TrySendError::Full(event)) = sent else {
            return;
        };
        let kind = match event {
            Event::Gossip { id, source, .. } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, MessageAcceptance::Ignore);
                "gossip"
            }
            Event::JobRequest { id, .. } => {
                self.job_channels.remove(&id);
                "job"
            }
            Event::SyncRequest { id, .. } => {
                self.sync_channels.remove(&id);
                "sync"
            }
            Event::Peers(_) => "peers",
            Event::Listening(_) => "listening",
        };
        METRICS
            .queue_dropped
            .with_label_values(&["events", kind])
            .inc();
    }

    fn peers_changed(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        METRICS.peers.set(peers.len() as i64);
        self.emit(Event::Peers(peers));
    }
}

/// The Network actor.
pub struct Network {
    commands: Commands,
    events: Option<mpsc::Receiver<Event>>,
    routes: Option<Routes>,
    /// Gossip messages handed to their owner and not judged yet (see [`MAX_PENDING_VERDICTS`]).
    pending_verdicts: std::rc::Rc<std::cell::Cell<usize>>,
    peers: Vec<PeerId>,
    listen_tx: Option<oneshot::Sender<Multiaddr>>,
}

/// What [`Network::start`] returns: the actor, our peer id and the first listen address.
pub struct Started {
    pub addr: Addr<Network>,
    pub peer_id: PeerId,
    pub listen: oneshot::Receiver<Multiaddr>,
}

impl Network {
    /// Builds the Swarm, starts listening and dialing, and starts the actor. Must run inside an
    /// actix system.
    pub fn start(key: identity::Keypair, config: NetworkConfig) -> Result<Started, NetError> {
        let peer_id = key.public().to_peer_id();
        let mut swarm = build_swarm(key)?;
        for t in topics::ALL {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&IdentTopic::new(t))
                .map_err(|e| NetError::Setup(e.to_string()))?;
        }
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Setup(format!("listen on {addr}: {e}")))?;
        }
        for addr in &config.bootstrap {
            if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                if peer == peer_id {
                    continue;
                }
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let task = SwarmTask {
            swarm,
            events: ev_tx,
            pending_out: HashMap::new(),
            job_channels: HashMap::new(),
            sync_channels: HashMap::new(),
            next_inbound: 0,
            penalties: HashMap::new(),
            buckets: HashMap::new(),
            banned: HashMap::new(),
            to_disconnect: Vec::new(),
            bootstrap: config.bootstrap,
            redial: HashMap::new(),
            redial_ticks: 0,
        };
        actix::spawn(task.run(cmd_rx));
        let (listen_tx, listen_rx) = oneshot::channel();
        let addr = Network {
            commands: Commands(cmd_tx),
            events: Some(ev_rx),
            routes: None,
            pending_verdicts: Default::default(),
            peers: Vec::new(),
            listen_tx: Some(listen_tx),
        }
        .start();
        Ok(Started {
            addr,
            peer_id,
            listen: listen_rx,
        })
    }

    fn reject(&self, topic: &str, reason: &str, id: MessageId, source: PeerId) {
        METRICS
            .gossip_rejected
            .with_label_values(&[topic, reason])
            .inc();
        tracing::warn!(topic, reason, %source, "gossip message rejected");
        let _ = self.commands.send(Command::Validation {
            id,
            source,
            acceptance: MessageAcceptance::Reject,
        });
    }

    /// Reports to gossipsub what the message's owner decided, once it has (a lost answer
    /// ignores the message: it is neither relayed nor held against the sender).
    fn report_when(
        &self,
        id: MessageId,
        source: PeerId,
        verdict: impl std::future::Future<Output = Result<MessageAcceptance, MailboxError>> + 'static,
    ) {
        let pending = self.pending_verdicts.clone();
        if pending.get() >= MAX_PENDING_VERDICTS {
            self.dropped("verdicts", "gossip", id, source);
            return;
        }
        pending.set(pending.get() + 1);
        METRICS
            .queue_len
            .with_label_values(&["verdicts"])
            .set(pending.get() as i64);
        let commands = self.commands.clone();
        actix::spawn(async move {
            let acceptance = verdict.await.unwrap_or(MessageAcceptance::Ignore);
            pending.set(pending.get().saturating_sub(1));
            let _ = commands.send(Command::Validation {
                id,
                source,
                acceptance,
            });
        });
    }

    /// A gossip message dropped for a full queue: counted, and ignored on gossip.
    fn dropped(&self, queue: &str, kind: &str, id: MessageId, source: PeerId) {
        METRICS
            .queue_dropped
            .with_label_values(&[queue, kind])
            .inc();
        let _ = self.commands.send(Command::Validation {
            id,
            source,
            acceptance: MessageAcceptance::Ignore,
        });
    }

    fn on_gossip(
        &mut self,
        topic: TopicHash,
        data: Vec<u8>,
        id: MessageId,
        source: PeerId,
        origin: Option<PeerId>,
    ) {
        let Some(routes) = self.routes.clone() else {
            let _ = self.commands.send(Command::Validation {
                id,
                source,
                acceptance: MessageAcceptance::Ignore,
            });
            return;
        };
        let t = topic.as_str();
        METRICS.gossip_received.with_label_values(&[t]).inc();
        match t {
            topics::RECORDS => match protocol::decode_record(&data) {
                Ok(record) => {
                    if let Err(SendError::Full(m) | SendError::Closed(m)) =
                        routes.records.try_send(GossipRecord { record, id, source })
                    {
                        self.dropped("records", "gossip", m.id, m.source);
                    }
                }
                Err(e) => self.reject(topics::RECORDS, &short(&e), id, source),
            },
            topics::TXS => match protocol::decode_tx(&data) {
                Ok(tx) => {
                    // Relayed only once the mempool admitted it (signature, nonce, balance).
                    self.report_when(id, source, routes.txs.send(GossipTx(tx)));
                }
                Err(e) => self.reject(topics::TXS, &short(&e), id, source),
            },
            topics::CONSENSUS => match protocol::decode_consensus(&data) {
                // The Consensus actor checks signatures, membership and heights, then reports.
                Ok(msg) => {
                    if let Err(SendError::Full(m) | SendError::Closed(m)) =
                        routes.consensus.try_send(GossipConsensus {
                            msg,
                            id,
                            size: data.len(),
                            source,
                            origin: origin.unwrap_or(source),
                        })
                    {
                        self.dropped("consensus", "gossip", m.id, m.source);
                    }
                }
                Err(e) => self.reject(topics::CONSENSUS, &short(&e), id, source),
            },
            topics::CAPABILITIES => match protocol::decode_capability(&data) {
                Ok(capability) => {
                    // The author (signed gossip), not the peer that relayed it, serves the jobs.
                    let Some(peer) = origin else {
                        self.reject(topics::CAPABILITIES, "no author", id, source);
                        return;
                    };
                    let check = routes
                        .capabilities
                        .send(GossipCapability { capability, peer });
                    self.report_when(id, source, check);
                }
                Err(e) => self.reject(topics::CAPABILITIES, &short(&e), id, source),
            },
            _ => {
                let _ = self.commands.send(Command::Validation {
                    id,
                    source,
                    acceptance: MessageAcceptance::Ignore,
                });
            }
        }
    }
}

fn short(e: &protocol::WireError) -> String {
    match e {
        protocol::WireError::Version(_) => "version".into(),
        protocol::WireError::Codec(chain::Error::TooLarge { .. }) => "oversized".into(),
        _ => "malformed".into(),
    }
}

impl Actor for Network {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(mut rx) = self.events.take() {
            ctx.add_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        }
    }
}

impl StreamHandler<Event> for Network {
    fn handle(&mut self, ev: Event, ctx: &mut Self::Context) {
        match ev {
            Event::Gossip {
                topic,
                data,
                id,
                source,
                origin,
            } => self.on_gossip(topic, data, id, source, origin),
            Event::Peers(p) => self.peers = p,
            Event::Listening(a) => {
                if let Some(tx) = self.listen_tx.take() {
                    let _ = tx.send(a);
                }
            }
            Event::JobRequest { id, peer, data } => {
                let commands = self.commands.clone();
                let reply = match protocol::decode::<JobCall>(&data, protocol::MAX_JOB_BYTES) {
                    Err(e) => {
                        METRICS
                            .rpc_rejected
                            .with_label_values(&[protocol::JOB_PROTOCOL, &short(&e)])
                            .inc();
                        tracing::warn!(%peer, error = %e, "malformed job request");
                        let _ = commands.send(Command::RespondJob {
                            id,
                            data: protocol::encode(&JobReply::Refused {
                                code: "bad_request".into(),
                                message: e.to_string(),
                            }),
                        });
                        let _ = commands.send(Command::Penalise {
                            peer,
                            reason: "malformed job request",
                        });
                        return;
                    }
                    Ok(call) => call,
                };
                let Some(jobs) = self.routes.as_ref().and_then(|r| r.jobs.clone()) else {
                    let _ = commands.send(Command::RespondJob {
                        id,
                        data: protocol::encode(&JobReply::Refused {
                            code: "not_inference".into(),
                            message: "this node runs no inference".into(),
                        }),
                    });
                    return;
                };
                ctx.spawn(
                    async move {
                        let reply = jobs
                            .send(InboundJob { call: reply, peer })
                            .await
                            .unwrap_or_else(|e| JobReply::Refused {
                                code: "unavailable".into(),
                                message: e.to_string(),
                            });
                        let _ = commands.send(Command::RespondJob {
                            id,
                            data: protocol::encode(&reply),
                        });
                    }
                    .into_actor(self),
                );
            }
            Event::SyncRequest { id, peer, data } => {
                let commands = self.commands.clone();
                let request = match protocol::decode::<SyncRequest>(&data, 1024) {
                    Ok(r) => r,
                    Err(e) => {
                        METRICS
                            .rpc_rejected
                            .with_label_values(&[protocol::SYNC_PROTOCOL, &short(&e)])
                            .inc();
                        tracing::warn!(%peer, error = %e, "malformed sync request");
                        let _ = commands.send(Command::RespondSync {
                            id,
                            data: protocol::encode(&SyncReply::Error(e.to_string())),
                        });
                        let _ = commands.send(Command::Penalise {
                            peer,
                            reason: "malformed sync request",
                        });
                        return;
                    }
                };
                let Some(sync) = self.routes.as_ref().map(|r| r.sync.clone()) else {
                    return;
                };
                ctx.spawn(
                    async move {
                        let reply = sync
                            .send(InboundSync { request, peer })
                            .await
                            .unwrap_or_else(|e| SyncReply::Error(e.to_string()));
                        let _ = commands.send(Command::RespondSync {
                            id,
                            data: protocol::encode(&reply),
                        });
                    }
                    .into_actor(self),
                );
            }
        }
    }
}

impl Handler<SetRoutes> for Network {
    type Result = ();
    fn handle(&mut self, msg: SetRoutes, _: &mut Self::Context) {
        self.routes = Some(msg.0);
    }
}

impl Handler<Publish> for Network {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Self::Context) {
        let _ = self.commands.send(Command::Publish {
            topic: msg.topic,
            data: msg.data,
        });
    }
}

impl Handler<ReportValidation> for Network {
    type Result = ();
    fn handle(&mut self, msg: ReportValidation, _: &mut Self::Context) {
        let _ = self.commands.send(Command::Validation {
            id: msg.id,
            source: msg.source,
            acceptance: msg.acceptance,
        });
    }
}

impl Handler<PenalisePeer> for Network {
    type Result = ();
    fn handle(&mut self, msg: PenalisePeer, _: &mut Self::Context) {
        let _ = self.commands.send(Command::Penalise {
            peer: msg.peer,
            reason: msg.reason,
        });
    }
}

impl Handler<BlockPeer> for Network {
    type Result = Result<(), NetError>;
    fn handle(&mut self, msg: BlockPeer, _: &mut Self::Context) -> Self::Result {
        self.commands.send(Command::Block {
            peer: msg.peer,
            blocked: msg.blocked,
        })
    }
}

impl Handler<GetPeers> for Network {
    type Result = Vec<PeerId>;
    fn handle(&mut self, _: GetPeers, _: &mut Self::Context) -> Vec<PeerId> {
        self.peers.clone()
    }
}

async fn request(
    commands: Commands,
    make: impl FnOnce(oneshot::Sender<Result<Vec<u8>, String>>) -> Command,
    peer: PeerId,
) -> Result<Vec<u8>, NetError> {
    let (tx, rx) = oneshot::channel();
    commands.send(make(tx))?;
    rx.await
        .map_err(|_| NetError::Stopped)?
        .map_err(|reason| NetError::Request { peer, reason })
}

impl Handler<SendJob> for Network {
    type Result = ResponseFuture<Result<JobReply, NetError>>;
    fn handle(&mut self, msg: SendJob, _: &mut Self::Context) -> Self::Result {
        let commands = self.commands.clone();
        let data = protocol::encode(&msg.call);
        let peer = msg.peer;
        Box::pin(async move {
            let bytes = request(commands, |reply| Command::Job { peer, data, reply }, peer).await?;
            Ok(protocol::decode::<JobReply>(
                &bytes,
                protocol::MAX_JOB_BYTES,
            )?)
        })
    }
}

impl Handler<SendSync> for Network {
    type Result = ResponseFuture<Result<SyncReply, NetError>>;
    fn handle(&mut self, msg: SendSync, _: &mut Self::Context) -> Self::Result {
        let commands = self.commands.clone();
        let data = protocol::encode(&msg.request);
        let peer = msg.peer;
        Box::pin(async move {
            let bytes =
                request(commands, |reply| Command::Sync { peer, data, reply }, peer).await?;
            Ok(protocol::decode::<SyncReply>(
                &bytes,
                protocol::MAX_SYNC_RESPONSE_BYTES,
            )?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> Command {
        Command::Publish {
            topic: topics::TXS,
            data: vec![1, 2, 3],
        }
    }

    /// A peer gets its burst at once, then requests at the sustained rate only.
    #[test]
    fn request_budgets_refill_at_their_rate() {
        let limit = SYNC_REQUESTS;
        let t0 = Instant::now();
        let mut b = Bucket::full(limit);
        b.at = t0;
        let burst = limit.burst as usize;
        assert!((0..burst).all(|_| b.take(limit, t0)));
        assert!(!b.take(limit, t0), "the burst is spent");
        let one = Duration::from_secs_f64(1.0 / limit.per_second);
        assert!(b.take(limit, t0 + one), "one request's worth refilled");
        assert!(!b.take(limit, t0 + one));
        // A long pause refills no more than the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            (0..burst * 2).filter(|_| b.take(limit, later)).count(),
            burst
        );
    }

    /// A full command queue refuses (and counts) instead of growing; a stopped task is
    /// reported as such.
    #[test]
    fn the_command_queue_is_bounded() {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let commands = Commands(tx);
        let dropped = || {
            METRICS
                .queue_dropped
                .with_label_values(&["commands", "publish"])
                .get()
        };
        let before = dropped();
        for _ in 0..COMMAND_QUEUE {
            commands.send(publish()).unwrap();
        }
        assert!(matches!(commands.send(publish()), Err(NetError::Busy)));
        assert_eq!(dropped(), before + 1);
        assert_eq!(
            METRICS.queue_len.with_label_values(&["commands"]).get(),
            COMMAND_QUEUE as i64
        );
        drop(rx);
        assert!(matches!(commands.send(publish()), Err(NetError::Stopped)));
    }
}
