//! The records kept in the log, and their compact binary batch format.
//!
//! Intake parses JSON once; from then on an event lives as a [`StoredEvent`], already
//! validated and pseudonymized. The log stores records in *batches* (one per accepted
//! request): a small header, then the records encoded with `postcard`, protected by a
//! CRC-32 so that a torn or corrupted batch is detected instead of decoded into nonsense.
//!
//! Batch layout (all integers little-endian):
//!
//! ```text
//! [format u8 = 1][crc32 u32 over everything after it][record count u32]
//! [appended_at_ms i64][pseudonym key id u8][records: postcard, one after another]
//! ```
//!
//! Offsets count records, not batches: a batch stored at offset `n` with `k` records holds
//! offsets `n .. n + k`.

use crate::time::EventTime;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The funnel step of an event (`type` in EVENTS.md).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    PageView,
    AddToCart,
    Registration,
    Checkout,
    Purchase,
    Lead,
    /// Any other non-empty string, kept as sent.
    Custom(Box<str>),
    /// Money given back on an order (`refund`, Italian `rimborso`): not a funnel step. It
    /// lowers the revenue of its order's rows (docs/semantics.md, "Refunds"). Last, so that
    /// the log's encoding of every earlier variant is unchanged (postcard writes the index).
    Refund,
}

impl EventKind {
    /// Maps a wire type name (English or Italian alias, any case) to a kind.
    pub fn from_wire(name: &str) -> EventKind {
        const BUILT_IN: &[(&str, EventKind)] = &[
            ("page_view", EventKind::PageView),
            ("add_to_cart", EventKind::AddToCart),
            ("registration", EventKind::Registration),
            ("checkout", EventKind::Checkout),
            ("purchase", EventKind::Purchase),
            ("lead", EventKind::Lead),
            ("visualizzazione", EventKind::PageView),
            ("carrello", EventKind::AddToCart),
            ("registrazione", EventKind::Registration),
            ("acquisto", EventKind::Purchase),
            ("refund", EventKind::Refund),
            ("rimborso", EventKind::Refund),
        ];
        BUILT_IN
            .iter()
            .find(|(wire, _)| wire.eq_ignore_ascii_case(name))
            .map(|(_, kind)| kind.clone())
            .unwrap_or_else(|| EventKind::Custom(name.into()))
    }

    /// The canonical English name.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::PageView => "page_view",
            EventKind::AddToCart => "add_to_cart",
            EventKind::Registration => "registration",
            EventKind::Checkout => "checkout",
            EventKind::Purchase => "purchase",
            EventKind::Lead => "lead",
            EventKind::Custom(name) => name,
            EventKind::Refund => "refund",
        }
    }
}

/// A user's keyed pseudonym: the first 128 bits of HMAC-SHA-256(key, udid).
///
/// 128 bits keep collisions negligible (birthday bound ≈ 2^64 users) at half the memory of
/// the full MAC, which matters for per-user pipeline state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserPseudonym(pub [u8; 16]);

// As two words (`write_u64`), not as a 16-byte slice: the pipeline looks its users up a few
// times per event, and whether the hasher's byte path is inlined into those lookups changes
// with unrelated code (docs/benchmarks.md, "Attribution (issue 9)": it cost 2 % once).
impl std::hash::Hash for UserPseudonym {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let [a, b] = [&self.0[..8], &self.0[8..]].map(|half| {
            let mut word = [0; 8];
            word.copy_from_slice(half);
            u64::from_le_bytes(word)
        });
        state.write_u64(a);
        state.write_u64(b);
    }
}

impl UserPseudonym {
    /// Lower-case hex, as shown in exports and APIs.
    pub fn to_hex(self) -> String {
        // By table, not `write!` per byte (a formatter call per byte cost ~4,000
        // instructions a pseudonym; the trigger engine renders one per output).
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(32);
        for byte in self.0 {
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        out
    }
}

/// What the data subject agreed to. `None` means the event did not say.
///
/// EVENTS.md: without marketing consent an event is counted in aggregates but never
/// forwarded to CRM or e-mail tools, so an unknown consent counts as "no" there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub analytics: Option<bool>,
    pub marketing: Option<bool>,
}

/// A validated, pseudonymized funnel event as the log keeps it.
///
/// `udid` is gone (replaced by `user`), `ip` is truncated to /24 or /48. Strings are kept
/// as sent after trimming; normalization for grouping (channel names, regions) happens in
/// the pipeline's enrichment, so that a changed rule can be replayed over the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub user: UserPseudonym,
    pub kind: EventKind,
    pub ts: EventTime,
    pub event_id: Option<String>,
    pub value: Option<f64>,
    /// ISO 4217 code, upper case. `None` means the reporting currency.
    pub currency: Option<String>,
    pub order_id: Option<String>,
    pub channel: Option<String>,
    pub campaign: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_content: Option<String>,
    pub utm_term: Option<String>,
    pub gclid: Option<String>,
    pub fbclid: Option<String>,
    pub user_agent: Option<String>,
    pub device: Option<String>,
    /// The client address truncated to its /24 (IPv4) or /48 (IPv6) network.
    pub ip_network: Option<IpAddr>,
    pub region: Option<String>,
    pub page: Option<String>,
    pub referrer: Option<String>,
    pub product_id: Option<String>,
    pub consent: Consent,
    /// The `properties` object, as the JSON text that was sent (validated, size-limited).
    pub properties: Option<String>,
}

impl StoredEvent {
    /// An event with its identity and nothing else: every optional field empty, consent
    /// unknown. What tests, benches and generators start from (`..StoredEvent::bare(…)`).
    pub fn bare(user: UserPseudonym, kind: EventKind, ts: EventTime) -> Self {
        StoredEvent {
            user,
            kind,
            ts,
            event_id: None,
            value: None,
            currency: None,
            order_id: None,
            channel: None,
            campaign: None,
            utm_source: None,
            utm_medium: None,
            utm_campaign: None,
            utm_content: None,
            utm_term: None,
            gclid: None,
            fbclid: None,
            user_agent: None,
            device: None,
            ip_network: None,
            region: None,
            page: None,
            referrer: None,
            product_id: None,
            consent: Consent::default(),
            properties: None,
        }
    }
}

/// An ad spend record: money spent on a channel and campaign in the minute containing `ts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpendRecord {
    pub ts: EventTime,
    pub channel: String,
    pub campaign: Option<String>,
    pub amount: f64,
    pub currency: Option<String>,
    pub source: Option<String>,
}

/// One entry of the log.
// Events outnumber spend records by orders of magnitude: boxing the event would add an
// allocation to nearly every record for the sake of the rare small one.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    Event(StoredEvent),
    Spend(SpendRecord),
}

/// Errors reading a batch back. Each means the bytes are not what the writer wrote.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch of {0} bytes is shorter than its header")]
    Truncated(usize),
    /// A batch of a format version this build does not read (written by a newer build):
    /// not damage, so never repaired away; the log refuses to open rather than drop it.
    #[error("log batch format version {0} is unknown (this build reads version 1)")]
    UnknownFormat(u8),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("record {index} of the batch does not decode: {reason}")]
    Record { index: u32, reason: String },
    #[error("batch header says {expected} records but {found} decode")]
    Count { expected: u32, found: u32 },
}

/// The log batch format this build writes and reads.
pub const BATCH_FORMAT: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + 4 + 8 + 1;

/// The facts a batch header carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub count: u32,
    /// When the log accepted the batch (wall clock, epoch ms): the start of end-to-end
    /// latency and the reference for retention.
    pub appended_at_ms: i64,
    /// Which pseudonym key made the batch's user pseudonyms (for rotation and erasure).
    pub key_id: u8,
}

/// Encodes records as one checksummed batch.
pub fn encode_batch(records: &[LogRecord], appended_at_ms: i64, key_id: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + records.len() * 160);
    out.push(BATCH_FORMAT);
    out.extend_from_slice(&[0; 4]); // crc, filled in below
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&appended_at_ms.to_le_bytes());
    out.push(key_id);
    for record in records {
        // Encoding into a Vec cannot fail: the types have no maps with non-string keys or
        // unsized sequences postcard refuses.
        out = postcard::to_extend(record, out).expect("postcard encodes into a Vec");
    }
    let crc = crc32fast::hash(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads and checks a batch header without decoding its records.
pub fn decode_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < HEADER_LEN {
        return Err(BatchError::Truncated(bytes.len()));
    }
    if bytes[0] != BATCH_FORMAT {
        return Err(BatchError::UnknownFormat(bytes[0]));
    }
    let le4 = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&bytes[9..17]);
    Ok(BatchHeader {
        count: u32::from_le_bytes(le4(5)),
        appended_at_ms: i64::from_le_bytes(eight),
        key_id: bytes[17],
    })
}

/// Verifies the checksum of a batch.
pub fn verify_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = decode_header(bytes)?;
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let computed = crc32fast::hash(&bytes[5..]);
    if stored != computed {
        return Err(BatchError::Checksum { stored, computed });
    }
    Ok(header)
}

/// Verifies and decodes a whole batch.
pub fn decode_batch(bytes: &[u8]) -> Result<(BatchHeader, Vec<LogRecord>), BatchError> {
    let mut records = Vec::new();
    let header = decode_batch_each(bytes, |header, _, record| {
        if records.is_empty() {
            // The count comes from the bytes: reserve no more records than bytes left (each
            // takes at least one), so a crafted header cannot ask for gigabytes.
            records.reserve((header.count as usize).min(bytes.len() - HEADER_LEN));
        }
        records.push(record);
    })?;
    Ok((header, records))
}

/// Verifies a batch and decodes its records one by one, handing each to `each` with the
/// header and its index in the batch, so a reader puts them where it keeps them: a list of
/// the batch's own was a large allocation per batch (a thousand records of half a
/// kilobyte), and a large allocation is where glibc's allocator sorts and merges every
/// small block freed since (`malloc_consolidate`: with millions of users' blocks freed a
/// minute, a large part of the processor's time). On an error, the records handed out
/// before it are the batch's first ones; the batch as a whole is refused.
pub fn decode_batch_each(
    bytes: &[u8],
    mut each: impl FnMut(&BatchHeader, u32, LogRecord),
) -> Result<BatchHeader, BatchError> {
    let header = verify_batch(bytes)?;
    let mut rest = &bytes[HEADER_LEN..];
    let mut index = 0u32;
    while !rest.is_empty() {
        let (record, tail) =
            postcard::take_from_bytes::<LogRecord>(rest).map_err(|e| BatchError::Record {
                index,
                reason: e.to_string(),
            })?;
        // Records past the header's count are decoded (to name the error) but not handed out.
        if index < header.count {
            each(&header, index, record);
        }
        index = index.saturating_add(1);
        rest = tail;
    }
    if index != header.count {
        return Err(BatchError::Count {
            expected: header.count,
            found: index,
        });
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_event(n: u8) -> StoredEvent {
        StoredEvent {
            event_id: Some(format!("e-{n}")),
            value: Some(19.9),
            currency: Some("EUR".into()),
            channel: Some("social".into()),
            user_agent: Some("Mozilla/5.0".into()),
            ip_network: Some("93.44.12.0".parse().expect("valid ip")),
            page: Some("/carrello".into()),
            consent: Consent {
                analytics: Some(true),
                marketing: None,
            },
            properties: Some(r#"{"a":1}"#.into()),
            ..StoredEvent::bare(
                UserPseudonym([n; 16]),
                EventKind::Purchase,
                EventTime(1_700_000_000_000 + i64::from(n)),
            )
        }
    }

    #[test]
    fn batch_round_trips() {
        let records = vec![
            LogRecord::Event(sample_event(1)),
            LogRecord::Spend(SpendRecord {
                ts: EventTime(5),
                channel: "paid_search".into(),
                campaign: Some("saldi".into()),
                amount: 1.25,
                currency: None,
                source: Some("google_ads".into()),
            }),
            LogRecord::Event(sample_event(2)),
        ];
        let bytes = encode_batch(&records, 42, 3);
        let (header, decoded) = decode_batch(&bytes).expect("decodes");
        assert_eq!(
            header,
            BatchHeader {
                count: 3,
                appended_at_ms: 42,
                key_id: 3
            }
        );
        assert_eq!(decoded, records);
    }

    /// Records are handed out in order with their index; a batch whose (checksummed) count
    /// is not what it holds is refused, and nothing past its count is handed out.
    #[test]
    fn records_are_handed_out_one_by_one_and_a_wrong_count_is_refused() {
        let records: Vec<LogRecord> = (1..=3).map(|n| LogRecord::Event(sample_event(n))).collect();
        let bytes = encode_batch(&records, 42, 3);
        let mut seen = Vec::new();
        let header = decode_batch_each(&bytes, |header, index, record| {
            assert_eq!(header.appended_at_ms, 42);
            seen.push((index, record));
        })
        .expect("decodes");
        assert_eq!(header.count, 3);
        assert_eq!(
            seen,
            records
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, r)| (i as u32, r))
                .collect::<Vec<_>>()
        );
        let with_count = |count: u32| {
            let mut crafted = bytes.clone();
            crafted[5..9].copy_from_slice(&count.to_le_bytes());
            let crc = crc32fast::hash(&crafted[5..]);
            crafted[1..5].copy_from_slice(&crc.to_le_bytes());
            crafted
        };
        for (count, found) in [(2, 3), (4, 3), (0, 3)] {
            let mut handed = 0;
            let error = decode_batch_each(&with_count(count), |_, index, _| {
                assert!(index < count, "record {index} past the count {count}");
                handed += 1;
            })
            .expect_err("a wrong count is refused");
            assert_eq!(
                error,
                BatchError::Count {
                    expected: count,
                    found
                }
            );
            assert_eq!(handed, count.min(3));
            assert_eq!(
                decode_batch(&with_count(count)).expect_err("refused"),
                error
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode_batch(&[LogRecord::Event(sample_event(7))], 1, 0);
        for position in 0..bytes.len() {
            let mut corrupted = bytes.clone();
            corrupted[position] ^= 0x10;
            assert!(
                decode_batch(&corrupted).is_err(),
                "flip at byte {position} went unnoticed"
            );
        }
    }

    #[test]
    fn truncation_is_detected() {
        let bytes = encode_batch(&[LogRecord::Event(sample_event(7))], 1, 0);
        for len in 0..bytes.len() {
            assert!(decode_batch(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn kinds_accept_italian_aliases_in_any_case() {
        assert_eq!(EventKind::from_wire("acquisto"), EventKind::Purchase);
        assert_eq!(
            EventKind::from_wire("Registrazione"),
            EventKind::Registration
        );
        assert_eq!(EventKind::from_wire("PAGE_VIEW"), EventKind::PageView);
        assert_eq!(
            EventKind::from_wire("newsletter_signup"),
            EventKind::Custom("newsletter_signup".into())
        );
    }

    #[test]
    fn a_pseudonym_s_hex_is_two_lower_case_digits_per_byte() {
        for start in (0..=255u8).step_by(16) {
            let mut bytes = [0u8; 16];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = start.wrapping_add(i as u8);
            }
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(UserPseudonym(bytes).to_hex(), expected);
        }
        assert_eq!(
            UserPseudonym([0xab; 16]).to_hex(),
            "abababababababababababababababab"
        );
    }
}
