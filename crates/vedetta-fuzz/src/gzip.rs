//! Target `gzip`: the bounded inflate of request bodies (`vedetta_core::intake::gzip`).
//!
//! The first two bytes set the limit (0..=65535), the rest is the body. Checked:
//! - an inflated body is never longer than its limit;
//! - the verdict is monotone in the limit: a body accepted under a limit is accepted,
//!   identical, under any larger one; a body refused as too large under a limit is, under a
//!   larger one, either refused the same way or accepted longer than the smaller limit;
//!   a body that is not gzip is not gzip under any limit;
//! - the input, compressed, inflates back to itself under a limit of exactly its length,
//!   and is too large under one byte less.

use std::io::Write;
use vedetta_core::intake::gzip::{GzipError, gunzip_limited};

/// Far above any limit the target draws, so a body that fits under a drawn limit fits here.
const LARGER_LIMIT: usize = 1 << 20;

pub fn fuzz_gzip(data: &[u8]) {
    let (limit, body) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    let small = gunzip_limited(body, limit);
    let large = gunzip_limited(body, LARGER_LIMIT);
    match (&small, &large) {
        (Ok(inflated), Ok(again)) => {
            assert!(
                inflated.len() <= limit,
                "inflated past the limit of {limit}"
            );
            assert_eq!(inflated, again, "a larger limit changed an accepted body");
        }
        (Ok(_), Err(error)) => panic!("accepted under {limit} but not under more: {error}"),
        (Err(GzipError::TooLarge { limit: said }), Ok(inflated)) => {
            assert_eq!(*said, limit);
            assert!(inflated.len() > limit, "refused as too large but fits");
        }
        (Err(GzipError::TooLarge { .. }), Err(GzipError::TooLarge { .. })) => {}
        (Err(GzipError::TooLarge { .. }), Err(GzipError::Invalid(_))) => {
            // The stream breaks past the small limit: it was cut off before reaching it.
        }
        (Err(GzipError::Invalid(small)), other) => {
            assert!(
                matches!(other, Err(GzipError::Invalid(_))),
                "not gzip under {limit} ({small}) but {other:?} under more"
            );
        }
    }

    // The round trip of the input itself, under a limit of exactly its length.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let compressed = encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .unwrap_or_else(|e| panic!("gzip into memory failed: {e}"));
    match gunzip_limited(&compressed, data.len()) {
        Ok(inflated) => assert_eq!(inflated, data, "the round trip changed the body"),
        Err(error) => panic!("own gzip of {} bytes refused: {error}", data.len()),
    }
    if let Some(one_less) = data.len().checked_sub(1) {
        assert_eq!(
            gunzip_limited(&compressed, one_less),
            Err(GzipError::TooLarge { limit: one_less }),
            "a body one byte over its limit was not refused"
        );
    }
}
