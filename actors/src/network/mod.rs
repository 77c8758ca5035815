//! The Network actor: owns the libp2p Swarm (TCP + noise + yamux, identify, ping, gossipsub,
//! Kademlia, request-response for jobs and sync) and routes what arrives to the other actors.
//!
//! The Swarm is driven by one task that the actor spawns and alone holds (the rust-libp2p
//! `select!` loop): commands come in over a channel, events go out over another into this actor,
//! which decodes them, reports gossip validation and dispatches typed messages. Nobody else
//! touches the Swarm.
//!
//! The parts: `codec` frames request-response streams; `swarm` builds the Swarm and runs the
//! task that owns it; `peers` keeps what that task knows about peers (penalties, bans, request
//! budgets, redials of bootstrap peers); `router` is the actor. The messages, the settings and
//! the public limits are here; the internal ones sit next to the code they bound.

use std::time::Duration;

use actix::prelude::*;
use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::{Multiaddr, PeerId};

use crate::protocol::{
    self, ConsensusMsg, JobCall, JobReply, ModelReply, ModelRequest, SignedCapability, StreamChunk,
    SyncReply, SyncRequest,
};

mod codec;
mod peers;
mod router;
mod swarm;

pub use codec::FrameCodec;
pub use peers::RateLimit;
pub use router::{Network, Started};

/// Network failures reported to callers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("libp2p setup: {0}")]
    Setup(String),
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    /// The request never reached the peer (no connection could be made): safe to send again.
    #[error("request to {peer} not delivered: {reason}")]
    Unreachable { peer: PeerId, reason: String },
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
    /// Inbound model requests; `None` when this node serves no model files.
    pub models: Option<Recipient<InboundModel>>,
    /// Streamed text of jobs this node's gateway routed elsewhere.
    pub streams: Recipient<InboundStream>,
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

/// Ask a peer for a model's manifest or a chunk of one of its files.
#[derive(Message)]
#[rtype(result = "Result<ModelReply, NetError>")]
pub struct SendModelRequest {
    pub peer: PeerId,
    pub request: ModelRequest,
}

/// Send the next piece of a streamed job's text to the gateway that routed the job here;
/// answers whether to go on.
#[derive(Message)]
#[rtype(result = "Result<bool, NetError>")]
pub struct SendStream {
    pub peer: PeerId,
    pub chunk: StreamChunk,
}

/// Announce in Kademlia that this node provides a model's files.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProvideModel(pub kernels::ModelId);

/// The peers Kademlia knows to provide a model's files.
#[derive(Message)]
#[rtype(result = "Result<Vec<PeerId>, NetError>")]
pub struct FindProviders(pub kernels::ModelId);

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

/// A piece of streamed text from the inference node a job was routed to; answer whether it
/// should go on.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct InboundStream {
    pub chunk: StreamChunk,
    pub peer: PeerId,
}

/// A model request from a peer.
#[derive(Message)]
#[rtype(result = "ModelReply")]
pub struct InboundModel {
    pub request: ModelRequest,
    pub peer: PeerId,
}

/// A sync request from a peer.
#[derive(Message)]
#[rtype(result = "SyncReply")]
pub struct InboundSync {
    pub request: SyncRequest,
    pub peer: PeerId,
}

/// Network settings.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub listen: Vec<Multiaddr>,
    /// `/ip4/…/tcp/…/p2p/<peer id>` addresses to dial and seed Kademlia with.
    pub bootstrap: Vec<Multiaddr>,
}

// ---- limits ----

/// Connections being set up from outside at once (TCP accepted, noise or yamux not done).
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Connections from outside, and in all.
pub const MAX_ESTABLISHED_INCOMING: u32 = 256;
pub const MAX_ESTABLISHED: u32 = 512;
/// Connections to one peer (two lets simultaneous dials from both sides succeed).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;

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
/// Model requests (manifests and 1 MiB chunks): a peer fetching a model asks for one chunk at
/// a time, so this bounds what one peer draws to about 256 MiB/s.
pub const MODEL_REQUESTS: RateLimit = RateLimit {
    per_second: 256.0,
    burst: 512.0,
};
/// Streamed text pieces: one per decode step of each job a peer streams to us at most
/// (pieces coalesce while one is in flight).
pub const STREAM_REQUESTS: RateLimit = RateLimit {
    per_second: 512.0,
    burst: 1024.0,
};

/// How long gossipsub remembers a message id, refusing to publish or deliver it again. Well
/// above the time a message takes to cross the mesh (gossip about it stops after three
/// heartbeats); below [`crate::mempool::REBROADCAST_AFTER`], so a pending entry can be sent
/// again.
pub const DUPLICATE_CACHE: Duration = Duration::from_secs(20);
