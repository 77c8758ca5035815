//! The settlement contract on a real EVM (anvil, from `chain/contracts`' npm toolchain): blocks
//! of a native chain in RocksDB, decided by four validators, are anchored by their own commit
//! certificates through the node's anchoring step, which also carries a validator-set change
//! to the contract; `verifyInference` is true for every record the anchors cover and false for
//! a forged leaf or proof; an anchor sent again is refused and changes nothing.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256, keccak256};
use alloy::sol_types::SolCall;
use chain::block::{CommitCertificate, SignedVote, Vote, VoteKind};
use chain::genesis::{
    GenesisAccount, GenesisInferenceNode, GenesisValidator, ModelEntry, Params, VerificationMode,
};
use chain::signing::seeded_key;
use chain::{
    Action, Admission, Genesis, InferenceRecord, JobRequest, ModelId, PrivateKeySigner, Proof,
    Store, TOTAL_SUPPLY, UnsignedTx,
};
use evm::contracts::{IOPG, ISettlement};
use evm::{Rpc, Wallet, anchor};
use serde_json::json;

const OPG: u128 = 10u128.pow(18);

/// An anvil process on a free port, killed when dropped.
struct Anvil {
    child: Child,
    url: String,
}

impl Anvil {
    fn start(chain_id: u64) -> Anvil {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = evm::artifacts::foundry_tool(&evm::artifacts::contracts_dir(), "anvil");
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--chain-id", &chain_id.to_string(), "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/contracts-deps)", bin.display()));
        let anvil = Anvil {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let rpc = Rpc::new(&anvil.url, Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(30);
        while rpc.call::<String>("eth_chainId", json!([])).is_err() {
            assert!(
                Instant::now() < deadline,
                "anvil did not answer on {}",
                anvil.url
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        anvil
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network of four validators (100,000 OPG bonded, 1,000 OPG to spend each), a client, an
/// inference node and a model; epochs of 3 blocks, anchors every 4.
fn network() -> (
    Genesis,
    Vec<PrivateKeySigner>,
    PrivateKeySigner,
    PrivateKeySigner,
    ModelId,
) {
    let validators: Vec<PrivateKeySigner> = (0..4).map(|i| seeded_key(31, i)).collect();
    let (client, exec) = (seeded_key(31, 10), seeded_key(31, 11));
    let model = ModelId([7; 32]);
    let (stake, spend) = (100_000 * OPG, 1_000 * OPG);
    let params = Params {
        anchor_interval: 4,
        epoch_blocks: 3,
        ..Params::default()
    };
    let mut accounts: Vec<GenesisAccount> = validators
        .iter()
        .map(|k| GenesisAccount {
            address: k.address(),
            balance: spend,
            stake,
            label: "validator".into(),
            vesting: None,
        })
        .collect();
    accounts.push(GenesisAccount {
        address: exec.address(),
        balance: 0,
        stake: params.min_inference_stake,
        label: "inference".into(),
        vesting: None,
    });
    accounts.push(GenesisAccount {
        address: client.address(),
        balance: TOTAL_SUPPLY - 4 * (stake + spend) - params.min_inference_stake,
        stake: 0,
        label: "client".into(),
        vesting: None,
    });
    let genesis = Genesis {
        chain_id: 4_000_001,
        genesis_time_ms: 0,
        accounts,
        pools: Default::default(),
        validators: validators
            .iter()
            .map(|k| GenesisValidator {
                address: k.address(),
                peer_id: String::new(),
                moniker: String::new(),
            })
            .collect(),
        inference_nodes: vec![GenesisInferenceNode::new(exec.address())],
        models: vec![ModelEntry {
            id: model,
            name: "m".into(),
            owner: client.address(),
            price_per_job: 1,
            price_per_unit: 0,
            mode: VerificationMode::Reexec,
        }],
        params,
        tee: None,
        evm: None,
    };
    genesis.validate().unwrap();
    (genesis, validators, client, exec, model)
}

/// `eth_call` of `data` on `to`.
fn view(url: &str, to: Address, data: Vec<u8>) -> Vec<u8> {
    let rpc = Rpc::new(url, Duration::from_secs(5));
    let out: alloy::primitives::Bytes = rpc
        .call(
            "eth_call",
            json!([{"to": to, "data": alloy::primitives::Bytes::from(data)}, "latest"]),
        )
        .unwrap();
    out.to_vec()
}

#[test]
fn anchors_on_anvil_follow_the_set_and_make_records_verifiable() {
    let dir = evm::artifacts::contracts_dir();
    evm::artifacts::build(&dir).unwrap();
    let (g, validators, client, exec, model) = network();
    let domain = g.domain();
    let admission = Admission::new(Arc::new(g.clone()), None);
    let data = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(data.path()).unwrap());
    store.init_genesis(&g).unwrap();
    let mut ledger = store.load_ledger().unwrap();

    // The EVM side: a funded deployer, OPG, and the settlement with the genesis set.
    let evm_chain = 31_337;
    let anvil = Anvil::start(evm_chain);
    let deployer = PrivateKeySigner::random();
    Rpc::new(&anvil.url, Duration::from_secs(5))
        .call::<serde_json::Value>(
            "anvil_setBalance",
            json!([deployer.address(), "0x3635C9ADC5DEA00000"]),
        )
        .unwrap();
    let mut wallet = Wallet::new(
        Rpc::new(&anvil.url, Duration::from_secs(10)),
        deployer.clone(),
        evm_chain,
    )
    .unwrap();
    let opg = wallet
        .deploy(
            &evm::artifacts::bytecode(&dir, "OPG").unwrap(),
            &evm::contracts::opg_constructor(deployer.address()),
        )
        .unwrap();
    let settlement = wallet
        .deploy(
            &evm::artifacts::bytecode(&dir, "Settlement").unwrap(),
            &evm::contracts::settlement_constructor(
                opg,
                g.chain_id,
                g.hash(),
                ledger.next_validators(),
            ),
        )
        .unwrap();
    let call = |data: Vec<u8>| view(&anvil.url, settlement, data);
    let supply = IOPG::totalSupplyCall::abi_decode_returns(&view(
        &anvil.url,
        opg,
        IOPG::totalSupplyCall {}.abi_encode(),
    ))
    .unwrap();
    assert_eq!(supply, U256::from(TOTAL_SUPPLY));
    let genesis_set = chain::block::validator_set_hash(ledger.next_validators());

    // Eight native blocks of two records each. Validator 0 bonds 500 OPG more in block 1, so
    // the set's powers change at the epoch boundary (the header of block 3 names a new set).
    let mut leaves: Vec<Vec<B256>> = Vec::new();
    for height in 1..=8u64 {
        let records: Vec<_> = (0..2)
            .map(|i| {
                let nonce = height * 10 + i;
                let input = format!("{{\"n\":{nonce}}}");
                let job = JobRequest {
                    client: client.address(),
                    model_id: model,
                    input_hash: keccak256(input.as_bytes()),
                    max_fee: 1,
                    nonce,
                    expiry: u64::MAX,
                }
                .sign(&client, &domain)
                .unwrap();
                let r = InferenceRecord::create(
                    job,
                    input,
                    (B256::repeat_byte(height as u8), 1),
                    Proof::Reexec,
                    &exec,
                    &domain,
                )
                .unwrap();
                admission.check(Arc::new(r)).unwrap()
            })
            .collect();
        let txs = if height == 1 {
            vec![
                UnsignedTx {
                    from: validators[0].address(),
                    nonce: 0,
                    max_fee: g.params.tx_fee,
                    action: Action::Bond { amount: 500 * OPG },
                }
                .sign(&validators[0], &domain)
                .unwrap(),
            ]
        } else {
            vec![]
        };
        let proposer = ledger.next_validators()[0].0;
        let built = ledger
            .build_block(&g, proposer, ledger.tip_time_ms + 1000, records, txs)
            .unwrap();
        assert_eq!(built.block.records.len(), 2, "{:?}", built.dropped_records);
        let block = built.block;
        leaves.push(block.records.iter().map(|r| r.leaf(&domain)).collect());
        let cert = CommitCertificate {
            height,
            round: 0,
            block_hash: block.hash(),
            votes: validators
                .iter()
                .map(|k| {
                    SignedVote::sign(
                        Vote {
                            height,
                            round: 0,
                            kind: VoteKind::Precommit,
                            block: Some(block.hash()),
                            validator: k.address(),
                        },
                        k,
                        &domain,
                    )
                    .unwrap()
                })
                .collect(),
        };
        store.commit_block(&block, &cert, &built.changes).unwrap();
        ledger.commit(&built.changes);
        ledger.set_last_commit(cert);
    }
    let header3 = store.block(3).unwrap().unwrap().header;
    assert_ne!(
        header3.next_validators_hash, genesis_set,
        "block 3 names a new set"
    );

    // Not this node's turn: nothing is sent.
    let waiting = anchor::step(&mut wallet, settlement, store.as_ref(), 4, |_| false).unwrap();
    assert_eq!(waiting, anchor::Step::Waiting { height: 3 });
    // The set change first, then the anchor heights; then nothing more to do.
    let mut steps = Vec::new();
    loop {
        match anchor::step(&mut wallet, settlement, store.as_ref(), 4, |_| true).unwrap() {
            anchor::Step::UpToDate { last } => {
                assert_eq!(last, 8);
                break;
            }
            s => steps.push(s),
        }
        assert!(steps.len() < 10, "{steps:?}");
    }
    let heights: Vec<u64> = steps
        .iter()
        .map(|s| match s {
            anchor::Step::Anchored { height, .. } => *height,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(heights, vec![3, 4, 8]);
    let set_now = B256::from_slice(&call(ISettlement::validatorSetHashCall {}.abi_encode()));
    assert_eq!(
        set_now, header3.next_validators_hash,
        "the contract follows the set"
    );
    for h in [3u64, 4, 8] {
        let a = ISettlement::anchorsCall::abi_decode_returns(&call(
            ISettlement::anchorsCall { height: h }.abi_encode(),
        ))
        .unwrap();
        assert_eq!(a.blockHash, store.block(h).unwrap().unwrap().hash());
    }

    // Every record verifies under the anchor that covers it (blocks 1-4 under 4, 5-8 under
    // 8); forgeries do not.
    let verify = |leaf: B256, proof: Vec<B256>, height: u64| {
        ISettlement::verifyInferenceCall::abi_decode_returns(&call(
            ISettlement::verifyInferenceCall {
                leaf,
                proof,
                height,
            }
            .abi_encode(),
        ))
        .unwrap()
    };
    for (anchor_height, blocks) in [(4u64, 0..4), (8, 4..8)] {
        let covered: Vec<B256> = leaves[blocks].concat();
        assert_eq!(covered.len(), 8);
        for (i, leaf) in covered.iter().enumerate() {
            let proof = chain::merkle::proof(&covered, i).unwrap();
            assert!(
                verify(*leaf, proof.clone(), anchor_height),
                "record {i} under {anchor_height}"
            );
            assert!(
                !verify(keccak256(leaf), proof.clone(), anchor_height),
                "forged leaf"
            );
            let mut bad = proof.clone();
            bad[0] = B256::repeat_byte(0xee);
            assert!(!verify(*leaf, bad, anchor_height), "forged proof");
            assert!(
                !verify(*leaf, proof, 3),
                "the set-change anchor covers no records"
            );
        }
    }

    // What a contract pays to check a record: verifyInference with an 8-leaf proof (3 hashes),
    // as eth_estimateGas of a transaction calling it (21,000 of it is any transaction's base).
    let covered: Vec<B256> = leaves[0..4].concat();
    let check = ISettlement::verifyInferenceCall {
        leaf: covered[0],
        proof: chain::merkle::proof(&covered, 0).unwrap(),
        height: 4,
    };
    let estimate: String = Rpc::new(&anvil.url, Duration::from_secs(5))
        .call(
            "eth_estimateGas",
            json!([{"to": settlement, "data": alloy::primitives::Bytes::from(check.abi_encode())}]),
        )
        .unwrap();
    let verify_gas = u64::from_str_radix(estimate.trim_start_matches("0x"), 16).unwrap();
    assert!(verify_gas > 21_000 && verify_gas < 60_000, "{verify_gas}");

    // An old anchor sent again is refused (not after the last); the wallet goes on.
    let header = store.block(4).unwrap().unwrap().header;
    let cert = store.certificate(4).unwrap().unwrap();
    let again = evm::contracts::anchor_call(&header, &cert, set_now, &[]);
    let e = wallet.send(Some(settlement), again.to_vec()).unwrap_err();
    assert!(e.to_string().contains("revert"), "{e}");
    let approve = IOPG::approveCall {
        spender: settlement,
        value: U256::from(1),
    };
    wallet.send(Some(opg), approve.abi_encode()).unwrap();

    // The bridge as validators read it: a deposit is seen only `confirmations` blocks deep.
    let amount = 7 * 10u128.pow(18);
    let recipient = Address::repeat_byte(0x77);
    let circulating = evm::bridge::circulating(wallet.rpc(), settlement, "latest").unwrap();
    let (id, receipt) =
        evm::bridge::deposit_tokens(&mut wallet, settlement, amount, recipient).unwrap();
    assert_eq!(id, 0, "the Deposited event names the deposit");
    assert_eq!(
        evm::bridge::circulating(wallet.rpc(), settlement, "latest").unwrap(),
        circulating - amount,
        "a deposit takes its amount out of the EVM's circulation"
    );
    assert_eq!(evm::bridge::token(wallet.rpc(), settlement).unwrap(), opg);
    let rpc = wallet.rpc();
    let seen = |confirmations| {
        let block = evm::bridge::confirmed_block(rpc, confirmations)
            .unwrap()
            .unwrap();
        evm::bridge::deposits_from(rpc, settlement, 0, 16, block).unwrap()
    };
    let want = evm::bridge::Deposit {
        id: 0,
        from: deployer.address(),
        recipient,
        amount,
        evm_block: receipt.block_number,
    };
    assert_eq!(seen(0), vec![want]);
    assert_eq!(seen(2), vec![], "not 2 blocks deep yet");
    let _: serde_json::Value = rpc.call("anvil_mine", json!(["0x2"])).unwrap();
    assert_eq!(seen(2), vec![want]);
    let block = evm::bridge::confirmed_block(rpc, 0).unwrap().unwrap();
    assert_eq!(
        evm::bridge::deposit(rpc, settlement, 0, block).unwrap(),
        Some(want)
    );
    assert_eq!(
        evm::bridge::deposit(rpc, settlement, 1, block).unwrap(),
        None
    );
    let gas: Vec<u64> = steps
        .iter()
        .filter_map(|s| match s {
            anchor::Step::Anchored { gas_used, .. } => Some(*gas_used),
            _ => None,
        })
        .collect();
    eprintln!(
        "gas per anchor (4 validators; set change, 8 records, 8 records): {gas:?}; \
         a transaction calling verifyInference with a 3-hash proof: {verify_gas}"
    );
}
