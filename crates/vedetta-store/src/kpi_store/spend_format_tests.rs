//! Spend values with a record count (issue 9, "unknown spend is not zero spend"): the
//! version-2 format, version-1 values read as one record, and rows deleted only when both
//! their money and their records are zero.

#![allow(clippy::unwrap_used)]

use super::*;

fn spend_key(campaign: &str) -> SpendRowKey {
    SpendRowKey {
        granularity: Granularity::Hour,
        window_start: 3_600_000,
        channel: "paid_search".into(),
        campaign: campaign.into(),
    }
}

fn spend(micros: i128, records: i64) -> SpendCounters {
    SpendCounters { micros, records }
}

fn commit_spend(store: &KpiStore, changes: Vec<(SpendRowKey, SpendCounters)>) {
    store
        .commit(&Commit {
            spend: changes,
            processed_offset: 1,
            durable: true,
            ..Commit::default()
        })
        .unwrap();
}

/// The stored spend rows, sorted by name (keys sort by length-prefixed parts).
fn stored(store: &KpiStore) -> Vec<(SpendRowKey, SpendCounters)> {
    let mut rows = store.spend(Granularity::Hour, 0, i64::MAX).unwrap();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

#[test]
fn a_spend_value_is_version_2_with_micro_units_and_records() {
    for value in [
        spend(0, 1),
        spend(-1, 7),
        spend(i128::MAX, i64::MAX),
        spend(i128::MIN, i64::MIN),
    ] {
        let bytes = encode_spend_value(value);
        assert_eq!(bytes.len(), 25);
        assert_eq!(bytes[0], SPEND_FORMAT);
        assert_eq!(SPEND_FORMAT, 2);
        assert_eq!(decode_spend_value(&bytes).unwrap(), value);
    }
    let bytes = encode_spend_value(spend(1_500_000, 3));
    assert_eq!(&bytes[1..17], &1_500_000_i128.to_be_bytes());
    assert_eq!(&bytes[17..], &3_i64.to_be_bytes());
}

#[test]
fn a_version_1_spend_value_reads_as_one_record() {
    let mut v1 = vec![SPEND_FORMAT_V1];
    v1.extend_from_slice(&2_500_000_i128.to_be_bytes());
    assert_eq!(decode_spend_value(&v1).unwrap(), spend(2_500_000, 1));
}

#[test]
fn spend_values_of_a_wrong_length_or_unknown_version_are_refused() {
    let v2 = encode_spend_value(spend(5, 1));
    // A version-2 value cut to the version-1 length, and a version-1 value too long.
    let mut cut = v2[..17].to_vec();
    assert!(matches!(
        decode_spend_value(&cut),
        Err(StoreError::Corrupt(_))
    ));
    cut[0] = SPEND_FORMAT_V1;
    assert!(decode_spend_value(&cut).is_ok());
    let mut long_v1 = v2.to_vec();
    long_v1[0] = SPEND_FORMAT_V1;
    assert!(matches!(
        decode_spend_value(&long_v1),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        decode_spend_value(&[]),
        Err(StoreError::Corrupt(_))
    ));
    let mut v3 = v2.to_vec();
    v3[0] = 3;
    let error = decode_spend_value(&v3).unwrap_err();
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
}

/// A store written before issue 9 holds version-1 spend values: they are read as one
/// record each, and rewritten in version 2, counts added, when the row next changes.
#[test]
fn a_store_with_version_1_spend_values_is_read_and_upgraded_as_rows_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = KpiStore::open(&dir.path().join("kpis.redb")).unwrap();
    {
        let db = store.db.read_guard().unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(SPEND).unwrap();
            for (campaign, micros) in [("old", 4_000_000_i128), ("kept", 1_000_000)] {
                let mut v1 = vec![SPEND_FORMAT_V1];
                v1.extend_from_slice(&micros.to_be_bytes());
                let key = encode_spend_key(&spend_key(campaign)).unwrap();
                table.insert(key.as_slice(), v1.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    assert_eq!(
        stored(&store),
        vec![
            (spend_key("kept"), spend(1_000_000, 1)),
            (spend_key("old"), spend(4_000_000, 1)),
        ]
    );
    commit_spend(&store, vec![(spend_key("old"), SpendCounters::record(0))]);
    assert_eq!(
        stored(&store),
        vec![
            (spend_key("kept"), spend(1_000_000, 1)),
            (spend_key("old"), spend(4_000_000, 2)),
        ]
    );
    // The changed row is version 2 now; the other is left as it was written.
    let db = store.db.read_guard().unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(SPEND).unwrap();
    let version = |campaign: &str| {
        let key = encode_spend_key(&spend_key(campaign)).unwrap();
        table.get(key.as_slice()).unwrap().unwrap().value()[0]
    };
    assert_eq!((version("old"), version("kept")), (2, 1));
}

#[test]
fn a_spend_row_is_deleted_only_when_money_and_records_are_both_zero() {
    let dir = tempfile::tempdir().unwrap();
    let store = KpiStore::open(&dir.path().join("kpis.redb")).unwrap();
    // A record of 0: a known zero, stored.
    commit_spend(&store, vec![(spend_key("free"), SpendCounters::record(0))]);
    assert_eq!(stored(&store), vec![(spend_key("free"), spend(0, 1))]);

    // Money back to 0 with records left: kept.
    commit_spend(
        &store,
        vec![(spend_key("net"), SpendCounters::record(3_000_000))],
    );
    commit_spend(&store, vec![(spend_key("net"), spend(-3_000_000, 1))]);
    assert_eq!(
        stored(&store),
        vec![
            (spend_key("free"), spend(0, 1)),
            (spend_key("net"), spend(0, 2)),
        ]
    );

    // Records back to 0 with money left (only a retraction could do it): kept, the money
    // is not lost.
    commit_spend(&store, vec![(spend_key("net"), spend(5, -2))]);
    assert_eq!(stored(&store)[1], (spend_key("net"), spend(5, 0)));

    // Both zero: gone.
    commit_spend(
        &store,
        vec![
            (spend_key("net"), spend(-5, 0)),
            (spend_key("free"), spend(0, -1)),
        ],
    );
    assert_eq!(stored(&store), vec![]);
}

#[test]
fn a_record_count_past_its_bound_is_an_error_not_a_wrap() {
    let dir = tempfile::tempdir().unwrap();
    let store = KpiStore::open(&dir.path().join("kpis.redb")).unwrap();
    commit_spend(&store, vec![(spend_key("x"), spend(1, i64::MAX))]);
    let error = store
        .commit(&Commit {
            spend: vec![(spend_key("x"), SpendCounters::record(1))],
            processed_offset: 2,
            ..Commit::default()
        })
        .unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
    assert_eq!(stored(&store), vec![(spend_key("x"), spend(1, i64::MAX))]);
    assert_eq!(
        store.progress().unwrap().processed_offset,
        1,
        "nothing of it committed"
    );
}
