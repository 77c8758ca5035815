//! The Swarm and the one task that owns it: a bounded `select!` loop over the commands from the
//! actors, the Swarm's events and its timers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, allow_block_list, connection_limits, identify, identity,
    kad, noise, ping, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use super::codec::FrameCodec;
use super::peers::{Peers, REDIAL_TICK, Rpc};
use super::{
    COMMAND_QUEUE, DUPLICATE_CACHE, EVENT_QUEUE, MAX_CONNECTIONS_PER_PEER, MAX_ESTABLISHED,
    MAX_ESTABLISHED_INCOMING, MAX_PENDING_INCOMING, NetError, NetworkConfig,
};
use crate::metrics::METRICS;
use crate::protocol::{self, topics};

/// Listen addresses taken from one peer's identify message: the rest are not dialed.
const MAX_IDENTIFY_ADDRS: usize = 8;
/// How long a gateway waits for an inference node's answer to a job: a long generation on
/// a CPU (thousands of tokens at a few per second) takes minutes.
const JOB_TIMEOUT: Duration = Duration::from_secs(900);

/// Where an outbound request's answer goes.
type Reply = oneshot::Sender<Result<Vec<u8>, Failure>>;

/// How often this node announces again the models it provides.
const REPROVIDE_EVERY: Duration = Duration::from_secs(20);
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
    model: request_response::Behaviour<FrameCodec>,
    stream: request_response::Behaviour<FrameCodec>,
}

impl Behaviour {
    /// The request-response behaviour of `rpc`.
    fn rr(&mut self, rpc: Rpc) -> &mut request_response::Behaviour<FrameCodec> {
        match rpc {
            Rpc::Job => &mut self.job,
            Rpc::Sync => &mut self.sync,
            Rpc::Model => &mut self.model,
            Rpc::Stream => &mut self.stream,
        }
    }
}

pub(super) enum Command {
    Publish {
        topic: &'static str,
        data: Vec<u8>,
    },
    Validation {
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    /// A request of protocol `rpc` to `peer`; its answer (or failure) goes to `reply`.
    Request {
        rpc: Rpc,
        peer: PeerId,
        data: Vec<u8>,
        reply: Reply,
    },
    /// The answer to inbound request `id` of protocol `rpc`.
    Respond {
        rpc: Rpc,
        id: u64,
        data: Vec<u8>,
    },
    /// Announce in Kademlia that this node provides `key` (a model id), now and again every
    /// [`REPROVIDE_EVERY`] while it runs.
    Provide {
        key: Vec<u8>,
    },
    /// The peers Kademlia knows to provide `key`.
    FindProviders {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<PeerId>>,
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
            Command::Request { rpc, .. } => rpc.name(),
            Command::Respond { rpc, .. } => rpc.respond_name(),
            Command::Provide { .. } => "provide",
            Command::FindProviders { .. } => "find_providers",
            Command::Penalise { .. } => "penalise",
            Command::Block { .. } => "block",
        }
    }
}

/// The bounded command queue's sending side: a full queue drops the command and counts it
/// (`queue_dropped_total{queue="commands"}`) instead of growing.
#[derive(Clone)]
pub(super) struct Commands(mpsc::Sender<Command>);

impl Commands {
    pub(super) fn send(&self, command: Command) -> Result<(), NetError> {
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

pub(super) enum Event {
    Gossip {
        topic: TopicHash,
        data: Vec<u8>,
        id: MessageId,
        source: PeerId,
        origin: Option<PeerId>,
    },
    /// An inbound request of protocol `rpc`; answer it with [`Command::Respond`] and `id`.
    Request {
        rpc: Rpc,
        id: u64,
        peer: PeerId,
        data: Vec<u8>,
    },
    Peers(Vec<PeerId>),
    Listening(Multiaddr),
}

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
                    FrameCodec::new(max_request, max_response),
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
                    JOB_TIMEOUT,
                ),
                sync: rr(
                    protocol::SYNC_PROTOCOL,
                    1024,
                    protocol::MAX_SYNC_RESPONSE_BYTES,
                    Duration::from_secs(30),
                ),
                model: rr(
                    protocol::MODEL_PROTOCOL,
                    protocol::MAX_MODEL_REQUEST_BYTES,
                    protocol::MAX_MODEL_REPLY_BYTES,
                    Duration::from_secs(30),
                ),
                stream: rr(
                    protocol::STREAM_PROTOCOL,
                    protocol::MAX_STREAM_CHUNK_BYTES,
                    64,
                    Duration::from_secs(10),
                ),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

/// Builds the Swarm, subscribes to every topic, starts listening and dialing, and spawns the task
/// that alone drives it. Returns the command queue's sending side and the event queue's receiving
/// side. Must run inside an actix system.
pub(super) fn spawn(
    key: identity::Keypair,
    config: NetworkConfig,
) -> Result<(Commands, mpsc::Receiver<Event>), NetError> {
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
        channels: HashMap::new(),
        provider_queries: HashMap::new(),
        provided: Vec::new(),
        last_provided: Instant::now(),
        next_inbound: 0,
        peers: Peers::new(config.bootstrap),
    };
    actix::spawn(task.run(cmd_rx));
    Ok((Commands(cmd_tx), ev_rx))
}

/// The task that owns the Swarm: the actors reach it only through [`Commands`], and it reaches
/// them only through the bounded event queue.
struct SwarmTask {
    swarm: libp2p::Swarm<Behaviour>,
    events: mpsc::Sender<Event>,
    /// Outbound requests waiting for their answer, by protocol and request id: each
    /// request-response behaviour numbers its requests from 1, so an id alone is ambiguous.
    pending_out: HashMap<(Rpc, request_response::OutboundRequestId), Reply>,
    /// Inbound requests waiting for their answer, by the id handed out with them.
    channels: HashMap<u64, request_response::ResponseChannel<Vec<u8>>>,
    /// Running provider lookups: the providers found so far and who waits for them.
    provider_queries: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
    /// Keys this node provides, announced again every [`REPROVIDE_EVERY`].
    provided: Vec<kad::RecordKey>,
    last_provided: Instant,
    next_inbound: u64,
    /// Penalties, bans, request budgets and redials.
    peers: Peers,
}

/// Why an outbound request got no answer.
#[derive(Debug)]
pub(super) struct Failure {
    /// The request never left: no connection to the peer could be made.
    pub(super) undelivered: bool,
    pub(super) reason: String,
}

impl Failure {
    pub(super) fn of(error: &request_response::OutboundFailure) -> Failure {
        Failure {
            undelivered: matches!(error, request_response::OutboundFailure::DialFailure),
            reason: error.to_string(),
        }
    }

    /// The error the requester sees: [`NetError::Unreachable`] when the request never left.
    pub(super) fn into_error(self, peer: PeerId) -> NetError {
        let reason = self.reason;
        if self.undelivered {
            NetError::Unreachable { peer, reason }
        } else {
            NetError::Request { peer, reason }
        }
    }
}

impl SwarmTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut redial = tokio::time::interval(REDIAL_TICK);
        let mut flush = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = flush.tick(), if self.peers.disconnects_pending() => {
                    for peer in self.peers.due_disconnects(Instant::now()) {
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.swarm_event(ev),
                _ = tick.tick() => self.maintain(),
                _ = redial.tick() => self.peers.redial_bootstrap(&mut self.swarm),
            }
        }
    }

    fn maintain(&mut self) {
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        if connected.is_empty() {
            // Bootstrap addresses without a peer id (the others are redialed per peer).
            for addr in self.peers.bootstrap().to_vec() {
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
        self.peers.maintain();
        // Inbound requests whose answer will never come (its command dropped on a full queue,
        // or the actor gone): the behaviour closed the channel at the request timeout, and the
        // entry goes with it.
        self.channels.retain(|_, ch| ch.is_open());
        // Provider records reach the peers closest to the key that are known when announced:
        // on a young network few are, so announce again while it fills.
        if self.last_provided.elapsed() >= REPROVIDE_EVERY {
            self.last_provided = Instant::now();
            for key in self.provided.clone() {
                let _ = self.swarm.behaviour_mut().kad.start_providing(key);
            }
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
            Command::Request {
                rpc,
                peer,
                data,
                reply,
            } => {
                let id = b.rr(rpc).send_request(&peer, data);
                self.pending_out.insert((rpc, id), reply);
            }
            Command::Respond { rpc, id, data } => {
                if let Some(ch) = self.channels.remove(&id) {
                    let _ = b.rr(rpc).send_response(ch, data);
                }
            }
            Command::Provide { key } => {
                let key = kad::RecordKey::new(&key);
                if let Err(e) = b.kad.start_providing(key.clone()) {
                    tracing::warn!(error = %e, "cannot announce a provided model");
                }
                if !self.provided.contains(&key) {
                    self.provided.push(key);
                }
            }
            Command::FindProviders { key, reply } => {
                let id = b.kad.get_providers(kad::RecordKey::new(&key));
                self.provider_queries.insert(id, (HashSet::new(), reply));
            }
            Command::Penalise { peer, reason } => self.peers.penalise(peer, reason),
            Command::Block { peer, blocked } => {
                if blocked {
                    tracing::warn!(%peer, "peer blocked by the operator");
                    b.blocked.block_peer(peer);
                } else {
                    tracing::info!(%peer, "peer unblocked by the operator");
                    b.blocked.unblock_peer(peer);
                    self.peers.unblocked(&peer);
                }
            }
        }
    }

    fn rr_event(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>, rpc: Rpc) {
        use request_response::{Event as E, Message as M};
        match ev {
            E::Message {
                peer,
                message: M::Request {
                    request, channel, ..
                },
                ..
            } => {
                if self.peers.is_banned(&peer) {
                    // Dropping the channel closes the stream: banned peers get no answers.
                    drop(channel);
                    return;
                }
                if !self.peers.allow_request(peer, rpc) {
                    METRICS
                        .rpc_rejected
                        .with_label_values(&[rpc.protocol(), "rate_limited"])
                        .inc();
                    drop(channel);
                    return;
                }
                self.next_inbound += 1;
                let id = self.next_inbound;
                self.channels.insert(id, channel);
                let event = Event::Request {
                    rpc,
                    id,
                    peer,
                    data: request,
                };
                self.emit(event);
            }
            E::Message {
                message:
                    M::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(tx) = self.pending_out.remove(&(rpc, request_id)) {
                    let _ = tx.send(Ok(response));
                }
            }
            E::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(tx) = self.pending_out.remove(&(rpc, request_id)) {
                    let _ = tx.send(Err(Failure::of(&error)));
                }
            }
            E::InboundFailure { peer, error, .. } => {
                let proto = rpc.protocol();
                tracing::warn!(%peer, protocol = proto, %error, "inbound request failed");
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    METRICS
                        .rpc_rejected
                        .with_label_values(&[proto, "malformed"])
                        .inc();
                    self.peers.penalise(peer, "malformed request frame");
                }
            }
            E::ResponseSent { .. } => {}
        }
    }

    /// A provider lookup's progress: providers gather until its last step, then go to the
    /// waiting caller.
    fn providers_found(&mut self, id: kad::QueryId, result: kad::GetProvidersResult, last: bool) {
        if let Some((found, _)) = self.provider_queries.get_mut(&id)
            && let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result
        {
            found.extend(providers);
        }
        if last && let Some((found, reply)) = self.provider_queries.remove(&id) {
            let _ = reply.send(found.into_iter().collect());
        }
    }

    fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.emit(Event::Listening(address));
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                if self.peers.is_banned(&peer_id) {
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
                && !self.peers.is_banned(&peer)
                && self.swarm.connected_peers().count() < DIAL_TARGET_PEERS =>
            {
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addresses.into_vec())
                    .build();
                let _ = self.swarm.dial(opts);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            })) => self.providers_found(id, result, step.last),
            SwarmEvent::Behaviour(BehaviourEvent::Job(ev)) => self.rr_event(ev, Rpc::Job),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(ev)) => self.rr_event(ev, Rpc::Sync),
            SwarmEvent::Behaviour(BehaviourEvent::Model(ev)) => self.rr_event(ev, Rpc::Model),
            SwarmEvent::Behaviour(BehaviourEvent::Stream(ev)) => self.rr_event(ev, Rpc::Stream),
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
            Event::Request { rpc, id, .. } => {
                self.channels.remove(&id);
                rpc.name()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> Command {
        Command::Publish {
            topic: topics::TXS,
            data: vec![1, 2, 3],
        }
    }

    /// Each request-response behaviour numbers its requests from 1: requests of different
    /// protocols in flight at once must each keep their own answer slot (a job call's was
    /// once overwritten by a stream piece's, and the call failed as "network task stopped").
    #[tokio::test]
    async fn requests_of_each_protocol_keep_their_own_slot() {
        let (events, _rx) = mpsc::channel(8);
        let mut task = SwarmTask {
            swarm: build_swarm(identity::Keypair::generate_ed25519()).unwrap(),
            events,
            pending_out: HashMap::new(),
            channels: HashMap::new(),
            provider_queries: HashMap::new(),
            provided: Vec::new(),
            last_provided: Instant::now(),
            next_inbound: 0,
            peers: Peers::new(Vec::new()),
        };
        let mut answers = Vec::new();
        for rpc in [Rpc::Job, Rpc::Sync, Rpc::Model, Rpc::Stream] {
            let (reply, rx) = oneshot::channel();
            task.command(Command::Request {
                rpc,
                peer: PeerId::random(),
                data: vec![1],
                reply,
            });
            answers.push(rx);
        }
        assert_eq!(task.pending_out.len(), 4);
        drop(task);
        for rx in answers {
            // Dropped with the task, not before: every slot was kept.
            assert!(rx.await.is_err());
        }
    }

    /// Only a failed dial means the peer never got the request (a retry cannot run it twice).
    #[test]
    fn only_a_failed_dial_is_undelivered() {
        use request_response::OutboundFailure as F;
        assert!(Failure::of(&F::DialFailure).undelivered);
        for e in [F::Timeout, F::ConnectionClosed, F::UnsupportedProtocols] {
            assert!(!Failure::of(&e).undelivered, "{e}");
        }
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
