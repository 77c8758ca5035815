//! Genesis: the fixed OPG supply and its allocation, the validator set, registered inference
//! nodes and models, and the chain parameters.

use std::collections::BTreeSet;
use std::path::Path;

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

use crate::attestation::{Product, Roots, SnpPolicy, Tcb, TeeVerifier};
use crate::error::{Error, Result};
use crate::types::{ModelId, TOTAL_SUPPLY, amount};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisAccount {
    pub address: Address,
    /// Spendable balance, base units.
    #[serde(with = "amount")]
    pub balance: u128,
    /// Bonded stake, base units (voting power for validators).
    #[serde(with = "amount", default)]
    pub stake: u128,
    /// What the allocation is for (ecosystem, team, testnet client, ...).
    #[serde(default)]
    pub label: String,
    /// Locks part of the allocation (team, investors).
    #[serde(default)]
    pub vesting: Option<Vesting>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisValidator {
    pub address: Address,
    /// libp2p peer id of the validator's node (informational; votes are checked by address).
    pub peer_id: String,
    #[serde(default)]
    pub moniker: String,
}

/// How records of a model are proven. Fixed at registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerificationMode {
    /// Validators re-execute a seeded sample and compare output hashes.
    #[serde(rename = "reexec")]
    Reexec,
    /// Every validator checks the record's SEV-SNP proof; no re-execution.
    #[serde(rename = "tee")]
    Tee,
    /// Both.
    #[serde(rename = "tee+reexec")]
    TeeReexec,
}

impl VerificationMode {
    pub fn needs_tee(self) -> bool {
        matches!(self, VerificationMode::Tee | VerificationMode::TeeReexec)
    }

    pub fn needs_reexec(self) -> bool {
        matches!(self, VerificationMode::Reexec | VerificationMode::TeeReexec)
    }

    /// The JSON name, as EIP-712 structs carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationMode::Reexec => "reexec",
            VerificationMode::Tee => "tee",
            VerificationMode::TeeReexec => "tee+reexec",
        }
    }
}

/// What the chain accepts as a TEE: the roots VCEKs must chain to, the approved guest images
/// and the oldest acceptable firmware. Required when any model's mode includes `tee`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeeParams {
    /// AMD's roots for this product (`milan`, `genoa`, `turin`)...
    #[serde(default)]
    pub product: Option<Product>,
    /// ...or a root set (ARK and ASK, PEM): a testnet's simulated TEE declares its own.
    #[serde(default)]
    pub roots_pem: Option<String>,
    /// Launch measurements (SHA-384, hex) of the approved guest images.
    pub measurements: Vec<String>,
    /// Minimum reported TCB.
    #[serde(default)]
    pub min_tcb: Tcb,
}

impl TeeParams {
    pub fn roots(&self) -> Result<Roots> {
        let roots = match (&self.product, &self.roots_pem) {
            (Some(p), None) => Roots::product(*p),
            (None, Some(pem)) => Roots::from_pem(pem.as_bytes()),
            _ => {
                return Err(Error::Genesis(
                    "tee: name exactly one of product and roots_pem".into(),
                ));
            }
        };
        roots.map_err(|e| Error::Genesis(format!("tee: {e}")))
    }

    pub fn policy(&self) -> Result<SnpPolicy> {
        if self.measurements.is_empty() {
            return Err(Error::Genesis(
                "tee: no measurements on the allowlist".into(),
            ));
        }
        let measurements = self
            .measurements
            .iter()
            .map(|m| {
                crate::attestation::parse_measurement(m).ok_or_else(|| {
                    Error::Genesis(format!("tee: measurement {m:?} is not 48 hex bytes"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SnpPolicy {
            measurements,
            min_tcb: self.min_tcb,
        })
    }

    /// The cached verifier validators use.
    pub fn verifier(&self) -> Result<TeeVerifier> {
        Ok(TeeVerifier::new(self.roots()?, self.policy()?))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: ModelId,
    pub name: String,
    /// Receives the model-owner share of every fee.
    pub owner: Address,
    /// Fee per job, base units.
    #[serde(with = "amount", alias = "price")]
    pub price_per_job: u128,
    /// Fee per unit of a job, base units: per prompt and completion token of a generating
    /// model, per input byte of the others.
    #[serde(with = "amount", default)]
    pub price_per_unit: u128,
    pub mode: VerificationMode,
}

/// An inference node registered at genesis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisInferenceNode {
    pub address: Address,
    pub peer_id: String,
    /// The models it may serve; empty means every model of the genesis.
    #[serde(default)]
    pub models: Vec<ModelId>,
    /// The SEV-SNP chip its records must be attested by (see [`crate::tx::Action`]).
    #[serde(default)]
    pub tee_chip: Option<B256>,
}

impl GenesisInferenceNode {
    /// A node without a peer id or TEE chip, serving every model of the genesis.
    pub fn new(address: Address) -> Self {
        GenesisInferenceNode {
            address,
            peer_id: String::new(),
            models: Vec::new(),
            tee_chip: None,
        }
    }
}

/// A vesting schedule: `amount` unlocks linearly over `duration_ms` from `start_ms`, nothing
/// before `start_ms + cliff_ms`. Locked tokens can be bonded, not transferred.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vesting {
    pub start_ms: u64,
    pub cliff_ms: u64,
    pub duration_ms: u64,
    #[serde(with = "amount")]
    pub amount: u128,
}

impl Vesting {
    /// How much has vested at `now_ms` (unix milliseconds).
    pub fn vested(&self, now_ms: u64) -> u128 {
        let elapsed = now_ms.saturating_sub(self.start_ms);
        if now_ms < self.start_ms || elapsed < self.cliff_ms {
            return 0;
        }
        if elapsed >= self.duration_ms {
            return self.amount;
        }
        // elapsed < duration_ms ≤ u64::MAX and amount < 2^90: the product fits in u128 when
        // scaled down first by the duration's bits beyond 38; use checked math and a wide
        // fallback so that no schedule can overflow.
        match self.amount.checked_mul(elapsed as u128) {
            Some(p) => p / self.duration_ms as u128,
            None => {
                let (q, r) = (
                    self.amount / self.duration_ms as u128,
                    self.amount % self.duration_ms as u128,
                );
                q * elapsed as u128 + r * elapsed as u128 / self.duration_ms as u128
            }
        }
    }

    /// How much is still locked at `now_ms`.
    pub fn locked(&self, now_ms: u64) -> u128 {
        self.amount - self.vested(now_ms)
    }
}

/// Tokens held by the chain itself rather than by an account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pools {
    /// Validator and inference rewards, paid out per block by `reward_per_block`.
    #[serde(with = "amount", default)]
    pub rewards: u128,
    /// Community pool: slashed stake and vetoed deposits go here; nothing is destroyed.
    #[serde(with = "amount", default)]
    pub community: u128,
    /// Deposits of proposals still being voted on.
    #[serde(with = "amount", default)]
    pub deposits: u128,
    /// The bridge reserve: the OPG that circulates on the EVM (outside its bridge contract)
    /// rather than here. A bridge deposit takes from it, a bridge withdrawal adds to it, so
    /// native circulating + EVM circulating = the supply, once nothing is in flight.
    #[serde(with = "amount", default)]
    pub bridge_reserve: u128,
    /// How many of the EVM bridge's deposits are credited (ids `0..` this): not tokens.
    #[serde(default)]
    pub bridge_deposits_credited: u64,
}

impl Pools {
    /// The tokens in the pools.
    pub fn total(&self) -> u128 {
        self.rewards + self.community + self.deposits + self.bridge_reserve
    }
}

/// Chain parameters: set at genesis, changed by governance. Amounts in base units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Share of each job fee for the inference node that ran the job, basis points.
    pub executor_bps: u32,
    /// Share for the model owner.
    pub model_owner_bps: u32,
    /// Share for validators, split by voting power (remainder to the proposer).
    pub validators_bps: u32,
    /// Share of `reexec` records validators re-execute, basis points (10000 = all).
    pub reexec_sample_bps: u32,
    pub max_block_records: u32,
    pub max_block_txs: u32,
    /// Minimum time between blocks: the proposer waits this long after the last commit.
    pub block_interval_ms: u64,
    /// How far a proposed block's timestamp may be ahead of a validator's own clock (ms); a
    /// later one is prevoted nil, so one proposer cannot push the chain's time into the future.
    pub max_clock_drift_ms: u64,
    /// The flat fee of every transaction, paid to the validators by power.
    #[serde(with = "amount")]
    pub tx_fee: u128,
    /// The validator set is recomputed after every block whose height is a multiple of this.
    pub epoch_blocks: u64,
    /// The active set is the top `max_validators` by bonded stake...
    pub max_validators: u32,
    /// ...of those not jailed with at least this much bonded.
    #[serde(with = "amount")]
    pub min_validator_stake: u128,
    /// Bonded stake an inference node needs to register and to be routed jobs.
    #[serde(with = "amount")]
    pub min_inference_stake: u128,
    /// Blocks an unbonding entry stays slashable before `Withdraw` returns it.
    pub unbonding_blocks: u64,
    /// Most unbonding entries one account may have at once.
    pub max_unbonding_entries: u32,
    /// Oldest equivocation (in blocks before the including block) that can still be punished.
    pub evidence_max_age_blocks: u64,
    /// Share of bonded and unbonding stake a double-signing validator loses.
    pub slash_double_sign_bps: u32,
    /// Share an inference node loses for a provably false record.
    pub slash_fraud_bps: u32,
    /// Blocks a jailed validator or node waits before it may `Unjail`.
    pub jail_blocks: u64,
    /// Blocks a proposal is open for votes.
    pub voting_blocks: u64,
    /// Smallest proposal deposit.
    #[serde(with = "amount")]
    pub min_deposit: u128,
    /// Share of all bonded stake that must vote.
    pub quorum_bps: u32,
    /// Share of non-abstaining votes that must be yes.
    pub threshold_bps: u32,
    /// Share of all votes that vetoes.
    pub veto_bps: u32,
    /// Taken from the rewards pool every block (while it lasts).
    #[serde(with = "amount")]
    pub reward_per_block: u128,
    /// Share of the block reward for the validators (by power); the rest goes to the inference
    /// nodes by jobs finalized in the block, and stays in the pool when there are none.
    pub reward_validators_bps: u32,
    /// Blocks over which each validator's precommits in the carried commit certificates are
    /// counted...
    pub downtime_window: u64,
    /// ...and the share of them it must be in, or be jailed (without a slash).
    pub downtime_min_signed_bps: u32,
    /// Every this many blocks a header closes an anchor: its `anchor_records_root` and
    /// `anchor_withdrawals_root` cover every record and withdrawal since the previous one, and
    /// validators post it to the EVM settlement contract.
    pub anchor_interval: u64,
}

const OPG: u128 = 10u128.pow(18);

impl Default for Params {
    fn default() -> Self {
        Params {
            executor_bps: 7000,
            model_owner_bps: 1000,
            validators_bps: 2000,
            reexec_sample_bps: 10_000,
            max_block_records: 1024,
            max_block_txs: 1024,
            block_interval_ms: 300,
            max_clock_drift_ms: 10_000,
            tx_fee: OPG / 1000,
            epoch_blocks: 100,
            max_validators: 100,
            min_validator_stake: 10_000 * OPG,
            min_inference_stake: 1_000 * OPG,
            unbonding_blocks: 2_000,
            max_unbonding_entries: 7,
            evidence_max_age_blocks: 1_000,
            slash_double_sign_bps: 500,
            slash_fraud_bps: 1_000,
            jail_blocks: 600,
            voting_blocks: 600,
            min_deposit: 1_000 * OPG,
            quorum_bps: 3_340,
            threshold_bps: 5_000,
            veto_bps: 3_340,
            reward_per_block: OPG,
            reward_validators_bps: 5_000,
            downtime_window: 100,
            downtime_min_signed_bps: 500,
            anchor_interval: 100,
        }
    }
}

impl Params {
    /// Checks the parameters as a whole; the message names the first rule broken.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.executor_bps as u64 + self.model_owner_bps as u64 + self.validators_bps as u64
            != 10_000
        {
            return Err("the fee split (executor_bps + model_owner_bps + validators_bps) must add up to 10000 basis points".into());
        }
        for (name, v) in [
            ("reexec_sample_bps", self.reexec_sample_bps),
            ("slash_double_sign_bps", self.slash_double_sign_bps),
            ("slash_fraud_bps", self.slash_fraud_bps),
            ("quorum_bps", self.quorum_bps),
            ("threshold_bps", self.threshold_bps),
            ("veto_bps", self.veto_bps),
            ("reward_validators_bps", self.reward_validators_bps),
            ("downtime_min_signed_bps", self.downtime_min_signed_bps),
        ] {
            if v > 10_000 {
                return Err(format!("{name} is at most 10000, not {v}"));
            }
        }
        for (name, v) in [
            ("max_block_records", self.max_block_records as u64),
            ("max_block_txs", self.max_block_txs as u64),
            ("epoch_blocks", self.epoch_blocks),
            ("max_validators", self.max_validators as u64),
            ("max_unbonding_entries", self.max_unbonding_entries as u64),
            ("voting_blocks", self.voting_blocks),
            ("downtime_window", self.downtime_window),
            ("threshold_bps", self.threshold_bps as u64),
            ("anchor_interval", self.anchor_interval),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.min_validator_stake < OPG {
            return Err(
                "min_validator_stake is at least 1 OPG (voting power counts whole OPG)".into(),
            );
        }
        if self.unbonding_blocks <= self.evidence_max_age_blocks {
            return Err(format!(
                "unbonding_blocks ({}) must exceed evidence_max_age_blocks ({}), or stake could leave before its offence is punished",
                self.unbonding_blocks, self.evidence_max_age_blocks
            ));
        }
        Ok(())
    }

    /// These parameters with `changes` applied: each name a field, each value its JSON text
    /// (numbers as digits, amounts as decimal digits). The result is validated as a whole.
    pub fn with_changes(
        &self,
        changes: &std::collections::BTreeMap<String, String>,
    ) -> std::result::Result<Params, String> {
        let serde_json::Value::Object(mut fields) =
            serde_json::to_value(self).map_err(|e| e.to_string())?
        else {
            return Err("parameters are not an object".into());
        };
        for (name, value) in changes {
            let Some(slot) = fields.get_mut(name) else {
                return Err(format!("no parameter is named {name:?}"));
            };
            *slot = match slot {
                serde_json::Value::String(_) => {
                    value.parse::<u128>().map_err(|e| {
                        format!("{name}: {value:?} is not an amount in base units ({e})")
                    })?;
                    serde_json::Value::String(value.clone())
                }
                _ => serde_json::Value::Number(
                    value
                        .parse::<u64>()
                        .map_err(|e| format!("{name}: {value:?} is not a whole number ({e})"))?
                        .into(),
                ),
            };
        }
        let params: Params =
            serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| e.to_string())?;
        params.validate()?;
        Ok(params)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    pub chain_id: u64,
    pub genesis_time_ms: u64,
    pub accounts: Vec<GenesisAccount>,
    /// Tokens held by the chain at genesis (rewards and community pools).
    #[serde(default)]
    pub pools: Pools,
    pub validators: Vec<GenesisValidator>,
    pub inference_nodes: Vec<GenesisInferenceNode>,
    pub models: Vec<ModelEntry>,
    #[serde(default)]
    pub params: Params,
    /// The TEE the chain trusts; `None` when no model uses attestation.
    #[serde(default)]
    pub tee: Option<TeeParams>,
    /// The EVM chain x402 payments settle on (OPG and the bridge); `None`: no job is paid by
    /// x402.
    #[serde(default)]
    pub evm: Option<crate::signing::EvmPayments>,
}

impl Genesis {
    /// Reads and validates a genesis JSON file.
    pub fn load(path: &Path) -> Result<Genesis> {
        let bytes = std::fs::read(path)?;
        let g: Genesis = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Genesis(format!("{}: {e}", path.display())))?;
        g.validate()?;
        Ok(g)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The hash that block 1 names as its parent; it commits to the whole genesis.
    pub fn hash(&self) -> B256 {
        keccak256(crate::codec::encode(self))
    }

    /// The signing domain of the network this genesis starts: its chain id and its hash.
    /// Computing it encodes and hashes the whole genesis; keep the result.
    pub fn domain(&self) -> crate::signing::Domain {
        crate::signing::Domain {
            chain_id: self.chain_id,
            salt: self.hash(),
            payments: self.evm,
        }
    }

    /// Checks supply, uniqueness, stakes, vesting and parameters.
    pub fn validate(&self) -> Result<()> {
        let mut seen = BTreeSet::new();
        let mut total: u128 = self.pools.total();
        for a in &self.accounts {
            if !seen.insert(a.address) {
                return Err(Error::Genesis(format!(
                    "account {} listed twice",
                    a.address
                )));
            }
            total = total
                .checked_add(a.balance)
                .and_then(|t| t.checked_add(a.stake))
                .ok_or_else(|| Error::Genesis("allocations overflow".into()))?;
            if let Some(v) = &a.vesting {
                if v.amount > a.balance + a.stake {
                    return Err(Error::Genesis(format!(
                        "account {} vests {} but holds {}",
                        a.address,
                        v.amount,
                        a.balance + a.stake
                    )));
                }
                if v.duration_ms == 0 || v.cliff_ms > v.duration_ms {
                    return Err(Error::Genesis(format!(
                        "account {}: a vesting schedule needs a duration and a cliff within it",
                        a.address
                    )));
                }
            }
        }
        if total != TOTAL_SUPPLY {
            return Err(Error::Genesis(format!(
                "allocations and pools sum to {total} base units, the supply is {TOTAL_SUPPLY}"
            )));
        }
        self.params.validate().map_err(Error::Genesis)?;
        if self.validators.is_empty() {
            return Err(Error::Genesis("no validators".into()));
        }
        let mut peers = BTreeSet::new();
        let mut vals = BTreeSet::new();
        for v in &self.validators {
            if !vals.insert(v.address) {
                return Err(Error::Genesis(format!(
                    "validator {} listed twice",
                    v.address
                )));
            }
            let stake = self.stake_of(&v.address);
            if stake == 0 {
                return Err(Error::Genesis(format!(
                    "validator {} has no stake",
                    v.address
                )));
            }
            if stake < self.params.min_validator_stake {
                return Err(Error::Genesis(format!(
                    "validator {} has {stake} staked, below min_validator_stake {}",
                    v.address, self.params.min_validator_stake
                )));
            }
            if !v.peer_id.is_empty() && !peers.insert(v.peer_id.clone()) {
                return Err(Error::Genesis(format!(
                    "peer id {} listed twice",
                    v.peer_id
                )));
            }
        }
        let mut models = BTreeSet::new();
        for m in &self.models {
            if !models.insert(m.id) {
                return Err(Error::Genesis(format!("model {} listed twice", m.id)));
            }
            if m.mode.needs_tee() && self.tee.is_none() {
                return Err(Error::Genesis(format!(
                    "model {} ({}) requires attestation but the genesis has no tee section",
                    m.name, m.id
                )));
            }
        }
        let mut nodes = BTreeSet::new();
        for n in &self.inference_nodes {
            if !nodes.insert(n.address) || vals.contains(&n.address) {
                return Err(Error::Genesis(format!(
                    "inference node {} listed twice or also a validator",
                    n.address
                )));
            }
            if !n.peer_id.is_empty() && !peers.insert(n.peer_id.clone()) {
                return Err(Error::Genesis(format!(
                    "peer id {} listed twice",
                    n.peer_id
                )));
            }
            let stake = self.stake_of(&n.address);
            if stake < self.params.min_inference_stake {
                return Err(Error::Genesis(format!(
                    "inference node {} has {stake} staked, below min_inference_stake {}",
                    n.address, self.params.min_inference_stake
                )));
            }
            if let Some(m) = n.models.iter().find(|m| !models.contains(*m)) {
                return Err(Error::Genesis(format!(
                    "inference node {} serves the unknown model {m}",
                    n.address
                )));
            }
        }
        if let Some(tee) = &self.tee {
            tee.roots()?;
            tee.policy()?;
        }
        Ok(())
    }

    pub fn stake_of(&self, address: &Address) -> u128 {
        self.accounts
            .iter()
            .find(|a| a.address == *address)
            .map_or(0, |a| a.stake)
    }

    pub fn model(&self, id: &ModelId) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == *id)
    }

    /// Validators with their voting power at genesis. Power is stake in whole OPG (fits in
    /// u64).
    pub fn validator_powers(&self) -> Vec<(Address, u64)> {
        self.validators
            .iter()
            .map(|v| (v.address, power_of(self.stake_of(&v.address))))
            .collect()
    }
}

/// Voting power of a bonded stake: whole OPG, at least 1.
pub fn power_of(bonded: u128) -> u64 {
    u64::try_from(bonded / OPG).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Genesis {
        let k = |i| crate::signing::seeded_key(42, i).address();
        let stake = 1_000_000 * 10u128.pow(18);
        let client_balance = 1_000 * 10u128.pow(18);
        let mut accounts: Vec<GenesisAccount> = (0..4)
            .map(|i| GenesisAccount {
                address: k(i),
                balance: 0,
                stake,
                label: "validator".into(),
                vesting: None,
            })
            .collect();
        accounts.push(GenesisAccount {
            address: k(10),
            balance: client_balance,
            stake: 0,
            label: "client".into(),
            vesting: None,
        });
        let node_stake = Params::default().min_inference_stake;
        accounts.push(GenesisAccount {
            address: k(20),
            balance: 0,
            stake: node_stake,
            label: "inference".into(),
            vesting: None,
        });
        let pools = Pools {
            rewards: 1_000_000 * OPG,
            community: 1_000 * OPG,
            ..Pools::default()
        };
        let rest = TOTAL_SUPPLY - 4 * stake - client_balance - node_stake - pools.total();
        accounts.push(GenesisAccount {
            address: k(30),
            balance: rest,
            stake: 0,
            label: "ecosystem".into(),
            vesting: None,
        });
        Genesis {
            chain_id: 1337,
            genesis_time_ms: 1_700_000_000_000,
            accounts,
            pools,
            validators: (0..4)
                .map(|i| GenesisValidator {
                    address: k(i),
                    peer_id: format!("peer-{i}"),
                    moniker: format!("v{i}"),
                })
                .collect(),
            inference_nodes: vec![GenesisInferenceNode {
                peer_id: "peer-20".into(),
                ..GenesisInferenceNode::new(k(20))
            }],
            models: vec![ModelEntry {
                id: ModelId([1; 32]),
                name: "m".into(),
                owner: k(30),
                price_per_job: 10u128.pow(16),
                price_per_unit: 0,
                mode: VerificationMode::Reexec,
            }],
            params: Params::default(),
            tee: None,
            evm: None,
        }
    }

    #[test]
    fn sample_is_valid_and_round_trips() {
        let g = sample();
        g.validate().unwrap();
        let back: Genesis = serde_json::from_str(&g.to_json()).unwrap();
        assert_eq!(back, g);
        assert_eq!(g.validator_powers()[0].1, 1_000_000);
    }

    #[test]
    fn bad_genesis_is_refused() {
        let mut g = sample();
        g.accounts[6].balance += 1;
        assert!(g.validate().unwrap_err().to_string().contains("supply"));
        let mut g = sample();
        g.params.executor_bps = 1;
        assert!(g.validate().is_err());
        let mut g = sample();
        g.validators.push(g.validators[0].clone());
        assert!(g.validate().is_err());
        let mut g = sample();
        g.validators.push(GenesisValidator {
            address: Address::ZERO,
            peer_id: String::new(),
            moniker: String::new(),
        });
        assert!(g.validate().unwrap_err().to_string().contains("no stake"));
    }

    #[test]
    fn verification_modes_and_tee_section() {
        let json = |m: VerificationMode| serde_json::to_string(&m).unwrap();
        assert_eq!(json(VerificationMode::TeeReexec), "\"tee+reexec\"");
        assert_eq!(json(VerificationMode::Tee), "\"tee\"");
        assert!(serde_json::from_str::<VerificationMode>("\"tee-reexec\"").is_err());
        let mut g = sample();
        g.models[0].mode = VerificationMode::Tee;
        assert!(
            g.validate()
                .unwrap_err()
                .to_string()
                .contains("no tee section")
        );
        let tee = TeeParams {
            product: Some(Product::Milan),
            roots_pem: None,
            measurements: vec!["ab".repeat(48)],
            min_tcb: Tcb::default(),
        };
        g.tee = Some(tee.clone());
        g.validate().unwrap();
        let back: Genesis = serde_json::from_str(&g.to_json()).unwrap();
        assert_eq!(back, g);
        for bad in [
            TeeParams {
                measurements: vec![],
                ..tee.clone()
            },
            TeeParams {
                measurements: vec!["ab".repeat(47)],
                ..tee.clone()
            },
            TeeParams {
                measurements: vec!["zz".repeat(48)],
                ..tee.clone()
            },
            TeeParams {
                product: None,
                ..tee.clone()
            },
            TeeParams {
                roots_pem: Some(String::new()),
                ..tee.clone()
            },
            TeeParams {
                product: None,
                roots_pem: Some("-----BEGIN CERTIFICATE-----\nxx".into()),
                ..tee.clone()
            },
        ] {
            g.tee = Some(bad);
            assert!(matches!(g.validate(), Err(Error::Genesis(_))));
        }
    }

    #[test]
    fn garbage_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("genesis.json");
        std::fs::write(&p, b"{\"chain_id\": 1, \x00\xff").unwrap();
        assert!(matches!(Genesis::load(&p), Err(Error::Genesis(_))));
        assert!(Genesis::load(&dir.path().join("missing.json")).is_err());
    }
}
