//! The Settlement actor: owns the ledger and the RocksDB store. Validates and builds blocks,
//! applies finalized blocks atomically, answers state queries and serves sync requests.

use std::sync::Arc;

use actix::prelude::*;
use chain::{
    Account, Address, Block, CommitCertificate, Genesis, Height, JobEntry, JobId, Ledger, Store,
    Tip, Tx,
};

use crate::mempool::Committed;
use crate::metrics::METRICS;
use crate::network::InboundSync;
use crate::protocol::{MAX_SYNC_BLOCKS, SyncReply};

#[derive(Message)]
#[rtype(result = "Account")]
pub struct GetAccount(pub Address);

#[derive(Message)]
#[rtype(result = "Result<Option<JobEntry>, String>")]
pub struct GetJob(pub JobId);

/// The height that included a transaction, and its outcome.
#[derive(Message)]
#[rtype(result = "Result<Option<(Height, chain::TxOutcome)>, String>")]
pub struct GetTx(pub chain::B256);

#[derive(Message)]
#[rtype(result = "Result<Option<(Block, Option<CommitCertificate>)>, String>")]
pub struct GetBlock(pub Height);

#[derive(Message)]
#[rtype(result = "Tip")]
pub struct GetTip;

/// The validator set (address, power) that decided `height`.
#[derive(Message)]
#[rtype(result = "Result<Option<Vec<(Address, u64)>>, String>")]
pub struct GetSetAt(pub Height);

/// Where every token is at the tip.
#[derive(Message)]
#[rtype(result = "chain::Supply")]
pub struct GetSupply;

/// The registries (validators, inference nodes, models, proposals, parameters) and pools at
/// the tip.
#[derive(Message)]
#[rtype(result = "ChainState")]
pub struct GetChainState;

#[derive(Clone, Debug)]
pub struct ChainState {
    pub height: Height,
    pub registry: Arc<chain::Registry>,
    pub pools: chain::Pools,
    /// Bonded stake of every registered validator and inference node.
    pub bonded: std::collections::BTreeMap<Address, u128>,
}

/// What a transaction of `from` is admitted against: the sender's committed account, the fee,
/// the tip's time and, for `tx` when its nonce is the account's next, what including it on the
/// tip would do.
#[derive(Message)]
#[rtype(result = "crate::mempool::TxContext")]
pub struct CheckTx {
    pub from: Address,
    pub tx: Option<Box<Tx>>,
}

/// Which job used this (client, nonce), if any.
#[derive(Message)]
#[rtype(result = "Result<Option<JobId>, String>")]
pub struct NonceUsed {
    pub client: Address,
    pub nonce: u64,
}

/// What the API grant with this id has spent so far (settled jobs).
#[derive(Message)]
#[rtype(result = "u128")]
pub struct GrantSpent(pub chain::B256);

/// Checks a proposed block against the ledger rules (not re-execution: that is the Verifier's).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct ValidateBlock(pub Arc<Block>);

/// Builds the next block from candidates; what it left out comes back to be dropped.
#[derive(Message)]
#[rtype(result = "Result<chain::Built, String>")]
pub struct BuildBlock {
    pub proposer: Address,
    pub timestamp_ms: u64,
    /// From the mempool, which holds only checked records.
    pub records: Vec<chain::VerifiedRecord>,
    pub txs: Vec<Tx>,
}

/// The validator set that decides the height after the tip: (address, voting power).
pub type NextValidators = Vec<(Address, u64)>;

/// The tip and the validator set of the next height.
#[derive(Message)]
#[rtype(result = "(Tip, NextValidators)")]
pub struct GetTipSet;

/// Applies a finalized block with its certificate; answers the validator set of the next
/// height (an epoch may have changed it).
#[derive(Message)]
#[rtype(result = "Result<NextValidators, String>")]
pub struct CommitBlock {
    pub block: Arc<Block>,
    pub certificate: CommitCertificate,
}

/// Subscribe to commits.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<Committed>);

pub struct Settlement {
    store: Arc<Store>,
    ledger: Ledger,
    genesis: Arc<Genesis>,
    /// What this network's signatures are bound to (computed once from the genesis).
    domain: chain::signing::Domain,
    subscribers: Vec<Recipient<Committed>>,
    /// Blocks of the next height this node built or validated, with the changes they make: a
    /// decided one is committed with them instead of being executed again (every signature of
    /// every record checked a second time, on this actor's thread). Cleared at each commit.
    executed: std::collections::HashMap<chain::B256, chain::Changes>,
    /// How many times a block was executed to commit it (tests).
    commit_executions: u64,
    /// The node's record checks: told the registrations of every new tip.
    admission: Option<chain::Admission>,
}

/// At most this many executed blocks are kept for the next height (one per round normally).
const EXECUTED_KEPT: usize = 16;

impl Settlement {
    /// Loads the ledger at the store's tip (writing genesis on first start).
    pub fn open(store: Arc<Store>, genesis: Arc<Genesis>) -> chain::Result<Settlement> {
        store.init_genesis(&genesis)?;
        let ledger = store.load_ledger()?;
        if ledger.total_supply() != chain::TOTAL_SUPPLY {
            return Err(chain::Error::Corrupt(format!(
                "stored accounts and pools sum to {}, not the supply {}",
                ledger.total_supply(),
                chain::TOTAL_SUPPLY
            )));
        }
        METRICS.height.set(ledger.height as i64);
        tracing::info!(height = ledger.height, tip = %ledger.tip_hash, "ledger loaded");
        let settlement = Settlement {
            store,
            ledger,
            domain: genesis.domain(),
            genesis,
            subscribers: Vec::new(),
            executed: std::collections::HashMap::new(),
            commit_executions: 0,
            admission: None,
        };
        settlement.export_supply();
        Ok(settlement)
    }

    /// Sets the supply and validator-set gauges from the tip. Executing a block already
    /// refused one that would change the supply; this shows it holds on this node.
    fn export_supply(&self) {
        let s = self.ledger.supply();
        METRICS
            .supply_exact
            .set(i64::from(s.total == chain::TOTAL_SUPPLY));
        let opg = |v: u128| i64::try_from(v / 10u128.pow(18)).unwrap_or(i64::MAX);
        for (part, v) in [
            ("balances", s.balances),
            ("locked", s.locked),
            ("bonded", s.bonded),
            ("unbonding", s.unbonding),
            ("rewards_pool", s.pools.rewards),
            ("community_pool", s.pools.community),
            ("deposits", s.pools.deposits),
        ] {
            METRICS.supply_opg.with_label_values(&[part]).set(opg(v));
        }
        METRICS
            .validators_active
            .set(self.ledger.next_validators().len() as i64);
    }

    /// Keeps `admission`'s registrations at the tip from now on.
    pub fn with_admission(mut self, admission: chain::Admission) -> Self {
        admission.update(chain::Registrations::of(&self.ledger));
        self.admission = Some(admission);
        self
    }

    pub fn height(&self) -> Height {
        self.ledger.height
    }

    /// Keeps what executing `block` would change, for its commit.
    fn keep_executed(&mut self, block_hash: chain::B256, changes: chain::Changes) {
        if changes.height != self.ledger.height + 1 {
            return;
        }
        if self.executed.len() >= EXECUTED_KEPT {
            self.executed.clear();
        }
        self.executed.insert(block_hash, changes);
    }
}

impl Actor for Settlement {
    type Context = Context<Self>;
}

impl Handler<GetAccount> for Settlement {
    type Result = MessageResult<GetAccount>;
    fn handle(&mut self, msg: GetAccount, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.ledger.account(&msg.0))
    }
}

impl Handler<GetTx> for Settlement {
    type Result = Result<Option<(Height, chain::TxOutcome)>, String>;
    fn handle(&mut self, msg: GetTx, _: &mut Self::Context) -> Self::Result {
        self.store.tx(&msg.0).map_err(|e| e.to_string())
    }
}

impl Handler<GetJob> for Settlement {
    type Result = Result<Option<JobEntry>, String>;
    fn handle(&mut self, msg: GetJob, _: &mut Self::Context) -> Self::Result {
        self.store.job(&msg.0).map_err(|e| e.to_string())
    }
}

impl Handler<GetSetAt> for Settlement {
    type Result = Result<Option<Vec<(Address, u64)>>, String>;
    fn handle(&mut self, msg: GetSetAt, _: &mut Self::Context) -> Self::Result {
        self.store
            .validator_set_at(msg.0)
            .map_err(|e| e.to_string())
    }
}

impl Handler<GetBlock> for Settlement {
    type Result = Result<Option<(Block, Option<CommitCertificate>)>, String>;
    fn handle(&mut self, msg: GetBlock, _: &mut Self::Context) -> Self::Result {
        let block = self.store.block(msg.0).map_err(|e| e.to_string())?;
        match block {
            None => Ok(None),
            Some(b) => Ok(Some((
                b,
                self.store.certificate(msg.0).map_err(|e| e.to_string())?,
            ))),
        }
    }
}

impl Handler<GetTip> for Settlement {
    type Result = MessageResult<GetTip>;
    fn handle(&mut self, _: GetTip, _: &mut Self::Context) -> Self::Result {
        MessageResult(Tip {
            height: self.ledger.height,
            hash: self.ledger.tip_hash,
            timestamp_ms: self.ledger.tip_time_ms,
        })
    }
}

impl Handler<GetTipSet> for Settlement {
    type Result = MessageResult<GetTipSet>;
    fn handle(&mut self, _: GetTipSet, _: &mut Self::Context) -> Self::Result {
        MessageResult((
            Tip {
                height: self.ledger.height,
                hash: self.ledger.tip_hash,
                timestamp_ms: self.ledger.tip_time_ms,
            },
            self.ledger.next_validators().to_vec(),
        ))
    }
}

impl Handler<GetSupply> for Settlement {
    type Result = MessageResult<GetSupply>;
    fn handle(&mut self, _: GetSupply, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.ledger.supply())
    }
}

impl Handler<GetChainState> for Settlement {
    type Result = MessageResult<GetChainState>;
    fn handle(&mut self, _: GetChainState, _: &mut Self::Context) -> Self::Result {
        let registry = self.ledger.registry().clone();
        let bonded = registry
            .validators
            .keys()
            .chain(registry.nodes.keys())
            .map(|a| (*a, self.ledger.account(a).bonded))
            .collect();
        MessageResult(ChainState {
            height: self.ledger.height,
            registry,
            pools: self.ledger.pools(),
            bonded,
        })
    }
}

impl Handler<CheckTx> for Settlement {
    type Result = MessageResult<CheckTx>;
    fn handle(&mut self, msg: CheckTx, _: &mut Self::Context) -> Self::Result {
        let account = self.ledger.account(&msg.from);
        let now_ms = chain::types::now_ms().max(self.ledger.tip_time_ms + 1);
        let dry_run = msg
            .tx
            .filter(|tx| tx.nonce == account.nonce && tx.from == msg.from)
            .map(|tx| self.ledger.dry_run(&self.genesis, self.domain, &tx, now_ms));
        MessageResult(crate::mempool::TxContext {
            account,
            fee: self.ledger.params().tx_fee,
            now_ms: self.ledger.tip_time_ms,
            dry_run,
        })
    }
}

impl Handler<NonceUsed> for Settlement {
    type Result = Result<Option<JobId>, String>;
    fn handle(&mut self, msg: NonceUsed, _: &mut Self::Context) -> Self::Result {
        self.ledger
            .nonce_used(&msg.client, msg.nonce)
            .map_err(|e| e.to_string())
    }
}

impl Handler<GrantSpent> for Settlement {
    type Result = MessageResult<GrantSpent>;
    fn handle(&mut self, msg: GrantSpent, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.ledger.grant_spent(&msg.0))
    }
}

impl Handler<ValidateBlock> for Settlement {
    type Result = ResponseActFuture<Self, Result<(), String>>;
    /// The records' signatures are recovered on a blocking thread (two ECDSA recoveries per
    /// record: the bulk of the work), so this actor keeps answering balance, nonce and job
    /// lookups meanwhile; the block is then executed here, against the tip of that moment.
    fn handle(&mut self, msg: ValidateBlock, _: &mut Self::Context) -> Self::Result {
        let block = msg.0;
        let domain = self.domain;
        let recover = {
            let block = block.clone();
            async move {
                if block.records.is_empty() {
                    return chain::RecoveredRecords::of(&block, &domain).map_err(|e| e.to_string());
                }
                tokio::task::spawn_blocking(move || chain::RecoveredRecords::of(&block, &domain))
                    .await
                    .map_err(|e| format!("signature task failed: {e}"))?
                    .map_err(|e| e.to_string())
            }
        };
        Box::pin(recover.into_actor(self).map(move |recovered, act, _| {
            let changes = act
                .ledger
                .validate_proposal_recovered(
                    &act.genesis,
                    &block,
                    chain::types::now_ms(),
                    &recovered?,
                )
                .map_err(|e| e.to_string())?;
            act.keep_executed(block.hash(), changes);
            Ok(())
        }))
    }
}

impl Handler<BuildBlock> for Settlement {
    type Result = Result<chain::Built, String>;
    fn handle(&mut self, msg: BuildBlock, _: &mut Self::Context) -> Self::Result {
        let built = self
            .ledger
            .build_block(
                &self.genesis,
                msg.proposer,
                msg.timestamp_ms,
                msg.records,
                msg.txs,
            )
            .map_err(|e| e.to_string())?;
        self.keep_executed(built.changes.block_hash, built.changes.clone());
        Ok(built)
    }
}

impl Handler<CommitBlock> for Settlement {
    type Result = ResponseActFuture<Self, Result<NextValidators, String>>;
    /// A block this node built or validated against the same parent is committed with the
    /// changes found then (the block's hash covers its parent and state root). Any other (sync,
    /// a block first seen decided) has its certificate and its records' signatures checked on
    /// a blocking thread, then is executed here against the tip of that moment.
    fn handle(&mut self, msg: CommitBlock, _: &mut Self::Context) -> Self::Result {
        let block = msg.block;
        let certificate = msg.certificate;
        if block.header.height <= self.ledger.height {
            // Already applied (sync and consensus can race).
            return Box::pin(fut::ready(Ok(self.ledger.next_validators().to_vec())));
        }
        if certificate.block_hash != block.hash() || certificate.height != block.header.height {
            return Box::pin(fut::ready(Err("certificate is for another block".into())));
        }
        if let Some(changes) = self.executed.remove(&certificate.block_hash) {
            let checked = certificate
                .verify(self.ledger.next_validators(), &self.domain)
                .map_err(|e| e.to_string())
                .and_then(|()| self.apply(&block, &certificate, changes))
                .map(|()| self.ledger.next_validators().to_vec());
            return Box::pin(fut::ready(checked));
        }
        let (powers, domain) = (self.ledger.next_validators().to_vec(), self.domain);
        let check = {
            let (block, certificate) = (block.clone(), certificate.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    certificate
                        .verify(&powers, &domain)
                        .map_err(|e| e.to_string())?;
                    chain::RecoveredRecords::of(&block, &domain).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| format!("verification task failed: {e}"))?
            }
        };
        Box::pin(check.into_actor(self).map(move |recovered, act, _| {
            let recovered = recovered?;
            if block.header.height <= act.ledger.height {
                // Applied meanwhile.
                return Ok(act.ledger.next_validators().to_vec());
            }
            act.commit_executions += 1;
            let changes = act
                .ledger
                .validate_recovered(&act.genesis, &block, &recovered)
                .map_err(|e| e.to_string())?;
            act.apply(&block, &certificate, changes)?;
            Ok(act.ledger.next_validators().to_vec())
        }))
    }
}

impl Settlement {
    /// Writes a checked block and its changes, moves the ledger on and tells the subscribers.
    fn apply(
        &mut self,
        block: &Block,
        certificate: &CommitCertificate,
        changes: chain::Changes,
    ) -> Result<(), String> {
        self.executed.clear();
        self.store
            .commit_block(block, certificate, &changes)
            .map_err(|e| format!("store: {e}"))?;
        self.ledger.commit(&changes);
        self.ledger.set_last_commit(certificate.clone());
        if let Some(admission) = &self.admission {
            admission.update(chain::Registrations::of(&self.ledger));
        }
        for v in &changes.downtime_jailed {
            tracing::warn!(validator = %v, height = changes.height, "validator jailed for missing blocks");
        }
        for (node, job) in &changes.frauds {
            tracing::warn!(%node, %job, height = changes.height, "inference node slashed and jailed for a false record");
        }
        METRICS.frauds_slashed.inc_by(changes.frauds.len() as u64);
        for (offender, at) in &changes.slashes {
            tracing::warn!(%offender, offence_height = at, height = changes.height, "validator slashed and jailed for double-signing");
        }
        if changes.registry.is_some() {
            let set = self.ledger.next_validators();
            tracing::info!(
                height = changes.height,
                validators = set.len(),
                power = set.iter().map(|(_, p)| *p).sum::<u64>(),
                "registry changed"
            );
        }
        METRICS.height.set(self.ledger.height as i64);
        METRICS.slashes.inc_by(changes.slashes.len() as u64);
        self.export_supply();
        METRICS.blocks_committed.inc();
        let failed = changes
            .jobs
            .iter()
            .filter(|j| j.status == chain::JobStatus::Failed)
            .count();
        tracing::info!(
            height = block.header.height,
            hash = %changes.block_hash,
            records = block.records.len(),
            failed,
            txs = block.txs.len(),
            "block committed"
        );
        let note = Committed {
            height: block.header.height,
            block_hash: changes.block_hash,
            jobs: changes.jobs.iter().map(|j| j.job_id).collect(),
            txs: changes.txs.iter().map(|t| t.hash).collect(),
            accounts: changes
                .accounts
                .iter()
                .map(|(a, v)| (*a, v.clone()))
                .collect(),
        };
        self.subscribers.retain(|s| s.connected());
        for s in &self.subscribers {
            s.do_send(note.clone());
        }
        Ok(())
    }
}

/// How many blocks were executed again to commit them (tests).
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "u64")]
pub struct CommitExecutions;

#[cfg(test)]
impl Handler<CommitExecutions> for Settlement {
    type Result = u64;
    fn handle(&mut self, _: CommitExecutions, _: &mut Self::Context) -> u64 {
        self.commit_executions
    }
}

impl Handler<Subscribe> for Settlement {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        self.subscribers.push(msg.0);
    }
}

impl Handler<InboundSync> for Settlement {
    type Result = MessageResult<InboundSync>;
    fn handle(&mut self, msg: InboundSync, _: &mut Self::Context) -> Self::Result {
        let range = match sync_range(&msg.request, self.ledger.height) {
            Ok(r) => r,
            Err(e) => return MessageResult(SyncReply::Error(e)),
        };
        let mut out = Vec::new();
        let mut size = 0usize;
        for h in range {
            match (self.store.block(h), self.store.certificate(h)) {
                (Ok(Some(b)), Ok(Some(c))) => {
                    size += chain::codec::encode(&b).len();
                    out.push((b, c));
                    if size > crate::protocol::MAX_SYNC_RESPONSE_BYTES / 2 {
                        break;
                    }
                }
                (Err(e), _) | (_, Err(e)) => return MessageResult(SyncReply::Error(e.to_string())),
                _ => break,
            }
        }
        MessageResult(SyncReply::Blocks(out))
    }
}

/// The heights to serve for a sync request when this node is at `height`: the requested range,
/// cut to [`MAX_SYNC_BLOCKS`] and to what this node has. Every number comes from a peer, so no
/// arithmetic on them may overflow; a range this node cannot serve at all is an error reply.
pub(crate) fn sync_range(
    r: &crate::protocol::SyncRequest,
    height: Height,
) -> Result<std::ops::RangeInclusive<Height>, String> {
    if r.from == 0 || r.to < r.from {
        return Err(format!("bad range {}..={}", r.from, r.to));
    }
    if r.from > height {
        return Err(format!(
            "nothing from height {}: this node is at height {height}",
            r.from
        ));
    }
    let to =
        r.to.min(r.from.saturating_add(MAX_SYNC_BLOCKS - 1))
            .min(height);
    Ok(r.from..=to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SyncRequest;

    #[test]
    fn sync_ranges_from_peers_cannot_overflow() {
        let req = |from, to| SyncRequest { from, to };
        // The request that once panicked the actor with an overflow.
        let e = sync_range(&req(u64::MAX - 1, u64::MAX), 10).unwrap_err();
        assert!(e.contains("this node is at height 10"), "{e}");
        assert_eq!(
            sync_range(&req(u64::MAX - 1, u64::MAX), u64::MAX).unwrap(),
            u64::MAX - 1..=u64::MAX
        );
        assert_eq!(sync_range(&req(3, u64::MAX), 10).unwrap(), 3..=10);
        assert_eq!(
            sync_range(&req(1, u64::MAX), 1000).unwrap(),
            1..=MAX_SYNC_BLOCKS
        );
        assert!(sync_range(&req(0, 5), 10).is_err());
        assert!(sync_range(&req(6, 5), 10).is_err());
        assert!(sync_range(&req(11, 20), 10).is_err());
    }
}
