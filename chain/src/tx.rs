//! Transactions: everything but an inference record that changes the chain's state.
//!
//! Every transaction is one EIP-712 struct, signed by its sender (`from`) under the network's
//! domain (see [`crate::signing::Domain`]), with the sender's sequential `nonce` and the most
//! it agrees to pay as a fee (`maxFee`). The fee charged is the chain parameter `tx_fee` at
//! inclusion; a transaction is included only if its sender can pay it, and then pays it even
//! when its action fails. The struct per action, as a wallet signs it, is in
//! [`crate::signing::typed`]; the README lists them.
//!
//! Encodings: JSON (HTTP, files) and bincode (wire, disk) both come from the derived serde
//! forms: `{"from", "nonce", "max_fee", "action": {"<kind>": {..}}, "signature"}`, the action
//! externally tagged, which bincode encodes as a variant index. Variants are only ever
//! appended.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::evidence::{Evidence, FraudEvidence};
use crate::genesis::VerificationMode;
use crate::signing::{self, Domain, PrivateKeySigner, typed};
use crate::types::{ModelId, Sig, amount};

/// Longest libp2p peer id (text form) a registration may name.
pub const MAX_PEER_ID_LEN: usize = 128;
/// Longest validator moniker or model name.
pub const MAX_NAME_LEN: usize = 64;
/// Largest model manifest a registration may carry (the manifest lists file names and hashes).
pub const MAX_MANIFEST_LEN: usize = 16 * 1024;
/// Most models one inference node may register for.
pub const MAX_NODE_MODELS: usize = 64;
/// Largest text (title plus body) of a proposal.
pub const MAX_PROPOSAL_TEXT: usize = 4 * 1024;
/// Most parameters one proposal may change.
pub const MAX_PARAM_CHANGES: usize = 32;

/// A vote's choice, as Cosmos SDK's governance has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteOption {
    Yes,
    No,
    Abstain,
    /// No, and the deposit goes to the community pool if a third of the votes say so.
    Veto,
}

impl VoteOption {
    pub fn as_str(self) -> &'static str {
        match self {
            VoteOption::Yes => "yes",
            VoteOption::No => "no",
            VoteOption::Abstain => "abstain",
            VoteOption::Veto => "veto",
        }
    }
}

impl std::str::FromStr for VoteOption {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "yes" => VoteOption::Yes,
            "no" => VoteOption::No,
            "abstain" => VoteOption::Abstain,
            "veto" => VoteOption::Veto,
            _ => {
                return Err(Error::Invalid {
                    field: "vote option",
                    reason: format!("{s:?} is not yes, no, abstain or veto"),
                });
            }
        })
    }
}

/// What a governance proposal does when it passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalKind {
    /// Sets chain parameters, by name (the names of [`crate::Params`]' fields) to values in
    /// their JSON text form (`"6000"`, amounts as decimal strings). The parameters after the
    /// change must be valid as a whole (e.g. the fee split adds up to 10,000 basis points).
    Params(BTreeMap<String, String>),
    /// Adds a launch measurement (SHA-384, 96 hex digits) to the TEE allowlist.
    TeeAllow(String),
    /// Removes one.
    TeeRevoke(String),
    ModelActivate(ModelId),
    ModelDeactivate(ModelId),
    /// Changes nothing; records the community's view.
    Text {
        title: String,
        body: String,
    },
}

impl ProposalKind {
    /// The EIP-712 form: a kind name and a change string.
    fn typed_parts(&self) -> (&'static str, String) {
        match self {
            // A BTreeMap serialises in key order: one string per change set.
            ProposalKind::Params(p) => ("params", serde_json::to_string(p).unwrap_or_default()),
            ProposalKind::TeeAllow(m) => ("tee_allow", m.clone()),
            ProposalKind::TeeRevoke(m) => ("tee_revoke", m.clone()),
            ProposalKind::ModelActivate(id) => ("model_activate", id.to_string()),
            ProposalKind::ModelDeactivate(id) => ("model_deactivate", id.to_string()),
            ProposalKind::Text { title, body } => (
                "text",
                serde_json::to_string(&serde_json::json!({ "title": title, "body": body }))
                    .unwrap_or_default(),
            ),
        }
    }

    fn check_shape(&self) -> Result<()> {
        let bad = |reason: String| Error::Invalid {
            field: "proposal",
            reason,
        };
        match self {
            ProposalKind::Params(p) => {
                if p.is_empty() || p.len() > MAX_PARAM_CHANGES {
                    return Err(bad(format!(
                        "a parameter change names 1 to {MAX_PARAM_CHANGES} parameters, not {}",
                        p.len()
                    )));
                }
                let text: usize = p.iter().map(|(k, v)| k.len() + v.len()).sum();
                if text > MAX_PROPOSAL_TEXT {
                    return Err(bad("parameter change too long".into()));
                }
            }
            ProposalKind::TeeAllow(m) | ProposalKind::TeeRevoke(m) => {
                if crate::attestation::parse_measurement(m).is_none() {
                    return Err(bad(format!("measurement {m:?} is not 48 hex bytes")));
                }
            }
            ProposalKind::ModelActivate(_) | ProposalKind::ModelDeactivate(_) => {}
            ProposalKind::Text { title, body } => {
                if title.is_empty() || title.len() + body.len() > MAX_PROPOSAL_TEXT {
                    return Err(bad(format!(
                        "a text proposal has a title and at most {MAX_PROPOSAL_TEXT} bytes"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Transfer {
        to: Address,
        #[serde(with = "amount")]
        amount: u128,
    },
    /// Moves `amount` from the balance (locked tokens included) into bonded stake.
    Bond {
        #[serde(with = "amount")]
        amount: u128,
    },
    /// Starts unbonding `amount`: it stays slashable for `unbonding_blocks`, then `Withdraw`
    /// returns it to the balance.
    Unbond {
        #[serde(with = "amount")]
        amount: u128,
    },
    /// Returns every matured unbonding entry to the balance.
    Withdraw,
    RegisterValidator {
        peer_id: String,
        moniker: String,
    },
    RegisterInferenceNode {
        peer_id: String,
        models: Vec<ModelId>,
        /// The SEV-SNP chip the node's records must be attested by (its chip id hashed, or its
        /// VCEK's hash); `None` for a node without a TEE.
        tee_chip: Option<B256>,
    },
    RegisterModel {
        model_id: ModelId,
        name: String,
        /// The model's manifest (compact JSON of its files' names and hashes): its keccak must
        /// be `model_id`.
        manifest: String,
        mode: VerificationMode,
        #[serde(with = "amount")]
        price_per_job: u128,
        /// Per byte of input.
        #[serde(with = "amount")]
        price_per_unit: u128,
    },
    Propose {
        kind: ProposalKind,
        #[serde(with = "amount")]
        deposit: u128,
    },
    Vote {
        proposal: u64,
        option: VoteOption,
    },
    Unjail,
    /// Proof that a validator signed two conflicting consensus messages.
    ReportEvidence(Evidence),
    /// Proof that an inference node signed a false record.
    ReportFraud(Box<FraudEvidence>),
    /// Credits deposit `id` of the EVM bridge (`Settlement.deposits(id)`): `amount` leaves the
    /// bridge reserve for `recipient`. Sent by a validator; every validator checks it against
    /// its own EVM RPC before voting for a block with it; deposits are credited in id order,
    /// each once.
    BridgeDeposit {
        id: u64,
        /// Who locked the tokens on the EVM.
        from: Address,
        recipient: Address,
        #[serde(with = "amount")]
        amount: u128,
    },
    /// Moves `amount` of the sender's balance into the bridge reserve for `recipient` on the
    /// EVM: the withdrawal (id = this transaction's hash) joins the next anchor's withdrawals
    /// root, against which `Settlement.withdraw` releases the ERC-20 once. (`Withdraw` is
    /// unbonding's.)
    BridgeWithdraw {
        recipient: Address,
        #[serde(with = "amount")]
        amount: u128,
    },
}

impl Action {
    /// The action's name in JSON and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Transfer { .. } => "transfer",
            Action::Bond { .. } => "bond",
            Action::Unbond { .. } => "unbond",
            Action::Withdraw => "withdraw",
            Action::RegisterValidator { .. } => "register_validator",
            Action::RegisterInferenceNode { .. } => "register_inference_node",
            Action::RegisterModel { .. } => "register_model",
            Action::Propose { .. } => "propose",
            Action::Vote { .. } => "vote",
            Action::Unjail => "unjail",
            Action::ReportEvidence(_) => "report_evidence",
            Action::ReportFraud(_) => "report_fraud",
            Action::BridgeDeposit { .. } => "bridge_deposit",
            Action::BridgeWithdraw { .. } => "bridge_withdraw",
        }
    }

    /// What the action takes from the sender's balance besides the fee.
    pub fn spends(&self) -> u128 {
        match self {
            Action::Transfer { amount, .. }
            | Action::Bond { amount }
            | Action::BridgeWithdraw { amount, .. } => *amount,
            Action::Propose { deposit, .. } => *deposit,
            _ => 0,
        }
    }

    /// Size limits and formats that need no state: checked before a transaction is relayed.
    fn check_shape(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| Error::Invalid { field, reason };
        let peer = |p: &String| {
            if p.is_empty() || p.len() > MAX_PEER_ID_LEN {
                return Err(bad(
                    "peer_id",
                    format!("1 to {MAX_PEER_ID_LEN} bytes, not {}", p.len()),
                ));
            }
            Ok(())
        };
        let name = |field: &'static str, n: &String| {
            if n.is_empty() || n.len() > MAX_NAME_LEN {
                return Err(bad(
                    field,
                    format!("1 to {MAX_NAME_LEN} bytes, not {}", n.len()),
                ));
            }
            Ok(())
        };
        match self {
            Action::RegisterValidator { peer_id, moniker } => {
                peer(peer_id)?;
                name("moniker", moniker)
            }
            Action::RegisterInferenceNode {
                peer_id, models, ..
            } => {
                peer(peer_id)?;
                if models.is_empty() || models.len() > MAX_NODE_MODELS {
                    return Err(bad(
                        "models",
                        format!("1 to {MAX_NODE_MODELS} models, not {}", models.len()),
                    ));
                }
                Ok(())
            }
            Action::RegisterModel {
                model_id,
                name: n,
                manifest,
                ..
            } => {
                name("name", n)?;
                if manifest.len() > MAX_MANIFEST_LEN {
                    return Err(bad(
                        "manifest",
                        format!("{} bytes, at most {MAX_MANIFEST_LEN}", manifest.len()),
                    ));
                }
                let id = ModelId(keccak256(manifest.as_bytes()).0);
                if id != *model_id {
                    return Err(bad(
                        "manifest",
                        format!("hashes to {id}, not to the model id {model_id}"),
                    ));
                }
                Ok(())
            }
            Action::Propose { kind, .. } => kind.check_shape(),
            Action::BridgeDeposit {
                recipient, amount, ..
            }
            | Action::BridgeWithdraw { recipient, amount } => {
                if *amount == 0 {
                    return Err(bad("amount", "0".into()));
                }
                if recipient.is_zero() {
                    return Err(bad("recipient", "the zero address".into()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A transaction before it is signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsignedTx {
    pub from: Address,
    /// The sender's account nonce: transactions apply strictly in nonce order.
    pub nonce: u64,
    /// The most the sender pays as the fee; the fee charged is the chain's `tx_fee`.
    #[serde(with = "amount")]
    pub max_fee: u128,
    pub action: Action,
}

/// A signed transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tx {
    pub from: Address,
    pub nonce: u64,
    #[serde(with = "amount")]
    pub max_fee: u128,
    pub action: Action,
    pub signature: Sig,
}

impl UnsignedTx {
    /// The EIP-712 signing hash: the transaction's hash.
    pub fn signing_hash(&self, domain: &Domain) -> B256 {
        let (from, nonce, max_fee) = (self.from, self.nonce, self.max_fee);
        use alloy::sol_types::SolStruct;
        let d = &domain.eip712();
        match &self.action {
            Action::Transfer { to, amount } => typed::Transfer {
                from,
                to: *to,
                amount: *amount,
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::Bond { amount } => typed::Bond {
                from,
                amount: *amount,
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::Unbond { amount } => typed::Unbond {
                from,
                amount: *amount,
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::Withdraw => typed::Withdraw {
                from,
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::RegisterValidator { peer_id, moniker } => typed::RegisterValidator {
                from,
                peerId: peer_id.clone(),
                moniker: moniker.clone(),
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::RegisterInferenceNode {
                peer_id,
                models,
                tee_chip,
            } => typed::RegisterInferenceNode {
                from,
                peerId: peer_id.clone(),
                models: models.iter().map(|m| B256::from(m.0)).collect(),
                teeChip: tee_chip.unwrap_or_default(),
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::RegisterModel {
                model_id,
                name,
                manifest,
                mode,
                price_per_job,
                price_per_unit,
            } => typed::RegisterModel {
                from,
                modelId: B256::from(model_id.0),
                name: name.clone(),
                manifest: manifest.clone(),
                mode: mode.as_str().to_string(),
                pricePerJob: *price_per_job,
                pricePerUnit: *price_per_unit,
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::Propose { kind, deposit } => {
                let (kind, change) = kind.typed_parts();
                {
                    typed::Propose {
                        from,
                        kind: kind.to_string(),
                        change: change.clone(),
                        deposit: *deposit,
                        nonce,
                        maxFee: max_fee,
                    }
                    .eip712_signing_hash(d)
                }
            }
            Action::Vote { proposal, option } => typed::Vote {
                from,
                proposal: *proposal,
                option: option.as_str().to_string(),
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::Unjail => typed::Unjail {
                from,
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::ReportEvidence(e) => typed::ReportEvidence {
                from,
                evidence: e.id(),
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::ReportFraud(e) => typed::ReportFraud {
                from,
                evidence: e.id(),
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::BridgeDeposit {
                id,
                from: depositor,
                recipient,
                amount,
            } => typed::BridgeDeposit {
                from,
                id: *id,
                depositor: *depositor,
                recipient: *recipient,
                amount: *amount,
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
            Action::BridgeWithdraw { recipient, amount } => typed::BridgeWithdraw {
                from,
                recipient: *recipient,
                amount: *amount,
                nonce,
                maxFee: max_fee,
            }
            .eip712_signing_hash(d),
        }
    }

    pub fn sign(self, key: &PrivateKeySigner, domain: &Domain) -> Result<Tx> {
        let signature = signing::sign(key, &self.signing_hash(domain))?;
        Ok(Tx {
            from: self.from,
            nonce: self.nonce,
            max_fee: self.max_fee,
            action: self.action,
            signature,
        })
    }
}

impl Tx {
    /// The transaction without its signature.
    pub fn unsigned(&self) -> UnsignedTx {
        UnsignedTx {
            from: self.from,
            nonce: self.nonce,
            max_fee: self.max_fee,
            action: self.action.clone(),
        }
    }

    /// The transaction hash: its EIP-712 signing hash.
    pub fn hash(&self, domain: &Domain) -> B256 {
        self.unsigned().signing_hash(domain)
    }

    /// Checks what needs no state: sizes and formats first (cheap), then the signature.
    /// Returns the transaction hash.
    pub fn verify(&self, domain: &Domain) -> Result<B256> {
        self.action.check_shape()?;
        let digest = self.hash(domain);
        signing::verify(&self.signature, &digest, self.from)?;
        Ok(digest)
    }

    /// What the sender needs besides the fee.
    pub fn spends(&self) -> u128 {
        self.action.spends()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::signing::{seeded_key, test_domain};

    /// One transaction of every kind, signed by `seeded_key(5, 1)`.
    pub(crate) fn one_of_each(domain: &Domain) -> Vec<Tx> {
        let k = seeded_key(5, 1);
        let manifest = "{\"files\":[]}".to_string();
        let model_id = ModelId(keccak256(manifest.as_bytes()).0);
        let ev = crate::evidence::tests::double_vote();
        let actions = vec![
            Action::Transfer {
                to: Address::repeat_byte(2),
                amount: 5,
            },
            Action::Bond { amount: 7 },
            Action::Unbond { amount: 3 },
            Action::Withdraw,
            Action::RegisterValidator {
                peer_id: "12D3KooWexample".into(),
                moniker: "v5".into(),
            },
            Action::RegisterInferenceNode {
                peer_id: "12D3KooWother".into(),
                models: vec![model_id],
                tee_chip: Some(B256::repeat_byte(4)),
            },
            Action::RegisterModel {
                model_id,
                name: "m".into(),
                manifest,
                mode: VerificationMode::Reexec,
                price_per_job: 10,
                price_per_unit: 1,
            },
            Action::Propose {
                kind: ProposalKind::Params(
                    [("executor_bps".to_string(), "6000".to_string())].into(),
                ),
                deposit: 100,
            },
            Action::Propose {
                kind: ProposalKind::Text {
                    title: "t".into(),
                    body: "b".into(),
                },
                deposit: 100,
            },
            Action::Vote {
                proposal: 1,
                option: VoteOption::Veto,
            },
            Action::Unjail,
            Action::ReportEvidence(ev),
            Action::ReportFraud(Box::new(FraudEvidence {
                record: crate::record::tests::sample_record(domain),
                claim: crate::evidence::FraudClaim::Output {
                    recomputed: B256::repeat_byte(8),
                },
            })),
            Action::BridgeDeposit {
                id: 4,
                from: Address::repeat_byte(5),
                recipient: Address::repeat_byte(6),
                amount: 9,
            },
            Action::BridgeWithdraw {
                recipient: Address::repeat_byte(7),
                amount: 11,
            },
        ];
        actions
            .into_iter()
            .enumerate()
            .map(|(i, action)| {
                UnsignedTx {
                    from: k.address(),
                    nonce: i as u64,
                    max_fee: 1_000,
                    action,
                }
                .sign(&k, domain)
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn every_kind_round_trips_and_verifies() {
        let d = test_domain(3);
        let txs = one_of_each(&d);
        let mut hashes = std::collections::BTreeSet::new();
        for tx in &txs {
            let hash = tx.verify(&d).unwrap();
            assert!(hashes.insert(hash), "{} hash repeats", tx.action.name());
            let bytes = crate::codec::encode(tx);
            assert_eq!(&crate::codec::decode::<Tx>(&bytes, 1 << 16).unwrap(), tx);
            let json = serde_json::to_string(tx).unwrap();
            assert_eq!(&serde_json::from_str::<Tx>(&json).unwrap(), tx);
            assert!(json.contains(tx.action.name()), "{json}");
            // Another network's domain: another hash, and the signature no longer verifies.
            assert!(tx.verify(&test_domain(4)).is_err());
        }
    }

    /// Changing any signed field changes the hash, so the signature no longer verifies.
    #[test]
    fn every_field_is_signed() {
        let d = test_domain(3);
        for tx in one_of_each(&d) {
            let mut edits: Vec<Tx> = Vec::new();
            let mut t = tx.clone();
            t.nonce += 1;
            edits.push(t);
            let mut t = tx.clone();
            t.max_fee += 1;
            edits.push(t);
            let mut t = tx.clone();
            t.from = Address::repeat_byte(9);
            edits.push(t);
            let mut t = tx.clone();
            match &mut t.action {
                Action::Transfer { amount, .. }
                | Action::Bond { amount }
                | Action::Unbond { amount } => *amount += 1,
                Action::RegisterValidator { moniker, .. } => moniker.push('x'),
                Action::RegisterInferenceNode { tee_chip, .. } => *tee_chip = None,
                Action::RegisterModel { price_per_unit, .. } => *price_per_unit += 1,
                Action::Propose { deposit, .. } => *deposit += 1,
                Action::Vote { option, .. } => *option = VoteOption::Yes,
                Action::ReportEvidence(Evidence::DoubleVote { first, .. }) => first.vote.round += 1,
                Action::ReportFraud(f) => f.claim = crate::evidence::FraudClaim::TeeProof,
                Action::Withdraw => t.action = Action::Unjail,
                Action::Unjail => t.action = Action::Withdraw,
                Action::BridgeDeposit { id, .. } => *id += 1,
                Action::BridgeWithdraw { recipient, .. } => *recipient = Address::repeat_byte(1),
                other => panic!("no edit for {}", other.name()),
            }
            edits.push(t);
            for e in edits {
                assert_ne!(e.hash(&d), tx.hash(&d), "{}", tx.action.name());
                assert!(e.verify(&d).is_err(), "{}", tx.action.name());
            }
        }
    }

    #[test]
    fn shapes_are_checked_before_the_signature() {
        let d = test_domain(3);
        let k = seeded_key(5, 1);
        let sign = |action| {
            UnsignedTx {
                from: k.address(),
                nonce: 0,
                max_fee: 1,
                action,
            }
            .sign(&k, &d)
            .unwrap()
        };
        let cases = [
            (
                Action::RegisterValidator {
                    peer_id: "p".repeat(MAX_PEER_ID_LEN + 1),
                    moniker: "m".into(),
                },
                "peer_id",
            ),
            (
                Action::RegisterValidator {
                    peer_id: "p".into(),
                    moniker: String::new(),
                },
                "moniker",
            ),
            (
                Action::RegisterInferenceNode {
                    peer_id: "p".into(),
                    models: vec![],
                    tee_chip: None,
                },
                "models",
            ),
            (
                Action::RegisterModel {
                    model_id: ModelId([1; 32]),
                    name: "m".into(),
                    manifest: "{}".into(),
                    mode: VerificationMode::Reexec,
                    price_per_job: 1,
                    price_per_unit: 0,
                },
                "hashes to",
            ),
            (
                Action::Propose {
                    kind: ProposalKind::TeeAllow("00".into()),
                    deposit: 1,
                },
                "48 hex bytes",
            ),
            (
                Action::Propose {
                    kind: ProposalKind::Params(BTreeMap::new()),
                    deposit: 1,
                },
                "1 to",
            ),
        ];
        for (action, want) in cases {
            let e = sign(action).verify(&d).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        let d = test_domain(3);
        for tx in one_of_each(&d) {
            let bytes = crate::codec::encode(&tx);
            for cut in 0..bytes.len() {
                assert!(crate::codec::decode::<Tx>(&bytes[..cut], 1 << 16).is_err());
            }
            let mut extra = bytes.clone();
            extra.push(0);
            assert!(crate::codec::decode::<Tx>(&extra, 1 << 16).is_err());
        }
        for junk in [&b""[..], b"\xff\xff\xff\xff", &[0x63; 64]] {
            assert!(crate::codec::decode::<Tx>(junk, 1 << 16).is_err());
        }
        for json in [
            "{}",
            "{\"from\":\"0x00\",\"nonce\":0,\"max_fee\":\"1\",\"action\":\"fly\",\"signature\":\"0x\"}",
            "[1,2,3]",
        ] {
            assert!(serde_json::from_str::<Tx>(json).is_err(), "{json}");
        }
    }
}
