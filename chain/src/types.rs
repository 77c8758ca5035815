//! Identifier and value types shared by every part of the chain.

use std::fmt;
use std::str::FromStr;

pub use alloy::primitives::{Address, B256};
pub use kernels::ModelId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Total OPG supply in base units (1,000,000,000 OPG × 10^18), minted at genesis; nothing mints later.
pub const TOTAL_SUPPLY: u128 = 1_000_000_000 * 10u128.pow(18);

/// Block height. Genesis state is height 0; the first block is height 1.
pub type Height = u64;

/// A job's identifier: the EIP-712 signing hash of its [`crate::JobRequest`], unique per
/// client, nonce and chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct JobId(pub B256);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for JobId {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        B256::from_str(s)
            .map(JobId)
            .map_err(|e| crate::Error::Invalid {
                field: "job id",
                reason: format!("{s:?} is not 0x + 64 hex digits ({e})"),
            })
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        B256::deserialize(d).map(JobId)
    }
}

/// A 65-byte secp256k1 signature (r ‖ s ‖ v), hex in JSON, raw bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sig(pub [u8; 65]);

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig(0x{})", hex::encode(self.0))
    }
}

impl Serialize for Sig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format!("0x{}", hex::encode(self.0)))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 65-byte signature (0x + 130 hex digits)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Sig, E> {
                let raw = hex::decode(v.strip_prefix("0x").unwrap_or(v)).map_err(E::custom)?;
                self.visit_bytes(&raw)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Sig, E> {
                let arr: [u8; 65] = v
                    .try_into()
                    .map_err(|_| E::custom(format!("signature has {} bytes, not 65", v.len())))?;
                Ok(Sig(arr))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

/// Serde for token amounts: a decimal string in JSON (amounts exceed 2^53), a plain `u128` in
/// binary encodings. Use with `#[serde(with = "crate::types::amount")]`.
pub mod amount {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&v.to_string())
        } else {
            s.serialize_u128(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        if d.is_human_readable() {
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Either {
                S(String),
                N(u64),
            }
            match Either::deserialize(d)? {
                Either::S(s) => s.parse::<u128>().map_err(|e| {
                    serde::de::Error::custom(format!("amount {s:?} is not a decimal integer: {e}"))
                }),
                Either::N(n) => Ok(n as u128),
            }
        } else {
            u128::deserialize(d)
        }
    }
}

/// Serde for byte strings: `0x`-hex in JSON, raw bytes in binary encodings. Use with
/// `#[serde(with = "crate::types::bytes_hex")]`.
pub mod bytes_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format!("0x{}", hex::encode(v)))
        } else {
            s.serialize_bytes(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            hex::decode(s.strip_prefix("0x").unwrap_or(&s))
                .map_err(|e| serde::de::Error::custom(format!("not hex bytes: {e}")))
        } else {
            serde_bytes_vec(d)
        }
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Unix time in milliseconds (wall clock). Only the proposer reads the clock; everything else
/// uses block timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig_json_and_binary_round_trip() {
        let s = Sig([7u8; 65]);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.starts_with("\"0x0707"));
        assert_eq!(serde_json::from_str::<Sig>(&json).unwrap(), s);
        let bin = crate::codec::encode(&s);
        assert_eq!(crate::codec::decode::<Sig>(&bin, 100).unwrap(), s);
        assert!(serde_json::from_str::<Sig>("\"0x0102\"").is_err());
        assert!(serde_json::from_str::<Sig>("\"zz\"").is_err());
    }

    #[test]
    fn amounts_are_decimal_strings_in_json() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct A {
            #[serde(with = "amount")]
            v: u128,
        }
        let a = A { v: TOTAL_SUPPLY };
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "{\"v\":\"1000000000000000000000000000\"}");
        assert_eq!(serde_json::from_str::<A>(&json).unwrap(), a);
        assert_eq!(serde_json::from_str::<A>("{\"v\":5}").unwrap(), A { v: 5 });
        assert!(serde_json::from_str::<A>("{\"v\":\"-1\"}").is_err());
        assert_eq!(
            crate::codec::decode::<A>(&crate::codec::encode(&a), 64).unwrap(),
            a
        );
    }

    #[test]
    fn job_id_parses_and_rejects() {
        let id = JobId(B256::repeat_byte(0xab));
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        assert!("0x12".parse::<JobId>().is_err());
        assert!("hello".parse::<JobId>().is_err());
    }
}
