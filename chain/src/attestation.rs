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
//!    Before the signature, the VCEK's own claims (AMD's extensions: hwID, the TCB's patch
//!    levels) must match the report's chip id and reported TCB: a VCEK of another chip or TCB
//!    is refused by name rather than as a bad signature;
//! 4. the guest policy does not allow debugging (a debuggable guest's memory is readable by the
//!    host, so its measurement proves nothing);
//! 5. the reported TCB is at least the minimum the genesis sets, component by component;
//! 6. the launch measurement is on the genesis allowlist;
//! 7. `report_data` equals what the verifier expects (the batch's Merkle root and the node
//!    address, computed by the caller from the records).

use std::collections::HashMap;
use std::sync::Mutex;

use alloy::primitives::{Address, B256, keccak256};
use sev::certs::snp::{Certificate, Chain, Verifiable, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use x509_cert::der::Decode;

pub mod sim;

/// Size of an SNP attestation report (versions 2 to 5): 0x2A0 signed bytes, then the signature.
pub const REPORT_LEN: usize = 0x4A0;
/// The signed part of a report.
const SIGNED_LEN: usize = 0x2A0;
/// Offset of the signature's `r` and `s` (each 72 bytes little-endian, P-384 uses 48).
const SIG_R: usize = 0x2A0;
const SIG_S: usize = 0x2A0 + 72;

/// AMD's VCEK certificate extensions (AMD "Versioned Chip Endorsement Key" specification).
pub(crate) mod oid {
    use x509_cert::spki::ObjectIdentifier;
    pub const STRUCT_VERSION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1");
    pub const PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
    pub const BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    pub const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    pub const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    pub const UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    pub const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
}

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
    #[error("the VCEK is not this report's: {0}")]
    VcekMismatch(String),
    #[error("guest policy allows debugging")]
    DebugAllowed,
    #[error("reported TCB ({reported}) is below the minimum ({min})")]
    StaleTcb { reported: Tcb, min: Tcb },
    #[error("measurement {0} is not on the allowlist")]
    Measurement(String),
    #[error("report_data does not bind the records: expected {expected}, got {actual}")]
    ReportData { expected: String, actual: String },
    #[error("record carries no TEE proof, but its model's mode requires one")]
    MissingProof,
    #[error("Merkle path of {0} siblings is longer than any batch")]
    PathTooLong(usize),
    #[error("simulated TEE: {0}")]
    Simulation(String),
    /// The report comes from another chip than the one the node bound at registration, or the
    /// node bound none.
    #[error("attested by chip {attested}, but the node bound {bound}")]
    WrongChip { bound: String, attested: String },
}

impl AttestationError {
    /// A short stable name of the failed check (CLI output, metrics, logs).
    pub fn label(&self) -> &'static str {
        match self {
            AttestationError::Malformed(_) => "malformed",
            AttestationError::BadVcek(_) => "bad_vcek",
            AttestationError::BadRoots(_) => "bad_roots",
            AttestationError::Chain { .. } => "chain",
            AttestationError::Signature => "signature",
            AttestationError::VcekMismatch(_) => "vcek_mismatch",
            AttestationError::DebugAllowed => "debug_allowed",
            AttestationError::StaleTcb { .. } => "stale_tcb",
            AttestationError::Measurement(_) => "measurement",
            AttestationError::ReportData { .. } => "report_data",
            AttestationError::MissingProof => "missing_proof",
            AttestationError::PathTooLong(_) => "path_too_long",
            AttestationError::Simulation(_) => "simulation",
            AttestationError::WrongChip { .. } => "wrong_chip",
        }
    }
}

fn tcb(v: &sev::firmware::host::TcbVersion) -> Tcb {
    Tcb {
        bootloader: v.bootloader,
        tee: v.tee,
        snp: v.snp,
        microcode: v.microcode,
    }
}

/// A VCEK whose chain to the roots holds: its public key and the claims of its extensions.
#[derive(Clone, Debug)]
struct TrustedVcek {
    key: p384::ecdsa::VerifyingKey,
    hw_id: Option<Vec<u8>>,
    /// One claim per SPL extension present.
    spl: Vec<SplClaim>,
}

/// A VCEK's claimed security patch level of one TCB component.
#[derive(Clone, Copy, Debug)]
struct SplClaim {
    name: &'static str,
    /// Reads the same component from a report's TCB.
    of: fn(&Tcb) -> u8,
    level: u8,
}

/// Parses `vcek_der`, checks its chain to `roots` (steps 2) and reads its extensions.
fn trust_vcek(vcek_der: &[u8], roots: &Roots) -> Result<TrustedVcek, AttestationError> {
    let x509 = x509_cert::Certificate::from_der(vcek_der)
        .map_err(|e| AttestationError::BadVcek(e.to_string()))?;
    // RFC 5280 4.1.1.2: the algorithm beside the signature must be the one inside the signed
    // part. The chain check reads only the signed part's, so a certificate whose outer
    // identifier was edited (libFuzzer found one: a hash OID in the RSA-PSS parameters) still
    // verified, as the same VCEK under other bytes.
    if x509.signature_algorithm != x509.tbs_certificate.signature {
        return Err(AttestationError::BadVcek(
            "the signature algorithm outside the signed part differs from the one inside it".into(),
        ));
    }
    // A signature is whole octets. The chain check reads the octets and not the count of
    // unused bits before them, so without this a certificate with that count edited verified
    // as the same VCEK under other bytes.
    if x509.signature.unused_bits() != 0 {
        return Err(AttestationError::BadVcek(
            "the signature bit string has unused bits".into(),
        ));
    }
    let mut hw_id = None;
    let mut spl = Vec::new();
    for ext in x509.tbs_certificate.extensions.iter().flatten() {
        let value = ext.extn_value.as_bytes();
        let (name, of): (&'static str, fn(&Tcb) -> u8) = match ext.extn_id {
            oid::HW_ID => {
                hw_id = Some(value.to_vec());
                continue;
            }
            oid::BL_SPL => ("bootloader", |t| t.bootloader),
            oid::TEE_SPL => ("tee", |t| t.tee),
            oid::SNP_SPL => ("snp", |t| t.snp),
            oid::UCODE_SPL => ("microcode", |t| t.microcode),
            _ => continue,
        };
        let level = u8::from_der(value)
            .map_err(|e| AttestationError::BadVcek(format!("{name} SPL extension: {e}")))?;
        spl.push(SplClaim { name, of, level });
    }
    let vcek = Certificate::from(x509);
    let chain = Chain {
        ca: roots.chain.clone(),
        vek: vcek,
    };
    let vcek = (&chain).verify().map_err(|e| AttestationError::Chain {
        roots: roots.name.clone(),
        reason: e.to_string(),
    })?;
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(vcek.public_key_sec1())
        .map_err(|e| AttestationError::BadVcek(format!("not a P-384 key: {e}")))?;
    Ok(TrustedVcek { key, hw_id, spl })
}

/// The VCEK's extensions must name the report's chip and reported TCB.
fn check_vcek_claims(
    vcek: &TrustedVcek,
    parsed: &AttestationReport,
) -> Result<(), AttestationError> {
    if let Some(hw_id) = &vcek.hw_id
        && parsed.chip_id != [0u8; 64]
        && hw_id.as_slice() != parsed.chip_id.as_slice()
    {
        return Err(AttestationError::VcekMismatch(format!(
            "VCEK is for chip {}…, the report is from chip {}…",
            hex::encode(&hw_id[..hw_id.len().min(8)]),
            hex::encode(&parsed.chip_id[..8])
        )));
    }
    let reported = tcb(&parsed.reported_tcb);
    for &SplClaim { name, of, level } in &vcek.spl {
        let actual = of(&reported);
        if actual != level {
            return Err(AttestationError::VcekMismatch(format!(
                "VCEK is for {name} patch level {level}, the report's TCB has {actual}"
            )));
        }
    }
    Ok(())
}

fn parse_report(report: &[u8]) -> Result<AttestationReport, AttestationError> {
    if report.len() != REPORT_LEN {
        return Err(AttestationError::Malformed(format!(
            "{} bytes; an SNP report is {REPORT_LEN}",
            report.len()
        )));
    }
    AttestationReport::from_bytes(report).map_err(|e| AttestationError::Malformed(e.to_string()))
}

/// Checks `report` (raw bytes) against `vcek_der`, `roots` and `policy`, and, when given, that
/// its `report_data` equals `expected_data`. See the module docs for the order of checks.
/// Uncached: [`TeeVerifier`] is the form for checking many reports.
pub fn verify_report(
    report: &[u8],
    vcek_der: &[u8],
    roots: &Roots,
    policy: &SnpPolicy,
    expected_data: Option<&[u8; 64]>,
) -> Result<VerifiedReport, AttestationError> {
    let parsed = parse_report(report)?;
    let vcek = trust_vcek(vcek_der, roots)?;
    check_vcek_claims(&vcek, &parsed)?;
    verify_signature(report, &vcek.key)?;
    check_claims(&parsed, roots, policy, expected_data)
}

/// A launch measurement written as 96 hex digits (`0x` optional); `None` if it is not one.
pub fn parse_measurement(s: &str) -> Option<[u8; 48]> {
    hex::decode(s.strip_prefix("0x").unwrap_or(s))
        .ok()
        .and_then(|b| <[u8; 48]>::try_from(b).ok())
}

/// `report_data` for a batch: the Merkle root of its record leaves, then the node's address,
/// then zeros.
pub fn report_data(root: &B256, node: &Address) -> [u8; 64] {
    let mut data = [0u8; 64];
    data[..32].copy_from_slice(root.as_slice());
    data[32..52].copy_from_slice(node.as_slice());
    data
}

/// Longest Merkle path a record may carry (a batch of 2^20 records).
pub const MAX_PATH: usize = 20;

/// Entries kept per cache before it is cleared.
const CACHE_LIMIT: usize = 4096;

/// The report rule with two caches: VCEKs whose chain was verified (the RSA-4096 chain check
/// is most of a cold verification) and reports whose signature was verified (a batch shares
/// one report). Only successes are cached, keyed by content hash, so a cached answer is the
/// answer the full check would give. Safe to share between threads.
#[derive(Debug)]
pub struct TeeVerifier {
    roots: Roots,
    policy: SnpPolicy,
    vceks: Mutex<HashMap<B256, TrustedVcek>>,
    /// keccak(vcek hash ‖ report) → the parsed report, signature verified.
    reports: Mutex<HashMap<B256, AttestationReport>>,
}

fn cache_get<T: Clone>(m: &Mutex<HashMap<B256, T>>, k: &B256) -> Option<T> {
    m.lock().ok().and_then(|m| m.get(k).cloned())
}

fn cache_put<T>(m: &Mutex<HashMap<B256, T>>, k: B256, v: T) {
    if let Ok(mut m) = m.lock() {
        if m.len() >= CACHE_LIMIT {
            m.clear();
        }
        m.insert(k, v);
    }
}

impl TeeVerifier {
    pub fn new(roots: Roots, policy: SnpPolicy) -> TeeVerifier {
        TeeVerifier {
            roots,
            policy,
            vceks: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
        }
    }

    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// The same rule as [`verify_report`], with the caches.
    pub fn verify(
        &self,
        report: &[u8],
        vcek_der: &[u8],
        expected_data: Option<&[u8; 64]>,
    ) -> Result<VerifiedReport, AttestationError> {
        let vcek_hash = keccak256(vcek_der);
        let vcek = match cache_get(&self.vceks, &vcek_hash) {
            Some(v) => v,
            None => {
                let v = trust_vcek(vcek_der, &self.roots)?;
                cache_put(&self.vceks, vcek_hash, v.clone());
                v
            }
        };
        let mut buf = Vec::with_capacity(32 + report.len());
        buf.extend_from_slice(vcek_hash.as_slice());
        buf.extend_from_slice(report);
        let report_key = keccak256(&buf);
        let parsed = match cache_get(&self.reports, &report_key) {
            Some(p) => p,
            None => {
                let parsed = parse_report(report)?;
                check_vcek_claims(&vcek, &parsed)?;
                verify_signature(report, &vcek.key)?;
                cache_put(&self.reports, report_key, parsed);
                parsed
            }
        };
        check_claims(&parsed, &self.roots, &self.policy, expected_data)
    }

    /// Checks that `report` proves the record with Merkle leaf `leaf`, run by `node`: the path
    /// leads from the leaf to the root that, with the node's address, is the report's
    /// `report_data`.
    pub fn verify_leaf(
        &self,
        report: &[u8],
        vcek_der: &[u8],
        path: &[B256],
        leaf: &B256,
        node: &Address,
    ) -> Result<VerifiedReport, AttestationError> {
        if path.len() > MAX_PATH {
            return Err(AttestationError::PathTooLong(path.len()));
        }
        let root = crate::merkle::root_from_path(path, leaf);
        self.verify(report, vcek_der, Some(&report_data(&root, node)))
    }
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
fn verify_signature(
    report: &[u8],
    key: &p384::ecdsa::VerifyingKey,
) -> Result<(), AttestationError> {
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
    // The rest of the signature area is reserved, zero in AMD's format (and in AMD's genuine
    // reports): a report with other bytes there is not the report that was signed.
    if report[SIG_S + 72..].iter().any(|&b| b != 0) {
        return Err(AttestationError::Signature);
    }
    let sig =
        p384::ecdsa::Signature::from_scalars(r, s).map_err(|_| AttestationError::Signature)?;
    let digest = sha2::Sha384::new_with_prefix(&report[..SIGNED_LEN]);
    key.verify_digest(digest, &sig)
        .map_err(|_| AttestationError::Signature)
}

#[cfg(test)]
mod tests;
