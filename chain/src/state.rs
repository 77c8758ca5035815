//! The ledger state machine: applies blocks deterministically.
//!
//! Pure Rust with no I/O: [`Ledger::execute`] takes a block and returns the changes; the store
//! persists them atomically and [`Ledger::commit`] applies them in memory. Accounts and used job
//! nonces are held in memory (the store is the durable copy); fine for testnet scale.

use std::collections::{BTreeMap, HashMap};

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

use crate::block::{Block, BlockHeader};
use crate::error::{Error, Result};
use crate::genesis::Genesis;
use crate::record::{InferenceRecord, Tx};
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
    pub state_root: B256,
}

/// In-memory ledger at some height.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub height: Height,
    pub tip_hash: B256,
    pub tip_time_ms: u64,
    accounts: BTreeMap<Address, Account>,
    nonces: HashMap<(Address, u64), JobId>,
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

    fn nonce_owner(&self, key: &(Address, u64)) -> Option<JobId> {
        self.nonces
            .get(key)
            .or_else(|| self.base.nonces.get(key))
            .copied()
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
            nonces: HashMap::new(),
        }
    }

    /// Rebuilds a ledger from persisted parts.
    pub fn from_parts(
        height: Height,
        tip_hash: B256,
        tip_time_ms: u64,
        accounts: BTreeMap<Address, Account>,
        nonces: HashMap<(Address, u64), JobId>,
    ) -> Ledger {
        Ledger {
            height,
            tip_hash,
            tip_time_ms,
            accounts,
            nonces,
        }
    }

    pub fn account(&self, a: &Address) -> Account {
        self.accounts.get(a).copied().unwrap_or_default()
    }

    pub fn accounts(&self) -> &BTreeMap<Address, Account> {
        &self.accounts
    }

    /// Whether `client` already used job nonce `nonce`, and for which job.
    pub fn nonce_used(&self, client: &Address, nonce: u64) -> Option<JobId> {
        self.nonces.get(&(*client, nonce)).copied()
    }

    /// Sum of all balances and stakes: the supply, which must never change.
    pub fn total_supply(&self) -> u128 {
        self.accounts.values().map(|a| a.balance + a.stake).sum()
    }

    pub fn state_root(&self) -> B256 {
        state_root(self.accounts.iter())
    }

    /// Validates `block` against this ledger (height, parent, time, roots, every record's
    /// signatures and registrations) and computes its changes. Does not check
    /// `header.state_root`; [`Ledger::validate`] does.
    pub fn execute(&self, g: &Genesis, block: &Block) -> Result<Changes> {
        let h = &block.header;
        let chain_id = g.chain_id;
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
        if Block::records_root(&block.records, chain_id) != h.records_root {
            return Err(Error::InvalidBlock("records root mismatch".into()));
        }
        if Block::txs_root(&block.txs, chain_id) != h.txs_root {
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
        for record in &block.records {
            let id = record.verify_signatures(chain_id).map_err(|e| {
                Error::InvalidBlock(format!("record {}: {e}", record.job_id(chain_id)))
            })?;
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
            if let Some(entry) = settle_job(&mut o, g, h, record, id, model.price, model.owner) {
                jobs.push(entry);
            } else {
                return Err(Error::InvalidBlock(format!("job {id} is already settled")));
            }
        }
        let mut txs = Vec::with_capacity(block.txs.len());
        for tx in &block.txs {
            let hash = tx.verify(chain_id).map_err(|e| {
                Error::InvalidBlock(format!("transaction {}: {e}", tx.hash(chain_id)))
            })?;
            let result = apply_tx(&mut o, tx);
            txs.push(TxOutcome {
                hash,
                ok: result.is_ok(),
                reason: result.err(),
            });
        }
        let merged: BTreeMap<Address, Account> = {
            let mut m = self.accounts.clone();
            m.extend(o.accounts.iter().map(|(a, v)| (*a, *v)));
            m
        };
        let root = state_root(merged.iter());
        Ok(Changes {
            height: h.height,
            block_hash: block.hash(),
            timestamp_ms: h.timestamp_ms,
            accounts: o.accounts,
            nonces: o.nonces.into_iter().collect(),
            jobs,
            txs,
            state_root: root,
        })
    }

    /// [`Ledger::execute`] plus the state root check: what a validator runs on a proposal.
    pub fn validate(&self, g: &Genesis, block: &Block) -> Result<Changes> {
        let changes = self.execute(g, block)?;
        if changes.state_root != block.header.state_root {
            return Err(Error::InvalidBlock(format!(
                "state root {} differs from the computed {}",
                block.header.state_root, changes.state_root
            )));
        }
        Ok(changes)
    }

    /// Builds the next block from candidate records and transactions, dropping the ones that
    /// would make it invalid (already settled, bad signature), and fills in the roots.
    pub fn build_block(
        &self,
        g: &Genesis,
        proposer: Address,
        timestamp_ms: u64,
        records: Vec<InferenceRecord>,
        txs: Vec<Tx>,
    ) -> (Block, Changes) {
        let chain_id = g.chain_id;
        let mut seen = std::collections::HashSet::new();
        let records: Vec<InferenceRecord> = records
            .into_iter()
            .filter(|r| {
                let Ok(id) = r.verify_signatures(chain_id) else {
                    return false;
                };
                let key = (r.job.request.client, r.job.request.nonce);
                g.is_inference_node(&r.executor)
                    && g.model(&r.job.request.model_id).is_some()
                    && self.nonces.get(&key) != Some(&id)
                    && seen.insert(id)
            })
            .take(g.params.max_block_records as usize)
            .collect();
        let txs: Vec<Tx> = txs
            .into_iter()
            .filter(|t| t.verify(chain_id).is_ok())
            .take(g.params.max_block_txs as usize)
            .collect();
        let mut block = Block {
            header: BlockHeader {
                height: self.height + 1,
                parent: self.tip_hash,
                proposer,
                timestamp_ms: timestamp_ms.max(self.tip_time_ms + 1),
                records_root: Block::records_root(&records, chain_id),
                txs_root: Block::txs_root(&txs, chain_id),
                state_root: B256::ZERO,
            },
            records,
            txs,
        };
        match self.execute(g, &block) {
            Ok(changes) => {
                block.header.state_root = changes.state_root;
                let changes = Changes {
                    block_hash: block.hash(),
                    ..changes
                };
                (block, changes)
            }
            Err(e) => {
                // Filtering above removes every cause of a block-level error; should one remain,
                // propose an empty block rather than nothing.
                tracing::warn!(error = %e, "candidate block invalid, proposing an empty block");
                self.build_block(g, proposer, timestamp_ms, Vec::new(), Vec::new())
            }
        }
    }

    /// Applies changes computed by [`Ledger::execute`] on this ledger.
    pub fn commit(&mut self, c: &Changes) {
        for (a, acc) in &c.accounts {
            self.accounts.insert(*a, *acc);
        }
        for (k, id) in &c.nonces {
            self.nonces.insert(*k, *id);
        }
        self.height = c.height;
        self.tip_hash = c.block_hash;
        self.tip_time_ms = c.timestamp_ms;
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
) -> Option<JobEntry> {
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
    match o.nonce_owner(&key) {
        Some(prev) if prev == id => return None,
        Some(prev) => {
            entry.reason = Some(format!("nonce {} already used by job {prev}", req.nonce));
            return Some(entry);
        }
        None => {}
    }
    o.nonces.insert(key, id);
    if req.expiry.saturating_mul(1000) < h.timestamp_ms {
        entry.reason = Some(format!("expired at {} (unix seconds)", req.expiry));
        return Some(entry);
    }
    if price > req.max_fee {
        entry.reason = Some(format!(
            "model price {price} exceeds max_fee {}",
            req.max_fee
        ));
        return Some(entry);
    }
    let mut client = o.get(&req.client);
    if client.balance < price {
        entry.reason = Some(format!(
            "insufficient balance: {} < price {price}",
            client.balance
        ));
        return Some(entry);
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
    Some(entry)
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

fn state_root<'a>(accounts: impl Iterator<Item = (&'a Address, &'a Account)>) -> B256 {
    let mut buf = Vec::new();
    for (a, acc) in accounts {
        buf.extend_from_slice(a.as_slice());
        buf.extend_from_slice(&acc.balance.to_be_bytes());
        buf.extend_from_slice(&acc.stake.to_be_bytes());
        buf.extend_from_slice(&acc.nonce.to_be_bytes());
    }
    keccak256(&buf)
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
            req.sign(&client, g.chain_id).unwrap(),
            input,
            B256::repeat_byte(3),
            Proof::Reexec,
            &exec,
            g.chain_id,
        )
        .unwrap()
    }

    fn next(l: &mut Ledger, g: &Genesis, records: Vec<InferenceRecord>, txs: Vec<Tx>) -> Changes {
        let proposer = g.validators[0].address;
        let (block, changes) = l.build_block(g, proposer, l.tip_time_ms + 1000, records, txs);
        let validated = l.validate(g, &block).unwrap();
        assert_eq!(validated, changes);
        l.commit(&changes);
        changes
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
                .sign(&client, g.chain_id)
                .unwrap(),
            replay.input.clone(),
            replay.output_hash,
            Proof::Reexec,
            &seeded_key(42, 20),
            g.chain_id,
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
        let (mut block, _) = l.build_block(
            &g,
            g.validators[0].address,
            l.tip_time_ms + 5,
            vec![],
            vec![],
        );
        block.records = vec![r];
        block.header.records_root = Block::records_root(&block.records, g.chain_id);
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
                .sign(&k, g.chain_id)
                .unwrap(),
            )
        };
        let c = next(&mut l, &g, vec![], vec![t(0, 5), t(0, 5), t(1, u128::MAX)]);
        assert_eq!(
            c.txs.iter().map(|t| t.ok).collect::<Vec<_>>(),
            vec![true, false, false]
        );
        assert_eq!(l.account(&to).balance, 5);
        assert_eq!(l.account(&k.address()).nonce, 1);
        assert_eq!(l.total_supply(), TOTAL_SUPPLY);
    }

    #[test]
    fn tampered_blocks_are_refused() {
        let g = sample();
        let l = Ledger::from_genesis(&g);
        let (block, _) = l.build_block(
            &g,
            g.validators[0].address,
            l.tip_time_ms + 1,
            vec![job(&g, 1, u128::MAX, 10)],
            vec![],
        );
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
        b.header.records_root = Block::records_root(&b.records, g.chain_id);
        assert!(
            l.validate(&g, &b).is_err(),
            "executor signature no longer matches"
        );
        let mut b = block;
        b.header.proposer = Address::ZERO;
        assert!(l.validate(&g, &b).is_err());
    }
}
