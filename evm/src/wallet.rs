//! Sends transactions from one key: EIP-1559 transactions built and signed with alloy, one
//! nonce counter (fetched from the node once, advanced locally, fetched again when the node
//! says it is off), gas from the node's estimate, receipts awaited.

use std::time::{Duration, Instant};

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::signers::SignerSync;
use chain::PrivateKeySigner;
use serde::Deserialize;
use serde_json::json;

use crate::rpc::{Rpc, RpcError};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("signing: {0}")]
    Sign(String),
    #[error("transaction {hash} reverted (gas used {gas_used})")]
    Reverted { hash: B256, gas_used: u64 },
    #[error("transaction {hash} has no receipt after {waited:?}")]
    NoReceipt { hash: B256, waited: Duration },
}

impl SendError {
    /// Whether sending again may succeed: the node was unreachable, or the transaction is
    /// still not mined.
    pub fn is_transient(&self) -> bool {
        match self {
            SendError::Rpc(e) => e.is_transient(),
            SendError::NoReceipt { .. } => true,
            _ => false,
        }
    }
}

/// What the node reports of a mined transaction.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub transaction_hash: B256,
    #[serde(with = "alloy::serde::quantity")]
    pub block_number: u64,
    #[serde(with = "alloy::serde::quantity")]
    pub gas_used: u64,
    #[serde(with = "alloy::serde::quantity")]
    pub status: u64,
    pub contract_address: Option<Address>,
    #[serde(default)]
    pub logs: Vec<Log>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Log {
    pub address: Address,
    pub topics: Vec<B256>,
    pub data: Bytes,
    #[serde(default, with = "alloy::serde::quantity::opt")]
    pub block_number: Option<u64>,
    #[serde(default)]
    pub transaction_hash: Option<B256>,
}

pub struct Wallet {
    rpc: Rpc,
    key: PrivateKeySigner,
    chain_id: u64,
    /// The next nonce to use; `None` until read from the node (again).
    nonce: Option<u64>,
    /// How long to wait for a receipt.
    pub receipt_timeout: Duration,
}

fn quantity(s: &str) -> Result<u128, String> {
    u128::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

impl Wallet {
    /// A wallet for `key` on the node `rpc`, whose chain id must be `chain_id`.
    pub fn new(rpc: Rpc, key: PrivateKeySigner, chain_id: u64) -> Result<Wallet, RpcError> {
        let id: String = rpc.call("eth_chainId", json!([]))?;
        let id = quantity(&id).map_err(|reason| RpcError::Decode {
            method: "eth_chainId",
            reason,
        })?;
        if id != chain_id as u128 {
            return Err(RpcError::Decode {
                method: "eth_chainId",
                reason: format!("the node is chain {id}, configured {chain_id}"),
            });
        }
        Ok(Wallet {
            rpc,
            key,
            chain_id,
            nonce: None,
            receipt_timeout: Duration::from_secs(60),
        })
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    /// `eth_call` of `data` on `to` at the latest block.
    pub fn call(&self, to: Address, data: &[u8]) -> Result<Bytes, RpcError> {
        self.rpc
            .eth_call(to, Bytes::copy_from_slice(data), "latest")
    }

    fn u128_of(&self, method: &'static str, params: serde_json::Value) -> Result<u128, RpcError> {
        let s: String = self.rpc.call(method, params)?;
        quantity(&s).map_err(|reason| RpcError::Decode { method, reason })
    }

    /// Sends `data` to `to` (a contract creation when `to` is `None`) and waits for its
    /// receipt; a revert is an error. The nonce is read from the node again after an error
    /// that may have left it unknown.
    pub fn send(&mut self, to: Option<Address>, data: Vec<u8>) -> Result<Receipt, SendError> {
        let result = self.try_send(to, data);
        if result.is_err() {
            self.nonce = None;
        }
        result
    }

    fn try_send(&mut self, to: Option<Address>, data: Vec<u8>) -> Result<Receipt, SendError> {
        let from = self.address();
        let nonce = match self.nonce {
            Some(n) => n,
            None => self.u128_of("eth_getTransactionCount", json!([from, "pending"]))? as u64,
        };
        let input = Bytes::from(data);
        let mut request = json!({"from": from, "data": input});
        if let Some(to) = to {
            request["to"] = json!(to);
        }
        let estimate = self.u128_of("eth_estimateGas", json!([request]))?;
        let gas_limit = (estimate.saturating_mul(12) / 10).min(u64::MAX as u128) as u64;
        let tip = self
            .u128_of("eth_maxPriorityFeePerGas", json!([]))
            .unwrap_or(1_000_000_000);
        let base = self.u128_of("eth_gasPrice", json!([]))?;
        let mut tx = TxEip1559 {
            chain_id: self.chain_id,
            nonce,
            gas_limit,
            max_fee_per_gas: base.saturating_mul(2).saturating_add(tip),
            max_priority_fee_per_gas: tip,
            to: to.map_or(TxKind::Create, TxKind::Call),
            value: U256::ZERO,
            access_list: Default::default(),
            input,
        };
        let signature = self
            .key
            .sign_hash_sync(&tx.signature_hash())
            .map_err(|e| SendError::Sign(e.to_string()))?;
        let signed = std::mem::take(&mut tx).into_signed(signature);
        let raw = TxEnvelope::Eip1559(signed).encoded_2718();
        let hash: B256 = match self
            .rpc
            .call("eth_sendRawTransaction", json!([Bytes::from(raw.clone())]))
        {
            Ok(h) => h,
            // Sent before (a retry after a lost answer): the same bytes, the same hash.
            Err(RpcError::Node { message, .. })
                if message.contains("already known") || message.contains("already imported") =>
            {
                alloy::primitives::keccak256(&raw)
            }
            Err(e) => return Err(e.into()),
        };
        self.nonce = Some(nonce + 1);
        let receipt = self.wait_receipt(hash)?;
        if receipt.status != 1 {
            return Err(SendError::Reverted {
                hash,
                gas_used: receipt.gas_used,
            });
        }
        Ok(receipt)
    }

    /// Polls for the receipt of `hash` until `receipt_timeout`.
    pub fn wait_receipt(&self, hash: B256) -> Result<Receipt, SendError> {
        let started = Instant::now();
        loop {
            let receipt: Option<Receipt> =
                self.rpc.call("eth_getTransactionReceipt", json!([hash]))?;
            if let Some(r) = receipt {
                return Ok(r);
            }
            if started.elapsed() > self.receipt_timeout {
                return Err(SendError::NoReceipt {
                    hash,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deploys `bytecode` with `constructor` arguments appended; the contract's address.
    pub fn deploy(&mut self, bytecode: &[u8], constructor: &[u8]) -> Result<Address, SendError> {
        let mut data = bytecode.to_vec();
        data.extend_from_slice(constructor);
        let receipt = self.send(None, data)?;
        receipt.contract_address.ok_or(SendError::Reverted {
            hash: receipt.transaction_hash,
            gas_used: receipt.gas_used,
        })
    }
}
