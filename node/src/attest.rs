//! `proofmesh attest verify`: check an SEV-SNP attestation report with the chain's own rule.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chain::attestation::{Product, Roots, SnpPolicy, Tcb, verify_report};
use clap::{Args, Subcommand};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

#[derive(Subcommand)]
pub enum AttestCommand {
    /// Verify a report: VCEK chain to the roots, report signature, no debug policy, and,
    /// when given, the measurement allowlist and minimum TCB. Prints JSON; exits 1 if invalid.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The raw report (1184 bytes), as `/dev/sev-guest` returns it.
    #[arg(long)]
    report: PathBuf,
    /// The VCEK certificate, DER.
    #[arg(long)]
    vcek: PathBuf,
    /// AMD's roots for this product, as built in.
    #[arg(long, required_unless_present = "roots", conflicts_with = "roots")]
    product: Option<Product>,
    /// A root set (ARK and ASK) in PEM, e.g. a testnet's simulated TEE root.
    #[arg(long)]
    roots: Option<PathBuf>,
    /// An approved launch measurement, 96 hex digits (repeatable). Without any, the
    /// measurement is reported but not checked.
    #[arg(long = "measurement")]
    measurements: Vec<String>,
    /// Minimum reported TCB as bootloader.tee.snp.microcode, e.g. 3.0.8.115.
    #[arg(long, value_parser = parse_tcb)]
    min_tcb: Option<Tcb>,
}

fn parse_tcb(s: &str) -> Result<Tcb, String> {
    let parts: Vec<u8> = s
        .split('.')
        .map(|p| p.parse::<u8>().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [bootloader, tee, snp, microcode] => Ok(Tcb {
            bootloader,
            tee,
            snp,
            microcode,
        }),
        _ => Err("expected four numbers: bootloader.tee.snp.microcode".into()),
    }
}

pub fn attest(cmd: AttestCommand) -> Result<()> {
    match cmd {
        AttestCommand::Verify(a) => verify(a),
    }
}

fn verify(a: VerifyArgs) -> Result<()> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let report = read(&a.report)?;
    let vcek = read(&a.vcek)?;
    let roots = match (&a.product, &a.roots) {
        (Some(product), _) => Roots::product(*product)?,
        (None, Some(path)) => Roots::from_pem(&read(path)?)?,
        (None, None) => bail!("give --product or --roots"),
    };
    let mut measurements = Vec::new();
    for m in &a.measurements {
        let bytes = hex::decode(m.trim_start_matches("0x"))
            .ok()
            .and_then(|b| <[u8; 48]>::try_from(b).ok())
            .with_context(|| format!("measurement {m:?} is not 48 bytes of hex"))?;
        measurements.push(bytes);
    }
    let checked = !measurements.is_empty();
    if !checked {
        // Report the measurement without judging it: admit the report's own value.
        if let Ok(parsed) = AttestationReport::from_bytes(&report) {
            measurements.push(parsed.measurement);
        }
    }
    let policy = SnpPolicy {
        measurements,
        min_tcb: a.min_tcb.unwrap_or_default(),
    };
    match verify_report(&report, &vcek, &roots, &policy, None) {
        Ok(v) => {
            let out = serde_json::json!({
                "valid": true,
                "measurement": hex::encode(v.measurement),
                "measurement_checked": checked,
                "report_data": hex::encode(v.report_data),
                "tcb": v.reported_tcb,
                "chip_id": hex::encode(v.chip_id),
                "product": v.roots,
            });
            println!("{out}");
            Ok(())
        }
        Err(e) => {
            let kind = e.label();
            println!(
                "{}",
                serde_json::json!({"valid": false, "error": kind, "reason": e.to_string()})
            );
            std::process::exit(1);
        }
    }
}
