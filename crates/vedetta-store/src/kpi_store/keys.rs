//! The key codec of KPI and spend rows (store format 1).
//!
//! ```text
//! [granularity u8][window start: i64 with the sign bit flipped, u64 big-endian]
//! then per dimension: [byte length u32 big-endian][UTF-8 bytes]
//! ```
//!
//! - **Cannot be forged.** Every dimension carries its length, so no character a client
//!   sends can move a boundary; the parts are read back exactly as written. (Format 0
//!   joined them with byte 0x1f: a campaign holding U+001F gave a key with too many parts,
//!   and every query over its window failed.)
//! - **Ordered for range scans.** Keys sort by granularity, then window start (the
//!   flipped sign bit makes big-endian bytes sort like the signed number, negative starts
//!   included), then dimensions: a time range of one granularity is one contiguous range.
//! - **Canonical.** A decoded key encodes back to the same bytes, and anything else is an
//!   error, never a panic: trailing bytes, a missing part, bad UTF-8, an unknown
//!   granularity (a fuzz target checks it).

use super::{RowKey, RowView, SpendRowKey};
use vedetta_core::pipeline::windows::Granularity;

/// Why key bytes are not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key of {0} bytes is shorter than its 9-byte prefix")]
    Short(usize),
    #[error("unknown granularity code {0}")]
    Granularity(u8),
    #[error("dimension {index} is cut short")]
    Truncated { index: usize },
    #[error("dimension {index} is not UTF-8")]
    Utf8 { index: usize },
    #[error("{0} bytes left over after the last dimension")]
    Trailing(usize),
    #[error("a dimension of {0} bytes is too long to encode")]
    TooLong(usize),
}

const PREFIX_LEN: usize = 9;

/// The order-preserving encoding of a window start.
fn start_bytes(window_start: i64) -> [u8; 8] {
    ((window_start as u64) ^ (1 << 63)).to_be_bytes()
}

/// The 9-byte prefix all keys of a granularity and window start share.
pub(super) fn prefix(granularity: Granularity, window_start: i64) -> [u8; PREFIX_LEN] {
    let mut out = [0; PREFIX_LEN];
    out[0] = granularity.code();
    out[1..].copy_from_slice(&start_bytes(window_start));
    out
}

fn encode(
    granularity: Granularity,
    window_start: i64,
    parts: &[&str],
) -> Result<Vec<u8>, KeyError> {
    let len = PREFIX_LEN + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&prefix(granularity, window_start));
    for part in parts {
        let n = u32::try_from(part.len()).map_err(|_| KeyError::TooLong(part.len()))?;
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    Ok(out)
}

/// Splits a key into its granularity, window start and exactly `N` dimensions.
pub(super) fn decode_parts<const N: usize>(
    bytes: &[u8],
) -> Result<(Granularity, i64, [&str; N]), KeyError> {
    if bytes.len() < PREFIX_LEN {
        return Err(KeyError::Short(bytes.len()));
    }
    let granularity = Granularity::from_code(bytes[0]).ok_or(KeyError::Granularity(bytes[0]))?;
    let mut start = [0u8; 8];
    start.copy_from_slice(&bytes[1..PREFIX_LEN]);
    let window_start = (u64::from_be_bytes(start) ^ (1 << 63)) as i64;
    let mut rest = &bytes[PREFIX_LEN..];
    let mut parts = [""; N];
    for (index, slot) in parts.iter_mut().enumerate() {
        let Some((len, after)) = rest.split_first_chunk::<4>() else {
            return Err(KeyError::Truncated { index });
        };
        let len = u32::from_be_bytes(*len) as usize;
        if after.len() < len {
            return Err(KeyError::Truncated { index });
        }
        let (part, after) = after.split_at(len);
        *slot = std::str::from_utf8(part).map_err(|_| KeyError::Utf8 { index })?;
        rest = after;
    }
    if !rest.is_empty() {
        return Err(KeyError::Trailing(rest.len()));
    }
    Ok((granularity, window_start, parts))
}

/// The stored key of a KPI row.
pub fn encode_row_key(key: &RowKey) -> Result<Vec<u8>, KeyError> {
    encode(
        key.granularity,
        key.window_start,
        &[&key.channel, &key.campaign, &key.device, &key.region],
    )
}

/// A KPI row key back from its bytes, borrowed (what scans use).
pub fn decode_row_view(bytes: &[u8]) -> Result<(Granularity, RowView<'_>), KeyError> {
    let (granularity, window_start, [channel, campaign, device, region]) =
        decode_parts::<4>(bytes)?;
    Ok((
        granularity,
        RowView {
            window_start,
            channel,
            campaign,
            device,
            region,
        },
    ))
}

/// A KPI row key back from its bytes.
pub fn decode_row_key(bytes: &[u8]) -> Result<RowKey, KeyError> {
    let (granularity, view) = decode_row_view(bytes)?;
    Ok(view.to_key(granularity))
}

/// The stored key of a spend row.
pub fn encode_spend_key(key: &SpendRowKey) -> Result<Vec<u8>, KeyError> {
    encode(
        key.granularity,
        key.window_start,
        &[&key.channel, &key.campaign],
    )
}

/// A spend row key back from its bytes.
pub fn decode_spend_key(bytes: &[u8]) -> Result<SpendRowKey, KeyError> {
    let (granularity, window_start, [channel, campaign]) = decode_parts::<2>(bytes)?;
    Ok(SpendRowKey {
        granularity,
        window_start,
        channel: channel.to_string(),
        campaign: campaign.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(window_start: i64, channel: &str, campaign: &str) -> RowKey {
        RowKey {
            granularity: Granularity::Hour,
            window_start,
            channel: channel.into(),
            campaign: campaign.into(),
            device: "mobile".into(),
            region: "IT-25".into(),
        }
    }

    /// Issue 8: a campaign holding U+001F split into too many parts, and every query
    /// over its window answered 500.
    #[test]
    fn row_keys_with_the_old_separator_inside_round_trip() {
        for key in [
            row(0, "social", "spring\u{1f}sale"),
            row(0, "social\u{1f}", "\u{1f}"),
            row(0, "", ""),
            row(-3_600_000, "\u{1f}\u{1f}", "café ☕ «été» \u{202e}"),
            row(i64::MIN, "a", "b"),
            row(i64::MAX, "a", "b"),
        ] {
            let bytes = encode_row_key(&key).unwrap();
            assert_eq!(decode_row_key(&bytes).unwrap(), key);
        }
        // Same characters, different boundaries: different keys.
        let a = encode_row_key(&row(0, "social\u{1f}x", "y")).unwrap();
        let b = encode_row_key(&row(0, "social", "x\u{1f}y")).unwrap();
        assert_ne!(a, b);
        let spend = SpendRowKey {
            granularity: Granularity::Day,
            window_start: 86_400_000,
            channel: "email\u{1f}".into(),
            campaign: "\u{1f}x".into(),
        };
        assert_eq!(
            decode_spend_key(&encode_spend_key(&spend).unwrap()).unwrap(),
            spend
        );
    }

    #[test]
    fn keys_sort_by_granularity_then_signed_window_start() {
        let starts = [i64::MIN, -86_400_000, -1, 0, 1, 3_600_000, i64::MAX];
        let mut keys: Vec<Vec<u8>> = starts
            .iter()
            .rev()
            .map(|&s| encode_row_key(&row(s, "zzz", "zzz")).unwrap())
            .collect();
        keys.sort();
        let decoded: Vec<i64> = keys
            .iter()
            .map(|k| decode_row_key(k).unwrap().window_start)
            .collect();
        assert_eq!(decoded, starts);
        // Every key of a window lies between its prefix and the next window's.
        let k = encode_row_key(&row(0, "\u{ff}\u{ff}", "x")).unwrap();
        assert!(k.as_slice() >= prefix(Granularity::Hour, 0).as_slice());
        assert!(k.as_slice() < prefix(Granularity::Hour, 1).as_slice());
    }

    #[test]
    fn bytes_that_are_not_a_key_are_errors() {
        let good = encode_row_key(&row(0, "social", "x")).unwrap();
        for cut in 0..good.len() {
            assert!(decode_row_key(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_row_key(&trailing), Err(KeyError::Trailing(1)));
        let mut bad_granularity = good.clone();
        bad_granularity[0] = 9;
        assert_eq!(
            decode_row_key(&bad_granularity),
            Err(KeyError::Granularity(9))
        );
        let mut huge_length = good.clone();
        huge_length[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_row_key(&huge_length),
            Err(KeyError::Truncated { index: 0 })
        );
        let mut not_utf8 = good;
        not_utf8[13] = 0xff;
        assert_eq!(decode_row_key(&not_utf8), Err(KeyError::Utf8 { index: 0 }));
        // A spend key is not a row key, nor the other way round.
        let spend = encode_spend_key(&SpendRowKey {
            granularity: Granularity::Hour,
            window_start: 0,
            channel: "a".into(),
            campaign: "b".into(),
        })
        .unwrap();
        assert!(decode_row_key(&spend).is_err());
    }

    /// What the fuzz target checks, over every one-byte change of a key: decoding gives an
    /// error or a key that encodes back to exactly the same bytes (one encoding per key).
    #[test]
    fn any_bytes_decode_to_an_error_or_a_canonical_key() {
        let good = encode_row_key(&row(-60_000, "é\u{1f}", "x")).unwrap();
        let mut decoded = 0;
        for at in 0..good.len() {
            for byte in 0..=u8::MAX {
                let mut bytes = good.clone();
                bytes[at] = byte;
                if let Ok(key) = decode_row_key(&bytes) {
                    assert_eq!(encode_row_key(&key).unwrap(), bytes);
                    decoded += 1;
                }
                if let Ok(key) = decode_spend_key(&bytes) {
                    assert_eq!(encode_spend_key(&key).unwrap(), bytes);
                }
            }
        }
        assert!(
            decoded > good.len(),
            "the check saw keys that decode: {decoded}"
        );
    }
}
