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
//! Layout (values are the stage's own versioned encodings, opaque here):
//!
//! ```text
//! act_outputs:   output seq (u64)   → a staged output ([STAGED_OUTPUT_FORMAT][…])
//! trigger_sets:  log offset (u64)   → a trigger set   ([TRIGGER_SET_FORMAT][…])
//! meta "act_next_seq"               → the seq the next staged output takes
//! ```
//!
//! `vedetta replay` clears the store but keeps these: outputs not yet routed are routed after
//! it, and seqs never go back (the router's cursor lives in the alert store).

use super::{META, StoreError, offset_from_meta, offset_to_meta};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

pub(super) const OUTPUTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("act_outputs");
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
    let mut outputs = txn.open_table(OUTPUTS)?;
    let mut next = stored_next;
    for (seq, bytes) in staging.outputs {
        // Seqs only go forward: an output at or past the stored next seq, in order. Anything
        // else is a bug upstream (a replay that staged again what was staged).
        if *seq < next {
            return Err(StoreError::Engine(format!(
                "staged output {seq} is behind the next seq {next}"
            )));
        }
        outputs.insert(*seq, bytes.as_slice())?;
        next = seq + 1;
    }
    let next = staging.next_seq.unwrap_or(next).max(next);
    if next != stored_next {
        meta.insert(NEXT_SEQ, offset_to_meta(next)?)?;
    }
    if let Some(below) = staging.delete_below {
        loop {
            let first = outputs.first()?.map(|(key, _)| key.value());
            match first {
                Some(key) if key < below => {
                    outputs.remove(key)?;
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
    let table = match txn.open_table(OUTPUTS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in table.range(from..)? {
        if out.len() >= limit {
            break;
        }
        let (seq, bytes) = entry?;
        out.push((seq.value(), bytes.value().to_vec()));
    }
    Ok(out)
}

/// The seq the next staged output takes, and the first seq still staged (if any).
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
    let first = match txn.open_table(OUTPUTS) {
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
        assert_eq!(store.output_seqs().unwrap(), (5, Some(2)));
        assert_eq!(store.read_outputs(0, 10).unwrap(), [output(2)]);
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
        assert_eq!(store.output_seqs().unwrap(), (5, Some(2)));
        assert_eq!(store.read_outputs(0, 10).unwrap(), [output(2)]);
    }
}
