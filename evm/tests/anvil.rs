//! The settlement contract on a real EVM (anvil, from `chain/contracts`' npm toolchain): a
//! native ledger's blocks, decided by four validators, are anchored by their own commit
//! certificates through the node's transaction code; `verifyInference` is true for every
//! record the anchors cover and false for a forged leaf or proof; an anchor sent again is
//! refused and changes nothing.

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
    Admission, Genesis, InferenceRecord, JobRequest, Ledger, ModelId, PrivateKeySigner, Proof,
    TOTAL_SUPPLY,
};
use evm::contracts::{IOPG, ISettlement};
use evm::{Rpc, Wallet};
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

/// A network of four validators (100,000 OPG each), a client, an inference node and a model,
/// anchoring every 2 blocks.
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
    let stake = 100_000 * OPG;
    let params = Params {
        anchor_interval: 2,
        ..Params::default()
    };
    let mut accounts: Vec<GenesisAccount> = validators
        .iter()
        .map(|k| GenesisAccount {
            address: k.address(),
            balance: 0,
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
        balance: TOTAL_SUPPLY - 4 * stake - params.min_inference_stake,
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
    };
    genesis.validate().unwrap();
    (genesis, validators, client, exec, model)
}

#[test]
fn anchors_on_anvil_make_records_verifiable() {
    let dir = evm::artifacts::contracts_dir();
    evm::artifacts::build(&dir).unwrap();
    let (g, validators, client, exec, model) = network();
    let domain = g.domain();
    let admission = Admission::new(Arc::new(g.clone()), None);

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
    let mut ledger = Ledger::from_genesis(&g);
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
    let view = |data: Vec<u8>| wallet_call(&anvil.url, settlement, data);
    let supply = IOPG::totalSupplyCall::abi_decode_returns(&wallet_call(
        &anvil.url,
        opg,
        IOPG::totalSupplyCall {}.abi_encode(),
    ))
    .unwrap();
    assert_eq!(supply, U256::from(TOTAL_SUPPLY));

    // Four native blocks of two records each; anchors at heights 2 and 4.
    let mut leaves_since_anchor: Vec<B256> = Vec::new();
    let mut anchored: Vec<(u64, Vec<B256>)> = Vec::new();
    let mut gas = Vec::new();
    let mut calls: Vec<Vec<u8>> = Vec::new();
    for height in 1..=4u64 {
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
                    B256::repeat_byte(height as u8),
                    Proof::Reexec,
                    &exec,
                    &domain,
                )
                .unwrap();
                leaves_since_anchor.push(r.leaf(&domain));
                admission.check(Arc::new(r)).unwrap()
            })
            .collect();
        let proposer = ledger.next_validators()[0].0;
        let built = ledger
            .build_block(&g, proposer, ledger.tip_time_ms + 1000, records, vec![])
            .unwrap();
        assert_eq!(built.block.records.len(), 2, "{:?}", built.dropped_records);
        let block = built.block;
        ledger.commit(&built.changes);
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
        ledger.set_last_commit(cert.clone());
        if height % 2 != 0 {
            assert_eq!(block.header.anchor_records_root, B256::ZERO);
            continue;
        }
        assert_eq!(
            block.header.anchor_records_root,
            chain::merkle::root(&leaves_since_anchor)
        );
        let known = B256::from_slice(&view(ISettlement::validatorSetHashCall {}.abi_encode()));
        let call =
            evm::contracts::anchor_call(&block.header, &cert, known, ledger.next_validators())
                .to_vec();
        calls.push(call.clone());
        let receipt = wallet.send(Some(settlement), call).unwrap();
        gas.push(receipt.gas_used);
        assert_eq!(receipt.logs.len(), 1, "one Anchored event");
        let last = ISettlement::lastAnchoredHeightCall::abi_decode_returns(&view(
            ISettlement::lastAnchoredHeightCall {}.abi_encode(),
        ))
        .unwrap();
        assert_eq!(last, height);
        let a = ISettlement::anchorsCall::abi_decode_returns(&view(
            ISettlement::anchorsCall { height }.abi_encode(),
        ))
        .unwrap();
        assert_eq!(
            a.blockHash,
            block.hash(),
            "the contract's block hash is the node's"
        );
        assert_eq!(a.stateRoot, block.header.state_root);
        anchored.push((height, std::mem::take(&mut leaves_since_anchor)));
    }

    // Every record of every anchor verifies with its proof; forgeries do not.
    let verify = |leaf: B256, proof: Vec<B256>, height: u64| {
        ISettlement::verifyInferenceCall::abi_decode_returns(&view(
            ISettlement::verifyInferenceCall {
                leaf,
                proof,
                height,
            }
            .abi_encode(),
        ))
        .unwrap()
    };
    for (height, leaves) in &anchored {
        assert_eq!(leaves.len(), 4, "two blocks of two records");
        for (i, leaf) in leaves.iter().enumerate() {
            let proof = chain::merkle::proof(leaves, i).unwrap();
            assert!(
                verify(*leaf, proof.clone(), *height),
                "record {i} at {height}"
            );
            assert!(
                !verify(keccak256(leaf), proof.clone(), *height),
                "forged leaf"
            );
            let mut bad = proof.clone();
            bad[0] = B256::repeat_byte(0xee);
            assert!(!verify(*leaf, bad, *height), "forged proof");
            assert!(!verify(*leaf, proof, height + 1), "a height not anchored");
        }
    }
    let (h2, l2) = &anchored[0];
    assert!(
        !verify(l2[0], chain::merkle::proof(l2, 0).unwrap(), h2 + 2),
        "another anchor's root"
    );

    // The first anchor sent again: refused (its height is not after the last), nothing changes.
    let e = wallet.send(Some(settlement), calls[0].clone()).unwrap_err();
    assert!(e.to_string().contains("revert"), "{e}");
    let last = ISettlement::lastAnchoredHeightCall::abi_decode_returns(&view(
        ISettlement::lastAnchoredHeightCall {}.abi_encode(),
    ))
    .unwrap();
    assert_eq!(last, 4);
    // The wallet's nonce survives the refusal: the next transaction goes through.
    let approve = IOPG::approveCall {
        spender: settlement,
        value: U256::from(1),
    };
    wallet.send(Some(opg), approve.abi_encode()).unwrap();
    eprintln!("gas per anchor (4 validators, 4 records): {gas:?}");
}

/// `eth_call` of `data` on `to`.
fn wallet_call(url: &str, to: Address, data: Vec<u8>) -> Vec<u8> {
    let rpc = Rpc::new(url, Duration::from_secs(5));
    let out: alloy::primitives::Bytes = rpc
        .call(
            "eth_call",
            json!([{"to": to, "data": alloy::primitives::Bytes::from(data)}, "latest"]),
        )
        .unwrap();
    out.to_vec()
}
