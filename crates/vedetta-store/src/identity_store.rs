//! The identity store (`identity.redb`): per user pseudonym, the marketing-consent decision
//! and, only while that decision is "yes", the user's `email` and `crm_id`, each sealed
//! (AES-GCM, bound to the pseudonym and the field) by the caller before it gets here. This
//! crate never sees an identity in clear; the event log never sees it at all.
//!
//! Rules, applied per claim in request order ([`IdentityStore::apply`]):
//! - a marketing decision (`consent.marketing`, or a consent event) replaces the stored one
//!   unless the stored one is later by event time; a "no" deletes the stored identity;
//! - an identity is kept only when the user's decision, after the claim, is "yes";
//!   otherwise it is dropped and counted.
//!
//! Layout: `identities`: pseudonym (16 bytes) → record
//!
//! ```text
//! [FORMAT = 1][flags u8: 1 marketing, 2 email present, 4 crm_id present]
//! [decided_at_ms i64 BE][email: u16 BE length + sealed bytes][crm_id: u16 BE length + sealed]
//! ```
//!
//! Writes commit with redb's immediate durability (fsync) before [`IdentityStore::apply`]
//! returns, so intake can acknowledge a request only once its identities are durable.

use crate::reopen::ReopeningDatabase;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;

const IDENTITIES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("identities");

/// The format byte of every record this module writes.
pub const IDENTITY_FORMAT: u8 = 1;

const MARKETING: u8 = 1;
const HAS_EMAIL: u8 = 2;
const HAS_CRM_ID: u8 = 4;

/// Why the identity store failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityStoreError {
    #[error("identity store: {0}")]
    Engine(#[from] redb::Error),
    #[error("the identity store is corrupt: {0}")]
    Corrupt(String),
    #[error("a sealed identity field of {0} bytes is over the 65535-byte limit")]
    TooLarge(usize),
    #[error("identity store: {0}")]
    Unavailable(#[from] crate::reopen::Unavailable),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for IdentityStoreError {
            fn from(e: $t) -> Self {
                IdentityStoreError::Engine(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One user's stored state. The identity fields are sealed bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredIdentity {
    /// The marketing decision; `false` also when the user said nothing yet.
    pub marketing: bool,
    /// Event time of the decision, epoch ms.
    pub decided_at_ms: i64,
    pub email: Option<Vec<u8>>,
    pub crm_id: Option<Vec<u8>>,
}

impl StoredIdentity {
    fn encode(&self) -> Result<Vec<u8>, IdentityStoreError> {
        let mut flags = 0;
        if self.marketing {
            flags |= MARKETING;
        }
        if self.email.is_some() {
            flags |= HAS_EMAIL;
        }
        if self.crm_id.is_some() {
            flags |= HAS_CRM_ID;
        }
        let mut out = vec![IDENTITY_FORMAT, flags];
        out.extend_from_slice(&self.decided_at_ms.to_be_bytes());
        for field in [&self.email, &self.crm_id].into_iter().flatten() {
            let len = u16::try_from(field.len())
                .map_err(|_| IdentityStoreError::TooLarge(field.len()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, IdentityStoreError> {
        let corrupt =
            |what: &str| IdentityStoreError::Corrupt(format!("an identity record {what}"));
        let (&format, rest) = bytes.split_first().ok_or_else(|| corrupt("is empty"))?;
        if format != IDENTITY_FORMAT {
            return Err(corrupt(&format!(
                "has format {format}; this build reads format {IDENTITY_FORMAT}"
            )));
        }
        let (&flags, rest) = rest.split_first().ok_or_else(|| corrupt("is cut short"))?;
        if flags & !(MARKETING | HAS_EMAIL | HAS_CRM_ID) != 0 {
            return Err(corrupt(&format!("has unknown flags {flags:#04x}")));
        }
        let (ts, mut rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("is cut short"))?;
        let mut field = |present: bool| -> Result<Option<Vec<u8>>, IdentityStoreError> {
            if !present {
                return Ok(None);
            }
            let (len, tail) = rest
                .split_first_chunk::<2>()
                .ok_or_else(|| corrupt("is cut short"))?;
            let len = u16::from_be_bytes(*len) as usize;
            if tail.len() < len {
                return Err(corrupt("is cut short"));
            }
            let (value, tail) = tail.split_at(len);
            rest = tail;
            Ok(Some(value.to_vec()))
        };
        let email = field(flags & HAS_EMAIL != 0)?;
        let crm_id = field(flags & HAS_CRM_ID != 0)?;
        if !rest.is_empty() {
            return Err(corrupt("has trailing bytes"));
        }
        Ok(StoredIdentity {
            marketing: flags & MARKETING != 0,
            decided_at_ms: i64::from_be_bytes(*ts),
            email,
            crm_id,
        })
    }
}

/// One accepted event's claim, with the identity fields already sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityWrite {
    pub user: [u8; 16],
    /// Event time, epoch ms.
    pub ts_ms: i64,
    pub marketing: Option<bool>,
    pub email: Option<Vec<u8>>,
    pub crm_id: Option<Vec<u8>>,
}

/// What [`IdentityStore::apply`] did, for the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Claims whose identity was stored (the user has marketing consent).
    pub stored: u64,
    /// Claims whose identity was dropped: no marketing consent.
    pub dropped_no_consent: u64,
    /// Stored identities deleted because consent was withdrawn.
    pub deleted: u64,
}

/// One claim against a user's row: counts what it does, and returns the row to write when
/// it changes.
fn step(
    before: Option<&StoredIdentity>,
    write: &IdentityWrite,
    outcome: &mut ApplyOutcome,
) -> Option<StoredIdentity> {
    let mut after = before.cloned().unwrap_or_default();
    if let Some(marketing) = write.marketing
        && (before.is_none() || write.ts_ms >= after.decided_at_ms)
    {
        after.marketing = marketing;
        after.decided_at_ms = write.ts_ms;
        if !marketing && (after.email.is_some() || after.crm_id.is_some()) {
            after.email = None;
            after.crm_id = None;
            outcome.deleted += 1;
        }
    }
    if write.email.is_some() || write.crm_id.is_some() {
        if after.marketing {
            if write.email.is_some() {
                after.email.clone_from(&write.email);
            }
            if write.crm_id.is_some() {
                after.crm_id.clone_from(&write.crm_id);
            }
            outcome.stored += 1;
        } else {
            outcome.dropped_no_consent += 1;
        }
    }
    // A user who never said "yes" and has nothing stored needs no row: a "no" is the
    // default. A row is kept only for a "yes", or for a "no" that overrides an earlier row
    // (its time stops an older "yes" reviving it).
    let keep = before.is_some() || after.marketing;
    (keep && before != Some(&after)).then_some(after)
}

/// The identity store.
#[derive(Debug)]
pub struct IdentityStore {
    /// Reopened after a failed write (redb latches I/O failures until then), so a full
    /// disk clears by itself once space is back.
    db: ReopeningDatabase,
}

/// redb's page cache for this store: rows are small and looked up one by one.
const CACHE_BYTES: usize = 16 << 20;

impl IdentityStore {
    pub fn open(path: &Path) -> Result<Self, IdentityStoreError> {
        let db = ReopeningDatabase::open(path, CACHE_BYTES)?;
        db.with(|db| -> Result<(), IdentityStoreError> {
            let txn = db.begin_write()?;
            txn.open_table(IDENTITIES)?;
            txn.commit()?;
            Ok(())
        })?;
        Ok(Self { db })
    }

    /// Applies claims in order, in one durable transaction. A request that changes nothing
    /// (the usual case: events repeating a known decision) is answered from a read
    /// transaction and never takes the write lock.
    pub fn apply(&self, writes: &[IdentityWrite]) -> Result<ApplyOutcome, IdentityStoreError> {
        if writes.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        // The failed handle answers nothing until reopened; the file still holds the last
        // commit. A reopen that failed (the disk still full) leaves the store closed
        // (`Unavailable`): the next call tries to reopen again, so it comes back once
        // there is room, without a restart.
        self.db.with_recovery(
            |e| {
                matches!(
                    e,
                    IdentityStoreError::Engine(_) | IdentityStoreError::Unavailable(_)
                )
            },
            |db| Self::apply_in(db, writes),
        )
    }

    fn apply_in(
        db: &redb::Database,
        writes: &[IdentityWrite],
    ) -> Result<ApplyOutcome, IdentityStoreError> {
        {
            let txn = db.begin_read()?;
            let table = txn.open_table(IDENTITIES)?;
            let mut outcome = ApplyOutcome::default();
            let mut changes = false;
            for write in writes {
                let before = match table.get(write.user.as_slice())? {
                    Some(bytes) => Some(StoredIdentity::decode(bytes.value())?),
                    None => None,
                };
                if step(before.as_ref(), write, &mut outcome).is_some() {
                    changes = true;
                    break;
                }
            }
            if !changes {
                return Ok(outcome);
            }
        }
        let mut outcome = ApplyOutcome::default();
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(IDENTITIES)?;
            for write in writes {
                let before = match table.get(write.user.as_slice())? {
                    Some(bytes) => Some(StoredIdentity::decode(bytes.value())?),
                    None => None,
                };
                if let Some(after) = step(before.as_ref(), write, &mut outcome) {
                    table.insert(write.user.as_slice(), after.encode()?.as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(outcome)
    }

    /// The stored marketing decision of each user (`None`: no row), in one read.
    pub fn decisions(&self, users: &[[u8; 16]]) -> Result<Vec<Option<bool>>, IdentityStoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(IDENTITIES)?;
            if table.is_empty()? {
                return Ok(vec![None; users.len()]);
            }
            users
                .iter()
                .map(|user| match table.get(user.as_slice())? {
                    Some(bytes) => Ok(Some(StoredIdentity::decode(bytes.value())?.marketing)),
                    None => Ok(None),
                })
                .collect()
        })
    }

    /// The stored state of one user.
    pub fn get(&self, user: &[u8; 16]) -> Result<Option<StoredIdentity>, IdentityStoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(IDENTITIES)?;
            match table.get(user.as_slice())? {
                Some(bytes) => StoredIdentity::decode(bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Up to `limit` rows in pseudonym order (for inspection and tests; a push looks users
    /// up with [`IdentityStore::get`]).
    pub fn entries(
        &self,
        limit: usize,
    ) -> Result<Vec<([u8; 16], StoredIdentity)>, IdentityStoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(IDENTITIES)?;
            let mut out = Vec::new();
            for entry in table.iter()?.take(limit) {
                let (key, value) = entry?;
                let user: [u8; 16] = key
                    .value()
                    .try_into()
                    .map_err(|_| IdentityStoreError::Corrupt("a key is not a pseudonym".into()))?;
                out.push((user, StoredIdentity::decode(value.value())?));
            }
            Ok(out)
        })
    }

    /// Users with a row (consent decisions, with or without identity).
    pub fn len(&self) -> Result<u64, IdentityStoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(IDENTITIES)?.len()?)
        })
    }

    pub fn is_empty(&self) -> Result<bool, IdentityStoreError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const U: [u8; 16] = [7; 16];

    fn write(ts_ms: i64, marketing: Option<bool>, email: Option<&str>) -> IdentityWrite {
        IdentityWrite {
            user: U,
            ts_ms,
            marketing,
            email: email.map(|e| e.as_bytes().to_vec()),
            crm_id: None,
        }
    }

    fn open() -> (tempfile::TempDir, IdentityStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::open(&dir.path().join("identity.redb")).unwrap();
        (dir, store)
    }

    #[test]
    fn identity_is_kept_only_with_consent_and_deleted_when_withdrawn() {
        let (_dir, store) = open();
        let outcome = store.apply(&[write(1, None, Some("sealed-a"))]).unwrap();
        assert_eq!(outcome.dropped_no_consent, 1);
        assert!(store.is_empty().unwrap(), "no consent, no row");

        let outcome = store
            .apply(&[write(2, Some(true), None), write(3, None, Some("sealed-b"))])
            .unwrap();
        assert_eq!(outcome.stored, 1);
        let stored = store.get(&U).unwrap().unwrap();
        assert!(stored.marketing);
        assert_eq!(stored.email.as_deref(), Some(b"sealed-b".as_slice()));

        let outcome = store.apply(&[write(4, Some(false), None)]).unwrap();
        assert_eq!(outcome.deleted, 1);
        let stored = store.get(&U).unwrap().unwrap();
        assert!(!stored.marketing);
        assert_eq!(stored.email, None);
        assert_eq!(stored.decided_at_ms, 4);
    }

    #[test]
    fn repeating_a_known_decision_writes_nothing() {
        let (_dir, store) = open();
        store.apply(&[write(5, Some(true), None)]).unwrap();
        let before = store.get(&U).unwrap();
        let outcome = store
            .apply(&[write(5, Some(true), None), write(1, None, None)])
            .unwrap();
        assert_eq!(outcome, ApplyOutcome::default());
        assert_eq!(store.get(&U).unwrap(), before);
        // A request whose first claim changes nothing and second does is still written.
        let outcome = store
            .apply(&[write(5, Some(true), None), write(6, None, Some("e"))])
            .unwrap();
        assert_eq!(outcome.stored, 1);
        assert_eq!(
            store.get(&U).unwrap().unwrap().email.as_deref(),
            Some(b"e".as_slice())
        );
    }

    #[test]
    fn decisions_are_read_per_user() {
        let (_dir, store) = open();
        assert_eq!(store.decisions(&[U]).unwrap(), [None]);
        store.apply(&[write(1, Some(true), None)]).unwrap();
        let other = [9; 16];
        assert_eq!(store.decisions(&[U, other]).unwrap(), [Some(true), None]);
        store.apply(&[write(2, Some(false), None)]).unwrap();
        assert_eq!(store.decisions(&[U]).unwrap(), [Some(false)]);
    }

    #[test]
    fn an_older_yes_does_not_revive_a_later_no() {
        let (_dir, store) = open();
        store.apply(&[write(10, Some(true), Some("e"))]).unwrap();
        store.apply(&[write(20, Some(false), None)]).unwrap();
        let outcome = store.apply(&[write(15, Some(true), Some("late"))]).unwrap();
        assert_eq!(outcome.dropped_no_consent, 1);
        let stored = store.get(&U).unwrap().unwrap();
        assert!(!stored.marketing);
        assert_eq!(stored.email, None);
    }

    /// A reopen that failed (the disk still full, the file not openable) left the store
    /// closed, and `apply` reopened only after an engine error: every later call answered
    /// `Unavailable` until a restart. Here the file is moved aside and a directory takes its
    /// place while the store reopens; once the file is back, the store comes back.
    #[test]
    fn a_store_whose_reopen_failed_comes_back_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.redb");
        let aside = dir.path().join("identity.redb.aside");
        let store = IdentityStore::open(&path).unwrap();
        store.apply(&[write(1, Some(true), Some("e"))]).unwrap();
        std::fs::rename(&path, &aside).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(store.db.reopen().is_err(), "a directory is not a database");
        let closed = store.apply(&[write(2, Some(true), None)]);
        assert!(
            matches!(closed, Err(IdentityStoreError::Unavailable(_))),
            "{closed:?}"
        );
        std::fs::remove_dir(&path).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        // The call that finds the store closed reopens it; the one after writes.
        let _ = store.apply(&[write(3, Some(true), None)]);
        let outcome = store.apply(&[write(4, Some(true), Some("later"))]).unwrap();
        assert_eq!(outcome.stored, 1);
        assert_eq!(
            store.get(&U).unwrap().unwrap().email.as_deref(),
            Some(b"later".as_slice())
        );
    }

    #[test]
    fn records_survive_reopening_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.redb");
        {
            let store = IdentityStore::open(&path).unwrap();
            store
                .apply(&[IdentityWrite {
                    user: U,
                    ts_ms: -5,
                    marketing: Some(true),
                    email: Some(vec![0, 1, 2]),
                    crm_id: Some(vec![]),
                }])
                .unwrap();
        }
        let store = IdentityStore::open(&path).unwrap();
        let stored = store.get(&U).unwrap().unwrap();
        assert_eq!(
            stored,
            StoredIdentity {
                marketing: true,
                decided_at_ms: -5,
                email: Some(vec![0, 1, 2]),
                crm_id: Some(vec![]),
            }
        );
    }

    #[test]
    fn bad_records_are_named_not_misread() {
        let good = StoredIdentity {
            marketing: true,
            decided_at_ms: 1,
            email: Some(b"abc".to_vec()),
            crm_id: None,
        }
        .encode()
        .unwrap();
        assert_eq!(
            StoredIdentity::decode(&good).unwrap().email.unwrap(),
            b"abc"
        );
        let mut other_format = good.clone();
        other_format[0] = 2;
        let error = StoredIdentity::decode(&other_format)
            .unwrap_err()
            .to_string();
        assert!(error.contains("has format 2"), "{error}");
        let error = StoredIdentity::decode(&good[..good.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(error.contains("cut short"), "{error}");
        let mut trailing = good;
        trailing.push(0);
        assert!(StoredIdentity::decode(&trailing).is_err());
        assert!(StoredIdentity::decode(&[]).is_err());
        let too_large = StoredIdentity {
            email: Some(vec![0; 70_000]),
            ..Default::default()
        };
        assert!(matches!(
            too_large.encode(),
            Err(IdentityStoreError::TooLarge(70_000))
        ));
    }
}
