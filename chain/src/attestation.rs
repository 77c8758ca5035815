//! AMD SEV-SNP attestation reports: the chain rule that decides whether a report proves what an
//! inference node claims.
//!
//! A report is valid for a record batch when, in this order (each failure its own error):
//!
//! 1. it parses as an SNP attestation report (`version` 2 or later, [`REPORT_LEN`] bytes);
//! 2. the VCEK certificate chains to the product's roots: ARK self-signed, ARK → ASK
//!    (RSA-PSS), ASK → VCEK — the roots built into `sev` (Milan, Genoa, Turin) or a root set
//!    the genesis names (a testnet's simulated TEE uses the same code and AMD's algorithms);
//! 3. the VCEK's ECDSA P-384 key signed the report: SHA-384 over the **raw** bytes
//!    `0..0x2A0` as received. We check the raw bytes ourselves rather than `sev`'s re-encoding of
//!    the parsed struct: a re-encoding drops whatever the parser does not keep (reserved bits), so
//!    a flipped bit there would be verified against bytes the chip never signed;
//! 4. the guest policy does not allow debugging (a debuggable guest's memory is readable by the
//!    host, so its measurement proves nothing);
//! 5. the reported TCB is at least the minimum the genesis sets, component by component;
//! 6. the launch measurement is on the genesis allowlist;
//! 7. `report_data` equals what the verifier expects (the batch's Merkle root and the node
//!    address, computed by the caller from the records).

use sev::certs::snp::{Certificate, Chain, Verifiable, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

/// Size of an SNP attestation report (versions 2 to 5): 0x2A0 signed bytes, then the signature.
pub const REPORT_LEN: usize = 0x4A0;
/// The signed part of a report.
const SIGNED_LEN: usize = 0x2A0;
/// Offset of the signature's `r` and `s` (each 72 bytes little-endian, P-384 uses 48).
const SIG_R: usize = 0x2A0;
const SIG_S: usize = 0x2A0 + 72;

/// An AMD EPYC generation whose root keys `sev` has built in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    Milan,
    Genoa,
    Turin,
}

impl std::fmt::Display for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Product::Milan => "milan",
            Product::Genoa => "genoa",
            Product::Turin => "turin",
        })
    }
}

impl std::str::FromStr for Product {
    type Err = AttestationError;
    fn from_str(s: &str) -> Result<Product, AttestationError> {
        match s.to_ascii_lowercase().as_str() {
            "milan" => Ok(Product::Milan),
            "genoa" => Ok(Product::Genoa),
            "turin" => Ok(Product::Turin),
            _ => Err(AttestationError::BadRoots(format!(
                "unknown product {s:?}; expected milan, genoa or turin"
            ))),
        }
    }
}

/// The ARK and ASK a VCEK must chain to.
#[derive(Clone)]
pub struct Roots {
    chain: ca::Chain,
    /// "milan", "genoa", "turin", or "custom" for a root set from PEM.
    name: String,
}

impl std::fmt::Debug for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roots").field("name", &self.name).finish()
    }
}

impl Roots {
    /// AMD's roots for `product`, as built into `sev`.
    pub fn product(product: Product) -> Result<Roots, AttestationError> {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        let pair = match product {
            Product::Milan => (milan::ark(), milan::ask()),
            Product::Genoa => (genoa::ark(), genoa::ask()),
            Product::Turin => (turin::ark(), turin::ask()),
        };
        let (ark, ask) = match pair {
            (Ok(ark), Ok(ask)) => (ark, ask),
            (Err(e), _) | (_, Err(e)) => return Err(AttestationError::BadRoots(e.to_string())),
        };
        let name = product.to_string();
        Ok(Roots {
            chain: ca::Chain { ark, ask },
            name,
        })
    }

    /// A root set from PEM: the ARK then the ASK, as AMD's `cert_chain` files hold them (ASK
    /// first is accepted too: the self-signed one is the ARK).
    pub fn from_pem(pem: &[u8]) -> Result<Roots, AttestationError> {
        let text = std::str::from_utf8(pem)
            .map_err(|_| AttestationError::BadRoots("roots file is not PEM text".into()))?;
        let blocks: Vec<String> = text
            .split_inclusive("-----END CERTIFICATE-----")
            .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
            .map(|b| b.trim().to_string())
            .collect();
        let [a, b] = blocks.as_slice() else {
            return Err(AttestationError::BadRoots(format!(
                "roots file holds {} certificates; expected 2 (ARK and ASK)",
                blocks.len()
            )));
        };
        let parse = |pem: &str| {
            Certificate::from_pem(pem.as_bytes())
                .map_err(|e| AttestationError::BadRoots(format!("bad root certificate: {e}")))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        let self_signed = |c: &Certificate| (c, c).verify().is_ok();
        let (ark, ask) = if self_signed(&a) {
            (a, b)
        } else if self_signed(&b) {
            (b, a)
        } else {
            return Err(AttestationError::BadRoots(
                "neither root certificate is self-signed (no ARK)".into(),
            ));
        };
        Ok(Roots {
            chain: ca::Chain { ark, ask },
            name: "custom".into(),
        })
    }

    /// "milan", "genoa", "turin" or "custom".
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A TCB version: the security version numbers of the platform's firmware components.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl Tcb {
    /// Whether every component is at least `min`'s.
    pub fn at_least(&self, min: &Tcb) -> bool {
        self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }
}

impl std::fmt::Display for Tcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bootloader {} tee {} snp {} microcode {}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// What a valid report must satisfy beyond its signatures (genesis parameters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnpPolicy {
    /// Launch measurements (48 bytes each) of the approved guest images.
    pub measurements: Vec<[u8; 48]>,
    /// The oldest acceptable reported TCB.
    pub min_tcb: Tcb,
}

/// The facts a valid report establishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReport {
    pub measurement: [u8; 48],
    pub report_data: [u8; 64],
    pub reported_tcb: Tcb,
    pub chip_id: [u8; 64],
    /// The root set the VCEK chained to.
    pub roots: String,
}

/// Why a report was refused. Each check has its own variant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestationError {
    #[error("attestation report is malformed: {0}")]
    Malformed(String),
    #[error("VCEK certificate is malformed: {0}")]
    BadVcek(String),
    #[error("root certificates are unusable: {0}")]
    BadRoots(String),
    #[error("VCEK does not chain to the {roots} roots: {reason}")]
    Chain { roots: String, reason: String },
    #[error("the VCEK did not sign this report")]
    Signature,
    #[error("guest policy allows debugging")]
    DebugAllowed,
    #[error("reported TCB ({reported}) is below the minimum ({min})")]
    StaleTcb { reported: Tcb, min: Tcb },
    #[error("measurement {0} is not on the allowlist")]
    Measurement(String),
    #[error("report_data does not bind the records: expected {expected}, got {actual}")]
    ReportData { expected: String, actual: String },
}

fn tcb(v: &sev::firmware::host::TcbVersion) -> Tcb {
    Tcb {
        bootloader: v.bootloader,
        tee: v.tee,
        snp: v.snp,
        microcode: v.microcode,
    }
}

/// Checks `report` (raw bytes) against `vcek_der`, `roots` and `policy`, and, when given, that
/// its `report_data` equals `expected_data`. See the module docs for the order of checks.
pub fn verify_report(
    report: &[u8],
    vcek_der: &[u8],
    roots: &Roots,
    policy: &SnpPolicy,
    expected_data: Option<&[u8; 64]>,
) -> Result<VerifiedReport, AttestationError> {
    if report.len() != REPORT_LEN {
        return Err(AttestationError::Malformed(format!(
            "{} bytes; an SNP report is {REPORT_LEN}",
            report.len()
        )));
    }
    let parsed = AttestationReport::from_bytes(report)
        .map_err(|e| AttestationError::Malformed(e.to_string()))?;
    let vcek =
        Certificate::from_der(vcek_der).map_err(|e| AttestationError::BadVcek(e.to_string()))?;
    let chain = Chain {
        ca: roots.chain.clone(),
        vek: vcek,
    };
    let vcek = (&chain).verify().map_err(|e| AttestationError::Chain {
        roots: roots.name.clone(),
        reason: e.to_string(),
    })?;
    verify_signature(report, vcek.public_key_sec1())?;
    check_claims(&parsed, roots, policy, expected_data)
}

/// Steps 4 to 7, on a report whose signature holds.
fn check_claims(
    parsed: &AttestationReport,
    roots: &Roots,
    policy: &SnpPolicy,
    expected_data: Option<&[u8; 64]>,
) -> Result<VerifiedReport, AttestationError> {
    if parsed.policy.debug_allowed() {
        return Err(AttestationError::DebugAllowed);
    }
    let reported = tcb(&parsed.reported_tcb);
    if !reported.at_least(&policy.min_tcb) {
        return Err(AttestationError::StaleTcb {
            reported,
            min: policy.min_tcb,
        });
    }
    if !policy.measurements.contains(&parsed.measurement) {
        return Err(AttestationError::Measurement(hex::encode(
            parsed.measurement,
        )));
    }
    if let Some(expected) = expected_data
        && expected != &parsed.report_data
    {
        return Err(AttestationError::ReportData {
            expected: hex::encode(expected),
            actual: hex::encode(parsed.report_data),
        });
    }
    Ok(VerifiedReport {
        measurement: parsed.measurement,
        report_data: parsed.report_data,
        reported_tcb: reported,
        chip_id: parsed.chip_id,
        roots: roots.name.clone(),
    })
}

/// ECDSA P-384 / SHA-384 over the raw signed bytes; `r` and `s` are stored little-endian in
/// 72-byte fields whose top 24 bytes must be zero.
fn verify_signature(report: &[u8], vcek_sec1: &[u8]) -> Result<(), AttestationError> {
    use p384::ecdsa::signature::DigestVerifier;
    use sha2::Digest;
    let scalar = |at: usize| -> Result<[u8; 48], AttestationError> {
        let field = &report[at..at + 72];
        if field[48..].iter().any(|&b| b != 0) {
            return Err(AttestationError::Signature);
        }
        let mut be = [0u8; 48];
        for (dst, src) in be.iter_mut().zip(field[..48].iter().rev()) {
            *dst = *src;
        }
        Ok(be)
    };
    let (r, s) = (scalar(SIG_R)?, scalar(SIG_S)?);
    let sig =
        p384::ecdsa::Signature::from_scalars(r, s).map_err(|_| AttestationError::Signature)?;
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(vcek_sec1)
        .map_err(|e| AttestationError::BadVcek(format!("not a P-384 key: {e}")))?;
    let digest = sha2::Sha384::new_with_prefix(&report[..SIGNED_LEN]);
    key.verify_digest(digest, &sig)
        .map_err(|_| AttestationError::Signature)
}

#[cfg(test)]
mod tests;
