//! API keys: what a client passes as the bearer token of the OpenAI-compatible API.
//!
//! A key is a signed [`ApiGrant`] (the client's account lets a delegate buy jobs, up to a cap,
//! until an expiry, for some models) together with the delegate's private key. The gateway
//! signs each job with the delegate key, so the record that goes on chain carries the grant
//! and the delegate's signature, never the delegate key: a grant read from a block cannot buy
//! anything. Anyone who holds the key can spend up to the cap, as with any bearer key.
//!
//! Text form: `pm1_` and the URL-safe unpadded base64 of the codec encoding of
//! `(SignedGrant, delegate secret)`.

use alloy::primitives::{B256, FixedBytes};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};
use crate::record::{ApiGrant, MAX_GRANT_MODELS, SignedGrant};
use crate::signing::{Domain, PrivateKeySigner};

/// What every key starts with (the format's version).
pub const PREFIX: &str = "pm1_";
/// The longest text a key can have (a grant naming [`MAX_GRANT_MODELS`] models), with margin;
/// longer input is refused before it is decoded.
pub const MAX_KEY_CHARS: usize = 2048;

/// A parsed API key.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub grant: SignedGrant,
    pub delegate: PrivateKeySigner,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Invalid {
        field: "api key",
        reason: reason.into(),
    }
}

impl ApiKey {
    /// Makes a key: a fresh delegate, the grant signed by `client`.
    pub fn create(
        client: &PrivateKeySigner,
        cap: u128,
        expiry: u64,
        models: Vec<crate::types::ModelId>,
        domain: &Domain,
    ) -> Result<ApiKey> {
        if models.len() > MAX_GRANT_MODELS {
            return Err(invalid(format!(
                "{} models, at most {MAX_GRANT_MODELS}",
                models.len()
            )));
        }
        let delegate = PrivateKeySigner::random();
        let grant = ApiGrant {
            client: client.address(),
            delegate: delegate.address(),
            cap,
            expiry,
            models,
        }
        .sign(client, domain)?;
        Ok(ApiKey { grant, delegate })
    }

    /// The key's text form.
    pub fn encode(&self) -> String {
        let secret: B256 = self.delegate.to_bytes();
        let bytes = crate::codec::encode(&(&self.grant, secret));
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses a key's text form. Checks its shape and that the secret is the grant's delegate;
    /// the grant's signature and what it allows are checked where it is used, against the
    /// network's domain.
    pub fn parse(text: &str) -> Result<ApiKey> {
        if text.len() > MAX_KEY_CHARS {
            return Err(invalid(format!(
                "{} characters, at most {MAX_KEY_CHARS}",
                text.len()
            )));
        }
        let body = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| invalid(format!("does not start with {PREFIX}")))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| invalid(format!("not base64url: {e}")))?;
        let (grant, secret): (SignedGrant, B256) = crate::codec::decode(&bytes, MAX_KEY_CHARS)
            .map_err(|e| invalid(format!("malformed: {e}")))?;
        let delegate = PrivateKeySigner::from_bytes(&FixedBytes::<32>::from(secret.0))
            .map_err(|e| invalid(format!("the delegate key is not a valid key: {e}")))?;
        if delegate.address() != grant.grant.delegate {
            return Err(invalid("the delegate key is not the grant's delegate"));
        }
        Ok(ApiKey { grant, delegate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::D7;
    use crate::signing::seeded_key;
    use crate::types::ModelId;

    #[test]
    fn keys_round_trip_and_verify() {
        let client = seeded_key(1, 1);
        let key = ApiKey::create(&client, 5, 4_000_000_000, vec![ModelId([3; 32])], &D7).unwrap();
        let text = key.encode();
        assert!(text.starts_with(PREFIX));
        assert!(text.len() < MAX_KEY_CHARS);
        let back = ApiKey::parse(&text).unwrap();
        assert_eq!(back.grant, key.grant);
        assert_eq!(back.delegate.address(), key.delegate.address());
        assert_eq!(back.grant.verify(&D7).unwrap(), key.grant.grant.id(&D7));
        assert_eq!(back.grant.grant.client, client.address());
        // Two keys of the same terms have different delegates, so different grants.
        let again = ApiKey::create(&client, 5, 4_000_000_000, vec![ModelId([3; 32])], &D7).unwrap();
        assert_ne!(again.grant.grant.id(&D7), key.grant.grant.id(&D7));
        // The largest grant still fits the limit.
        let big = ApiKey::create(
            &client,
            u128::MAX,
            u64::MAX,
            vec![ModelId([3; 32]); 16],
            &D7,
        )
        .unwrap();
        assert_eq!(ApiKey::parse(&big.encode()).unwrap().grant, big.grant);
        assert!(ApiKey::create(&client, 1, 1, vec![ModelId([3; 32]); 17], &D7).is_err());
    }

    #[test]
    fn garbage_keys_are_clear_errors() {
        let client = seeded_key(1, 1);
        let key = ApiKey::create(&client, 5, 4_000_000_000, vec![], &D7).unwrap();
        let text = key.encode();
        let err = |t: &str| ApiKey::parse(t).unwrap_err().to_string();
        assert!(err("sk-proj-abc").contains("pm1_"));
        assert!(err("pm1_!!!").contains("base64"));
        assert!(err(&"pm1_A".repeat(1000)).contains("at most"));
        // Every truncation fails.
        for cut in PREFIX.len()..text.len() {
            assert!(ApiKey::parse(&text[..cut]).is_err(), "cut {cut}");
        }
        // A secret that is not the grant's delegate.
        let other = ApiKey::create(&client, 5, 4_000_000_000, vec![], &D7).unwrap();
        let bytes = crate::codec::encode(&(&key.grant, other.delegate.to_bytes()));
        let swapped = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        assert!(err(&swapped).contains("not the grant's delegate"));
        // Random bytes after the prefix.
        let mut state = 7u64;
        for n in 0..200 {
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 56) as u8
                })
                .collect();
            assert!(ApiKey::parse(&format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))).is_err());
        }
    }
}
