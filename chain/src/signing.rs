//! EIP-712 typed data and secp256k1 signatures: what clients, inference nodes and validators sign.
//!
//! Job requests and transfers are EIP-712 structs under the domain `proofmesh` / `1` /
//! `chainId` / `salt` (the genesis hash, see [`Domain`]), so any Ethereum wallet
//! (`eth_signTypedData_v4`) can sign them.

use std::path::Path;

use alloy::primitives::{Address, B256, FixedBytes, keccak256};
use alloy::signers::SignerSync;
pub use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Eip712Domain, SolStruct, eip712_domain};

use crate::error::{Error, Result};
use crate::types::Sig;

/// The EIP-712 struct definitions, as a wallet sees them.
pub mod typed {
    alloy::sol! {
        /// EIP-3009, as OPG (`chain/contracts/src/OPG.sol`) defines it: what an x402 payer signs.
        struct ReceiveWithAuthorization {
            address from;
            address to;
            uint256 value;
            uint256 validAfter;
            uint256 validBefore;
            bytes32 nonce;
        }
        struct JobRequest {
            address client;
            bytes32 modelId;
            bytes32 inputHash;
            uint128 maxFee;
            uint64 nonce;
            uint64 expiry;
        }
        struct Transfer {
            address from;
            address to;
            uint128 amount;
            uint64 nonce;
            uint128 maxFee;
        }
        struct Bond {
            address from;
            uint128 amount;
            uint64 nonce;
            uint128 maxFee;
        }
        struct Unbond {
            address from;
            uint128 amount;
            uint64 nonce;
            uint128 maxFee;
        }
        struct Withdraw {
            address from;
            uint64 nonce;
            uint128 maxFee;
        }
        struct RegisterValidator {
            address from;
            string peerId;
            string moniker;
            uint64 nonce;
            uint128 maxFee;
        }
        struct RegisterInferenceNode {
            address from;
            string peerId;
            bytes32[] models;
            bytes32 teeChip;
            uint64 nonce;
            uint128 maxFee;
        }
        struct RegisterModel {
            address from;
            bytes32 modelId;
            string name;
            string manifest;
            string mode;
            uint128 pricePerJob;
            uint128 pricePerUnit;
            uint64 nonce;
            uint128 maxFee;
        }
        struct Propose {
            address from;
            string kind;
            string change;
            uint128 deposit;
            uint64 nonce;
            uint128 maxFee;
        }
        struct Vote {
            address from;
            uint64 proposal;
            string option;
            uint64 nonce;
            uint128 maxFee;
        }
        struct Unjail {
            address from;
            uint64 nonce;
            uint128 maxFee;
        }
        struct ReportEvidence {
            address from;
            bytes32 evidence;
            uint64 nonce;
            uint128 maxFee;
        }
        struct ReportFraud {
            address from;
            bytes32 evidence;
            uint64 nonce;
            uint128 maxFee;
        }
        struct BridgeDeposit {
            address from;
            uint64 id;
            address depositor;
            address recipient;
            uint128 amount;
            uint64 nonce;
            uint128 maxFee;
        }
        struct BridgeWithdraw {
            address from;
            address recipient;
            uint128 amount;
            uint64 nonce;
            uint128 maxFee;
        }
        /// An API key: `client` lets whoever holds `delegate`'s key buy jobs on its account,
        /// up to `cap` OPG base units in all, until `expiry`, for `models` (any when empty).
        struct ApiGrant {
            address client;
            address delegate;
            uint128 cap;
            uint64 expiry;
            bytes32[] models;
        }
        struct InferenceResult {
            bytes32 jobId;
            bytes32 modelId;
            bytes32 inputHash;
            bytes32 outputHash;
            uint64 units;
            address executor;
        }
    }

    /// What validators sign and hash, as the EVM settlement contract recomputes it: a block
    /// hash is the struct hash of its header, a vote the signing hash of `ConsensusVote`.
    pub mod consensus {
        alloy::sol! {
            struct BlockHeader {
                uint64 height;
                bytes32 parent;
                address proposer;
                uint64 timestampMs;
                bytes32 recordsRoot;
                bytes32 txsRoot;
                bytes32 stateRoot;
                bytes32 lastCommitHash;
                bytes32 nextValidatorsHash;
                bytes32 anchorRecordsRoot;
                bytes32 anchorWithdrawalsRoot;
            }
            struct ConsensusVote {
                uint64 height;
                uint32 round;
                uint8 kind;
                bytes32 blockHash;
            }
        }
    }
}

/// What every signature on a proofmesh network is bound to: the chain id and the network's
/// genesis hash.
///
/// A chain id alone does not name a network: two testnets started with the same id would accept
/// each other's signatures. The genesis hash commits to the whole genesis (accounts, validators,
/// models, start time), so it differs between any two networks; it is the EIP-712 domain's
/// `salt`, and part of every other signed digest ([`tagged_digest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Domain {
    pub chain_id: u64,
    /// The genesis hash.
    pub salt: B256,
    /// Where x402 payments for this network settle (the genesis `evm` section); `None`: no
    /// job can be authorized by a payment.
    #[serde(default)]
    pub payments: Option<EvmPayments>,
}

/// The EVM side of a network's x402 payments: OPG's address and EIP-712 domain (`OPG`, `1`,
/// the EVM chain id, the token) and the bridge the payments go to. A job may be authorized by
/// its client's EIP-3009 `ReceiveWithAuthorization` of OPG to the bridge whose nonce is the job
/// id: the same signature that pays (through the bridge, to the client's own account) commits
/// to the job, so no second signature is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct EvmPayments {
    pub chain_id: u64,
    pub opg: Address,
    pub settlement: Address,
}

impl EvmPayments {
    /// OPG's EIP-712 domain.
    pub fn eip712(&self) -> Eip712Domain {
        eip712_domain! { name: "OPG", version: "1", chain_id: self.chain_id, verifying_contract: self.opg, }
    }

    /// The digest `from` signs to let the bridge pull `value` OPG, valid strictly between
    /// `valid_after` and `valid_before` (Unix seconds), once per `nonce`.
    pub fn authorization_digest(
        &self,
        from: Address,
        value: u128,
        valid_after: u64,
        valid_before: u64,
        nonce: B256,
    ) -> B256 {
        use alloy::primitives::U256;
        typed::ReceiveWithAuthorization {
            from,
            to: self.settlement,
            value: U256::from(value),
            validAfter: U256::from(valid_after),
            validBefore: U256::from(valid_before),
            nonce,
        }
        .eip712_signing_hash(&self.eip712())
    }
}

impl Domain {
    /// The EIP-712 domain, as a wallet is given it: name `proofmesh`, version `1`, `chainId`,
    /// `salt`.
    pub fn eip712(&self) -> Eip712Domain {
        eip712_domain! { name: "proofmesh", version: "1", chain_id: self.chain_id, salt: self.salt, }
    }
}

/// The EIP-712 signing hash of `value` on the network `domain`.
pub fn signing_hash<T: SolStruct>(value: &T, domain: &Domain) -> B256 {
    value.eip712_signing_hash(&domain.eip712())
}

/// Signs a 32-byte digest.
pub fn sign(signer: &PrivateKeySigner, digest: &B256) -> Result<Sig> {
    let sig = signer
        .sign_hash_sync(digest)
        .map_err(|e| Error::BadSignature(e.to_string()))?;
    Ok(Sig(sig.as_bytes()))
}

/// Recovers the address that signed `digest`.
///
/// Only the canonical form of a signature is accepted: `s` in the lower half of the curve order
/// (EIP-2) and `v` 27 or 28, as every Ethereum wallet produces. Each signature has other
/// encodings that recover the same key (`n - s` with the other parity; `v` 0/1 or EIP-155
/// values); accepting them would let anyone re-send a signed message as new bytes, with a new
/// gossip id, that dedup by bytes would count again.
pub fn recover(sig: &Sig, digest: &B256) -> Result<Address> {
    let parsed = alloy::primitives::Signature::from_raw_array(&sig.0)
        .map_err(|e| Error::BadSignature(e.to_string()))?;
    if parsed.normalize_s().is_some() {
        return Err(Error::BadSignature(
            "non-canonical signature: s is in the upper half of the curve order (EIP-2)".into(),
        ));
    }
    if parsed.as_bytes() != sig.0 {
        return Err(Error::BadSignature(format!(
            "non-canonical signature: v is {}, not 27 or 28",
            sig.0[64]
        )));
    }
    parsed
        .recover_address_from_prehash(digest)
        .map_err(|e| Error::BadSignature(e.to_string()))
}

/// Checks that `sig` over `digest` was made by `expected`.
pub fn verify(sig: &Sig, digest: &B256, expected: Address) -> Result<()> {
    let recovered = recover(sig, digest)?;
    if recovered != expected {
        return Err(Error::WrongSigner {
            expected,
            recovered,
        });
    }
    Ok(())
}

/// Domain-separated digest for messages that are not EIP-712 structs (consensus votes):
/// `keccak(tag ‖ chain_id ‖ salt ‖ payload)`.
pub fn tagged_digest(tag: &[u8], domain: &Domain, payload: &[u8]) -> B256 {
    let mut buf = Vec::with_capacity(tag.len() + 8 + 32 + payload.len());
    buf.extend_from_slice(tag);
    buf.extend_from_slice(&domain.chain_id.to_be_bytes());
    buf.extend_from_slice(domain.salt.as_slice());
    buf.extend_from_slice(payload);
    keccak256(&buf)
}

/// Reads a hex private key file (one line, optional 0x).
pub fn load_key(path: &Path) -> Result<PrivateKeySigner> {
    let text = std::fs::read_to_string(path)?;
    parse_key(text.trim()).map_err(|e| Error::Invalid {
        field: "key file",
        reason: format!("{}: {e}", path.display()),
    })
}

/// Parses a hex private key (optional 0x).
pub fn parse_key(text: &str) -> std::result::Result<PrivateKeySigner, String> {
    let raw = hex::decode(text.strip_prefix("0x").unwrap_or(text))
        .map_err(|e| format!("not hex: {e}"))?;
    if raw.len() != 32 {
        return Err(format!(
            "a private key has 32 bytes, this has {}",
            raw.len()
        ));
    }
    PrivateKeySigner::from_bytes(&FixedBytes::<32>::from_slice(&raw))
        .map_err(|e| format!("not a valid secp256k1 key: {e}"))
}

/// Writes a private key as hex, readable only by the owner.
pub fn write_key(path: &Path, signer: &PrivateKeySigner) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    writeln!(f, "0x{}", hex::encode(signer.to_bytes()))?;
    Ok(())
}

/// A key derived deterministically from a seed and an index (testnets only: reproducible keys).
pub fn seeded_key(seed: u64, index: u64) -> PrivateKeySigner {
    let mut counter = 0u64;
    loop {
        let mut buf = b"proofmesh-testnet-key".to_vec();
        buf.extend_from_slice(&seed.to_be_bytes());
        buf.extend_from_slice(&index.to_be_bytes());
        buf.extend_from_slice(&counter.to_be_bytes());
        if let Ok(k) = PrivateKeySigner::from_bytes(&keccak256(&buf)) {
            return k;
        }
        counter += 1;
    }
}

/// A domain for unit tests: chain `chain_id`, zero salt.
#[cfg(test)]
pub(crate) fn test_domain(chain_id: u64) -> Domain {
    Domain {
        chain_id,
        salt: B256::ZERO,
        payments: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_recover_and_wrong_signer() {
        let a = seeded_key(1, 0);
        let b = seeded_key(1, 1);
        let digest = keccak256(b"hello");
        let sig = sign(&a, &digest).unwrap();
        assert_eq!(recover(&sig, &digest).unwrap(), a.address());
        verify(&sig, &digest, a.address()).unwrap();
        assert!(matches!(
            verify(&sig, &digest, b.address()),
            Err(Error::WrongSigner { .. })
        ));
        let mut bad = sig;
        bad.0[..32].fill(0); // r = 0 is no signature
        assert!(matches!(
            recover(&bad, &digest),
            Err(Error::BadSignature(_))
        ));
        let mut other = sig;
        other.0[40] ^= 1; // a different valid-looking s recovers someone else
        assert_ne!(recover(&other, &digest).ok(), Some(a.address()));
    }

    /// The other encodings of a valid signature recover the same key in alloy; ours refuses
    /// them, so a malleated copy of a message is not a second valid message.
    #[test]
    fn malleated_signatures_are_refused() {
        use alloy::primitives::{Signature, U256};
        let key = seeded_key(1, 0);
        let digest = keccak256(b"pay 5 OPG");
        let sig = sign(&key, &digest).unwrap();
        let parsed = Signature::from_raw_array(&sig.0).unwrap();
        let order = U256::from_str_radix(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
            16,
        )
        .unwrap();
        let high = Signature::new(parsed.r(), order - parsed.s(), !parsed.v());
        assert_eq!(
            high.recover_address_from_prehash(&digest).unwrap(),
            key.address(),
            "n - s with the other parity is the same signature"
        );
        let err = recover(&Sig(high.as_bytes()), &digest).unwrap_err();
        assert!(err.to_string().contains("upper half"), "{err}");

        let mut raw_v = sig;
        raw_v.0[64] -= 27;
        assert_eq!(
            Signature::from_raw_array(&raw_v.0)
                .unwrap()
                .recover_address_from_prehash(&digest)
                .unwrap(),
            key.address()
        );
        for v in [0, 1, 2, 26, 29, 37, 38, 255] {
            let mut other = sig;
            other.0[64] = v;
            assert!(
                matches!(recover(&other, &digest), Err(Error::BadSignature(_))),
                "v = {v}"
            );
        }
        assert_eq!(recover(&sig, &digest).unwrap(), key.address());
    }

    #[test]
    fn seeded_keys_are_reproducible_and_distinct() {
        assert_eq!(seeded_key(3, 4).address(), seeded_key(3, 4).address());
        assert_ne!(seeded_key(3, 4).address(), seeded_key(3, 5).address());
    }

    #[test]
    fn key_file_round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = seeded_key(9, 9);
        write_key(&p, &k).unwrap();
        assert_eq!(load_key(&p).unwrap().address(), k.address());
        std::fs::write(&p, "0x1234").unwrap();
        assert!(load_key(&p).is_err());
        std::fs::write(&p, "not hex at all").unwrap();
        assert!(load_key(&p).is_err());
    }

    #[test]
    fn eip712_domain_separates_chains_and_networks() {
        let t = typed::Transfer {
            from: Address::ZERO,
            to: Address::ZERO,
            amount: 1,
            nonce: 0,
            maxFee: 0,
        };
        let one = test_domain(1);
        assert_ne!(signing_hash(&t, &one), signing_hash(&t, &test_domain(2)));
        // Same chain id, another genesis.
        let other = Domain {
            salt: B256::repeat_byte(1),
            ..one
        };
        assert_ne!(signing_hash(&t, &one), signing_hash(&t, &other));
        assert_ne!(
            tagged_digest(b"t", &one, b"x"),
            tagged_digest(b"t", &other, b"x")
        );
    }
}
