//! Pseudonymization and IP truncation: nothing personal leaves intake in clear.
//!
//! A `udid` becomes HMAC-SHA-256(key, udid), cut to 128 bits. The key is secret, so the
//! pseudonym cannot be reversed or recomputed by someone holding only the data, yet the
//! same user always maps to the same pseudonym and erasure by `udid` stays possible.
//!
//! Keys rotate: a [`Pseudonymizer`] holds the current key and may remember earlier ones,
//! each with a one-byte id stored in the log batch header. New events use the current key;
//! erasure and export compute the pseudonym under every known key.

use crate::record::UserPseudonym;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::IpAddr;

type HmacSha256 = Hmac<Sha256>;

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("pseudonym key must be at least 32 bytes (64 hex characters), got {0} bytes")]
    TooShort(usize),
    #[error("pseudonym key is not valid hex: {0}")]
    NotHex(String),
}

/// A secret pseudonymization key with its id.
#[derive(Clone)]
pub struct PseudonymKey {
    pub id: u8,
    /// The keyed MAC state, prepared once: cloning it skips re-deriving the key pads for
    /// every event.
    prepared: HmacSha256,
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PseudonymKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PseudonymKey {
    /// A key from raw secret bytes (at least 32).
    pub fn from_bytes(id: u8, secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::TooShort(secret.len()));
        }
        let prepared = HmacSha256::new_from_slice(secret).map_err(|_| KeyError::TooShort(0))?;
        Ok(Self { id, prepared })
    }

    /// A key from its hex form, as written in config files and the key file.
    pub fn from_hex(id: u8, hex: &str) -> Result<Self, KeyError> {
        let bytes = decode_hex(hex.trim()).ok_or_else(|| KeyError::NotHex(redact(hex)))?;
        Self::from_bytes(id, &bytes)
    }

    /// A keyed digest of several byte strings, each length-prefixed (so no two different
    /// lists give the same input), under a purpose tag that keeps it apart from pseudonyms.
    pub fn tagged_digest(&self, purpose: &str, parts: &[&[u8]]) -> [u8; 16] {
        let mut mac = self.prepared.clone();
        for part in std::iter::once(purpose.as_bytes()).chain(parts.iter().copied()) {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        let digest = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }

    /// The pseudonym of a `udid` under this key.
    pub fn pseudonym(&self, udid: &str) -> UserPseudonym {
        let mut mac = self.prepared.clone();
        mac.update(udid.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        UserPseudonym(out)
    }
}

/// The current key plus earlier ones still needed for erasure and export.
#[derive(Clone, Debug)]
pub struct Pseudonymizer {
    current: PseudonymKey,
    previous: Vec<PseudonymKey>,
}

impl Pseudonymizer {
    pub fn new(current: PseudonymKey, previous: Vec<PseudonymKey>) -> Self {
        Self { current, previous }
    }

    /// The key new events are pseudonymized with.
    pub fn current(&self) -> &PseudonymKey {
        &self.current
    }

    /// The pseudonym of a `udid` under the current key.
    pub fn pseudonym(&self, udid: &str) -> UserPseudonym {
        self.current.pseudonym(udid)
    }

    /// The pseudonyms of a `udid` under every known key, with the key ids.
    pub fn all_pseudonyms(&self, udid: &str) -> Vec<(u8, UserPseudonym)> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|key| (key.id, key.pseudonym(udid)))
            .collect()
    }
}

/// Truncates an address to its /24 (IPv4) or /48 (IPv6) network: precise enough for region
/// geolocation, too coarse to identify a household.
pub fn truncate_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            // An IPv4-mapped address is an IPv4 client: truncate it as one.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return truncate_ip(IpAddr::V4(v4));
            }
            let mut octets = v6.octets();
            octets[6..].fill(0);
            IpAddr::from(octets)
        }
    }
}

/// Lower-case hex of arbitrary bytes.
pub fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A secret shown in an error message: its length only.
fn redact(secret: &str) -> String {
    format!("<{} characters, not shown>", secret.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(id: u8, fill: u8) -> PseudonymKey {
        PseudonymKey::from_bytes(id, &[fill; 32]).expect("32 bytes")
    }

    #[test]
    fn pseudonym_is_stable_keyed_and_not_the_input() {
        let a = key(1, 7);
        let b = key(2, 8);
        assert_eq!(a.pseudonym("user-1"), a.pseudonym("user-1"));
        assert_ne!(a.pseudonym("user-1"), a.pseudonym("user-2"));
        assert_ne!(a.pseudonym("user-1"), b.pseudonym("user-1"));
    }

    #[test]
    fn matches_hmac_sha256_reference_vector() {
        // RFC 4231 test case 2 uses a short key; test case with a 32+ byte key computed
        // independently: HMAC-SHA-256(key = 0x0b * 32, "Hi There").
        let key = PseudonymKey::from_bytes(0, &[0x0b; 32]).expect("key");
        let expected = "198a607eb44bfbc69903a0f1cf2bbdc5";
        assert_eq!(key.pseudonym("Hi There").to_hex(), expected);
    }

    #[test]
    fn short_or_bad_keys_are_refused_without_echoing_them() {
        assert_eq!(
            PseudonymKey::from_bytes(0, &[1; 31]).unwrap_err(),
            KeyError::TooShort(31)
        );
        let err = PseudonymKey::from_hex(0, "zz-secret").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(PseudonymKey::from_hex(0, &"ab".repeat(32)).is_ok());
    }

    #[test]
    fn rotation_keeps_old_pseudonyms_reachable() {
        let p = Pseudonymizer::new(key(2, 9), vec![key(1, 7)]);
        let all = p.all_pseudonyms("u");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], (2, key(2, 9).pseudonym("u")));
        assert_eq!(all[1], (1, key(1, 7).pseudonym("u")));
    }

    #[test]
    fn truncates_ipv4_to_24_and_ipv6_to_48() {
        let t = |s: &str| truncate_ip(s.parse().expect("ip")).to_string();
        assert_eq!(t("93.44.12.201"), "93.44.12.0");
        assert_eq!(t("2001:db8:abcd:12:34::1"), "2001:db8:abcd::");
        assert_eq!(t("::ffff:151.38.9.77"), "151.38.9.0");
    }
}
