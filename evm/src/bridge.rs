//! The bridge as validators read it: deposits at the block `confirmations` below the EVM tip
//! (state read at that block, so a deposit is seen only once that deep, and a reorganisation
//! shallower than that changes nothing seen), and withdrawals released against an anchored
//! withdrawals root.

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::sol_types::SolCall;
use serde_json::json;

use crate::contracts::{IOPG, ISettlement};
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

/// The OPG token the bridge at `settlement` locks.
pub fn token(rpc: &Rpc, settlement: Address) -> Result<Address, RpcError> {
    let raw = rpc.eth_call(
        settlement,
        Bytes::from(ISettlement::opgCall {}.abi_encode()),
        "latest",
    )?;
    decode::<ISettlement::opgCall>(&raw)
}

/// `owner`'s OPG balance (base units) at `block` (`"latest"` or `0x…`).
pub fn balance_of(rpc: &Rpc, opg: Address, owner: Address, block: &str) -> Result<u128, RpcError> {
    let raw = rpc.eth_call(
        opg,
        Bytes::from(IOPG::balanceOfCall { owner }.abi_encode()),
        block,
    )?;
    let b: U256 = decode::<IOPG::balanceOfCall>(&raw)?;
    u128::try_from(b).map_err(|_| RpcError::Decode {
        method: "eth_call",
        reason: format!("balance {b} beyond 128 bits"),
    })
}

/// OPG outside the bridge on the EVM (the supply less what the bridge holds), at `block`.
pub fn circulating(rpc: &Rpc, settlement: Address, block: &str) -> Result<u128, RpcError> {
    let opg = token(rpc, settlement)?;
    let raw = rpc.eth_call(
        opg,
        Bytes::from(IOPG::totalSupplyCall {}.abi_encode()),
        block,
    )?;
    let total = decode::<IOPG::totalSupplyCall>(&raw)?;
    let total = u128::try_from(total).map_err(|_| RpcError::Decode {
        method: "eth_call",
        reason: format!("total supply {total} beyond 128 bits"),
    })?;
    let locked = balance_of(rpc, opg, settlement, block)?;
    Ok(total.saturating_sub(locked))
}

/// Locks `amount` of the wallet's OPG in the bridge for `recipient` on the native chain
/// (approval, then `deposit`); returns the deposit's id, read from its `Deposited` event.
pub fn deposit_tokens(
    wallet: &mut Wallet,
    settlement: Address,
    amount: u128,
    recipient: Address,
) -> Result<(u64, Receipt), SendError> {
    let opg = token(wallet.rpc(), settlement)?;
    let approve = IOPG::approveCall {
        spender: settlement,
        value: U256::from(amount),
    };
    wallet.send(Some(opg), approve.abi_encode())?;
    let call = ISettlement::depositCall {
        amount: U256::from(amount),
        nativeRecipient: recipient,
    };
    let receipt = wallet.send(Some(settlement), call.abi_encode())?;
    let id = deposit_id(&receipt, settlement).ok_or_else(|| {
        SendError::Rpc(RpcError::Decode {
            method: "eth_getTransactionReceipt",
            reason: format!(
                "deposit {} has no Deposited event",
                receipt.transaction_hash
            ),
        })
    })?;
    Ok((id, receipt))
}

/// The id of the deposit `receipt` made at `settlement`, from its `Deposited` event.
pub fn deposit_id(receipt: &Receipt, settlement: Address) -> Option<u64> {
    use alloy::sol_types::SolEvent;
    receipt
        .logs
        .iter()
        .find(|l| {
            l.address == settlement
                && l.topics.first() == Some(&ISettlement::Deposited::SIGNATURE_HASH)
        })
        .and_then(|l| l.topics.get(1))
        .and_then(|t| u64::try_from(U256::from_be_bytes(t.0)).ok())
}
