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

/// Sends garbage to the node at `target` (`/ip4/…/tcp/…/p2p/…`).
pub fn send_garbage(target: &str, seed: u64) -> Result<GarbageReport> {
    let target: Multiaddr = target.parse().context("target multiaddr")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move { run(target, seed).await })
}

async fn run(target: Multiaddr, seed: u64) -> Result<GarbageReport> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let cfg = gossipsub::ConfigBuilder::default()
                .max_transmit_size(4 * 1024 * 1024)
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
            })
        })?
        .build();
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

    // Wait until the node has told us its subscriptions (so publishing reaches it).
    let mut subscribed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while subscribed < topics::ALL.len() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .context("node never subscribed")?;
        if let SwarmEvent::Behaviour(HostileEvent::Gossipsub(gossipsub::Event::Subscribed {
            peer_id,
            ..
        })) = ev
            && peer_id == peer
        {
            subscribed += 1;
        }
    }

    let mut report = GarbageReport::default();
    let mut s = seed | 1;
    let mut payloads: Vec<Vec<u8>> = vec![vec![], vec![0xff; 3], vec![1, 0], vec![9, 0, 1, 2, 3]];
    for len in [17usize, 100, 5000] {
        let mut v: Vec<u8> = (0..len).map(|_| xorshift(&mut s)).collect();
        payloads.push(v.clone());
        v[0] = 1; // right version, garbage body
        v[1] = 0;
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
