//! `proofmesh bridge`: OPG between the EVM chain and the native chain.
//!
//! - `deposit`: locks OPG in the Settlement contract for a native account (approval, then
//!   `deposit`); with `--node`, waits until the validators credit it (they do so once it is
//!   `confirmations` blocks deep).
//! - `withdraw`: a native `bridge_withdraw` (balance into the bridge reserve), then, with the
//!   EVM flags, waits for the anchor that covers it and releases the OPG on the EVM.
//! - `release`: the EVM half alone, for a withdrawal already made (anyone may send it; the
//!   tokens go to the withdrawal's recipient; a released one is not sent again).
//! - `status`: both sides' circulation and the supply invariant.
//!
//! Each prints JSON and exits non-zero with the reason when a step fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chain::{Action, Address, B256};
use serde_json::{Value, json};

use crate::chaincmd::{TxArgs, parse_amount, submit_action, trim};
use crate::submit::{agent, api_error, get};

/// How to reach the EVM chain and who sends there.
#[derive(clap::Args, Clone)]
pub struct EvmArgs {
    /// The EVM chain's JSON-RPC URL, e.g. http://127.0.0.1:8545
    #[arg(long)]
    evm_rpc: String,
    /// The Settlement (bridge) contract's address.
    #[arg(long)]
    settlement: Address,
    /// The EVM account's private key file (hex): it pays the gas, and a deposit's OPG.
    #[arg(long)]
    evm_key: PathBuf,
}

#[derive(clap::Subcommand)]
pub enum BridgeCommand {
    /// Lock OPG in the EVM bridge for a native account.
    Deposit {
        /// Base units, or OPG with a suffix: `1000opg`.
        #[arg(long, value_parser = parse_amount)]
        amount: u128,
        /// The native account credited (default: the EVM key's own address).
        #[arg(long)]
        recipient: Option<Address>,
        /// A node's HTTP URL: wait until the validators credit the deposit there.
        #[arg(long)]
        node: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[command(flatten)]
        evm: EvmArgs,
    },
    /// Move native OPG into the bridge reserve for an EVM recipient; with the EVM flags, wait
    /// for its anchor and release it on the EVM.
    Withdraw {
        #[arg(long, value_parser = parse_amount)]
        amount: u128,
        /// The EVM account paid (default: the native key's own address).
        #[arg(long)]
        recipient: Option<Address>,
        #[command(flatten)]
        tx: TxArgs,
        /// The EVM chain's JSON-RPC URL: release the withdrawal there once anchored.
        #[arg(long, requires_all = ["settlement", "evm_key"])]
        evm_rpc: Option<String>,
        #[arg(long)]
        settlement: Option<Address>,
        #[arg(long)]
        evm_key: Option<PathBuf>,
    },
    /// Release an anchored withdrawal on the EVM.
    Release {
        /// A node's HTTP URL (it gives the withdrawal's Merkle proof).
        #[arg(long)]
        node: String,
        /// The withdrawal: its `bridge_withdraw` transaction's hash.
        #[arg(long)]
        id: B256,
        /// Give up waiting for the anchor after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[command(flatten)]
        evm: EvmArgs,
    },
    /// OPG circulating on each side, the bridge reserve, and whether they add up to the supply.
    Status {
        #[arg(long)]
        node: String,
        #[arg(long)]
        evm_rpc: String,
        #[arg(long)]
        settlement: Address,
    },
}

pub fn bridge(cmd: BridgeCommand) -> Result<()> {
    let out = match cmd {
        BridgeCommand::Deposit {
            amount,
            recipient,
            node,
            timeout,
            evm,
        } => deposit(
            &evm,
            amount,
            recipient,
            node.as_deref(),
            Duration::from_secs(timeout),
        )?,
        BridgeCommand::Withdraw {
            amount,
            recipient,
            tx,
            evm_rpc,
            settlement,
            evm_key,
        } => {
            let key = chain::signing::load_key(&tx.key)?;
            let recipient = recipient.unwrap_or(key.address());
            let timeout = Duration::from_secs(tx.timeout);
            let included = submit_action(
                &TxArgs {
                    wait: true,
                    ..tx.clone()
                },
                Action::BridgeWithdraw { recipient, amount },
            )?;
            let id: B256 = included["hash"]
                .as_str()
                .and_then(|h| h.parse().ok())
                .context("the node's answer has no transaction hash")?;
            match (evm_rpc, settlement, evm_key) {
                (Some(evm_rpc), Some(settlement), Some(evm_key)) => release(
                    &tx.node,
                    id,
                    &EvmArgs {
                        evm_rpc,
                        settlement,
                        evm_key,
                    },
                    timeout.max(Duration::from_secs(300)),
                )?,
                _ => json!({
                    "id": id, "height": included["height"], "recipient": recipient,
                    "amount": amount.to_string(), "released": false,
                }),
            }
        }
        BridgeCommand::Release {
            node,
            id,
            timeout,
            evm,
        } => release(&node, id, &evm, Duration::from_secs(timeout))?,
        BridgeCommand::Status {
            node,
            evm_rpc,
            settlement,
        } => status(&node, &evm_rpc, settlement)?,
    };
    println!("{out}");
    Ok(())
}

fn wallet(evm: &EvmArgs) -> Result<evm::Wallet> {
    let key = chain::signing::load_key(&evm.evm_key)?;
    let rpc = evm::Rpc::new(&evm.evm_rpc, Duration::from_secs(30));
    let id: String = rpc.call("eth_chainId", json!([]))?;
    let chain_id = u64::from_str_radix(id.trim_start_matches("0x"), 16)
        .with_context(|| format!("eth_chainId answered {id:?}"))?;
    Ok(evm::Wallet::new(rpc, key, chain_id)?)
}

/// The native chain's supply answer (`GET /v1/supply`).
fn supply(agent: &ureq::Agent, node: &str) -> Result<Value> {
    let (st, body) = get(agent, &format!("{}/v1/supply", trim(node)))?;
    if st != 200 {
        return Err(api_error(st, &body));
    }
    Ok(body)
}

fn deposits_credited(supply: &Value) -> Result<u64> {
    supply["pools"]["bridge_deposits_credited"]
        .as_u64()
        .context("the node's supply has no bridge_deposits_credited")
}

fn deposit(
    evm: &EvmArgs,
    amount: u128,
    recipient: Option<Address>,
    node: Option<&str>,
    timeout: Duration,
) -> Result<Value> {
    let mut wallet = wallet(evm)?;
    let recipient = recipient.unwrap_or(wallet.address());
    let (id, receipt) = evm::bridge::deposit_tokens(&mut wallet, evm.settlement, amount, recipient)
        .context("depositing on the EVM")?;
    let mut out = json!({
        "id": id,
        "evm_tx": receipt.transaction_hash,
        "evm_block": receipt.block_number,
        "recipient": recipient,
        "amount": amount.to_string(),
        "credited": false,
    });
    if let Some(node) = node {
        let agent = agent();
        let deadline = Instant::now() + timeout;
        while deposits_credited(&supply(&agent, node)?)? <= id {
            if Instant::now() > deadline {
                bail!(
                    "deposit {id} not credited on the native chain after {} s (validators credit it once it is their configured confirmations deep)",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        out["credited"] = json!(true);
    }
    Ok(out)
}

fn release(node: &str, id: B256, evm: &EvmArgs, timeout: Duration) -> Result<Value> {
    let agent = agent();
    let url = format!("{}/v1/withdrawals/{id}", trim(node));
    let deadline = Instant::now() + timeout;
    let late = |what: &str| -> Result<()> {
        if Instant::now() > deadline {
            bail!("withdrawal {id}: {what} after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    };
    // The native side: the withdrawal's anchor committed, with the proof.
    let w = loop {
        let (st, body) = get(&agent, &url)?;
        if st == 200 && !body["anchor_height"].is_null() {
            break body;
        }
        if st != 200 && st != 404 {
            return Err(api_error(st, &body));
        }
        late("its anchor block is not committed")?;
    };
    let withdrawal = evm::bridge::Withdrawal {
        id,
        recipient: w["recipient"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .context("withdrawal without recipient")?,
        amount: w["amount"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .context("withdrawal without amount")?,
        anchor_height: w["anchor_height"]
            .as_u64()
            .context("withdrawal without anchor height")?,
        proof: serde_json::from_value(w["proof"].clone()).context("withdrawal proof")?,
    };
    let mut wallet = wallet(evm)?;
    // The EVM side: that anchor posted by the validators.
    while evm::anchor::contract_state(&wallet, evm.settlement)?.last < withdrawal.anchor_height {
        late("its anchor is not on the EVM")?;
    }
    let mut out = json!({
        "id": id,
        "recipient": withdrawal.recipient,
        "amount": withdrawal.amount.to_string(),
        "anchor_height": withdrawal.anchor_height,
        "released": true,
    });
    if evm::bridge::withdrawn(&wallet, evm.settlement, id)? {
        out["already_released"] = json!(true);
        return Ok(out);
    }
    let receipt = evm::bridge::withdraw(&mut wallet, evm.settlement, &withdrawal)
        .context("releasing on the EVM")?;
    out["evm_tx"] = json!(receipt.transaction_hash);
    out["gas_used"] = json!(receipt.gas_used);
    Ok(out)
}

fn status(node: &str, evm_rpc: &str, settlement: Address) -> Result<Value> {
    let agent = agent();
    let s = supply(&agent, node)?;
    let native: u128 = s["circulating"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .context("the node's supply has no circulating")?;
    let rpc = evm::Rpc::new(evm_rpc, Duration::from_secs(30));
    let on_evm = evm::bridge::circulating(&rpc, settlement, "latest")?;
    let credited = deposits_credited(&s)?;
    let deposits = evm::bridge::deposit_count(
        &rpc,
        settlement,
        evm::bridge::confirmed_block(&rpc, 0)?.unwrap_or(0),
    )?;
    let sum = native + on_evm;
    Ok(json!({
        "native_circulating": native.to_string(),
        "evm_circulating": on_evm.to_string(),
        "bridge_reserve": s["pools"]["bridge_reserve"],
        "deposits_on_evm": deposits,
        "deposits_credited": credited,
        "sum": sum.to_string(),
        // With nothing in flight (every deposit credited, every withdrawal released) the two
        // sides hold the supply exactly once.
        "exact": sum == chain::TOTAL_SUPPLY,
    }))
}
