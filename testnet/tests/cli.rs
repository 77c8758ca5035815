//! The chain commands of the `proofmesh` binary against a live testnet: each signs with
//! `--key`, submits through `--node`, waits with `--wait`, prints JSON, and exits non-zero with
//! the node's reason when refused.

mod common;

use std::path::Path;
use std::process::Command;

use common::Running;
use serde_json::Value;

/// Runs `proofmesh ARGS`; (exit success, stdout JSON or null, stderr).
fn proofmesh(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(testnet::net::default_bin())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn ok(args: &[&str]) -> Value {
    let (success, json, stderr) = proofmesh(args);
    assert!(success, "proofmesh {args:?} failed: {stderr}");
    json
}

fn refused(args: &[&str], want: &str) {
    let (success, _, stderr) = proofmesh(args);
    assert!(!success, "proofmesh {args:?} succeeded");
    assert!(
        stderr.contains(want),
        "proofmesh {args:?}: {stderr} lacks {want}"
    );
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn chain_commands_sign_submit_wait_and_refuse() {
    let run = Running::up_with(4, 1, |o| o.minilm_dir = None);
    let net = run.net();
    let node = net.nodes[0].http.clone();
    let eco = path(&net.dir.join("ecosystem.key"));
    let validator = path(&net.nodes[1].home.join("account.key"));
    let dir = tempfile::tempdir().unwrap();
    let new_key = chain::PrivateKeySigner::random();
    let new = path(&dir.path().join("new.key"));
    chain::signing::write_key(Path::new(&new), &new_key).unwrap();
    let addr = new_key.address().to_string();

    let t = ok(&[
        "transfer", "--node", &node, "--key", &eco, "--to", &addr, "--amount", "20000opg", "--wait",
    ]);
    assert_eq!(
        (t["status"].as_str(), t["ok"].as_bool()),
        (Some("included"), Some(true)),
        "{t}"
    );
    ok(&[
        "stake", "bond", "--node", &node, "--key", &new, "--amount", "15000opg", "--wait",
    ]);
    ok(&[
        "validator",
        "register",
        "--node",
        &node,
        "--key",
        &new,
        "--peer-id",
        "12D3KooWcliValidator",
        "--moniker",
        "cli",
        "--wait",
    ]);
    let account = ok(&["account", "show", &addr, "--node", &node]);
    assert_eq!(
        account["bonded"],
        (15_000 * common::OPG).to_string(),
        "{account}"
    );
    let validators = testnet::client::Client::new()
        .get(&format!("{node}/v1/validators"))
        .unwrap()
        .ok()
        .unwrap();
    assert!(
        validators["validators"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["moniker"] == "cli"),
        "{validators}"
    );
    // Refusals: non-zero exit with the node's reason.
    refused(
        &[
            "stake",
            "unbond",
            "--node",
            &node,
            "--key",
            &new,
            "--amount",
            "1000000opg",
        ],
        "cannot unbond",
    );
    refused(
        &[
            "gov",
            "propose",
            "--node",
            &node,
            "--key",
            &eco,
            "--kind",
            "params",
            "--set",
            "executor_bps=1",
            "--deposit",
            "1000opg",
        ],
        "must add up to 10000",
    );
    refused(
        &[
            "stake", "bond", "--node", &node, "--key", &new, "--amount", "1.5.3opg",
        ],
        "not a decimal amount",
    );
    // Governance through the CLI: propose, vote, list, show.
    ok(&[
        "gov",
        "propose",
        "--node",
        &node,
        "--key",
        &eco,
        "--kind",
        "text",
        "--title",
        "cli",
        "--deposit",
        "1000opg",
        "--wait",
    ]);
    let list = ok(&["gov", "list", "--node", &node]);
    let id = list["proposals"][0]["id"].as_u64().unwrap().to_string();
    ok(&[
        "gov",
        "vote",
        "--node",
        &node,
        "--key",
        &validator,
        "--proposal",
        &id,
        "--option",
        "yes",
        "--wait",
    ]);
    let shown = ok(&["gov", "show", &id, "--node", &node]);
    let voter = net.nodes[1].address.to_string().to_lowercase();
    let votes = shown["votes"].as_object().unwrap();
    assert!(
        votes
            .iter()
            .any(|(k, v)| k.to_lowercase() == voter && v == "yes"),
        "{shown}"
    );
}
