//! The Mempool actor: verified records and signed transactions waiting for a block.
//!
//! A transaction is admitted only if it applies on top of the committed state plus the
//! transactions already pending from the same sender: valid signature, the sender's next nonce,
//! a non-zero amount the sender can still pay. What the proposer's block builder finds it cannot
//! include is dropped ([`DropInvalid`]), and every commit re-checks the senders it touched, so
//! the pool never keeps offering what makes its own proposals fail. Records and transactions are
//! saved in the store's pending column family while they wait, and reloaded at start: a node
//! restart loses no executed job.
//!
//! It holds only [`VerifiedRecord`]s (checked by the Verifier, or by the inference node that made
//! them, before [`AddRecord`]) and does not decide whether a gossiped message is relayed (the
//! Network does).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chain::signing::Domain;
use chain::{Account, Address, Admission, B256, InferenceRecord, JobId, Store, Tx, VerifiedRecord};
use libp2p::gossipsub::MessageAcceptance;

use crate::metrics::METRICS;
use crate::network::{GossipTx, Publish};
use crate::protocol::{self, topics};
use crate::settlement::CheckTx;

/// Most records (and, separately, transactions) held; beyond it new ones are refused. A block
/// takes at most 1,024 of each, so this is minutes of backlog at full load.
pub const MEMPOOL_CAPACITY: usize = 50_000;

/// Most transactions pending from one sender: nonces are sequential, so one account cannot fill
/// the pool, and a sender rarely needs more than a few blocks' worth in flight.
pub const MAX_PENDING_PER_SENDER: usize = 64;
/// Transactions waiting for an earlier nonce of their sender, all senders together.
pub const FUTURE_CAPACITY: usize = 4096;
/// A transaction waiting for an earlier nonce is dropped after this long: the missing one
/// may never come, and the slot is another sender's.
pub const QUEUED_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// A record or transaction still pending this long is gossiped again. Gossip is published
/// once: whatever a restarting validator missed, or an author published while it had no mesh
/// peers, would otherwise wait forever, and a missed transaction holds back every later nonce
/// of its sender. Longer than gossipsub's duplicate cache (`network::DUPLICATE_CACHE`), so the
/// copy is not refused as already published.
pub const REBROADCAST_AFTER: Duration = Duration::from_secs(30);
/// How often the mempool looks for entries to gossip again.
const REBROADCAST_TICK: Duration = Duration::from_secs(5);
/// Entries of each kind gossiped again per tick, oldest first (each sender's transactions in
/// nonce order).
const REBROADCAST_MAX: usize = 64;
/// Pending records looked up in the store per rebroadcast tick, to drop those already settled.
const SETTLED_CHECKS: usize = 1024;

/// Why a transaction was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    #[error("invalid signature: {0}")]
    BadSignature(String),
    #[error("an amount of 0 does nothing; the amount must be positive")]
    ZeroAmount,
    /// It would be included and pay its fee, but its action would fail: refused for a client,
    /// so that it does not pay for nothing.
    #[error("{0}")]
    WouldFail(String),
    #[error("nonce {nonce} is spent or pending; the next nonce of {sender} is {expected}")]
    NonceUsed {
        sender: Address,
        nonce: u64,
        expected: u64,
    },
    #[error(
        "nonce {nonce} is ahead of {sender}'s next nonce {expected}; send the missing ones first"
    )]
    NonceGap {
        sender: Address,
        nonce: u64,
        expected: u64,
    },
    #[error("{sender} can pay {available} after its pending transactions, not {needed}{detail}")]
    InsufficientBalance {
        sender: Address,
        available: u128,
        needed: u128,
        /// The ledger's own reason, when it knows one (`: ...`; vesting says how much vested).
        detail: String,
    },
    #[error("{sender} already has {MAX_PENDING_PER_SENDER} transactions pending")]
    SenderFull { sender: Address },
    #[error("the mempool holds {MEMPOOL_CAPACITY} transactions; try again later")]
    Full,
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// A fraud report whose claim re-execution here contradicts: never admitted, and a peer
    /// that relays it is penalised.
    #[error("{0}")]
    FalseFraudClaim(String),
    /// A bridge deposit that differs from the one the EVM contract holds under its id: never
    /// admitted, and a peer that relays it is penalised.
    #[error("{0}")]
    FalseDeposit(String),
}

impl MempoolError {
    /// Stable label for metrics and API error codes.
    pub fn label(&self) -> &'static str {
        match self {
            MempoolError::BadSignature(_) => "bad_signature",
            MempoolError::ZeroAmount => "zero_amount",
            MempoolError::WouldFail(_) => "would_fail",
            MempoolError::NonceUsed { .. } => "nonce_used",
            MempoolError::NonceGap { .. } => "nonce_gap",
            MempoolError::InsufficientBalance { .. } => "insufficient_balance",
            MempoolError::SenderFull { .. } => "sender_full",
            MempoolError::Full => "mempool_full",
            MempoolError::Unavailable(_) => "unavailable",
            MempoolError::FalseFraudClaim(_) => "false_fraud_claim",
            MempoolError::FalseDeposit(_) => "false_bridge_deposit",
        }
    }
}

#[derive(Message)]
#[rtype(result = "bool")]
pub struct AddRecord(pub VerifiedRecord);

/// A transaction submitted by a client of this node (HTTP): its hash and whether it is pending
/// or waits for an earlier nonce, or why it was refused. Admitted, it is gossiped.
#[derive(Message)]
#[rtype(result = "Result<(B256, Admitted), MempoolError>")]
pub struct AddTx(pub Tx);

/// Records and transactions for the next block, oldest first.
#[derive(Message)]
#[rtype(result = "(Vec<VerifiedRecord>, Vec<Tx>)")]
pub struct Candidates {
    pub max_records: usize,
    pub max_txs: usize,
}

/// A block was committed: drop what it included and re-check the senders it changed.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Committed {
    pub height: u64,
    pub block_hash: B256,
    pub jobs: Vec<JobId>,
    pub txs: Vec<B256>,
    /// Every account the block changed, as it is now.
    pub accounts: Vec<(Address, Account)>,
}

/// The block builder could not include these (see `chain::Built`): drop them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DropInvalid {
    pub records: Vec<(JobId, String)>,
    pub txs: Vec<(B256, String)>,
}

/// The nonce after `address`'s pending transactions, if it has any.
#[derive(Message)]
#[rtype(result = "Option<u64>")]
pub struct NextNonce(pub Address);

/// Whether a record for this job waits in the pool: (output hash, executor).
#[derive(Message)]
#[rtype(result = "Option<(B256, chain::Address)>")]
pub struct PendingRecord(pub JobId);

/// A transaction this node makes itself (a validator reporting evidence): signed with `key` at
/// the account's next nonce after its pending ones, paying the chain's fee, then admitted and
/// gossiped as a client's would be.
#[derive(Message)]
#[rtype(result = "Result<B256, MempoolError>")]
pub struct AddOwnTx {
    pub key: Arc<chain::PrivateKeySigner>,
    pub action: chain::Action,
}

/// Where fraud claims are re-executed before a fraud report is admitted (a validator's
/// verifier; nodes without one admit reports unchecked: they never propose).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetFraudChecker(pub Recipient<crate::verifier::CheckFraud>);

/// Where bridge deposits are checked against the EVM before they are admitted (a validator's
/// bridge actor). Without one, no bridge deposit is admitted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetDepositChecker(pub Recipient<crate::bridge::CheckDeposits>);

/// Whether a transaction waits in the pool: `Some("pending")` (a candidate for blocks),
/// `Some("queued")` (for an earlier nonce of its sender), `None`.
#[derive(Message)]
#[rtype(result = "Option<&'static str>")]
pub struct TxPending(pub B256);

/// A transaction in the pool with what admission computed from it.
#[derive(Debug)]
struct PendingTx {
    seq: u64,
    tx: Tx,
    sender: Address,
    nonce: u64,
    /// What it takes from the sender's balance.
    cost: u128,
}

/// The pending transactions: pure, so its rules are tested without actors.
#[derive(Debug, Default)]
pub struct TxPool {
    seq: u64,
    order: BTreeMap<u64, B256>,
    by_hash: HashMap<B256, PendingTx>,
    /// Each sender's pending transactions by nonce: always consecutive from its account nonce.
    by_sender: HashMap<Address, BTreeMap<u64, B256>>,
    /// Transactions whose nonce is ahead of the sender's next one, by sender and nonce, with
    /// when they arrived, waiting for the missing ones (gossip does not keep a sender's order,
    /// and a client may send several at once): at most [`MAX_PENDING_PER_SENDER`] per sender,
    /// [`FUTURE_CAPACITY`] in all. Not candidates, not relayed; promoted to pending once the
    /// gap closes, dropped by [`TxPool::expire_queued`].
    future: HashMap<Address, BTreeMap<u64, Queued>>,
    future_len: usize,
    /// The transaction fee and tip time of the last admission, for queued transactions
    /// promoted later.
    fee: u128,
    now_ms: u64,
}

/// A transaction waiting for an earlier nonce.
#[derive(Debug)]
struct Queued {
    hash: B256,
    tx: Tx,
    since: Instant,
}

/// Whether an admitted transaction applies now or waits for earlier nonces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Pending: applies after the sender's pending transactions; a candidate for blocks.
    Pending,
    /// Its nonce is ahead; it waits for the missing ones, from `next` (the sender's next
    /// nonce after what is pending) on.
    Queued { next: u64 },
}

/// Where a transaction comes from: a client of this node learns at once that its action
/// would fail; gossip is judged by the block that includes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Client,
    Gossip,
}

/// Sender, nonce and cost of a transaction: what it spends plus the transaction fee.
fn tx_terms(tx: &Tx, fee: u128) -> (Address, u64, u128) {
    (tx.from, tx.nonce, tx.spends().saturating_add(fee))
}

/// What a sender's committed account offers a transaction: a bond may use tokens still locked
/// by vesting, nothing else may.
fn funds(tx: &Tx, account: &Account, now_ms: u64) -> u128 {
    match tx.action {
        chain::Action::Bond { .. } => account.balance,
        _ => account.spendable(now_ms),
    }
}

/// The committed state a transaction is admitted against (from the settlement).
#[derive(Clone, Debug, Default)]
pub struct TxContext {
    pub account: Account,
    /// The chain's transaction fee now.
    pub fee: u128,
    /// The tip's time: vesting is reckoned at it.
    pub now_ms: u64,
    /// What including the transaction on the tip would do to its action, when its nonce is
    /// the account's next (`None` when earlier ones are pending: not known yet).
    pub dry_run: Option<Result<(), String>>,
}

impl TxPool {
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn contains(&self, hash: &B256) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// Whether `hash` waits for an earlier nonce.
    pub fn is_queued(&self, hash: &B256) -> bool {
        self.future
            .values()
            .any(|q| q.values().any(|e| e.hash == *hash))
    }

    /// How many transactions wait for an earlier nonce.
    pub fn queued(&self) -> usize {
        self.future_len
    }

    /// Checks that need no ledger: signature, amount, capacity. Returns the hash.
    pub fn precheck(&self, tx: &Tx, domain: &Domain) -> Result<B256, MempoolError> {
        let hash = tx
            .verify(domain)
            .map_err(|e| MempoolError::BadSignature(e.to_string()))?;
        let sender = tx.from;
        if self.contains(&hash) {
            return Ok(hash);
        }
        if matches!(
            tx.action,
            chain::Action::Transfer { amount: 0, .. }
                | chain::Action::Bond { amount: 0 }
                | chain::Action::Unbond { amount: 0 }
        ) {
            return Err(MempoolError::ZeroAmount);
        }
        if self.len() >= MEMPOOL_CAPACITY {
            return Err(MempoolError::Full);
        }
        if self.by_sender.get(&sender).map_or(0, |p| p.len()) >= MAX_PENDING_PER_SENDER {
            return Err(MempoolError::SenderFull { sender });
        }
        Ok(hash)
    }

    /// What `sender` can still spend and its next nonce, given what its committed account
    /// offers (`funds`).
    fn pending_state(&self, sender: &Address, nonce: u64, funds: u128) -> (u64, u128) {
        let mut next = nonce;
        let mut available = funds;
        if let Some(pending) = self.by_sender.get(sender) {
            for hash in pending.values() {
                if let Some(p) = self.by_hash.get(hash) {
                    next = next.max(p.nonce.saturating_add(1));
                    available = available.saturating_sub(p.cost);
                }
            }
        }
        (next, available)
    }

    /// Admits `tx` (already prechecked, hash `hash`) against the sender's committed `account`.
    /// A nonce ahead of the sender's next one waits for the missing ones if it is within
    /// [`MAX_PENDING_PER_SENDER`] of it and the queues have room, and is refused (`NonceGap`)
    /// otherwise. A client's transaction whose action would fail on the tip is refused
    /// (`WouldFail`): included, it would only pay the fee.
    pub fn admit(
        &mut self,
        tx: Tx,
        hash: B256,
        ctx: &TxContext,
        origin: Origin,
    ) -> Result<Admitted, MempoolError> {
        if self.contains(&hash) {
            return Ok(Admitted::Pending);
        }
        self.fee = ctx.fee;
        self.now_ms = ctx.now_ms;
        let account = &ctx.account;
        let (sender, nonce, cost) = tx_terms(&tx, ctx.fee);
        let (expected, available) =
            self.pending_state(&sender, account.nonce, funds(&tx, account, ctx.now_ms));
        if nonce < expected {
            return Err(MempoolError::NonceUsed {
                sender,
                nonce,
                expected,
            });
        }
        if cost > available {
            return Err(MempoolError::InsufficientBalance {
                sender,
                available,
                needed: cost,
                detail: match (&ctx.dry_run, account.vesting) {
                    (Some(Err(e)), _) if nonce == expected => format!(": {e}"),
                    (_, Some(v)) => format!(
                        " ({} locked; {} of {} vested at the tip)",
                        account.locked_in_balance(ctx.now_ms),
                        v.vested(ctx.now_ms),
                        v.amount
                    ),
                    _ => String::new(),
                },
            });
        }
        if nonce == expected
            && origin == Origin::Client
            && let Some(Err(e)) = &ctx.dry_run
        {
            return Err(MempoolError::WouldFail(e.clone()));
        }
        if nonce > expected {
            let gap = MempoolError::NonceGap {
                sender,
                nonce,
                expected,
            };
            let queue = self.future.get(&sender);
            if let Some(held) = queue.and_then(|q| q.get(&nonce)) {
                // The first transaction seen at a nonce keeps its place.
                return if held.hash == hash {
                    Ok(Admitted::Queued { next: expected })
                } else {
                    Err(MempoolError::NonceUsed {
                        sender,
                        nonce,
                        expected,
                    })
                };
            }
            if nonce - expected > MAX_PENDING_PER_SENDER as u64
                || queue.is_some_and(|q| q.len() >= MAX_PENDING_PER_SENDER)
                || self.future_len >= FUTURE_CAPACITY
            {
                return Err(gap);
            }
            self.future.entry(sender).or_default().insert(
                nonce,
                Queued {
                    hash,
                    tx,
                    since: Instant::now(),
                },
            );
            self.future_len += 1;
            return Ok(Admitted::Queued { next: expected });
        }
        self.insert(tx, hash, sender, nonce, cost);
        self.promote(&sender, account);
        Ok(Admitted::Pending)
    }

    fn insert(&mut self, tx: Tx, hash: B256, sender: Address, nonce: u64, cost: u128) {
        self.seq += 1;
        self.order.insert(self.seq, hash);
        self.by_sender
            .entry(sender)
            .or_default()
            .insert(nonce, hash);
        self.by_hash.insert(
            hash,
            PendingTx {
                seq: self.seq,
                tx,
                sender,
                nonce,
                cost,
            },
        );
    }

    /// Moves `sender`'s queued transactions that now follow its pending ones into pending (those
    /// it can pay for), and drops the queued ones at nonces already used. Returns the dropped.
    fn promote(&mut self, sender: &Address, account: &Account) -> Vec<B256> {
        let mut dropped = Vec::new();
        loop {
            let (expected, _) = self.pending_state(sender, account.nonce, 0);
            let Some(queue) = self.future.get_mut(sender) else {
                break;
            };
            while let Some(entry) = queue.first_entry() {
                if *entry.key() >= expected {
                    break;
                }
                dropped.push(entry.remove().hash);
                self.future_len -= 1;
            }
            let next = queue.remove(&expected);
            if queue.is_empty() {
                self.future.remove(sender);
            }
            let Some(Queued { hash, tx, .. }) = next else {
                break;
            };
            self.future_len -= 1;
            let (_, nonce, cost) = tx_terms(&tx, self.fee);
            let (_, available) =
                self.pending_state(sender, account.nonce, funds(&tx, account, self.now_ms));
            if cost > available {
                dropped.push(hash);
                continue;
            }
            self.insert(tx, hash, *sender, nonce, cost);
        }
        dropped
    }

    /// Drops the transactions that have waited for an earlier nonce since before `before`.
    /// Returns their hashes.
    pub fn expire_queued(&mut self, before: Instant) -> Vec<B256> {
        let mut expired = Vec::new();
        self.future.retain(|_, queue| {
            queue.retain(|_, q| {
                let keep = q.since >= before;
                if !keep {
                    expired.push(q.hash);
                }
                keep
            });
            !queue.is_empty()
        });
        self.future_len -= expired.len();
        expired
    }

    /// Removes one transaction; returns whether it was there.
    fn remove(&mut self, hash: &B256) -> bool {
        let Some(p) = self.by_hash.remove(hash) else {
            return false;
        };
        self.order.remove(&p.seq);
        if let Some(pending) = self.by_sender.get_mut(&p.sender) {
            pending.remove(&p.nonce);
            if pending.is_empty() {
                self.by_sender.remove(&p.sender);
            }
        }
        true
    }

    /// Drops `hash` and the sender's later transactions (they can no longer apply: a nonce
    /// would be missing). Returns every hash removed.
    pub fn drop_with_successors(&mut self, hash: &B256) -> Vec<B256> {
        let Some(p) = self.by_hash.get(hash) else {
            return Vec::new();
        };
        let (sender, nonce) = (p.sender, p.nonce);
        let doomed: Vec<B256> = self
            .by_sender
            .get(&sender)
            .map(|m| m.range(nonce..).map(|(_, h)| *h).collect())
            .unwrap_or_default();
        for h in &doomed {
            self.remove(h);
        }
        doomed
    }

    /// A block committed `included` and left `accounts` as given: removes the included ones,
    /// then keeps of each changed sender's transactions only the run that still applies.
    /// Returns every hash removed.
    pub fn committed(&mut self, included: &[B256], accounts: &[(Address, Account)]) -> Vec<B256> {
        let mut removed: Vec<B256> = included
            .iter()
            .copied()
            .filter(|h| self.remove(h))
            .collect();
        for (sender, account) in accounts {
            let Some(pending) = self.by_sender.get(sender) else {
                removed.extend(self.promote(sender, account));
                continue;
            };
            let mut next = account.nonce;
            let mut available = account.balance;
            let mut spendable = account.spendable(self.now_ms);
            let mut doomed = Vec::new();
            let mut broken = false;
            for (nonce, hash) in pending {
                let (cost, bond) = self.by_hash.get(hash).map_or((0, false), |p| {
                    (p.cost, matches!(p.tx.action, chain::Action::Bond { .. }))
                });
                let limit = if bond { available } else { spendable };
                if broken || *nonce != next || cost > limit {
                    broken |= *nonce >= next;
                    doomed.push(*hash);
                    continue;
                }
                next += 1;
                available -= cost;
                spendable = spendable.saturating_sub(cost);
            }
            for h in doomed {
                self.remove(&h);
                removed.push(h);
            }
            removed.extend(self.promote(sender, account));
        }
        removed
    }

    /// The nonce after `sender`'s pending transactions, if it has any.
    pub fn next_nonce(&self, sender: &Address) -> Option<u64> {
        self.by_sender
            .get(sender)
            .and_then(|m| m.keys().next_back())
            .map(|n| n.saturating_add(1))
    }

    /// The pending transactions with their hashes, in admission order (each sender's in nonce
    /// order).
    pub fn iter(&self) -> impl Iterator<Item = (&B256, &Tx)> {
        self.order
            .values()
            .filter_map(|h| self.by_hash.get(h).map(|p| (h, &p.tx)))
    }

    /// `sender`'s pending transactions with their hashes, in nonce order.
    pub fn of_sender(&self, sender: &Address) -> impl Iterator<Item = (&B256, &Tx)> {
        self.by_sender
            .get(sender)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|h| self.by_hash.get(h).map(|p| (h, &p.tx)))
    }

    /// Up to `max` transactions in admission order (each sender's in nonce order).
    pub fn candidates(&self, max: usize) -> Vec<Tx> {
        self.order
            .values()
            .take(max)
            .filter_map(|h| self.by_hash.get(h).map(|p| p.tx.clone()))
            .collect()
    }
}

pub struct Mempool {
    /// Where waiting records and transactions are saved; `None` in tests without a store.
    store: Option<Arc<Store>>,
    /// Committed accounts, for transaction admission.
    accounts: Recipient<CheckTx>,
    seq: u64,
    order: BTreeMap<u64, JobId>,
    records: HashMap<JobId, (u64, VerifiedRecord)>,
    /// Re-checks what was saved before a restart.
    admission: Admission,
    txs: TxPool,
    /// Where pending entries are gossiped again; `None` in tests without a network.
    publish: Option<Recipient<Publish>>,
    /// Re-executes the records of fraud reports before they are admitted.
    fraud_checker: Option<Recipient<crate::verifier::CheckFraud>>,
    deposit_checker: Option<Recipient<crate::bridge::CheckDeposits>>,
    /// When each pending entry (job id or transaction hash) was last gossiped, as far as this
    /// node knows (first seen by the rebroadcast tick, or sent again by it).
    sent: HashMap<B256, Instant>,
}

impl Mempool {
    pub fn new(
        admission: Admission,
        store: Option<Arc<Store>>,
        accounts: Recipient<CheckTx>,
    ) -> Self {
        Mempool {
            admission,
            store,
            accounts,
            seq: 0,
            order: BTreeMap::new(),
            records: HashMap::new(),
            txs: TxPool::default(),
            publish: None,
            fraud_checker: None,
            deposit_checker: None,
            sent: HashMap::new(),
        }
    }

    /// Gossips entries again that stay pending longer than [`REBROADCAST_AFTER`] through
    /// `publish`.
    pub fn with_publisher(mut self, publish: Recipient<Publish>) -> Self {
        self.publish = Some(publish);
        self
    }

    /// Drops records pending for `older_than` whose job a committed block settled meanwhile
    /// (at most [`SETTLED_CHECKS`] looked up per call, oldest first). Such a record's
    /// [`AddRecord`] raced the commit: it came after the [`Committed`] that would have removed
    /// it, and a node that never proposes would otherwise keep it and gossip it forever.
    fn drop_settled(&mut self, older_than: Duration) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let now = Instant::now();
        let settled: Vec<JobId> = self
            .order
            .values()
            .filter(|id| {
                self.sent
                    .get(&id.0)
                    .is_some_and(|at| now.duration_since(*at) >= older_than)
            })
            .take(SETTLED_CHECKS)
            .filter(|id| matches!(store.job(id), Ok(Some(_))))
            .copied()
            .collect();
        if settled.is_empty() {
            return;
        }
        let removed = self.remove_records(&settled);
        self.forget(&removed, &[]);
        self.gauges();
        tracing::debug!(
            records = removed.len(),
            "pending records of settled jobs dropped"
        );
    }

    /// Drops the transactions that waited longer than `lifetime` for an earlier nonce, with
    /// their saved copies.
    fn expire_queued(&mut self, lifetime: Duration) {
        let Some(before) = Instant::now().checked_sub(lifetime) else {
            return;
        };
        let expired = self.txs.expire_queued(before);
        if expired.is_empty() {
            return;
        }
        self.forget(&[], &expired);
        self.gauges();
        tracing::info!(
            txs = expired.len(),
            "transactions that waited too long for an earlier nonce dropped"
        );
    }

    /// Gossips again, oldest first and at most [`REBROADCAST_MAX`] of each kind, the entries
    /// pending for [`REBROADCAST_AFTER`] since they were last sent.
    fn rebroadcast(&mut self) {
        let Some(publish) = self.publish.clone() else {
            return;
        };
        let now = Instant::now();
        let last = std::mem::take(&mut self.sent);
        // Entries no longer pending are not carried over.
        let mut sent = HashMap::with_capacity(last.len());
        let mut due = |key: B256| {
            let at = last.get(&key).copied().unwrap_or(now);
            let due = now.duration_since(at) >= REBROADCAST_AFTER;
            sent.insert(key, if due { now } else { at });
            due
        };
        // A sender's transactions go out together, in nonce order: a node that missed one
        // refuses every later nonce, so sending them one by one would fix one gap per round.
        let mut senders: Vec<Address> = Vec::new();
        let mut seen: std::collections::HashSet<Address> = std::collections::HashSet::new();
        for (hash, tx) in self.txs.iter() {
            let sender = tx.from;
            if due(*hash) && seen.insert(sender) {
                senders.push(sender);
            }
        }
        let mut resend: Vec<(B256, &Tx)> = Vec::new();
        for sender in senders {
            if resend.len() >= REBROADCAST_MAX {
                break;
            }
            resend.extend(self.txs.of_sender(&sender).map(|(h, tx)| (*h, tx)));
        }
        let mut records: Vec<&InferenceRecord> = Vec::new();
        for id in self.order.values() {
            if let Some((_, record)) = self.records.get(id)
                && due(id.0)
                && records.len() < REBROADCAST_MAX
            {
                records.push(record.record());
            }
        }
        for (hash, tx) in &resend {
            sent.insert(*hash, now);
            publish.do_send(Publish {
                topic: topics::TXS,
                data: protocol::encode(*tx),
            });
        }
        for record in &records {
            publish.do_send(Publish {
                topic: topics::RECORDS,
                data: protocol::encode(*record),
            });
        }
        let (txs, records) = (resend.len(), records.len());
        self.sent = sent;
        if txs + records > 0 {
            METRICS
                .mempool_rebroadcast
                .with_label_values(&["tx"])
                .inc_by(txs as u64);
            METRICS
                .mempool_rebroadcast
                .with_label_values(&["record"])
                .inc_by(records as u64);
            tracing::debug!(txs, records, "pending entries gossiped again");
        }
    }

    fn gauges(&self) {
        METRICS.mempool_records.set(self.records.len() as i64);
        METRICS.mempool_txs.set(self.txs.len() as i64);
        METRICS.mempool_queued_txs.set(self.txs.queued() as i64);
    }

    fn add_record(&mut self, record: VerifiedRecord, persist: bool) -> bool {
        let id = record.id();
        if self.records.contains_key(&id) {
            return true;
        }
        if self.records.len() >= MEMPOOL_CAPACITY {
            tracing::warn!(job = %id, "mempool full, record dropped");
            return false;
        }
        if persist
            && let Some(store) = &self.store
            && let Err(e) = store.put_pending_record(&id, record.record())
        {
            tracing::error!(job = %id, error = %e, "cannot save a pending record");
        }
        self.seq += 1;
        self.order.insert(self.seq, id);
        self.records.insert(id, (self.seq, record));
        self.gauges();
        true
    }

    fn remove_records(&mut self, ids: &[JobId]) -> Vec<JobId> {
        let mut removed = Vec::new();
        for id in ids {
            if let Some((seq, _)) = self.records.remove(id) {
                self.order.remove(&seq);
                removed.push(*id);
            }
        }
        removed
    }

    fn forget(&self, jobs: &[JobId], txs: &[B256]) {
        if jobs.is_empty() && txs.is_empty() {
            return;
        }
        if let Some(store) = &self.store
            && let Err(e) = store.delete_pending(jobs, txs)
        {
            tracing::error!(error = %e, "cannot delete pending entries");
        }
    }

    /// Admits a transaction: the checks that need no ledger at once, then the sender's
    /// committed account from Settlement, then nonce and balance against it plus what is
    /// pending. A block committed between the read and the admission can leave a transaction
    /// that no longer applies; the next block build reports it and it is dropped then.
    fn add_tx(
        &mut self,
        tx: Tx,
        persist: bool,
        origin: Origin,
    ) -> ResponseActFuture<Self, Result<(B256, Admitted), MempoolError>> {
        let hash = match self.txs.precheck(&tx, self.admission.domain()) {
            Ok(hash) if self.txs.contains(&hash) => {
                return Box::pin(fut::ready(Ok((hash, Admitted::Pending))));
            }
            Ok(hash) => hash,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        // A bridge deposit is checked against this node's EVM RPC first; a node that cannot
        // check deposits admits none (and never votes for a block with one).
        let deposit = match (
            crate::bridge::ClaimedDeposit::of(&tx.action),
            &self.deposit_checker,
        ) {
            (None, _) => None,
            (Some(claim), Some(checker)) => Some((checker.clone(), claim)),
            (Some(_), None) => {
                return Box::pin(fut::ready(Err(MempoolError::WouldFail(
                    "bridge deposits are credited only by validators checking the EVM".into(),
                ))));
            }
        };
        let accounts = self.accounts.clone();
        let check = CheckTx {
            from: tx.from,
            tx: Some(Box::new(tx.clone())),
        };
        // A fraud report's claim is re-executed first: a false one never enters the pool, so
        // an honest proposer never offers a block the others must refuse.
        let fraud = match (&tx.action, &self.fraud_checker) {
            (chain::Action::ReportFraud(f), Some(checker)) => {
                Some((checker.clone(), vec![(**f).clone()]))
            }
            _ => None,
        };
        Box::pin(
            async move {
                if let Some((checker, claims)) = fraud {
                    use crate::verifier::FraudCheckError;
                    checker
                        .send(crate::verifier::CheckFraud(claims))
                        .await
                        .map_err(|e| MempoolError::Unavailable(e.to_string()))?
                        .map_err(|e| match e {
                            FraudCheckError::False(_) => {
                                MempoolError::FalseFraudClaim(e.to_string())
                            }
                            FraudCheckError::Unable(_) => MempoolError::Unavailable(e.to_string()),
                        })?;
                }
                if let Some((checker, claim)) = deposit {
                    use crate::bridge::DepositCheckError;
                    checker
                        .send(crate::bridge::CheckDeposits(vec![claim]))
                        .await
                        .map_err(|e| MempoolError::Unavailable(e.to_string()))?
                        .map_err(|e| match e {
                            DepositCheckError::False(_) => {
                                MempoolError::FalseDeposit(e.to_string())
                            }
                            DepositCheckError::Unable(_) => MempoolError::WouldFail(e.to_string()),
                        })?;
                }
                accounts
                    .send(check)
                    .await
                    .map_err(|e| MempoolError::Unavailable(e.to_string()))
            }
            .into_actor(self)
            .map(move |ctx, act, _| {
                let ctx = ctx?;
                if act.txs.contains(&hash) {
                    return Ok((hash, Admitted::Pending));
                }
                let admitted = act.txs.admit(tx.clone(), hash, &ctx, origin)?;
                if persist
                    && let Some(store) = &act.store
                    && let Err(e) = store.put_pending_tx(&hash, &tx)
                {
                    tracing::error!(tx = %hash, error = %e, "cannot save a pending transaction");
                }
                act.gauges();
                Ok((hash, admitted))
            }),
        )
    }
}

impl Actor for Mempool {
    type Context = Context<Self>;

    /// Reloads what was pending before a restart: records as they were, transactions through
    /// admission again (the ledger may have moved on).
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(REBROADCAST_TICK, |act, _| {
            act.drop_settled(REBROADCAST_AFTER);
            act.expire_queued(QUEUED_LIFETIME);
            act.rebroadcast();
        });
        let Some(store) = self.store.clone() else {
            return;
        };
        let pending = match store.pending() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the saved mempool");
                return;
            }
        };
        if pending.unreadable > 0 {
            tracing::warn!(
                count = pending.unreadable,
                "unreadable saved mempool entries deleted"
            );
        }
        let (records, txs) = (pending.records.len(), pending.txs.len());
        // Saved records were checked before they were saved; checked again all the same
        // (signatures and TEE proofs, no re-execution), as the only way into the mempool.
        let mut dropped = Vec::new();
        for r in pending.records {
            let r = Arc::new(r);
            match self.admission.check(r.clone()) {
                Ok(verified) => {
                    self.add_record(verified, false);
                }
                Err(e) => {
                    let id = r.job_id(self.admission.domain());
                    tracing::warn!(job = %id, error = %e, "saved record fails its checks: dropped");
                    dropped.push(id);
                }
            }
        }
        self.forget(&dropped, &[]);
        for tx in pending.txs {
            let hash = tx.hash(self.admission.domain());
            ctx.spawn(self.add_tx(tx, false, Origin::Gossip).map(move |res, act, _| {
                if let Err(e) = res {
                    tracing::info!(tx = %hash, error = %e, "saved transaction no longer applies");
                    act.forget(&[], &[hash]);
                }
            }));
        }
        if records + txs > 0 {
            tracing::info!(records, txs, "mempool restored");
        }
    }
}

impl Handler<AddRecord> for Mempool {
    type Result = bool;
    fn handle(&mut self, msg: AddRecord, _: &mut Self::Context) -> bool {
        self.add_record(msg.0, true)
    }
}

impl Handler<AddTx> for Mempool {
    type Result = ResponseActFuture<Self, Result<(B256, Admitted), MempoolError>>;
    /// From this node's API. An admitted transaction is gossiped from here, a queued one too:
    /// peers queue it as well, and the missing nonce may reach them through another node.
    fn handle(&mut self, msg: AddTx, _: &mut Self::Context) -> Self::Result {
        let data = protocol::encode(&msg.0);
        Box::pin(
            self.add_tx(msg.0, true, Origin::Client)
                .map(move |res, act, _| {
                    let admitted = res?;
                    if let Some(publish) = &act.publish {
                        publish.do_send(Publish {
                            topic: topics::TXS,
                            data,
                        });
                    }
                    Ok(admitted)
                }),
        )
    }
}

impl Handler<AddOwnTx> for Mempool {
    type Result = ResponseActFuture<Self, Result<B256, MempoolError>>;
    fn handle(&mut self, msg: AddOwnTx, _: &mut Self::Context) -> Self::Result {
        let from = msg.key.address();
        let accounts = self.accounts.clone();
        Box::pin(
            async move { accounts.send(CheckTx { from, tx: None }).await }
                .into_actor(self)
                .then(move |ctx, act, _| {
                    let signed = ctx
                        .map_err(|e| MempoolError::Unavailable(e.to_string()))
                        .and_then(|ctx| {
                            let nonce = act
                                .txs
                                .next_nonce(&from)
                                .unwrap_or(ctx.account.nonce)
                                .max(ctx.account.nonce);
                            chain::UnsignedTx {
                                from,
                                nonce,
                                max_fee: ctx.fee,
                                action: msg.action,
                            }
                            .sign(&msg.key, act.admission.domain())
                            .map_err(|e| MempoolError::BadSignature(e.to_string()))
                        });
                    match signed {
                        Ok(tx) => {
                            let data = protocol::encode(&tx);
                            Box::pin(act.add_tx(tx, true, Origin::Client).map(
                                move |res, act, _| {
                                    let (hash, _) = res?;
                                    if let Some(publish) = &act.publish {
                                        publish.do_send(Publish {
                                            topic: topics::TXS,
                                            data,
                                        });
                                    }
                                    Ok(hash)
                                },
                            ))
                                as ResponseActFuture<Self, Result<B256, MempoolError>>
                        }
                        Err(e) => Box::pin(fut::ready(Err(e))),
                    }
                }),
        )
    }
}

impl Handler<GossipTx> for Mempool {
    type Result = ResponseActFuture<Self, MessageAcceptance>;
    /// Accept (relay) only what was admitted now; a transaction already held was relayed when
    /// it was admitted. Refusals that no state can cure (bad signature, zero amount) cost the
    /// sender; the rest depend on the state this node sees and are only not relayed.
    fn handle(&mut self, msg: GossipTx, _: &mut Self::Context) -> Self::Result {
        if self.txs.contains(&msg.0.hash(self.admission.domain())) {
            return Box::pin(fut::ready(MessageAcceptance::Ignore));
        }
        Box::pin(
            self.add_tx(msg.0, true, Origin::Gossip)
                .map(|res, _, _| match res {
                    Ok((_, Admitted::Pending)) => MessageAcceptance::Accept,
                    // Relayed, if ever, by its author's rebroadcast once it applies.
                    Ok((_, Admitted::Queued { .. })) => MessageAcceptance::Ignore,
                    Err(e) => {
                        METRICS
                            .gossip_rejected
                            .with_label_values(&[crate::protocol::topics::TXS, e.label()])
                            .inc();
                        tracing::debug!(error = %e, "gossiped transaction refused");
                        match e {
                            MempoolError::BadSignature(_)
                            | MempoolError::ZeroAmount
                            | MempoolError::FalseFraudClaim(_)
                            | MempoolError::FalseDeposit(_) => MessageAcceptance::Reject,
                            _ => MessageAcceptance::Ignore,
                        }
                    }
                }),
        )
    }
}

impl Handler<Candidates> for Mempool {
    type Result = MessageResult<Candidates>;
    fn handle(&mut self, msg: Candidates, _: &mut Self::Context) -> Self::Result {
        let records = self
            .order
            .values()
            .take(msg.max_records)
            .filter_map(|id| self.records.get(id).map(|(_, r)| r.clone()))
            .collect();
        MessageResult((records, self.txs.candidates(msg.max_txs)))
    }
}

impl Handler<Committed> for Mempool {
    type Result = ();
    fn handle(&mut self, msg: Committed, _: &mut Self::Context) {
        let jobs = self.remove_records(&msg.jobs);
        let txs = self.txs.committed(&msg.txs, &msg.accounts);
        self.forget(&jobs, &txs);
        self.gauges();
    }
}

impl Handler<DropInvalid> for Mempool {
    type Result = ();
    fn handle(&mut self, msg: DropInvalid, _: &mut Self::Context) {
        let ids: Vec<JobId> = msg.records.iter().map(|(id, _)| *id).collect();
        for (id, reason) in &msg.records {
            tracing::info!(job = %id, reason, "record cannot enter a block: dropped");
        }
        let jobs = self.remove_records(&ids);
        let mut txs = Vec::new();
        for (hash, reason) in &msg.txs {
            let removed = self.txs.drop_with_successors(hash);
            if !removed.is_empty() {
                tracing::info!(tx = %hash, reason, dropped = removed.len(), "transaction no longer applies: dropped with its successors");
            }
            txs.extend(removed);
        }
        self.forget(&jobs, &txs);
        self.gauges();
    }
}

impl Handler<NextNonce> for Mempool {
    type Result = Option<u64>;
    fn handle(&mut self, msg: NextNonce, _: &mut Self::Context) -> Self::Result {
        self.txs.next_nonce(&msg.0)
    }
}

impl Handler<SetDepositChecker> for Mempool {
    type Result = ();
    fn handle(&mut self, msg: SetDepositChecker, _: &mut Self::Context) {
        self.deposit_checker = Some(msg.0);
    }
}

impl Handler<SetFraudChecker> for Mempool {
    type Result = ();
    fn handle(&mut self, msg: SetFraudChecker, _: &mut Self::Context) {
        self.fraud_checker = Some(msg.0);
    }
}

impl Handler<TxPending> for Mempool {
    type Result = Option<&'static str>;
    fn handle(&mut self, msg: TxPending, _: &mut Self::Context) -> Self::Result {
        if self.txs.contains(&msg.0) {
            Some("pending")
        } else if self.txs.is_queued(&msg.0) {
            Some("queued")
        } else {
            None
        }
    }
}

impl Handler<PendingRecord> for Mempool {
    type Result = Option<(B256, chain::Address)>;
    fn handle(&mut self, msg: PendingRecord, _: &mut Self::Context) -> Self::Result {
        self.records
            .get(&msg.0)
            .map(|(_, r)| (r.record().output_hash, r.record().executor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chain::signing::seeded_key;

    const CHAIN: Domain = Domain {
        chain_id: 9,
        salt: B256::ZERO,
        payments: None,
    };

    fn transfer(key: &chain::PrivateKeySigner, nonce: u64, amount: u128) -> (Tx, B256) {
        let tx = chain::UnsignedTx {
            from: key.address(),
            nonce,
            max_fee: 0,
            action: chain::Action::Transfer {
                to: Address::repeat_byte(0xee),
                amount,
            },
        }
        .sign(key, &CHAIN)
        .unwrap();
        let hash = tx.hash(&CHAIN);
        (tx, hash)
    }

    fn account(balance: u128, nonce: u64) -> Account {
        Account {
            balance,
            nonce,
            ..Account::default()
        }
    }

    /// A committed account with a zero fee: the cost of a transfer is its amount.
    fn ctx(acc: &Account) -> TxContext {
        TxContext {
            account: acc.clone(),
            ..TxContext::default()
        }
    }

    fn add(pool: &mut TxPool, tx: (Tx, B256), acc: &Account) -> Result<(), MempoolError> {
        let hash = pool.precheck(&tx.0, &CHAIN)?;
        assert_eq!(hash, tx.1);
        pool.admit(tx.0, hash, &ctx(acc), Origin::Client)
            .map(|_| ())
    }

    /// Gossip reorders a sender's transactions and a client may send several at once: the
    /// later nonces wait (bounded) for the missing one and follow it into pending; a block
    /// that uses a queued nonce otherwise drops the queued one.
    #[test]
    fn transactions_ahead_of_their_nonce_wait_for_the_missing_ones() {
        let k = seeded_key(5, 2);
        let acc = account(100, 3);
        let mut pool = TxPool::default();
        let gossip = |pool: &mut TxPool, tx: (Tx, B256), acc: &Account| {
            let hash = pool.precheck(&tx.0, &CHAIN).unwrap();
            pool.admit(tx.0, hash, &ctx(acc), Origin::Gossip)
        };
        let client = |pool: &mut TxPool, tx: (Tx, B256), acc: &Account| {
            let hash = pool.precheck(&tx.0, &CHAIN).unwrap();
            pool.admit(tx.0, hash, &ctx(acc), Origin::Client)
        };
        assert_eq!(
            client(&mut pool, transfer(&k, 5, 10), &acc),
            Ok(Admitted::Queued { next: 3 })
        );
        assert_eq!(
            gossip(&mut pool, transfer(&k, 4, 10), &acc),
            Ok(Admitted::Queued { next: 3 })
        );
        // The same one again is not a second entry; another transaction at a queued nonce
        // does not replace the first.
        assert_eq!(
            gossip(&mut pool, transfer(&k, 5, 10), &acc),
            Ok(Admitted::Queued { next: 3 })
        );
        assert!(matches!(
            client(&mut pool, transfer(&k, 5, 11), &acc),
            Err(MempoolError::NonceUsed { nonce: 5, .. })
        ));
        // Too far ahead of the next nonce: refused.
        let far = 3 + MAX_PENDING_PER_SENDER as u64 + 1;
        assert!(matches!(
            client(&mut pool, transfer(&k, far, 1), &acc),
            Err(MempoolError::NonceGap { expected: 3, .. })
        ));
        assert!(gossip(&mut pool, transfer(&k, far, 1), &acc).is_err());
        assert!(pool.candidates(10).is_empty());
        assert_eq!(pool.queued(), 2);
        assert_eq!(
            gossip(&mut pool, transfer(&k, 3, 10), &acc),
            Ok(Admitted::Pending)
        );
        assert_eq!(
            pool.candidates(10),
            vec![
                transfer(&k, 3, 10).0,
                transfer(&k, 4, 10).0,
                transfer(&k, 5, 10).0
            ]
        );
        assert_eq!(pool.queued(), 0);

        // Queued at 8 and 9 while 6 is missing; a block then takes nonces 6 to 8 from
        // elsewhere: 8 is dropped, 9 becomes pending.
        let mut pool = TxPool::default();
        let acc = account(100, 6);
        let (t8, t9) = (transfer(&k, 8, 1), transfer(&k, 9, 1));
        let h8 = t8.1;
        assert_eq!(
            gossip(&mut pool, t8, &acc),
            Ok(Admitted::Queued { next: 6 })
        );
        assert_eq!(
            gossip(&mut pool, t9.clone(), &acc),
            Ok(Admitted::Queued { next: 6 })
        );
        let removed = pool.committed(&[], &[(k.address(), account(97, 9))]);
        assert_eq!(removed, vec![h8]);
        assert_eq!(pool.candidates(10), vec![t9.0]);
        assert_eq!(pool.queued(), 0);
    }

    /// Queued transactions are bounded per sender and in all, and expire: a sender cannot
    /// hold slots with nonces it never fills.
    #[test]
    fn queued_transactions_are_bounded_and_expire() {
        let k = seeded_key(5, 4);
        let acc = account(1_000, 0);
        let mut pool = TxPool::default();
        for n in 1..=MAX_PENDING_PER_SENDER as u64 {
            add(&mut pool, transfer(&k, n, 1), &acc).unwrap();
        }
        assert_eq!(pool.queued(), MAX_PENDING_PER_SENDER);
        // Nothing further ahead: the queue holds at most the next 64 nonces.
        assert!(matches!(
            add(
                &mut pool,
                transfer(&k, MAX_PENDING_PER_SENDER as u64 + 1, 1),
                &acc
            ),
            Err(MempoolError::NonceGap { .. })
        ));
        // Every sender's queue together is bounded.
        let mut wide = TxPool::default();
        let mut refused = 0;
        for s in 0..(FUTURE_CAPACITY / MAX_PENDING_PER_SENDER + 1) as u64 {
            let key = seeded_key(6, s);
            for n in 1..=MAX_PENDING_PER_SENDER as u64 {
                if let Err(MempoolError::NonceGap { .. }) =
                    add(&mut wide, transfer(&key, n, 1), &acc)
                {
                    refused += 1;
                }
            }
        }
        assert_eq!(wide.queued(), FUTURE_CAPACITY);
        assert_eq!(refused, MAX_PENDING_PER_SENDER);
        // Expiry: nothing waited since before a moment in the past; everything did since
        // before a moment to come.
        let earlier = Instant::now() - Duration::from_secs(60);
        assert!(pool.expire_queued(earlier).is_empty());
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(pool.expire_queued(later).len(), MAX_PENDING_PER_SENDER);
        assert_eq!(pool.queued(), 0);
        assert!(!pool.is_queued(&transfer(&k, 1, 1).1));
        // The sender starts again from its next nonce.
        add(&mut pool, transfer(&k, 0, 1), &acc).unwrap();
        assert_eq!(pool.candidates(10), vec![transfer(&k, 0, 1).0]);
    }

    #[test]
    fn admission_follows_the_pending_state() {
        let k = seeded_key(5, 1);
        let acc = account(100, 3);
        let mut pool = TxPool::default();
        // Zero amount, an empty account, a spent nonce, a gap: refused, nothing held.
        assert_eq!(
            add(&mut pool, transfer(&k, 3, 0), &acc),
            Err(MempoolError::ZeroAmount)
        );
        assert!(matches!(
            add(&mut pool, transfer(&k, 0, 1), &account(0, 0)),
            Err(MempoolError::InsufficientBalance { available: 0, .. })
        ));
        assert!(matches!(
            add(&mut pool, transfer(&k, 2, 1), &acc),
            Err(MempoolError::NonceUsed { expected: 3, .. })
        ));
        assert!(matches!(
            add(&mut pool, transfer(&k, 3 + 65, 1), &acc),
            Err(MempoolError::NonceGap { expected: 3, .. })
        ));
        assert!(pool.is_empty());
        assert_eq!(pool.queued(), 0);
        // A run of nonces, each paid out of what the earlier ones left.
        add(&mut pool, transfer(&k, 3, 60), &acc).unwrap();
        add(&mut pool, transfer(&k, 4, 40), &acc).unwrap();
        assert!(matches!(
            add(&mut pool, transfer(&k, 5, 1), &acc),
            Err(MempoolError::InsufficientBalance {
                available: 0,
                needed: 1,
                ..
            })
        ));
        // The same transaction again is not an error and not a second entry.
        add(&mut pool, transfer(&k, 3, 60), &acc).unwrap();
        assert_eq!(pool.len(), 2);
        // Another transaction at a pending nonce is refused.
        assert!(matches!(
            add(&mut pool, transfer(&k, 3, 1), &acc),
            Err(MempoolError::NonceUsed { expected: 5, .. })
        ));
        assert_eq!(
            pool.candidates(10),
            vec![transfer(&k, 3, 60).0, transfer(&k, 4, 40).0]
        );
        assert_eq!(pool.next_nonce(&k.address()), Some(5));
        assert_eq!(pool.next_nonce(&Address::ZERO), None);
        // A bad signature is refused before anything else.
        let (mut forged, _) = transfer(&k, 5, 1);
        forged.action = chain::Action::Transfer {
            to: Address::repeat_byte(0xee),
            amount: 2,
        };
        assert!(matches!(
            pool.precheck(&forged, &CHAIN),
            Err(MempoolError::BadSignature(_))
        ));
    }

    #[test]
    fn commits_prune_what_no_longer_applies() {
        let (a, b) = (seeded_key(5, 1), seeded_key(5, 2));
        let mut pool = TxPool::default();
        for n in 0..3 {
            add(&mut pool, transfer(&a, n, 10), &account(30, 0)).unwrap();
            add(&mut pool, transfer(&b, n, 10), &account(30, 0)).unwrap();
        }
        // A block included a's nonce 0; b's account was drained elsewhere to 15 (nonce 0
        // spent by a transfer this node never saw).
        let removed = pool.committed(
            &[transfer(&a, 0, 10).1],
            &[(a.address(), account(20, 1)), (b.address(), account(15, 1))],
        );
        assert_eq!(
            removed.len(),
            3,
            "a0 included; b0 spent, b2 unaffordable: {removed:?}"
        );
        assert_eq!(
            pool.candidates(10),
            // Admission order: a1, b1, a2 were admitted in that order.
            vec![
                transfer(&a, 1, 10).0,
                transfer(&b, 1, 10).0,
                transfer(&a, 2, 10).0
            ]
        );
        // b's nonce 1 (10 of 15) still applies; its nonce 2 would need 20.
        assert!(!pool.contains(&transfer(&b, 2, 10).1));
        // Dropping one drops its successors: they could never apply without it.
        assert_eq!(
            pool.drop_with_successors(&transfer(&a, 1, 10).1),
            vec![transfer(&a, 1, 10).1, transfer(&a, 2, 10).1]
        );
        assert_eq!(pool.candidates(10), vec![transfer(&b, 1, 10).0]);
        // The sender can send from its committed nonce again.
        add(&mut pool, transfer(&a, 1, 5), &account(20, 1)).unwrap();
    }

    #[test]
    fn one_sender_cannot_fill_the_pool() {
        let k = seeded_key(5, 3);
        let acc = account(u128::MAX, 0);
        let mut pool = TxPool::default();
        for n in 0..MAX_PENDING_PER_SENDER as u64 {
            add(&mut pool, transfer(&k, n, 1), &acc).unwrap();
        }
        assert!(matches!(
            add(
                &mut pool,
                transfer(&k, MAX_PENDING_PER_SENDER as u64, 1),
                &acc
            ),
            Err(MempoolError::SenderFull { .. })
        ));
    }
}

/// The mempool against a real RocksDB store and Settlement.
#[cfg(test)]
mod restore_tests {
    use super::*;
    use chain::genesis::{GenesisAccount, ModelEntry, Params, VerificationMode};
    use chain::signing::seeded_key;
    use chain::{JobRequest, ModelId, Proof, TOTAL_SUPPLY};

    use crate::settlement::Settlement;

    /// A network with one validator (address 0x01…), one client, one executor and one model,
    /// and a maker of that client's jobs' records: `record(domain, nonce)`.
    fn network() -> (
        Arc<chain::Genesis>,
        impl Fn(&Domain, u64) -> (JobId, InferenceRecord),
    ) {
        let (client, exec) = (seeded_key(21, 1), seeded_key(21, 2));
        let model = ModelId([4; 32]);
        let stake = 1_000_000;
        let genesis = Arc::new(chain::Genesis {
            chain_id: 77,
            genesis_time_ms: 0,
            accounts: vec![
                GenesisAccount {
                    address: client.address(),
                    balance: TOTAL_SUPPLY - stake - Params::default().min_inference_stake,
                    stake: 0,
                    label: "client".into(),
                    vesting: None,
                },
                GenesisAccount {
                    address: Address::repeat_byte(1),
                    balance: 0,
                    stake,
                    label: "validator".into(),
                    vesting: None,
                },
                GenesisAccount {
                    address: exec.address(),
                    balance: 0,
                    stake: Params::default().min_inference_stake,
                    label: "inference".into(),
                    vesting: None,
                },
            ],
            pools: Default::default(),
            validators: vec![chain::genesis::GenesisValidator {
                address: Address::repeat_byte(1),
                peer_id: String::new(),
                moniker: String::new(),
            }],
            inference_nodes: vec![chain::genesis::GenesisInferenceNode::new(exec.address())],
            models: vec![ModelEntry {
                id: model,
                name: "m".into(),
                owner: client.address(),
                price_per_job: 1,
                price_per_unit: 0,
                mode: VerificationMode::Reexec,
            }],
            params: Params::default(),
            tee: None,
            evm: None,
        });
        let record = move |domain: &Domain, nonce: u64| {
            let input = "{}".to_string();
            let job = JobRequest {
                client: client.address(),
                model_id: model,
                input_hash: alloy::primitives::keccak256(input.as_bytes()),
                max_fee: 1,
                nonce,
                expiry: u64::MAX,
            }
            .sign(&client, domain)
            .unwrap();
            let r = InferenceRecord::create(
                job,
                input,
                (B256::repeat_byte(3), 1),
                Proof::Reexec,
                &exec,
                domain,
            )
            .unwrap();
            (r.job_id(domain), r)
        };
        (genesis, record)
    }

    /// A saved record is admitted again at start only if it still passes the checks; one that
    /// fails them (here: signed for another network) is dropped and deleted from the store.
    #[actix::test]
    async fn saved_records_are_checked_again_at_start() {
        let (genesis, record) = network();
        let domain = genesis.domain();
        let (good_id, good) = record(&domain, 1);
        let other = Domain {
            chain_id: 77,
            salt: B256::repeat_byte(1),
            payments: None,
        };
        let (_, bad) = record(&other, 2);
        // Saved under its id on this network, as this node would have.
        let bad_id = bad.job_id(&domain);
        assert!(
            Admission::new(genesis.clone(), None)
                .check(Arc::new(bad.clone()))
                .is_err()
        );

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        store.put_pending_record(&good_id, &good).unwrap();
        store.put_pending_record(&bad_id, &bad).unwrap();
        let settlement = Settlement::open(store.clone(), genesis.clone())
            .unwrap()
            .start();
        let mempool = Mempool::new(
            Admission::new(genesis.clone(), None),
            Some(store.clone()),
            settlement.recipient(),
        )
        .start();
        let (records, _) = mempool
            .send(Candidates {
                max_records: 10,
                max_txs: 10,
            })
            .await
            .unwrap();
        let records: Vec<InferenceRecord> = records.into_iter().map(|r| r.into_record()).collect();
        assert_eq!(records, vec![good.clone()]);
        let saved = store.pending().unwrap();
        assert_eq!(saved.records, vec![good]);
    }

    /// What the EVM says of deposit claims, by id: 0 false, 1 not checkable, others true.
    struct EvmSays;
    impl Actor for EvmSays {
        type Context = Context<Self>;
    }
    impl Handler<crate::bridge::CheckDeposits> for EvmSays {
        type Result = Result<(), crate::bridge::DepositCheckError>;
        fn handle(
            &mut self,
            msg: crate::bridge::CheckDeposits,
            _: &mut Self::Context,
        ) -> Self::Result {
            use crate::bridge::DepositCheckError::{False, Unable};
            match msg.0.first().map(|c| c.id) {
                Some(0) => Err(False("deposit 0 claims amount 5 (EVM: 4)".into())),
                Some(1) => Err(Unable("deposit 1 is not on the EVM".into())),
                _ => Ok(()),
            }
        }
    }

    /// Bridge deposits are not admitted while nothing checks them against the EVM, not even
    /// a validator's: a signed, well-formed one is refused before it is kept or relayed. With
    /// a checker, one it finds false is refused as such (its relaying peer penalised), one it
    /// cannot check is refused as failing, and one it confirms goes on to the ledger's checks.
    #[actix::test]
    async fn bridge_deposits_are_admitted_only_as_the_evm_checker_confirms() {
        let (genesis, _) = network();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let settlement = Settlement::open(store.clone(), genesis.clone())
            .unwrap()
            .start();
        let admission = Admission::new(genesis.clone(), None);
        let mempool = Mempool::new(admission, Some(store), settlement.recipient()).start();
        let key = seeded_key(21, 3);
        let deposit = |id: u64| {
            chain::UnsignedTx {
                from: key.address(),
                nonce: 0,
                max_fee: 1,
                action: chain::Action::BridgeDeposit {
                    id,
                    from: Address::repeat_byte(1),
                    recipient: key.address(),
                    amount: 5,
                },
            }
            .sign(&key, &genesis.domain())
            .unwrap()
        };
        let e = mempool.send(AddTx(deposit(0))).await.unwrap().unwrap_err();
        assert!(
            matches!(&e, MempoolError::WouldFail(m) if m.contains("checking the EVM")),
            "{e}"
        );
        mempool
            .send(SetDepositChecker(EvmSays.start().recipient()))
            .await
            .unwrap();
        let e = mempool.send(AddTx(deposit(0))).await.unwrap().unwrap_err();
        assert!(
            matches!(&e, MempoolError::FalseDeposit(m) if m.contains("EVM: 4")),
            "{e}"
        );
        assert_eq!(e.label(), "false_bridge_deposit");
        let e = mempool.send(AddTx(deposit(1))).await.unwrap().unwrap_err();
        assert!(
            matches!(&e, MempoolError::WouldFail(m) if m.contains("not on the EVM")),
            "{e}"
        );
        // Confirmed by the EVM, then refused by the ledger: this key is no validator.
        let e = mempool.send(AddTx(deposit(2))).await.unwrap().unwrap_err();
        assert!(
            !matches!(e, MempoolError::FalseDeposit(_)) && !e.to_string().contains("EVM"),
            "{e}"
        );
        let (_, txs) = mempool
            .send(Candidates {
                max_records: 10,
                max_txs: 10,
            })
            .await
            .unwrap();
        assert!(txs.is_empty());
    }

    /// A record that reached the mempool after its block was committed (its AddRecord raced
    /// the Committed) is dropped, with its saved copy, once it has waited; until then it stays.
    #[actix::test]
    async fn a_record_of_a_settled_job_is_dropped() {
        let (genesis, record) = network();
        let (_, good) = record(&genesis.domain(), 1);
        let admission = Admission::new(genesis.clone(), None);
        let verified = admission.check(Arc::new(good.clone())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let settlement = Settlement::open(store.clone(), genesis.clone())
            .unwrap()
            .start();
        let mut pool = Mempool::new(admission, Some(store.clone()), settlement.recipient());
        assert!(pool.add_record(verified.clone(), true));
        pool.sent.insert(verified.id().0, Instant::now());
        // Another job's record, not settled: it stays whatever its age.
        let (_, waiting) = record(&genesis.domain(), 2);
        let waiting = pool.admission.check(Arc::new(waiting)).unwrap();
        assert!(pool.add_record(waiting.clone(), true));
        pool.sent.insert(waiting.id().0, Instant::now());

        // The job settles in a block.
        let ledger = store.load_ledger().unwrap();
        let built = ledger
            .build_block(
                &genesis,
                Address::repeat_byte(1),
                ledger.tip_time_ms + 1,
                vec![verified.clone()],
                vec![],
            )
            .unwrap();
        assert_eq!(built.block.records.len(), 1);
        let certificate = chain::CommitCertificate {
            height: built.block.header.height,
            round: 0,
            block_hash: built.block.hash(),
            votes: vec![],
        };
        store
            .commit_block(&built.block, &certificate, &built.changes)
            .unwrap();

        // Not yet waited long enough: kept.
        pool.drop_settled(Duration::from_secs(30));
        assert_eq!(pool.records.len(), 2);
        pool.drop_settled(Duration::ZERO);
        let left: Vec<JobId> = pool.records.keys().copied().collect();
        assert_eq!(left, vec![waiting.id()]);
        assert_eq!(
            store.pending().unwrap().records,
            vec![waiting.record().clone()]
        );
    }
}
