//! Encryption at rest: AES-256-GCM with a versioned, self-describing sealed format.
//!
//! What is sealed: identity that travels with marketing consent (`email`, `crm_id`) and the
//! secrets Vedetta stores itself (OAuth2 refresh tokens). The API is two calls,
//! [`Crypto::seal`] and [`Crypto::open`], both given a **context**: the parts that say what
//! the plaintext is and whose it is (`["oauth2.refresh_token", destination]`,
//! `["identity.email", pseudonym]`). The context is bound as associated data, so a sealed
//! value moved to another place (another destination's token file, another user's row)
//! does not open there. Context parts are length-prefixed, never joined with a separator.
//!
//! Sealed bytes: `[FORMAT u8][key id 4 bytes][nonce 12 bytes][ciphertext ‖ 16-byte tag]`.
//! The key id is a fingerprint of the key (the first 4 bytes of SHA-256 over a fixed label
//! and the key), so a value sealed under another key is named as such instead of failing
//! as "corrupt". Nonces are random (96 bits, from the system): by NIST SP 800-38D's bound,
//! one key may seal up to 2³² values; rotate it well before (`privacy.encryption_key`,
//! with the old one in `privacy.previous_encryption_keys` to keep reading).
//!
//! The key: `privacy.encryption_key` (64 hex characters, from the file or the environment
//! `VEDETTA_PRIVACY__ENCRYPTION_KEY`), else `<data_dir>/encryption.key`, generated on first
//! start (mode 0600, written and fsync'd with its directory before use) beside
//! `pseudonym.key`. Losing it makes everything sealed unreadable: back it up with the data.

use anyhow::Context;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use std::io::Write;
use std::path::Path;

/// Version of the sealed format.
pub const SEALED_FORMAT: u8 = 1;
const KEY_ID_LEN: usize = 4;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// Where a generated key lives, in the data directory.
pub const KEY_FILE: &str = "encryption.key";
/// The largest plaintext sealed at once (identity and tokens are small).
pub const MAX_PLAINTEXT: usize = 1 << 20;
/// The most context parts, and the longest context part.
const MAX_CONTEXT_PARTS: usize = 16;
const MAX_CONTEXT_PART: usize = 4096;

/// Why a value could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption key: {0}")]
    Key(String),
    #[error("sealed value of format {0}; this build reads format {SEALED_FORMAT}")]
    Format(u8),
    #[error("sealed value is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("sealed under key {0}, which is not configured (privacy.encryption_key)")]
    UnknownKey(String),
    #[error(
        "sealed value does not open: altered, or sealed for another context (a value moved between places)"
    )]
    Tampered,
    #[error("{0}")]
    Bounds(String),
    #[error("no system randomness: {0}")]
    Random(String),
}

struct Key {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

/// The current key (seals and opens) and earlier ones (open only).
pub struct Crypto {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypto")
            .field("key_id", &crate::crypto::hex(&self.current.id))
            .field("previous", &self.previous.len())
            .finish()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    vedetta_core::privacy::encode_hex(bytes)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn key_from_hex(text: &str) -> Result<Key, CryptoError> {
    let bytes = decode_hex(text.trim()).ok_or_else(|| {
        CryptoError::Key("must be 64 hex characters (32 bytes); it is not hex".into())
    })?;
    if bytes.len() != 32 {
        return Err(CryptoError::Key(format!(
            "must be 64 hex characters (32 bytes), got {} bytes",
            bytes.len()
        )));
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"vedetta encryption key id v1\0");
    ctx.update(&bytes);
    let digest = ctx.finish();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
    let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
        .map_err(|_| CryptoError::Key("not an AES-256 key".into()))?;
    Ok(Key {
        id,
        key: LessSafeKey::new(unbound),
    })
}

/// Checks a configured key's form (for configuration validation).
pub fn check_key_hex(text: &str) -> Result<(), CryptoError> {
    key_from_hex(text).map(drop)
}

/// The associated data: format, key id, then each context part length-prefixed.
fn associated_data(key_id: &[u8], context: &[&str]) -> Result<Vec<u8>, CryptoError> {
    if context.is_empty() || context.len() > MAX_CONTEXT_PARTS {
        return Err(CryptoError::Bounds(format!(
            "a context has 1 to {MAX_CONTEXT_PARTS} parts"
        )));
    }
    let mut aad = Vec::with_capacity(16 + context.iter().map(|p| p.len() + 4).sum::<usize>());
    aad.push(SEALED_FORMAT);
    aad.extend_from_slice(key_id);
    aad.push(context.len() as u8);
    for part in context {
        if part.len() > MAX_CONTEXT_PART {
            return Err(CryptoError::Bounds(format!(
                "a context part is at most {MAX_CONTEXT_PART} bytes"
            )));
        }
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    Ok(aad)
}

impl Crypto {
    /// From hex keys: the current one, then earlier ones still to be read.
    pub fn from_hex(current: &str, previous: &[String]) -> Result<Crypto, CryptoError> {
        Ok(Crypto {
            current: key_from_hex(current)?,
            previous: previous
                .iter()
                .map(|k| key_from_hex(k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The current key's id (hex), as written in sealed values: safe to show.
    pub fn key_id(&self) -> String {
        hex(&self.current.id)
    }

    /// Seals `plaintext` for `context` under the current key.
    pub fn seal(&self, context: &[&str], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(CryptoError::Bounds(format!(
                "a sealed value is at most {MAX_PLAINTEXT} bytes"
            )));
        }
        let aad = associated_data(&self.current.id, context)?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| CryptoError::Random(e.to_string()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(SEALED_FORMAT);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| CryptoError::Bounds("AES-GCM refused the input".into()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`Crypto::seal`] made for the same `context`, under any known key.
    pub fn open(&self, context: &[&str], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let Some((&format, rest)) = sealed.split_first() else {
            return Err(CryptoError::Truncated(0));
        };
        if format != SEALED_FORMAT {
            return Err(CryptoError::Format(format));
        }
        if sealed.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::Truncated(sealed.len()));
        }
        let (key_id, rest) = rest.split_at(KEY_ID_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(hex(key_id)))?;
        let aad = associated_data(key_id, context)?;
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let mut body = body.to_vec();
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| CryptoError::Tampered)?;
        Ok(plain.to_vec())
    }
}

/// An identity field that travels with marketing consent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityField {
    Email,
    CrmId,
}

impl IdentityField {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityField::Email => "email",
            IdentityField::CrmId => "crm_id",
        }
    }
}

impl Crypto {
    /// Seals one user's identity field, bound to the user's pseudonym (hex) and to the
    /// field: a value moved to another user, or from `email` to `crm_id`, does not open.
    /// Context: `["identity", field, pseudonym]`.
    pub fn seal_identity(
        &self,
        field: IdentityField,
        pseudonym: &str,
        value: &str,
    ) -> Result<Vec<u8>, CryptoError> {
        self.seal(&["identity", field.as_str(), pseudonym], value.as_bytes())
    }

    /// Opens what [`Crypto::seal_identity`] sealed for the same field and pseudonym.
    pub fn open_identity(
        &self,
        field: IdentityField,
        pseudonym: &str,
        sealed: &[u8],
    ) -> Result<String, CryptoError> {
        let plain = self.open(&["identity", field.as_str(), pseudonym], sealed)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Tampered)
    }
}

/// The encryption key: configured, or read from (or created in) `<data_dir>/encryption.key`.
pub fn load(
    configured: Option<&str>,
    previous: &[String],
    data_dir: &Path,
) -> anyhow::Result<Crypto> {
    let current = match configured {
        Some(hex) => hex.to_owned(),
        None => read_or_create_key_file(&data_dir.join(KEY_FILE))?,
    };
    Crypto::from_hex(&current, previous).context("privacy.encryption_key")
}

fn read_or_create_key_file(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let text = hex(&secret);
    write_private_file(path, text.as_bytes(), false)
        .with_context(|| format!("cannot create {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "no privacy.encryption_key configured: generated a new key. Back it up with the \
         data; without it, stored identity and tokens cannot be read"
    );
    Ok(text)
}

/// Writes `bytes` to `path` durably, readable by the owner only: a temporary file beside
/// it, fsync'd, renamed over `path`, then the directory fsync'd, so a crash leaves either
/// the old content or the new one, never a torn file. `replace = false` refuses to
/// overwrite an existing file (a key is created once).
pub(crate) fn write_private_file(path: &Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut temp = builder.tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    if replace {
        temp.persist(path).map_err(|e| e.error)?;
    } else {
        temp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn sealed_values_open_only_in_their_context_and_under_their_key() {
        let crypto = Crypto::from_hex(K1, &[]).unwrap();
        let sealed = crypto
            .seal(&["identity.email", "u1"], b"anna@example.it")
            .unwrap();
        assert_eq!(sealed[0], SEALED_FORMAT);
        assert!(!sealed.windows(5).any(|w| w == b"anna@"));
        assert_eq!(
            crypto.open(&["identity.email", "u1"], &sealed).unwrap(),
            b"anna@example.it"
        );
        // Another user, or the same bytes re-split across parts: does not open.
        assert_eq!(
            crypto.open(&["identity.email", "u2"], &sealed),
            Err(CryptoError::Tampered)
        );
        assert_eq!(
            crypto.open(&["identity.emailu", "1"], &sealed),
            Err(CryptoError::Tampered)
        );
        // Two seals of one value differ (random nonces).
        assert_ne!(
            sealed,
            crypto
                .seal(&["identity.email", "u1"], b"anna@example.it")
                .unwrap()
        );
        // A flipped bit anywhere is caught.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(crypto.open(&["identity.email", "u1"], &bad).is_err(), "{i}");
        }
        // Truncated and future formats are named.
        assert_eq!(
            crypto.open(&["x"], &sealed[..10]),
            Err(CryptoError::Truncated(10))
        );
        let mut future = sealed;
        future[0] = 2;
        assert_eq!(crypto.open(&["x"], &future), Err(CryptoError::Format(2)));
    }

    #[test]
    fn rotated_keys_keep_reading_and_unknown_keys_are_named() {
        let old = Crypto::from_hex(K1, &[]).unwrap();
        let sealed = old.seal(&["t"], b"secret").unwrap();
        let rotated = Crypto::from_hex(K2, &[K1.to_owned()]).unwrap();
        assert_eq!(rotated.open(&["t"], &sealed).unwrap(), b"secret");
        let other = Crypto::from_hex(K2, &[]).unwrap();
        assert_eq!(
            other.open(&["t"], &sealed),
            Err(CryptoError::UnknownKey(old.key_id()))
        );
        assert!(Crypto::from_hex("abcd", &[]).is_err());
        assert!(Crypto::from_hex(&"zz".repeat(32), &[]).is_err());
        assert!(!format!("{rotated:?}").contains(K2));
    }

    #[test]
    fn identity_is_bound_to_its_user_and_its_field() {
        let crypto = Crypto::from_hex(K1, &[]).unwrap();
        let sealed = crypto
            .seal_identity(IdentityField::Email, "7f3a9b2c", "anna@example.it")
            .unwrap();
        assert_eq!(
            crypto
                .open_identity(IdentityField::Email, "7f3a9b2c", &sealed)
                .unwrap(),
            "anna@example.it"
        );
        assert_eq!(
            crypto.open_identity(IdentityField::Email, "00000000", &sealed),
            Err(CryptoError::Tampered)
        );
        assert_eq!(
            crypto.open_identity(IdentityField::CrmId, "7f3a9b2c", &sealed),
            Err(CryptoError::Tampered)
        );
    }

    #[test]
    fn a_generated_key_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load(None, &[], dir.path()).unwrap();
        let b = load(None, &[], dir.path()).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let sealed = a.seal(&["t"], b"x").unwrap();
        assert_eq!(b.open(&["t"], &sealed).unwrap(), b"x");
    }
}
