//! The Attestation actor (inference nodes): proves batches of records with one SEV-SNP report.
//!
//! The Inference actor sends each finished record's Merkle leaf ([`chain::record::leaf`]).
//! Leaves are collected until the batch window closes or the batch is full, whichever is first;
//! then one report is requested with `report_data` = the batch's Merkle root and this node's
//! address ([`chain::attestation::report_data`]), and each requester gets the report, the VCEK
//! and its own Merkle path. Getting the report (an ioctl to the secure processor, or a P-384
//! signature in the simulation) runs on a blocking thread.
//!
//! Two TEE handles: [`SnpTee`] on SEV-SNP hardware (`/dev/sev-guest` through `sev`'s guest
//! firmware API; the VCEK from a configured file or the extended report's certificate table)
//! and [`SimulatedTee`] elsewhere (a chip of a testnet root; see `chain::attestation::sim`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chain::attestation::sim::{ReportRequest, SimChip};
use chain::record::TeeProof;
use chain::{Address, B256};
use tokio::sync::oneshot;

use crate::metrics::METRICS;

/// Why no report could be had.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    #[error("SEV-SNP guest device: {0}")]
    Device(String),
    #[error("no VCEK: {0}")]
    NoVcek(String),
    #[error("{0}")]
    Simulation(#[from] chain::attestation::AttestationError),
}

/// A source of attestation reports.
pub trait Tee: Send + Sync {
    /// "snp" or "simulated".
    fn kind(&self) -> &'static str;
    /// A report over `report_data`, and the DER VCEK certificate that verifies it.
    fn attest(&self, report_data: [u8; 64]) -> Result<(Vec<u8>, Vec<u8>), TeeError>;
}

/// A chip of a simulated root, reporting a fixed launch measurement.
pub struct SimulatedTee {
    chip: SimChip,
    measurement: [u8; 48],
}

impl SimulatedTee {
    pub fn new(chip: SimChip, measurement: [u8; 48]) -> SimulatedTee {
        SimulatedTee { chip, measurement }
    }
}

impl Tee for SimulatedTee {
    fn kind(&self) -> &'static str {
        "simulated"
    }

    fn attest(&self, report_data: [u8; 64]) -> Result<(Vec<u8>, Vec<u8>), TeeError> {
        let report = self.chip.report(&ReportRequest {
            report_data,
            measurement: self.measurement,
            debug: false,
        })?;
        Ok((report, self.chip.vcek_der().to_vec()))
    }
}

/// SEV-SNP hardware, through `/dev/sev-guest`.
pub struct SnpTee {
    firmware: Mutex<sev::firmware::guest::Firmware>,
    /// From the configuration; otherwise taken from each extended report.
    vcek: Option<Vec<u8>>,
}

impl SnpTee {
    /// Opens the guest device. Fails with the reason on machines that are not SNP guests.
    pub fn open(vcek: Option<Vec<u8>>) -> Result<SnpTee, TeeError> {
        let firmware = sev::firmware::guest::Firmware::open()
            .map_err(|e| TeeError::Device(format!("cannot open /dev/sev-guest: {e}")))?;
        Ok(SnpTee {
            firmware: Mutex::new(firmware),
            vcek,
        })
    }
}

impl Tee for SnpTee {
    fn kind(&self) -> &'static str {
        "snp"
    }

    fn attest(&self, report_data: [u8; 64]) -> Result<(Vec<u8>, Vec<u8>), TeeError> {
        let mut fw = self
            .firmware
            .lock()
            .map_err(|_| TeeError::Device("guest device lock poisoned".into()))?;
        if let Some(vcek) = &self.vcek {
            let report = fw
                .get_report(None, Some(report_data), Some(0))
                .map_err(|e| TeeError::Device(format!("SNP_GET_REPORT: {e}")))?;
            return Ok((report, vcek.clone()));
        }
        let (report, certs) = fw
            .get_ext_report(None, Some(report_data), Some(0))
            .map_err(|e| TeeError::Device(format!("SNP_GET_EXT_REPORT: {e}")))?;
        let vcek = certs
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.cert_type == sev::firmware::host::CertType::VCEK)
            .map(|c| c.data().to_vec())
            .ok_or_else(|| {
                TeeError::NoVcek(
                    "the host supplied no VCEK with the extended report; set \
                     [attestation] vcek to the chip's VCEK (DER)"
                        .into(),
                )
            })?;
        Ok((report, vcek))
    }
}

/// Testnet fault injection on an inference node's proofs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Byzantine {
    /// Sign reports with a key that is not the chip's (the VCEK certificate is genuine).
    Forge,
    /// Attach the first batch's proof to every later record.
    Replay,
}

/// Batch limits.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// How long the first leaf of a batch waits for others.
    pub window: Duration,
    /// A batch this full is proven at once.
    pub max: usize,
}

/// Prove the record with this Merkle leaf.
#[derive(Message)]
#[rtype(result = "Result<TeeProof, String>")]
pub struct Attest {
    pub leaf: B256,
}

type Waiter = (B256, oneshot::Sender<Result<TeeProof, String>>);

pub struct Attestation {
    tee: Arc<dyn Tee>,
    node: Address,
    batch: BatchConfig,
    pending: Vec<Waiter>,
    timer: Option<SpawnHandle>,
    byzantine: Option<Byzantine>,
    replayed: Option<TeeProof>,
}

impl Attestation {
    pub fn new(
        tee: Arc<dyn Tee>,
        node: Address,
        batch: BatchConfig,
        byzantine: Option<Byzantine>,
    ) -> Attestation {
        if let Some(b) = byzantine {
            tracing::warn!(mode = ?b, "FAULT INJECTION: this inference node sends bad TEE proofs");
        }
        Attestation {
            tee,
            node,
            batch: BatchConfig {
                max: batch.max.max(1),
                ..batch
            },
            pending: Vec::new(),
            timer: None,
            byzantine,
            replayed: None,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let leaves: Vec<B256> = batch.iter().map(|(l, _)| *l).collect();
        let root = chain::merkle::root(&leaves);
        let data = chain::attestation::report_data(&root, &self.node);
        let tee = self.tee.clone();
        let started = Instant::now();
        let work = tokio::task::spawn_blocking(move || tee.attest(data));
        let n = batch.len();
        ctx.spawn(work.into_actor(self).map(move |res, act, _| {
            let res = match res {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("attestation task failed: {e}")),
            };
            match res {
                Ok((report, vcek)) => {
                    METRICS.attestation_reports.inc();
                    METRICS.attestation_batch_records.observe(n as f64);
                    METRICS
                        .attestation_seconds
                        .observe(started.elapsed().as_secs_f64());
                    tracing::debug!(records = n, root = %root, "batch attested");
                    let paths = chain::merkle::proofs(&leaves);
                    for ((_, reply), path) in batch.into_iter().zip(paths) {
                        let proof = TeeProof {
                            report: report.clone(),
                            vcek: vcek.clone(),
                            path,
                        };
                        let proof = if act.byzantine == Some(Byzantine::Replay) {
                            act.replayed.get_or_insert(proof).clone()
                        } else {
                            proof
                        };
                        let _ = reply.send(Ok(proof));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, records = n, "attestation failed");
                    for (_, reply) in batch {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }));
    }
}

impl Actor for Attestation {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        tracing::info!(
            tee = self.tee.kind(),
            window_ms = self.batch.window.as_millis() as u64,
            max = self.batch.max,
            "attestation ready"
        );
    }
}

impl Handler<Attest> for Attestation {
    type Result = ResponseFuture<Result<TeeProof, String>>;

    fn handle(&mut self, msg: Attest, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.pending.push((msg.leaf, tx));
        if self.pending.len() >= self.batch.max {
            self.flush(ctx);
        } else if self.timer.is_none() {
            self.timer = Some(ctx.run_later(self.batch.window, |act, ctx| {
                act.timer = None;
                act.flush(ctx);
            }));
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("attestation actor stopped".into()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chain::attestation::sim::SimRoot;
    use chain::attestation::{SnpPolicy, Tcb, TeeVerifier};

    fn setup() -> (Arc<dyn Tee>, TeeVerifier) {
        static ROOT: std::sync::OnceLock<SimRoot> = std::sync::OnceLock::new();
        let root = ROOT.get_or_init(|| SimRoot::generate().unwrap());
        let tcb = Tcb {
            bootloader: 1,
            tee: 0,
            snp: 9,
            microcode: 100,
        };
        let chip = root.issue_chip(tcb).unwrap();
        let verifier = TeeVerifier::new(
            root.roots().unwrap(),
            SnpPolicy {
                measurements: vec![[9; 48]],
                min_tcb: tcb,
            },
        );
        (Arc::new(SimulatedTee::new(chip, [9; 48])), verifier)
    }

    fn leaves(n: u64) -> Vec<B256> {
        (0..n)
            .map(|i| alloy::primitives::keccak256(i.to_be_bytes()))
            .collect()
    }

    /// Leaves sent together are proven by one report when the batch fills, and a lone leaf by
    /// its own report when the window closes; every proof verifies for its leaf only.
    #[actix::test]
    async fn batches_fill_or_time_out_and_each_proof_binds_its_leaf() {
        let (tee, verifier) = setup();
        let node = Address::repeat_byte(7);
        let batch = BatchConfig {
            window: Duration::from_millis(200),
            max: 4,
        };
        let addr = Attestation::new(tee, node, batch, None).start();
        let ls = leaves(5);
        let calls: Vec<_> = ls.iter().map(|l| addr.send(Attest { leaf: *l })).collect();
        let proofs: Vec<TeeProof> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        // The first four share a report (full batch); the fifth waited for the window alone.
        assert!(proofs[..4].iter().all(|p| p.report == proofs[0].report));
        assert_ne!(proofs[4].report, proofs[0].report);
        assert!(proofs[4].path.is_empty());
        for (p, l) in proofs.iter().zip(&ls) {
            verifier
                .verify_leaf(&p.report, &p.vcek, &p.path, l, &node)
                .unwrap();
            assert!(
                verifier
                    .verify_leaf(&p.report, &p.vcek, &p.path, &B256::ZERO, &node)
                    .is_err()
            );
        }
    }

    #[actix::test]
    async fn byzantine_modes_make_proofs_the_verifier_refuses() {
        use chain::attestation::AttestationError;
        let (tee, verifier) = setup();
        let node = Address::repeat_byte(8);
        let batch = BatchConfig {
            window: Duration::from_millis(20),
            max: 64,
        };
        let replayer = Attestation::new(tee, node, batch, Some(Byzantine::Replay)).start();
        let ls = leaves(3);
        let mut proofs = Vec::new();
        for l in &ls {
            proofs.push(replayer.send(Attest { leaf: *l }).await.unwrap().unwrap());
        }
        verifier
            .verify_leaf(
                &proofs[0].report,
                &proofs[0].vcek,
                &proofs[0].path,
                &ls[0],
                &node,
            )
            .unwrap();
        for (p, l) in proofs.iter().zip(&ls).skip(1) {
            assert_eq!(p, &proofs[0]);
            assert!(matches!(
                verifier.verify_leaf(&p.report, &p.vcek, &p.path, l, &node),
                Err(AttestationError::ReportData { .. })
            ));
        }
    }

    #[test]
    fn no_sev_guest_device_is_a_clear_error() {
        if std::path::Path::new("/dev/sev-guest").exists() {
            return; // an SNP guest: the device is real
        }
        let err = SnpTee::open(None).err().map(|e| e.to_string());
        assert!(
            err.as_deref().unwrap_or("").contains("/dev/sev-guest"),
            "{err:?}"
        );
    }
}
