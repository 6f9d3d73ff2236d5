//! The log batch format version, and error kinds (issue 8).

#![allow(clippy::unwrap_used)]

use super::*;
use vedetta_core::record::{BATCH_FORMAT, LogRecord, SpendRecord, encode_batch};
use vedetta_core::time::EventTime;

fn batch(ts: i64, format: u8) -> EncodedBatch {
    let records = [LogRecord::Spend(SpendRecord {
        ts: EventTime(ts),
        channel: "email".into(),
        campaign: None,
        amount: 1.0,
        currency: None,
        source: None,
    })];
    let mut bytes = encode_batch(&records, 1, 0);
    bytes[0] = format;
    EncodedBatch { bytes, count: 1 }
}

/// Before issue 8 the tail repair removed every batch that failed verification, a newer
/// build's batch (unknown format version) included: a downgrade would have deleted
/// acknowledged events as if they were a torn write.
#[test]
fn a_tail_batch_of_an_unknown_format_version_is_refused_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    {
        let (log, _) = EventLog::open(&path, 10).unwrap();
        log.append_group(&[&batch(1, BATCH_FORMAT), &batch(2, BATCH_FORMAT + 1)], &[])
            .unwrap();
        let error = log.read(0, 10).unwrap_err();
        assert!(
            matches!(error, LogError::Version { offset: 1, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("format version 2"), "{error}");
    }
    let error = EventLog::open(&path, 10).unwrap_err();
    assert!(
        matches!(error, LogError::Version { offset: 1, .. }),
        "{error}"
    );
    // Still there: refusing changed nothing.
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    assert_eq!(txn.open_table(BATCHES).unwrap().len().unwrap(), 2);
}

#[test]
fn engine_errors_keep_their_kind() {
    let full = LogError::from(redb::Error::Io(std::io::Error::from_raw_os_error(28)));
    assert!(full.is_storage_full() && full.is_retryable() && !full.needs_reopen());
    let eio = LogError::from(redb::Error::Io(std::io::Error::from_raw_os_error(5)));
    assert!(eio.is_retryable() && !eio.is_storage_full());
    let reopen = LogError::from(redb::Error::PreviousIo);
    assert!(reopen.needs_reopen() && !reopen.is_retryable());
    let corrupt = LogError::from(redb::Error::Corrupted("bad page".into()));
    assert!(!corrupt.is_retryable() && !corrupt.is_storage_full());
}
