//! The Bridge actor (validators with an EVM RPC): credits the EVM bridge's deposits on the
//! native chain, and checks the deposits other validators credit before this one admits or
//! votes for them.
//!
//! Each tick it reads the ledger's next deposit to credit and the deposits the Settlement
//! contract holds at this node's confirmed EVM block (`confirmations` below the tip: state read
//! at that block, so a deposit is seen only that deep). Validators take turns per deposit id as
//! they do per anchor height: the first in turn sends `bridge_deposit` transactions at once,
//! each next one a `stagger` later if the deposit is still not credited, so usually one
//! validator pays the fee. The ledger credits deposit ids in order, each once, whoever sends
//! them; a late duplicate fails as an action and only costs its sender the fee.
//!
//! [`CheckDeposits`] answers whether claimed deposits are exactly those the contract holds at
//! this node's confirmed block. The mempool asks it before admitting a deposit, the consensus
//! before prevoting for a block with one. Deposits once confirmed do not change (the contract
//! only appends), so answers are cached.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chain::{Address, PrivateKeySigner};
use evm::Rpc;
use evm::bridge::Deposit;

use crate::metrics::METRICS;

/// Deposits read per tick, and sent per turn.
const BATCH: u64 = 64;
/// Deposits kept in the cache at most (ids already credited are dropped first).
const CACHE: usize = 4096;

#[derive(Clone, Debug)]
pub struct BridgeConfig {
    pub rpc_url: String,
    pub settlement: Address,
    /// EVM blocks a deposit must be under before it is credited.
    pub confirmations: u64,
    pub tick: Duration,
    /// How much later each next validator in turn sends an uncredited deposit.
    pub stagger: Duration,
    /// After how long a deposit this node sent, still uncredited, is sent again.
    pub resend: Duration,
    pub rpc_timeout: Duration,
}

/// A deposit as a `bridge_deposit` transaction claims it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimedDeposit {
    pub id: u64,
    pub from: Address,
    pub recipient: Address,
    pub amount: u128,
}

impl ClaimedDeposit {
    /// The claim of a `bridge_deposit` action; `None` for any other action.
    pub fn of(action: &chain::Action) -> Option<ClaimedDeposit> {
        match action {
            chain::Action::BridgeDeposit {
                id,
                from,
                recipient,
                amount,
            } => Some(ClaimedDeposit {
                id: *id,
                from: *from,
                recipient: *recipient,
                amount: *amount,
            }),
            _ => None,
        }
    }

    fn action(d: &Deposit) -> chain::Action {
        chain::Action::BridgeDeposit {
            id: d.id,
            from: d.from,
            recipient: d.recipient,
            amount: d.amount,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepositCheckError {
    /// The contract holds this deposit id with other contents: the claim is false.
    #[error("false bridge deposit: {0}")]
    False(String),
    /// Not decidable here now (not confirmed at this node's block yet, RPC down).
    #[error("bridge deposit not checkable here: {0}")]
    Unable(String),
}

/// Whether `claim` is exactly the deposit `seen` the contract holds under its id.
fn compare(claim: &ClaimedDeposit, seen: &Deposit) -> Result<(), DepositCheckError> {
    let mut wrong = Vec::new();
    if claim.from != seen.from {
        wrong.push(format!("depositor {} (EVM: {})", claim.from, seen.from));
    }
    if claim.recipient != seen.recipient {
        wrong.push(format!(
            "recipient {} (EVM: {})",
            claim.recipient, seen.recipient
        ));
    }
    if claim.amount != seen.amount {
        wrong.push(format!("amount {} (EVM: {})", claim.amount, seen.amount));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(DepositCheckError::False(format!(
            "deposit {} claims {}",
            claim.id,
            wrong.join(", ")
        )))
    }
}

/// Checks every claim ending at `confirmations` below `rpc`'s tip, through `cache`.
#[derive(Message)]
#[rtype(result = "Result<(), DepositCheckError>")]
pub struct CheckDeposits(pub Vec<ClaimedDeposit>);

/// What the actor shares with its blocking RPC tasks.
struct Reader {
    rpc: Rpc,
    settlement: Address,
    confirmations: u64,
    /// Confirmed deposits by id.
    cache: Mutex<BTreeMap<u64, Deposit>>,
}

impl Reader {
    fn cached(&self, id: u64) -> Option<Deposit> {
        self.cache.lock().ok()?.get(&id).copied()
    }

    fn keep(&self, deposits: &[Deposit], credited: Option<u64>) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if let Some(credited) = credited {
            // Ids below the ledger's next are credited: no claim of them can apply again.
            *cache = cache.split_off(&credited);
        }
        for d in deposits {
            if cache.len() >= CACHE {
                break;
            }
            cache.insert(d.id, *d);
        }
    }

    /// The confirmed EVM block, `Unable` while the chain is shorter than the confirmations.
    fn confirmed(&self) -> Result<u64, DepositCheckError> {
        evm::bridge::confirmed_block(&self.rpc, self.confirmations)
            .map_err(|e| DepositCheckError::Unable(e.to_string()))?
            .ok_or_else(|| {
                DepositCheckError::Unable(format!(
                    "the EVM chain is not {} blocks long yet",
                    self.confirmations
                ))
            })
    }

    /// Blocking: every claim checked, from the cache or one read at the confirmed block.
    fn check(&self, claims: &[ClaimedDeposit]) -> Result<(), DepositCheckError> {
        let mut block = None;
        for claim in claims {
            let seen = match self.cached(claim.id) {
                Some(d) => d,
                None => {
                    let at = match block {
                        Some(b) => b,
                        None => *block.insert(self.confirmed()?),
                    };
                    let d = evm::bridge::deposit(&self.rpc, self.settlement, claim.id, at)
                        .map_err(|e| DepositCheckError::Unable(e.to_string()))?
                        .ok_or_else(|| {
                            DepositCheckError::Unable(format!(
                                "deposit {} is not on the EVM at this node's confirmed block {at}",
                                claim.id
                            ))
                        })?;
                    self.keep(&[d], None);
                    d
                }
            };
            compare(claim, &seen)?;
        }
        Ok(())
    }

    /// Blocking: the confirmed deposits from `credited` on (at most [`BATCH`]), and how many
    /// the bridge holds then.
    fn pending(&self, credited: u64) -> Result<(Vec<Deposit>, u64), String> {
        let at = self.confirmed().map_err(|e| e.to_string())?;
        let count = evm::bridge::deposit_count(&self.rpc, self.settlement, at)
            .map_err(|e| e.to_string())?;
        let end = count.min(credited.saturating_add(BATCH));
        let mut out = Vec::new();
        let mut next = credited;
        while next < end {
            if let Some(d) = self.cached(next) {
                out.push(d);
                next += 1;
                continue;
            }
            let read = evm::bridge::deposits_from(&self.rpc, self.settlement, next, end - next, at)
                .map_err(|e| e.to_string())?;
            if read.is_empty() {
                break;
            }
            next += read.len() as u64;
            out.extend(read);
        }
        self.keep(&out, Some(credited));
        Ok((out, count))
    }
}

/// The deposits this node sends now: in its turn for the first uncredited one (`waited` since
/// it first saw that one uncredited), every listed deposit not sent within `resend`.
fn due(
    pending: &[Deposit],
    rank: u32,
    waited: Duration,
    stagger: Duration,
    sent: &BTreeMap<u64, Instant>,
    resend: Duration,
    now: Instant,
) -> Vec<Deposit> {
    if pending.is_empty() || waited < stagger * rank {
        return Vec::new();
    }
    pending
        .iter()
        .filter(|d| {
            sent.get(&d.id)
                .is_none_or(|at| now.saturating_duration_since(*at) >= resend)
        })
        .copied()
        .collect()
}

pub struct Bridge {
    config: BridgeConfig,
    key: Arc<PrivateKeySigner>,
    ledger: Recipient<crate::settlement::GetChainState>,
    mempool: Recipient<crate::mempool::AddOwnTx>,
    reader: Arc<Reader>,
    /// The first uncredited deposit id and when this node first saw it so.
    turn: Option<(u64, Instant)>,
    /// Deposits this node sent, by id, and when.
    sent: BTreeMap<u64, Instant>,
    busy: bool,
}

impl Bridge {
    pub fn new(
        config: BridgeConfig,
        key: PrivateKeySigner,
        ledger: Recipient<crate::settlement::GetChainState>,
        mempool: Recipient<crate::mempool::AddOwnTx>,
    ) -> Bridge {
        let reader = Arc::new(Reader {
            rpc: Rpc::new(&config.rpc_url, config.rpc_timeout),
            settlement: config.settlement,
            confirmations: config.confirmations,
            cache: Mutex::new(BTreeMap::new()),
        });
        Bridge {
            config,
            key: Arc::new(key),
            ledger,
            mempool,
            reader,
            turn: None,
            sent: BTreeMap::new(),
            busy: false,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let (ledger, reader) = (self.ledger.clone(), self.reader.clone());
        let read = async move {
            let state = ledger
                .send(crate::settlement::GetChainState)
                .await
                .map_err(|e| format!("ledger: {e}"))?;
            let credited = state.pools.bridge_deposits_credited;
            let found = tokio::task::spawn_blocking(move || reader.pending(credited))
                .await
                .map_err(|e| format!("bridge task: {e}"))??;
            Ok::<_, String>((credited, state.registry.set.clone(), found))
        };
        ctx.spawn(read.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            match result {
                Ok((credited, set, (pending, count))) => {
                    METRICS.bridge_deposits_confirmed.set(count as i64);
                    act.send_due(credited, &set, pending, ctx);
                }
                Err(e) => tracing::warn!(error = %e, "reading the bridge's deposits failed"),
            }
        }));
    }

    fn send_due(
        &mut self,
        credited: u64,
        set: &[(Address, u64)],
        pending: Vec<Deposit>,
        ctx: &mut Context<Self>,
    ) {
        self.sent = self.sent.split_off(&credited);
        let Some(first) = pending.first() else {
            self.turn = None;
            return;
        };
        let now = Instant::now();
        let since = match self.turn {
            Some((id, since)) if id == first.id => since,
            _ => {
                self.turn = Some((first.id, now));
                now
            }
        };
        let rank = crate::anchor::rank_in(set, first.id, self.key.address());
        let send = due(
            &pending,
            rank,
            now.saturating_duration_since(since),
            self.config.stagger,
            &self.sent,
            self.config.resend,
            now,
        );
        if send.is_empty() {
            return;
        }
        for d in &send {
            self.sent.insert(d.id, now);
        }
        let (mempool, key) = (self.mempool.clone(), self.key.clone());
        // One after the other: each takes the account's next nonce after the previous.
        ctx.spawn(
            async move {
                for d in send {
                    let sent = mempool
                        .send(crate::mempool::AddOwnTx {
                            key: key.clone(),
                            action: ClaimedDeposit::action(&d),
                        })
                        .await;
                    match sent {
                        Ok(Ok(tx)) => {
                            METRICS.bridge_deposits_sent.inc();
                            tracing::info!(id = d.id, recipient = %d.recipient, amount = d.amount, %tx, "bridge deposit sent for crediting");
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(id = d.id, error = %e, "bridge deposit not sent");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "mempool unavailable");
                            break;
                        }
                    }
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Bridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(rpc = %self.config.rpc_url, settlement = %self.config.settlement, confirmations = self.config.confirmations, "crediting the EVM bridge's deposits");
        ctx.run_interval(self.config.tick, |act, ctx| act.tick(ctx));
    }
}

impl Handler<CheckDeposits> for Bridge {
    type Result = ResponseFuture<Result<(), DepositCheckError>>;
    fn handle(&mut self, msg: CheckDeposits, _: &mut Self::Context) -> Self::Result {
        let reader = self.reader.clone();
        Box::pin(async move {
            let result = tokio::task::spawn_blocking(move || reader.check(&msg.0))
                .await
                .unwrap_or_else(|e| Err(DepositCheckError::Unable(e.to_string())));
            let label = match &result {
                Ok(()) => "ok",
                Err(DepositCheckError::False(_)) => "false",
                Err(DepositCheckError::Unable(_)) => "unable",
            };
            METRICS
                .bridge_deposit_checks
                .with_label_values(&[label])
                .inc();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deposit(id: u64) -> Deposit {
        Deposit {
            id,
            from: Address::repeat_byte(1),
            recipient: Address::repeat_byte(2),
            amount: 1_000 + id as u128,
            evm_block: 10 + id,
        }
    }

    fn claim(d: &Deposit) -> ClaimedDeposit {
        ClaimedDeposit::of(&ClaimedDeposit::action(d)).unwrap()
    }

    /// A claim matches only the deposit it names, field for field; the EVM block is not part
    /// of the claim.
    #[test]
    fn a_claim_must_match_the_deposit_exactly() {
        let d = deposit(3);
        assert_eq!(compare(&claim(&d), &d), Ok(()));
        let wrongs = [
            ClaimedDeposit {
                from: Address::repeat_byte(9),
                ..claim(&d)
            },
            ClaimedDeposit {
                recipient: Address::repeat_byte(9),
                ..claim(&d)
            },
            ClaimedDeposit {
                amount: d.amount + 1,
                ..claim(&d)
            },
        ];
        for (w, field) in wrongs.iter().zip(["depositor", "recipient", "amount"]) {
            match compare(w, &d) {
                Err(DepositCheckError::False(why)) => assert!(why.contains(field), "{why}"),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert_eq!(
            ClaimedDeposit::of(&chain::Action::Unjail),
            None,
            "only bridge deposits are claims"
        );
    }

    /// The first in turn sends every pending deposit at once, the next ones only after their
    /// stagger; nothing is sent twice within `resend`, and everything again after it.
    #[test]
    fn deposits_are_sent_in_turn_and_again_only_after_the_resend_delay() {
        let pending: Vec<Deposit> = (5..8).map(deposit).collect();
        let (stagger, resend) = (Duration::from_secs(5), Duration::from_secs(20));
        let now = Instant::now();
        let none = BTreeMap::new();
        let ids = |v: Vec<Deposit>| v.iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(
            ids(due(
                &pending,
                0,
                Duration::ZERO,
                stagger,
                &none,
                resend,
                now
            )),
            vec![5, 6, 7]
        );
        assert!(
            due(
                &pending,
                2,
                Duration::from_secs(9),
                stagger,
                &none,
                resend,
                now
            )
            .is_empty()
        );
        assert_eq!(
            ids(due(
                &pending,
                2,
                Duration::from_secs(10),
                stagger,
                &none,
                resend,
                now
            ))
            .len(),
            3
        );
        assert!(due(&[], 0, Duration::ZERO, stagger, &none, resend, now).is_empty());
        let later = now + Duration::from_secs(30);
        let sent: BTreeMap<u64, Instant> = [(5, now), (6, later - Duration::from_secs(1))].into();
        assert_eq!(
            ids(due(
                &pending,
                0,
                Duration::ZERO,
                stagger,
                &sent,
                resend,
                later
            )),
            vec![5, 7],
            "5 was sent 30 s ago, 6 a second ago"
        );
    }
}
