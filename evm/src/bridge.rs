//! The bridge as validators read it: deposits at the block `confirmations` below the EVM tip
//! (state read at that block, so a deposit is seen only once that deep, and a reorganisation
//! shallower than that changes nothing seen), and withdrawals released against an anchored
//! withdrawals root.

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::sol_types::SolCall;
use serde_json::json;

use crate::contracts::ISettlement;
use crate::rpc::{Rpc, RpcError};
use crate::wallet::{Receipt, SendError, Wallet};

/// A deposit of the bridge, as the native chain credits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deposit {
    pub id: u64,
    /// Who locked the ERC-20.
    pub from: Address,
    /// The native account credited.
    pub recipient: Address,
    pub amount: u128,
    /// The EVM block that holds it.
    pub evm_block: u64,
}

/// The EVM block whose state counts as confirmed: `confirmations` below the tip (`None` while
/// the chain is shorter than that).
pub fn confirmed_block(rpc: &Rpc, confirmations: u64) -> Result<Option<u64>, RpcError> {
    let tip: String = rpc.call("eth_blockNumber", json!([]))?;
    let tip =
        u64::from_str_radix(tip.trim_start_matches("0x"), 16).map_err(|e| RpcError::Decode {
            method: "eth_blockNumber",
            reason: format!("{tip:?}: {e}"),
        })?;
    Ok(tip.checked_sub(confirmations))
}

/// `eth_call` of `data` on `to` in the state after `block`.
fn call_at(rpc: &Rpc, to: Address, data: Vec<u8>, block: u64) -> Result<Bytes, RpcError> {
    rpc.eth_call(to, Bytes::from(data), &format!("0x{block:x}"))
}

fn decode<C: SolCall>(raw: &Bytes) -> Result<C::Return, RpcError> {
    C::abi_decode_returns(raw).map_err(|e| RpcError::Decode {
        method: "eth_call",
        reason: format!("{}: {e}", C::SIGNATURE),
    })
}

/// How many deposits the bridge holds in the state after `block`.
pub fn deposit_count(rpc: &Rpc, settlement: Address, block: u64) -> Result<u64, RpcError> {
    let raw = call_at(
        rpc,
        settlement,
        ISettlement::depositCountCall {}.abi_encode(),
        block,
    )?;
    let n: U256 = decode::<ISettlement::depositCountCall>(&raw)?;
    u64::try_from(n).map_err(|_| RpcError::Decode {
        method: "eth_call",
        reason: format!("deposit count {n} beyond 64 bits"),
    })
}

/// Deposit `id` in the state after `block`; `None` when the bridge holds fewer then.
pub fn deposit(
    rpc: &Rpc,
    settlement: Address,
    id: u64,
    block: u64,
) -> Result<Option<Deposit>, RpcError> {
    Ok(deposits_from(rpc, settlement, id, 1, block)?.pop())
}

/// Deposits `from..` (at most `limit`) in the state after `block`.
pub fn deposits_from(
    rpc: &Rpc,
    settlement: Address,
    from: u64,
    limit: u64,
    block: u64,
) -> Result<Vec<Deposit>, RpcError> {
    let count = deposit_count(rpc, settlement, block)?;
    let mut out = Vec::new();
    for id in from..count.min(from.saturating_add(limit)) {
        let raw = call_at(
            rpc,
            settlement,
            ISettlement::depositsCall { id: U256::from(id) }.abi_encode(),
            block,
        )?;
        let d = decode::<ISettlement::depositsCall>(&raw)?;
        out.push(Deposit {
            id,
            from: d.from,
            recipient: d.nativeRecipient,
            amount: d.amount.to::<u128>(),
            evm_block: d.evmBlock,
        });
    }
    Ok(out)
}

/// A withdrawal made on the native chain, with where it is anchored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withdrawal {
    /// The native transaction's hash.
    pub id: B256,
    pub recipient: Address,
    pub amount: u128,
    pub anchor_height: u64,
    pub proof: Vec<B256>,
}

/// Whether withdrawal `id` has been paid out on the EVM.
pub fn withdrawn(wallet: &Wallet, settlement: Address, id: B256) -> Result<bool, RpcError> {
    let raw = wallet.call(settlement, &ISettlement::withdrawnCall { id }.abi_encode())?;
    decode::<ISettlement::withdrawnCall>(&raw)
}

/// Releases `w` on the EVM (anyone may send it; the tokens go to its recipient).
pub fn withdraw(
    wallet: &mut Wallet,
    settlement: Address,
    w: &Withdrawal,
) -> Result<Receipt, SendError> {
    let call = ISettlement::withdrawCall {
        id: w.id,
        recipient: w.recipient,
        amount: U256::from(w.amount),
        anchorHeight: w.anchor_height,
        proof: w.proof.clone(),
    };
    wallet.send(Some(settlement), call.abi_encode())
}
