//! What an engine (redb) failure means to a caller, kept as a kind rather than flattened
//! into a string: the processor retries what can succeed later, answers 507/503 on a full
//! disk, reopens after a failed sync and stops on corruption.

use std::io;

/// A redb failure, classified.
#[derive(Debug)]
pub(crate) enum EngineFailure {
    /// The operating system refused a read, write or sync.
    Io(io::Error),
    /// redb's `PreviousIo`: an earlier I/O failure left the open database unusable until
    /// it is reopened (its in-memory state may no longer match the file).
    NeedsReopen,
    /// The file does not hold what redb wrote.
    Corrupt(String),
    /// Another process (or handle) holds the file.
    AlreadyOpen,
    /// Anything else: a bug or misuse, not a condition of the disk.
    Other(String),
}

impl From<redb::Error> for EngineFailure {
    fn from(error: redb::Error) -> Self {
        match error {
            redb::Error::Io(error) => EngineFailure::Io(error),
            redb::Error::Backend(error) => match error.downcast::<io::Error>() {
                Ok(error) => EngineFailure::Io(*error),
                Err(error) => EngineFailure::Other(error.to_string()),
            },
            redb::Error::PreviousIo => EngineFailure::NeedsReopen,
            redb::Error::Corrupted(message) => EngineFailure::Corrupt(message),
            redb::Error::DatabaseAlreadyOpen => EngineFailure::AlreadyOpen,
            other => EngineFailure::Other(other.to_string()),
        }
    }
}

/// `ENOSPC` and `EDQUOT` on Linux: what a full disk or an exhausted quota answers.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// Whether an I/O error means "no space left": the disk or a quota is full.
pub(crate) fn io_is_storage_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(error.raw_os_error(), Some(ENOSPC | EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_from_other_io_errors() {
        assert!(io_is_storage_full(&io::Error::from_raw_os_error(28)));
        assert!(io_is_storage_full(&io::Error::from(
            io::ErrorKind::StorageFull
        )));
        assert!(io_is_storage_full(&io::Error::from(
            io::ErrorKind::QuotaExceeded
        )));
        assert!(!io_is_storage_full(&io::Error::from_raw_os_error(5))); // EIO
        assert!(!io_is_storage_full(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
        let full = EngineFailure::from(redb::Error::Io(io::Error::from_raw_os_error(28)));
        assert!(matches!(full, EngineFailure::Io(e) if io_is_storage_full(&e)));
        assert!(matches!(
            EngineFailure::from(redb::Error::PreviousIo),
            EngineFailure::NeedsReopen
        ));
        assert!(matches!(
            EngineFailure::from(redb::Error::Corrupted("x".into())),
            EngineFailure::Corrupt(m) if m == "x"
        ));
    }
}
