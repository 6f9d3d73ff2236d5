//! What the processor's trigger stage decided, staged in the KPI store's commits (issue 12,
//! stages 3–5 of `docs/triggers.md`).
//!
//! The stage runs in the processor, per record; its outputs go into the same transaction as
//! the KPI changes and the processed offset of the batch that decided them, so the three
//! are one fact: after a crash, the replay from the snapshot decides the same outputs again
//! and drops those below [`next_output_seq`] (staged already). The trigger router reads them
//! from here ([`read_outputs`]) into the alert store's pending pushes and firings, in a
//! transaction that also moves its cursor; a later commit deletes those below the cursor it
//! published ([`crate::Commit::delete_outputs_below`]).
//!
//! A trigger set put in force by a reload takes effect at the first offset of a batch, and
//! that batch's commit records it here ([`crate::Commit::trigger_set`]): a replay applies
//! the recorded sets at their offsets, so it decides what the first run decided even when a
//! reload came between the snapshot and the crash. The snapshot carries the set in force at
//! its own offset; a commit with a snapshot at offset `S` prunes the recorded sets before `S`.
//!
//! Layout (the outputs and sets are the stage's own versioned encodings, opaque here):
//!
//! ```text
//! act_output_rows: first seq (u64)  → a commit's outputs of consecutive seqs:
//!                                     [OUTPUT_ROW_FORMAT][count u32]([len u32][output])*
//!                                     (each output [STAGED_OUTPUT_FORMAT][…])
//! trigger_sets:    log offset (u64) → a trigger set ([TRIGGER_SET_FORMAT][…])
//! meta "act_next_seq"               → the seq the next staged output takes
//! ```
//!
//! One row per commit, not per output: at 100,000 events/s with a conversion feed the
//! processor stages thousands of outputs a second, and a B-tree insert each (and a remove
//! each once routed) was a visible share of its thread (`perf`, docs/benchmarks.md). A row
//! goes when every output in it is routed, so [`read_outputs`] skips those below `from`
//! in the first row it reads. Builds before 2026-12-06 kept one output per row in
//! `act_outputs`; opening the store moves those ([`move_single_outputs`]).
//!
//! `vedetta replay` clears the store but keeps these: outputs not yet routed are routed after
//! it, and seqs never go back (the router's cursor lives in the alert store).

use super::{META, StoreError, offset_from_meta, offset_to_meta};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction};

pub(super) const OUTPUT_ROWS: TableDefinition<'_, u64, &[u8]> =
    TableDefinition::new("act_output_rows");
/// One output per row, as builds before 2026-12-06 wrote them (moved at open).
pub(super) const SINGLE_OUTPUTS: TableDefinition<'_, u64, &[u8]> =
    TableDefinition::new("act_outputs");
/// The format byte of a row of [`OUTPUT_ROWS`].
pub(super) const OUTPUT_ROW_FORMAT: u8 = 1;
/// What names a row's problems in errors.
const ROW: &str = "a row of staged trigger outputs";
pub(super) const TRIGGER_SETS: TableDefinition<'_, u64, &[u8]> =
    TableDefinition::new("trigger_sets");
pub(super) const NEXT_SEQ: &str = "act_next_seq";

/// What a commit stages (the fields of [`crate::Commit`] this module writes).
pub(super) struct Staging<'a> {
    pub outputs: &'a [(u64, Vec<u8>)],
    pub next_seq: Option<u64>,
    pub trigger_set: Option<&'a (u64, Vec<u8>)>,
    pub delete_below: Option<u64>,
    /// The offset of a snapshot this commit makes the store's: sets before it are pruned.
    pub snapshot_offset: Option<u64>,
}

pub(super) fn write(txn: &WriteTransaction, staging: &Staging<'_>) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    let stored_next = match meta.get(NEXT_SEQ)? {
        Some(v) => offset_from_meta(NEXT_SEQ, v.value())?,
        None => 0,
    };
    let mut rows = txn.open_table(OUTPUT_ROWS)?;
    let mut next = stored_next;
    // Runs of consecutive seqs, a row each (a commit's outputs are one run).
    let mut run_start = 0;
    for (i, (seq, _)) in staging.outputs.iter().enumerate() {
        // Seqs only go forward: an output at or past the stored next seq, in order. Anything
        // else is a bug upstream (a replay that staged again what was staged).
        if *seq < next {
            return Err(StoreError::Engine(format!(
                "staged output {seq} is behind the next seq {next}"
            )));
        }
        if i > run_start && *seq != next {
            insert_row(&mut rows, &staging.outputs[run_start..i])?;
            run_start = i;
        }
        next = seq + 1;
    }
    if run_start < staging.outputs.len() {
        insert_row(&mut rows, &staging.outputs[run_start..])?;
    }
    let next = staging.next_seq.unwrap_or(next).max(next);
    if next != stored_next {
        meta.insert(NEXT_SEQ, offset_to_meta(next)?)?;
    }
    if let Some(below) = staging.delete_below {
        // The rows whose every output is below the router's cursor.
        loop {
            let first = match rows.first()? {
                Some((key, value)) => Some((key.value(), row_count(key.value(), value.value())?)),
                None => None,
            };
            match first {
                Some((key, count)) if key.saturating_add(count) <= below => {
                    rows.remove(key)?;
                }
                _ => break,
            }
        }
    }
    if staging.trigger_set.is_some() || staging.snapshot_offset.is_some() {
        let mut sets = txn.open_table(TRIGGER_SETS)?;
        if let Some((offset, bytes)) = staging.trigger_set {
            sets.insert(*offset, bytes.as_slice())?;
        }
        if let Some(snapshot) = staging.snapshot_offset {
            loop {
                let first = sets.first()?.map(|(key, _)| key.value());
                match first {
                    Some(key) if key < snapshot => {
                        sets.remove(key)?;
                    }
                    _ => break,
                }
            }
        }
    }
    Ok(())
}

/// Up to `limit` staged outputs from seq `from` on, in seq order.
pub(super) fn read_outputs(
    db: &redb::Database,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(OUTPUT_ROWS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    // From the row that holds `from` (its first outputs may be routed already).
    let start = match table.range(..=from)?.next_back() {
        Some(entry) => entry?.0.value(),
        None => from,
    };
    let mut out = Vec::new();
    for entry in table.range(start..)? {
        if out.len() >= limit {
            break;
        }
        let (key, value) = entry?;
        for (seq, bytes) in decode_row(key.value(), value.value())? {
            if out.len() >= limit {
                break;
            }
            if seq >= from {
                out.push((seq, bytes.to_vec()));
            }
        }
    }
    Ok(out)
}

/// Moves the outputs a store of a build before 2026-12-06 staged one per row
/// ([`SINGLE_OUTPUTS`]) into rows of one, in one transaction, and drops that table; how
/// many. Run at every open (nothing to do once moved).
pub(super) fn move_single_outputs(db: &redb::Database) -> Result<u64, StoreError> {
    {
        let txn = db.begin_read()?;
        if !(txn.list_tables()?).any(|t| t.name() == SINGLE_OUTPUTS.name()) {
            return Ok(0);
        }
    }
    let txn = db.begin_write()?;
    let mut moved = 0;
    {
        let single = txn.open_table(SINGLE_OUTPUTS)?;
        let mut rows = txn.open_table(OUTPUT_ROWS)?;
        for entry in single.iter()? {
            let (seq, bytes) = entry?;
            let row = encode_row(std::iter::once(bytes.value()))?;
            rows.insert(seq.value(), row.as_slice())?;
            moved += 1;
        }
    }
    txn.delete_table(SINGLE_OUTPUTS)?;
    txn.commit()?;
    Ok(moved)
}

/// Inserts `outputs` (consecutive seqs) as one row under the first's seq.
fn insert_row(
    rows: &mut redb::Table<'_, u64, &[u8]>,
    outputs: &[(u64, Vec<u8>)],
) -> Result<(), StoreError> {
    if let Some((first, _)) = outputs.first() {
        let row = encode_row(outputs.iter().map(|(_, bytes)| bytes.as_slice()))?;
        rows.insert(*first, row.as_slice())?;
    }
    Ok(())
}

/// `[OUTPUT_ROW_FORMAT][count u32 LE]` then each output as `[len u32 LE][bytes]`.
fn encode_row<'a>(
    outputs: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
) -> Result<Vec<u8>, StoreError> {
    let too_large = || StoreError::Engine("staged outputs too large for one row".into());
    let count = u32::try_from(outputs.len()).map_err(|_| too_large())?;
    let bytes: usize = outputs.clone().map(|o| 4 + o.len()).sum();
    let mut row = Vec::with_capacity(5 + bytes);
    row.push(OUTPUT_ROW_FORMAT);
    row.extend_from_slice(&count.to_le_bytes());
    for output in outputs {
        let len = u32::try_from(output.len()).map_err(|_| too_large())?;
        row.extend_from_slice(&len.to_le_bytes());
        row.extend_from_slice(output);
    }
    Ok(row)
}

/// How many outputs the row under `first` holds (read from its head alone).
fn row_count(first: u64, value: &[u8]) -> Result<u64, StoreError> {
    let (count, _) = row_head(first, value)?;
    Ok(u64::from(count))
}

/// A row's format checked, its count and the rest.
fn row_head(first: u64, value: &[u8]) -> Result<(u32, &[u8]), StoreError> {
    match value {
        [OUTPUT_ROW_FORMAT, a, b, c, d, rest @ ..] => {
            Ok((u32::from_le_bytes([*a, *b, *c, *d]), rest))
        }
        [found, ..] if *found != OUTPUT_ROW_FORMAT => Err(StoreError::Version {
            what: ROW,
            found: i64::from(*found),
            supported: i64::from(OUTPUT_ROW_FORMAT),
        }),
        _ => Err(StoreError::Corrupt(format!(
            "{ROW} at seq {first} is cut short ({} bytes)",
            value.len()
        ))),
    }
}

/// The outputs of the row under `first`, with their seqs; a row that does not read to its
/// end exactly is corrupt.
fn decode_row(first: u64, value: &[u8]) -> Result<Vec<(u64, &[u8])>, StoreError> {
    let (count, mut rest) = row_head(first, value)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("{ROW} at seq {first}: {what}"));
    // Each output takes at least its 4-byte length: a count past that is damage (and is
    // not trusted to size the list).
    if count as usize > rest.len() / 4 {
        return Err(corrupt("more outputs counted than its bytes hold"));
    }
    let mut outputs = Vec::with_capacity(count as usize);
    for i in 0..u64::from(count) {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt("cut short"));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt("cut short"));
        }
        let (output, tail) = tail.split_at(len);
        let seq = first
            .checked_add(i)
            .ok_or_else(|| corrupt("seqs past u64"))?;
        outputs.push((seq, output));
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(corrupt("bytes past its last output"));
    }
    Ok(outputs)
}

/// The seq the next staged output takes, and the first seq still staged (if any: the
/// first of its row, which may hold outputs routed already).
pub(super) fn seqs(db: &redb::Database) -> Result<(u64, Option<u64>), StoreError> {
    let txn = db.begin_read()?;
    let next = match txn.open_table(META) {
        Ok(meta) => match meta.get(NEXT_SEQ)? {
            Some(v) => offset_from_meta(NEXT_SEQ, v.value())?,
            None => 0,
        },
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    let first = match txn.open_table(OUTPUT_ROWS) {
        Ok(table) => table.first()?.map(|(seq, _)| seq.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    Ok((next, first))
}

/// The trigger sets recorded at offsets from `from` on, in offset order.
pub(super) fn trigger_sets_from(
    db: &redb::Database,
    from: u64,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(TRIGGER_SETS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in table.range(from..)? {
        let (offset, bytes) = entry?;
        out.push((offset.value(), bytes.value().to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::{Commit, KpiStore};
    use redb::{ReadableDatabase, ReadableTable, TableHandle};

    fn output(seq: u64) -> (u64, Vec<u8>) {
        (seq, format!("out{seq}").into_bytes())
    }

    #[test]
    fn outputs_stage_with_their_offset_and_go_once_routed() {
        let dir = tempfile::tempdir().unwrap();
        let store = KpiStore::open_empty(&dir.path().join("kpis.redb")).unwrap();
        assert_eq!(store.output_seqs().unwrap(), (0, None));
        store
            .commit(&Commit {
                processed_offset: 10,
                outputs: vec![output(0), output(1), output(2)],
                trigger_set: Some((0, b"set-a".to_vec())),
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(store.output_seqs().unwrap(), (3, Some(0)));
        assert_eq!(store.read_outputs(1, 10).unwrap(), [output(1), output(2)]);
        assert_eq!(store.read_outputs(0, 1).unwrap(), [output(0)]);
        // A batch with no output moves the next seq only when told.
        store
            .commit(&Commit {
                processed_offset: 20,
                next_output_seq: Some(5),
                delete_outputs_below: Some(2),
                trigger_set: Some((10, b"set-b".to_vec())),
                ..Commit::default()
            })
            .unwrap();
        // The row of 0..=2 stays until all three are routed: 2 is not.
        assert_eq!(store.output_seqs().unwrap(), (5, Some(0)));
        assert_eq!(store.read_outputs(2, 10).unwrap(), [output(2)]);
        // Seqs never go back.
        let behind = store.commit(&Commit {
            processed_offset: 21,
            outputs: vec![output(4)],
            ..Commit::default()
        });
        assert!(behind.is_err(), "{behind:?}");
        assert_eq!(store.progress().unwrap().processed_offset, 20);
        assert_eq!(
            store.trigger_sets_from(0).unwrap(),
            [(0, b"set-a".to_vec()), (10, b"set-b".to_vec())]
        );
        // A snapshot (inline: at the commit's offset, 30) prunes the sets before it: it
        // carries the set in force. One recorded after it stays.
        store
            .commit(&Commit {
                processed_offset: 30,
                snapshot: Some(b"snap".to_vec()),
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(store.trigger_sets_from(0).unwrap(), []);
        store
            .commit(&Commit {
                processed_offset: 40,
                trigger_set: Some((30, b"set-c".to_vec())),
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(
            store.trigger_sets_from(0).unwrap(),
            [(30, b"set-c".to_vec())]
        );
        // A replay clears the store but keeps what is staged, and the next seq.
        store.clear().unwrap();
        assert_eq!(store.progress().unwrap().processed_offset, 0);
        assert_eq!(store.output_seqs().unwrap(), (5, Some(0)));
        assert_eq!(store.read_outputs(2, 10).unwrap(), [output(2)]);
        // Once all of a row is routed, it goes.
        store
            .commit(&Commit {
                processed_offset: 50,
                delete_outputs_below: Some(3),
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(store.output_seqs().unwrap(), (5, None));
        assert_eq!(store.read_outputs(0, 10).unwrap(), []);
    }

    /// A commit's outputs go in one row (a run of consecutive seqs each); they read back
    /// one by one from any seq, across rows, up to the limit; a row goes once every output
    /// in it is below the router's cursor.
    #[test]
    fn outputs_read_across_rows_and_rows_go_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = KpiStore::open_empty(&dir.path().join("kpis.redb")).unwrap();
        let commit = |offset: u64, seqs: std::ops::Range<u64>, below: Option<u64>| {
            store
                .commit(&Commit {
                    processed_offset: offset,
                    outputs: seqs.map(output).collect(),
                    delete_outputs_below: below,
                    ..Commit::default()
                })
                .unwrap();
        };
        commit(1, 0..4, None);
        commit(2, 4..5, None);
        commit(3, 5..9, None);
        let rows = || {
            let db = store.db.read_guard().unwrap();
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(super::OUTPUT_ROWS).unwrap();
            (table.iter().unwrap())
                .map(|e| e.unwrap().0.value())
                .collect::<Vec<_>>()
        };
        assert_eq!(rows(), [0, 4, 5]);
        let all: Vec<_> = (0..9).map(output).collect();
        assert_eq!(store.read_outputs(0, 100).unwrap(), all);
        assert_eq!(store.read_outputs(3, 3).unwrap(), all[3..6]);
        assert_eq!(store.read_outputs(6, 100).unwrap(), all[6..]);
        assert_eq!(store.read_outputs(9, 100).unwrap(), []);
        assert_eq!(store.read_outputs(0, 0).unwrap(), []);
        // Below 6: the rows of 0..=3 and of 4 go; that of 5..=8 stays (6 to 8 unrouted).
        commit(4, 0..0, Some(6));
        assert_eq!(rows(), [5]);
        assert_eq!(store.output_seqs().unwrap(), (9, Some(5)));
        assert_eq!(store.read_outputs(6, 100).unwrap(), all[6..]);
        // A gap in one commit's seqs (the stage never makes one; the store does not
        // assume it) starts a row of its own.
        store
            .commit(&Commit {
                processed_offset: 5,
                outputs: vec![output(9), output(10), output(12)],
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(rows(), [5, 9, 12]);
        assert_eq!(
            store.read_outputs(10, 100).unwrap(),
            [output(10), output(12)]
        );
    }

    /// A row that does not read (cut short, run on, a count its bytes cannot hold, a newer
    /// format) is an error naming it, not outputs misread or a panic.
    #[test]
    fn damaged_rows_are_refused() {
        let row = super::encode_row([&b"ab"[..], &b""[..], &b"cde"[..]].into_iter()).unwrap();
        let read = super::decode_row(7, &row).unwrap();
        assert_eq!(read, [(7, &b"ab"[..]), (8, &b""[..]), (9, &b"cde"[..])]);
        assert_eq!(super::row_count(7, &row).unwrap(), 3);
        let mut huge_count = row.clone();
        huge_count[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut newer = row.clone();
        newer[0] = super::OUTPUT_ROW_FORMAT + 1;
        for (damaged, why) in [
            (row[..row.len() - 1].to_vec(), "cut short"),
            ([&row[..], &[0]].concat(), "past its last output"),
            (huge_count, "more outputs counted"),
            (row[..3].to_vec(), "cut short"),
            (Vec::new(), "cut short"),
            (newer, "format version 2"),
        ] {
            let error = super::decode_row(7, &damaged).unwrap_err().to_string();
            assert!(error.contains(why), "{why}: {error}");
        }
    }

    /// A store of a build before 2026-12-06 (one output per row in `act_outputs`) has
    /// them moved into rows when opened, in seq order, the old table gone; they route as
    /// before.
    #[test]
    fn single_outputs_of_an_older_build_are_moved_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpis.redb");
        drop(KpiStore::open(&path).unwrap());
        {
            let db = redb::Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut single = txn.open_table(super::SINGLE_OUTPUTS).unwrap();
                for (seq, bytes) in [output(3), output(4)] {
                    single.insert(seq, bytes.as_slice()).unwrap();
                }
                let mut meta = txn.open_table(super::META).unwrap();
                meta.insert(super::NEXT_SEQ, 5).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = KpiStore::open(&path).unwrap();
        assert_eq!(store.output_seqs().unwrap(), (5, Some(3)));
        assert_eq!(store.read_outputs(0, 10).unwrap(), [output(3), output(4)]);
        {
            let db = store.db.read_guard().unwrap();
            let txn = db.begin_read().unwrap();
            assert!(
                !(txn.list_tables().unwrap()).any(|t| t.name() == super::SINGLE_OUTPUTS.name())
            );
        }
        // New outputs follow in rows; routing past the moved ones deletes them.
        store
            .commit(&Commit {
                processed_offset: 1,
                outputs: vec![output(5)],
                delete_outputs_below: Some(4),
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(store.output_seqs().unwrap(), (6, Some(4)));
        assert_eq!(store.read_outputs(4, 10).unwrap(), [output(4), output(5)]);
    }
}
