//! RocksDB persistence: blocks with their commit certificates, accounts, used job nonces, the
//! job index and node metadata (tip, consensus write-ahead state), one column family each.
//! A block and every change it makes are written in one atomic batch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use alloy::primitives::{Address, B256};
use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch};
use serde::{Serialize, de::DeserializeOwned};

use crate::block::{Block, CommitCertificate, MAX_BLOCK_BYTES};
use crate::codec;
use crate::error::{Error, Result};
use crate::genesis::Genesis;
use crate::state::{Account, Changes, JobEntry, Ledger};
use crate::types::{Height, JobId};

const CF_BLOCKS: &str = "blocks";
const CF_CERTS: &str = "certs";
const CF_ACCOUNTS: &str = "accounts";
const CF_NONCES: &str = "nonces";
const CF_JOBS: &str = "jobs";
const CF_META: &str = "meta";
const CFS: [&str; 6] = [
    CF_BLOCKS,
    CF_CERTS,
    CF_ACCOUNTS,
    CF_NONCES,
    CF_JOBS,
    CF_META,
];

const META_GENESIS: &[u8] = b"genesis_hash";
const META_TIP: &[u8] = b"tip";

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

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
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

    /// Loads the ledger at the tip.
    pub fn load_ledger(&self) -> Result<Ledger> {
        let tip = self.tip()?;
        let mut accounts = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_ACCOUNTS)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            let addr = Address::try_from(&k[..])
                .map_err(|_| Error::Corrupt(format!("account key of {} bytes", k.len())))?;
            let acc: Account = codec::decode(&v, 1024)?;
            accounts.insert(addr, acc);
        }
        let mut nonces = HashMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_NONCES)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            if k.len() != 28 {
                return Err(Error::Corrupt(format!("nonce key of {} bytes", k.len())));
            }
            let addr = Address::from_slice(&k[..20]);
            let mut n = [0u8; 8];
            n.copy_from_slice(&k[20..]);
            let id: JobId = codec::decode(&v, 64)?;
            nonces.insert((addr, u64::from_be_bytes(n)), id);
        }
        Ok(Ledger::from_parts(
            tip.height,
            tip.hash,
            tip.timestamp_ms,
            accounts,
            nonces,
        ))
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
        for j in &changes.jobs {
            batch.put_cf(self.cf(CF_JOBS)?, j.job_id.0.as_slice(), codec::encode(j));
        }
        let tip = Tip {
            height: block.header.height,
            hash: block.hash(),
            timestamp_ms: block.header.timestamp_ms,
        };
        batch.put_cf(self.cf(CF_META)?, META_TIP, codec::encode(&tip));
        self.db.write(batch)?;
        Ok(())
    }

    pub fn block(&self, height: Height) -> Result<Option<Block>> {
        self.get(CF_BLOCKS, &height.to_be_bytes(), MAX_BLOCK_BYTES)
    }

    pub fn certificate(&self, height: Height) -> Result<Option<CommitCertificate>> {
        self.get(CF_CERTS, &height.to_be_bytes(), MAX_BLOCK_BYTES)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesis::tests::sample;

    #[test]
    fn genesis_blocks_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let g = sample();
        let (block, changes) = {
            let store = Store::open(dir.path()).unwrap();
            store.init_genesis(&g).unwrap();
            let ledger = store.load_ledger().unwrap();
            assert_eq!(ledger.state_root(), Ledger::from_genesis(&g).state_root());
            let (block, changes) = ledger.build_block(
                &g,
                g.validators[0].address,
                ledger.tip_time_ms + 1,
                vec![],
                vec![],
            );
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
        let store = Store::open(dir.path()).unwrap();
        store.init_genesis(&g).unwrap();
        assert_eq!(store.tip().unwrap().height, 1);
        assert_eq!(store.block(1).unwrap().unwrap(), block);
        assert!(store.block(2).unwrap().is_none());
        let ledger = store.load_ledger().unwrap();
        assert_eq!(ledger.state_root(), changes.state_root);
        assert_eq!(ledger.tip_hash, block.hash());
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
