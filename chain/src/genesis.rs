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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisValidator {
    pub address: Address,
    /// libp2p peer id of the validator's node (informational; votes are checked by address).
    pub peer_id: String,
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
    #[serde(with = "amount")]
    pub price: u128,
    pub mode: VerificationMode,
}

/// Governance parameters (fixed at genesis for now).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    /// Share of each fee for the inference node that ran the job, basis points.
    pub executor_bps: u32,
    /// Share for the model owner.
    pub model_owner_bps: u32,
    /// Share for validators, split by stake (remainder to the proposer).
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
}

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
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    pub chain_id: u64,
    pub genesis_time_ms: u64,
    pub accounts: Vec<GenesisAccount>,
    pub validators: Vec<GenesisValidator>,
    pub inference_nodes: Vec<Address>,
    pub models: Vec<ModelEntry>,
    #[serde(default)]
    pub params: Params,
    /// The TEE the chain trusts; `None` when no model uses attestation.
    #[serde(default)]
    pub tee: Option<TeeParams>,
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
        }
    }

    /// Checks supply, uniqueness, stakes and parameters.
    pub fn validate(&self) -> Result<()> {
        let mut seen = BTreeSet::new();
        let mut total: u128 = 0;
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
        }
        if total != TOTAL_SUPPLY {
            return Err(Error::Genesis(format!(
                "allocations sum to {total} base units, the supply is {TOTAL_SUPPLY}"
            )));
        }
        if self.validators.is_empty() {
            return Err(Error::Genesis("no validators".into()));
        }
        let mut vals = BTreeSet::new();
        for v in &self.validators {
            if !vals.insert(v.address) {
                return Err(Error::Genesis(format!(
                    "validator {} listed twice",
                    v.address
                )));
            }
            if self.stake_of(&v.address) == 0 {
                return Err(Error::Genesis(format!(
                    "validator {} has no stake",
                    v.address
                )));
            }
        }
        let p = &self.params;
        if p.executor_bps + p.model_owner_bps + p.validators_bps != 10_000 {
            return Err(Error::Genesis(
                "fee split must add up to 10000 basis points".into(),
            ));
        }
        if p.reexec_sample_bps > 10_000 {
            return Err(Error::Genesis("reexec_sample_bps is at most 10000".into()));
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

    pub fn is_inference_node(&self, a: &Address) -> bool {
        self.inference_nodes.contains(a)
    }

    /// Validators with their voting power. Power is stake in whole OPG (fits in u64).
    pub fn validator_powers(&self) -> Vec<(Address, u64)> {
        self.validators
            .iter()
            .map(|v| {
                let whole = self.stake_of(&v.address) / 10u128.pow(18);
                (v.address, u64::try_from(whole).unwrap_or(u64::MAX).max(1))
            })
            .collect()
    }
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
            })
            .collect();
        accounts.push(GenesisAccount {
            address: k(10),
            balance: client_balance,
            stake: 0,
            label: "client".into(),
        });
        accounts.push(GenesisAccount {
            address: k(20),
            balance: 0,
            stake: 0,
            label: "inference".into(),
        });
        let rest = TOTAL_SUPPLY - 4 * stake - client_balance;
        accounts.push(GenesisAccount {
            address: k(30),
            balance: rest,
            stake: 0,
            label: "ecosystem".into(),
        });
        Genesis {
            chain_id: 1337,
            genesis_time_ms: 1_700_000_000_000,
            accounts,
            validators: (0..4)
                .map(|i| GenesisValidator {
                    address: k(i),
                    peer_id: String::new(),
                })
                .collect(),
            inference_nodes: vec![k(20)],
            models: vec![ModelEntry {
                id: ModelId([1; 32]),
                name: "m".into(),
                owner: k(30),
                price: 10u128.pow(16),
                mode: VerificationMode::Reexec,
            }],
            params: Params::default(),
            tee: None,
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
