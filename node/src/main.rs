//! `proofmesh`: the node binary. `init` makes keys and a config, `run` starts the node (actors,
//! libp2p, HTTP API), `submit` sends a signed job to any node and prints the result, `infer`
//! runs a model locally.

mod attest;
mod bridgecmd;
mod chaincmd;
mod config;
mod http;
mod infer;
mod keycmd;
mod openai;
mod run;
mod submit;
mod verify;
mod x402;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::config::{Config, Role};

#[derive(Parser)]
#[command(
    name = "proofmesh",
    version,
    about = "proofmesh node: verifiable AI inference over a p2p network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node home: account key, libp2p key and node.toml.
    Init {
        #[arg(long)]
        home: PathBuf,
        /// Roles of this node (repeatable). Every node is also a gateway.
        #[arg(long = "role", value_enum, default_values_t = [Role::Gateway])]
        roles: Vec<Role>,
        /// Node name used in logs.
        #[arg(long)]
        name: Option<String>,
        /// HTTP API address.
        #[arg(long)]
        http: Option<String>,
        /// libp2p listen multiaddr.
        #[arg(long)]
        listen: Option<String>,
        /// Bootstrap peers (repeatable).
        #[arg(long)]
        bootstrap: Vec<String>,
        /// Models directory (defaults to HOME/models).
        #[arg(long)]
        models_dir: Option<PathBuf>,
    },
    /// Run the node in HOME until SIGINT/SIGTERM.
    Run {
        #[arg(long)]
        home: PathBuf,
    },
    /// Submit a job through any node and print result JSON.
    Submit(submit::SubmitArgs),
    /// Send OPG to another account.
    Transfer(submit::TransferArgs),
    /// Bond, unbond and withdraw stake.
    #[command(subcommand)]
    Stake(chaincmd::StakeCommand),
    /// Register as a validator, or leave jail.
    #[command(subcommand)]
    Validator(chaincmd::ValidatorCommand),
    /// Register as an inference node.
    #[command(subcommand)]
    Node(chaincmd::NodeCommand),
    /// Register a model.
    #[command(subcommand)]
    Model(chaincmd::ModelCommand),
    /// Governance: propose, vote, list, show.
    #[command(subcommand)]
    Gov(chaincmd::GovCommand),
    /// Account state.
    #[command(subcommand)]
    Account(chaincmd::AccountCommand),
    /// Run a model locally (no network) and print its output, output hash and model id.
    Infer(infer::InferArgs),
    /// TEE attestation tools (AMD SEV-SNP).
    #[command(subcommand)]
    Attest(attest::AttestCommand),
    /// Check a job receipt offline, and its anchor on the EVM chain.
    Verify(verify::VerifyArgs),
    /// The OPG bridge to the EVM chain: deposit, withdraw, release, status.
    #[command(subcommand)]
    Bridge(bridgecmd::BridgeCommand),
    /// API keys for the OpenAI-compatible API.
    #[command(subcommand)]
    Key(keycmd::KeyCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init {
            home,
            roles,
            name,
            http,
            listen,
            bootstrap,
            models_dir,
        } => init(home, roles, name, http, listen, bootstrap, models_dir),
        Command::Run { home } => run::run(&home),
        Command::Submit(args) => submit::submit(args),
        Command::Transfer(args) => submit::transfer(args),
        Command::Stake(cmd) => chaincmd::stake(cmd),
        Command::Validator(cmd) => chaincmd::validator(cmd),
        Command::Node(cmd) => chaincmd::node(cmd),
        Command::Model(cmd) => chaincmd::model(cmd),
        Command::Gov(cmd) => chaincmd::gov(cmd),
        Command::Account(cmd) => chaincmd::account(cmd),
        Command::Infer(args) => infer::infer(args),
        Command::Attest(cmd) => attest::attest(cmd),
        Command::Verify(args) => verify::verify(args),
        Command::Bridge(cmd) => bridgecmd::bridge(cmd),
        Command::Key(cmd) => keycmd::key(cmd),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init(
    home: PathBuf,
    roles: Vec<Role>,
    name: Option<String>,
    http: Option<String>,
    listen: Option<String>,
    bootstrap: Vec<String>,
    models_dir: Option<PathBuf>,
) -> Result<()> {
    if Config::path(&home).exists() {
        bail!(
            "{} already exists; refusing to overwrite a node's keys",
            Config::path(&home).display()
        );
    }
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let mut config = Config {
        name: name.unwrap_or_else(|| {
            home.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
        roles,
        ..Config::default()
    };
    if let Some(h) = http {
        config.http.listen = h;
    }
    if let Some(l) = listen {
        config.network.listen = vec![l];
    }
    config.network.bootstrap = bootstrap;
    if let Some(m) = models_dir {
        config.inference.models_dir = m;
    }
    let account = chain::PrivateKeySigner::random();
    chain::signing::write_key(&home.join(&config.account_key), &account)?;
    let p2p = libp2p::identity::Keypair::generate_ed25519();
    let encoded = p2p
        .to_protobuf_encoding()
        .context("encoding the libp2p key")?;
    write_private(&home.join(&config.p2p_key), &encoded)?;
    std::fs::write(Config::path(&home), config.to_toml())?;
    // Round trip: what we wrote must load.
    Config::load(&home)?;
    println!(
        "{}",
        serde_json::json!({
            "home": home,
            "address": account.address(),
            "peer_id": p2p.public().to_peer_id().to_string(),
            "roles": config.roles,
        })
    );
    Ok(())
}

fn write_private(path: &std::path::Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)?;
    Ok(())
}
