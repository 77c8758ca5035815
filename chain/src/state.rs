//! The ledger state machine: applies blocks deterministically.
//!
//! Deterministic: [`Ledger::execute`] takes a block and returns the changes; the store persists
//! them atomically and [`Ledger::commit`] applies them in memory. Accounts are held in memory
//! (their number does not grow with jobs); used job nonces, which do, are read from the store
//! ([`UsedNonces`]), the only I/O here.

use std::collections::{BTreeMap, HashMap};

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

use crate::block::{Block, BlockHeader};
use crate::error::{Error, Result};
use crate::genesis::Genesis;
use crate::record::{InferenceRecord, Tx, VerifiedRecord};
use crate::types::{Height, JobId, ModelId, amount};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    #[serde(with = "amount")]
    pub balance: u128,
    #[serde(with = "amount")]
    pub stake: u128,
    /// Sequential nonce of transfers sent.
    pub nonce: u64,
}

/// Final status of a job in a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Finalized,
    Failed,
}

/// The job index entry written when a block settles a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEntry {
    pub job_id: JobId,
    pub status: JobStatus,
    pub height: Height,
    pub output_hash: B256,
    pub executed_by: Address,
    pub client: Address,
    pub model_id: ModelId,
    #[serde(with = "amount")]
    pub fee: u128,
    /// Why a failed job failed.
    pub reason: Option<String>,
}

/// Outcome of one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxOutcome {
    pub hash: B256,
    pub ok: bool,
    pub reason: Option<String>,
}

/// Everything a block changes; what the store writes in one batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub height: Height,
    pub block_hash: B256,
    pub timestamp_ms: u64,
    pub accounts: BTreeMap<Address, Account>,
    /// (client, nonce) → job id, newly used.
    pub nonces: Vec<((Address, u64), JobId)>,
    pub jobs: Vec<JobEntry>,
    pub txs: Vec<TxOutcome>,
    /// The ledger's history digest after this block (see [`Ledger::history`]).
    pub history: B256,
    pub state_root: B256,
}

/// The job ids of a block's records, both signatures of each recovered and checked: the
/// costly part of executing a block (two ECDSA recoveries per record), done apart from the
/// ledger so that a node can run it on another thread. Only [`RecoveredRecords::of`] makes one,
/// and it names its block: the ledger refuses it for any other.
#[derive(Clone, Debug)]
pub struct RecoveredRecords {
    block_hash: B256,
    ids: Vec<JobId>,
}

impl RecoveredRecords {
    /// Fails on the first record whose input or signatures do not check, as executing the
    /// block would.
    pub fn of(block: &Block, domain: &crate::signing::Domain) -> Result<Self> {
        let ids = block
            .records
            .iter()
            .map(|r| record_id(r, domain))
            .collect::<Result<Vec<JobId>>>()?;
        Ok(RecoveredRecords {
            block_hash: block.hash(),
            ids,
        })
    }

    /// The ids, if these were recovered for `block`.
    fn ids_for(&self, block: &Block) -> Result<&[JobId]> {
        if self.block_hash != block.hash() {
            return Err(Error::InvalidBlock(
                "signatures recovered for another block".into(),
            ));
        }
        Ok(&self.ids)
    }
}

/// A block record's job id, its signatures checked; a failure makes the block invalid.
fn record_id(r: &InferenceRecord, domain: &crate::signing::Domain) -> Result<JobId> {
    r.verify_signatures(domain)
        .map_err(|e| Error::InvalidBlock(format!("record {}: {e}", r.job_id(domain))))
}

/// A block built by [`Ledger::build_block`], with what the builder left out and why.
#[derive(Clone, Debug)]
pub struct Built {
    pub block: Block,
    pub changes: Changes,
    /// Candidate records that cannot enter any block (bad signature, unknown executor or model,
    /// already settled): the mempool drops them.
    pub dropped_records: Vec<(JobId, String)>,
    /// Candidate transactions that would fail against this ledger (bad signature, nonce,
    /// balance): the mempool drops them rather than offering them again.
    pub dropped_txs: Vec<(B256, String)>,
}

/// Where a ledger finds the job nonces used in committed blocks.
pub trait NonceLookup: Send + Sync {
    /// The job that used `client`'s `nonce`, if one did.
    fn used_nonce(&self, client: &Address, nonce: u64) -> Result<Option<JobId>>;
}

/// The job nonces used so far: the one part of the state that grows with every job. A ledger
/// opened from a store reads them there (RocksDB, which wrote them with their block), so a
/// node's memory does not grow with the jobs it settled; a ledger without a store (tests,
/// tools) keeps them in memory.
#[derive(Clone)]
pub enum UsedNonces {
    Memory(HashMap<(Address, u64), JobId>),
    Stored(std::sync::Arc<dyn NonceLookup>),
}

impl Default for UsedNonces {
    fn default() -> Self {
        UsedNonces::Memory(HashMap::new())
    }
}

impl std::fmt::Debug for UsedNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsedNonces::Memory(m) => write!(f, "UsedNonces::Memory({} nonces)", m.len()),
            UsedNonces::Stored(_) => f.write_str("UsedNonces::Stored"),
        }
    }
}

impl UsedNonces {
    fn get(&self, client: &Address, nonce: u64) -> Result<Option<JobId>> {
        match self {
            UsedNonces::Memory(m) => Ok(m.get(&(*client, nonce)).copied()),
            UsedNonces::Stored(s) => s.used_nonce(client, nonce),
        }
    }
}

/// Ledger at some height: accounts in memory, used job nonces as [`UsedNonces`] says.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub height: Height,
    pub tip_hash: B256,
    pub tip_time_ms: u64,
    accounts: BTreeMap<Address, Account>,
    nonces: UsedNonces,
    /// Digest of everything settled so far that is not an account: each block with used job
    /// nonces or job entries chains `keccak(history ‖ nonces ‖ jobs)`. The state root covers it,
    /// so two ledgers that differ only in used nonces or in the job index have different roots,
    /// at a cost per block of what the block changed rather than of the whole index.
    history: B256,
}

struct Overlay<'a> {
    base: &'a Ledger,
    accounts: BTreeMap<Address, Account>,
    nonces: BTreeMap<(Address, u64), JobId>,
}

impl Overlay<'_> {
    fn get(&self, a: &Address) -> Account {
        self.accounts
            .get(a)
            .or_else(|| self.base.accounts.get(a))
            .copied()
            .unwrap_or_default()
    }

    fn credit(&mut self, a: Address, v: u128) {
        let mut acc = self.get(&a);
        // Credits come out of a debit of the same amount: total supply bounds them.
        acc.balance = acc.balance.saturating_add(v);
        self.accounts.insert(a, acc);
    }

    fn nonce_owner(&self, key: &(Address, u64)) -> Result<Option<JobId>> {
        match self.nonces.get(key) {
            Some(id) => Ok(Some(*id)),
            None => self.base.nonces.get(&key.0, key.1),
        }
    }
}

impl Ledger {
    pub fn from_genesis(g: &Genesis) -> Ledger {
        let accounts = g
            .accounts
            .iter()
            .map(|a| {
                (
                    a.address,
                    Account {
                        balance: a.balance,
                        stake: a.stake,
                        nonce: 0,
                    },
                )
            })
            .collect();
        Ledger {
            height: 0,
            tip_hash: g.hash(),
            tip_time_ms: g.genesis_time_ms,
            accounts,
            nonces: UsedNonces::default(),
            history: B256::ZERO,
        }
    }

    /// Rebuilds a ledger from persisted parts.
    pub fn from_parts(
        height: Height,
        tip_hash: B256,
        tip_time_ms: u64,
        accounts: BTreeMap<Address, Account>,
        nonces: UsedNonces,
        history: B256,
    ) -> Ledger {
        Ledger {
            height,
            tip_hash,
            tip_time_ms,
            accounts,
            nonces,
            history,
        }
    }

    /// The history digest (used job nonces and the job index, chained block by block).
    pub fn history(&self) -> B256 {
        self.history
    }

    pub fn account(&self, a: &Address) -> Account {
        self.accounts.get(a).copied().unwrap_or_default()
    }

    pub fn accounts(&self) -> &BTreeMap<Address, Account> {
        &self.accounts
    }

    /// Whether `client` already used job nonce `nonce`, and for which job.
    pub fn nonce_used(&self, client: &Address, nonce: u64) -> Result<Option<JobId>> {
        self.nonces.get(client, nonce)
    }

    /// Sum of all balances and stakes: the supply, which must never change.
    pub fn total_supply(&self) -> u128 {
        self.accounts.values().map(|a| a.balance + a.stake).sum()
    }

    pub fn state_root(&self) -> B256 {
        state_root(self.accounts.iter(), self.history)
    }

    /// Validates `block` against this ledger (height, parent, time, roots, every record's
    /// signatures and registrations) and computes its changes. Does not check
    /// `header.state_root`; [`Ledger::validate`] does.
    pub fn execute(&self, g: &Genesis, block: &Block) -> Result<Changes> {
        self.execute_checked(g, block, None)
    }

    /// [`Ledger::execute`]; `checked[i]`, where given, is the job id of `block.records[i]`,
    /// which passed [`crate::Admission::check`] under this genesis: its signatures are not
    /// recovered again.
    fn execute_checked(
        &self,
        g: &Genesis,
        block: &Block,
        checked: Option<&[JobId]>,
    ) -> Result<Changes> {
        let h = &block.header;
        let domain = &g.domain();
        if h.height != self.height + 1 {
            return Err(Error::InvalidBlock(format!(
                "height {} follows {}",
                h.height, self.height
            )));
        }
        if h.parent != self.tip_hash {
            return Err(Error::InvalidBlock(format!(
                "parent {} is not the tip {}",
                h.parent, self.tip_hash
            )));
        }
        if h.timestamp_ms <= self.tip_time_ms {
            return Err(Error::InvalidBlock(format!(
                "timestamp {} is not after the parent's {}",
                h.timestamp_ms, self.tip_time_ms
            )));
        }
        if block.records.len() > g.params.max_block_records as usize
            || block.txs.len() > g.params.max_block_txs as usize
        {
            return Err(Error::InvalidBlock(
                "too many records or transactions".into(),
            ));
        }
        if Block::records_root(&block.records, domain) != h.records_root {
            return Err(Error::InvalidBlock("records root mismatch".into()));
        }
        if Block::txs_root(&block.txs, domain) != h.txs_root {
            return Err(Error::InvalidBlock("transactions root mismatch".into()));
        }
        let powers = g.validator_powers();
        if !powers.iter().any(|(a, _)| *a == h.proposer) {
            return Err(Error::InvalidBlock(format!(
                "proposer {} is not a validator",
                h.proposer
            )));
        }

        let mut o = Overlay {
            base: self,
            accounts: BTreeMap::new(),
            nonces: BTreeMap::new(),
        };
        let mut jobs = Vec::with_capacity(block.records.len());
        for (i, record) in block.records.iter().enumerate() {
            let id = match checked.and_then(|ids| ids.get(i)) {
                Some(id) => *id,
                None => record_id(record, domain)?,
            };
            if !g.is_inference_node(&record.executor) {
                return Err(Error::InvalidBlock(format!(
                    "record {id}: {}",
                    Error::UnknownExecutor(record.executor)
                )));
            }
            let model_id = record.job.request.model_id;
            let Some(model) = g.model(&model_id) else {
                return Err(Error::InvalidBlock(format!(
                    "record {id}: {}",
                    Error::UnknownModel(model_id)
                )));
            };
            if let Some(entry) = settle_job(&mut o, g, h, record, id, model.price, model.owner)? {
                jobs.push(entry);
            } else {
                return Err(Error::InvalidBlock(format!("job {id} is already settled")));
            }
        }
        let mut txs = Vec::with_capacity(block.txs.len());
        for tx in &block.txs {
            let hash = tx.verify(domain).map_err(|e| {
                Error::InvalidBlock(format!("transaction {}: {e}", tx.hash(domain)))
            })?;
            let result = apply_tx(&mut o, tx);
            txs.push(TxOutcome {
                hash,
                ok: result.is_ok(),
                reason: result.err(),
            });
        }
        let nonces: Vec<((Address, u64), JobId)> = o.nonces.into_iter().collect();
        let history = next_history(self.history, &nonces, &jobs);
        let root = state_root(merge_sorted(&self.accounts, &o.accounts), history);
        Ok(Changes {
            height: h.height,
            block_hash: block.hash(),
            timestamp_ms: h.timestamp_ms,
            accounts: o.accounts,
            nonces,
            jobs,
            txs,
            history,
            state_root: root,
        })
    }

    /// [`Ledger::validate`] plus the clock rule, for a proposal that is not final yet: its
    /// timestamp may be at most `params.max_clock_drift_ms` ahead of `now_ms`, this validator's
    /// own clock. (A committed block is not checked against the clock: more than 2/3 of the
    /// validators already accepted it, and a node that was offline must still apply it.)
    pub fn validate_proposal(&self, g: &Genesis, block: &Block, now_ms: u64) -> Result<Changes> {
        self.validate_proposal_with(g, block, now_ms, None)
    }

    /// [`Ledger::validate_proposal`] with the records' signatures already recovered (on
    /// another thread): the block is executed without recovering them again.
    pub fn validate_proposal_recovered(
        &self,
        g: &Genesis,
        block: &Block,
        now_ms: u64,
        recovered: &RecoveredRecords,
    ) -> Result<Changes> {
        self.validate_proposal_with(g, block, now_ms, Some(recovered))
    }

    fn validate_proposal_with(
        &self,
        g: &Genesis,
        block: &Block,
        now_ms: u64,
        recovered: Option<&RecoveredRecords>,
    ) -> Result<Changes> {
        let latest = now_ms.saturating_add(g.params.max_clock_drift_ms);
        if block.header.timestamp_ms > latest {
            return Err(Error::InvalidBlock(format!(
                "timestamp {} is more than {} ms ahead of this validator's clock {now_ms}",
                block.header.timestamp_ms, g.params.max_clock_drift_ms
            )));
        }
        let ids = match recovered {
            Some(r) => Some(r.ids_for(block)?),
            None => None,
        };
        self.validate_checked(g, block, ids)
    }

    /// [`Ledger::execute`] plus the state root check: what a validator runs on a block.
    pub fn validate(&self, g: &Genesis, block: &Block) -> Result<Changes> {
        self.validate_checked(g, block, None)
    }

    /// [`Ledger::validate`] with the records' signatures already recovered.
    pub fn validate_recovered(
        &self,
        g: &Genesis,
        block: &Block,
        recovered: &RecoveredRecords,
    ) -> Result<Changes> {
        self.validate_checked(g, block, Some(recovered.ids_for(block)?))
    }

    fn validate_checked(
        &self,
        g: &Genesis,
        block: &Block,
        checked: Option<&[JobId]>,
    ) -> Result<Changes> {
        let changes = self.execute_checked(g, block, checked)?;
        if changes.state_root != block.header.state_root {
            return Err(Error::InvalidBlock(format!(
                "state root {} differs from the computed {}",
                block.header.state_root, changes.state_root
            )));
        }
        Ok(changes)
    }

    /// Builds the next block from candidate records and transactions. Records come checked
    /// ([`VerifiedRecord`]: their signatures are not recovered again, here or when the block is
    /// executed). Every candidate is tried against the state the block has built so far; the
    /// ones that would make the block invalid (unknown executor or model under `g`, job already
    /// settled) or that would fail (transaction signature, nonce or balance) are left out and
    /// reported, so the block is valid by construction. The timestamp is `now_ms`, or the
    /// parent's plus 1 ms if the clock is behind; an error only if the parent's time leaves no
    /// later millisecond.
    pub fn build_block(
        &self,
        g: &Genesis,
        proposer: Address,
        now_ms: u64,
        records: Vec<VerifiedRecord>,
        txs: Vec<Tx>,
    ) -> Result<Built> {
        let domain = &g.domain();
        let timestamp_ms = self
            .tip_time_ms
            .checked_add(1)
            .ok_or_else(|| {
                Error::InvalidBlock(format!(
                    "the parent's timestamp {} leaves no later one",
                    self.tip_time_ms
                ))
            })?
            .max(now_ms);
        let header = BlockHeader {
            height: self.height + 1,
            parent: self.tip_hash,
            proposer,
            timestamp_ms,
            records_root: B256::ZERO,
            txs_root: B256::ZERO,
            state_root: B256::ZERO,
        };
        let mut o = Overlay {
            base: self,
            accounts: BTreeMap::new(),
            nonces: BTreeMap::new(),
        };
        let (mut kept_records, mut dropped_records) = (Vec::new(), Vec::new());
        let mut kept_ids = Vec::new();
        for verified in records {
            if kept_records.len() >= g.params.max_block_records as usize {
                break;
            }
            let id = verified.id();
            let r = verified.into_record();
            if !g.is_inference_node(&r.executor) {
                dropped_records.push((id, Error::UnknownExecutor(r.executor).to_string()));
                continue;
            }
            let Some(model) = g.model(&r.job.request.model_id) else {
                let e = Error::UnknownModel(r.job.request.model_id);
                dropped_records.push((id, e.to_string()));
                continue;
            };
            match settle_job(&mut o, g, &header, &r, id, model.price, model.owner)? {
                Some(_) => {
                    kept_records.push(r);
                    kept_ids.push(id);
                }
                None => dropped_records.push((id, "already settled".into())),
            }
        }
        let (mut kept_txs, mut dropped_txs) = (Vec::new(), Vec::new());
        for t in txs {
            if kept_txs.len() >= g.params.max_block_txs as usize {
                break;
            }
            if let Err(e) = t.verify(domain) {
                dropped_txs.push((t.hash(domain), e.to_string()));
                continue;
            }
            // `apply_tx` changes the overlay only when it succeeds.
            match apply_tx(&mut o, &t) {
                Ok(()) => kept_txs.push(t),
                Err(e) => dropped_txs.push((t.hash(domain), e)),
            }
        }
        let mut block = Block {
            header: BlockHeader {
                records_root: Block::records_root(&kept_records, domain),
                txs_root: Block::txs_root(&kept_txs, domain),
                ..header
            },
            records: kept_records,
            txs: kept_txs,
        };
        let changes = self.execute_checked(g, &block, Some(&kept_ids))?;
        block.header.state_root = changes.state_root;
        let changes = Changes {
            block_hash: block.hash(),
            ..changes
        };
        Ok(Built {
            block,
            changes,
            dropped_records,
            dropped_txs,
        })
    }

    /// Applies changes computed by [`Ledger::execute`] on this ledger.
    pub fn commit(&mut self, c: &Changes) {
        for (a, acc) in &c.accounts {
            self.accounts.insert(*a, *acc);
        }
        // A stored index has them already: the store wrote them with the block.
        if let UsedNonces::Memory(m) = &mut self.nonces {
            for (k, id) in &c.nonces {
                m.insert(*k, *id);
            }
        }
        self.height = c.height;
        self.tip_hash = c.block_hash;
        self.tip_time_ms = c.timestamp_ms;
        self.history = c.history;
    }
}

/// Settles one job; `None` when this exact job was settled before (the block is invalid).
fn settle_job(
    o: &mut Overlay<'_>,
    g: &Genesis,
    h: &BlockHeader,
    record: &InferenceRecord,
    id: JobId,
    price: u128,
    owner: Address,
) -> Result<Option<JobEntry>> {
    let req = &record.job.request;
    let key = (req.client, req.nonce);
    let mut entry = JobEntry {
        job_id: id,
        status: JobStatus::Failed,
        height: h.height,
        output_hash: record.output_hash,
        executed_by: record.executor,
        client: req.client,
        model_id: req.model_id,
        fee: 0,
        reason: None,
    };
    match o.nonce_owner(&key)? {
        Some(prev) if prev == id => return Ok(None),
        Some(prev) => {
            entry.reason = Some(format!("nonce {} already used by job {prev}", req.nonce));
            return Ok(Some(entry));
        }
        None => {}
    }
    o.nonces.insert(key, id);
    if req.expiry.saturating_mul(1000) < h.timestamp_ms {
        entry.reason = Some(format!("expired at {} (unix seconds)", req.expiry));
        return Ok(Some(entry));
    }
    if price > req.max_fee {
        entry.reason = Some(format!(
            "model price {price} exceeds max_fee {}",
            req.max_fee
        ));
        return Ok(Some(entry));
    }
    let mut client = o.get(&req.client);
    if client.balance < price {
        entry.reason = Some(format!(
            "insufficient balance: {} < price {price}",
            client.balance
        ));
        return Ok(Some(entry));
    }
    client.balance -= price;
    o.accounts.insert(req.client, client);

    let p = &g.params;
    let exec_share = price * p.executor_bps as u128 / 10_000;
    let owner_share = price * p.model_owner_bps as u128 / 10_000;
    let val_pool = price - exec_share - owner_share;
    o.credit(record.executor, exec_share);
    o.credit(owner, owner_share);
    let powers = g.validator_powers();
    let total: u128 = powers.iter().map(|(_, p)| *p as u128).sum();
    let mut paid = 0u128;
    for (v, power) in &powers {
        let share = val_pool * *power as u128 / total.max(1);
        paid += share;
        o.credit(*v, share);
    }
    // Rounding dust goes to the proposer, so the supply is conserved exactly.
    o.credit(h.proposer, val_pool - paid);
    entry.status = JobStatus::Finalized;
    entry.fee = price;
    Ok(Some(entry))
}

fn apply_tx(o: &mut Overlay<'_>, tx: &Tx) -> std::result::Result<(), String> {
    match tx {
        Tx::Transfer(t) => {
            let t = &t.transfer;
            let mut from = o.get(&t.from);
            if t.nonce != from.nonce {
                return Err(format!(
                    "nonce {} but the account is at {}",
                    t.nonce, from.nonce
                ));
            }
            if from.balance < t.amount {
                return Err(format!(
                    "insufficient balance: {} < {}",
                    from.balance, t.amount
                ));
            }
            from.balance -= t.amount;
            from.nonce += 1;
            o.accounts.insert(t.from, from);
            o.credit(t.to, t.amount);
            Ok(())
        }
    }
}

/// The state root: keccak over every account in address order, then the history digest.
fn state_root<'a>(
    accounts: impl Iterator<Item = (&'a Address, &'a Account)>,
    history: B256,
) -> B256 {
    let mut buf = Vec::new();
    for (a, acc) in accounts {
        buf.extend_from_slice(a.as_slice());
        buf.extend_from_slice(&acc.balance.to_be_bytes());
        buf.extend_from_slice(&acc.stake.to_be_bytes());
        buf.extend_from_slice(&acc.nonce.to_be_bytes());
    }
    buf.extend_from_slice(history.as_slice());
    keccak256(&buf)
}

/// The history digest after a block that used `nonces` and wrote `jobs` (unchanged when it did
/// neither, so empty blocks leave it as it was).
fn next_history(prev: B256, nonces: &[((Address, u64), JobId)], jobs: &[JobEntry]) -> B256 {
    if nonces.is_empty() && jobs.is_empty() {
        return prev;
    }
    let mut buf = prev.to_vec();
    buf.extend_from_slice(&crate::codec::encode(nonces));
    buf.extend_from_slice(&crate::codec::encode(jobs));
    keccak256(&buf)
}

/// `base` with `overlay`'s entries in their place, in key order, without copying either map.
fn merge_sorted<'a, K: Ord, V>(
    base: &'a BTreeMap<K, V>,
    overlay: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (&'a K, &'a V)> {
    let mut b = base.iter().peekable();
    let mut o = overlay.iter().peekable();
    std::iter::from_fn(move || match (b.peek(), o.peek()) {
        (Some((bk, _)), Some((ok, _))) => match bk.cmp(ok) {
            std::cmp::Ordering::Less => b.next(),
            std::cmp::Ordering::Greater => o.next(),
            std::cmp::Ordering::Equal => {
                b.next();
                o.next()
            }
        },
        (Some(_), None) => b.next(),
        (None, _) => o.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesis::tests::sample;
    use crate::record::{JobRequest, Proof, Transfer};
    use crate::signing::seeded_key;

    fn job(g: &Genesis, nonce: u64, max_fee: u128, client_idx: u64) -> InferenceRecord {
        let client = seeded_key(42, client_idx);
        let exec = seeded_key(42, 20);
        let input = format!("{{\"n\":{nonce}}}");
        let req = JobRequest {
            client: client.address(),
            model_id: g.models[0].id,
            input_hash: keccak256(input.as_bytes()),
            max_fee,
            nonce,
            expiry: 4_000_000_000,
        };
        InferenceRecord::create(
            req.sign(&client, &g.domain()).unwrap(),
            input,
            B256::repeat_byte(3),
            Proof::Reexec,
            &exec,
            &g.domain(),
        )
        .unwrap()
    }

    /// Records through admission, as the mempool hands them to the block builder.
    fn verified(g: &Genesis, records: Vec<InferenceRecord>) -> Vec<VerifiedRecord> {
        let admission = crate::Admission::new(std::sync::Arc::new(g.clone()), None);
        records
            .into_iter()
            .map(|r| admission.check(std::sync::Arc::new(r)).unwrap())
            .collect()
    }

    fn next(l: &mut Ledger, g: &Genesis, records: Vec<InferenceRecord>, txs: Vec<Tx>) -> Changes {
        let proposer = g.validators[0].address;
        let records = verified(g, records);
        let built = l
            .build_block(g, proposer, l.tip_time_ms + 1000, records, txs)
            .unwrap();
        let validated = l.validate(g, &built.block).unwrap();
        assert_eq!(validated, built.changes);
        l.commit(&built.changes);
        built.changes
    }

    #[test]
    fn job_fee_is_split_and_supply_conserved() {
        let g = sample();
        let mut l = Ledger::from_genesis(&g);
        let client = seeded_key(42, 10).address();
        let exec = seeded_key(42, 20).address();
        let before = l.account(&client).balance;
        let price = g.models[0].price;
        let c = next(&mut l, &g, vec![job(&g, 1, price, 10)], vec![]);
        assert_eq!(c.jobs[0].status, JobStatus::Finalized);
        assert_eq!(l.account(&client).balance, before - price);
        assert_eq!(l.account(&exec).balance, price * 7 / 10);
        assert_eq!(l.total_supply(), TOTAL_SUPPLY);
        let vals: u128 = g
            .validators
            .iter()
            .map(|v| l.account(&v.address).balance)
            .sum();
        assert_eq!(vals, price * 2 / 10);
    }

    use crate::types::TOTAL_SUPPLY;

    #[test]
    fn failures_are_recorded_and_cost_nothing() {
        let g = sample();
        let mut l = Ledger::from_genesis(&g);
        let price = g.models[0].price;
        // fee cap below price; unfunded client; then a replayed nonce with another job
        let c = next(
            &mut l,
            &g,
            vec![job(&g, 1, price - 1, 10), job(&g, 2, price, 11)],
            vec![],
        );
        assert!(c.jobs.iter().all(|j| j.status == JobStatus::Failed));
        assert!(c.jobs[0].reason.as_ref().unwrap().contains("max_fee"));
        assert!(c.jobs[1].reason.as_ref().unwrap().contains("insufficient"));
        let mut replay = job(&g, 1, price, 10);
        replay.input = "{\"other\":1}".into();
        replay.job.request.input_hash = keccak256(replay.input.as_bytes());
        let client = seeded_key(42, 10);
        replay = InferenceRecord::create(
            replay
                .job
                .request
                .clone()
                .sign(&client, &g.domain())
                .unwrap(),
            replay.input.clone(),
            replay.output_hash,
            Proof::Reexec,
            &seeded_key(42, 20),
            &g.domain(),
        )
        .unwrap();
        let c = next(&mut l, &g, vec![replay], vec![]);
        assert!(
            c.jobs[0]
                .reason
                .as_ref()
                .unwrap()
                .contains("nonce 1 already used")
        );
        assert_eq!(l.total_supply(), TOTAL_SUPPLY);
    }

    #[test]
    fn same_job_twice_is_dropped_by_builder_and_refused_by_validator() {
        let g = sample();
        let mut l = Ledger::from_genesis(&g);
        let r = job(&g, 1, u128::MAX, 10);
        next(&mut l, &g, vec![r.clone()], vec![]);
        let c = next(&mut l, &g, vec![r.clone(), r.clone()], vec![]);
        assert!(c.jobs.is_empty());
        // a hand-made block repeating it is invalid
        let mut block = l
            .build_block(
                &g,
                g.validators[0].address,
                l.tip_time_ms + 5,
                vec![],
                vec![],
            )
            .unwrap()
            .block;
        block.records = vec![r];
        block.header.records_root = Block::records_root(&block.records, &g.domain());
        assert!(
            l.execute(&g, &block)
                .unwrap_err()
                .to_string()
                .contains("already settled")
        );
    }

    #[test]
    fn transfers_nonces_and_balance() {
        let g = sample();
        let mut l = Ledger::from_genesis(&g);
        let k = seeded_key(42, 10);
        let to = Address::repeat_byte(9);
        let t = |nonce, amount| {
            Tx::Transfer(
                Transfer {
                    from: k.address(),
                    to,
                    amount,
                    nonce,
                }
                .sign(&k, &g.domain())
                .unwrap(),
            )
        };
        // The builder keeps what applies and reports the rest; the block is valid.
        let built = l
            .build_block(
                &g,
                g.validators[0].address,
                l.tip_time_ms + 1,
                vec![],
                vec![t(0, 5), t(0, 5), t(1, u128::MAX), t(1, 7)],
            )
            .unwrap();
        assert_eq!(built.block.txs, vec![t(0, 5), t(1, 7)]);
        let dropped: Vec<&str> = built.dropped_txs.iter().map(|(_, e)| e.as_str()).collect();
        assert_eq!(dropped.len(), 2);
        assert!(
            dropped[0].contains("nonce 0 but the account is at 1"),
            "{dropped:?}"
        );
        assert!(dropped[1].contains("insufficient balance"), "{dropped:?}");
        let c = l.validate(&g, &built.block).unwrap();
        assert!(c.txs.iter().all(|t| t.ok));
        l.commit(&c);
        assert_eq!(l.account(&to).balance, 12);
        assert_eq!(l.account(&k.address()).nonce, 2);
        assert_eq!(l.total_supply(), TOTAL_SUPPLY);

        // Another proposer's block may still carry failing transactions: they are recorded as
        // failed and change nothing.
        let mut block = l
            .build_block(
                &g,
                g.validators[0].address,
                l.tip_time_ms + 1,
                vec![],
                vec![],
            )
            .unwrap()
            .block;
        block.txs = vec![t(0, 5), t(2, 1)];
        block.header.txs_root = Block::txs_root(&block.txs, &g.domain());
        let c = l.execute(&g, &block).unwrap();
        assert_eq!(
            c.txs.iter().map(|t| t.ok).collect::<Vec<_>>(),
            vec![false, true]
        );
        assert!(c.txs[0].reason.as_ref().unwrap().contains("nonce"));
    }

    #[test]
    fn block_times_are_bounded_by_parent_and_clock() {
        let g = sample();
        let proposer = g.validators[0].address;
        let l = Ledger::from_genesis(&g);
        let now = l.tip_time_ms + 60_000;
        // An empty block's state root does not depend on its time.
        let empty = l
            .build_block(&g, proposer, now, vec![], vec![])
            .unwrap()
            .block;
        let at = |t: u64| {
            let mut b = empty.clone();
            b.header.timestamp_ms = t;
            b
        };
        let drift = g.params.max_clock_drift_ms;
        l.validate_proposal(&g, &at(now), now).unwrap();
        l.validate_proposal(&g, &at(now + drift), now).unwrap();
        let ten_years = 10 * 365 * 24 * 3600 * 1000;
        for t in [now + drift + 1, l.tip_time_ms + ten_years, u64::MAX] {
            let e = l.validate_proposal(&g, &at(t), now).unwrap_err();
            assert!(
                e.to_string().contains("ahead of this validator's clock"),
                "{e}"
            );
        }
        // A clock near u64::MAX does not overflow the bound.
        l.validate_proposal(&g, &at(now), u64::MAX).unwrap();
        // Not after the parent: refused whatever the clock says.
        for t in [l.tip_time_ms, l.tip_time_ms - 1] {
            assert!(l.validate_proposal(&g, &at(t), now).is_err());
        }

        // Building on a tip at the latest time allowed: the next block is one ms later and
        // valid once the validators' clocks are within the drift of it.
        let mut l2 = l.clone();
        let tip_block = at(now + drift);
        let c = l2.validate_proposal(&g, &tip_block, now).unwrap();
        l2.commit(&c);
        let built = l2.build_block(&g, proposer, now, vec![], vec![]).unwrap();
        assert_eq!(built.block.header.timestamp_ms, now + drift + 1);
        l2.validate_proposal(&g, &built.block, now + 1).unwrap();

        // A tip at u64::MAX (only a corrupt chain could have it) is an error, not an overflow.
        let stuck = Ledger::from_parts(
            1,
            B256::ZERO,
            u64::MAX,
            BTreeMap::new(),
            UsedNonces::default(),
            B256::ZERO,
        );
        let e = stuck
            .build_block(&g, proposer, now, vec![], vec![])
            .unwrap_err();
        assert!(e.to_string().contains("no later one"), "{e}");
    }

    #[test]
    fn state_root_covers_nonces_and_the_job_index() {
        let g = sample();
        let mut a = Ledger::from_genesis(&g);
        let b = a.clone();
        assert_eq!(a.state_root(), b.state_root());
        // A job that fails (fee cap below the price) changes no account, only the used nonces
        // and the job index: the roots must still differ.
        let price = g.models[0].price;
        let before: Vec<Account> = a.accounts().values().copied().collect();
        let c = next(&mut a, &g, vec![job(&g, 1, price - 1, 10)], vec![]);
        assert_eq!(c.jobs[0].status, JobStatus::Failed);
        assert_eq!(a.accounts().values().copied().collect::<Vec<_>>(), before);
        assert_ne!(a.state_root(), b.state_root());
        assert_eq!(a.state_root(), c.state_root);
        // Empty blocks leave the history alone; the root still matches the accounts.
        let h = a.history();
        let c = next(&mut a, &g, vec![], vec![]);
        assert_eq!(a.history(), h);
        assert_eq!(c.state_root, a.state_root());
    }

    #[test]
    fn merge_sorted_matches_a_merged_copy() {
        let base: BTreeMap<u32, u32> = [(1, 1), (3, 3), (5, 5), (9, 9)].into();
        let overlay: BTreeMap<u32, u32> = [(0, 10), (3, 30), (6, 60), (9, 90), (12, 120)].into();
        let mut copy = base.clone();
        copy.extend(overlay.clone());
        let merged: Vec<(u32, u32)> = merge_sorted(&base, &overlay)
            .map(|(k, v)| (*k, *v))
            .collect();
        assert_eq!(merged, copy.into_iter().collect::<Vec<_>>());
        let empty = BTreeMap::new();
        assert_eq!(merge_sorted(&empty, &overlay).count(), overlay.len());
        assert_eq!(merge_sorted(&base, &empty).count(), base.len());
    }

    /// Signatures recovered apart give the same changes as executing the block whole, and are
    /// refused for another block.
    #[test]
    fn recovered_signatures_serve_their_block_only() {
        let g = sample();
        let l = Ledger::from_genesis(&g);
        let build = |records| {
            l.build_block(
                &g,
                g.validators[0].address,
                l.tip_time_ms + 1,
                records,
                vec![],
            )
            .unwrap()
            .block
        };
        let block = build(verified(&g, vec![job(&g, 1, u128::MAX, 10)]));
        let other = build(verified(&g, vec![job(&g, 2, u128::MAX, 11)]));
        let now = block.header.timestamp_ms;
        let recovered = RecoveredRecords::of(&block, &g.domain()).unwrap();
        assert_eq!(recovered.ids, vec![block.records[0].job_id(&g.domain())]);
        assert_eq!(
            l.validate_proposal_recovered(&g, &block, now, &recovered)
                .unwrap(),
            l.validate_proposal(&g, &block, now).unwrap()
        );
        let e = l
            .validate_proposal_recovered(&g, &other, now, &recovered)
            .unwrap_err();
        assert!(e.to_string().contains("another block"), "{e}");
        assert_eq!(
            l.validate_recovered(&g, &block, &recovered).unwrap(),
            l.validate(&g, &block).unwrap()
        );
        assert!(l.validate_recovered(&g, &other, &recovered).is_err());
        // A record whose executor signature no longer matches is refused while recovering.
        let mut bad = block.clone();
        bad.records[0].output_hash = B256::ZERO;
        assert!(RecoveredRecords::of(&bad, &g.domain()).is_err());
    }

    #[test]
    fn tampered_blocks_are_refused() {
        let g = sample();
        let l = Ledger::from_genesis(&g);
        let block = l
            .build_block(
                &g,
                g.validators[0].address,
                l.tip_time_ms + 1,
                verified(&g, vec![job(&g, 1, u128::MAX, 10)]),
                vec![],
            )
            .unwrap()
            .block;
        l.validate(&g, &block).unwrap();
        let mut b = block.clone();
        b.header.state_root = B256::ZERO;
        assert!(l.validate(&g, &b).is_err());
        let mut b = block.clone();
        b.header.height = 5;
        assert!(l.validate(&g, &b).is_err());
        let mut b = block.clone();
        b.header.timestamp_ms = l.tip_time_ms;
        assert!(l.validate(&g, &b).is_err());
        let mut b = block.clone();
        b.records[0].output_hash = B256::ZERO;
        b.header.records_root = Block::records_root(&b.records, &g.domain());
        assert!(
            l.validate(&g, &b).is_err(),
            "executor signature no longer matches"
        );
        let mut b = block;
        b.header.proposer = Address::ZERO;
        assert!(l.validate(&g, &b).is_err());
    }
}
