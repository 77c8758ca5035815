//! The Anchor actor (validators): posts the chain's anchors to the EVM settlement contract.
//!
//! Every tick it reads the contract (last anchored height, validator set) and, when a block is
//! due ([`evm::anchor::next_anchor`]), posts it with its commit certificate from this node's
//! key. The validators take turns per height: the one whose place in the sorted set matches
//! the height goes at once, each next one `stagger` later, so usually one transaction is sent
//! and the others see the anchor and stop. RPC calls are blocking and run off the actix
//! threads; after an error the next attempt waits twice as long (up to a minute), so a node
//! whose RPC is down (an anvil restart, a provider outage) resumes by itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chain::{Address, PrivateKeySigner, Store};
use evm::anchor::{NativeChain, Step};
use evm::{Rpc, Wallet};

use crate::metrics::METRICS;

/// Longest wait between attempts after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct AnchorConfig {
    pub rpc_url: String,
    pub chain_id: u64,
    pub settlement: Address,
    /// The chain's `anchor_interval`.
    pub interval: u64,
    pub tick: Duration,
    /// How much later each next validator in turn posts a due anchor.
    pub stagger: Duration,
    pub rpc_timeout: Duration,
}

/// When this node first saw a height due, for the turn order.
#[derive(Default)]
struct Turn {
    height: u64,
    since: Option<Instant>,
}

pub struct Anchor {
    config: AnchorConfig,
    key: PrivateKeySigner,
    store: Arc<Store>,
    wallet: Arc<Mutex<Option<Wallet>>>,
    turn: Arc<Mutex<Turn>>,
    busy: bool,
    backoff: Duration,
    next_try: Instant,
}

impl Anchor {
    pub fn new(config: AnchorConfig, key: PrivateKeySigner, store: Arc<Store>) -> Anchor {
        Anchor {
            config,
            key,
            store,
            wallet: Arc::new(Mutex::new(None)),
            turn: Arc::new(Mutex::new(Turn::default())),
            busy: false,
            backoff: Duration::ZERO,
            next_try: Instant::now(),
        }
    }

    /// Sends from `wallet` (shared with this node's other EVM senders: one nonce counter).
    pub fn with_wallet(mut self, wallet: Arc<Mutex<Option<Wallet>>>) -> Anchor {
        self.wallet = wallet;
        self
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy || Instant::now() < self.next_try {
            return;
        }
        self.busy = true;
        let (config, key, store) = (self.config.clone(), self.key.clone(), self.store.clone());
        let (wallet, turn) = (self.wallet.clone(), self.turn.clone());
        let job =
            tokio::task::spawn_blocking(move || attempt(&config, &key, &store, &wallet, &turn));
        ctx.spawn(job.into_actor(self).map(|result, act, _| {
            act.busy = false;
            let result = result.unwrap_or_else(|e| Err(format!("anchoring task: {e}")));
            match result {
                Ok(step) => {
                    act.backoff = Duration::ZERO;
                    act.next_try = Instant::now();
                    match step {
                        Step::Anchored { height, gas_used } => {
                            METRICS.anchor_steps.with_label_values(&["sent"]).inc();
                            METRICS.anchor_gas_used.set(gas_used as i64);
                            tracing::info!(height, gas_used, "anchored on the EVM chain");
                        }
                        Step::AnchoredByOther { height } => {
                            METRICS.anchor_steps.with_label_values(&["by_other"]).inc();
                            tracing::debug!(height, "anchored by another validator");
                        }
                        Step::UpToDate { .. } | Step::Waiting { .. } => {}
                    }
                }
                Err(e) => {
                    METRICS.anchor_steps.with_label_values(&["error"]).inc();
                    act.backoff = (act.backoff * 2).clamp(act.config.tick, MAX_BACKOFF);
                    act.next_try = Instant::now() + act.backoff;
                    tracing::warn!(error = %e, retry_in_s = act.backoff.as_secs_f64(), "anchoring failed");
                }
            }
        }));
    }
}

/// One anchoring step, blocking: connects the wallet if needed, then
/// [`evm::anchor::step_reporting`] with this node's turn.
fn attempt(
    config: &AnchorConfig,
    key: &PrivateKeySigner,
    store: &Arc<Store>,
    wallet: &Mutex<Option<Wallet>>,
    turn: &Mutex<Turn>,
) -> Result<Step, String> {
    let mut guard = wallet
        .lock()
        .map_err(|_| "wallet lock poisoned".to_string())?;
    if guard.is_none() {
        let rpc = Rpc::new(&config.rpc_url, config.rpc_timeout);
        *guard = Some(Wallet::new(rpc, key.clone(), config.chain_id).map_err(|e| e.to_string())?);
    }
    let Some(w) = guard.as_mut() else {
        return Err("no wallet".into());
    };
    let me = key.address();
    let my_turn = |height: u64| {
        let Ok(mut t) = turn.lock() else {
            return true;
        };
        if t.height != height || t.since.is_none() {
            *t = Turn {
                height,
                since: Some(Instant::now()),
            };
        }
        let waited = t.since.map_or(Duration::ZERO, |s| s.elapsed());
        let rank = turn_rank(store.as_ref(), height, me);
        waited >= config.stagger * rank
    };
    // The step reports the contract's last anchored height: no second read for the metrics.
    let result = evm::anchor::step_reporting(
        w,
        config.settlement,
        store.as_ref(),
        config.interval,
        my_turn,
    );
    if let Ok((_, last)) = &result {
        METRICS.anchor_height.set(*last as i64);
        if let Ok(tip) = NativeChain::tip(store.as_ref()) {
            METRICS
                .anchor_lag_blocks
                .set(tip.saturating_sub(*last) as i64);
        }
    }
    result.map(|(step, _)| step).map_err(|e| {
        if !e.is_transient() {
            // A wallet that may have lost its place is rebuilt from the node next time.
            *guard = None;
        }
        e.to_string()
    })
}

/// This validator's place in the turn for `height`: the set deciding it, sorted by address,
/// rotated by the height; a node outside the set comes after all of it.
fn turn_rank(store: &dyn NativeChain, height: u64, me: Address) -> u32 {
    let set = store.set_at(height).ok().flatten().unwrap_or_default();
    rank_in(&set, height, me)
}

/// `me`'s place among `set` (sorted by address, rotated by `key`) in a turn keyed by `key`
/// (a height to anchor, a deposit id to credit); a node outside the set comes after all of it.
pub(crate) fn rank_in(set: &[(Address, u64)], key: u64, me: Address) -> u32 {
    let mut set: Vec<Address> = set.iter().map(|(a, _)| *a).collect();
    set.sort();
    let n = set.len() as u64;
    match set.iter().position(|a| *a == me) {
        Some(p) if n > 0 => ((p as u64 + n - key % n) % n) as u32,
        _ => n as u32,
    }
}

impl Actor for Anchor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(rpc = %self.config.rpc_url, settlement = %self.config.settlement, interval = self.config.interval, "anchoring to the EVM chain");
        ctx.run_interval(self.config.tick, |act, ctx| act.tick(ctx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chain::block::{BlockHeader, CommitCertificate};

    struct Set(Vec<(Address, u64)>);
    impl NativeChain for Set {
        fn tip(&self) -> Result<u64, String> {
            Ok(0)
        }
        fn header(&self, _: u64) -> Result<Option<BlockHeader>, String> {
            Ok(None)
        }
        fn certificate(&self, _: u64) -> Result<Option<CommitCertificate>, String> {
            Ok(None)
        }
        fn set_at(&self, _: u64) -> Result<Option<Vec<(Address, u64)>>, String> {
            Ok(Some(self.0.clone()))
        }
    }

    /// Each height has one first validator, every validator gets a distinct place, and the
    /// first place moves with the height; outsiders come last.
    #[test]
    fn validators_take_turns_by_height() {
        let addrs: Vec<Address> = (1..=4).map(Address::repeat_byte).collect();
        let set = Set(addrs.iter().map(|a| (*a, 1)).collect());
        let mut firsts = Vec::new();
        for h in 0..8u64 {
            let mut ranks: Vec<u32> = addrs.iter().map(|a| turn_rank(&set, h, *a)).collect();
            firsts.push(addrs[ranks.iter().position(|r| *r == 0).unwrap()]);
            ranks.sort();
            assert_eq!(ranks, vec![0, 1, 2, 3], "height {h}");
        }
        assert_eq!(
            firsts[0..4]
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            4
        );
        assert_eq!(firsts[0], firsts[4]);
        assert_eq!(turn_rank(&set, 3, Address::repeat_byte(9)), 4);
    }
}
