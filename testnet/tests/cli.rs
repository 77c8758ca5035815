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
    // Unbond some now; it can be withdrawn only after the unbonding period (checked at the
    // end, so the wait overlaps the rest).
    let unbonded = ok(&[
        "stake", "unbond", "--node", &node, "--key", &new, "--amount", "1000opg", "--wait",
    ]);
    let unbonded_at = unbonded["height"].as_u64().unwrap();
    refused(
        &[
            "stake", "withdraw", "--node", &node, "--key", &new, "--wait",
        ],
        "nothing to withdraw before height",
    );
    refused(
        &["validator", "unjail", "--node", &node, "--key", &new],
        "is not jailed",
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
    // A model: registered from its directory by a new owner, with its prices; registering
    // it again, or a directory that does not load, is refused.
    let model_dir = dir.path().join("cli-mlp");
    kernels::write_seeded_mlp(
        &model_dir,
        "cli-mlp",
        0xc11,
        &kernels::MlpSpec {
            input_dim: 4,
            hidden_dims: vec![8],
            num_classes: 2,
        },
    )
    .unwrap();
    let (_, model_id) = kernels::manifest(&model_dir).unwrap();
    let registered = ok(&[
        "model",
        "register",
        &path(&model_dir),
        "--node",
        &node,
        "--key",
        &new,
        "--price-per-job",
        "2opg",
        "--price-per-unit",
        "0.001opg",
        "--mode",
        "reexec",
        "--wait",
    ]);
    assert_eq!(registered["ok"], true, "{registered}");
    let models = testnet::client::Client::new()
        .get(&format!("{node}/v1/models"))
        .unwrap()
        .ok()
        .unwrap();
    let entry = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == model_id.to_string())
        .unwrap_or_else(|| panic!("{model_id} not in {models}"))
        .clone();
    assert_eq!(entry["name"], "cli-mlp", "{entry}");
    assert_eq!(
        entry["owner"]
            .as_str()
            .unwrap()
            .parse::<chain::Address>()
            .unwrap(),
        new_key.address()
    );
    assert_eq!(entry["price_per_job"], (2 * common::OPG).to_string());
    assert_eq!(entry["price_per_unit"], (common::OPG / 1000).to_string());
    assert_eq!(
        (&entry["mode"], &entry["active"]),
        (&"reexec".into(), &true.into())
    );
    refused(
        &[
            "model",
            "register",
            &path(&model_dir),
            "--node",
            &node,
            "--key",
            &eco,
            "--price-per-job",
            "1opg",
        ],
        "already registered",
    );
    refused(
        &[
            "model",
            "register",
            &path(dir.path()),
            "--node",
            &node,
            "--key",
            &eco,
            "--price-per-job",
            "1opg",
        ],
        "loading the model",
    );

    // An inference node: funded, bonded, registered for the new model.
    let node_key = chain::PrivateKeySigner::random();
    let node_key_file = path(&dir.path().join("node.key"));
    chain::signing::write_key(Path::new(&node_key_file), &node_key).unwrap();
    ok(&[
        "transfer",
        "--node",
        &node,
        "--key",
        &eco,
        "--to",
        &node_key.address().to_string(),
        "--amount",
        "2000opg",
        "--wait",
    ]);
    let model_arg = model_id.to_string();
    let register = [
        "node",
        "register",
        "--node",
        &node,
        "--key",
        &node_key_file,
        "--peer-id",
        "12D3KooWcliInference",
        "--model",
        &model_arg,
    ];
    refused(&register, "an inference node needs");
    ok(&[
        "stake",
        "bond",
        "--node",
        &node,
        "--key",
        &node_key_file,
        "--amount",
        "1000opg",
        "--wait",
    ]);
    ok(&[&register[..], &["--wait"]].concat());
    let nodes = testnet::client::Client::new()
        .get(&format!("{node}/v1/inference-nodes"))
        .unwrap()
        .ok()
        .unwrap();
    let entry = nodes["inference_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["peer_id"] == "12D3KooWcliInference")
        .unwrap_or_else(|| panic!("not registered: {nodes}"))
        .clone();
    assert_eq!(entry["models"], serde_json::json!([model_id.to_string()]));
    assert_eq!(entry["serving"], true, "{entry}");

    let shown = ok(&["gov", "show", &id, "--node", &node]);
    let voter = net.nodes[1].address.to_string().to_lowercase();
    let votes = shown["votes"].as_object().unwrap();
    assert!(
        votes
            .iter()
            .any(|(k, v)| k.to_lowercase() == voter && v == "yes"),
        "{shown}"
    );

    // The unbonding period is over: the withdrawal returns the 1,000 OPG to the balance.
    let release = unbonded_at + testnet::net::testnet_params().unbonding_blocks;
    let client = testnet::client::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while client.height(&node).unwrap_or(0) < release {
        assert!(
            std::time::Instant::now() < deadline,
            "height {release} not reached"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let before = ok(&["account", "show", &addr, "--node", &node]);
    let withdrawn = ok(&[
        "stake", "withdraw", "--node", &node, "--key", &new, "--wait",
    ]);
    assert_eq!(withdrawn["ok"], true, "{withdrawn}");
    let after = ok(&["account", "show", &addr, "--node", &node]);
    let amount = |v: &Value, k: &str| v[k].as_str().unwrap().parse::<u128>().unwrap();
    assert_eq!(after["unbonding"], serde_json::json!([]), "{after}");
    // Plus the 1,000 OPG, less the fee, plus whatever it earned as a validator meanwhile.
    assert!(
        amount(&after, "balance") + common::tx_fee()
            >= amount(&before, "balance") + 1_000 * common::OPG,
        "{before} -> {after}"
    );
    assert_eq!(amount(&after, "bonded"), 14_000 * common::OPG, "{after}");
}
