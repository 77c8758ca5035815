//! The Mempool actor: verified records and signed transactions waiting for a block.

use std::collections::{BTreeMap, HashMap};

use actix::prelude::*;
use chain::{B256, InferenceRecord, JobId, Tx};

use crate::metrics::METRICS;
use crate::network::GossipTx;

/// Most records (and, separately, transactions) held; beyond it new ones are refused.
pub const MEMPOOL_CAPACITY: usize = 50_000;

#[derive(Message)]
#[rtype(result = "bool")]
pub struct AddRecord {
    pub id: JobId,
    pub record: InferenceRecord,
}

/// A transaction submitted locally (HTTP); returns its hash or why it was refused.
#[derive(Message)]
#[rtype(result = "Result<B256, String>")]
pub struct AddTx(pub Tx);

/// Records and transactions for the next block, oldest first.
#[derive(Message)]
#[rtype(result = "(Vec<InferenceRecord>, Vec<Tx>)")]
pub struct Candidates {
    pub max_records: usize,
    pub max_txs: usize,
}

/// A block was committed: drop what it included.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Committed {
    pub height: u64,
    pub block_hash: B256,
    pub jobs: Vec<JobId>,
    pub txs: Vec<B256>,
}

/// Whether a record for this job waits in the pool: (output hash, executor).
#[derive(Message)]
#[rtype(result = "Option<(B256, chain::Address)>")]
pub struct PendingRecord(pub JobId);

pub struct Mempool {
    chain_id: u64,
    seq: u64,
    order: BTreeMap<u64, JobId>,
    records: HashMap<JobId, (u64, InferenceRecord)>,
    tx_order: BTreeMap<u64, B256>,
    txs: HashMap<B256, (u64, Tx)>,
}

impl Mempool {
    pub fn new(chain_id: u64) -> Self {
        Mempool {
            chain_id,
            seq: 0,
            order: BTreeMap::new(),
            records: HashMap::new(),
            tx_order: BTreeMap::new(),
            txs: HashMap::new(),
        }
    }

    fn gauges(&self) {
        METRICS.mempool_records.set(self.records.len() as i64);
        METRICS.mempool_txs.set(self.txs.len() as i64);
    }

    fn add_tx(&mut self, tx: Tx) -> Result<B256, String> {
        let hash = tx.verify(self.chain_id).map_err(|e| e.to_string())?;
        if self.txs.contains_key(&hash) {
            return Ok(hash);
        }
        if self.txs.len() >= MEMPOOL_CAPACITY {
            return Err("mempool full".into());
        }
        self.seq += 1;
        self.tx_order.insert(self.seq, hash);
        self.txs.insert(hash, (self.seq, tx));
        self.gauges();
        Ok(hash)
    }
}

impl Actor for Mempool {
    type Context = Context<Self>;
}

impl Handler<AddRecord> for Mempool {
    type Result = bool;
    fn handle(&mut self, msg: AddRecord, _: &mut Self::Context) -> bool {
        if self.records.contains_key(&msg.id) {
            return true;
        }
        if self.records.len() >= MEMPOOL_CAPACITY {
            tracing::warn!(job = %msg.id, "mempool full, record dropped");
            return false;
        }
        self.seq += 1;
        self.order.insert(self.seq, msg.id);
        self.records.insert(msg.id, (self.seq, msg.record));
        self.gauges();
        true
    }
}

impl Handler<AddTx> for Mempool {
    type Result = Result<B256, String>;
    fn handle(&mut self, msg: AddTx, _: &mut Self::Context) -> Self::Result {
        self.add_tx(msg.0)
    }
}

impl Handler<GossipTx> for Mempool {
    type Result = ();
    fn handle(&mut self, msg: GossipTx, _: &mut Self::Context) {
        if let Err(e) = self.add_tx(msg.0) {
            METRICS
                .gossip_rejected
                .with_label_values(&[crate::protocol::topics::TXS, "invalid"])
                .inc();
            tracing::warn!(error = %e, "gossiped transaction refused");
        }
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
        let txs = self
            .tx_order
            .values()
            .take(msg.max_txs)
            .filter_map(|h| self.txs.get(h).map(|(_, t)| t.clone()))
            .collect();
        MessageResult((records, txs))
    }
}

impl Handler<Committed> for Mempool {
    type Result = ();
    fn handle(&mut self, msg: Committed, _: &mut Self::Context) {
        for id in &msg.jobs {
            if let Some((seq, _)) = self.records.remove(id) {
                self.order.remove(&seq);
            }
        }
        for h in &msg.txs {
            if let Some((seq, _)) = self.txs.remove(h) {
                self.tx_order.remove(&seq);
            }
        }
        self.gauges();
    }
}

impl Handler<PendingRecord> for Mempool {
    type Result = Option<(B256, chain::Address)>;
    fn handle(&mut self, msg: PendingRecord, _: &mut Self::Context) -> Self::Result {
        self.records
            .get(&msg.0)
            .map(|(_, r)| (r.output_hash, r.executor))
    }
}
