//! Prometheus metrics of every actor, in one process-wide registry served at `GET /metrics`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub peers: IntGauge,
    pub queue_len: IntGaugeVec,
    pub queue_dropped: IntCounterVec,
    pub gossip_received: IntCounterVec,
    pub gossip_rejected: IntCounterVec,
    pub rpc_rejected: IntCounterVec,
    pub jobs_submitted: IntCounter,
    pub jobs_refused: IntCounterVec,
    pub jobs_executed: IntCounter,
    pub jobs_declined: IntCounterVec,
    pub job_latency: Histogram,
    pub records_verified: IntCounter,
    pub records_rejected: IntCounterVec,
    pub fraud_detected: IntCounter,
    pub reexec_seconds: Histogram,
    pub tee_verified: IntCounter,
    pub tee_verify_seconds: Histogram,
    pub attestation_reports: IntCounter,
    pub attestation_batch_records: Histogram,
    pub attestation_seconds: Histogram,
    pub mempool_records: IntGauge,
    pub verified_cache: IntGauge,
    pub mempool_txs: IntGauge,
    pub mempool_queued_txs: IntGauge,
    pub mempool_rebroadcast: IntCounterVec,
    pub height: IntGauge,
    /// 1 while every account, stake and pool add up to exactly the supply at the tip.
    pub supply_exact: IntGauge,
    /// Whole OPG in each part of the supply at the tip.
    pub supply_opg: IntGaugeVec,
    pub validators_active: IntGauge,
    pub slashes: IntCounter,
    pub frauds_slashed: IntCounter,
    pub blocks_committed: IntCounter,
    pub consensus_rounds: IntCounter,
    pub consensus_rebroadcasts: IntCounter,
    pub consensus_known_votes: IntCounter,
    pub consensus_sign_refused: IntCounterVec,
    pub consensus_equivocations: IntCounter,
    pub sync_blocks: IntCounter,
    /// The settlement contract's last anchored height, as this node last read it.
    pub anchor_height: IntGauge,
    /// Blocks committed here that no anchor covers yet.
    pub anchor_lag_blocks: IntGauge,
    /// Anchoring steps by outcome: `sent` (by this node), `by_other`, `error`.
    pub anchor_steps: IntCounterVec,
    pub anchor_gas_used: IntGauge,
    /// Deposits the bridge holds at this node's confirmed EVM block.
    pub bridge_deposits_confirmed: IntGauge,
    /// Bridge deposits this validator sent for crediting.
    pub bridge_deposits_sent: IntCounter,
    /// Deposit checks against the EVM by result: `ok`, `false`, `unable`.
    pub bridge_deposit_checks: IntCounterVec,
    /// Model file bytes received from peers and kept (verified).
    pub model_fetch_bytes: IntCounter,
    /// Model fetches by outcome: `ok`, `failed`.
    pub model_fetches: IntCounterVec,
    /// Whole model fetches, first request to loaded.
    pub model_fetch_seconds: Histogram,
    /// Manifests or files from a provider that did not hash to what they should, by what.
    pub model_bad_parts: IntCounterVec,
    /// Model file bytes this node sent to peers.
    pub model_served_bytes: IntCounter,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let c = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let c = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(h.clone()));
    h
}

/// The process-wide metrics. Names are constants, so construction cannot fail at run time.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new_custom(Some("proofmesh".into()), None).unwrap_or_default();
    let lat = vec![
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    Metrics {
        peers: gauge(&r, "peers", "connected peers"),
        queue_len: gauge_vec(
            &r,
            "queue_length",
            "messages waiting in a bounded queue between the swarm and the actors",
            &["queue"],
        ),
        queue_dropped: counter_vec(
            &r,
            "queue_dropped_total",
            "messages dropped because their bounded queue was full",
            &["queue", "kind"],
        ),
        gossip_received: counter_vec(
            &r,
            "gossip_received_total",
            "gossip messages received",
            &["topic"],
        ),
        gossip_rejected: counter_vec(
            &r,
            "gossip_rejected_total",
            "gossip messages rejected",
            &["topic", "reason"],
        ),
        rpc_rejected: counter_vec(
            &r,
            "rpc_rejected_total",
            "request-response messages refused",
            &["protocol", "reason"],
        ),
        jobs_submitted: counter(&r, "jobs_submitted_total", "jobs accepted by this gateway"),
        jobs_refused: counter_vec(
            &r,
            "jobs_refused_total",
            "jobs refused by this gateway",
            &["reason"],
        ),
        jobs_executed: counter(
            &r,
            "jobs_executed_total",
            "jobs executed by this inference node",
        ),
        jobs_declined: counter_vec(
            &r,
            "jobs_declined_total",
            "job calls this inference node refused before running them",
            &["reason"],
        ),
        job_latency: histogram(&r, "job_seconds", "gateway submit to result", lat.clone()),
        records_verified: counter(
            &r,
            "records_verified_total",
            "records verified and accepted",
        ),
        records_rejected: counter_vec(
            &r,
            "records_rejected_total",
            "records rejected",
            &["reason"],
        ),
        fraud_detected: counter(
            &r,
            "fraud_detected_total",
            "re-executions whose output hash differed",
        ),
        reexec_seconds: histogram(
            &r,
            "reexec_seconds",
            "re-execution time per record",
            lat.clone(),
        ),
        tee_verified: counter(
            &r,
            "tee_proofs_verified_total",
            "records whose SEV-SNP proof verified",
        ),
        tee_verify_seconds: histogram(
            &r,
            "tee_verify_seconds",
            "SEV-SNP proof check per record",
            vec![1e-5, 1e-4, 1e-3, 0.005, 0.02, 0.05, 0.1],
        ),
        attestation_reports: counter(
            &r,
            "attestation_reports_total",
            "attestation reports this inference node obtained",
        ),
        attestation_batch_records: histogram(
            &r,
            "attestation_batch_records",
            "records proven by one report",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
        ),
        attestation_seconds: histogram(&r, "attestation_seconds", "time to obtain one report", lat),
        mempool_records: gauge(&r, "mempool_records", "records waiting for a block"),
        verified_cache: gauge(
            &r,
            "verified_cache_records",
            "records verified here whose job is not settled yet (the verifier's cache)",
        ),
        mempool_txs: gauge(&r, "mempool_txs", "transactions waiting for a block"),
        mempool_queued_txs: gauge(
            &r,
            "mempool_queued_txs",
            "transactions waiting for an earlier nonce of their sender",
        ),
        mempool_rebroadcast: counter_vec(
            &r,
            "mempool_rebroadcast_total",
            "pending records and transactions gossiped again after waiting",
            &["kind"],
        ),
        height: gauge(&r, "height", "committed height"),
        supply_exact: gauge(
            &r,
            "supply_exact",
            "1 while balances, locked, bonded, unbonding and pools add up to exactly 1,000,000,000 OPG",
        ),
        supply_opg: gauge_vec(
            &r,
            "supply_opg",
            "whole OPG in each part of the supply",
            &["part"],
        ),
        validators_active: gauge(
            &r,
            "validators_active",
            "validators in the set deciding the next height",
        ),
        slashes: counter(&r, "slashes_total", "validators slashed for double-signing"),
        frauds_slashed: counter(
            &r,
            "frauds_slashed_total",
            "inference nodes slashed for false records",
        ),
        blocks_committed: counter(&r, "blocks_committed_total", "blocks committed"),
        consensus_rounds: counter(
            &r,
            "consensus_round_changes_total",
            "rounds started after round 0",
        ),
        consensus_rebroadcasts: counter(
            &r,
            "consensus_votes_resent_total",
            "own votes sent again in heartbeats while a height was slow",
        ),
        consensus_known_votes: counter(
            &r,
            "consensus_votes_known_total",
            "votes received again (heartbeats) and not checked again: already held, same bytes",
        ),
        consensus_sign_refused: counter_vec(
            &r,
            "consensus_sign_refused_total",
            "proposals or votes the signer refused (conflict with the WAL, WAL write failed)",
            &["reason"],
        ),
        consensus_equivocations: counter(
            &r,
            "consensus_equivocations_total",
            "second, different proposals or votes seen from one validator in one round",
        ),
        sync_blocks: counter(&r, "sync_blocks_total", "blocks applied from sync"),
        anchor_height: gauge(
            &r,
            "anchor_height",
            "the EVM settlement contract's last anchored height",
        ),
        anchor_lag_blocks: gauge(
            &r,
            "anchor_lag_blocks",
            "committed blocks after the last anchored height",
        ),
        anchor_steps: counter_vec(
            &r,
            "anchor_steps_total",
            "anchors posted by this node (sent), seen posted by another (by_other), failed attempts (error)",
            &["outcome"],
        ),
        anchor_gas_used: gauge(&r, "anchor_gas_used", "gas used by this node's last anchor"),
        bridge_deposits_confirmed: gauge(
            &r,
            "bridge_deposits_confirmed",
            "deposits the EVM bridge holds at this node's confirmed block",
        ),
        bridge_deposits_sent: counter(
            &r,
            "bridge_deposits_sent_total",
            "bridge_deposit transactions this validator sent",
        ),
        bridge_deposit_checks: counter_vec(
            &r,
            "bridge_deposit_checks_total",
            "bridge deposits checked against this node's EVM RPC, by result (ok, false, unable)",
            &["result"],
        ),
        model_fetch_bytes: counter(
            &r,
            "model_fetch_bytes_total",
            "model file bytes fetched from peers and verified",
        ),
        model_fetches: counter_vec(
            &r,
            "model_fetches_total",
            "models fetched over the mesh (ok) or given up on (failed)",
            &["outcome"],
        ),
        model_fetch_seconds: histogram(
            &r,
            "model_fetch_seconds",
            "time to fetch, verify and load a model from peers",
            vec![0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
        ),
        model_bad_parts: counter_vec(
            &r,
            "model_bad_parts_total",
            "manifests or files from a provider that did not hash to what they should",
            &["part"],
        ),
        model_served_bytes: counter(
            &r,
            "model_served_bytes_total",
            "model file bytes sent to peers",
        ),
        registry: r,
    }
});

/// The metrics in Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
