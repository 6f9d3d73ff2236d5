//! Bounded gzip inflation of request bodies.
//!
//! A client may send its body gzip-compressed (`Content-Encoding: gzip`). Compression makes
//! a small body a large one: 1 MiB of zeros inflates from about 1 KiB, so a few kilobytes
//! can ask for gigabytes (a "gzip bomb"). [`gunzip_limited`] inflates at most `limit + 1`
//! bytes and refuses the body as soon as the output passes `limit`, so a hostile body costs
//! at most `limit` bytes of memory, whatever its ratio.
//!
//! Concatenated gzip members (what `cat a.gz b.gz` gives, and some streaming compressors
//! write) are one body, as RFC 1952 allows. Pure: bytes in, bytes out, no I/O.

use std::io::Read;

/// Why a gzip body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GzipError {
    /// Not gzip, or a damaged or cut-short stream (HTTP 400).
    #[error("body is not valid gzip: {0}")]
    Invalid(String),
    /// The body inflates past the limit (HTTP 413).
    #[error("gzip body inflates past the limit of {limit} bytes")]
    TooLarge { limit: usize },
}

impl GzipError {
    /// Whether the refusal is about size (HTTP 413) rather than content (HTTP 400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, GzipError::TooLarge { .. })
    }
}

/// Inflates a gzip body, refusing it once the output passes `limit` bytes: the output is
/// never longer than `limit`, and memory held never more than `limit + 1` bytes of it.
pub fn gunzip_limited(compressed: &[u8], limit: usize) -> Result<Vec<u8>, GzipError> {
    gunzip_limited_with(compressed, limit, |_| Ok(()))
}

/// Like [`gunzip_limited`], telling `on_growth` each time the output has grown by up to
/// [`GROWTH_STEP`] bytes (how much), before it grows further: the server reserves memory
/// from its shared budget there, so that a body's inflated size is paid for as it appears,
/// not after. An error from `on_growth` stops the inflation and is returned.
pub fn gunzip_limited_with<E: From<GzipError>>(
    compressed: &[u8],
    limit: usize,
    mut on_growth: impl FnMut(usize) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    // One byte past the limit tells "exactly the limit" from "more".
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed).take(cap);
    let mut out = Vec::new();
    loop {
        let inflated = (&mut decoder)
            .take(GROWTH_STEP as u64)
            .read_to_end(&mut out)
            .map_err(|e| GzipError::Invalid(e.to_string()))?;
        if out.len() > limit {
            return Err(GzipError::TooLarge { limit }.into());
        }
        if inflated == 0 {
            return Ok(out);
        }
        on_growth(inflated)?;
    }
}

/// How much the output of [`gunzip_limited_with`] grows between two calls of `on_growth`.
pub const GROWTH_STEP: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_body_inflates_exactly_up_to_the_limit() {
        let body = b"{\"udid\":\"a\",\"type\":\"lead\",\"ts\":1764080000000}".repeat(10);
        let compressed = gzip(&body);
        assert_eq!(gunzip_limited(&compressed, body.len()).unwrap(), body);
        assert_eq!(
            gunzip_limited(&compressed, body.len() - 1),
            Err(GzipError::TooLarge {
                limit: body.len() - 1
            })
        );
        assert_eq!(gunzip_limited(&gzip(b""), 0).unwrap(), b"");
    }

    #[test]
    fn concatenated_members_are_one_body() {
        let mut both = gzip(b"first\n");
        both.extend(gzip(b"second\n"));
        assert_eq!(gunzip_limited(&both, 100).unwrap(), b"first\nsecond\n");
    }

    #[test]
    fn a_bomb_costs_at_most_the_limit() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "a bomb: {} bytes", bomb.len());
        let error = gunzip_limited(&bomb, 1 << 20).unwrap_err();
        assert!(error.is_too_large());
        assert_eq!(
            error.to_string(),
            "gzip body inflates past the limit of 1048576 bytes"
        );
    }

    #[test]
    fn damaged_or_foreign_bytes_are_invalid() {
        let good = gzip(b"hello");
        for bad in [&b"not gzip"[..], &good[..good.len() - 4], &good[..10]] {
            let error = gunzip_limited(bad, 100).unwrap_err();
            assert!(matches!(error, GzipError::Invalid(_)), "{error:?}");
        }
    }

    /// The limit is a `usize`: the one-byte look-ahead must not overflow at its maximum.
    #[test]
    fn the_largest_limit_does_not_overflow() {
        assert_eq!(gunzip_limited(&gzip(b"x"), usize::MAX).unwrap(), b"x");
    }
}
