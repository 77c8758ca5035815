//! RocksDB persistence: blocks with their commit certificates, accounts, used job nonces, the
//! job index, validators, inference nodes, models, proposals, every validator set by its first
//! height, and node metadata (tip, pools, parameters, consensus write-ahead state), one column
//! family each. A block and every change it makes are written in one atomic batch.

use std::collections::BTreeMap;
use std::path::Path;

use alloy::primitives::{Address, B256};
use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch};
use serde::{Serialize, de::DeserializeOwned};

use crate::block::{Block, CommitCertificate, MAX_BLOCK_BYTES};
use crate::codec;
use crate::error::{Error, Result};
use crate::genesis::Genesis;
use crate::state::{Account, Changes, JobEntry, Ledger, NonceLookup, Registry, UsedNonces};
use crate::types::{Height, JobId};

const CF_BLOCKS: &str = "blocks";
const CF_CERTS: &str = "certs";
const CF_ACCOUNTS: &str = "accounts";
const CF_NONCES: &str = "nonces";
const CF_JOBS: &str = "jobs";
const CF_META: &str = "meta";
/// Records and transactions a node's mempool holds, so that a restart loses none of them.
const CF_PENDING: &str = "pending";
/// Equivocation evidence seen by this node, by id.
const CF_EVIDENCE: &str = "evidence";
const CF_VALIDATORS: &str = "validators";
const CF_NODES: &str = "inference_nodes";
const CF_MODELS: &str = "models";
const CF_PROPOSALS: &str = "proposals";
/// Every validator set the chain had, by the first height it decided.
const CF_SETS: &str = "validator_sets";
/// Every included transaction's height and outcome, by hash.
const CF_TXS: &str = "txs";
/// API grant id → what the grant has spent in all.
const CF_GRANTS: &str = "grants";
const CFS: [&str; 15] = [
    CF_BLOCKS,
    CF_CERTS,
    CF_ACCOUNTS,
    CF_NONCES,
    CF_JOBS,
    CF_META,
    CF_PENDING,
    CF_EVIDENCE,
    CF_VALIDATORS,
    CF_NODES,
    CF_MODELS,
    CF_PROPOSALS,
    CF_SETS,
    CF_TXS,
    CF_GRANTS,
];

const META_GENESIS: &[u8] = b"genesis_hash";
const META_TIP: &[u8] = b"tip";
const META_HISTORY: &[u8] = b"history";
const META_POOLS: &[u8] = b"pools";
/// Who signed the recent blocks.
const META_LIVENESS: &[u8] = b"liveness";
const META_ANCHOR: &[u8] = b"anchor";
/// Largest saved anchor accumulator: `anchor_interval` full blocks of leaves.
const ANCHOR_LIMIT: usize = 256 * 1024 * 1024;
/// The registry's parts that are not in a column family of their own.
const META_REGISTRY: &[u8] = b"registry";

/// What [`META_REGISTRY`] holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct RegistryMeta {
    params: crate::genesis::Params,
    set: Vec<(Address, u64)>,
    set_since: Height,
    past_sets: Vec<(Height, Vec<(Address, u64)>)>,
    next_proposal: u64,
    measurements: std::collections::BTreeSet<String>,
    slashed: std::collections::BTreeSet<(Address, Height)>,
    punished_jobs: std::collections::BTreeSet<JobId>,
}

/// Largest registry entry read back (a proposal with its votes, a model with its manifest).
const REGISTRY_ENTRY_LIMIT: usize = 16 << 20;

/// Key prefixes in [`CF_PENDING`].
const PENDING_RECORD: u8 = b'r';
const PENDING_TX: u8 = b't';

/// What [`Store::pending`] returns: the mempool's records and transactions as it saved them.
#[derive(Debug, Default)]
pub struct Pending {
    pub records: Vec<crate::record::InferenceRecord>,
    pub txs: Vec<crate::tx::Tx>,
    /// Entries that no longer decode (written by another version): skipped and deleted.
    pub unreadable: usize,
}

/// Height, hash and time of the last committed block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tip {
    pub height: Height,
    pub hash: B256,
    pub timestamp_ms: u64,
}

pub struct Store {
    db: DB,
}

/// All memtables together (RocksDB's write buffer manager flushes the largest when they reach
/// it). RocksDB's default is 64 MiB per column family, up to two each: with eight families a
/// node's memory would grow with every block until hundreds of MiB were buffered.
const WRITE_BUFFERS_BYTES: usize = 32 << 20;
/// One column family's memtable.
const CF_WRITE_BUFFER_BYTES: usize = 8 << 20;
/// The block cache every column family shares, index and filter blocks included, so that the
/// memory tables' readers hold does not grow with the number of files on disk.
const BLOCK_CACHE_BYTES: usize = 16 << 20;

impl NonceLookup for Store {
    fn used_nonce(&self, client: &Address, nonce: u64) -> Result<Option<JobId>> {
        let mut k = client.to_vec();
        k.extend_from_slice(&nonce.to_be_bytes());
        self.get(CF_NONCES, &k, 64)
    }
}

impl Store {
    /// Opens (or creates) the store at `path`. RocksDB's memory is bounded whatever the chain's
    /// length: [`WRITE_BUFFERS_BYTES`] of memtables and a [`BLOCK_CACHE_BYTES`] cache.
    pub fn open(path: &Path) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_db_write_buffer_size(WRITE_BUFFERS_BYTES);
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let cf_opts = || {
            let mut o = Options::default();
            o.set_write_buffer_size(CF_WRITE_BUFFER_BYTES);
            o.set_max_write_buffer_number(2);
            o.set_block_based_table_factory(&table);
            o
        };
        let cfs = CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, cf_opts()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Store { db })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Corrupt(format!("column family {name} missing")))
    }

    fn get<T: DeserializeOwned>(&self, cf: &str, key: &[u8], limit: usize) -> Result<Option<T>> {
        match self.db.get_cf(self.cf(cf)?, key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes, limit)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("{cf}/{}: {e}", hex::encode(key)))),
        }
    }

    /// Writes the genesis state on first start; on later starts checks that the store belongs to
    /// this genesis.
    pub fn init_genesis(&self, g: &Genesis) -> Result<()> {
        let hash = g.hash();
        match self.get::<B256>(CF_META, META_GENESIS, 64)? {
            Some(h) if h == hash => Ok(()),
            Some(h) => Err(Error::Corrupt(format!(
                "this data directory belongs to the chain with genesis {h}, not {hash}; use another home or delete its data"
            ))),
            None => {
                let mut batch = WriteBatch::default();
                let ledger = Ledger::from_genesis(g);
                for (a, acc) in ledger.accounts() {
                    batch.put_cf(self.cf(CF_ACCOUNTS)?, a.as_slice(), codec::encode(acc));
                }
                self.write_registry(&mut batch, ledger.registry())?;
                batch.put_cf(
                    self.cf(CF_META)?,
                    META_POOLS,
                    codec::encode(&ledger.pools()),
                );
                let tip = Tip {
                    height: 0,
                    hash,
                    timestamp_ms: g.genesis_time_ms,
                };
                batch.put_cf(self.cf(CF_META)?, META_TIP, codec::encode(&tip));
                batch.put_cf(self.cf(CF_META)?, META_GENESIS, codec::encode(&hash));
                self.db.write(batch)?;
                Ok(())
            }
        }
    }

    pub fn tip(&self) -> Result<Tip> {
        self.get(CF_META, META_TIP, 1024)?
            .ok_or_else(|| Error::Corrupt("no tip: genesis was never written".into()))
    }

    /// Loads the ledger at the tip; it reads used job nonces from this store.
    pub fn load_ledger(self: &std::sync::Arc<Self>) -> Result<Ledger> {
        let tip = self.tip()?;
        let mut accounts = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_ACCOUNTS)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            let addr = Address::try_from(&k[..])
                .map_err(|_| Error::Corrupt(format!("account key of {} bytes", k.len())))?;
            let acc: Account = codec::decode(&v, 64 * 1024)?;
            accounts.insert(addr, acc);
        }
        let history = self.get(CF_META, META_HISTORY, 64)?.unwrap_or(B256::ZERO);
        let pools = self
            .get(CF_META, META_POOLS, 1024)?
            .ok_or_else(|| Error::Corrupt("no pools".into()))?;
        Ok(Ledger::from_parts(
            tip.height,
            tip.hash,
            tip.timestamp_ms,
            accounts,
            UsedNonces::Stored(self.clone()),
            history,
            self.load_registry()?,
            pools,
            self.get(CF_META, META_LIVENESS, REGISTRY_ENTRY_LIMIT)?
                .unwrap_or_default(),
            match tip.height {
                0 => None,
                h => self.certificate(h)?,
            },
        )
        .with_anchor_leaves(
            self.get(CF_META, META_ANCHOR, ANCHOR_LIMIT)?
                .unwrap_or_default(),
        )
        .with_grants(self.load_grants()?))
    }

    /// What every API grant has spent.
    fn load_grants(&self) -> Result<BTreeMap<B256, u128>> {
        let mut grants = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_GRANTS)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            let id = B256::try_from(&k[..])
                .map_err(|_| Error::Corrupt(format!("{CF_GRANTS} key of {} bytes", k.len())))?;
            let spent = <[u8; 16]>::try_from(&v[..]).map_err(|_| {
                Error::Corrupt(format!("{CF_GRANTS}/{id}: value of {} bytes", v.len()))
            })?;
            grants.insert(id, u128::from_be_bytes(spent));
        }
        Ok(grants)
    }

    /// Every entry of `cf`, keys decoded by `key`.
    fn entries<K: Ord, V: DeserializeOwned>(
        &self,
        cf: &str,
        key: impl Fn(&[u8]) -> Option<K>,
    ) -> Result<BTreeMap<K, V>> {
        let mut out = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            let key =
                key(&k).ok_or_else(|| Error::Corrupt(format!("{cf}: key of {} bytes", k.len())))?;
            let value = codec::decode(&v, REGISTRY_ENTRY_LIMIT)
                .map_err(|e| Error::Corrupt(format!("{cf}/{}: {e}", hex::encode(&k))))?;
            out.insert(key, value);
        }
        Ok(out)
    }

    fn load_registry(&self) -> Result<Registry> {
        let meta: RegistryMeta = self
            .get(CF_META, META_REGISTRY, REGISTRY_ENTRY_LIMIT)?
            .ok_or_else(|| Error::Corrupt("no registry".into()))?;
        let address = |k: &[u8]| Address::try_from(k).ok();
        Ok(Registry {
            params: meta.params,
            validators: self.entries(CF_VALIDATORS, address)?,
            set: meta.set,
            set_since: meta.set_since,
            past_sets: meta.past_sets,
            nodes: self.entries(CF_NODES, address)?,
            models: self.entries(CF_MODELS, |k| {
                <[u8; 32]>::try_from(k).ok().map(crate::types::ModelId)
            })?,
            proposals: self.entries(CF_PROPOSALS, |k| {
                <[u8; 8]>::try_from(k).ok().map(u64::from_be_bytes)
            })?,
            next_proposal: meta.next_proposal,
            measurements: meta.measurements,
            slashed: meta.slashed,
            punished_jobs: meta.punished_jobs,
        })
    }

    /// Writes the whole registry (it is small, and a block that changes it is rare). Entries
    /// are never removed from the registry, so nothing needs deleting.
    fn write_registry(&self, batch: &mut WriteBatch, r: &Registry) -> Result<()> {
        for (a, v) in &r.validators {
            batch.put_cf(self.cf(CF_VALIDATORS)?, a.as_slice(), codec::encode(v));
        }
        for (a, n) in &r.nodes {
            batch.put_cf(self.cf(CF_NODES)?, a.as_slice(), codec::encode(n));
        }
        for (id, m) in &r.models {
            batch.put_cf(self.cf(CF_MODELS)?, id.0, codec::encode(m));
        }
        for (id, p) in &r.proposals {
            batch.put_cf(self.cf(CF_PROPOSALS)?, id.to_be_bytes(), codec::encode(p));
        }
        batch.put_cf(
            self.cf(CF_SETS)?,
            r.set_since.to_be_bytes(),
            codec::encode(&r.set),
        );
        let meta = RegistryMeta {
            params: r.params.clone(),
            set: r.set.clone(),
            set_since: r.set_since,
            past_sets: r.past_sets.clone(),
            next_proposal: r.next_proposal,
            measurements: r.measurements.clone(),
            slashed: r.slashed.clone(),
            punished_jobs: r.punished_jobs.clone(),
        };
        batch.put_cf(self.cf(CF_META)?, META_REGISTRY, codec::encode(&meta));
        Ok(())
    }

    /// The validator set that decided `height` (certificates of any height check against it).
    pub fn validator_set_at(&self, height: Height) -> Result<Option<Vec<(Address, u64)>>> {
        let cf = self.cf(CF_SETS)?;
        let key = height.to_be_bytes();
        let mut it = self.db.iterator_cf(
            cf,
            rocksdb::IteratorMode::From(&key, rocksdb::Direction::Reverse),
        );
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                codec::decode(&v, REGISTRY_ENTRY_LIMIT)
                    .map(Some)
                    .map_err(|e| Error::Corrupt(format!("{CF_SETS}/{}: {e}", hex::encode(k))))
            }
        }
    }

    /// Persists a finalized block, its certificate and its changes atomically.
    pub fn commit_block(
        &self,
        block: &Block,
        cert: &CommitCertificate,
        changes: &Changes,
    ) -> Result<()> {
        let key = block.header.height.to_be_bytes();
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_BLOCKS)?, key, codec::encode(block));
        batch.put_cf(self.cf(CF_CERTS)?, key, codec::encode(cert));
        for (a, acc) in &changes.accounts {
            batch.put_cf(self.cf(CF_ACCOUNTS)?, a.as_slice(), codec::encode(acc));
        }
        for ((client, nonce), id) in &changes.nonces {
            let mut k = client.to_vec();
            k.extend_from_slice(&nonce.to_be_bytes());
            batch.put_cf(self.cf(CF_NONCES)?, k, codec::encode(id));
        }
        for (id, spent) in &changes.grants {
            batch.put_cf(self.cf(CF_GRANTS)?, id.as_slice(), spent.to_be_bytes());
        }
        for j in &changes.jobs {
            batch.put_cf(self.cf(CF_JOBS)?, j.job_id.0.as_slice(), codec::encode(j));
        }
        for t in &changes.txs {
            batch.put_cf(
                self.cf(CF_TXS)?,
                t.hash.as_slice(),
                codec::encode(&(changes.height, t)),
            );
        }
        let tip = Tip {
            height: block.header.height,
            hash: block.hash(),
            timestamp_ms: block.header.timestamp_ms,
        };
        batch.put_cf(self.cf(CF_META)?, META_TIP, codec::encode(&tip));
        batch.put_cf(
            self.cf(CF_META)?,
            META_HISTORY,
            codec::encode(&changes.history),
        );
        batch.put_cf(self.cf(CF_META)?, META_POOLS, codec::encode(&changes.pools));
        batch.put_cf(
            self.cf(CF_META)?,
            META_LIVENESS,
            codec::encode(&changes.liveness),
        );
        batch.put_cf(
            self.cf(CF_META)?,
            META_ANCHOR,
            codec::encode(&changes.anchor),
        );
        if let Some(r) = &changes.registry {
            self.write_registry(&mut batch, r)?;
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Saves a record the mempool holds, under its job id.
    pub fn put_pending_record(
        &self,
        id: &JobId,
        record: &crate::record::InferenceRecord,
    ) -> Result<()> {
        let key = pending_key(PENDING_RECORD, &id.0);
        self.db
            .put_cf(self.cf(CF_PENDING)?, key, codec::encode(record))?;
        Ok(())
    }

    /// Saves a transaction the mempool holds, under its hash.
    pub fn put_pending_tx(&self, hash: &B256, tx: &crate::tx::Tx) -> Result<()> {
        let key = pending_key(PENDING_TX, hash);
        self.db
            .put_cf(self.cf(CF_PENDING)?, key, codec::encode(tx))?;
        Ok(())
    }

    /// Forgets records and transactions that left the mempool (included or dropped).
    pub fn delete_pending(&self, jobs: &[JobId], txs: &[B256]) -> Result<()> {
        let cf = self.cf(CF_PENDING)?;
        let mut batch = WriteBatch::default();
        for id in jobs {
            batch.delete_cf(cf, pending_key(PENDING_RECORD, &id.0));
        }
        for h in txs {
            batch.delete_cf(cf, pending_key(PENDING_TX, h));
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Everything saved by the mempool and not deleted since.
    pub fn pending(&self) -> Result<Pending> {
        let cf = self.cf(CF_PENDING)?;
        let mut out = Pending::default();
        let mut bad = Vec::new();
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let limit = crate::record::MAX_INPUT_BYTES * 2 + 64 * 1024;
            let ok = match k.first() {
                Some(&PENDING_RECORD) => codec::decode(&v, limit).map(|r| out.records.push(r)),
                Some(&PENDING_TX) => codec::decode(&v, limit).map(|t| out.txs.push(t)),
                _ => Err(Error::Decode("unknown pending key".into())),
            };
            if ok.is_err() {
                bad.push(k);
            }
        }
        out.unreadable = bad.len();
        for k in bad {
            self.db.delete_cf(cf, k)?;
        }
        Ok(out)
    }

    /// Stores evidence (already verified); returns whether it was new.
    pub fn put_evidence(&self, e: &crate::evidence::Evidence) -> Result<bool> {
        let cf = self.cf(CF_EVIDENCE)?;
        let id = e.id();
        if self.db.get_cf(cf, id.as_slice())?.is_some() {
            return Ok(false);
        }
        self.db.put_cf(cf, id.as_slice(), codec::encode(e))?;
        Ok(true)
    }

    /// All stored evidence, in id order.
    pub fn evidence(&self) -> Result<Vec<crate::evidence::Evidence>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_EVIDENCE)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            out.push(
                codec::decode(&v, MAX_BLOCK_BYTES)
                    .map_err(|e| Error::Corrupt(format!("evidence/{}: {e}", hex::encode(k))))?,
            );
        }
        Ok(out)
    }

    pub fn block(&self, height: Height) -> Result<Option<Block>> {
        self.get(CF_BLOCKS, &height.to_be_bytes(), MAX_BLOCK_BYTES)
    }

    pub fn certificate(&self, height: Height) -> Result<Option<CommitCertificate>> {
        self.get(CF_CERTS, &height.to_be_bytes(), MAX_BLOCK_BYTES)
    }

    /// The height that included transaction `hash`, and its outcome.
    pub fn tx(&self, hash: &B256) -> Result<Option<(Height, crate::state::TxOutcome)>> {
        self.get(CF_TXS, hash.as_slice(), 64 * 1024)
    }

    pub fn job(&self, id: &JobId) -> Result<Option<JobEntry>> {
        self.get(CF_JOBS, id.0.as_slice(), 64 * 1024)
    }

    /// Reads a metadata value written by [`Store::put_meta`].
    pub fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get(CF_META, key.as_bytes(), MAX_BLOCK_BYTES)
    }

    /// Writes a metadata value durably (synced write-ahead: consensus state must survive a crash).
    pub fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.put_cf_opt(
            self.cf(CF_META)?,
            key.as_bytes(),
            codec::encode(value),
            &opts,
        )?;
        Ok(())
    }
}

fn pending_key(prefix: u8, hash: &B256) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = prefix;
    k[1..].copy_from_slice(hash.as_slice());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesis::tests::sample;

    #[test]
    fn genesis_blocks_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let g = sample();
        let (block, _) = {
            let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
            store.init_genesis(&g).unwrap();
            let ledger = store.load_ledger().unwrap();
            assert_eq!(ledger.state_root(), Ledger::from_genesis(&g).state_root());
            let built = ledger
                .build_block(
                    &g,
                    g.validators[0].address,
                    ledger.tip_time_ms + 1,
                    vec![],
                    vec![],
                )
                .unwrap();
            let block = built.block;
            // What a block with settled jobs would carry: the reopened ledger must have it.
            let changes = Changes {
                history: B256::repeat_byte(5),
                nonces: vec![((Address::repeat_byte(1), 7), JobId(B256::repeat_byte(6)))],
                grants: vec![(B256::repeat_byte(8), 12345)],
                ..built.changes
            };
            let cert = CommitCertificate {
                height: 1,
                round: 0,
                block_hash: block.hash(),
                votes: vec![],
            };
            store.commit_block(&block, &cert, &changes).unwrap();
            store.put_meta("wal", &(1u64, 2u32)).unwrap();
            (block, changes)
        };
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        store.init_genesis(&g).unwrap();
        assert_eq!(store.tip().unwrap().height, 1);
        assert_eq!(store.block(1).unwrap().unwrap(), block);
        assert!(store.block(2).unwrap().is_none());
        let ledger = store.load_ledger().unwrap();
        assert_eq!(ledger.history(), B256::repeat_byte(5));
        // Used nonces are read from the store, not loaded into memory.
        assert_eq!(
            ledger.nonce_used(&Address::repeat_byte(1), 7).unwrap(),
            Some(JobId(B256::repeat_byte(6)))
        );
        assert_eq!(
            ledger.nonce_used(&Address::repeat_byte(1), 8).unwrap(),
            None
        );
        assert_eq!(ledger.tip_hash, block.hash());
        assert_eq!(ledger.grant_spent(&B256::repeat_byte(8)), 12345);
        assert_eq!(ledger.grant_spent(&B256::repeat_byte(9)), 0);
        assert_eq!(store.get_meta::<(u64, u32)>("wal").unwrap(), Some((1, 2)));

        let mut other = g.clone();
        other.chain_id += 1;
        assert!(
            store
                .init_genesis(&other)
                .unwrap_err()
                .to_string()
                .contains("another home")
        );
    }

    /// A block that changes the registries (a validator registers; an epoch ends and the set
    /// changes) and the pools: a reopened store has the same ledger, state root, transaction
    /// outcomes and every validator set by its first height.
    #[test]
    fn registries_sets_and_pools_survive_a_reopen() {
        use crate::tx::{Action, UnsignedTx};
        let dir = tempfile::tempdir().unwrap();
        let mut g = sample();
        g.params.epoch_blocks = 2;
        let newcomer = crate::signing::seeded_key(42, 30);
        let domain = g.domain();
        let tx = |nonce, action| {
            UnsignedTx {
                from: newcomer.address(),
                nonce,
                max_fee: u128::MAX,
                action,
            }
            .sign(&newcomer, &domain)
            .unwrap()
        };
        let txs = [
            vec![tx(
                0,
                Action::Bond {
                    amount: g.params.min_validator_stake,
                },
            )],
            vec![tx(
                1,
                Action::RegisterValidator {
                    peer_id: "p".into(),
                    moniker: "new".into(),
                },
            )],
        ];
        let (root, registry, hash, pools) = {
            let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
            store.init_genesis(&g).unwrap();
            let mut ledger = store.load_ledger().unwrap();
            let mut hash = B256::ZERO;
            for txs in txs {
                let built = ledger
                    .build_block(
                        &g,
                        ledger.next_validators()[0].0,
                        ledger.tip_time_ms + 1,
                        vec![],
                        txs,
                    )
                    .unwrap();
                assert!(
                    built.changes.txs.iter().all(|t| t.ok),
                    "{:?}",
                    built.changes.txs
                );
                hash = built.changes.txs[0].hash;
                // Every genesis validator precommitted it.
                let votes = (0..4)
                    .map(|i| {
                        let k = crate::signing::seeded_key(42, i);
                        crate::block::SignedVote::sign(
                            crate::block::Vote {
                                height: built.block.header.height,
                                round: 0,
                                kind: crate::block::VoteKind::Precommit,
                                block: Some(built.block.hash()),
                                validator: k.address(),
                            },
                            &k,
                            &domain,
                        )
                        .unwrap()
                    })
                    .collect();
                let cert = CommitCertificate {
                    height: built.block.header.height,
                    round: 0,
                    block_hash: built.block.hash(),
                    votes,
                };
                store
                    .commit_block(&built.block, &cert, &built.changes)
                    .unwrap();
                ledger.commit(&built.changes);
                ledger.set_last_commit(cert);
            }
            assert!(
                ledger
                    .next_validators()
                    .iter()
                    .any(|(a, _)| *a == newcomer.address())
            );
            (
                ledger.state_root(),
                ledger.registry().clone(),
                hash,
                ledger.pools(),
            )
        };
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let ledger = store.load_ledger().unwrap();
        assert_eq!(ledger.state_root(), root);
        assert_eq!(ledger.registry(), &registry);
        assert_eq!(ledger.pools(), pools);
        assert!(pools.rewards < g.pools.rewards, "rewards were paid");
        let (height, outcome) = store.tx(&hash).unwrap().unwrap();
        assert_eq!((height, outcome.ok), (2, true));
        assert_eq!(
            store.validator_set_at(1).unwrap().unwrap(),
            g.validator_powers()
        );
        assert_eq!(
            store.validator_set_at(2).unwrap().unwrap(),
            g.validator_powers()
        );
        assert_eq!(
            store.validator_set_at(3).unwrap().unwrap(),
            ledger.next_validators().to_vec()
        );
        assert_eq!(
            store.validator_set_at(99).unwrap(),
            store.validator_set_at(3).unwrap()
        );
        // A registry entry that no longer decodes is a clear error, not a panic.
        let cf = store.cf(CF_VALIDATORS).unwrap();
        store
            .db
            .put_cf(cf, newcomer.address().as_slice(), b"\xff")
            .unwrap();
        assert!(matches!(store.load_ledger(), Err(Error::Corrupt(_))));
        store
            .db
            .delete_cf(cf, newcomer.address().as_slice())
            .unwrap();
        store.load_ledger().unwrap();
        // So is a grant entry of the wrong size.
        let cf = store.cf(CF_GRANTS).unwrap();
        store.db.put_cf(cf, [7u8; 32], b"\x01\x02").unwrap();
        let err = store.load_ledger().unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt(m) if m.contains("grants")),
            "{err}"
        );
    }

    #[test]
    fn pending_survives_a_reopen_and_garbage_is_dropped() {
        use crate::record::tests::sample_record;
        use crate::tx::{Action, UnsignedTx};
        let dir = tempfile::tempdir().unwrap();
        let record = sample_record(&crate::signing::test_domain(7));
        let id = record.job_id(&crate::signing::test_domain(7));
        let key = crate::signing::seeded_key(1, 1);
        let tx = UnsignedTx {
            from: key.address(),
            nonce: 0,
            max_fee: 1,
            action: Action::Transfer {
                to: Address::ZERO,
                amount: 1,
            },
        }
        .sign(&key, &crate::signing::test_domain(7))
        .unwrap();
        let hash = tx.hash(&crate::signing::test_domain(7));
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_pending_record(&id, &record).unwrap();
            store.put_pending_tx(&hash, &tx).unwrap();
            let cf = store.cf(CF_PENDING).unwrap();
            store
                .db
                .put_cf(cf, pending_key(PENDING_TX, &B256::ZERO), b"\x01junk")
                .unwrap();
            store.db.put_cf(cf, b"zz", b"").unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let p = store.pending().unwrap();
        assert_eq!(p.records, vec![record]);
        assert_eq!(p.txs, vec![tx]);
        assert_eq!(p.unreadable, 2);
        assert_eq!(
            store.pending().unwrap().unreadable,
            0,
            "garbage was deleted"
        );
        store.delete_pending(&[id], &[hash]).unwrap();
        let p = store.pending().unwrap();
        assert!(p.records.is_empty() && p.txs.is_empty());
    }

    #[test]
    fn evidence_is_stored_once_and_survives_a_reopen() {
        use crate::block::{SignedVote, Vote, VoteKind};
        let dir = tempfile::tempdir().unwrap();
        let key = crate::signing::seeded_key(4, 4);
        let vote = |block| {
            SignedVote::sign(
                Vote {
                    height: 7,
                    round: 1,
                    kind: VoteKind::Prevote,
                    block,
                    validator: key.address(),
                },
                &key,
                &crate::signing::test_domain(1),
            )
            .unwrap()
        };
        let e = crate::evidence::Evidence::double_vote(vote(None), vote(Some(B256::ZERO))).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.put_evidence(&e).unwrap());
            assert!(!store.put_evidence(&e).unwrap(), "the same evidence twice");
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.evidence().unwrap(), vec![e]);
    }

    #[test]
    fn corrupt_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.init_genesis(&sample()).unwrap();
        let cf = store.cf(CF_BLOCKS).unwrap();
        store
            .db
            .put_cf(cf, 1u64.to_be_bytes(), b"\xff\x00garbage")
            .unwrap();
        assert!(matches!(store.block(1), Err(Error::Corrupt(_))));
    }
}
