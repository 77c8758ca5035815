//! Content hashes: [`keccak256`] and [`ModelId`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Keccak-256 (the Ethereum variant, not NIST SHA3-256) of `data`.
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    use tiny_keccak::{Hasher, Keccak};
    let mut h = Keccak::v256();
    h.update(data);
    let mut out = [0u8; 32];
    h.finalize(&mut out);
    out
}

/// Keccak-256 over data that arrives in pieces (a file received in chunks).
pub struct KeccakStream(tiny_keccak::Keccak);

impl KeccakStream {
    pub fn new() -> Self {
        KeccakStream(tiny_keccak::Keccak::v256())
    }

    pub fn update(&mut self, data: &[u8]) {
        use tiny_keccak::Hasher;
        self.0.update(data);
    }

    pub fn finalize(self) -> [u8; 32] {
        use tiny_keccak::Hasher;
        let mut out = [0u8; 32];
        self.0.finalize(&mut out);
        out
    }
}

impl Default for KeccakStream {
    fn default() -> Self {
        Self::new()
    }
}

/// `0x` + 64 lowercase hex digits.
pub(crate) fn hex32(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(66);
    s.push_str("0x");
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// A model's identity: keccak-256 of its manifest, which lists the keccak of every model file.
/// Two directories with byte-identical files have the same id on any machine.
///
/// Text form (`Display`, `FromStr`, JSON): `0x` + 64 hex digits (printed lowercase; parsing
/// accepts either case). Binary serde formats (e.g. bincode) carry the 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ModelId(pub [u8; 32]);

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex32(&self.0))
    }
}

impl FromStr for ModelId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadModelId {
            input: s.chars().take(80).collect(),
        };
        let hex = s.strip_prefix("0x").ok_or_else(bad)?.as_bytes();
        if hex.len() != 64 {
            return Err(bad());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *o = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
        }
        Ok(ModelId(out))
    }
}

impl Serialize for ModelId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex32(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ModelId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ModelId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a model id (0x + 64 hex digits, or 32 bytes)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModelId, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ModelId, E> {
                let arr: [u8; 32] = v
                    .try_into()
                    .map_err(|_| E::custom(format!("model id has {} bytes, not 32", v.len())))?;
                Ok(ModelId(arr))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    /// Pieces hash as the whole.
    #[test]
    fn keccak_in_pieces_is_keccak() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut k = super::KeccakStream::new();
        for piece in data.chunks(333) {
            k.update(piece);
        }
        assert_eq!(k.finalize(), super::keccak256(&data));
    }

    use super::*;

    #[test]
    fn keccak_known_vectors() {
        // Ethereum's well-known keccak256("") and keccak256("abc").
        assert_eq!(
            hex32(&keccak256(b"")),
            "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
        assert_eq!(
            hex32(&keccak256(b"abc")),
            "0x4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
        );
    }

    #[test]
    fn model_id_text_round_trip() {
        let id = ModelId(keccak256(b"model"));
        let s = id.to_string();
        assert_eq!(s.len(), 66);
        assert!(s.starts_with("0x"));
        assert_eq!(s, s.to_lowercase());
        assert_eq!(s.parse::<ModelId>().unwrap(), id);
        assert_eq!(
            s.to_uppercase()
                .replacen("0X", "0x", 1)
                .parse::<ModelId>()
                .unwrap(),
            id
        );
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<ModelId>(&json).unwrap(), id);
    }

    #[test]
    fn model_id_rejects_malformed_text() {
        let good = ModelId([7; 32]).to_string();
        for bad in [
            &good[2..],                  // no 0x
            &good[..65],                 // too short
            &format!("{good}0"),         // too long
            &good.replacen('7', "g", 1), // not hex
            "",
            "0x",
        ] {
            assert!(
                matches!(bad.parse::<ModelId>(), Err(Error::BadModelId { .. })),
                "{bad:?} parsed"
            );
        }
        assert!(serde_json::from_str::<ModelId>("\"0x12\"").is_err());
    }
}
