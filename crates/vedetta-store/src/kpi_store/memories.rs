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
//! attribution_memory:          user pseudonym (16 bytes) → [format u8 = 1][start i64 LE][touch u32 LE]
//! attribution_memory_by_start: [start, sign bit flipped, u64 BE][user (16 bytes)] → ()
//! ```
//!
//! The second orders records by start so that those older than the lookback can be
//! dropped with one range scan ([`write`]'s `prune_before`). `touch` is a dimension id of
//! the pipeline's interned table, which the snapshot beside it holds.

use super::StoreError;
use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use vedetta_core::pipeline::attribution::Memory;
use vedetta_core::record::UserPseudonym;

pub(super) const MEMORIES: TableDefinition<'_, &[u8], &[u8]> =
    TableDefinition::new("attribution_memory");
pub(super) const MEMORIES_BY_START: TableDefinition<'_, &[u8], ()> =
    TableDefinition::new("attribution_memory_by_start");

/// The value format this build writes and reads.
pub const MEMORY_FORMAT: u8 = 1;
const VALUE_LEN: usize = 1 + 8 + 4;

fn encode_value(memory: Memory) -> [u8; VALUE_LEN] {
    let mut out = [0; VALUE_LEN];
    out[0] = MEMORY_FORMAT;
    out[1..9].copy_from_slice(&memory.start.to_le_bytes());
    out[9..].copy_from_slice(&memory.touch.to_le_bytes());
    out
}

fn decode_value(bytes: &[u8]) -> Result<Memory, StoreError> {
    match bytes.first() {
        Some(&MEMORY_FORMAT) if bytes.len() == VALUE_LEN => {}
        Some(&MEMORY_FORMAT) => {
            return Err(StoreError::Corrupt(format!(
                "an attribution memory of {} bytes (format {MEMORY_FORMAT} has {VALUE_LEN})",
                bytes.len()
            )));
        }
        Some(&other) => {
            return Err(StoreError::Corrupt(format!(
                "an attribution memory of format {other}; this build reads format \
                 {MEMORY_FORMAT}: run `vedetta replay`"
            )));
        }
        None => return Err(StoreError::Corrupt("an empty attribution memory".into())),
    }
    let mut start = [0; 8];
    start.copy_from_slice(&bytes[1..9]);
    let mut touch = [0; 4];
    touch.copy_from_slice(&bytes[9..]);
    Ok(Memory {
        start: i64::from_le_bytes(start),
        touch: u32::from_le_bytes(touch),
    })
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
    memories: &[(UserPseudonym, Memory)],
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
            index.remove(index_key(old.start, user).as_slice())?;
        }
        table.insert(user.0.as_slice(), encode_value(*memory).as_slice())?;
        index.insert(index_key(memory.start, user).as_slice(), ())?;
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
) -> Result<Vec<(UserPseudonym, Memory)>, StoreError> {
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
        let memory = Memory {
            start: -1_700_000_000_000,
            touch: 7,
        };
        assert_eq!(decode_value(&encode_value(memory)).unwrap(), memory);
        let mut future = encode_value(memory);
        future[0] = 2;
        assert!(
            decode_value(&future)
                .unwrap_err()
                .to_string()
                .contains("vedetta replay")
        );
        assert!(decode_value(&encode_value(memory)[..12]).is_err());
        assert!(decode_value(&[]).is_err());
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
        let at = |start, touch| Memory { start, touch };
        let txn = db.begin_write().unwrap();
        write(&txn, &[(a, at(100, 1)), (b, at(200, 2))], None).unwrap();
        txn.commit().unwrap();
        let txn = db.begin_write().unwrap();
        // a's newer memory replaces the old one, and its old index entry goes with it.
        write(&txn, &[(a, at(300, 3))], Some(250)).unwrap();
        txn.commit().unwrap();
        assert_eq!(read(&db, &[a, b]).unwrap(), vec![(a, at(300, 3))]);
        assert_eq!(count(&db).unwrap(), 1);
        let txn = db.begin_write().unwrap();
        write(&txn, &[], Some(301)).unwrap();
        txn.commit().unwrap();
        assert!(read(&db, &[a]).unwrap().is_empty());
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(MEMORIES_BY_START).unwrap().len().unwrap(), 0);
    }
}
