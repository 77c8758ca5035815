//! The ledger state machine: applies blocks deterministically.
//!
//! Deterministic: [`Ledger::execute`] takes a block and returns the changes; the store persists
//! them atomically and [`Ledger::commit`] applies them in memory. Accounts and the registries
//! ([`Registry`]: validators, inference nodes, models, proposals, parameters) are held in
//! memory (their number does not grow with jobs); used job nonces, which do, are read from the
//! store ([`UsedNonces`]), the only I/O here.
//!
//! A block runs in this order: its records (each job's fee split between the executor, the
//! model owner and the validators), its transactions (each pays the flat `tx_fee`, then its
//! action applies or fails as a whole), then the end-of-block steps: proposals whose voting
//! ends here are tallied and applied, the block reward leaves the rewards pool, the validators'
//! income of the block is shared by voting power (rounding dust to the proposer), and at an
//! epoch boundary the validator set for the next heights is computed. The supply is checked
//! last: a block after which balances, stake and pools do not add up to exactly
//! [`TOTAL_SUPPLY`] is invalid.

mod registry;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

pub use registry::{InferenceNode, Model, Proposal, ProposalStatus, Registry, Tally, Validator};

use crate::block::{Block, BlockHeader};
use crate::error::{Error, Result};
use crate::evidence::{FraudClaim, FraudEvidence};
use crate::genesis::{Genesis, Pools, Vesting};
use crate::record::{InferenceRecord, VerifiedRecord};
use crate::tx::{Action, ProposalKind, Tx};
use crate::types::{Height, JobId, ModelId, TOTAL_SUPPLY, amount};

/// An unbonding entry: still slashable, returned by `Withdraw` from `release_height` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unbonding {
    #[serde(with = "amount")]
    pub amount: u128,
    pub release_height: Height,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Tokens the account holds outside stake, locked ones included.
    #[serde(with = "amount")]
    pub balance: u128,
    /// Bonded stake: voting power for a validator, the bond of an inference node, slashable.
    #[serde(with = "amount")]
    pub bonded: u128,
    /// Stake on its way out, still slashable.
    pub unbonding: Vec<Unbonding>,
    /// Sequential nonce of the transactions it sent.
    pub nonce: u64,
    /// Part of the account's tokens vest by this schedule.
    pub vesting: Option<Vesting>,
}

impl Account {
    pub fn unbonding_total(&self) -> u128 {
        self.unbonding.iter().map(|u| u.amount).sum()
    }

    /// Everything the account holds: balance, bonded and unbonding.
    pub fn total(&self) -> u128 {
        self.balance + self.bonded + self.unbonding_total()
    }

    /// Tokens still locked by the vesting schedule at `now_ms`.
    pub fn locked(&self, now_ms: u64) -> u128 {
        self.vesting.map_or(0, |v| v.locked(now_ms))
    }

    /// The locked tokens that sit in the balance: locked tokens count first towards stake (they
    /// may be bonded), the rest of them are in the balance and may not be transferred.
    pub fn locked_in_balance(&self, now_ms: u64) -> u128 {
        let staked = self.bonded + self.unbonding_total();
        self.locked(now_ms).saturating_sub(staked).min(self.balance)
    }

    /// What the account may transfer or pay fees with at `now_ms`.
    pub fn spendable(&self, now_ms: u64) -> u128 {
        self.balance - self.locked_in_balance(now_ms)
    }
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

/// Outcome of one transaction: it paid `fee`; its action applied (`ok`) or failed (`reason`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxOutcome {
    pub hash: B256,
    pub ok: bool,
    pub reason: Option<String>,
    #[serde(with = "amount", default)]
    pub fee: u128,
}

/// Where every token is, at a height: the components add up to [`TOTAL_SUPPLY`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supply {
    /// Balances free to move.
    #[serde(with = "amount")]
    pub balances: u128,
    /// Balances still locked by vesting.
    #[serde(with = "amount")]
    pub locked: u128,
    #[serde(with = "amount")]
    pub bonded: u128,
    #[serde(with = "amount")]
    pub unbonding: u128,
    pub pools: Pools,
    /// The sum of all the above.
    #[serde(with = "amount")]
    pub total: u128,
}

/// Whether each validator of the set signed the commit certificates of the recent blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// Per validator, oldest first, at most `downtime_window` entries: `true` where its
    /// precommit is in the certificate of that block.
    pub signed: BTreeMap<Address, std::collections::VecDeque<bool>>,
}

impl Liveness {
    /// How many of its recent blocks `v` did not sign, out of how many counted.
    pub fn missed(&self, v: &Address) -> (usize, usize) {
        self.signed
            .get(v)
            .map_or((0, 0), |w| (w.iter().filter(|s| !**s).count(), w.len()))
    }
}

/// The leaves the next anchor covers: every record and withdrawal since the last anchor
/// height, in block order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorLeaves {
    pub records: Vec<B256>,
    pub withdrawals: Vec<B256>,
}

/// What a header derives from the state after its block, besides the state root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Derived {
    pub next_validators_hash: B256,
    pub anchor_records_root: B256,
    pub anchor_withdrawals_root: B256,
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
    /// API grant id → what it has spent in all, for the grants this block spent from.
    pub grants: Vec<(B256, u128)>,
    pub jobs: Vec<JobEntry>,
    pub txs: Vec<TxOutcome>,
    /// The registries after this block, when it changed them.
    pub registry: Option<Arc<Registry>>,
    pub pools: Pools,
    /// The ledger's history digest after this block (see [`Ledger::history`]).
    pub history: B256,
    pub state_root: B256,
    /// Equivocations punished by this block: (offender, height of the offence).
    pub slashes: Vec<(Address, Height)>,
    /// False records punished by this block: (inference node, job).
    pub frauds: Vec<(Address, JobId)>,
    /// Who signed the recent blocks, after this one.
    pub liveness: Liveness,
    /// Validators jailed by this block for not signing.
    pub downtime_jailed: Vec<Address>,
    /// The leaves waiting for the next anchor, after this block.
    pub anchor: AnchorLeaves,
    /// The header fields derived from the state after this block.
    pub derived: Derived,
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

/// Ledger at some height: accounts, registries and pools in memory, used job nonces as
/// [`UsedNonces`] says.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub height: Height,
    pub tip_hash: B256,
    pub tip_time_ms: u64,
    accounts: BTreeMap<Address, Account>,
    nonces: UsedNonces,
    /// What each API grant ([`crate::record::ApiGrant`]) has spent, by grant id. One entry per
    /// key a client made and used, not per job: kept in memory.
    grants: BTreeMap<B256, u128>,
    /// Digest of everything settled so far that is not an account: each block with used job
    /// nonces or job entries chains `keccak(history ‖ nonces ‖ jobs)`. The state root covers it,
    /// so two ledgers that differ only in used nonces or in the job index have different roots,
    /// at a cost per block of what the block changed rather than of the whole index.
    history: B256,
    registry: Arc<Registry>,
    registry_digest: B256,
    pools: Pools,
    liveness: Liveness,
    anchor: AnchorLeaves,
    /// The commit certificate of the tip (none at genesis): the next block carries it.
    last_commit: Option<crate::block::CommitCertificate>,
}

/// What a block has changed so far, over its parent's ledger.
struct Overlay<'a> {
    base: &'a Ledger,
    domain: crate::signing::Domain,
    height: Height,
    now_ms: u64,
    proposer: Address,
    accounts: BTreeMap<Address, Account>,
    nonces: BTreeMap<(Address, u64), JobId>,
    /// What the grants this block spent from have spent in all.
    grants: BTreeMap<B256, u128>,
    /// A copy of the registry, made on the first change.
    registry: Option<Registry>,
    pools: Pools,
    /// The validators' income of this block (their share of job fees, transaction fees, their
    /// part of the block reward), shared by power at the end of the block.
    validator_income: u128,
    /// Jobs finalized per inference node in this block: their part of the block reward.
    served: BTreeMap<Address, u64>,
    slashes: Vec<(Address, Height)>,
    frauds: Vec<(Address, JobId)>,
    liveness: Liveness,
    downtime_jailed: Vec<Address>,
    /// Leaves of this block's bridge withdrawals, in order.
    withdrawals: Vec<B256>,
    /// The TEE the genesis trusts (for fraud evidence against TEE records).
    tee: Option<&'a crate::genesis::TeeParams>,
}

impl Overlay<'_> {
    fn get(&self, a: &Address) -> Account {
        self.accounts
            .get(a)
            .or_else(|| self.base.accounts.get(a))
            .cloned()
            .unwrap_or_default()
    }

    fn put(&mut self, a: Address, acc: Account) {
        self.accounts.insert(a, acc);
    }

    fn credit(&mut self, a: Address, v: u128) {
        if v == 0 {
            return;
        }
        let mut acc = self.get(&a);
        // Credits come out of a debit of the same amount: total supply bounds them.
        acc.balance = acc.balance.saturating_add(v);
        self.put(a, acc);
    }

    fn reg(&self) -> &Registry {
        self.registry.as_ref().unwrap_or(&self.base.registry)
    }

    fn reg_mut(&mut self) -> &mut Registry {
        self.registry
            .get_or_insert_with(|| (*self.base.registry).clone())
    }

    fn nonce_owner(&self, key: &(Address, u64)) -> Result<Option<JobId>> {
        match self.nonces.get(key) {
            Some(id) => Ok(Some(*id)),
            None => self.base.nonces.get(&key.0, key.1),
        }
    }

    fn grant_spent(&self, id: &B256) -> u128 {
        self.grants
            .get(id)
            .or_else(|| self.base.grants.get(id))
            .copied()
            .unwrap_or(0)
    }

    /// Every account as this block leaves it, in address order.
    fn merged(&self) -> impl Iterator<Item = (&Address, &Account)> {
        merge_sorted(&self.base.accounts, &self.accounts)
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
                        bonded: a.stake,
                        unbonding: Vec::new(),
                        nonce: 0,
                        vesting: a.vesting,
                    },
                )
            })
            .collect();
        let registry = Registry::from_genesis(g);
        Ledger {
            height: 0,
            tip_hash: g.hash(),
            tip_time_ms: g.genesis_time_ms,
            accounts,
            nonces: UsedNonces::default(),
            grants: BTreeMap::new(),
            history: B256::ZERO,
            registry_digest: registry.digest(),
            registry: Arc::new(registry),
            pools: g.pools,
            liveness: Liveness::default(),
            anchor: AnchorLeaves::default(),
            last_commit: None,
        }
    }

    /// Rebuilds a ledger from persisted parts.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        height: Height,
        tip_hash: B256,
        tip_time_ms: u64,
        accounts: BTreeMap<Address, Account>,
        nonces: UsedNonces,
        history: B256,
        registry: Registry,
        pools: Pools,
        liveness: Liveness,
        last_commit: Option<crate::block::CommitCertificate>,
    ) -> Ledger {
        Ledger {
            height,
            tip_hash,
            tip_time_ms,
            accounts,
            nonces,
            grants: BTreeMap::new(),
            history,
            registry_digest: registry.digest(),
            registry: Arc::new(registry),
            pools,
            liveness,
            anchor: AnchorLeaves::default(),
            last_commit,
        }
    }

    /// This ledger with what each API grant has spent (a persisted ledger's).
    pub fn with_grants(mut self, grants: BTreeMap<B256, u128>) -> Ledger {
        self.grants = grants;
        self
    }

    /// What the API grant `id` has spent so far.
    pub fn grant_spent(&self, id: &B256) -> u128 {
        self.grants.get(id).copied().unwrap_or(0)
    }

    /// This ledger with the leaves waiting for the next anchor (a persisted ledger's).
    pub fn with_anchor_leaves(mut self, anchor: AnchorLeaves) -> Ledger {
        self.anchor = anchor;
        self
    }

    /// The leaves waiting for the next anchor.
    pub fn anchor_leaves(&self) -> &AnchorLeaves {
        &self.anchor
    }

    /// Who signed the recent blocks.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// The tip's commit certificate, which the next block carries.
    pub fn last_commit(&self) -> Option<&crate::block::CommitCertificate> {
        self.last_commit.as_ref()
    }

    /// Keeps the tip's commit certificate (after [`Ledger::commit`]) for the next block.
    pub fn set_last_commit(&mut self, cert: crate::block::CommitCertificate) {
        if cert.height == self.height && cert.block_hash == self.tip_hash {
            self.last_commit = Some(cert);
        }
    }

    /// The history digest (used job nonces and the job index, chained block by block).
    pub fn history(&self) -> B256 {
        self.history
    }

    pub fn account(&self, a: &Address) -> Account {
        self.accounts.get(a).cloned().unwrap_or_default()
    }

    pub fn accounts(&self) -> &BTreeMap<Address, Account> {
        &self.accounts
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn params(&self) -> &crate::genesis::Params {
        &self.registry.params
    }

    pub fn pools(&self) -> Pools {
        self.pools
    }

    /// The validator set that decides the next height, `height + 1`.
    pub fn next_validators(&self) -> &[(Address, u64)] {
        &self.registry.set
    }

    /// Whether `client` already used job nonce `nonce`, and for which job.
    pub fn nonce_used(&self, client: &Address, nonce: u64) -> Result<Option<JobId>> {
        self.nonces.get(client, nonce)
    }

    /// Where every token is at the tip.
    pub fn supply(&self) -> Supply {
        supply(self.accounts.iter(), self.pools, self.tip_time_ms)
    }

    /// Sum of every account's tokens and the pools: the supply, which must never change.
    pub fn total_supply(&self) -> u128 {
        self.supply().total
    }

    pub fn state_root(&self) -> B256 {
        state_root(
            self.accounts.iter(),
            self.registry_digest,
            &self.pools,
            &self.liveness,
            &self.anchor,
            self.history,
        )
    }

    /// Why `executor` may not be routed or settle a job of `model` now, or `None`.
    pub fn refuse_executor(&self, executor: &Address, model: &ModelId) -> Option<String> {
        self.registry
            .refuse_executor(executor, model, self.account(executor).bonded)
    }

    /// Applies `tx` to this ledger as the next block would, without keeping anything: `Ok` if
    /// it would be included and its action apply, else the reason (an unpayable transaction
    /// would make a block invalid; a failing action would cost the fee for nothing). What a
    /// node checks before it admits a transaction from a client. `domain` is `g.domain()`,
    /// which the caller keeps (computing it hashes the whole genesis).
    pub fn dry_run(
        &self,
        g: &Genesis,
        domain: crate::signing::Domain,
        tx: &Tx,
        now_ms: u64,
    ) -> std::result::Result<(), String> {
        let hash = tx.verify(&domain).map_err(|e| e.to_string())?;
        let mut o = self.overlay(
            g,
            domain,
            self.height + 1,
            now_ms.max(self.tip_time_ms + 1),
            Address::ZERO,
        );
        apply_tx(&mut o, tx, hash)?
    }

    fn overlay<'a>(
        &'a self,
        g: &'a Genesis,
        domain: crate::signing::Domain,
        height: Height,
        now_ms: u64,
        proposer: Address,
    ) -> Overlay<'a> {
        Overlay {
            base: self,
            domain,
            height,
            now_ms,
            proposer,
            accounts: BTreeMap::new(),
            nonces: BTreeMap::new(),
            grants: BTreeMap::new(),
            registry: None,
            pools: self.pools,
            validator_income: 0,
            served: BTreeMap::new(),
            slashes: Vec::new(),
            frauds: Vec::new(),
            liveness: self.liveness.clone(),
            downtime_jailed: Vec::new(),
            withdrawals: Vec::new(),
            tee: g.tee.as_ref(),
        }
    }

    /// Validates `block` against this ledger (height, parent, time, roots, every record's
    /// signatures and registrations, every transaction's signature, nonce and fee) and
    /// computes its changes. Does not check `header.state_root`; [`Ledger::validate`] does.
    pub fn execute(&self, g: &Genesis, block: &Block) -> Result<Changes> {
        self.execute_checked(g, block, None)
    }

    /// The parent's commit certificate a block must carry (none at height 1): for the parent's
    /// hash, named by the header, and a quorum of the set that decided the parent. Returns
    /// that set with, for each, whether its precommit is in it.
    fn check_last_commit(
        &self,
        block: &Block,
        domain: &crate::signing::Domain,
    ) -> Result<Option<Vec<(Address, bool)>>> {
        let h = &block.header;
        if Block::last_commit_hash(block.last_commit.as_ref()) != h.last_commit_hash {
            return Err(Error::InvalidBlock(
                "the carried commit certificate is not the one the header names".into(),
            ));
        }
        let Some(cert) = &block.last_commit else {
            if h.height > 1 {
                return Err(Error::InvalidBlock(
                    "no commit certificate of the parent".into(),
                ));
            }
            return Ok(None);
        };
        if h.height == 1 || cert.height != self.height || cert.block_hash != self.tip_hash {
            return Err(Error::InvalidBlock(format!(
                "the carried certificate is for height {} block {}, not the parent",
                cert.height, cert.block_hash
            )));
        }
        let set = self.registry.set_at(self.height).ok_or_else(|| {
            Error::InvalidBlock(format!("the set of height {} is not known", self.height))
        })?;
        cert.verify(set, domain)?;
        Ok(Some(
            set.iter()
                .map(|(v, _)| (*v, cert.votes.iter().any(|x| x.vote.validator == *v)))
                .collect(),
        ))
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
        let domain = g.domain();
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
        let params = &self.registry.params;
        if block.records.len() > params.max_block_records as usize
            || block.txs.len() > params.max_block_txs as usize
        {
            return Err(Error::InvalidBlock(
                "too many records or transactions".into(),
            ));
        }
        // Each record's leaf once: for the records root here and the anchor window below.
        let leaves: Vec<B256> = block.records.iter().map(|r| r.leaf(&domain)).collect();
        if crate::merkle::root(&leaves) != h.records_root {
            return Err(Error::InvalidBlock("records root mismatch".into()));
        }
        if Block::txs_root(&block.txs, &domain) != h.txs_root {
            return Err(Error::InvalidBlock("transactions root mismatch".into()));
        }
        if !self.registry.set.iter().any(|(a, _)| *a == h.proposer) {
            return Err(Error::InvalidBlock(format!(
                "proposer {} is not a validator",
                h.proposer
            )));
        }
        let signers = self.check_last_commit(block, &domain)?;

        let mut o = self.overlay(g, domain, h.height, h.timestamp_ms, h.proposer);
        if let Some(signers) = signers {
            count_signers(&mut o, &signers);
        }
        let mut jobs = Vec::with_capacity(block.records.len());
        for (i, record) in block.records.iter().enumerate() {
            let id = match checked.and_then(|ids| ids.get(i)) {
                Some(id) => *id,
                None => record_id(record, &domain)?,
            };
            match settle_job(&mut o, record, id) {
                Ok(Some(entry)) => jobs.push(entry),
                Ok(None) => {
                    return Err(Error::InvalidBlock(format!("job {id} is already settled")));
                }
                Err(SettleError::Refused(e)) => {
                    return Err(Error::InvalidBlock(format!("record {id}: {e}")));
                }
                Err(SettleError::Store(e)) => return Err(e),
            }
        }
        let mut txs = Vec::with_capacity(block.txs.len());
        for tx in &block.txs {
            let hash = tx.verify(&domain).map_err(|e| {
                Error::InvalidBlock(format!("transaction {}: {e}", tx.hash(&domain)))
            })?;
            let result = apply_tx(&mut o, tx, hash)
                .map_err(|e| Error::InvalidBlock(format!("transaction {hash}: {e}")))?;
            txs.push(TxOutcome {
                hash,
                ok: result.is_ok(),
                reason: result.err(),
                fee: o.reg().params.tx_fee,
            });
        }
        end_block(&mut o)?;

        let registry = o.registry.take().map(Arc::new);
        let registry_digest = match &registry {
            Some(r) => r.digest(),
            None => self.registry_digest,
        };
        let total = supply(o.merged(), o.pools, h.timestamp_ms).total;
        if total != TOTAL_SUPPLY {
            return Err(Error::InvalidBlock(format!(
                "after this block the supply would be {total}, not {TOTAL_SUPPLY}"
            )));
        }
        let nonces: Vec<((Address, u64), JobId)> =
            std::mem::take(&mut o.nonces).into_iter().collect();
        let grants: Vec<(B256, u128)> = std::mem::take(&mut o.grants).into_iter().collect();
        let history = next_history(self.history, &nonces, &grants, &jobs);
        // The anchor: this block's leaves join those since the last anchor height; at an
        // anchor height the header carries their roots and the next anchor starts empty.
        let mut anchor = self.anchor.clone();
        anchor.records.extend(leaves);
        anchor.withdrawals.append(&mut o.withdrawals);
        let (anchor_records_root, anchor_withdrawals_root) =
            if h.height.is_multiple_of(params.anchor_interval) {
                let roots = (
                    crate::merkle::root(&anchor.records),
                    crate::merkle::root(&anchor.withdrawals),
                );
                anchor = AnchorLeaves::default();
                roots
            } else {
                (B256::ZERO, B256::ZERO)
            };
        let next_set = registry.as_ref().map_or(&self.registry.set, |r| &r.set);
        let derived = Derived {
            next_validators_hash: crate::block::validator_set_hash(next_set),
            anchor_records_root,
            anchor_withdrawals_root,
        };
        let root = state_root(
            o.merged(),
            registry_digest,
            &o.pools,
            &o.liveness,
            &anchor,
            history,
        );
        Ok(Changes {
            height: h.height,
            block_hash: block.hash(),
            timestamp_ms: h.timestamp_ms,
            accounts: o.accounts,
            nonces,
            grants,
            jobs,
            txs,
            registry,
            pools: o.pools,
            history,
            state_root: root,
            slashes: o.slashes,
            frauds: o.frauds,
            liveness: o.liveness,
            downtime_jailed: o.downtime_jailed,
            anchor,
            derived,
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
        let drift = self.registry.params.max_clock_drift_ms;
        let latest = now_ms.saturating_add(drift);
        if block.header.timestamp_ms > latest {
            return Err(Error::InvalidBlock(format!(
                "timestamp {} is more than {drift} ms ahead of this validator's clock {now_ms}",
                block.header.timestamp_ms
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
        let h = &block.header;
        let d = &changes.derived;
        for (name, got, want) in [
            (
                "next validators hash",
                h.next_validators_hash,
                d.next_validators_hash,
            ),
            (
                "anchor records root",
                h.anchor_records_root,
                d.anchor_records_root,
            ),
            (
                "anchor withdrawals root",
                h.anchor_withdrawals_root,
                d.anchor_withdrawals_root,
            ),
        ] {
            if got != want {
                return Err(Error::InvalidBlock(format!(
                    "{name} {got} differs from the computed {want}"
                )));
            }
        }
        Ok(changes)
    }

    /// Builds the next block from candidate records and transactions. Records come checked
    /// ([`VerifiedRecord`]: their signatures are not recovered again, here or when the block is
    /// executed). Every candidate is tried against the state the block has built so far; the
    /// ones that would make the block invalid (unregistered or jailed executor, unknown or
    /// inactive model, job already settled; a transaction's bad signature, wrong nonce or
    /// unpayable fee) are left out and reported, so the block is valid by construction. A
    /// transaction whose action fails is kept: it pays its fee. The timestamp is `now_ms`, or
    /// the parent's plus 1 ms if the clock is behind; an error only if the parent's time leaves
    /// no later millisecond.
    pub fn build_block(
        &self,
        g: &Genesis,
        proposer: Address,
        now_ms: u64,
        records: Vec<VerifiedRecord>,
        txs: Vec<Tx>,
    ) -> Result<Built> {
        let domain = g.domain();
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
            last_commit_hash: Block::last_commit_hash(self.last_commit.as_ref()),
            next_validators_hash: B256::ZERO,
            anchor_records_root: B256::ZERO,
            anchor_withdrawals_root: B256::ZERO,
        };
        let params = &self.registry.params;
        let mut o = self.overlay(g, domain, header.height, timestamp_ms, proposer);
        let (mut kept_records, mut dropped_records) = (Vec::new(), Vec::new());
        let mut kept_ids = Vec::new();
        for verified in records {
            if kept_records.len() >= params.max_block_records as usize {
                break;
            }
            let id = verified.id();
            let r = verified.into_record();
            match settle_job(&mut o, &r, id) {
                Ok(Some(_)) => {
                    kept_records.push(r);
                    kept_ids.push(id);
                }
                Ok(None) => dropped_records.push((id, "already settled".into())),
                Err(SettleError::Refused(e)) => dropped_records.push((id, e)),
                Err(SettleError::Store(e)) => return Err(e),
            }
        }
        let (mut kept_txs, mut dropped_txs) = (Vec::new(), Vec::new());
        for t in txs {
            if kept_txs.len() >= params.max_block_txs as usize {
                break;
            }
            let hash = match t.verify(&domain) {
                Ok(hash) => hash,
                Err(e) => {
                    dropped_txs.push((t.hash(&domain), e.to_string()));
                    continue;
                }
            };
            // `apply_tx` changes the overlay only when the transaction is included.
            match apply_tx(&mut o, &t, hash) {
                Ok(_) => kept_txs.push(t),
                Err(e) => dropped_txs.push((t.hash(&domain), e)),
            }
        }
        let mut block = Block {
            header: BlockHeader {
                records_root: Block::records_root(&kept_records, &domain),
                txs_root: Block::txs_root(&kept_txs, &domain),
                ..header
            },
            records: kept_records,
            txs: kept_txs,
            last_commit: self.last_commit.clone(),
        };
        let changes = self.execute_checked(g, &block, Some(&kept_ids))?;
        block.header.state_root = changes.state_root;
        block.header.next_validators_hash = changes.derived.next_validators_hash;
        block.header.anchor_records_root = changes.derived.anchor_records_root;
        block.header.anchor_withdrawals_root = changes.derived.anchor_withdrawals_root;
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
            self.accounts.insert(*a, acc.clone());
        }
        // A stored index has them already: the store wrote them with the block.
        if let UsedNonces::Memory(m) = &mut self.nonces {
            for (k, id) in &c.nonces {
                m.insert(*k, *id);
            }
        }
        for (id, spent) in &c.grants {
            self.grants.insert(*id, *spent);
        }
        if let Some(r) = &c.registry {
            self.registry = r.clone();
            self.registry_digest = r.digest();
        }
        self.pools = c.pools;
        self.liveness = c.liveness.clone();
        self.anchor = c.anchor.clone();
        // The new tip's certificate comes with its commit ([`Ledger::set_last_commit`]).
        self.last_commit = None;
        self.height = c.height;
        self.tip_hash = c.block_hash;
        self.tip_time_ms = c.timestamp_ms;
        self.history = c.history;
    }
}

enum SettleError {
    /// The record may not be in this block.
    Refused(String),
    Store(Error),
}

/// Settles one job; `None` when this exact job was settled before (the block is invalid).
fn settle_job(
    o: &mut Overlay<'_>,
    record: &InferenceRecord,
    id: JobId,
) -> std::result::Result<Option<JobEntry>, SettleError> {
    let req = &record.job.request;
    let model = o
        .reg()
        .active_model(&req.model_id)
        .map_err(SettleError::Refused)?
        .clone();
    let bonded = o.get(&record.executor).bonded;
    if let Some(e) = o
        .reg()
        .refuse_executor(&record.executor, &req.model_id, bonded)
    {
        return Err(SettleError::Refused(e));
    }
    let key = (req.client, req.nonce);
    let mut entry = JobEntry {
        job_id: id,
        status: JobStatus::Failed,
        height: o.height,
        output_hash: record.output_hash,
        executed_by: record.executor,
        client: req.client,
        model_id: req.model_id,
        fee: 0,
        reason: None,
    };
    match o.nonce_owner(&key).map_err(SettleError::Store)? {
        Some(prev) if prev == id => return Ok(None),
        Some(prev) => {
            entry.reason = Some(format!("nonce {} already used by job {prev}", req.nonce));
            return Ok(Some(entry));
        }
        None => {}
    }
    o.nonces.insert(key, id);
    if req.expiry.saturating_mul(1000) < o.now_ms {
        entry.reason = Some(format!("expired at {} (unix seconds)", req.expiry));
        return Ok(Some(entry));
    }
    let price = model.price(record.units);
    if price > req.max_fee {
        entry.reason = Some(format!(
            "the price {price} ({} per job + {} per unit × {} units) exceeds max_fee {}",
            model.price_per_job, model.price_per_unit, record.units, req.max_fee
        ));
        return Ok(Some(entry));
    }
    let mut client = o.get(&req.client);
    let spendable = client.spendable(o.now_ms);
    if spendable < price {
        entry.reason = Some(format!(
            "insufficient balance: {spendable} spendable < price {price}"
        ));
        return Ok(Some(entry));
    }
    if let Some(g) = &record.job.grant {
        let grant_id = g.grant.id(&o.domain);
        if g.grant.expiry.saturating_mul(1000) < o.now_ms {
            entry.reason = Some(format!(
                "API grant {grant_id} expired at {} (unix seconds)",
                g.grant.expiry
            ));
            return Ok(Some(entry));
        }
        let spent = o.grant_spent(&grant_id);
        if spent.saturating_add(price) > g.grant.cap {
            entry.reason = Some(format!(
                "API grant {grant_id} has spent {spent} of its cap {}: the price {price} is past it",
                g.grant.cap
            ));
            return Ok(Some(entry));
        }
        o.grants.insert(grant_id, spent + price);
    }
    client.balance -= price;
    o.put(req.client, client);

    let p = &o.reg().params;
    let exec_share = price * p.executor_bps as u128 / 10_000;
    let owner_share = price * p.model_owner_bps as u128 / 10_000;
    o.credit(record.executor, exec_share);
    o.credit(model.owner, owner_share);
    o.validator_income += price - exec_share - owner_share;
    *o.served.entry(record.executor).or_default() += 1;
    entry.status = JobStatus::Finalized;
    entry.fee = price;
    Ok(Some(entry))
}

/// Applies one transaction. `Err`: it may not be in the block (wrong nonce, fee above its
/// `max_fee` or above what the sender can spend), and nothing changed. `Ok(Err)`: it paid its
/// fee and advanced the nonce, but its action failed and changed nothing else. `Ok(Ok)`: it
/// applied.
fn apply_tx(
    o: &mut Overlay<'_>,
    tx: &Tx,
    hash: B256,
) -> std::result::Result<std::result::Result<(), String>, String> {
    let fee = o.reg().params.tx_fee;
    let mut sender = o.get(&tx.from);
    if tx.nonce != sender.nonce {
        return Err(format!(
            "nonce {} but the account {} is at {}",
            tx.nonce, tx.from, sender.nonce
        ));
    }
    if tx.max_fee < fee {
        return Err(format!(
            "max_fee {} is below the transaction fee {fee}",
            tx.max_fee
        ));
    }
    if sender.spendable(o.now_ms) < fee {
        return Err(format!("{} for the fee {fee}", short_of(&sender, o.now_ms)));
    }
    sender.balance -= fee;
    sender.nonce += 1;
    o.put(tx.from, sender);
    o.validator_income += fee;
    Ok(apply_action(o, tx.from, &tx.action, hash))
}

/// The action of a transaction whose fee is paid. Every check comes before any change, so a
/// failure changes nothing.
fn apply_action(
    o: &mut Overlay<'_>,
    from: Address,
    action: &Action,
    tx_hash: B256,
) -> std::result::Result<(), String> {
    let now = o.now_ms;
    let height = o.height;
    let mut acc = o.get(&from);
    let params = o.reg().params.clone();
    match action {
        Action::Transfer { to, amount } => {
            if acc.spendable(now) < *amount {
                return Err(format!("{} for {amount}", short_of(&acc, now)));
            }
            acc.balance -= amount;
            o.put(from, acc);
            o.credit(*to, *amount);
        }
        Action::Bond { amount } => {
            if *amount == 0 {
                return Err("bond of 0".into());
            }
            if acc.balance < *amount {
                return Err(format!(
                    "insufficient balance to bond: {} < {amount}",
                    acc.balance
                ));
            }
            acc.balance -= amount;
            acc.bonded += amount;
            o.put(from, acc);
        }
        Action::Unbond { amount } => {
            if *amount == 0 {
                return Err("unbond of 0".into());
            }
            if acc.bonded < *amount {
                return Err(format!("cannot unbond {amount}: {} bonded", acc.bonded));
            }
            if acc.unbonding.len() >= params.max_unbonding_entries as usize {
                return Err(format!(
                    "{} unbonding entries already, the most allowed; withdraw first",
                    acc.unbonding.len()
                ));
            }
            acc.bonded -= amount;
            acc.unbonding.push(Unbonding {
                amount: *amount,
                release_height: height + params.unbonding_blocks,
            });
            o.put(from, acc);
        }
        Action::Withdraw => {
            let (ready, waiting): (Vec<Unbonding>, Vec<Unbonding>) = acc
                .unbonding
                .iter()
                .partition(|u| u.release_height <= height);
            if ready.is_empty() {
                return Err(match waiting.iter().map(|u| u.release_height).min() {
                    Some(h) => {
                        format!("nothing to withdraw before height {h} (this block is {height})")
                    }
                    None => "nothing is unbonding".into(),
                });
            }
            acc.balance += ready.iter().map(|u| u.amount).sum::<u128>();
            acc.unbonding = waiting;
            o.put(from, acc);
        }
        Action::RegisterValidator { peer_id, moniker } => {
            let reg = o.reg();
            if reg.validators.contains_key(&from) || reg.nodes.contains_key(&from) {
                return Err(format!("{from} is already registered"));
            }
            if reg.peer_taken(peer_id) {
                return Err(format!("peer id {peer_id} is already registered"));
            }
            if acc.bonded < params.min_validator_stake {
                return Err(format!(
                    "a validator needs {} bonded, {from} has {}",
                    params.min_validator_stake, acc.bonded
                ));
            }
            o.reg_mut().validators.insert(
                from,
                Validator {
                    peer_id: peer_id.clone(),
                    moniker: moniker.clone(),
                    jailed_until: None,
                    slashes: 0,
                },
            );
        }
        Action::RegisterInferenceNode {
            peer_id,
            models,
            tee_chip,
        } => {
            let reg = o.reg();
            if reg.validators.contains_key(&from) || reg.nodes.contains_key(&from) {
                return Err(format!("{from} is already registered"));
            }
            if reg.peer_taken(peer_id) {
                return Err(format!("peer id {peer_id} is already registered"));
            }
            if let Some(m) = models.iter().find(|m| !reg.models.contains_key(*m)) {
                return Err(format!("unknown model {m}"));
            }
            if acc.bonded < params.min_inference_stake {
                return Err(format!(
                    "an inference node needs {} bonded, {from} has {}",
                    params.min_inference_stake, acc.bonded
                ));
            }
            let mut models = models.clone();
            models.sort();
            models.dedup();
            o.reg_mut().nodes.insert(
                from,
                InferenceNode {
                    peer_id: peer_id.clone(),
                    models,
                    tee_chip: *tee_chip,
                    jailed_until: None,
                    slashes: 0,
                },
            );
        }
        Action::RegisterModel {
            model_id,
            name,
            mode,
            price_per_job,
            price_per_unit,
            ..
        } => {
            if o.reg().models.contains_key(model_id) {
                return Err(format!("model {model_id} is already registered"));
            }
            if mode.needs_tee() && o.reg().measurements.is_empty() {
                return Err(format!(
                    "mode {} needs a TEE, and this chain approves no TEE measurement",
                    mode.as_str()
                ));
            }
            o.reg_mut().models.insert(
                *model_id,
                Model {
                    name: name.clone(),
                    owner: from,
                    mode: *mode,
                    price_per_job: *price_per_job,
                    price_per_unit: *price_per_unit,
                    active: true,
                },
            );
        }
        Action::Propose { kind, deposit } => {
            if *deposit < params.min_deposit {
                return Err(format!(
                    "deposit {deposit} is below the minimum {}",
                    params.min_deposit
                ));
            }
            if acc.spendable(now) < *deposit {
                return Err(format!("{} for the deposit {deposit}", short_of(&acc, now)));
            }
            check_proposal(o.reg(), kind)?;
            acc.balance -= deposit;
            o.put(from, acc);
            o.pools.deposits += deposit;
            let reg = o.reg_mut();
            let id = reg.next_proposal;
            reg.next_proposal += 1;
            reg.proposals.insert(
                id,
                Proposal {
                    id,
                    proposer: from,
                    kind: kind.clone(),
                    deposit: *deposit,
                    submitted: height,
                    voting_end: height + params.voting_blocks,
                    votes: BTreeMap::new(),
                    status: ProposalStatus::Voting,
                    tally: None,
                },
            );
        }
        Action::Vote { proposal, option } => {
            let Some(p) = o.reg().proposals.get(proposal) else {
                return Err(format!("no proposal {proposal}"));
            };
            if p.status != ProposalStatus::Voting || height > p.voting_end {
                return Err(format!(
                    "proposal {proposal}'s voting ended at height {}",
                    p.voting_end
                ));
            }
            if let Some(p) = o.reg_mut().proposals.get_mut(proposal) {
                p.votes.insert(from, *option);
            }
        }
        Action::Unjail => {
            let reg = o.reg();
            let jailed = reg
                .validators
                .get(&from)
                .map(|v| v.jailed_until)
                .or_else(|| reg.nodes.get(&from).map(|n| n.jailed_until));
            match jailed {
                None => return Err(format!("{from} is not a registered validator or node")),
                Some(None) => return Err(format!("{from} is not jailed")),
                Some(Some(until)) if height < until => {
                    return Err(format!(
                        "{from} is jailed until height {until} (this block is {height})"
                    ));
                }
                Some(Some(_)) => {}
            }
            let reg = o.reg_mut();
            if let Some(v) = reg.validators.get_mut(&from) {
                v.jailed_until = None;
            }
            if let Some(n) = reg.nodes.get_mut(&from) {
                n.jailed_until = None;
            }
        }
        Action::ReportEvidence(e) => {
            o.reg().check_evidence(e, height, &o.domain)?;
            let offender = e.offender();
            slash(o, offender, params.slash_double_sign_bps);
            let reg = o.reg_mut();
            reg.slashed.insert((offender, e.height()));
            if let Some(v) = reg.validators.get_mut(&offender) {
                v.jailed_until = Some(height + params.jail_blocks);
                v.slashes += 1;
            }
            o.slashes.push((offender, e.height()));
        }
        Action::BridgeDeposit {
            id,
            recipient,
            amount,
            ..
        } => {
            let next = o.pools.bridge_deposits_credited;
            if *id != next {
                return Err(format!("deposit {id} is not the next to credit ({next})"));
            }
            if !o.reg().set.iter().any(|(v, _)| *v == from) {
                return Err(format!(
                    "{from} is not an active validator; only validators credit deposits"
                ));
            }
            if o.pools.bridge_reserve < *amount {
                return Err(format!(
                    "deposit {id} of {amount} exceeds the bridge reserve {}",
                    o.pools.bridge_reserve
                ));
            }
            o.pools.bridge_reserve -= amount;
            o.pools.bridge_deposits_credited += 1;
            o.credit(*recipient, *amount);
        }
        Action::BridgeWithdraw { recipient, amount } => {
            if acc.spendable(now) < *amount {
                return Err(format!("{} for {amount}", short_of(&acc, now)));
            }
            acc.balance -= amount;
            o.put(from, acc);
            o.pools.bridge_reserve += amount;
            o.withdrawals
                .push(withdrawal_leaf(tx_hash, *recipient, *amount));
        }
        Action::ReportFraud(f) => {
            let (node, job) = check_fraud(o, f)?;
            slash(o, node, params.slash_fraud_bps);
            let reg = o.reg_mut();
            reg.punished_jobs.insert(job);
            if let Some(n) = reg.nodes.get_mut(&node) {
                n.jailed_until = Some(height + params.jail_blocks);
                n.slashes += 1;
            }
            o.frauds.push((node, job));
        }
    }
    Ok(())
}

/// Checks fraud evidence: a record its executor really signed, the executor a registered
/// inference node not jailed, the job not punished before, and the claim: a recomputed output
/// other than the record's (validators re-executed it before admitting or voting for the
/// report), or a TEE proof that does not verify where the model requires one (checked here).
/// Returns the executor and the job.
fn check_fraud(
    o: &Overlay<'_>,
    f: &FraudEvidence,
) -> std::result::Result<(Address, JobId), String> {
    let record = &f.record;
    let job = record.verify_signatures(&o.domain).map_err(|e| {
        format!("the record does not check ({e}): it proves nothing against anyone")
    })?;
    let node = record.executor;
    let reg = o.reg();
    let Some(n) = reg.nodes.get(&node) else {
        return Err(format!("{node} is not a registered inference node"));
    };
    if reg.punished_jobs.contains(&job) {
        return Err(format!("job {job}'s record was already punished"));
    }
    if let Some(until) = n.jailed_until {
        return Err(format!("{node} is already jailed (until height {until})"));
    }
    match &f.claim {
        FraudClaim::Output { recomputed } => {
            if *recomputed == record.output_hash {
                return Err(format!(
                    "the record already claims {recomputed}: nothing differs"
                ));
            }
        }
        FraudClaim::Units { recomputed } => {
            if *recomputed == record.units {
                return Err(format!(
                    "the record already claims {recomputed} units: nothing differs"
                ));
            }
        }
        FraudClaim::TeeProof => {
            let model = reg
                .models
                .get(&record.job.request.model_id)
                .ok_or_else(|| format!("unknown model {}", record.job.request.model_id))?;
            if !model.mode.needs_tee() {
                return Err(format!(
                    "model {} ({}) requires no TEE proof",
                    record.job.request.model_id, model.name
                ));
            }
            let verifier = match o.tee {
                Some(t) => Some(tee_verifier(t, reg)?),
                None => None,
            };
            if crate::record::check_tee_proof(
                record,
                model.mode,
                verifier.as_ref(),
                n.tee_chip,
                &o.domain,
            )
            .is_ok()
            {
                return Err("the record's TEE proof holds".into());
            }
        }
    }
    Ok((node, job))
}

/// The TEE verifier of the genesis roots with the allowlist governance keeps now.
fn tee_verifier(
    t: &crate::genesis::TeeParams,
    reg: &Registry,
) -> std::result::Result<crate::attestation::TeeVerifier, String> {
    let params = crate::genesis::TeeParams {
        measurements: reg.measurements.iter().cloned().collect(),
        ..t.clone()
    };
    params
        .verifier()
        .map_err(|e| format!("the chain's TEE roots: {e}"))
}

/// Why `acc` cannot pay: what it may spend, and for a vesting account how much is locked and
/// how much vested.
fn short_of(acc: &Account, now_ms: u64) -> String {
    let spendable = acc.spendable(now_ms);
    let locked = acc.locked_in_balance(now_ms);
    match acc.vesting {
        Some(v) if locked > 0 => format!(
            "insufficient unlocked balance: {spendable} spendable of {} ({locked} locked; {} of {} vested)",
            acc.balance,
            v.vested(now_ms),
            v.amount
        ),
        _ => format!("insufficient balance: {spendable} spendable"),
    }
}

/// Takes `bps` of `who`'s bonded and unbonding stake into the community pool.
fn slash(o: &mut Overlay<'_>, who: Address, bps: u32) -> u128 {
    let mut acc = o.get(&who);
    let cut = |v: u128| v * bps as u128 / 10_000;
    let mut taken = cut(acc.bonded);
    acc.bonded -= taken;
    for u in &mut acc.unbonding {
        let c = cut(u.amount);
        u.amount -= c;
        taken += c;
    }
    acc.unbonding.retain(|u| u.amount > 0);
    o.put(who, acc);
    o.pools.community += taken;
    taken
}

/// Checks a proposal against the registry it would be applied to.
fn check_proposal(reg: &Registry, kind: &ProposalKind) -> std::result::Result<(), String> {
    match kind {
        ProposalKind::Params(changes) => reg.params.with_changes(changes).map(|_| ()),
        ProposalKind::TeeAllow(m) => {
            if reg.measurements.contains(&m.to_ascii_lowercase()) {
                return Err(format!("measurement {m} is already approved"));
            }
            Ok(())
        }
        ProposalKind::TeeRevoke(m) => {
            if !reg.measurements.contains(&m.to_ascii_lowercase()) {
                return Err(format!("measurement {m} is not on the allowlist"));
            }
            Ok(())
        }
        ProposalKind::ModelActivate(id) | ProposalKind::ModelDeactivate(id) => {
            if !reg.models.contains_key(id) {
                return Err(format!("unknown model {id}"));
            }
            Ok(())
        }
        ProposalKind::Text { .. } => Ok(()),
    }
}

/// Applies a passed proposal to the registry.
fn apply_proposal(reg: &mut Registry, kind: &ProposalKind) -> std::result::Result<(), String> {
    check_proposal(reg, kind)?;
    match kind {
        ProposalKind::Params(changes) => reg.params = reg.params.with_changes(changes)?,
        ProposalKind::TeeAllow(m) => {
            reg.measurements.insert(m.to_ascii_lowercase());
        }
        ProposalKind::TeeRevoke(m) => {
            reg.measurements.remove(&m.to_ascii_lowercase());
        }
        ProposalKind::ModelActivate(id) | ProposalKind::ModelDeactivate(id) => {
            if let Some(model) = reg.models.get_mut(id) {
                model.active = matches!(kind, ProposalKind::ModelActivate(_));
            }
        }
        ProposalKind::Text { .. } => {}
    }
    Ok(())
}

/// The end-of-block steps (see the module documentation).
fn end_block(o: &mut Overlay<'_>) -> Result<()> {
    let height = o.height;
    close_proposals(o);

    // The block reward, while the pool lasts.
    let p = o.reg().params.clone();
    let reward = p.reward_per_block.min(o.pools.rewards);
    let to_validators = reward * p.reward_validators_bps as u128 / 10_000;
    let to_nodes = reward - to_validators;
    let jobs: u128 = o.served.values().map(|n| *n as u128).sum();
    let mut paid = 0;
    for (node, n) in std::mem::take(&mut o.served) {
        let share = (to_nodes * n as u128).checked_div(jobs).unwrap_or(0);
        o.credit(node, share);
        paid += share;
    }
    o.pools.rewards -= to_validators + paid;
    o.validator_income += to_validators;

    // The validators' income, by the power of the set that decided this block.
    let income = std::mem::take(&mut o.validator_income);
    if income > 0 {
        let set = o.reg().set.clone();
        let total: u128 = set.iter().map(|(_, p)| *p as u128).sum();
        let mut shared = 0u128;
        for (v, power) in &set {
            let share = income * *power as u128 / total.max(1);
            shared += share;
            o.credit(*v, share);
        }
        // Rounding dust goes to the proposer, so the supply is conserved exactly.
        o.credit(o.proposer, income - shared);
    }

    if height.is_multiple_of(p.epoch_blocks) {
        let next = {
            let accounts = &*o;
            accounts.reg().next_set(|a| accounts.get(a).bonded)
        };
        if !next.is_empty() && next != o.reg().set {
            let reg = o.reg_mut();
            let old = std::mem::replace(&mut reg.set, next);
            reg.past_sets.push((reg.set_since, old));
            reg.set_since = height + 1;
        }
    }
    let needs_prune = {
        let reg = o.reg();
        let oldest = height.saturating_sub(reg.params.evidence_max_age_blocks);
        reg.past_sets.len() > 1
            || reg
                .past_sets
                .first()
                .is_some_and(|_| reg.set_since <= oldest)
            || reg.slashed.iter().any(|(_, h)| *h < oldest)
    };
    if needs_prune {
        o.reg_mut().prune(height);
    }
    Ok(())
}

/// Counts who signed the parent (`signers` of the set that decided it) and jails, without a
/// slash, a validator that signed too few of the last `downtime_window` blocks.
fn count_signers(o: &mut Overlay<'_>, signers: &[(Address, bool)]) {
    let p = o.reg().params.clone();
    let window = p.downtime_window as usize;
    let allowed_missed = window - (window * p.downtime_min_signed_bps as usize).div_ceil(10_000);
    // Only the set that decided the parent is tracked.
    o.liveness
        .signed
        .retain(|v, _| signers.iter().any(|(s, _)| s == v));
    let mut down = Vec::new();
    for (v, signed) in signers {
        let w = o.liveness.signed.entry(*v).or_default();
        w.push_back(*signed);
        while w.len() > window {
            w.pop_front();
        }
        let missed = w.iter().filter(|s| !**s).count();
        if w.len() == window && missed > allowed_missed {
            down.push(*v);
        }
    }
    for v in down {
        let jailed = o
            .reg()
            .validators
            .get(&v)
            .is_some_and(|x| x.jailed_until.is_some());
        o.liveness.signed.remove(&v);
        if jailed {
            continue;
        }
        let until = o.height + p.jail_blocks;
        if let Some(x) = o.reg_mut().validators.get_mut(&v) {
            x.jailed_until = Some(until);
            o.downtime_jailed.push(v);
        }
    }
}

/// Tallies and applies the proposals whose voting ends at this block.
fn close_proposals(o: &mut Overlay<'_>) {
    let height = o.height;
    let closing: Vec<u64> = o
        .reg()
        .proposals
        .values()
        .filter(|p| p.status == ProposalStatus::Voting && p.voting_end <= height)
        .map(|p| p.id)
        .collect();
    if closing.is_empty() {
        return;
    }
    let bonded: u128 = o.merged().map(|(_, a)| a.bonded).sum();
    for id in closing {
        let Some(p) = o.reg().proposals.get(&id).cloned() else {
            continue;
        };
        let mut t = Tally {
            bonded,
            ..Tally::default()
        };
        for (voter, option) in &p.votes {
            let w = o.get(voter).bonded;
            match option {
                crate::tx::VoteOption::Yes => t.yes += w,
                crate::tx::VoteOption::No => t.no += w,
                crate::tx::VoteOption::Abstain => t.abstain += w,
                crate::tx::VoteOption::Veto => t.veto += w,
            }
        }
        let params = o.reg().params.clone();
        let voted = t.yes + t.no + t.abstain + t.veto;
        let status = if voted * 10_000 < bonded * params.quorum_bps as u128 || voted == 0 {
            ProposalStatus::NoQuorum
        } else if t.veto * 10_000 >= voted * params.veto_bps as u128 {
            ProposalStatus::Vetoed
        } else if t.yes * 10_000 > (t.yes + t.no + t.veto) * params.threshold_bps as u128 {
            match apply_proposal(o.reg_mut(), &p.kind) {
                Ok(()) => ProposalStatus::Passed,
                Err(e) => ProposalStatus::Failed(e),
            }
        } else {
            ProposalStatus::Rejected
        };
        o.pools.deposits -= p.deposit;
        if status == ProposalStatus::Vetoed {
            o.pools.community += p.deposit;
        } else {
            o.credit(p.proposer, p.deposit);
        }
        if let Some(entry) = o.reg_mut().proposals.get_mut(&id) {
            entry.status = status;
            entry.tally = Some(t);
        }
    }
}

/// The leaf of a bridge withdrawal in an anchor's withdrawals root, as the EVM contract's
/// `withdrawalLeaf(id, recipient, amount)` computes it: OpenZeppelin's double-hashed leaf of
/// `abi.encode(id, recipient, amount)`. The id is the withdrawing transaction's hash.
pub fn withdrawal_leaf(id: B256, recipient: Address, amount: u128) -> B256 {
    use alloy::sol_types::SolValue;
    let inner = keccak256((id, recipient, alloy::primitives::U256::from(amount)).abi_encode());
    keccak256(inner)
}

/// Where every token is, for `accounts` and `pools` at `now_ms`.
fn supply<'a>(
    accounts: impl Iterator<Item = (&'a Address, &'a Account)>,
    pools: Pools,
    now_ms: u64,
) -> Supply {
    let mut s = Supply {
        pools,
        ..Supply::default()
    };
    for (_, a) in accounts {
        let locked = a.locked_in_balance(now_ms);
        s.locked += locked;
        s.balances += a.balance - locked;
        s.bonded += a.bonded;
        s.unbonding += a.unbonding_total();
    }
    s.total = s.balances + s.locked + s.bonded + s.unbonding + pools.total();
    s
}

/// The state root: keccak over every account in address order (address, then its encoding),
/// the registry's digest, the pools, who signed the recent blocks and the history digest.
fn state_root<'a>(
    accounts: impl Iterator<Item = (&'a Address, &'a Account)>,
    registry: B256,
    pools: &Pools,
    liveness: &Liveness,
    anchor: &AnchorLeaves,
    history: B256,
) -> B256 {
    let mut buf = Vec::new();
    for (a, acc) in accounts {
        buf.extend_from_slice(a.as_slice());
        buf.extend_from_slice(&crate::codec::encode(acc));
    }
    buf.extend_from_slice(registry.as_slice());
    buf.extend_from_slice(&crate::codec::encode(pools));
    buf.extend_from_slice(&crate::codec::encode(liveness));
    buf.extend_from_slice(&crate::codec::encode(anchor));
    buf.extend_from_slice(history.as_slice());
    keccak256(&buf)
}

/// The history digest after a block that used `nonces`, spent from `grants` and wrote `jobs`
/// (unchanged when it did none of these, so empty blocks leave it as it was).
fn next_history(
    prev: B256,
    nonces: &[((Address, u64), JobId)],
    grants: &[(B256, u128)],
    jobs: &[JobEntry],
) -> B256 {
    if nonces.is_empty() && jobs.is_empty() && grants.is_empty() {
        return prev;
    }
    let mut buf = prev.to_vec();
    buf.extend_from_slice(&crate::codec::encode(nonces));
    buf.extend_from_slice(&crate::codec::encode(jobs));
    // Appended only when there are some, so histories without grants keep their digests.
    if !grants.is_empty() {
        buf.extend_from_slice(&crate::codec::encode(grants));
    }
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
