//! `proofmesh run`: loads the home directory, starts every actor, the HTTP API, and writes
//! `HOME/run.json` (pid, HTTP URL, p2p address) once listening.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_web::{App, HttpServer, web};
use actors::consensus::{Consensus, ConsensusConfig};
use actors::gateway::Gateway;
use actors::inference::Inference;
use actors::mempool::Mempool;
use actors::models::Models;
use actors::network::{Network, NetworkConfig, Routes, SetRoutes};
use actors::settlement::{Settlement, Subscribe};
use actors::verifier::Verifier;
use anyhow::{Context, Result};
use chain::consensus::TimeoutConfig;
use chain::{Genesis, Store};
use kernels::Backend;

use crate::config::{Config, Role, TeeKind};
use crate::http::{self, AppState};

/// Threads serving the HTTP API.
const HTTP_WORKERS: usize = 2;

/// Heaps glibc's allocator may keep. By default it gives threads that contend for `malloc`
/// arenas of their own, up to eight per core, and each keeps memory it freed: over a long run a
/// node's threads (actors, HTTP workers, blocking pool, RocksDB) hold freed memory in every
/// arena. A 30,000-job soak ended with validators at 164–168 MiB under two arenas against
/// 166–187 MiB under the default, at the same throughput.
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's arenas at [`MALLOC_ARENAS`], unless the operator set `MALLOC_ARENA_MAX`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a tunable of the process's allocator; it takes the allocator's
    // own lock and touches no memory of ours.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } == 0 {
        tracing::warn!("could not limit malloc arenas");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

pub fn run(home: &Path) -> Result<()> {
    let config = Config::load(home)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .with_context(|| format!("log filter {:?} in node.toml", config.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    stop_on_panic();
    limit_malloc_arenas();

    let genesis = Arc::new(Genesis::load(&home.join(&config.genesis)).context("loading genesis")?);
    let account = chain::signing::load_key(&home.join(&config.account_key))
        .context("loading the account key")?;
    let p2p_bytes = std::fs::read(home.join(&config.p2p_key)).context("reading the libp2p key")?;
    let p2p = libp2p::identity::Keypair::from_protobuf_encoding(&p2p_bytes)
        .context("decoding the libp2p key")?;
    let store =
        Arc::new(Store::open(&home.join(&config.data_dir)).context("opening the data directory")?);
    let models_dir = home.join(&config.inference.models_dir);
    let need_models = config.has(Role::Validator) || config.has(Role::Inference);
    let models = if need_models {
        Models::load_dir(&models_dir).context("loading models")?
    } else {
        Models::default()
    };
    for m in &genesis.models {
        if need_models && models.get(&m.id).is_none() {
            tracing::warn!(model = %m.id, name = %m.name, dir = %models_dir.display(), "registered model not found on disk");
        }
    }
    let network_config = NetworkConfig {
        listen: config
            .network
            .listen
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect(),
        bootstrap: config
            .network
            .bootstrap
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect(),
    };
    let is_validator = config.has(Role::Validator);
    if is_validator
        && genesis
            .validators
            .iter()
            .all(|v| v.address != account.address())
    {
        tracing::warn!(address = %account.address(), "role validator, but this account is not in the genesis validator set: observing only");
    }
    tracing::info!(name = %config.name, address = %account.address(), peer_id = %p2p.public().to_peer_id(), "starting");

    let system = actix::System::new();
    let home = home.to_path_buf();
    system.block_on(async move {
        let (backend, verify_backend) = backends(&config.inference)?;
        let started = Network::start(p2p, network_config).context("starting the network")?;
        let network = started.addr.clone();
        // One set of record checks (and one TEE verifier cache) for every actor that admits
        // records; the settlement keeps its registrations at the tip.
        let tee = genesis.tee.as_ref().and_then(|t| match t.verifier() {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                tracing::error!(error = %e, "genesis tee section unusable: records of tee models will be rejected");
                None
            }
        });
        let admission = chain::Admission::new(genesis.clone(), tee);
        let settlement = Settlement::open(store.clone(), genesis.clone())
            .context("loading the ledger")?
            .with_admission(admission.clone())
            .start();
        let mempool = Mempool::new(
            admission.clone(),
            Some(store.clone()),
            settlement.clone().recipient(),
        )
        .with_publisher(network.clone().recipient())
        .start();
        let verifier = Verifier::new(
            admission.clone(),
            models.clone(),
            verify_backend,
            is_validator,
            network.clone(),
            mempool.clone(),
            settlement.clone().recipient(),
        );
        // A validator reports the false records it catches, and re-executes the records of
        // fraud reports before it admits them.
        let verifier = if is_validator {
            verifier.with_reporter(account.clone())
        } else {
            verifier
        }
        .start();
        if is_validator {
            mempool.do_send(actors::mempool::SetFraudChecker(verifier.clone().recipient()));
        }
        let inference = if config.has(Role::Inference) {
            let attestation = start_attestation(&config, &home, account.address())?;
            let addr = Inference::new(
                admission.clone(),
                models.clone(),
                backend.clone(),
                actors::inference::Executor {
                    key: account.clone(),
                    peer: started.peer_id,
                },
                actors::inference::Links {
                    network: network.clone(),
                    mempool: mempool.clone(),
                    settlement: settlement.clone(),
                },
                actors::inference::Proving {
                    attestation,
                    faulty: config.inference.faulty,
                    unchecked: config.attestation.byzantine.is_some(),
                },
            )
            .start();
            let served = addr
                .send(actors::inference::ServedModels)
                .await
                .context("inference actor")?;
            Some((addr, served))
        } else {
            None
        };
        let gateway = Gateway::new(
            admission.clone(),
            network.clone(),
            settlement.clone(),
            inference.clone(),
        )
        .with_local_executor(account.address());
        let served = gateway.served();
        let gateway = gateway.start();
        // The model hub: serves the files of the models held here and fetches the registered
        // ones this node lacks (validators re-execute them, inference nodes run them).
        let hub = need_models.then(|| {
            actors::hub::Hub::new(
                models.clone(),
                network.clone(),
                actors::hub::HubConfig {
                    dir: models_dir.clone(),
                    me: started.peer_id,
                    corrupt: config.inference.corrupt_model_files,
                },
            )
            .with_listener(gateway.clone().recipient())
            .start()
        });
        if let Some(hub) = &hub
            && config.inference.fetch_models
        {
            actix::spawn(fetch_registered(
                hub.clone(),
                admission.clone(),
                models.clone(),
            ));
        }
        let c = &config.consensus;
        let timeouts = TimeoutConfig {
            propose: Duration::from_millis(c.timeout_propose_ms),
            prevote: Duration::from_millis(c.timeout_prevote_ms),
            precommit: Duration::from_millis(c.timeout_precommit_ms),
            delta: Duration::from_millis(c.timeout_delta_ms),
        };
        // A validator with an EVM RPC credits the bridge's deposits and checks those others
        // credit; without one it admits and votes for none.
        let bridge = match (&config.evm, is_validator) {
            (evm, true) if evm.enabled() => {
                let settlement_address = evm
                    .settlement()
                    .map_err(|e| anyhow::anyhow!("[evm] in node.toml: {e}"))?;
                let stagger = Duration::from_millis(evm.anchor_stagger_ms);
                let addr = actors::bridge::Bridge::new(
                    actors::bridge::BridgeConfig {
                        rpc_url: evm.rpc_url.clone(),
                        settlement: settlement_address,
                        confirmations: evm.confirmations,
                        tick: Duration::from_millis(evm.anchor_tick_ms),
                        stagger,
                        resend: (stagger * 4).max(Duration::from_secs(10)),
                        rpc_timeout: Duration::from_millis(evm.rpc_timeout_ms),
                    },
                    account.clone(),
                    settlement.clone().recipient(),
                    mempool.clone().recipient(),
                )
                .start();
                mempool.do_send(actors::mempool::SetDepositChecker(addr.clone().recipient()));
                Some(addr)
            }
            (_, true) => {
                tracing::warn!("validator without [evm]: it votes for no block that credits a bridge deposit");
                None
            }
            _ => None,
        };
        let consensus = Consensus::new(
            genesis.clone(),
            is_validator.then(|| account.clone()),
            ConsensusConfig {
                timeouts,
                byzantine: c.byzantine,
            },
            store.clone(),
            network.clone(),
            settlement.clone(),
            mempool.clone(),
            is_validator.then(|| verifier.clone()),
        );
        let consensus = match &bridge {
            Some(b) => consensus.with_deposit_checker(b.clone().recipient()),
            None => consensus,
        }
        .start();
        // One EVM wallet (one nonce counter) for this node's key: anchors and x402 settlements.
        let evm_wallet = std::sync::Arc::new(std::sync::Mutex::new(None));
        let x402 = x402_of(&config, &genesis, &account, evm_wallet.clone())?;
        if config.evm.enabled() {
            if is_validator {
                let settlement_address = config
                    .evm
                    .settlement()
                    .map_err(|e| anyhow::anyhow!("[evm] in node.toml: {e}"))?;
                actors::anchor::Anchor::new(
                    actors::anchor::AnchorConfig {
                        rpc_url: config.evm.rpc_url.clone(),
                        chain_id: config.evm.chain_id,
                        settlement: settlement_address,
                        interval: genesis.params.anchor_interval,
                        tick: Duration::from_millis(config.evm.anchor_tick_ms),
                        stagger: Duration::from_millis(config.evm.anchor_stagger_ms),
                        rpc_timeout: Duration::from_millis(config.evm.rpc_timeout_ms),
                    },
                    account.clone(),
                    store.clone(),
                )
                .with_wallet(evm_wallet.clone())
                .start();
            }
        } else {
            tracing::info!("no [evm] section: this node does not anchor to an EVM chain nor take x402 payments");
        }
        settlement.do_send(Subscribe(mempool.clone().recipient()));
        settlement.do_send(Subscribe(gateway.clone().recipient()));
        settlement.do_send(Subscribe(verifier.clone().recipient()));
        if let Some((inf, _)) = &inference {
            settlement.do_send(Subscribe(inf.clone().recipient()));
        }
        network.do_send(SetRoutes(Routes {
            records: verifier.clone().recipient(),
            txs: mempool.clone().recipient(),
            consensus: consensus.clone().recipient(),
            capabilities: gateway.clone().recipient(),
            jobs: inference.as_ref().map(|(a, _)| a.clone().recipient()),
            sync: settlement.clone().recipient(),
            models: hub.as_ref().map(|h| h.clone().recipient()),
            streams: gateway.clone().recipient(),
        }));

        let request_timeout = Duration::from_millis(config.http.request_timeout_ms);
        let state = AppState {
            x402,
            evm: match (config.evm.enabled(), config.evm.settlement()) {
                (true, Ok(settlement)) => Some((config.evm.rpc_url.clone(), settlement)),
                _ => None,
            },
            body_timeout: request_timeout,
            gateway,
            settlement,
            mempool,
            network,
            consensus,
            domain: genesis.domain(),
            peer_id: started.peer_id.to_string(),
            address: account.address(),
            roles: config
                .roles
                .iter()
                .map(|r| format!("{r:?}").to_lowercase())
                .collect(),
            served,
            hub,
            models: models.clone(),
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .configure(http::configure)
        })
        .workers(HTTP_WORKERS)
        .max_connections(config.http.max_connections.div_ceil(HTTP_WORKERS))
        .client_request_timeout(request_timeout)
        // Longer than clients keep idle connections (ureq: 15 s), so a client never reuses a
        // connection the server is closing at that moment.
        .keep_alive(Duration::from_secs(75))
        .disable_signals()
        .bind(&config.http.listen)
        .with_context(|| format!("binding the HTTP API on {}", config.http.listen))?;
        let http_addr = server
            .addrs()
            .first()
            .copied()
            .context("HTTP server has no address")?;
        let server = server.run();
        let handle = server.handle();
        actix::spawn(server);

        let p2p_addr = tokio::time::timeout(Duration::from_secs(10), started.listen)
            .await
            .context("libp2p did not start listening")?
            .context("network stopped")?;
        let p2p_full = format!("{p2p_addr}/p2p/{}", started.peer_id);
        let run_info = serde_json::json!({
            "pid": std::process::id(),
            "http": format!("http://{http_addr}"),
            "p2p": p2p_full,
            "peer_id": started.peer_id.to_string(),
            "address": account.address(),
        });
        std::fs::write(home.join("run.json"), run_info.to_string()).context("writing run.json")?;
        tracing::info!(http = %format!("http://{http_addr}"), p2p = %p2p_full, "node running");

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        handle.stop(true).await;
        actix::System::current().stop();
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Makes any panic stop the process, after a log line naming the thread and the panic: an
/// actor whose thread died would otherwise leave the node half-alive (its mailbox closed, the
/// HTTP API answering 503 forever), where a supervisor can only restart a process that exited.
/// Panics that the kernels crate catches on purpose (a driver library misbehaving inside
/// cudarc, turned into an error and a CPU fallback) are let through.
pub fn stop_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if kernels::panic_is_caught() {
            default(info);
            return;
        }
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        tracing::error!(thread, panic = %info, "a node component panicked: stopping the node (exit code 101) so that its supervisor restarts it");
        default(info);
        std::process::exit(101);
    }));
}

/// Opens the configured TEE and starts the Attestation actor (`None` for `tee = "none"`).
/// The inference backend and the verifier's, from `[inference]`: on the CPU, the kernel
/// variant (`cpu_kernel`) and the cores each may use of the process's one pool (`threads`,
/// `verify_threads`); a CUDA node verifies on its GPU too.
fn backends(
    section: &crate::config::InferenceSection,
) -> Result<(Arc<dyn Backend>, Arc<dyn Backend>)> {
    let kernel = section.cpu_kernel().context("[inference] cpu_kernel")?;
    let cpu = match kernel {
        Some(kernel) => kernels::CpuBackend::with_kernel(kernel)
            .with_context(|| format!("[inference] cpu_kernel = \"{kernel}\" in node.toml"))?,
        None => kernels::CpuBackend::new(),
    };
    let cores = cpu.threads();
    let cap = |n: usize| if n == 0 { cores } else { n.min(cores) };
    let infer: Arc<dyn Backend> = match section.backend.as_str() {
        "cpu" => Arc::new(cpu.clone().with_threads(cap(section.threads))),
        name => kernels::select(name).context("[inference] backend in node.toml")?,
    };
    let verify: Arc<dyn Backend> = if infer.name() == "cpu" {
        Arc::new(cpu.clone().with_threads(cap(section.verify_threads)))
    } else {
        infer.clone()
    };
    tracing::info!(
        backend = infer.name(),
        cpu_kernel = %cpu.kernel(),
        threads = cap(section.threads),
        verify_threads = cap(section.verify_threads),
        "inference backend ready"
    );
    Ok((infer, verify))
}

fn start_attestation(
    config: &Config,
    home: &std::path::Path,
    node: chain::Address,
) -> Result<Option<actix::Addr<actors::attestation::Attestation>>> {
    use actors::attestation::{Attestation, BatchConfig, Byzantine, SimulatedTee, SnpTee, Tee};
    use chain::attestation::sim::{SimChip, measure_file};
    let a = &config.attestation;
    let tee: Arc<dyn Tee> = match a.tee {
        TeeKind::None => return Ok(None),
        TeeKind::Snp => {
            if a.byzantine.is_some() {
                anyhow::bail!(
                    "[attestation] byzantine is a testnet fault and needs tee = \"simulated\""
                );
            }
            let vcek = if a.vcek.as_os_str().is_empty() {
                None
            } else {
                let path = home.join(&a.vcek);
                Some(
                    std::fs::read(&path)
                        .with_context(|| format!("reading the VCEK {}", path.display()))?,
                )
            };
            Arc::new(SnpTee::open(vcek).context("[attestation] tee = \"snp\"")?)
        }
        TeeKind::Simulated => {
            let path = home.join(&a.chip);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the simulated chip {}", path.display()))?;
            let mut chip = SimChip::from_json(&text).with_context(|| path.display().to_string())?;
            if a.byzantine == Some(Byzantine::Forge) {
                chip = chip.forged();
            }
            let measurement = match a.measurement().map_err(anyhow::Error::msg)? {
                Some(m) => m,
                None => {
                    let exe = std::env::current_exe()
                        .context("locating this executable to measure it")?;
                    measure_file(&exe)?
                }
            };
            tracing::info!(measurement = %hex::encode(measurement), chip = ?chip, "simulated TEE");
            Arc::new(SimulatedTee::new(chip, measurement))
        }
    };
    let batch = BatchConfig {
        window: Duration::from_millis(a.batch_window_ms),
        max: a.batch_max,
    };
    Ok(Some(
        Attestation::new(tee, node, batch, a.byzantine).start(),
    ))
}

/// x402 payments, when this node has an EVM RPC and the genesis names where payments settle;
/// an `[evm]` section naming other contracts than the genesis is an error.
fn x402_of(
    config: &Config,
    genesis: &chain::Genesis,
    account: &chain::PrivateKeySigner,
    wallet: std::sync::Arc<std::sync::Mutex<Option<evm::Wallet>>>,
) -> Result<Option<std::sync::Arc<crate::x402::X402>>> {
    let evm = &config.evm;
    let Some(payments) = genesis.evm else {
        if evm.enabled() {
            tracing::info!("the genesis names no EVM payments: this node takes no x402 payments");
        }
        return Ok(None);
    };
    if !evm.enabled() {
        return Ok(None);
    }
    same_evm(evm, &payments).map_err(|e| anyhow::anyhow!("[evm] in node.toml: {e}"))?;
    tracing::info!(opg = %payments.opg, pay_to = %payments.settlement, "taking x402 payments for jobs");
    Ok(Some(std::sync::Arc::new(crate::x402::X402 {
        payments,
        rpc_url: evm.rpc_url.clone(),
        rpc_timeout: Duration::from_millis(evm.rpc_timeout_ms),
        key: account.clone(),
        wallet,
        credit_timeout: Duration::from_secs(60),
        max_timeout_seconds: 300,
    })))
}

/// Whether the `[evm]` section names the chain and contracts the genesis' payments settle on.
fn same_evm(
    evm: &crate::config::EvmSection,
    payments: &chain::signing::EvmPayments,
) -> std::result::Result<(), String> {
    let settlement = evm.settlement()?;
    let opg_differs =
        !evm.opg.is_empty() && evm.opg.parse::<chain::Address>().ok() != Some(payments.opg);
    if evm.chain_id != payments.chain_id || settlement != payments.settlement || opg_differs {
        return Err(format!(
            "chain {}, settlement {}, opg {:?} is not the genesis' EVM (chain {}, settlement {}, opg {})",
            evm.chain_id, settlement, evm.opg, payments.chain_id, payments.settlement, payments.opg
        ));
    }
    Ok(())
}

/// Fetches every active registered model this node lacks from the peers that provide it: at
/// start, then every 10 s (providers may join later, and governance registers models while
/// the node runs). A fetch in progress is not started twice; a failed one is tried again.
async fn fetch_registered(
    hub: actix::Addr<actors::hub::Hub>,
    admission: chain::Admission,
    models: Models,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let registry = admission.registrations().registry.clone();
        for (id, m) in registry.models.iter() {
            if !m.active || models.get(id).is_some() {
                continue;
            }
            let fetch = hub.send(actors::hub::FetchModel {
                id: *id,
                name: Some(m.name.clone()),
            });
            let (id, name) = (*id, m.name.clone());
            actix::spawn(async move {
                match fetch.await {
                    Ok(Ok(f)) => {
                        tracing::info!(model = %id, %name, bytes = f.bytes, seconds = f.seconds, rejected = f.rejected, "registered model now held")
                    }
                    Ok(Err(actors::hub::HubError::InProgress(_))) | Err(_) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(model = %id, %name, error = %e, "cannot fetch a registered model yet; trying again in 10 s")
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// x402 is taken only where the node's [evm] names the genesis' chain and contracts.
    #[test]
    fn the_evm_section_must_name_the_genesis_contracts() {
        let payments = chain::signing::EvmPayments {
            chain_id: 31_337,
            opg: chain::Address::repeat_byte(1),
            settlement: chain::Address::repeat_byte(2),
        };
        let section = crate::config::EvmSection {
            rpc_url: "http://127.0.0.1:8545".into(),
            chain_id: 31_337,
            settlement: payments.settlement.to_string(),
            opg: payments.opg.to_string(),
            ..Default::default()
        };
        assert_eq!(super::same_evm(&section, &payments), Ok(()));
        let no_opg = crate::config::EvmSection {
            opg: String::new(),
            ..section.clone()
        };
        assert_eq!(super::same_evm(&no_opg, &payments), Ok(()));
        for (wrong, why) in [
            (
                crate::config::EvmSection {
                    chain_id: 8453,
                    ..section.clone()
                },
                "chain",
            ),
            (
                crate::config::EvmSection {
                    settlement: chain::Address::repeat_byte(3).to_string(),
                    ..section.clone()
                },
                "settlement",
            ),
            (
                crate::config::EvmSection {
                    opg: chain::Address::repeat_byte(3).to_string(),
                    ..section.clone()
                },
                "opg",
            ),
        ] {
            let e = super::same_evm(&wrong, &payments).unwrap_err();
            assert!(e.contains("is not the genesis' EVM"), "{why}: {e}");
        }
    }
    use std::time::{Duration, Instant};

    use actix::prelude::*;

    struct Bomb;

    impl Actor for Bomb {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Boom(u64);

    impl Handler<Boom> for Bomb {
        type Result = ();
        fn handle(&mut self, msg: Boom, _: &mut Self::Context) {
            // An arithmetic overflow on a peer's number, as the sync handler once had.
            let next = std::hint::black_box(msg.0) + 1;
            tracing::info!(next, "not reached");
        }
    }

    /// The child half of the test below: an actor on its own arbiter panics; without the hook
    /// only that thread dies and the process runs on (exit 0 after 5 s).
    fn child() -> ! {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
        super::stop_on_panic();
        let system = actix::System::new();
        system.block_on(async {
            let arbiter = actix::Arbiter::new();
            let bomb = Bomb::start_in_arbiter(&arbiter.handle(), |_| Bomb);
            bomb.do_send(Boom(u64::MAX));
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        std::process::exit(0)
    }

    #[test]
    fn a_panicking_actor_stops_the_process_with_a_log_line() {
        if std::env::var_os("PROOFMESH_PANIC_CHILD").is_some() {
            child();
        }
        let started = Instant::now();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "run::tests::a_panicking_actor_stops_the_process_with_a_log_line",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PROOFMESH_PANIC_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(101), "{stderr}");
        assert!(stderr.contains("a node component panicked"), "{stderr}");
        assert!(stderr.contains("overflow"), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "it ran on until the child's end"
        );
    }
}
