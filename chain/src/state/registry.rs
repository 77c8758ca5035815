//! The chain's registries: validators and the active set, inference nodes, models, governance
//! proposals, the TEE measurement allowlist and the parameters. Small next to the accounts and
//! changed by few blocks: a block that changes any of it carries a new copy, and the state root
//! covers its digest.

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

use crate::evidence::Evidence;
use crate::genesis::{Genesis, Params, VerificationMode, power_of};
use crate::tx::{ProposalKind, VoteOption};
use crate::types::{Height, ModelId, amount};

/// A registered validator. It is in the active set when [`Registry::set`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validator {
    pub peer_id: String,
    pub moniker: String,
    /// Jailed (out of the set from the next epoch) until it sends `Unjail` at or after this
    /// height.
    pub jailed_until: Option<Height>,
    /// How many times it was slashed.
    pub slashes: u32,
}

/// A registered inference node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceNode {
    pub peer_id: String,
    pub models: Vec<ModelId>,
    pub tee_chip: Option<B256>,
    pub jailed_until: Option<Height>,
    pub slashes: u32,
}

/// A registered model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub name: String,
    /// Earns the `model_owner_bps` share of the model's fees.
    pub owner: Address,
    pub mode: VerificationMode,
    #[serde(with = "amount")]
    pub price_per_job: u128,
    /// Per unit of a job ([`crate::InferenceRecord::units`]): per prompt and completion token
    /// of a generating model, per input byte of the others.
    #[serde(with = "amount")]
    pub price_per_unit: u128,
    /// Governance can deactivate a model: its jobs are then refused.
    pub active: bool,
}

impl Model {
    /// The fee of a job of `units` units (saturating: a price no client can pay).
    pub fn price(&self, units: u64) -> u128 {
        self.price_per_unit
            .saturating_mul(units as u128)
            .saturating_add(self.price_per_job)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    Voting,
    /// Passed and applied at the closing block.
    Passed,
    Rejected,
    /// Vetoed: the deposit went to the community pool.
    Vetoed,
    /// Too little of the bonded stake voted.
    NoQuorum,
    /// Passed, but could not be applied (the chain changed meanwhile); the reason.
    Failed(String),
}

/// Votes counted at the end of a proposal's period, by bonded stake at that block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    #[serde(with = "amount")]
    pub yes: u128,
    #[serde(with = "amount")]
    pub no: u128,
    #[serde(with = "amount")]
    pub abstain: u128,
    #[serde(with = "amount")]
    pub veto: u128,
    /// All bonded stake at the closing block.
    #[serde(with = "amount")]
    pub bonded: u128,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: u64,
    pub proposer: Address,
    pub kind: ProposalKind,
    #[serde(with = "amount")]
    pub deposit: u128,
    pub submitted: Height,
    /// The last height at which votes count; the proposal closes at the end of this block.
    pub voting_end: Height,
    /// Each voter's last vote.
    pub votes: BTreeMap<Address, VoteOption>,
    pub status: ProposalStatus,
    pub tally: Option<Tally>,
}

/// Everything but accounts, pools and the job history that decides future transactions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub params: Params,
    pub validators: BTreeMap<Address, Validator>,
    /// The validator set in force from height `set_since` on: (address, voting power), power
    /// being whole OPG bonded when the set was computed.
    pub set: Vec<(Address, u64)>,
    pub set_since: Height,
    /// Earlier sets still within the evidence age, by their first height.
    pub past_sets: Vec<(Height, Vec<(Address, u64)>)>,
    pub nodes: BTreeMap<Address, InferenceNode>,
    pub models: BTreeMap<ModelId, Model>,
    pub proposals: BTreeMap<u64, Proposal>,
    pub next_proposal: u64,
    /// Approved TEE launch measurements (lowercase hex).
    pub measurements: BTreeSet<String>,
    /// (offender, height) already punished for equivocation, within the evidence age.
    pub slashed: BTreeSet<(Address, Height)>,
    /// Jobs whose false record was punished.
    pub punished_jobs: BTreeSet<crate::types::JobId>,
}

impl Registry {
    pub fn from_genesis(g: &Genesis) -> Registry {
        let all_models: Vec<ModelId> = g.models.iter().map(|m| m.id).collect();
        Registry {
            params: g.params.clone(),
            validators: g
                .validators
                .iter()
                .map(|v| {
                    (
                        v.address,
                        Validator {
                            peer_id: v.peer_id.clone(),
                            moniker: v.moniker.clone(),
                            jailed_until: None,
                            slashes: 0,
                        },
                    )
                })
                .collect(),
            set: g.validator_powers(),
            set_since: 1,
            past_sets: Vec::new(),
            nodes: g
                .inference_nodes
                .iter()
                .map(|n| {
                    (
                        n.address,
                        InferenceNode {
                            peer_id: n.peer_id.clone(),
                            models: if n.models.is_empty() {
                                all_models.clone()
                            } else {
                                n.models.clone()
                            },
                            tee_chip: n.tee_chip,
                            jailed_until: None,
                            slashes: 0,
                        },
                    )
                })
                .collect(),
            models: g
                .models
                .iter()
                .map(|m| {
                    (
                        m.id,
                        Model {
                            name: m.name.clone(),
                            owner: m.owner,
                            mode: m.mode,
                            price_per_job: m.price_per_job,
                            price_per_unit: m.price_per_unit,
                            active: true,
                        },
                    )
                })
                .collect(),
            proposals: BTreeMap::new(),
            next_proposal: 1,
            measurements: g
                .tee
                .iter()
                .flat_map(|t| t.measurements.iter().map(|m| m.to_ascii_lowercase()))
                .collect(),
            slashed: BTreeSet::new(),
            punished_jobs: BTreeSet::new(),
        }
    }

    /// keccak of the registry's encoding: what the state root commits to.
    pub fn digest(&self) -> B256 {
        keccak256(crate::codec::encode(self))
    }

    /// The validator set in force at `height`, if the registry still knows it (sets older
    /// than the evidence age are forgotten; the store keeps every one).
    pub fn set_at(&self, height: Height) -> Option<&[(Address, u64)]> {
        if height >= self.set_since {
            return Some(&self.set);
        }
        let mut found = None;
        for (since, set) in &self.past_sets {
            if *since <= height {
                found = Some(set.as_slice());
            }
        }
        found
    }

    /// Whether `peer_id` names a registered validator or inference node.
    pub fn peer_taken(&self, peer_id: &str) -> bool {
        self.validators.values().any(|v| v.peer_id == peer_id)
            || self.nodes.values().any(|n| n.peer_id == peer_id)
    }

    /// Why `node` may not settle or be routed a job of `model` (given its bonded stake), or
    /// `None` when it may.
    pub fn refuse_executor(&self, node: &Address, model: &ModelId, bonded: u128) -> Option<String> {
        let Some(n) = self.nodes.get(node) else {
            return Some(format!("{node} is not a registered inference node"));
        };
        if let Some(h) = n.jailed_until {
            return Some(format!(
                "inference node {node} is jailed (until height {h} at least)"
            ));
        }
        if bonded < self.params.min_inference_stake {
            return Some(format!(
                "inference node {node} has {bonded} bonded, below the minimum {}",
                self.params.min_inference_stake
            ));
        }
        if !n.models.contains(model) {
            return Some(format!(
                "inference node {node} is not registered for model {model}"
            ));
        }
        None
    }

    /// The model if jobs of it may be settled.
    pub fn active_model(&self, id: &ModelId) -> Result<&Model, String> {
        match self.models.get(id) {
            None => Err(format!("unknown model {id}")),
            Some(m) if !m.active => Err(format!("model {id} ({}) is deactivated", m.name)),
            Some(m) => Ok(m),
        }
    }

    /// The set the chain moves to at an epoch boundary: registered validators that are not
    /// jailed, with at least `min_validator_stake` bonded, the top `max_validators` by bonded
    /// stake (ties by address). Empty when nobody qualifies (the caller keeps the old set).
    pub fn next_set(&self, bonded: impl Fn(&Address) -> u128) -> Vec<(Address, u64)> {
        let p = &self.params;
        let mut candidates: Vec<(u128, Address)> = self
            .validators
            .iter()
            .filter(|(_, v)| v.jailed_until.is_none())
            .map(|(a, _)| (bonded(a), *a))
            .filter(|(b, _)| *b >= p.min_validator_stake)
            .collect();
        candidates.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
        candidates.truncate(p.max_validators as usize);
        let mut set: Vec<(Address, u64)> = candidates
            .into_iter()
            .map(|(b, a)| (a, power_of(b)))
            .collect();
        set.sort_by_key(|(a, _)| *a);
        set
    }

    /// Forgets sets and punished offences older than the evidence age at `height`.
    pub(crate) fn prune(&mut self, height: Height) {
        let oldest = height.saturating_sub(self.params.evidence_max_age_blocks);
        // A past set is needed while any height it covered is within the age: it covered up
        // to the next set's first height.
        let mut keep_from = 0;
        for i in 0..self.past_sets.len() {
            let end = self
                .past_sets
                .get(i + 1)
                .map_or(self.set_since, |(since, _)| *since);
            if end <= oldest {
                keep_from = i + 1;
            }
        }
        self.past_sets.drain(..keep_from);
        self.slashed.retain(|(_, h)| *h >= oldest);
    }

    /// Checks equivocation evidence reported in a block at `height`: of this height or an
    /// earlier one within the evidence age (a validator sees a double vote while its height is
    /// being decided, and reports it for the next block), by a validator of the set at its
    /// height, conflicting and signed, not punished before.
    pub fn check_evidence(
        &self,
        e: &Evidence,
        height: Height,
        domain: &crate::signing::Domain,
    ) -> Result<(), String> {
        let at = e.height();
        if at > height {
            return Err(format!(
                "evidence of height {at} is after this block ({height})"
            ));
        }
        if height - at > self.params.evidence_max_age_blocks {
            return Err(format!(
                "evidence of height {at} is older than {} blocks",
                self.params.evidence_max_age_blocks
            ));
        }
        let set = self
            .set_at(at)
            .ok_or_else(|| format!("the validator set of height {at} is no longer known"))?;
        e.verify(set, domain).map_err(|e| e.to_string())?;
        if self.slashed.contains(&(e.offender(), at)) {
            return Err(format!(
                "{} was already punished for height {at}",
                e.offender()
            ));
        }
        // Jailed: punished once for this spell of misbehaviour (a double-signer's later
        // heights are not slashed again, as Cosmos tombstones).
        if let Some(until) = self
            .validators
            .get(&e.offender())
            .and_then(|v| v.jailed_until)
        {
            return Err(format!(
                "{} is already jailed (until height {until})",
                e.offender()
            ));
        }
        Ok(())
    }
}
