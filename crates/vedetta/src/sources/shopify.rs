//! `POST /v1/sources/shopify`: Shopify's order webhooks.
//!
//! Shopify signs each delivery with `X-Shopify-Hmac-Sha256`, the base64 HMAC-SHA-256 of the
//! raw body under the app's webhook secret. The signature is the authentication: no bearer
//! key, and nothing is stored from a body whose signature does not verify (401). During a
//! secret rotation `[sources.shopify] secrets` lists the new secret and the previous one
//! (newest first) and both verify; once the previous one is removed from the list it no
//! longer does. Comparison is in constant time (`hmac`'s `verify_slice`).
//!
//! The order becomes a purchase through `vedetta_core::sources::shopify` and is stored like
//! any event; the answer comes after the durable write, well within Shopify's 5 s. A
//! `refunds/create` becomes a `refund` of its order (docs/semantics.md, "Refunds"). Other
//! topics are answered 200 (so Shopify does not retry them), ignored and counted.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};

/// `[sources.shopify]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShopify {
    /// Webhook signing secrets, newest first.
    pub secrets: Vec<String>,
}

/// Validated Shopify settings.
#[derive(Clone)]
pub struct ShopifySource {
    secrets: Vec<String>,
}

impl std::fmt::Debug for ShopifySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never appear in logs or debug output.
        f.debug_struct("ShopifySource")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// Most secrets listed at once (the current and the previous, with room to spare).
const MAX_SECRETS: usize = 4;

impl ShopifySource {
    pub fn from_raw(raw: RawShopify) -> Result<Self, (String, String)> {
        let key = "sources.shopify.secrets".to_string();
        if raw.secrets.is_empty() || raw.secrets.len() > MAX_SECRETS {
            return Err((
                key,
                format!("list 1 to {MAX_SECRETS} webhook secrets, newest first"),
            ));
        }
        if raw.secrets.iter().any(|s| s.trim().is_empty()) {
            return Err((key, "a secret is empty".into()));
        }
        Ok(Self {
            secrets: raw.secrets,
        })
    }

    /// Whether `signature` (the header's base64 text) is the HMAC of `body` under one of
    /// the secrets.
    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        let Some(expected) = decode_base64(signature.trim()) else {
            return false;
        };
        self.secrets.iter().any(|secret| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                return false;
            };
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        })
    }
}

/// Counts of webhook deliveries, for `/metrics`.
#[derive(Debug, Default)]
pub struct ShopifyCounters {
    pub stored: AtomicU64,
    pub ignored_topic: AtomicU64,
    pub bad_signature: AtomicU64,
    pub unmappable: AtomicU64,
}

impl ShopifyCounters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> [(&'static str, u64); 4] {
        [
            ("stored", self.stored.load(Ordering::Relaxed)),
            ("ignored_topic", self.ignored_topic.load(Ordering::Relaxed)),
            ("bad_signature", self.bad_signature.load(Ordering::Relaxed)),
            ("unmappable", self.unmappable.load(Ordering::Relaxed)),
        ]
    }
}

/// Standard base64 (RFC 4648 §4, with padding), as Shopify writes its signatures.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(4) || text.len() > 1024 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    let padding = bytes.iter().rev().take_while(|&&c| c == b'=').count();
    if padding > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let mut n = 0u32;
        let mut pad = 0;
        for &c in chunk {
            n <<= 6;
            if c == b'=' {
                if !last {
                    return None;
                }
                pad += 1;
            } else {
                if pad > 0 {
                    return None;
                }
                n |= value(c)?;
            }
        }
        let group = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&group[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_the_rfc_4648_vectors_and_refuses_the_rest() {
        for (plain, encoded) in [
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                decode_base64(encoded).unwrap(),
                plain.as_bytes(),
                "{encoded}"
            );
        }
        for bad in ["", "Zg=", "Zg===", "Z===", "Zm9v!mFy", "Zg==Zm9v", "Zm=v"] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets_are_validated_and_never_printed() {
        assert!(ShopifySource::from_raw(RawShopify { secrets: vec![] }).is_err());
        assert!(
            ShopifySource::from_raw(RawShopify {
                secrets: vec![" ".into()]
            })
            .is_err()
        );
        let source = ShopifySource::from_raw(RawShopify {
            secrets: vec!["shpss_current".into()],
        })
        .unwrap();
        assert!(!format!("{source:?}").contains("shpss"));
    }
}
