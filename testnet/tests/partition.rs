//! A network split on real processes: four equal validators cut 2|2 (each node blocks the
//! other side through its operator endpoint) finalize nothing while split, fork nothing, and
//! resume within a stated bound once the split heals.

mod common;

use std::time::{Duration, Instant};

use common::Running;
use testnet::client::Client;

/// Once healed, every node must be two blocks further within this long.
const HEAL_BOUND: Duration = Duration::from_secs(30);

fn heights(run: &Running, client: &Client) -> Vec<u64> {
    run.net()
        .nodes
        .iter()
        .map(|n| {
            client
                .get(&format!("{}/v1/status", n.http))
                .ok()
                .and_then(|r| r.body["height"].as_u64())
                .unwrap_or(0)
        })
        .collect()
}

fn block_hash(client: &Client, node: &str, height: u64) -> String {
    client
        .get(&format!("{node}/v1/blocks/{height}"))
        .unwrap()
        .body["hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_two_two_split_finalizes_nothing_forks_nothing_and_heals() {
    let run = Running::up(4, 0, Vec::new());
    let client = Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while heights(&run, &client).iter().any(|h| *h < 2) {
        assert!(Instant::now() < deadline, "the chain never started");
        std::thread::sleep(Duration::from_millis(200));
    }

    run.net().partition(&[&[0, 1], &[2, 3]]).unwrap();
    // A block decided just before the cut may still commit; after that, nothing can.
    std::thread::sleep(Duration::from_secs(2));
    let split = heights(&run, &client);
    std::thread::sleep(Duration::from_secs(6));
    let still = heights(&run, &client);
    assert_eq!(still, split, "a block was finalized with half the power");

    let healed = Instant::now();
    run.net().heal().unwrap();
    let target = split.iter().max().unwrap() + 2;
    while heights(&run, &client).iter().any(|h| *h < target) {
        assert!(
            healed.elapsed() < HEAL_BOUND,
            "not resumed {HEAL_BOUND:?} after healing: heights {:?}, need {target}",
            heights(&run, &client)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "resumed {} ms after healing (heights at the split {split:?})",
        healed.elapsed().as_millis()
    );

    // One chain: every node holds the same block at every height.
    let common = *heights(&run, &client).iter().min().unwrap();
    for h in 1..=common {
        let hashes: Vec<String> = run
            .net()
            .nodes
            .iter()
            .map(|n| block_hash(&client, &n.http, h))
            .collect();
        assert!(
            hashes.iter().all(|x| !x.is_empty() && *x == hashes[0]),
            "fork at height {h}: {hashes:?}"
        );
    }
}
