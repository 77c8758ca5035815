//! What the Swarm task knows about peers: penalty points and bans, inbound request budgets
//! (token buckets) and the redials of bootstrap peers we are not connected to.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::swarm::NetworkBehaviour;
use libp2p::{Multiaddr, PeerId};

use super::{JOB_REQUESTS, MODEL_REQUESTS, STREAM_REQUESTS, SYNC_REQUESTS};
use crate::protocol;

/// The request-response protocols, each with its own inbound budget per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Rpc {
    Job,
    Sync,
    Model,
    Stream,
}

impl Rpc {
    fn limit(self) -> RateLimit {
        match self {
            Rpc::Job => JOB_REQUESTS,
            Rpc::Sync => SYNC_REQUESTS,
            Rpc::Model => MODEL_REQUESTS,
            Rpc::Stream => STREAM_REQUESTS,
        }
    }

    /// Its label in the queue metrics: requests sent, and answers (`respond_…`).
    pub(super) fn name(self) -> &'static str {
        match self {
            Rpc::Job => "job",
            Rpc::Sync => "sync",
            Rpc::Model => "model",
            Rpc::Stream => "stream",
        }
    }

    pub(super) fn respond_name(self) -> &'static str {
        match self {
            Rpc::Job => "respond_job",
            Rpc::Sync => "respond_sync",
            Rpc::Model => "respond_model",
            Rpc::Stream => "respond_stream",
        }
    }

    pub(super) fn protocol(self) -> &'static str {
        match self {
            Rpc::Job => protocol::JOB_PROTOCOL,
            Rpc::Sync => protocol::SYNC_PROTOCOL,
            Rpc::Model => protocol::MODEL_PROTOCOL,
            Rpc::Stream => protocol::STREAM_PROTOCOL,
        }
    }
}

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

/// How often unreachable bootstrap peers are considered for a redial, and the longest backoff
/// between two dials of one of them.
pub(super) const REDIAL_TICK: Duration = Duration::from_secs(1);
const REDIAL_MAX_TICKS: u64 = 30;

/// The Swarm task's state about peers.
pub(super) struct Peers {
    penalties: HashMap<PeerId, u32>,
    /// Inbound request budgets per (peer, protocol).
    buckets: HashMap<(PeerId, Rpc), Bucket>,
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

impl Peers {
    pub(super) fn new(bootstrap: Vec<Multiaddr>) -> Self {
        Peers {
            penalties: HashMap::new(),
            buckets: HashMap::new(),
            banned: HashMap::new(),
            to_disconnect: Vec::new(),
            bootstrap,
            redial: HashMap::new(),
            redial_ticks: 0,
        }
    }

    /// The configured bootstrap addresses.
    pub(super) fn bootstrap(&self) -> &[Multiaddr] {
        &self.bootstrap
    }

    pub(super) fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.contains_key(peer)
    }

    /// Takes a token from the peer's budget for inbound requests of `rpc`.
    pub(super) fn allow_request(&mut self, peer: PeerId, rpc: Rpc) -> bool {
        let limit = rpc.limit();
        self.buckets
            .entry((peer, rpc))
            .or_insert_with(|| Bucket::full(limit))
            .take(limit, Instant::now())
    }

    /// Whether banned peers wait to be disconnected.
    pub(super) fn disconnects_pending(&self) -> bool {
        !self.to_disconnect.is_empty()
    }

    /// The banned peers whose disconnection is due at `now`; the others keep waiting.
    pub(super) fn due_disconnects(&mut self, now: Instant) -> Vec<PeerId> {
        let (due, later): (Vec<_>, Vec<_>) =
            self.to_disconnect.drain(..).partition(|(_, at)| *at <= now);
        self.to_disconnect = later;
        due.into_iter().map(|(peer, _)| peer).collect()
    }

    /// The operator unblocked the peer: a bootstrap peer is redialed from the start.
    pub(super) fn unblocked(&mut self, peer: &PeerId) {
        self.redial.remove(peer);
    }

    /// Dials every bootstrap peer we are not connected to, backing off per peer from one
    /// [`REDIAL_TICK`] to [`REDIAL_MAX_TICKS`]. Nodes start in any order: a peer that was not
    /// listening yet when we first dialed it is reached about a second after it is, not at the
    /// next [`SwarmTask::maintain`](super::swarm::SwarmTask::maintain), and not only when we
    /// have no connection at all.
    pub(super) fn redial_bootstrap<B: NetworkBehaviour>(&mut self, swarm: &mut libp2p::Swarm<B>) {
        self.redial_ticks += 1;
        let tick = self.redial_ticks;
        let me = *swarm.local_peer_id();
        for addr in self.bootstrap.clone() {
            let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
                continue;
            };
            if peer == me || self.banned.contains_key(&peer) {
                continue;
            }
            if swarm.is_connected(&peer) {
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
            let entry = match swarm.dial(opts) {
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

    /// Lifts expired bans, decays penalties and forgets buckets that have refilled (every
    /// [`SwarmTask::maintain`](super::swarm::SwarmTask::maintain)).
    pub(super) fn maintain(&mut self) {
        self.banned.retain(|_, until| *until > Instant::now());
        // Penalties decay (a point per tick), so only a peer that keeps misbehaving is banned,
        // and the map holds only peers that misbehaved lately.
        self.penalties.retain(|_, points| {
            *points = points.saturating_sub(1);
            *points > 0
        });
        // Buckets that have refilled say nothing a fresh one would not.
        let now = Instant::now();
        self.buckets.retain(|(_, rpc), b| {
            let limit = rpc.limit();
            b.refill(limit, now);
            b.tokens < limit.burst
        });
    }

    /// Five penalty points; at [`BAN_THRESHOLD`] the peer is banned for [`BAN_TIME`] and
    /// disconnected shortly after.
    pub(super) fn penalise(&mut self, peer: PeerId, reason: &'static str) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
