//! A hostile peer for fault tests: connects to a node over real libp2p and sends malformed,
//! oversized and wrong-version messages on every gossip topic and request-response protocol.

use std::time::Duration;

use actors::network::FrameCodec;
use actors::protocol::{self, topics};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, noise, tcp, yamux};

#[derive(NetworkBehaviour)]
struct Hostile {
    gossipsub: gossipsub::Behaviour,
    job: request_response::Behaviour<FrameCodec>,
    sync: request_response::Behaviour<FrameCodec>,
    stream: request_response::Behaviour<FrameCodec>,
}

/// What the hostile peer did and what came back.
#[derive(Debug, Default, serde::Serialize)]
pub struct GarbageReport {
    pub gossip_published: usize,
    pub requests_sent: usize,
    /// Replies that decoded as a refusal (`JobReply::Refused` / `SyncReply::Error`).
    pub refusals: usize,
    /// Requests the node answered by closing the stream (oversized frames).
    pub stream_errors: usize,
}

fn xorshift(seed: &mut u64) -> u8 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed as u8
}

/// A fresh identity with gossipsub (messages up to `max_transmit` bytes) and both
/// request-response protocols, each accepting frames far larger than a node sends.
fn hostile_swarm(max_transmit: usize) -> Result<libp2p::Swarm<Hostile>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let cfg = gossipsub::ConfigBuilder::default()
                .max_transmit_size(max_transmit)
                .build()
                .map_err(|e| e.to_string())?;
            let rr = |p: &'static str| {
                request_response::Behaviour::with_codec(
                    FrameCodec::new(64 * 1024 * 1024, 64 * 1024 * 1024),
                    [(StreamProtocol::new(p), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10)),
                )
            };
            Ok(Hostile {
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    cfg,
                )?,
                job: rr(protocol::JOB_PROTOCOL),
                sync: rr(protocol::SYNC_PROTOCOL),
                stream: rr(protocol::STREAM_PROTOCOL),
            })
        })?
        .build())
}

/// Sends garbage to the node at `target` (`/ip4/…/tcp/…/p2p/…`).
pub fn send_garbage(target: &str, seed: u64) -> Result<GarbageReport> {
    let target: Multiaddr = target.parse().context("target multiaddr")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move { run(target, seed).await })
}

async fn run(target: Multiaddr, seed: u64) -> Result<GarbageReport> {
    let mut swarm = hostile_swarm(4 * 1024 * 1024)?;
    for t in topics::ALL {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(t))?;
    }
    swarm.dial(target.clone())?;
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = target.iter().last() else {
        bail!("target has no /p2p/ peer id");
    };

    subscribed(&mut swarm, peer, &topics::ALL).await?;

    let mut report = GarbageReport::default();
    let mut s = seed | 1;
    let version = protocol::WIRE_VERSION.to_le_bytes();
    let mut payloads: Vec<Vec<u8>> =
        vec![vec![], vec![0xff; 3], version.to_vec(), vec![9, 0, 1, 2, 3]];
    for len in [17usize, 100, 5000] {
        let mut v: Vec<u8> = (0..len).map(|_| xorshift(&mut s)).collect();
        payloads.push(v.clone());
        v[..2].copy_from_slice(&version); // right version, garbage body
        payloads.push(v);
    }
    // Interleaved over the topics: the node's peer scoring graylists us after a few rejected
    // messages, and every topic should see garbage before that.
    for p in &payloads {
        for t in topics::ALL {
            if swarm
                .behaviour_mut()
                .gossipsub
                .publish(IdentTopic::new(t), p.clone())
                .is_ok()
            {
                report.gossip_published += 1;
            }
        }
    }
    let b = swarm.behaviour_mut();
    let mut pending = 0;
    for p in payloads.iter().take(6) {
        b.job.send_request(&peer, p.clone());
        b.sync.send_request(&peer, p.clone());
        pending += 2;
    }
    // Oversized frames: refused by the node's codec before any decoding.
    b.job
        .send_request(&peer, vec![0u8; protocol::MAX_JOB_BYTES + 10]);
    b.sync.send_request(&peer, vec![0u8; 4096]);
    pending += 2;
    report.requests_sent = pending;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pending > 0 {
        let Ok(ev) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await else {
            break;
        };
        use request_response::{Event as E, Message as M};
        match ev {
            SwarmEvent::Behaviour(HostileEvent::Job(E::Message {
                message: M::Response { response, .. },
                ..
            })) => {
                pending -= 1;
                if let Ok(protocol::JobReply::Refused { .. }) =
                    protocol::decode::<protocol::JobReply>(&response, protocol::MAX_JOB_BYTES)
                {
                    report.refusals += 1;
                }
            }
            SwarmEvent::Behaviour(HostileEvent::Sync(E::Message {
                message: M::Response { response, .. },
                ..
            })) => {
                pending -= 1;
                if let Ok(protocol::SyncReply::Error(_)) =
                    protocol::decode::<protocol::SyncReply>(&response, 1 << 20)
                {
                    report.refusals += 1;
                }
            }
            SwarmEvent::Behaviour(HostileEvent::Job(E::OutboundFailure { .. }))
            | SwarmEvent::Behaviour(HostileEvent::Sync(E::OutboundFailure { .. })) => {
                pending -= 1;
                report.stream_errors += 1;
            }
            _ => {}
        }
    }
    // Let gossip flush before dropping the connection.
    let flush = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::timeout_at(flush, swarm.select_next_some())
        .await
        .is_ok()
    {}
    Ok(report)
}

/// Runs `f` on the hostile peer's own single-threaded runtime.
fn block_on<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Waits, 15 s at most, until `peer` has told us it subscribes to each of `topics`: only then
/// does what we publish there reach it.
async fn subscribed(
    swarm: &mut libp2p::Swarm<Hostile>,
    peer: libp2p::PeerId,
    topics: &[&str],
) -> Result<()> {
    let mut missing: Vec<&str> = topics.to_vec();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !missing.is_empty() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .with_context(|| format!("node never subscribed to {missing:?}"))?;
        if let SwarmEvent::Behaviour(HostileEvent::Gossipsub(gossipsub::Event::Subscribed {
            peer_id,
            topic,
        })) = ev
            && peer_id == peer
        {
            missing.retain(|t| *t != topic.as_str());
        }
    }
    Ok(())
}

/// A fresh hostile peer subscribed to `topic`, dialing `target` (`/ip4/…/tcp/…/p2p/…`);
/// returns it with the target's peer id. Must run inside the runtime.
fn join(target: &str, topic: &str) -> Result<(libp2p::Swarm<Hostile>, libp2p::PeerId)> {
    let target: Multiaddr = target.parse().context("target multiaddr")?;
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = target.iter().last() else {
        bail!("target has no /p2p/ peer id");
    };
    let mut swarm = hostile_swarm(protocol::MAX_CONSENSUS_BYTES)?;
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&IdentTopic::new(topic))?;
    swarm.dial(target)?;
    Ok((swarm, peer))
}

/// Connects to the node at `target` as a fresh peer and publishes each of `messages` on
/// `topic` (bytes as given: valid, forged or replayed messages alike); returns how many
/// gossipsub took.
pub fn publish(target: &str, topic: &'static str, messages: Vec<Vec<u8>>) -> Result<usize> {
    block_on(async move {
        let (mut swarm, peer) = join(target, topic)?;
        subscribed(&mut swarm, peer, &[topic]).await?;
        let mut sent = 0;
        for m in messages {
            if swarm
                .behaviour_mut()
                .gossipsub
                .publish(IdentTopic::new(topic), m)
                .is_ok()
            {
                sent += 1;
            }
        }
        let flush = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::timeout_at(flush, swarm.select_next_some())
            .await
            .is_ok()
        {}
        Ok(sent)
    })
}

/// Connects to the node at `target` as a fresh peer, subscribes to `topic` and returns the
/// payloads of the first `count` messages seen there within `timeout` (what an eavesdropper
/// captures to replay). `ready` is called once the node has seen our subscription.
pub fn capture(
    target: &str,
    topic: &'static str,
    count: usize,
    timeout: Duration,
    ready: impl FnOnce(),
) -> Result<Vec<Vec<u8>>> {
    block_on(async move {
        let (mut swarm, _) = join(target, topic)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ready = Some(ready);
        let mut seen = Vec::new();
        while seen.len() < count {
            let Ok(ev) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await else {
                break;
            };
            match ev {
                SwarmEvent::Behaviour(HostileEvent::Gossipsub(gossipsub::Event::Subscribed {
                    topic: t,
                    ..
                })) if t.as_str() == topic => {
                    // The node told us its subscription: ours reaches it alike, and a
                    // gossipsub heartbeat (1 s) later we are in its mesh.
                    if let Some(f) = ready.take() {
                        f();
                    }
                }
                SwarmEvent::Behaviour(HostileEvent::Gossipsub(gossipsub::Event::Message {
                    message,
                    ..
                })) if message.topic.as_str() == topic => seen.push(message.data),
                _ => {}
            }
        }
        Ok(seen)
    })
}

/// Sends one `/proofmesh/job/1` request (`request`: encoded bytes, valid or not) to the node at
/// `target` from a fresh peer, as a gateway would, and returns the raw reply.
pub fn call_job(target: &str, request: Vec<u8>) -> Result<Vec<u8>> {
    call(target, protocol::JOB_PROTOCOL, request)
}

/// Sends one `/proofmesh/stream/1` request (a piece of streamed text, valid or not) to the
/// node at `target` from a fresh peer, and returns the raw reply.
pub fn call_stream(target: &str, request: Vec<u8>) -> Result<Vec<u8>> {
    call(target, protocol::STREAM_PROTOCOL, request)
}

fn call(target: &str, proto: &'static str, request: Vec<u8>) -> Result<Vec<u8>> {
    block_on(async move {
        let (mut swarm, peer) = join(target, topics::CAPABILITIES)?;
        if proto == protocol::STREAM_PROTOCOL {
            swarm.behaviour_mut().stream.send_request(&peer, request);
        } else {
            swarm.behaviour_mut().job.send_request(&peer, request);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .with_context(|| format!("no reply on {proto}"))?;
            use request_response::{Event as E, Message as M};
            let (SwarmEvent::Behaviour(HostileEvent::Job(ev))
            | SwarmEvent::Behaviour(HostileEvent::Stream(ev))) = ev
            else {
                continue;
            };
            match ev {
                E::Message {
                    message: M::Response { response, .. },
                    ..
                } => return Ok(response),
                E::OutboundFailure { error, .. } => bail!("{proto} call failed: {error}"),
                _ => {}
            }
        }
    })
}

/// Dials the node at `target` `dials` times at once from one fresh identity; returns how many
/// of those connections are still open `settle` later (the node keeps at most a few per peer).
pub fn flood_connections(target: &str, dials: usize, settle: Duration) -> Result<usize> {
    block_on(async move {
        let (mut swarm, peer) = join(target, topics::CAPABILITIES)?;
        let addr: Multiaddr = target.parse().context("target multiaddr")?;
        for _ in 1..dials {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .build();
            swarm.dial(opts)?;
        }
        let mut open = 0usize;
        let deadline = tokio::time::Instant::now() + settle;
        while let Ok(ev) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => open += 1,
                SwarmEvent::ConnectionClosed { peer_id, .. } if peer_id == peer => {
                    open = open.saturating_sub(1)
                }
                _ => {}
            }
        }
        Ok(open)
    })
}

/// Sends `count` copies of the sync request `request` to the node at `target` at once, from one
/// fresh identity; returns (answered, refused or failed).
pub fn sync_flood(target: &str, request: Vec<u8>, count: usize) -> Result<(usize, usize)> {
    block_on(async move {
        let (mut swarm, peer) = join(target, topics::CAPABILITIES)?;
        for _ in 0..count {
            swarm
                .behaviour_mut()
                .sync
                .send_request(&peer, request.clone());
        }
        let (mut answered, mut failed) = (0, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while answered + failed < count {
            let Ok(ev) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await else {
                break;
            };
            use request_response::{Event as E, Message as M};
            match ev {
                SwarmEvent::Behaviour(HostileEvent::Sync(E::Message {
                    message: M::Response { .. },
                    ..
                })) => answered += 1,
                SwarmEvent::Behaviour(HostileEvent::Sync(E::OutboundFailure { .. })) => failed += 1,
                _ => {}
            }
        }
        Ok((answered, failed))
    })
}

/// What the lying peer did.
#[derive(Debug, Default, serde::Serialize)]
pub struct LiarReport {
    /// Status messages claiming height `u64::MAX - 1` published.
    pub claims_published: usize,
    /// Sync requests it answered with an empty block list.
    pub empty_answers: usize,
    /// Its own sync request for heights 2^64 - 2 ..= 2^64 - 1 was answered with an error.
    pub overflow_request_refused: bool,
    /// Junk proposals (well-formed, badly signed, about `junk_bytes` each) published.
    pub junk_published: usize,
}

/// Junk proposals: well-formed, about `bytes` each, for heights `height ..= height + 2`, naming
/// the real proposer of round 0 (from `validators`, the genesis set) but not signed by it, so
/// that each passes every cheap check and costs the node a signature check.
#[derive(Clone, Debug, Default)]
pub struct Junk {
    pub count: usize,
    pub bytes: usize,
    pub height: u64,
    pub validators: Vec<(chain::Address, u64)>,
}

/// A peer that lies about sync: for `duration` it claims, every 300 ms, to be at height
/// `u64::MAX - 1`, and answers every sync request with an empty list. It also asks the node for
/// heights 2^64 - 2 ..= 2^64 - 1 (once a panic), and first publishes the `junk` proposals.
pub fn lie_about_sync(target: &str, duration: Duration, junk: Junk) -> Result<LiarReport> {
    let target: Multiaddr = target.parse().context("target multiaddr")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move { liar(target, duration, junk).await })
}

/// Junk proposal number `seed` (see [`Junk`]).
/// Junk is signed for no network in particular: its signatures need only parse.
const JUNK_DOMAIN: chain::signing::Domain = chain::signing::Domain {
    chain_id: 1,
    salt: chain::B256::ZERO,
    payments: None,
};

fn junk_proposal(seed: u64, junk: &Junk) -> Result<Vec<u8>> {
    let bytes = junk.bytes;
    let height = junk.height + seed % 3;
    let set = chain::consensus::ValidatorSet::new(junk.validators.clone());
    let key = chain::PrivateKeySigner::random();
    let input = "x".repeat(chain::record::MAX_INPUT_BYTES - 64);
    let records = (0..bytes.div_ceil(input.len()))
        .map(|i| {
            let job = chain::JobRequest {
                client: key.address(),
                model_id: kernels::ModelId([7; 32]),
                input_hash: alloy::primitives::keccak256(input.as_bytes()),
                max_fee: 1,
                nonce: seed * 1000 + i as u64,
                expiry: 1,
            }
            .sign(&key, &JUNK_DOMAIN)?;
            Ok(chain::InferenceRecord::create(
                job,
                input.clone(),
                (chain::B256::ZERO, input.len() as u64),
                chain::Proof::Reexec,
                &key,
                &JUNK_DOMAIN,
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let proposer = set.proposer(height, 0).copied().unwrap_or(key.address());
    let block = chain::Block {
        header: chain::BlockHeader {
            height,
            parent: chain::B256::ZERO,
            proposer,
            timestamp_ms: seed,
            records_root: chain::B256::ZERO,
            txs_root: chain::B256::ZERO,
            state_root: chain::B256::ZERO,
            last_commit_hash: Default::default(),
            next_validators_hash: Default::default(),
            anchor_records_root: Default::default(),
            anchor_withdrawals_root: Default::default(),
        },
        records,
        txs: Vec::new(),
        last_commit: None,
    };
    let proposal = chain::SignedProposal::sign(
        chain::Proposal {
            height: block.header.height,
            round: 0,
            block_hash: block.hash(),
            pol_round: None,
            proposer,
        },
        &key,
        &JUNK_DOMAIN,
    )?;
    Ok(protocol::encode(&protocol::ConsensusMsg::Proposal {
        proposal,
        block: std::sync::Arc::new(block),
    }))
}

async fn liar(target: Multiaddr, duration: Duration, junk: Junk) -> Result<LiarReport> {
    let mut swarm = hostile_swarm(protocol::MAX_CONSENSUS_BYTES)?;
    let topic = IdentTopic::new(topics::CONSENSUS);
    swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
    swarm.dial(target.clone())?;
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = target.iter().last() else {
        bail!("target has no /p2p/ peer id");
    };
    subscribed(&mut swarm, peer, &[topics::CONSENSUS]).await?;
    let mut report = LiarReport::default();
    swarm.behaviour_mut().sync.send_request(
        &peer,
        protocol::encode(&protocol::SyncRequest {
            from: u64::MAX - 1,
            to: u64::MAX,
        }),
    );
    for i in 0..junk.count {
        let data = junk_proposal(i as u64, &junk)?;
        if swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), data)
            .is_ok()
        {
            report.junk_published += 1;
        }
        // Let the connection drain so the junk is delivered rather than queued here.
        let pace = tokio::time::Instant::now() + Duration::from_millis(20);
        while let Ok(ev) = tokio::time::timeout_at(pace, swarm.select_next_some()).await {
            answer(&mut swarm, ev, &mut report);
        }
    }
    let end = tokio::time::Instant::now() + duration;
    let mut next_claim = tokio::time::Instant::now();
    while tokio::time::Instant::now() < end {
        if tokio::time::Instant::now() >= next_claim {
            let claim = protocol::encode(&protocol::ConsensusMsg::Status {
                height: u64::MAX - 1,
                votes: Vec::new(),
                issued_ms: chain::types::now_ms(),
            });
            if swarm
                .behaviour_mut()
                .gossipsub
                .publish(topic.clone(), claim)
                .is_ok()
            {
                report.claims_published += 1;
            }
            next_claim += Duration::from_millis(300);
        }
        let wake = next_claim.min(end);
        if let Ok(ev) = tokio::time::timeout_at(wake, swarm.select_next_some()).await {
            answer(&mut swarm, ev, &mut report);
        }
    }
    Ok(report)
}

/// Answers sync requests with nothing, and notes the reply to our own overflow request.
fn answer(
    swarm: &mut libp2p::Swarm<Hostile>,
    ev: SwarmEvent<HostileEvent>,
    report: &mut LiarReport,
) {
    use request_response::{Event as E, Message as M};
    match ev {
        SwarmEvent::Behaviour(HostileEvent::Sync(E::Message {
            message: M::Request { channel, .. },
            ..
        })) => {
            let empty = protocol::encode(&protocol::SyncReply::Blocks(Vec::new()));
            if swarm
                .behaviour_mut()
                .sync
                .send_response(channel, empty)
                .is_ok()
            {
                report.empty_answers += 1;
            }
        }
        SwarmEvent::Behaviour(HostileEvent::Sync(E::Message {
            message: M::Response { response, .. },
            ..
        })) => {
            report.overflow_request_refused = matches!(
                protocol::decode::<protocol::SyncReply>(&response, 1 << 20),
                Ok(protocol::SyncReply::Error(_))
            );
        }
        _ => {}
    }
}
