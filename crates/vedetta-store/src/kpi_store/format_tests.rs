//! Versioned formats, the migration of format 0, sums past `i64`, settings records and
//! error kinds (issue 8).

#![allow(clippy::unwrap_used)]

use super::format::RowV1;
use super::*;
use std::path::PathBuf;
use vedetta_core::pipeline::PipelineConfig;
use vedetta_core::pipeline::snapshot::decode_snapshot;

/// A copy of the fixture written by the format before issue 8 (see
/// `tests/fixtures/make_kpis_v0.rs`), in a fresh directory.
fn fixture_copy() -> (tempfile::TempDir, PathBuf) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kpis-v0.redb");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kpis.redb");
    std::fs::copy(fixture, &path).unwrap();
    (dir, path)
}

/// The store's content in the form the fixture's generator printed it.
fn dump(store: &KpiStore) -> Vec<String> {
    let mut lines = Vec::new();
    for g in Granularity::ALL {
        for (k, c) in store.rows(g, 0, i64::MAX).unwrap() {
            lines.push(format!("row {k:?} {c:?}"));
        }
        for (k, m) in store.spend(g, 0, i64::MAX).unwrap() {
            // Format 0 knew no record counts: its rows read as one record (issue 9).
            assert_eq!(m.records, 1, "{k:?}");
            lines.push(format!("spend {k:?} {}", m.micros));
        }
    }
    lines.push(format!("{:?}", store.progress().unwrap().processed_offset));
    lines
}

#[test]
fn a_store_written_before_formats_had_versions_is_migrated_on_open() {
    let (_dir, path) = fixture_copy();
    let store = KpiStore::open(&path).unwrap();
    let progress = store.progress().unwrap();
    assert_eq!(
        store.migration(),
        Some(&MigrationReport {
            from_format: 0,
            to_format: STORE_FORMAT,
            rows: 13,
            spend_rows: 6,
            snapshot: true,
        })
    );
    let expected = include_str!("../../tests/fixtures/kpis-v0.expected.txt");
    assert_eq!(dump(&store), expected.lines().collect::<Vec<_>>());
    assert_eq!(progress.processed_offset, 10);
    assert_eq!(progress.watermark, Some(1_700_007_200_000 - 5_000));
    let (snapshot_offset, snapshot) = progress.snapshot.clone().unwrap();
    assert_eq!(snapshot_offset, 8);
    // Kept as written, headed as snapshot format 1: a state from before attribution, which
    // this build does not continue (the settings check asks for `vedetta replay` first).
    assert_eq!(&snapshot[..5], b"VDSN\x01");
    assert_eq!(
        decode_snapshot(&snapshot).unwrap_err(),
        vedetta_core::pipeline::snapshot::SnapshotError::Version { found: 1 }
    );
    drop(store);

    // Migrated once: the next open finds the current format and reads the same.
    let store = KpiStore::open(&path).unwrap();
    let again = store.progress().unwrap();
    assert_eq!(store.migration(), None);
    assert_eq!(again, progress);
    assert_eq!(dump(&store), expected.lines().collect::<Vec<_>>());
}

/// Issue 13 added `refunds` and `refunded_micros` to the row: version 2. A version-1 row
/// (every row written before) reads with both at zero and the rest as written; rewritten,
/// it is version 2; a version this build does not know is refused by name.
#[test]
fn a_version_1_row_reads_with_zero_refunds_and_is_rewritten_as_version_2() {
    let (_dir, path) = fixture_copy();
    let store = KpiStore::open(&path).unwrap();
    let db = store.db.read_guard().unwrap();
    let txn = db.begin_write().unwrap();
    let mut before = Vec::new();
    {
        let mut table = txn.open_table(KPIS).unwrap();
        let mut rewritten = Vec::new();
        for entry in table.iter().unwrap() {
            let (key, value) = entry.unwrap();
            assert_eq!(
                value.value()[0],
                ROW_FORMAT,
                "the migration writes the current row"
            );
            let today = decode_row_value(value.value()).unwrap();
            // The same counters as a build before issue 13 wrote them.
            let v1 = RowV1 {
                events: today.events,
                custom_events: today.custom_events.clone(),
                sessions: today.sessions,
                converting_sessions: today.converting_sessions,
                conversions: today.conversions,
                revenue_micros: today.revenue_micros,
                flagged: today.flagged,
                duplicates: today.duplicates,
                late: today.late,
            };
            let bytes = postcard::to_extend(&v1, vec![1u8]).unwrap();
            let read = decode_row_value(&bytes).unwrap();
            assert_eq!((read.refunds, read.refunded_micros), (0, 0));
            assert_eq!(read, today);
            before.push(today);
            rewritten.push((key.value().to_vec(), bytes));
        }
        assert_eq!(rewritten.len(), 13);
        for (key, value) in &rewritten {
            table.insert(key.as_slice(), value.as_slice()).unwrap();
        }
    }
    txn.commit().unwrap();
    drop(db);
    let mut read_back = Vec::new();
    for g in Granularity::ALL {
        read_back.extend(
            store
                .rows(g, 0, i64::MAX)
                .unwrap()
                .into_iter()
                .map(|(_, c)| c),
        );
    }
    assert_eq!(read_back.len(), before.len());
    assert!(
        read_back
            .iter()
            .all(|c| c.refunds == 0 && c.refunded_micros == 0)
    );

    // A refund's change rewrites its row as version 2, with the refund in it.
    let row = KpiCounters {
        refunds: 1,
        refunded_micros: 5_000_000,
        revenue_micros: -5_000_000,
        ..KpiCounters::default()
    };
    let bytes = encode_row_value(&row).unwrap();
    assert_eq!(bytes[0], 2);
    assert_eq!(decode_row_value(&bytes).unwrap(), row);
    // A later version is refused by name, never misread.
    let mut later = bytes;
    later[0] = 3;
    let error = decode_row_value(&later).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Version {
                found: 3,
                supported: 2,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("format version 3"), "{error}");
}

fn commit_of(rows: Vec<(RowKey, KpiCounters)>, spend: Vec<(SpendRowKey, SpendCounters)>) -> Commit {
    Commit {
        rows,
        spend,
        processed_offset: 1,
        durable: true,
        ..Commit::default()
    }
}

fn hour_key(campaign: &str) -> RowKey {
    RowKey {
        granularity: Granularity::Hour,
        window_start: 3_600_000,
        channel: "social".into(),
        campaign: campaign.into(),
        device: "mobile".into(),
        region: "IT-25".into(),
    }
}

/// Issue 8: money sums wrapped in `i64`.
#[test]
fn row_and_spend_sums_past_i64_max_micro_units_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = KpiStore::open(&dir.path().join("kpis.redb")).unwrap();
    let purchase = |micros: i64| KpiCounters {
        conversions: 1,
        revenue_micros: i128::from(micros),
        ..KpiCounters::default()
    };
    let spend_key = SpendRowKey {
        granularity: Granularity::Hour,
        window_start: 3_600_000,
        channel: "social".into(),
        campaign: "x".into(),
    };
    for _ in 0..3 {
        store
            .commit(&commit_of(
                vec![(hour_key("x"), purchase(i64::MAX))],
                vec![(spend_key.clone(), SpendCounters::record(i64::MAX))],
            ))
            .unwrap();
    }
    let expected = 3 * i128::from(i64::MAX);
    let rows = store.rows(Granularity::Hour, 0, i64::MAX).unwrap();
    assert_eq!(rows[0].1.revenue_micros, expected);
    assert_eq!(rows[0].1.conversions, 3);
    assert_eq!(
        store.spend(Granularity::Hour, 0, i64::MAX).unwrap(),
        vec![(
            spend_key,
            SpendCounters {
                micros: expected,
                records: 3
            }
        )]
    );
}

/// Issue 8: a campaign holding U+001F made every query over its window fail.
#[test]
fn a_campaign_with_the_old_separator_inside_is_stored_and_queried_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = KpiStore::open(&dir.path().join("kpis.redb")).unwrap();
    let one = KpiCounters {
        sessions: 1,
        ..KpiCounters::default()
    };
    let keys = [hour_key("a\u{1f}b"), hour_key("\u{1f}"), hour_key("plain")];
    store
        .commit(&commit_of(
            keys.iter().map(|k| (k.clone(), one.clone())).collect(),
            vec![],
        ))
        .unwrap();
    let mut found: Vec<RowKey> = store
        .rows(Granularity::Hour, 0, 7_200_000)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    found.sort();
    let mut expected = keys.to_vec();
    expected.sort();
    assert_eq!(found, expected);
}

#[test]
fn negative_window_starts_are_found_by_range_scans() {
    let dir = tempfile::tempdir().unwrap();
    let store = KpiStore::open(&dir.path().join("kpis.redb")).unwrap();
    let one = KpiCounters {
        sessions: 1,
        ..KpiCounters::default()
    };
    let at = |window_start| RowKey {
        window_start,
        ..hour_key("x")
    };
    store
        .commit(&commit_of(
            vec![(at(-3_600_000), one.clone()), (at(0), one)],
            vec![],
        ))
        .unwrap();
    let starts = |from, to| -> Vec<i64> {
        store
            .rows(Granularity::Hour, from, to)
            .unwrap()
            .iter()
            .map(|(k, _)| k.window_start)
            .collect()
    };
    assert_eq!(starts(i64::MIN, i64::MAX), vec![-3_600_000, 0]);
    assert_eq!(starts(-3_600_000, 0), vec![-3_600_000]);
    assert_eq!(
        starts(0, -1),
        Vec::<i64>::new(),
        "an empty range, not a panic"
    );
}

/// Format 0's tables, written byte for byte as that format did.
fn write_v0_store(path: &Path, row_key: &[u8]) {
    const META_V0: redb::TableDefinition<'_, &str, i64> = redb::TableDefinition::new("meta");
    const SPEND_V0: redb::TableDefinition<'_, &[u8], i64> = redb::TableDefinition::new("spend");
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let row = format::RowV0 {
            events: [1, 0, 0, 0, 0, 0],
            custom_events: vec![],
            sessions: 1,
            converting_sessions: 0,
            conversions: 0,
            revenue_micros: 0,
            flagged: 0,
            duplicates: 0,
            late: 0,
        };
        let value = postcard::to_allocvec(&row).unwrap();
        txn.open_table(KPIS)
            .unwrap()
            .insert(row_key, value.as_slice())
            .unwrap();
        txn.open_table(SPEND_V0).unwrap();
        txn.open_table(SNAPSHOT).unwrap();
        txn.open_table(META_V0)
            .unwrap()
            .insert(PROCESSED_OFFSET, 3)
            .unwrap();
    }
    txn.commit().unwrap();
}

fn v0_key(parts: &[&str]) -> Vec<u8> {
    let mut key = vec![Granularity::Hour.code()];
    key.extend_from_slice(&3_600_000u64.to_be_bytes());
    key.extend_from_slice(parts.join("\u{1f}").as_bytes());
    key
}

#[test]
fn a_format_0_key_split_by_a_client_separator_is_refused_with_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kpis.redb");
    write_v0_store(&path, &v0_key(&["social", "a\u{1f}b", "mobile", "IT-25"]));
    let error = KpiStore::open(&path).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("5 parts") && message.contains("vedetta replay"),
        "{message}"
    );
    // The failed migration changed nothing (one transaction), and the store that replay
    // opens is empty and current.
    let store = KpiStore::open_empty(&path).unwrap();
    assert_eq!(store.progress().unwrap(), Progress::default());
    drop(store);
    let store = KpiStore::open(&path).unwrap();
    assert_eq!(store.migration(), None);
}

#[test]
fn a_well_formed_format_0_store_migrates_even_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kpis.redb");
    write_v0_store(&path, &v0_key(&["social", "x", "mobile", "IT-25"]));
    let store = KpiStore::open(&path).unwrap();
    let progress = store.progress().unwrap();
    assert_eq!(progress.processed_offset, 3);
    assert_eq!(
        store.migration().map(|m| (m.rows, m.snapshot)),
        Some((1, false))
    );
    assert_eq!(
        store.rows(Granularity::Hour, 0, i64::MAX).unwrap()[0].0,
        hour_key("x")
    );
}

#[test]
fn a_store_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kpis.redb");
    let store = KpiStore::open(&path).unwrap();
    let db = store.db.read_guard().unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert(FORMAT_VERSION, STORE_FORMAT + 1)
        .unwrap();
    txn.commit().unwrap();
    drop(db);
    drop(store);
    let error = KpiStore::open(&path).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Version {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn settings_are_recorded_then_compared_and_cleared_by_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = KpiStore::open(&dir.path().join("kpis.redb")).unwrap();
    let defaults = PipelineConfig::default().state_settings();
    assert_eq!(
        store.check_settings(&defaults, &defaults).unwrap(),
        SettingsCheck::Recorded
    );
    assert_eq!(
        store.check_settings(&defaults, &defaults).unwrap(),
        SettingsCheck::Same
    );
    let (fingerprint, recorded) = store.settings().unwrap().unwrap();
    assert_eq!(
        (fingerprint, recorded.clone()),
        (defaults.fingerprint(), defaults.clone())
    );
    assert!(recorded.describe().contains("max_campaigns = 10000\n"));

    let lower = PipelineConfig {
        max_campaigns: 50,
        ..PipelineConfig::default()
    }
    .state_settings();
    let error = store.check_settings(&lower, &defaults).unwrap_err();
    assert!(
        error.to_string().contains("max_campaigns: 10000 → 50"),
        "{error}"
    );
    assert!(error.to_string().contains("vedetta replay"), "{error}");
    assert!(!error.is_retryable());

    store.clear().unwrap();
    assert_eq!(store.settings().unwrap(), None);
    assert_eq!(
        store.check_settings(&lower, &defaults).unwrap(),
        SettingsCheck::Recorded
    );
}

#[test]
fn store_errors_keep_the_engine_kind() {
    let full = StoreError::from(redb::Error::Io(std::io::Error::from(
        std::io::ErrorKind::StorageFull,
    )));
    assert!(full.is_storage_full() && full.is_retryable());
    let enospc = StoreError::from(redb::Error::Io(std::io::Error::from_raw_os_error(28)));
    assert!(enospc.is_storage_full());
    let reopen = StoreError::from(redb::Error::PreviousIo);
    assert!(reopen.needs_reopen() && !reopen.is_retryable() && !reopen.is_storage_full());
    let corrupt = StoreError::from(redb::Error::Corrupted("page".into()));
    assert!(matches!(corrupt, StoreError::Corrupt(_)) && !corrupt.is_retryable());
}

/// Issue 9: a store built under the old `first_touch` (a lapsing first-click anchor) recorded
/// no `first_touch_rule`; continuing it under the literal rule would mix two contracts, so
/// the check refuses, naming the rule and the replay.
#[test]
fn a_store_of_the_old_first_touch_asks_for_a_replay() {
    use vedetta_core::pipeline::AttributionModel;
    let dir = tempfile::tempdir().unwrap();
    let store = KpiStore::open(&dir.path().join("kpis.redb")).unwrap();
    let first_touch = PipelineConfig {
        attribution: AttributionModel::FirstTouch,
        ..PipelineConfig::default()
    }
    .state_settings();
    let old_text: String = first_touch
        .describe()
        .lines()
        .filter(|line| !line.starts_with("first_touch_rule = "))
        .map(|line| format!("{line}\n"))
        .collect();
    let old = vedetta_core::pipeline::settings::StateSettings::parse(&old_text);
    assert_ne!(old.fingerprint(), first_touch.fingerprint());
    let defaults = PipelineConfig::settings_of_older_records();
    assert_eq!(
        store.check_settings(&old, &defaults).unwrap(),
        SettingsCheck::Recorded
    );
    let error = store.check_settings(&first_touch, &defaults).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("first_touch_rule: \"lapsing_anchor\" → \"earliest_in_lookback\""),
        "{error}"
    );
    assert!(error.to_string().contains("vedetta replay"), "{error}");
}
