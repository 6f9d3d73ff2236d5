//! Target `log_batch`: the log batch decoder (`vedetta_core::record::decode_batch` and
//! `verify_batch`) fed arbitrary bytes.
//!
//! Random bytes almost never carry a valid CRC-32, so the fuzzer would only ever exercise
//! the checksum. Each input is therefore tried twice: as it is, and with its checksum
//! fixed up (when it is long enough to have a header), which lets the record decoder see
//! arbitrary bodies. Checked:
//! - `verify_batch` and `decode_batch` agree: a batch that decodes verifies with the same
//!   header, a batch that does not verify does not decode, for the same reason;
//! - a decoded batch holds exactly the records its header counts;
//! - the decoded records encode into a batch that decodes to the same records and encodes
//!   to the same bytes again (the log can rewrite what it read, as retention and repair
//!   do, without changing it).
//!
//! Not checked: that the input bytes are the one encoding of their records. postcard reads
//! an over-long varint (`0x80 0x00` for 0) as the number it spells (the first run of this
//! target found it), so two byte strings can hold one batch. That is harmless here: the
//! CRC guards the bytes, offsets count decoded records, and nothing compares batches by
//! their bytes; refusing such bytes would cost a re-encode of every batch the pipeline
//! reads.

use vedetta_core::record::{BatchError, decode_batch, encode_batch, verify_batch};

/// Format version, CRC-32, record count, append time, key id.
const HEADER_LEN: usize = 1 + 4 + 4 + 8 + 1;

pub fn fuzz_log_batch(data: &[u8]) {
    check(data);
    if data.len() >= HEADER_LEN {
        let mut fixed = data.to_vec();
        let crc = crc32(&fixed[5..]);
        fixed[1..5].copy_from_slice(&crc.to_le_bytes());
        check(&fixed);
    }
}

fn check(bytes: &[u8]) {
    let verified = verify_batch(bytes);
    match decode_batch(bytes) {
        Ok((header, records)) => {
            assert_eq!(verified, Ok(header), "decoded, but does not verify");
            assert_eq!(header.count as usize, records.len(), "count disagrees");
            let again = encode_batch(&records, header.appended_at_ms, header.key_id);
            match decode_batch(&again) {
                Ok((header_again, records_again)) => {
                    assert_eq!(header_again, header, "the header changed on re-encoding");
                    let twice = encode_batch(
                        &records_again,
                        header_again.appended_at_ms,
                        header_again.key_id,
                    );
                    assert_eq!(twice, again, "re-encoding is not stable");
                }
                Err(e) => panic!("a re-encoded batch does not decode: {e}"),
            }
        }
        Err(error) => match verified {
            Err(reason) => assert_eq!(reason, error, "verify and decode disagree"),
            Ok(_) => assert!(
                matches!(error, BatchError::Record { .. } | BatchError::Count { .. }),
                "verified, then refused for a header reason: {error}"
            ),
        },
    }
}

/// CRC-32 (IEEE), as the batch format computes it, written out here so the target does
/// not share the code it checks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
