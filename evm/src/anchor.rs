//! Anchoring: which block to post to the settlement contract next, and posting it.
//!
//! The contract knows the last anchored height and the set it checks signatures against. The
//! next block to anchor is the first after that height which either is an anchor height (a
//! multiple of `anchor_interval`) or names another validator set than the contract's (the
//! contract must follow every set change, each signed by the set before it). Posting is
//! idempotent: the contract's state is read first, and a block someone else anchored
//! meanwhile is not sent again.

use alloy::primitives::{Address, B256};
use alloy::sol_types::SolCall;
use chain::block::{BlockHeader, CommitCertificate};

use crate::contracts::ISettlement;
use crate::wallet::{SendError, Wallet};

/// What anchoring reads of the native chain.
pub trait NativeChain {
    fn tip(&self) -> Result<u64, String>;
    fn header(&self, height: u64) -> Result<Option<BlockHeader>, String>;
    fn certificate(&self, height: u64) -> Result<Option<CommitCertificate>, String>;
    /// The set that decides `height`.
    fn set_at(&self, height: u64) -> Result<Option<Vec<(Address, u64)>>, String>;
}

impl NativeChain for chain::Store {
    fn tip(&self) -> Result<u64, String> {
        chain::Store::tip(self)
            .map(|t| t.height)
            .map_err(|e| e.to_string())
    }
    fn header(&self, height: u64) -> Result<Option<BlockHeader>, String> {
        self.block(height)
            .map(|b| b.map(|b| b.header))
            .map_err(|e| e.to_string())
    }
    fn certificate(&self, height: u64) -> Result<Option<CommitCertificate>, String> {
        chain::Store::certificate(self, height).map_err(|e| e.to_string())
    }
    fn set_at(&self, height: u64) -> Result<Option<Vec<(Address, u64)>>, String> {
        self.validator_set_at(height).map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("native chain: {0}")]
    Native(String),
    #[error("settlement contract: {0}")]
    Contract(String),
    #[error(transparent)]
    Send(#[from] SendError),
}

impl AnchorError {
    /// Whether the same step may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            AnchorError::Send(e) => e.is_transient(),
            AnchorError::Contract(_) => true,
            AnchorError::Native(_) => true,
        }
    }
}

/// The contract's view: its last anchored height and the hash of the set it checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContractState {
    pub last: u64,
    pub set_hash: B256,
}

/// What the planner reads of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderFacts {
    pub next_validators_hash: B256,
    /// The header carries anchor roots (it closes an anchor window with something in it).
    pub has_roots: bool,
}

impl From<&BlockHeader> for HeaderFacts {
    fn from(h: &BlockHeader) -> HeaderFacts {
        HeaderFacts {
            next_validators_hash: h.next_validators_hash,
            has_roots: h.anchor_records_root != B256::ZERO
                || h.anchor_withdrawals_root != B256::ZERO,
        }
    }
}

/// The height to anchor after `state`, looking at headers up to `tip`: the first that is an
/// anchor height (a multiple of `interval`, or any header carrying anchor roots, should
/// governance have changed the interval), or names another set than the contract's; `None`
/// when no such block is committed yet.
pub fn next_anchor(
    state: ContractState,
    tip: u64,
    interval: u64,
    facts_of: impl Fn(u64) -> Result<Option<HeaderFacts>, String>,
) -> Result<Option<u64>, String> {
    let interval = interval.max(1);
    let next_multiple = (state.last / interval + 1) * interval;
    for h in state.last + 1..=tip.min(next_multiple) {
        if h == next_multiple {
            return Ok(Some(h));
        }
        match facts_of(h)? {
            Some(f) if f.next_validators_hash != state.set_hash || f.has_roots => {
                return Ok(Some(h));
            }
            Some(_) => {}
            None => return Err(format!("no header at height {h} below the tip {tip}")),
        }
    }
    Ok(None)
}

/// Reads the settlement contract's state.
pub fn contract_state(wallet: &Wallet, settlement: Address) -> Result<ContractState, AnchorError> {
    let err = |e: String| AnchorError::Contract(e);
    let last = wallet
        .call(
            settlement,
            &ISettlement::lastAnchoredHeightCall {}.abi_encode(),
        )
        .map_err(|e| err(e.to_string()))?;
    let last = ISettlement::lastAnchoredHeightCall::abi_decode_returns(&last)
        .map_err(|e| err(e.to_string()))?;
    let set = wallet
        .call(
            settlement,
            &ISettlement::validatorSetHashCall {}.abi_encode(),
        )
        .map_err(|e| err(e.to_string()))?;
    let set_hash = ISettlement::validatorSetHashCall::abi_decode_returns(&set)
        .map_err(|e| err(e.to_string()))?;
    Ok(ContractState { last, set_hash })
}

/// What one anchoring step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to anchor yet; the contract is at `last`.
    UpToDate { last: u64 },
    /// `height` is due but not this node's turn yet (another validator goes first).
    Waiting { height: u64 },
    /// This node anchored `height` (gas used).
    Anchored { height: u64, gas_used: u64 },
    /// Someone else anchored `height` (or later) meanwhile.
    AnchoredByOther { height: u64 },
}

/// Anchors the next due block of `native` on `settlement` if `my_turn(height)` allows.
pub fn step(
    wallet: &mut Wallet,
    settlement: Address,
    native: &dyn NativeChain,
    interval: u64,
    my_turn: impl Fn(u64) -> bool,
) -> Result<Step, AnchorError> {
    step_reporting(wallet, settlement, native, interval, my_turn).map(|(step, _)| step)
}

/// [`step`], with the contract's last anchored height after it (for metrics, without
/// reading the contract again).
pub fn step_reporting(
    wallet: &mut Wallet,
    settlement: Address,
    native: &dyn NativeChain,
    interval: u64,
    my_turn: impl Fn(u64) -> bool,
) -> Result<(Step, u64), AnchorError> {
    let state = contract_state(wallet, settlement)?;
    let step = plan_and_send(wallet, settlement, native, interval, my_turn, state)?;
    let last = match step {
        Step::Anchored { height, .. } | Step::AnchoredByOther { height } => height,
        Step::UpToDate { last } => last,
        Step::Waiting { .. } => state.last,
    };
    Ok((step, last))
}

fn plan_and_send(
    wallet: &mut Wallet,
    settlement: Address,
    native: &dyn NativeChain,
    interval: u64,
    my_turn: impl Fn(u64) -> bool,
    state: ContractState,
) -> Result<Step, AnchorError> {
    let tip = native.tip().map_err(AnchorError::Native)?;
    let due = next_anchor(state, tip, interval, |h| {
        native.header(h).map(|o| o.as_ref().map(HeaderFacts::from))
    })
    .map_err(AnchorError::Native)?;
    let Some(height) = due else {
        return Ok(Step::UpToDate { last: state.last });
    };
    if !my_turn(height) {
        return Ok(Step::Waiting { height });
    }
    let missing = |what: &str| AnchorError::Native(format!("no {what} at height {height}"));
    let header = native
        .header(height)
        .map_err(AnchorError::Native)?
        .ok_or_else(|| missing("header"))?;
    let certificate = native
        .certificate(height)
        .map_err(AnchorError::Native)?
        .ok_or_else(|| missing("commit certificate"))?;
    let next = if header.next_validators_hash != state.set_hash {
        native
            .set_at(height + 1)
            .map_err(AnchorError::Native)?
            .ok_or_else(|| missing("next validator set"))?
    } else {
        Vec::new()
    };
    let call = crate::contracts::anchor_call(&header, &certificate, state.set_hash, &next);
    match wallet.send(Some(settlement), call.to_vec()) {
        Ok(receipt) => Ok(Step::Anchored {
            height,
            gas_used: receipt.gas_used,
        }),
        Err(e) => {
            // Refused because another validator was faster: not an error.
            if let Ok(now) = contract_state(wallet, settlement)
                && now.last >= height
            {
                return Ok(Step::AnchoredByOther { height });
            }
            Err(e.into())
        }
    }
}

/// The EVM transaction that anchored `height` on `settlement` (its `Anchored` event), if any.
pub fn anchor_transaction(
    rpc: &crate::Rpc,
    settlement: Address,
    height: u64,
) -> Result<Option<alloy::primitives::B256>, crate::RpcError> {
    use alloy::sol_types::SolEvent;
    let topic = alloy::primitives::B256::from(alloy::primitives::U256::from(height));
    let logs: Vec<crate::wallet::Log> = rpc.call(
        "eth_getLogs",
        serde_json::json!([{
            "address": settlement,
            "topics": [ISettlement::Anchored::SIGNATURE_HASH, topic],
            "fromBlock": "earliest",
            "toBlock": "latest",
        }]),
    )?;
    Ok(logs.into_iter().find_map(|l| l.transaction_hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_anchor_is_an_anchor_height_or_a_set_change() {
        let set = B256::repeat_byte(1);
        let other = B256::repeat_byte(2);
        let state = ContractState {
            last: 20,
            set_hash: set,
        };
        let facts = |next: B256, has_roots: bool| HeaderFacts {
            next_validators_hash: next,
            has_roots,
        };
        let same = |_h: u64| Ok(Some(facts(set, false)));
        // Tip below the next anchor height, no set change: nothing.
        assert_eq!(next_anchor(state, 25, 10, same), Ok(None));
        assert_eq!(next_anchor(state, 20, 10, same), Ok(None));
        assert_eq!(next_anchor(state, 3, 10, same), Ok(None));
        // The anchor height is committed.
        assert_eq!(next_anchor(state, 30, 10, same), Ok(Some(30)));
        assert_eq!(next_anchor(state, 95, 10, same), Ok(Some(30)));
        // A set change at 24 comes first, even past the anchor height.
        let change = |h: u64| Ok(Some(facts(if h >= 24 { other } else { set }, false)));
        assert_eq!(next_anchor(state, 26, 10, change), Ok(Some(24)));
        assert_eq!(next_anchor(state, 50, 10, change), Ok(Some(24)));
        // A missing header below the tip is an error, not a silent skip.
        let hole = |h: u64| {
            Ok(if h == 22 {
                None
            } else {
                Some(facts(set, false))
            })
        };
        assert!(next_anchor(state, 29, 10, hole).is_err());
        // A header with anchor roots off the configured interval (governance changed it) is
        // anchored too.
        let rooted = |h: u64| Ok(Some(facts(set, h == 25)));
        assert_eq!(next_anchor(state, 28, 10, rooted), Ok(Some(25)));
        // From genesis.
        let start = ContractState {
            last: 0,
            set_hash: set,
        };
        assert_eq!(next_anchor(start, 10, 10, same), Ok(Some(10)));
        assert_eq!(next_anchor(start, 9, 10, same), Ok(None));
    }
}
