//! `proofmesh attest verify`: check an SEV-SNP attestation report with the chain's own rule.
//! `proofmesh attest simulate`: a simulated SEV-SNP root of trust, chips and reports, for tests
//! and testnets (see `chain::attestation::sim`).

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
    /// Simulated SEV-SNP for testnets: make a root of trust, issue chips, sign reports.
    #[command(subcommand)]
    Simulate(SimulateCommand),
}

#[derive(Subcommand)]
pub enum SimulateCommand {
    /// A new root of trust (RSA-4096 ARK and ASK): writes DIR/root.json (secret: it issues
    /// chips) and DIR/roots.pem (public: the genesis declares it).
    Root {
        #[arg(long)]
        out: PathBuf,
    },
    /// A chip issued by a root: writes OUT (secret: the VCEK key) and OUT's sibling vcek.der.
    Chip {
        /// root.json from `simulate root`.
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The chip's TCB as bootloader.tee.snp.microcode.
        #[arg(long, value_parser = parse_tcb, default_value = "3.0.14.209")]
        tcb: Tcb,
    },
    /// A report signed by a chip, in the SNP format, written raw to OUT.
    Report {
        /// chip.json from `simulate chip`.
        #[arg(long)]
        chip: PathBuf,
        /// report_data, up to 64 bytes of hex (zero-padded).
        #[arg(long, default_value = "")]
        report_data: String,
        /// Launch measurement, 96 hex digits.
        #[arg(long)]
        measurement: String,
        /// Sign a report of a debuggable guest (the verifier refuses it).
        #[arg(long)]
        debug: bool,
        #[arg(long)]
        out: PathBuf,
    },
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
        AttestCommand::Simulate(c) => simulate(c),
    }
}

fn hex_bytes<const N: usize>(what: &str, s: &str, pad: bool) -> Result<[u8; N]> {
    let raw = hex::decode(s.trim_start_matches("0x"))
        .with_context(|| format!("{what} {s:?} is not hex"))?;
    if raw.len() > N || (!pad && raw.len() != N) {
        bail!(
            "{what} is {} bytes; expected {}{N}",
            raw.len(),
            if pad { "at most " } else { "" }
        );
    }
    let mut out = [0u8; N];
    out[..raw.len()].copy_from_slice(&raw);
    Ok(out)
}

fn write(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn simulate(cmd: SimulateCommand) -> Result<()> {
    use chain::attestation::sim::{ReportRequest, SimChip, SimRoot};
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    match cmd {
        SimulateCommand::Root { out } => {
            let root = SimRoot::generate()?;
            write(&out.join("root.json"), root.to_json()?.as_bytes())?;
            write(&out.join("roots.pem"), root.roots_pem()?.as_bytes())?;
            println!(
                "{}",
                serde_json::json!({"root": out.join("root.json"), "roots_pem": out.join("roots.pem")})
            );
        }
        SimulateCommand::Chip { root, out, tcb } => {
            let root = SimRoot::from_json(&read(&root)?)?;
            let chip = root.issue_chip(tcb)?;
            let vcek = out.with_file_name("vcek.der");
            write(&out, chip.to_json()?.as_bytes())?;
            write(&vcek, chip.vcek_der())?;
            println!(
                "{}",
                serde_json::json!({"chip": out, "vcek": vcek, "chip_id": hex::encode(chip.chip_id()), "tcb": chip.tcb()})
            );
        }
        SimulateCommand::Report {
            chip,
            report_data,
            measurement,
            debug,
            out,
        } => {
            let chip = SimChip::from_json(&read(&chip)?)?;
            let req = ReportRequest {
                report_data: hex_bytes("report_data", &report_data, true)?,
                measurement: hex_bytes("measurement", &measurement, false)?,
                debug,
            };
            write(&out, &chip.report(&req)?)?;
            println!("{}", serde_json::json!({"report": out}));
        }
    }
    Ok(())
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
        let bytes = chain::attestation::parse_measurement(m)
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
