//! The testnet's EVM chain: an anvil process (from `chain/contracts`' npm toolchain) with OPG
//! and the Settlement contract deployed through the node's own transaction code, and the
//! `[evm]` section every node gets.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alloy::sol_types::SolCall;
use anyhow::{Context, Result, bail};
use chain::{Address, PrivateKeySigner};
use serde::{Deserialize, Serialize};

/// The EVM side of a testnet, in `testnet.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvmInfo {
    pub rpc_url: String,
    pub chain_id: u64,
    pub opg: Address,
    pub settlement: Address,
    /// Holds all of OPG's supply on the EVM side at deployment, and paid for it.
    pub deployer_key: PathBuf,
    pub anvil_pid: u32,
    pub port: u16,
}

/// The EVM chain id of testnets: anvil's default.
pub const CHAIN_ID: u64 = 31_337;

/// OPG the testnet client holds on the EVM side (from the deployer, who holds the supply).
pub const CLIENT_OPG: u128 = 1_000_000 * 10u128.pow(18);

/// OPG outside the bridge on the EVM side at genesis (the deployer's, [`CLIENT_OPG`] of it
/// given to the client). The native genesis keeps as much in its bridge reserve and the
/// deployer locks the rest of the supply in the bridge, so that native circulating + EVM
/// circulating = the supply, once.
pub const EVM_CIRCULATING: u128 = 10_000_000 * 10u128.pow(18);

/// Whether `pid` is a live anvil process (guards against pid reuse).
pub fn is_anvil(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.trim_start().chars().next())
        .is_none_or(|c| c == 'Z' || c == 'X');
    !zombie && String::from_utf8_lossy(&cmdline).contains("anvil")
}

/// Starts anvil on `port`, logging to `dir/anvil.log` and keeping its chain in
/// `dir/anvil-state.json` (written every second and at exit, read at start), so a restarted
/// anvil goes on from where it was. Returns its pid.
pub fn start_anvil(dir: &Path, port: u16) -> Result<u32> {
    let bin = evm::artifacts::foundry_tool(&evm::artifacts::contracts_dir(), "anvil");
    let mut cmd = Command::new(&bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--chain-id", &CHAIN_ID.to_string()])
        // A block a second, as a real chain: deposits get their confirmations without
        // waiting for other transactions.
        .args(["--block-time", "1"])
        .arg("--state")
        .arg(dir.join("anvil-state.json"))
        .args(["--state-interval", "1"]);
    let pid = crate::net::spawn_detached(cmd, &dir.join("anvil.log"))
        .with_context(|| format!("{} (run scripts/contracts-deps)", bin.display()))?;
    let rpc = evm::Rpc::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(30);
    while rpc
        .call::<String>("eth_chainId", serde_json::json!([]))
        .is_err()
    {
        if !is_anvil(pid) || Instant::now() > deadline {
            bail!(
                "anvil did not answer on port {port}; see {}",
                dir.join("anvil.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(pid)
}

/// SIGTERM (anvil writes its state), then SIGKILL after `grace`.
pub fn stop_anvil(pid: u32, grace: Duration) {
    if !is_anvil(pid) {
        return;
    }
    // SAFETY: kill(2) on a pid checked to be an anvil we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while is_anvil(pid) && Instant::now() < deadline {
        // SAFETY: non-blocking waitpid; harmless if it is not our child.
        unsafe {
            let mut status = 0;
            libc::waitpid(pid as i32, &mut status, libc::WNOHANG);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_anvil(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Starts anvil in `dir` and deploys OPG (its whole supply to a new deployer key, saved as
/// `dir/evm-deployer.key`) and the Settlement contract with `genesis`'s validator set; locks
/// all but [`EVM_CIRCULATING`] in the bridge (the native side's bridge reserve); gives
/// each of `gas_for` (the validators, which post anchors) 100 ETH for gas; and funds the
/// testnet's `client` on this side too: [`CLIENT_OPG`] and gas.
pub fn up(
    dir: &Path,
    port: u16,
    genesis: &chain::Genesis,
    gas_for: &[Address],
    client: Address,
    deployer: PrivateKeySigner,
) -> Result<EvmInfo> {
    let contracts = evm::artifacts::contracts_dir();
    evm::artifacts::build(&contracts)?;
    let pid = start_anvil(dir, port)?;
    let rpc_url = format!("http://127.0.0.1:{port}");
    let deployer_key = dir.join("evm-deployer.key");
    chain::signing::write_key(&deployer_key, &deployer)?;
    let rpc = evm::Rpc::new(&rpc_url, Duration::from_secs(10));
    rpc.call::<serde_json::Value>(
        "anvil_setBalance",
        serde_json::json!([deployer.address(), "0x3635C9ADC5DEA00000"]),
    )?;
    for a in gas_for.iter().chain([&client]) {
        rpc.call::<serde_json::Value>(
            "anvil_setBalance",
            serde_json::json!([a, "0x56BC75E2D63100000"]),
        )?;
    }
    let mut wallet = evm::Wallet::new(rpc, deployer.clone(), CHAIN_ID)?;
    let opg = wallet.deploy(
        &evm::artifacts::bytecode(&contracts, "OPG")?,
        &evm::contracts::opg_constructor(deployer.address()),
    )?;
    let set = chain::Ledger::from_genesis(genesis)
        .next_validators()
        .to_vec();
    let settlement = wallet.deploy(
        &evm::artifacts::bytecode(&contracts, "Settlement")?,
        &evm::contracts::settlement_constructor(opg, genesis.chain_id, genesis.hash(), &set),
    )?;
    let predicted = payments_of(deployer.address());
    if genesis.evm.is_some_and(|p| p != predicted)
        || (predicted.opg, predicted.settlement) != (opg, settlement)
    {
        bail!(
            "the contracts landed at {opg} and {settlement}, not where the genesis expects them ({predicted:?})"
        );
    }
    let locked = chain::types::TOTAL_SUPPLY
        .checked_sub(genesis.pools.bridge_reserve)
        .context("the genesis bridge reserve exceeds the supply")?;
    wallet.send(
        Some(opg),
        evm::contracts::IOPG::transferCall {
            to: settlement,
            value: alloy::primitives::U256::from(locked),
        }
        .abi_encode(),
    )?;
    wallet.send(
        Some(opg),
        evm::contracts::IOPG::transferCall {
            to: client,
            value: alloy::primitives::U256::from(CLIENT_OPG),
        }
        .abi_encode(),
    )?;
    Ok(EvmInfo {
        rpc_url,
        chain_id: CHAIN_ID,
        opg,
        settlement,
        deployer_key,
        anvil_pid: pid,
        port,
    })
}

/// Where a fresh `deployer`'s [`up`] puts OPG and the Settlement contract (its first two
/// creations), for the genesis written before they exist.
pub fn payments_of(deployer: Address) -> chain::signing::EvmPayments {
    chain::signing::EvmPayments {
        chain_id: CHAIN_ID,
        opg: deployer.create(0),
        settlement: deployer.create(1),
    }
}

/// The `[evm]` section of a node's config for this chain.
pub fn node_section(info: &EvmInfo) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("rpc_url".into(), info.rpc_url.clone().into());
    t.insert("chain_id".into(), (info.chain_id as i64).into());
    t.insert("settlement".into(), info.settlement.to_string().into());
    t.insert("opg".into(), info.opg.to_string().into());
    t.insert("anchor_tick_ms".into(), 500.into());
    t.insert("anchor_stagger_ms".into(), 2_000.into());
    // anvil mines a block per transaction: one block deep is "after the next transaction".
    t.insert("confirmations".into(), 1.into());
    t
}
