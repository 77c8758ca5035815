//! The one place where bytes are encoded and decoded, on disk and on the wire.
//!
//! bincode 2 (serde mode, fixed-width little-endian integers) with a hard size limit. Every decode
//! rejects oversized input, claimed lengths past the limit and trailing bytes, and returns an error
//! rather than panicking. Swapping the format later touches only this file.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// Upper bound of anything the codec will decode (bytes), whatever the caller's own limit.
pub const MAX_DECODE: usize = 32 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_DECODE>()
}

/// Encodes `value`. Encoding of our own types cannot fail except on a serde bug; it is still
/// reported as an error instead of a panic.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Our types are plain data (no maps with non-string keys, no unsized streams): encoding only
    // fails past the size limit, which callers bound by construction. Fall back to an empty
    // vector, which every decoder rejects, instead of panicking.
    bincode::serde::encode_to_vec(value, config()).unwrap_or_default()
}

/// Decodes a `T` from exactly `bytes`, refusing anything longer than `limit`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T> {
    let limit = limit.min(MAX_DECODE);
    if bytes.len() > limit {
        return Err(Error::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| Error::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(Error::Decode(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Sample {
        a: u64,
        b: Vec<u8>,
        c: String,
    }

    #[test]
    fn round_trip_and_trailing_bytes() {
        let s = Sample {
            a: 7,
            b: vec![1, 2, 3],
            c: "x".into(),
        };
        let mut bytes = encode(&s);
        assert_eq!(decode::<Sample>(&bytes, 1024).unwrap(), s);
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(&bytes, 1024),
            Err(Error::Decode(_))
        ));
    }

    #[test]
    fn limit_is_enforced() {
        let s = Sample {
            a: 7,
            b: vec![0; 100],
            c: String::new(),
        };
        let bytes = encode(&s);
        assert!(matches!(
            decode::<Sample>(&bytes, 50),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn huge_claimed_length_is_refused_without_allocating() {
        // a: u64, then a Vec length of u64::MAX.
        let mut bytes = vec![0u8; 8];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Sample>(&bytes, 1024).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Sample>(&bytes, 1024);
            let _ = decode::<crate::block::Block>(&bytes, 1024);
            let _ = decode::<crate::record::InferenceRecord>(&bytes, 1024);
        }

        #[test]
        fn round_trips(a in any::<u64>(), b in proptest::collection::vec(any::<u8>(), 0..64), c in ".{0,20}") {
            let s = Sample { a, b, c };
            prop_assert_eq!(decode::<Sample>(&encode(&s), 4096).unwrap(), s);
        }
    }
}
