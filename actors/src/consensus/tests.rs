//! The Consensus actor against a real Settlement, Mempool, Network and RocksDB store, with
//! faults put between consensus and settlement.

use std::sync::Mutex;

use chain::TOTAL_SUPPLY;
use chain::genesis::{GenesisAccount, GenesisValidator, Params};

use super::*;
use crate::network::NetworkConfig;

const OPG: u128 = 1_000_000_000_000_000_000;

/// One validator (it decides alone) and a funded ecosystem account.
fn solo_genesis(key: &PrivateKeySigner) -> Genesis {
    let stake = 1_000_000 * OPG;
    Genesis {
        chain_id: 31_337,
        genesis_time_ms: chain::types::now_ms() - 1_000,
        accounts: vec![
            GenesisAccount {
                address: key.address(),
                balance: 0,
                stake,
                label: "validator".into(),
                vesting: None,
            },
            GenesisAccount {
                address: Address::repeat_byte(0xec),
                balance: TOTAL_SUPPLY - stake,
                stake: 0,
                label: "ecosystem".into(),
                vesting: None,
            },
        ],
        pools: Default::default(),
        validators: vec![GenesisValidator {
            address: key.address(),
            peer_id: String::new(),
            moniker: String::new(),
        }],
        inference_nodes: vec![],
        models: vec![],
        params: Params {
            block_interval_ms: 100,
            ..Params::default()
        },
        tee: None,
        evm: None,
    }
}

/// Forwards commits to the real Settlement, failing the first `fail` of them as a full disk
/// would; every attempt is logged as (height, succeeded).
struct FailingCommits {
    settlement: Addr<Settlement>,
    fail: usize,
    attempts: Arc<Mutex<Vec<(Height, bool)>>>,
}

impl Actor for FailingCommits {
    type Context = Context<Self>;
}

impl Handler<CommitBlock> for FailingCommits {
    type Result = ResponseFuture<Result<crate::settlement::NextValidators, String>>;
    fn handle(&mut self, msg: CommitBlock, _: &mut Self::Context) -> Self::Result {
        let height = msg.block.header.height;
        if self.fail > 0 {
            self.fail -= 1;
            if let Ok(mut a) = self.attempts.lock() {
                a.push((height, false));
            }
            return Box::pin(async { Err("store: No space left on device".to_string()) });
        }
        let settlement = self.settlement.clone();
        let attempts = self.attempts.clone();
        Box::pin(async move {
            let res = settlement
                .send(msg)
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            if let Ok(mut a) = attempts.lock() {
                a.push((height, res.is_ok()));
            }
            res
        })
    }
}

/// A decided block whose commit fails is committed later with the same decision (no peer
/// holds it: only the retry can), and the chain goes on past it.
#[actix::test]
async fn a_decided_block_whose_commit_fails_is_retried_until_it_commits() {
    let dir = tempfile::tempdir().unwrap();
    let key = chain::signing::seeded_key(11, 0);
    let genesis = Arc::new(solo_genesis(&key));
    genesis.validate().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let settlement = Settlement::open(store.clone(), genesis.clone())
        .unwrap()
        .start();
    let mempool = Mempool::new(
        chain::Admission::new(genesis.clone(), None),
        Some(store.clone()),
        settlement.clone().recipient(),
    )
    .start();
    let network = Network::start(
        libp2p::identity::Keypair::generate_ed25519(),
        NetworkConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![],
        },
    )
    .unwrap()
    .addr;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let commits = FailingCommits {
        settlement: settlement.clone(),
        fail: 3,
        attempts: attempts.clone(),
    }
    .start();
    let ledger = Ledger {
        commit: commits.recipient(),
        ..Ledger::from(settlement.clone())
    };
    let timeouts = TimeoutConfig {
        propose: Duration::from_millis(300),
        prevote: Duration::from_millis(200),
        precommit: Duration::from_millis(200),
        delta: Duration::from_millis(100),
    };
    let _consensus = Consensus::new(
        genesis.clone(),
        Some(key),
        ConsensusConfig {
            timeouts,
            byzantine: None,
        },
        store.clone(),
        network,
        ledger,
        mempool,
        None,
    )
    .start();

    let deadline = Instant::now() + Duration::from_secs(30);
    let tip = loop {
        let tip = settlement.send(crate::settlement::GetTip).await.unwrap();
        if tip.height >= 3 || Instant::now() > deadline {
            break tip;
        }
        actix::clock::sleep(Duration::from_millis(50)).await;
    };
    assert!(tip.height >= 3, "stuck at height {}", tip.height);
    let attempts = attempts.lock().unwrap().clone();
    // Height 1 was tried three times in vain, then committed; later heights at once.
    assert_eq!(
        &attempts[..4],
        &[(1, false), (1, false), (1, false), (1, true)],
        "{attempts:?}"
    );
    assert!(attempts[4..].iter().all(|(_, ok)| *ok), "{attempts:?}");
    // What was committed is what was decided: the stored certificate signs the stored block.
    let block = store.block(1).unwrap().unwrap();
    let certificate = store.certificate(1).unwrap().unwrap();
    assert_eq!(certificate.block_hash, block.hash());
    certificate
        .verify(&genesis.validator_powers(), &genesis.domain())
        .unwrap();
    // Each block was executed when built (and validated); none again to commit it.
    assert_eq!(
        settlement
            .send(crate::settlement::CommitExecutions)
            .await
            .unwrap(),
        0
    );
}

/// A vote is skipped unchecked only when the very same signed vote is held at this height: a
/// different value, another signature or another height is checked as new.
#[test]
fn only_the_same_signed_vote_at_this_height_counts_as_held() {
    let key = chain::signing::seeded_key(12, 0);
    let domain = chain::signing::Domain {
        chain_id: 9,
        salt: chain::B256::ZERO,
        payments: None,
    };
    let vote = |height, block: Option<chain::B256>| {
        SignedVote::sign(
            chain::Vote {
                height,
                round: 0,
                kind: VoteKind::Prevote,
                block,
                validator: key.address(),
            },
            &key,
            &domain,
        )
        .unwrap()
    };
    let held = vote(5, Some(chain::B256::repeat_byte(1)));
    let mut votes = HashMap::new();
    votes.insert((0, VoteKind::Prevote, key.address()), held.clone());
    assert!(is_held(&votes, 5, &held));
    assert!(!is_held(&votes, 6, &held), "held at another height");
    assert!(!is_held(&votes, 5, &vote(5, None)), "a conflicting vote");
    let mut resigned = held.clone();
    resigned.signature.0[10] ^= 1;
    assert!(!is_held(&votes, 5, &resigned), "other signature bytes");
    assert!(!is_held(&HashMap::new(), 5, &held));
}
