//! Attribution memories of users idle for longer than the allowed lateness.
//!
//! A direct session takes the source of the same user's last non-direct session within the
//! lookback (30 days): the pipeline needs one small record per user for that long, but it
//! holds users in memory only while their sessions can change. When it drops a user, the
//! record waits in the pipeline's state until the next snapshot and is written here in the
//! same transaction as that snapshot ([`write`]); a returning user's record is read back
//! before the batch that needs it ([`read`]). Written only with snapshots, this table and
//! the snapshot always describe the same log offset, so a restart that replays the log
//! from the snapshot reads exactly what the first run read.
//!
//! Layout (two tables):
//!
//! ```text
//! attribution_memory:          user pseudonym (16 bytes) → value
//! attribution_memory_by_start: [start, sign bit flipped, u64 BE][user (16 bytes)] → ()
//!
//! value, format 2: [2][start i64 LE][touch u32 LE][n u8][n × (start i64 LE, touch u32 LE)]
//!                  the latest record, then the n earlier `first_touch` runs, oldest first
//! value, format 1: [1][start i64 LE][touch u32 LE]          (read as format 2 with n = 0)
//! ```
//!
//! The second table orders records by the start of the latest (under `first_touch`, the
//! latest run: when it is older than the lookback, so is every earlier one) so that those
//! older than the lookback can be dropped with one range scan ([`write`]'s
//! `prune_before`). `touch` is a dimension id of the pipeline's interned table, which the
//! snapshot beside it holds. Format 2 came with the literal `first_touch` (issue 9); a store
//! of format 1 written under `first_touch` held its lapsing anchor, and its settings record
//! asks for `vedetta replay` before the pipeline could read one.

use super::StoreError;
use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use vedetta_core::pipeline::attribution::{MAX_FIRST_TOUCH_RUNS, Memories, Memory};
use vedetta_core::record::UserPseudonym;

pub(super) const MEMORIES: TableDefinition<'_, &[u8], &[u8]> =
    TableDefinition::new("attribution_memory");
pub(super) const MEMORIES_BY_START: TableDefinition<'_, &[u8], ()> =
    TableDefinition::new("attribution_memory_by_start");

/// The value format this build writes (it reads format 1 too).
pub const MEMORY_FORMAT: u8 = 2;
/// The format before `first_touch` kept a list: one record.
const MEMORY_FORMAT_ONE_RECORD: u8 = 1;
const RECORD_LEN: usize = 8 + 4;

fn push_record(out: &mut Vec<u8>, memory: Memory) {
    out.extend_from_slice(&memory.start.to_le_bytes());
    out.extend_from_slice(&memory.touch.to_le_bytes());
}

fn encode_value(memories: &Memories) -> Result<Vec<u8>, StoreError> {
    // The pipeline keeps at most `MAX_FIRST_TOUCH_RUNS` runs; a longer list is a bug
    // upstream, refused here rather than cut silently.
    let n = u8::try_from(memories.earlier.len())
        .ok()
        .filter(|n| usize::from(*n) < MAX_FIRST_TOUCH_RUNS)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "an attribution memory with {} earlier runs (at most {})",
                memories.earlier.len(),
                MAX_FIRST_TOUCH_RUNS - 1
            ))
        })?;
    let mut out = Vec::with_capacity(2 + RECORD_LEN * (1 + usize::from(n)));
    out.push(MEMORY_FORMAT);
    push_record(&mut out, memories.latest);
    out.push(n);
    for run in &memories.earlier {
        push_record(&mut out, *run);
    }
    Ok(out)
}

fn record_at(bytes: &[u8]) -> Memory {
    let mut start = [0; 8];
    start.copy_from_slice(&bytes[..8]);
    let mut touch = [0; 4];
    touch.copy_from_slice(&bytes[8..RECORD_LEN]);
    Memory {
        start: i64::from_le_bytes(start),
        touch: u32::from_le_bytes(touch),
    }
}

fn decode_value(bytes: &[u8]) -> Result<Memories, StoreError> {
    let wrong_length = |format: u8, expected: usize| {
        StoreError::Corrupt(format!(
            "an attribution memory of format {format} has {} bytes, not {expected}",
            bytes.len()
        ))
    };
    match bytes.first() {
        Some(&MEMORY_FORMAT_ONE_RECORD) => {
            if bytes.len() != 1 + RECORD_LEN {
                return Err(wrong_length(MEMORY_FORMAT_ONE_RECORD, 1 + RECORD_LEN));
            }
            Ok(Memories::one(record_at(&bytes[1..])))
        }
        Some(&MEMORY_FORMAT) => {
            let n = bytes.get(1 + RECORD_LEN).map_or(0, |n| usize::from(*n));
            let expected = 2 + RECORD_LEN * (1 + n);
            if bytes.len() != expected {
                return Err(wrong_length(MEMORY_FORMAT, expected));
            }
            if n >= MAX_FIRST_TOUCH_RUNS {
                return Err(StoreError::Corrupt(format!(
                    "an attribution memory with {n} earlier runs (at most {})",
                    MAX_FIRST_TOUCH_RUNS - 1
                )));
            }
            let earlier: Vec<Memory> = bytes[2 + RECORD_LEN..]
                .chunks_exact(RECORD_LEN)
                .map(record_at)
                .collect();
            if !earlier
                .windows(2)
                .all(|pair| pair[0].start <= pair[1].start)
            {
                return Err(StoreError::Corrupt(
                    "an attribution memory whose earlier runs are out of order".into(),
                ));
            }
            Ok(Memories {
                earlier,
                latest: record_at(&bytes[1..]),
            })
        }
        Some(&other) => Err(StoreError::Corrupt(format!(
            "an attribution memory of format {other}; this build reads formats \
             {MEMORY_FORMAT_ONE_RECORD} and {MEMORY_FORMAT}: run `vedetta replay`"
        ))),
        None => Err(StoreError::Corrupt("an empty attribution memory".into())),
    }
}

fn index_key(start: i64, user: &UserPseudonym) -> [u8; 24] {
    let mut key = [0; 24];
    key[..8].copy_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
    key[8..].copy_from_slice(&user.0);
    key
}

/// Stores the memories of users the pipeline dropped, replacing older ones, and drops
/// every memory that started before `prune_before`.
pub(super) fn write(
    txn: &WriteTransaction,
    memories: &[(UserPseudonym, Memories)],
    prune_before: Option<i64>,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(MEMORIES)?;
    let mut index = txn.open_table(MEMORIES_BY_START)?;
    for (user, memory) in memories {
        let old = table
            .get(user.0.as_slice())?
            .map(|v| decode_value(v.value()))
            .transpose()?;
        if let Some(old) = old {
            index.remove(index_key(old.latest.start, user).as_slice())?;
        }
        table.insert(user.0.as_slice(), encode_value(memory)?.as_slice())?;
        index.insert(index_key(memory.latest.start, user).as_slice(), ())?;
    }
    if let Some(before) = prune_before {
        let end = index_key(before, &UserPseudonym([0; 16]));
        let old: Vec<Vec<u8>> = index
            .range(..end.as_slice())?
            .map(|entry| entry.map(|(key, _)| key.value().to_vec()))
            .collect::<Result<_, _>>()?;
        for key in old {
            index.remove(key.as_slice())?;
            table.remove(&key[8..])?;
        }
    }
    Ok(())
}

/// The stored memories of these users (those that have one).
pub(super) fn read(
    db: &redb::Database,
    users: &[UserPseudonym],
) -> Result<Vec<(UserPseudonym, Memories)>, StoreError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(MEMORIES) {
        Ok(table) => table,
        // A store that never dropped a user has no table yet.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for user in users {
        if let Some(value) = table.get(user.0.as_slice())? {
            out.push((*user, decode_value(value.value())?));
        }
    }
    Ok(out)
}

/// How many users have a stored memory.
pub(super) fn count(db: &redb::Database) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    match txn.open_table(MEMORIES) {
        Ok(table) => Ok(table.len()?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values_round_trip_and_other_formats_are_refused() {
        let at = |start, touch| Memory { start, touch };
        let one = Memories::one(at(-1_700_000_000_000, 7));
        let bytes = encode_value(&one).unwrap();
        assert_eq!(bytes.len(), 2 + RECORD_LEN);
        assert_eq!(decode_value(&bytes).unwrap(), one);
        let list = Memories {
            earlier: vec![at(100, 1), at(200, 2), at(200, 3)],
            latest: at(300, 1),
        };
        let bytes = encode_value(&list).unwrap();
        assert_eq!(decode_value(&bytes).unwrap(), list);
        for cut in 0..bytes.len() {
            assert!(decode_value(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_value(&longer).is_err());
        let mut unsorted = bytes;
        unsorted[2 + RECORD_LEN..2 + RECORD_LEN + 8].copy_from_slice(&500_i64.to_le_bytes());
        assert!(
            decode_value(&unsorted)
                .unwrap_err()
                .to_string()
                .contains("out of order")
        );
        // Format 1 (one record, before the list) reads as a one-entry list.
        let mut v1 = vec![1];
        push_record(&mut v1, at(42, 9));
        assert_eq!(decode_value(&v1).unwrap(), Memories::one(at(42, 9)));
        assert!(decode_value(&v1[..12]).is_err());
        let mut future = encode_value(&one).unwrap();
        future[0] = 3;
        assert!(
            decode_value(&future)
                .unwrap_err()
                .to_string()
                .contains("vedetta replay")
        );
        assert!(decode_value(&[]).is_err());
        let too_long = Memories {
            earlier: vec![at(1, 1); MAX_FIRST_TOUCH_RUNS],
            latest: at(2, 2),
        };
        assert!(encode_value(&too_long).is_err());
        let mut forged = vec![2];
        push_record(&mut forged, at(2, 2));
        forged.push(MAX_FIRST_TOUCH_RUNS as u8);
        for _ in 0..MAX_FIRST_TOUCH_RUNS {
            push_record(&mut forged, at(1, 1));
        }
        assert!(
            decode_value(&forged)
                .unwrap_err()
                .to_string()
                .contains("earlier runs")
        );
    }

    #[test]
    fn index_keys_sort_by_start_including_negative_times() {
        let user = UserPseudonym([9; 16]);
        let keys: Vec<_> = [-5_i64, -1, 0, 3, i64::MAX]
            .iter()
            .map(|s| index_key(*s, &user))
            .collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn writes_replace_read_back_and_prune_by_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("m.redb")).unwrap();
        let (a, b) = (UserPseudonym([1; 16]), UserPseudonym([2; 16]));
        assert!(read(&db, &[a]).unwrap().is_empty(), "no table yet");
        let at = |start, touch| Memories::one(Memory { start, touch });
        let txn = db.begin_write().unwrap();
        write(&txn, &[(a, at(100, 1)), (b, at(200, 2))], None).unwrap();
        txn.commit().unwrap();
        let txn = db.begin_write().unwrap();
        // a's newer memory replaces the old one, and its old index entry goes with it.
        write(&txn, &[(a, at(300, 3))], Some(250)).unwrap();
        txn.commit().unwrap();
        assert_eq!(read(&db, &[a, b]).unwrap(), vec![(a, at(300, 3))]);
        assert_eq!(count(&db).unwrap(), 1);
        // A list is indexed by its latest run: kept while that is, with its earlier runs.
        let list = Memories {
            earlier: vec![Memory {
                start: 50,
                touch: 1,
            }],
            latest: Memory {
                start: 400,
                touch: 2,
            },
        };
        let txn = db.begin_write().unwrap();
        write(&txn, &[(b, list.clone())], Some(301)).unwrap();
        txn.commit().unwrap();
        assert_eq!(read(&db, &[b]).unwrap(), vec![(b, list)]);
        let txn = db.begin_write().unwrap();
        write(&txn, &[], Some(401)).unwrap();
        txn.commit().unwrap();
        assert!(read(&db, &[a, b]).unwrap().is_empty());
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(MEMORIES_BY_START).unwrap().len().unwrap(), 0);
    }
}
