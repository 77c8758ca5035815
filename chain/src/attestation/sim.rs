//! A simulated SEV-SNP platform for testnets and tests.
//!
//! A [`SimRoot`] is a root of trust made with AMD's algorithms: an RSA-4096 ARK (self-signed)
//! and ASK, each certificate signed with RSASSA-PSS over SHA-384. It issues [`SimChip`]s: an
//! ECDSA P-384 VCEK key with a VCEK certificate carrying AMD's extensions (hwID = the chip id,
//! the TCB's security patch levels). A chip signs reports in the genuine SNP format (version 3,
//! 0x4A0 bytes, signature over bytes `0..0x2A0`, `r` and `s` little-endian), so the verifier in
//! [`super`] checks them with exactly the code that checks AMD hardware: the only difference is
//! the root set, which a genesis names as PEM.
//!
//! Nothing here is secure: the "chip" key sits in a file. It exists so that a network without SNP
//! hardware exercises the whole attestation path.

use std::str::FromStr;
use std::time::Duration;

use p384::ecdsa::SigningKey as EcKey;
use p384::ecdsa::signature::hazmat::PrehashSigner;
use rsa::RsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::rand_core::{OsRng, RngCore};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use serde::{Deserialize, Serialize};
use sev::firmware::guest::{AttestationReport, GuestPolicy};
use sev::parser::ByteParser;
use sha2::{Digest, Sha384};
use x509_cert::der::asn1::{BitString, Ia5String, OctetString};
use x509_cert::der::{Decode, DecodePem, Encode, EncodePem};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{
    DynSignatureAlgorithmIdentifier, ObjectIdentifier, SubjectPublicKeyInfoOwned,
};
use x509_cert::time::Validity;
use x509_cert::{Certificate, TbsCertificate};

use super::{AttestationError, REPORT_LEN, Roots, SIG_R, SIG_S, SIGNED_LEN, Tcb, oid};

/// RSA modulus size of the ARK and ASK, as AMD's.
pub const ROOT_BITS: usize = 4096;

/// Guest policy bit 17 is reserved and must be 1; bit 16 allows SMT; bit 19 allows debugging.
const POLICY_BASE: u64 = (1 << 17) | (1 << 16);
const POLICY_DEBUG: u64 = 1 << 19;

fn sim_err(what: &str, e: impl std::fmt::Display) -> AttestationError {
    AttestationError::Simulation(format!("{what}: {e}"))
}

/// A simulated ARK and ASK with their private keys.
pub struct SimRoot {
    ark_key: RsaPrivateKey,
    ask_key: RsaPrivateKey,
    ark: Certificate,
    ask: Certificate,
}

impl std::fmt::Debug for SimRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRoot").finish_non_exhaustive()
    }
}

/// The private part of a root, as a file: both keys (PKCS#8 PEM) and both certificates.
#[derive(Serialize, Deserialize)]
struct RootFile {
    ark_key: String,
    ask_key: String,
    ark: String,
    ask: String,
}

fn name(cn: &str) -> Result<Name, AttestationError> {
    Name::from_str(&format!(
        "CN={cn},OU=Engineering,O=proofmesh simulated SEV-SNP,C=US"
    ))
    .map_err(|e| sim_err("certificate name", e))
}

fn random_serial() -> Result<SerialNumber, AttestationError> {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::new(&bytes).map_err(|e| sim_err("serial number", e))
}

/// Builds and signs a certificate with RSASSA-PSS / SHA-384 (AMD's algorithm for every
/// certificate in the chain).
fn sign_cert(
    issuer_key: &RsaPrivateKey,
    issuer: Name,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
) -> Result<Certificate, AttestationError> {
    let signer = rsa::pss::SigningKey::<Sha384>::new(issuer_key.clone());
    let algorithm = signer
        .signature_algorithm_identifier()
        .map_err(|e| sim_err("signature algorithm", e))?;
    let validity = Validity::from_now(Duration::from_secs(25 * 365 * 24 * 3600))
        .map_err(|e| sim_err("validity", e))?;
    let tbs = TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: random_serial()?,
        signature: algorithm.clone(),
        issuer,
        validity,
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: (!extensions.is_empty()).then_some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(|e| sim_err("encode certificate", e))?;
    let signature = signer.sign_with_rng(&mut OsRng, &tbs_der);
    Ok(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature.to_vec())
            .map_err(|e| sim_err("signature bits", e))?,
    })
}

fn rsa_spki(key: &RsaPrivateKey) -> Result<SubjectPublicKeyInfoOwned, AttestationError> {
    let der = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| sim_err("RSA public key", e))?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(|e| sim_err("RSA public key", e))
}

fn ext(id: ObjectIdentifier, value_der: Vec<u8>) -> Result<Extension, AttestationError> {
    Ok(Extension {
        extn_id: id,
        critical: false,
        extn_value: OctetString::new(value_der).map_err(|e| sim_err("extension", e))?,
    })
}

fn int_ext(id: ObjectIdentifier, v: u8) -> Result<Extension, AttestationError> {
    ext(
        id,
        u32::from(v).to_der().map_err(|e| sim_err("extension", e))?,
    )
}

impl SimRoot {
    /// Generates a new ARK and ASK (two RSA-4096 keys: seconds, not milliseconds).
    pub fn generate() -> Result<SimRoot, AttestationError> {
        let ark_key =
            RsaPrivateKey::new(&mut OsRng, ROOT_BITS).map_err(|e| sim_err("ARK key", e))?;
        let ask_key =
            RsaPrivateKey::new(&mut OsRng, ROOT_BITS).map_err(|e| sim_err("ASK key", e))?;
        let (ark_name, ask_name) = (name("ARK-Simulated")?, name("SEV-Simulated")?);
        let ark = sign_cert(
            &ark_key,
            ark_name.clone(),
            ark_name.clone(),
            rsa_spki(&ark_key)?,
            Vec::new(),
        )?;
        let ask = sign_cert(
            &ark_key,
            ark_name,
            ask_name,
            rsa_spki(&ask_key)?,
            Vec::new(),
        )?;
        Ok(SimRoot {
            ark_key,
            ask_key,
            ark,
            ask,
        })
    }

    /// The public root set (ARK then ASK) a genesis declares.
    pub fn roots_pem(&self) -> Result<String, AttestationError> {
        let ark = self
            .ark
            .to_pem(LineEnding::LF)
            .map_err(|e| sim_err("ARK PEM", e))?;
        let ask = self
            .ask
            .to_pem(LineEnding::LF)
            .map_err(|e| sim_err("ASK PEM", e))?;
        Ok(format!("{ark}{ask}"))
    }

    /// The root set as the verifier takes it.
    pub fn roots(&self) -> Result<Roots, AttestationError> {
        Roots::from_pem(self.roots_pem()?.as_bytes())
    }

    /// Keys and certificates as JSON (secret: it can issue chips).
    pub fn to_json(&self) -> Result<String, AttestationError> {
        let key = |k: &RsaPrivateKey| {
            k.to_pkcs8_pem(LineEnding::LF)
                .map(|s| s.to_string())
                .map_err(|e| sim_err("root key PEM", e))
        };
        let cert = |c: &Certificate| {
            c.to_pem(LineEnding::LF)
                .map_err(|e| sim_err("root certificate PEM", e))
        };
        let file = RootFile {
            ark_key: key(&self.ark_key)?,
            ask_key: key(&self.ask_key)?,
            ark: cert(&self.ark)?,
            ask: cert(&self.ask)?,
        };
        serde_json::to_string_pretty(&file).map_err(|e| sim_err("root file", e))
    }

    /// Reads what [`SimRoot::to_json`] wrote; checks that the keys match the certificates.
    pub fn from_json(text: &str) -> Result<SimRoot, AttestationError> {
        let file: RootFile =
            serde_json::from_str(text).map_err(|e| sim_err("root file is not valid", e))?;
        let key = |pem: &str| {
            RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| sim_err("root file: bad key", e))
        };
        let cert = |pem: &str| {
            Certificate::from_pem(pem.as_bytes())
                .map_err(|e| sim_err("root file: bad certificate", e))
        };
        let root = SimRoot {
            ark_key: key(&file.ark_key)?,
            ask_key: key(&file.ask_key)?,
            ark: cert(&file.ark)?,
            ask: cert(&file.ask)?,
        };
        if root.ark.tbs_certificate.subject_public_key_info != rsa_spki(&root.ark_key)?
            || root.ask.tbs_certificate.subject_public_key_info != rsa_spki(&root.ask_key)?
        {
            return Err(AttestationError::Simulation(
                "root file: a key does not match its certificate".into(),
            ));
        }
        Ok(root)
    }

    /// Issues a chip: a fresh P-384 VCEK key, a random chip id, and a VCEK certificate signed by
    /// the ASK that names both and the TCB, as AMD's do.
    pub fn issue_chip(&self, tcb: Tcb) -> Result<SimChip, AttestationError> {
        let key = EcKey::random(&mut OsRng);
        let mut chip_id = [0u8; 64];
        OsRng.fill_bytes(&mut chip_id);
        chip_id[63] |= 1; // never "Turin-like" (last 56 bytes zero) nor masked
        let spki_der = key
            .verifying_key()
            .to_public_key_der()
            .map_err(|e| sim_err("VCEK public key", e))?;
        let spki = SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes())
            .map_err(|e| sim_err("VCEK public key", e))?;
        let product = Ia5String::new("Milan-Simulated")
            .and_then(|s| s.to_der())
            .map_err(|e| sim_err("product name", e))?;
        let extensions = vec![
            int_ext(oid::STRUCT_VERSION, 0)?,
            ext(oid::PRODUCT_NAME, product)?,
            int_ext(oid::BL_SPL, tcb.bootloader)?,
            int_ext(oid::TEE_SPL, tcb.tee)?,
            int_ext(oid::SNP_SPL, tcb.snp)?,
            int_ext(oid::UCODE_SPL, tcb.microcode)?,
            Extension {
                extn_id: oid::HW_ID,
                critical: false,
                extn_value: OctetString::new(chip_id.to_vec()).map_err(|e| sim_err("hwID", e))?,
            },
        ];
        let vcek = sign_cert(
            &self.ask_key,
            self.ask.tbs_certificate.subject.clone(),
            name("SEV-VCEK")?,
            spki,
            extensions,
        )?;
        let vcek_der = vcek.to_der().map_err(|e| sim_err("VCEK DER", e))?;
        Ok(SimChip {
            key,
            vcek_der,
            chip_id,
            tcb,
        })
    }
}

/// What a guest asks its (simulated) chip to attest.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    /// Launch the "guest" with a debug-allowing policy (for testing the verifier's refusal).
    pub debug: bool,
}

/// A simulated chip: the VCEK private key and certificate, the chip id, the TCB.
#[derive(Clone)]
pub struct SimChip {
    key: EcKey,
    vcek_der: Vec<u8>,
    chip_id: [u8; 64],
    tcb: Tcb,
}

impl std::fmt::Debug for SimChip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimChip")
            .field("chip_id", &hex::encode(&self.chip_id[..8]))
            .field("tcb", &self.tcb)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct ChipFile {
    /// The VCEK private scalar, hex.
    vcek_key: String,
    /// The VCEK certificate, DER as hex.
    vcek: String,
    chip_id: String,
    tcb: Tcb,
}

impl SimChip {
    /// The VCEK certificate (DER), as the extended report or AMD's KDS would give it.
    pub fn vcek_der(&self) -> &[u8] {
        &self.vcek_der
    }

    pub fn chip_id(&self) -> &[u8; 64] {
        &self.chip_id
    }

    pub fn tcb(&self) -> Tcb {
        self.tcb
    }

    /// A report in the SNP format (version 3, Milan CPUID), signed by this chip's VCEK.
    pub fn report(&self, req: &ReportRequest) -> Result<Vec<u8>, AttestationError> {
        let tcb = sev::firmware::host::TcbVersion::new(
            None,
            self.tcb.bootloader,
            self.tcb.tee,
            self.tcb.snp,
            self.tcb.microcode,
        );
        let mut report = AttestationReport {
            version: 3,
            guest_svn: 1,
            policy: GuestPolicy::from(if req.debug {
                POLICY_BASE | POLICY_DEBUG
            } else {
                POLICY_BASE
            }),
            vmpl: 0,
            sig_algo: 1, // ECDSA P-384 with SHA-384
            current_tcb: tcb,
            report_data: req.report_data,
            measurement: req.measurement,
            reported_tcb: tcb,
            cpuid_fam_id: Some(0x19),
            cpuid_mod_id: Some(0x01),
            cpuid_step: Some(0x01),
            chip_id: self.chip_id,
            committed_tcb: tcb,
            launch_tcb: tcb,
            ..Default::default()
        };
        OsRng.fill_bytes(&mut report.report_id);
        // A fixed-size array of the report's length (the sev encoder's `Bytes` type).
        let mut bytes: [u8; REPORT_LEN] =
            report.to_bytes().map_err(|e| sim_err("encode report", e))?;
        sign_report(&self.key, &mut bytes)?;
        Ok(bytes.to_vec())
    }

    /// The same chip certificate with a different private key: what a node that forges reports
    /// (without the chip) has. Its reports fail the signature check.
    pub fn forged(&self) -> SimChip {
        SimChip {
            key: EcKey::random(&mut OsRng),
            ..self.clone()
        }
    }

    /// The chip as JSON (secret: it holds the VCEK private key).
    pub fn to_json(&self) -> Result<String, AttestationError> {
        let file = ChipFile {
            vcek_key: hex::encode(self.key.to_bytes()),
            vcek: hex::encode(&self.vcek_der),
            chip_id: hex::encode(self.chip_id),
            tcb: self.tcb,
        };
        serde_json::to_string_pretty(&file).map_err(|e| sim_err("chip file", e))
    }

    /// Reads what [`SimChip::to_json`] wrote; checks that the key matches the certificate.
    pub fn from_json(text: &str) -> Result<SimChip, AttestationError> {
        let file: ChipFile =
            serde_json::from_str(text).map_err(|e| sim_err("chip file is not valid", e))?;
        let raw = |field: &str, h: &str| {
            hex::decode(h).map_err(|e| sim_err(&format!("chip file: {field}"), e))
        };
        let key = EcKey::from_slice(&raw("vcek_key", &file.vcek_key)?)
            .map_err(|e| sim_err("chip file: vcek_key", e))?;
        let vcek_der = raw("vcek", &file.vcek)?;
        let chip_id: [u8; 64] = raw("chip_id", &file.chip_id)?.try_into().map_err(|_| {
            AttestationError::Simulation("chip file: chip_id is not 64 bytes".into())
        })?;
        let cert = sev::certs::snp::Certificate::from_der(&vcek_der)
            .map_err(|e| sim_err("chip file: vcek", e))?;
        let public = key.verifying_key().to_encoded_point(false);
        if cert.public_key_sec1() != public.as_bytes() {
            return Err(AttestationError::Simulation(
                "chip file: vcek_key does not match the VCEK certificate".into(),
            ));
        }
        Ok(SimChip {
            key,
            vcek_der,
            chip_id,
            tcb: file.tcb,
        })
    }
}

/// Signs `report[..0x2A0]` in place: ECDSA P-384 over SHA-384, `r` and `s` little-endian in
/// 72-byte fields.
fn sign_report(key: &EcKey, report: &mut [u8]) -> Result<(), AttestationError> {
    let digest = Sha384::digest(&report[..SIGNED_LEN]);
    let sig: p384::ecdsa::Signature = key
        .sign_prehash(&digest)
        .map_err(|e| sim_err("sign report", e))?;
    let (r, s) = sig.split_bytes();
    for (at, scalar) in [(SIG_R, r), (SIG_S, s)] {
        let field = &mut report[at..at + 72];
        field.fill(0);
        for (dst, src) in field[..48].iter_mut().zip(scalar.iter().rev()) {
            *dst = *src;
        }
    }
    Ok(())
}

/// SHA-384 of a file: what the simulated TEE reports as the launch measurement of a guest that
/// runs that executable.
pub fn measure_file(path: &std::path::Path) -> Result<[u8; 48], AttestationError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| sim_err(&format!("measure {}", path.display()), e))?;
    let mut hasher = Sha384::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| sim_err(&format!("measure {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests;
