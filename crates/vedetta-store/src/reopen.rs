//! A redb database that can be closed and opened again while the program runs.
//!
//! redb latches the first failed write (a full disk, an I/O error): from then on every
//! operation on that `Database` answers `PreviousIo` until it is closed and opened again.
//! Its commit protocol guarantees the file still holds the last successful commit, so
//! reopening is safe; it is also the only way back. Without it, one full disk would need a
//! restart of the server to clear, and a server that needs a person to come back is not one
//! that survives a weekend.
//!
//! [`ReopeningDatabase`] holds the `Database` behind a lock. Every operation runs inside
//! [`ReopeningDatabase::with`], which holds a read guard for the whole operation, so no
//! transaction outlives the handle it came from. [`ReopeningDatabase::reopen`] takes the
//! write guard (waiting for operations in flight), drops the failed handle and opens the
//! file again. While the file cannot be opened (the disk is still full and redb needs to
//! repair), the slot is empty and operations fail with [`Unavailable`], a retryable error.

use redb::{Database, DatabaseError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

/// The database is being reopened after an I/O failure, or could not be reopened yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the database is reopening after a storage failure; retry shortly")]
pub struct Unavailable;

/// A redb database that survives its own I/O failures by being reopened.
#[derive(Debug)]
pub struct ReopeningDatabase {
    path: PathBuf,
    cache_bytes: usize,
    db: RwLock<Option<Database>>,
    reopens: AtomicU64,
}

impl ReopeningDatabase {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, DatabaseError> {
        let db = Self::open_file(path, cache_bytes)?;
        Ok(Self {
            path: path.to_path_buf(),
            cache_bytes,
            db: RwLock::new(Some(db)),
            reopens: AtomicU64::new(0),
        })
    }

    fn open_file(path: &Path, cache_bytes: usize) -> Result<Database, DatabaseError> {
        Database::builder().set_cache_size(cache_bytes).create(path)
    }

    /// Runs `operation` on the database, holding it open for the whole call.
    pub fn with<T, E: From<Unavailable>>(
        &self,
        operation: impl FnOnce(&Database) -> Result<T, E>,
    ) -> Result<T, E> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(db) => operation(db),
            None => Err(E::from(Unavailable)),
        }
    }

    /// Runs `operation` like [`Self::with`], then reopens the database if the operation
    /// failed with a storage failure (`storage_failed`: an I/O error, redb's `PreviousIo`,
    /// or [`Unavailable`] because an earlier reopen did not succeed yet). The error is
    /// returned all the same: the call changed nothing, and the next one finds the file
    /// reopened. If it cannot be reopened yet (the disk is still full), the next call tries
    /// again.
    pub fn with_recovery<T, E: From<Unavailable>>(
        &self,
        storage_failed: impl FnOnce(&E) -> bool,
        operation: impl FnOnce(&Database) -> Result<T, E>,
    ) -> Result<T, E> {
        let result = self.with(operation);
        if let Err(error) = &result
            && storage_failed(error)
        {
            let _ = self.reopen();
        }
        result
    }

    /// The open database, held open until the guard is dropped: for operations that are
    /// easier to write without a closure (a scan that visits rows).
    pub fn read_guard(&self) -> Result<OpenGuard<'_>, Unavailable> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        if guard.is_some() {
            Ok(OpenGuard(guard))
        } else {
            Err(Unavailable)
        }
    }

    /// Closes the database and opens it again: the way out of redb's latched I/O failure.
    /// Waits for the operations in flight. On failure the database stays closed (every
    /// operation answers [`Unavailable`]) and a later call tries again.
    pub fn reopen(&self) -> Result<(), DatabaseError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // The failed handle must be gone before the file is opened again: redb locks it.
        drop(guard.take());
        let db = Self::open_file(&self.path, self.cache_bytes)?;
        *guard = Some(db);
        self.reopens.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many times the database was reopened since start.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether a redb failure is one of the disk's (an I/O error, or redb's `PreviousIo` latch
/// after one): the handle needs [`ReopeningDatabase::reopen`] before it can work again.
pub fn is_storage_failure(error: &redb::Error) -> bool {
    match error {
        redb::Error::Io(_) | redb::Error::PreviousIo => true,
        redb::Error::Backend(error) => error.is::<std::io::Error>(),
        _ => false,
    }
}

/// A database held open (see [`ReopeningDatabase::read_guard`]).
#[derive(Debug)]
pub struct OpenGuard<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for OpenGuard<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        // Checked when the guard was made, and nobody can empty the slot while it is held.
        match self.0.as_ref() {
            Some(db) => db,
            None => unreachable!("an OpenGuard is only made over an open database"),
        }
    }
}
