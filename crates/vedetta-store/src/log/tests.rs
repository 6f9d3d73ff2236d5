#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::sync::Arc;
use std::sync::mpsc;
use vedetta_core::record::{LogRecord, SpendRecord, encode_batch};
use vedetta_core::time::EventTime;

fn spend(n: i64) -> LogRecord {
    LogRecord::Spend(SpendRecord {
        ts: EventTime(n),
        channel: "paid_search".into(),
        campaign: None,
        amount: n as f64,
        currency: None,
        source: None,
    })
}

fn batch(from: i64, count: i64, appended_at_ms: i64) -> EncodedBatch {
    let records: Vec<_> = (from..from + count).map(spend).collect();
    EncodedBatch {
        bytes: encode_batch(&records, appended_at_ms, 0),
        count: count as u32,
    }
}

fn amounts(records: &[(u64, LogRecord)]) -> Vec<(u64, i64)> {
    records
        .iter()
        .map(|(offset, record)| match record {
            LogRecord::Spend(s) => (*offset, s.ts.0),
            LogRecord::Event(_) => panic!("unexpected event"),
        })
        .collect()
}

#[test]
fn offsets_count_records_and_reads_start_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = EventLog::open(&dir.path().join("log.redb"), 10).unwrap();
    let ranges = log
        .append_group(&[&batch(0, 3, 1), &batch(3, 0, 1), &batch(3, 2, 1)], &[])
        .unwrap();
    assert_eq!(ranges, vec![0..3, 3..3, 3..5]);
    let ranges = log.append_group(&[&batch(5, 4, 2)], &[]).unwrap();
    assert_eq!(ranges, vec![5..9]);
    assert_eq!(log.end_offset(), 9);
    for from in 0..=9u64 {
        let read = log.read(from, 100).unwrap();
        let expected: Vec<_> = (from..9).map(|o| (o, o as i64)).collect();
        assert_eq!(amounts(&read), expected, "from {from}");
    }
    assert_eq!(amounts(&log.read(4, 2).unwrap()), vec![(4, 4), (5, 5)]);
}

/// A reader's own list, reused between reads: emptied first, then filled as `read_timed`
/// fills a fresh one (from any offset, cut at the most records asked for, with each
/// batch's append time).
#[test]
fn reads_into_a_kept_list_give_what_fresh_reads_give() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = EventLog::open(&dir.path().join("log.redb"), 10).unwrap();
    log.append_group(&[&batch(0, 3, 1), &batch(3, 2, 7)], &[])
        .unwrap();
    log.append_group(&[&batch(5, 4, 9)], &[]).unwrap();
    let mut kept = vec![(99, 99, spend(99)); 50];
    for from in 0..=9u64 {
        for max in [1, 2, 3, 5, 100] {
            log.read_timed_into(from, max, &mut kept).unwrap();
            assert_eq!(
                kept,
                log.read_timed(from, max).unwrap(),
                "from {from}, max {max}"
            );
            let expected: Vec<_> = (from..9.min(from + max as u64))
                .map(|o| {
                    (
                        o,
                        match o {
                            0..=2 => 1,
                            3 | 4 => 7,
                            _ => 9,
                        },
                        spend(o as i64),
                    )
                })
                .collect();
            assert_eq!(kept, expected, "from {from}, max {max}");
        }
    }
}

#[test]
fn reopening_keeps_everything_and_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    {
        let (log, _) = EventLog::open(&path, 10).unwrap();
        log.append_group(&[&batch(0, 5, 1)], &[]).unwrap();
    }
    let (log, report) = EventLog::open(&path, 10).unwrap();
    assert_eq!(report.torn_batches_removed, 0);
    assert_eq!(log.end_offset(), 5);
    log.append_group(&[&batch(5, 1, 1)], &[]).unwrap();
    assert_eq!(amounts(&log.read(0, 100).unwrap()).len(), 6);
}

#[test]
fn a_corrupt_tail_is_removed_at_open_not_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    {
        let (log, _) = EventLog::open(&path, 10).unwrap();
        log.append_group(&[&batch(0, 2, 1)], &[]).unwrap();
        let mut torn = batch(2, 3, 1);
        let len = torn.bytes.len();
        torn.bytes.truncate(len - 7);
        log.append_group(&[&torn], &[]).unwrap();
        assert!(matches!(
            log.read(0, 100),
            Err(LogError::Corrupt { offset: 2, .. })
        ));
    }
    let (log, report) = EventLog::open(&path, 10).unwrap();
    assert_eq!(report.torn_batches_removed, 1);
    assert_eq!(log.end_offset(), 2);
    assert_eq!(amounts(&log.read(0, 100).unwrap()), vec![(0, 0), (1, 1)]);
}

#[test]
fn retention_deletes_old_processed_batches_only_and_offsets_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let (log, _) = EventLog::open(&path, 10).unwrap();
    log.append_group(
        &[&batch(0, 2, 100), &batch(2, 2, 200), &batch(4, 2, 300)],
        &[],
    )
    .unwrap();
    // Old enough but not yet consumed past offset 3: only the first batch may go.
    assert_eq!(log.apply_retention(250, 3).unwrap(), 2);
    assert_eq!(log.stats().start_offset, 2);
    assert!(matches!(
        log.read(0, 10),
        Err(LogError::Retained { start: 2, .. })
    ));
    assert_eq!(log.apply_retention(1_000, 6).unwrap(), 4);
    assert_eq!(log.stats().start_offset, 6);
    drop(log);
    let (log, _) = EventLog::open(&path, 10).unwrap();
    assert_eq!(log.end_offset(), 6, "offsets never go back after retention");
    assert_eq!(
        log.append_group(&[&batch(6, 1, 400)], &[]).unwrap(),
        vec![6..7]
    );
}

#[test]
fn quarantine_is_capped_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = EventLog::open(&dir.path().join("log.redb"), 3).unwrap();
    let entries: Vec<String> = (0..5).map(|i| format!("{{\"n\":{i}}}")).collect();
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    log.append_group(&[], &refs).unwrap();
    assert_eq!(log.quarantine_len().unwrap(), 3);
    assert_eq!(quarantined(&log), ["{\"n\":4}", "{\"n\":3}", "{\"n\":2}"]);
}

/// The quarantine's entries, newest first.
fn quarantined(log: &EventLog) -> Vec<String> {
    let entries = log.quarantine(100).unwrap();
    entries.into_iter().map(|e| e.json).collect()
}

#[test]
fn quarantine_trims_from_the_oldest_until_one_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = EventLog::open(&dir.path().join("log.redb"), 10).unwrap();
    let entries: Vec<String> = [1, 2, 5, 3, 6]
        .iter()
        .map(|t| format!("{{\"t\":{t}}}"))
        .collect();
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    log.append_group(&[], &refs).unwrap();
    let older_than_4 = |json: &str| json < "{\"t\":4}";
    assert_eq!(log.trim_quarantine(older_than_4).unwrap(), 2);
    // It stops at the first entry it keeps: arrival order is time order.
    assert_eq!(quarantined(&log), ["{\"t\":6}", "{\"t\":3}", "{\"t\":5}"]);
    assert_eq!(log.trim_quarantine(older_than_4).unwrap(), 0);
    assert_eq!(log.trim_quarantine(|_| true).unwrap(), 3);
    assert_eq!(log.quarantine_len().unwrap(), 0);
    // New entries still get new ids after a trim.
    log.append_group(&[], &["{\"t\":7}"]).unwrap();
    assert_eq!(log.quarantine(1).unwrap()[0].id, 5);
}

#[test]
fn concurrent_submissions_share_commits_and_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = EventLog::open(&dir.path().join("log.redb"), 10).unwrap();
    let log = Arc::new(log);
    let writer =
        Arc::new(GroupCommitWriter::spawn(log.clone(), WriterConfig::default(), |_| {}).unwrap());
    let (done_tx, done_rx) = mpsc::channel();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (writer, done_tx) = (writer.clone(), done_tx.clone());
            std::thread::spawn(move || {
                for i in 0..50 {
                    let tx = done_tx.clone();
                    writer
                        .submit(batch(t * 1000 + i * 10, 10, 1), vec![], move |r| {
                            tx.send(r).unwrap();
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(done_tx);
    let mut ranges: Vec<_> = done_rx.iter().map(|r| r.unwrap()).collect();
    assert_eq!(ranges.len(), 400);
    ranges.sort_by_key(|r| r.start);
    for (i, r) in ranges.iter().enumerate() {
        assert_eq!(*r, (i as u64 * 10)..(i as u64 * 10 + 10));
    }
    assert_eq!(log.end_offset(), 4000);
    let commits = writer
        .counters()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        commits < 400,
        "group commit shared fsyncs: {commits} commits for 400 requests"
    );
}

#[test]
fn over_the_bound_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = EventLog::open(&dir.path().join("log.redb"), 10).unwrap();
    let config = WriterConfig {
        max_pending_records: 15,
        max_group_records: 100,
    };
    // Hold the writer busy so submissions pile up: the first completion blocks until told.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let writer = GroupCommitWriter::spawn(Arc::new(log), config, |_| {}).unwrap();
    writer
        .submit(batch(0, 10, 1), vec![], move |_| {
            let _ = release_rx.recv();
        })
        .unwrap();
    // Whatever the writer's progress, 10 + 10 records cannot both be pending under 15...
    let mut refused = 0;
    for _ in 0..3 {
        if let Err(e) = writer.submit(batch(0, 10, 1), vec![], |_| {}) {
            assert!(matches!(e, AppendError::Backpressure { .. }));
            refused += 1;
        }
    }
    assert!(refused >= 1, "the bound refused nothing");
    release_tx.send(()).unwrap();
    writer.shutdown();
}
