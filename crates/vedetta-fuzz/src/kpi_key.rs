//! Target `kpi_key`: the KPI store's key and value codecs (`vedetta_store::kpi_store`), as
//! round trips.
//!
//! Checked, on the input as stored bytes:
//! - a row key or spend key that decodes encodes back to exactly the same bytes (one
//!   encoding per key: no two byte strings name one row);
//! - a spend value of the current version that decodes encodes back to the same bytes; one
//!   of an older version (read as one record) re-encodes to current bytes that decode to
//!   the same value; a row value that decodes re-encodes to bytes that decode to the same
//!   counters.
//!
//! And on keys built from the input (its bytes cut into dimension values of any content,
//! the old separator U+001F and other control characters included):
//! - encode then decode gives the key back, row and spend alike;
//! - byte order of encoded keys follows (granularity, window start), negative starts
//!   included: a time range stays one range scan.

use vedetta_core::pipeline::windows::Granularity;
use vedetta_store::kpi_store::{
    SPEND_FORMAT, decode_row_key, decode_row_value, decode_spend_key, decode_spend_value,
    encode_row_key, encode_row_value, encode_spend_key, encode_spend_value,
};
use vedetta_store::{RowKey, SpendRowKey};

pub fn fuzz_kpi_key(data: &[u8]) {
    // The input as stored bytes.
    if let Ok(key) = decode_row_key(data) {
        assert_eq!(
            encode_row_key(&key).as_deref(),
            Ok(data),
            "row key not canonical"
        );
    }
    if let Ok(key) = decode_spend_key(data) {
        assert_eq!(
            encode_spend_key(&key).as_deref(),
            Ok(data),
            "spend key not canonical"
        );
    }
    if let Ok(spend) = decode_spend_value(data) {
        let again = encode_spend_value(spend);
        if data.first() == Some(&SPEND_FORMAT) {
            assert_eq!(&again[..], data, "spend value not canonical");
        }
        match decode_spend_value(&again) {
            Ok(back) => assert_eq!(back, spend, "spend value changed"),
            Err(e) => panic!("re-encoded spend does not decode: {e}"),
        }
    }
    if let Ok(counters) = decode_row_value(data) {
        let again = encode_row_value(&counters)
            .unwrap_or_else(|e| panic!("decoded counters do not encode: {e}"));
        match decode_row_value(&again) {
            Ok(back) => assert_eq!(back, counters, "row value changed"),
            Err(e) => panic!("re-encoded counters do not decode: {e}"),
        }
    }

    // Keys built from the input.
    let (first, rest) = crate::selector(data);
    let half = rest.len() / 2;
    let a = key_from(first, &rest[..half]);
    let b = key_from(first.rotate_left(3), &rest[half..]);
    let (ea, eb) = match (encode_row_key(&a), encode_row_key(&b)) {
        (Ok(ea), Ok(eb)) => (ea, eb),
        (a, b) => panic!("short keys do not encode: {a:?} {b:?}"),
    };
    assert_eq!(decode_row_key(&ea).as_ref(), Ok(&a), "row key round trip");
    assert_eq!(decode_row_key(&eb).as_ref(), Ok(&b), "row key round trip");
    let order = (a.granularity, a.window_start).cmp(&(b.granularity, b.window_start));
    if order.is_ne() {
        assert_eq!(
            ea.cmp(&eb),
            order,
            "key bytes sort against (granularity, start)"
        );
    }
    assert_eq!(
        ea == eb,
        a == b,
        "two keys, one encoding (or the other way round)"
    );
    let spend = SpendRowKey {
        granularity: a.granularity,
        window_start: a.window_start,
        channel: a.channel,
        campaign: a.campaign,
    };
    let encoded = encode_spend_key(&spend)
        .unwrap_or_else(|e| panic!("a short spend key does not encode: {e}"));
    assert_eq!(
        decode_spend_key(&encoded),
        Ok(spend),
        "spend key round trip"
    );
}

/// A row key from bytes: a window start from the first 8 (any `i64`), then four values cut
/// from the rest at the bytes that are 0xFF (so a value can hold anything else, U+001F
/// included), each read as lossy UTF-8.
fn key_from(selector: u8, bytes: &[u8]) -> RowKey {
    let mut start = [0u8; 8];
    let cut = bytes.len().min(8);
    start[..cut].copy_from_slice(&bytes[..cut]);
    let mut parts = bytes[cut..]
        .split(|&b| b == 0xFF)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let mut next = || parts.next().unwrap_or_default();
    RowKey {
        granularity: Granularity::ALL[usize::from(selector % 3)],
        window_start: i64::from_le_bytes(start),
        channel: next(),
        campaign: next(),
        device: next(),
        region: next(),
    }
}
