//! The Network actor: decodes what the Swarm task hands it, reports gossip validation and
//! routes typed messages to their owners; the other actors' messages become commands for the
//! task.

use actix::prelude::*;
use libp2p::gossipsub::{MessageAcceptance, MessageId, TopicHash};
use libp2p::{Multiaddr, PeerId, identity};
use tokio::sync::{mpsc, oneshot};

use super::peers::Rpc;
use super::swarm::{self, Command, Commands, Event};
use super::{
    BlockPeer, FindProviders, GetPeers, GossipCapability, GossipConsensus, GossipRecord, GossipTx,
    InboundJob, InboundModel, InboundStream, InboundSync, MAX_PENDING_VERDICTS, NetError,
    NetworkConfig, PenalisePeer, ProvideModel, Publish, ReportValidation, Routes, SendJob,
    SendModelRequest, SendStream, SendSync, SetRoutes,
};
use crate::metrics::METRICS;
use crate::protocol::{
    self, JobCall, JobReply, ModelReply, ModelRequest, StreamChunk, SyncReply, SyncRequest, topics,
};

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
        let (commands, events) = swarm::spawn(key, config)?;
        let (listen_tx, listen_rx) = oneshot::channel();
        let addr = Network {
            commands,
            events: Some(events),
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
            Event::Request {
                rpc: Rpc::Job,
                id,
                peer,
                data,
            } => {
                let commands = self.commands.clone();
                let reply = match protocol::decode::<JobCall>(&data, protocol::MAX_JOB_BYTES) {
                    Err(e) => {
                        METRICS
                            .rpc_rejected
                            .with_label_values(&[protocol::JOB_PROTOCOL, &short(&e)])
                            .inc();
                        tracing::warn!(%peer, error = %e, "malformed job request");
                        let _ = commands.send(Command::Respond {
                            rpc: Rpc::Job,
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
                    let _ = commands.send(Command::Respond {
                        rpc: Rpc::Job,
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
                        let _ = commands.send(Command::Respond {
                            rpc: Rpc::Job,
                            id,
                            data: protocol::encode(&reply),
                        });
                    }
                    .into_actor(self),
                );
            }
            Event::Request {
                rpc: Rpc::Model,
                id,
                peer,
                data,
            } => {
                let commands = self.commands.clone();
                let respond = move |reply: &ModelReply| {
                    let _ = commands.send(Command::Respond {
                        rpc: Rpc::Model,
                        id,
                        data: protocol::encode(reply),
                    });
                };
                let request = match protocol::decode::<ModelRequest>(
                    &data,
                    protocol::MAX_MODEL_REQUEST_BYTES,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        METRICS
                            .rpc_rejected
                            .with_label_values(&[protocol::MODEL_PROTOCOL, &short(&e)])
                            .inc();
                        tracing::warn!(%peer, error = %e, "malformed model request");
                        respond(&ModelReply::NotFound(format!("malformed request: {e}")));
                        let _ = self.commands.send(Command::Penalise {
                            peer,
                            reason: "malformed model request",
                        });
                        return;
                    }
                };
                let Some(models) = self.routes.as_ref().and_then(|r| r.models.clone()) else {
                    respond(&ModelReply::NotFound("this node serves no models".into()));
                    return;
                };
                ctx.spawn(
                    async move {
                        let reply = models
                            .send(InboundModel { request, peer })
                            .await
                            .unwrap_or_else(|e| ModelReply::NotFound(e.to_string()));
                        respond(&reply);
                    }
                    .into_actor(self),
                );
            }
            Event::Request {
                rpc: Rpc::Stream,
                id,
                peer,
                data,
            } => {
                let commands = self.commands.clone();
                let respond = move |go_on: bool| {
                    let _ = commands.send(Command::Respond {
                        rpc: Rpc::Stream,
                        id,
                        data: protocol::encode(&go_on),
                    });
                };
                let chunk = match protocol::decode::<StreamChunk>(
                    &data,
                    protocol::MAX_STREAM_CHUNK_BYTES,
                ) {
                    Ok(c) => c,
                    Err(e) => {
                        METRICS
                            .rpc_rejected
                            .with_label_values(&[protocol::STREAM_PROTOCOL, &short(&e)])
                            .inc();
                        tracing::warn!(%peer, error = %e, "malformed stream chunk");
                        respond(false);
                        let _ = self.commands.send(Command::Penalise {
                            peer,
                            reason: "malformed stream chunk",
                        });
                        return;
                    }
                };
                let Some(streams) = self.routes.as_ref().map(|r| r.streams.clone()) else {
                    respond(false);
                    return;
                };
                ctx.spawn(
                    async move {
                        let go_on = streams
                            .send(InboundStream { chunk, peer })
                            .await
                            .unwrap_or(false);
                        respond(go_on);
                    }
                    .into_actor(self),
                );
            }
            Event::Request {
                rpc: Rpc::Sync,
                id,
                peer,
                data,
            } => {
                let commands = self.commands.clone();
                let request = match protocol::decode::<SyncRequest>(&data, 1024) {
                    Ok(r) => r,
                    Err(e) => {
                        METRICS
                            .rpc_rejected
                            .with_label_values(&[protocol::SYNC_PROTOCOL, &short(&e)])
                            .inc();
                        tracing::warn!(%peer, error = %e, "malformed sync request");
                        let _ = commands.send(Command::Respond {
                            rpc: Rpc::Sync,
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
                        let _ = commands.send(Command::Respond {
                            rpc: Rpc::Sync,
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

/// Sends `data` to `peer` over `rpc`'s request-response protocol and decodes the answer as
/// `T`, refusing one over `limit` bytes.
fn call<T: serde::de::DeserializeOwned + 'static>(
    commands: Commands,
    rpc: Rpc,
    peer: PeerId,
    data: Vec<u8>,
    limit: usize,
) -> ResponseFuture<Result<T, NetError>> {
    Box::pin(async move {
        let (reply, rx) = oneshot::channel();
        commands.send(Command::Request {
            rpc,
            peer,
            data,
            reply,
        })?;
        let bytes = rx
            .await
            .map_err(|_| NetError::Stopped)?
            .map_err(|f| f.into_error(peer))?;
        Ok(protocol::decode::<T>(&bytes, limit)?)
    })
}

impl Handler<SendJob> for Network {
    type Result = ResponseFuture<Result<JobReply, NetError>>;
    fn handle(&mut self, msg: SendJob, _: &mut Self::Context) -> Self::Result {
        let data = protocol::encode(&msg.call);
        call(
            self.commands.clone(),
            Rpc::Job,
            msg.peer,
            data,
            protocol::MAX_JOB_BYTES,
        )
    }
}

impl Handler<SendSync> for Network {
    type Result = ResponseFuture<Result<SyncReply, NetError>>;
    fn handle(&mut self, msg: SendSync, _: &mut Self::Context) -> Self::Result {
        let data = protocol::encode(&msg.request);
        call(
            self.commands.clone(),
            Rpc::Sync,
            msg.peer,
            data,
            protocol::MAX_SYNC_RESPONSE_BYTES,
        )
    }
}

impl Handler<SendModelRequest> for Network {
    type Result = ResponseFuture<Result<ModelReply, NetError>>;
    fn handle(&mut self, msg: SendModelRequest, _: &mut Self::Context) -> Self::Result {
        let data = protocol::encode(&msg.request);
        call(
            self.commands.clone(),
            Rpc::Model,
            msg.peer,
            data,
            protocol::MAX_MODEL_REPLY_BYTES,
        )
    }
}

impl Handler<ProvideModel> for Network {
    type Result = ();
    fn handle(&mut self, msg: ProvideModel, _: &mut Self::Context) {
        let _ = self.commands.send(Command::Provide {
            key: msg.0.0.to_vec(),
        });
    }
}

impl Handler<FindProviders> for Network {
    type Result = ResponseFuture<Result<Vec<PeerId>, NetError>>;
    fn handle(&mut self, msg: FindProviders, _: &mut Self::Context) -> Self::Result {
        let (reply, rx) = oneshot::channel();
        let sent = self.commands.send(Command::FindProviders {
            key: msg.0.0.to_vec(),
            reply,
        });
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| NetError::Stopped)
        })
    }
}

impl Handler<SendStream> for Network {
    type Result = ResponseFuture<Result<bool, NetError>>;
    fn handle(&mut self, msg: SendStream, _: &mut Self::Context) -> Self::Result {
        let data = protocol::encode(&msg.chunk);
        call(self.commands.clone(), Rpc::Stream, msg.peer, data, 64)
    }
}
