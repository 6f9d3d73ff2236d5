//! Snapshots kept in a file beside the store, for the ones encoded off the processor's
//! thread: that thread writes and fsyncs the file, and the commit that makes it the
//! store's snapshot writes only a small pointer to it in the `snapshot` table (a snapshot
//! of a million users is over 100 MB: written into the store, its commit alone took
//! 0.7 s of the processor's thread).
//!
//! ```text
//! file:    <store file name>.snapshot-<offset, 20 digits>-<xxh3-64, 16 hex digits>
//!          the snapshot's bytes, as inline
//! pointer: [magic "VDSF"][format u8 = 2][offset u64 LE][length u64 LE][xxh3-64 u64 LE]
//! ```
//!
//! A file is complete before a commit points to it (written under a temporary name,
//! fsynced, renamed, the directory fsynced); a crash before that commit leaves a file no
//! pointer names, removed with the others after the next commit of a snapshot. The pointer
//! carries the length and a hash of the bytes, so a file damaged or swapped since is an
//! error, never a misread state. The file is named by its hash as well as its offset: two
//! writers of one offset (one given up by a processor rebuilt after a failure, and the
//! rebuilt one's) write two files, and neither replaces the one a commit names. A pointer is told from an inline snapshot by its magic
//! (inline ones start with `VDSN`); a build from before this format reads a pointer as an
//! unknown snapshot and stops with that error rather than misreading it.

use super::StoreError;
use std::io::Write;
use std::path::{Path, PathBuf};

const POINTER_MAGIC: [u8; 4] = *b"VDSF";
/// The pointer format this build writes: 2 names the file by offset and hash. It reads 1
/// too (the first builds of 2026-12-04: the file named by offset only); a build that reads
/// only 1 refuses a 2 by its number instead of looking for a file that is not there.
pub const SNAPSHOT_POINTER_FORMAT: u8 = 2;
const SNAPSHOT_POINTER_FORMAT_OFFSET_NAMED: u8 = 1;
const POINTER_LEN: usize = 4 + 1 + 8 + 8 + 8;

/// A snapshot written to its file, for a commit to make it the store's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The log offset the snapshot describes.
    pub offset: u64,
    pub len: u64,
    pub hash: u64,
}

fn io_error(what: &str, path: &Path, error: &std::io::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(
        error.kind(),
        format!("{what} {}: {error}", path.display()),
    ))
}

fn prefix(store_path: &Path) -> String {
    let name = store_path
        .file_name()
        .map_or_else(|| "kpis".into(), |n| n.to_string_lossy().into_owned());
    format!("{name}.snapshot-")
}

pub(super) fn path_of(store_path: &Path, offset: u64, hash: u64) -> PathBuf {
    store_path.with_file_name(format!("{}{offset:020}-{hash:016x}", prefix(store_path)))
}

/// The name the first builds of 2026-12-04 gave the file (offset only), still read.
fn path_before_hash_of(store_path: &Path, offset: u64) -> PathBuf {
    store_path.with_file_name(format!("{}{offset:020}", prefix(store_path)))
}

/// Where a writer puts the file of the snapshot of `offset` until it is complete (its
/// final name carries the hash of bytes not all written yet): a name that starts as the
/// snapshot files' do, so that one left by a writer that never finished (a crash, a
/// process that exited while a given-up snapshot was being written) goes with them. Each
/// write has its own (`write`): a writer given up (a processor rebuilt after a failure)
/// may still be writing the same offset.
pub(super) fn temporary_path(store_path: &Path, offset: u64, write: u64) -> PathBuf {
    store_path.with_file_name(format!("{}{offset:020}.tmp{write}", prefix(store_path)))
}

/// The directory holding the store (and its snapshot files).
fn directory_of(store_path: &Path) -> PathBuf {
    match store_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    }
}

/// Writes snapshot files beside a store, knowing only its path
/// ([`super::KpiStore::snapshot_file_writer`]).
#[derive(Debug, Clone)]
pub struct SnapshotFileWriter {
    store_path: PathBuf,
}

impl SnapshotFileWriter {
    pub(super) fn new(store_path: &Path) -> Self {
        Self {
            store_path: store_path.to_path_buf(),
        }
    }

    /// As [`super::KpiStore::write_snapshot_file`].
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<SnapshotFile, StoreError> {
        let mut file = self.begin(offset)?;
        file.write_all(bytes)
            .map_err(|e| io_error("writing", &file.temporary, &e))?;
        file.finish()
    }

    /// Starts the file of the snapshot of `offset`, for its bytes to be written into as
    /// they are encoded (a snapshot of gigabytes is then never held whole in memory);
    /// [`PendingSnapshotFile::finish`] makes it durable. Given up unfinished (an encoding
    /// error, a full disk), nothing of it is left behind: a partial file on a full disk
    /// would keep the disk full.
    pub fn begin(&self, offset: u64) -> Result<PendingSnapshotFile, StoreError> {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temporary = temporary_path(&self.store_path, offset, write);
        let file =
            std::fs::File::create(&temporary).map_err(|e| io_error("creating", &temporary, &e))?;
        Ok(PendingSnapshotFile {
            store_path: self.store_path.clone(),
            offset,
            file: Some(std::io::BufWriter::with_capacity(WRITE_BUFFER, file)),
            temporary,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            len: 0,
        })
    }
}

/// The bytes of small writes gathered before they go to the kernel. Writes of this size
/// or more (the snapshot encoder's chunks) go straight through, copied once.
const WRITE_BUFFER: usize = 64 * 1024;

/// A snapshot file being written ([`SnapshotFileWriter::begin`]): written into as any
/// [`Write`], hashed as it goes; removed when dropped unfinished.
pub struct PendingSnapshotFile {
    store_path: PathBuf,
    offset: u64,
    /// `None` once finished.
    file: Option<std::io::BufWriter<std::fs::File>>,
    temporary: PathBuf,
    hasher: xxhash_rust::xxh3::Xxh3,
    len: u64,
}

impl std::fmt::Debug for PendingSnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (f.debug_struct("PendingSnapshotFile"))
            .field("temporary", &self.temporary)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Write for PendingSnapshotFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let file = self.file.as_mut().ok_or_else(|| {
            std::io::Error::other("a snapshot file written after it was finished")
        })?;
        let written = file.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl PendingSnapshotFile {
    /// Makes the file durable under its name (the offset and the bytes' hash): flushed,
    /// fsynced, renamed, the directory fsynced. On a failure nothing of it is left.
    pub fn finish(mut self) -> Result<SnapshotFile, StoreError> {
        let hash = self.hasher.digest();
        let path = path_of(&self.store_path, self.offset, hash);
        let temporary = self.temporary.clone();
        let Some(file) = self.file.take() else {
            return Err(io_error(
                "finishing",
                &temporary,
                &std::io::Error::other("finished twice"),
            ));
        };
        let written = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all())
            .map_err(|e| io_error("writing", &temporary, &e))
            .and_then(|()| {
                std::fs::rename(&temporary, &path).map_err(|e| io_error("renaming", &temporary, &e))
            });
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
        let dir = directory_of(&self.store_path);
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing the directory", &dir, &e))?;
        Ok(SnapshotFile {
            offset: self.offset,
            len: self.len,
            hash,
        })
    }
}

impl Drop for PendingSnapshotFile {
    fn drop(&mut self) {
        // Unfinished: given up (finished, the file is no longer there by that name).
        if let Some(file) = self.file.take() {
            drop(file.into_parts());
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// The pointer a commit stores in place of the bytes.
pub(super) fn pointer(file: &SnapshotFile) -> Vec<u8> {
    let mut out = Vec::with_capacity(POINTER_LEN);
    out.extend_from_slice(&POINTER_MAGIC);
    out.push(SNAPSHOT_POINTER_FORMAT);
    out.extend_from_slice(&file.offset.to_le_bytes());
    out.extend_from_slice(&file.len.to_le_bytes());
    out.extend_from_slice(&file.hash.to_le_bytes());
    out
}

/// Where a stored snapshot value says the bytes are.
enum Located<'a> {
    /// In the value itself (stores of older builds).
    Inline(&'a [u8]),
    /// In the file its pointer names, of this length and hash.
    File { path: PathBuf, len: u64, hash: u64 },
}

const MISSING: &str = "reading the store's snapshot (a file beside it: back the two up and \
                       restore them together; without it, `vedetta replay` rebuilds the state \
                       from the log)";

fn locate<'a>(store_path: &Path, value: &'a [u8]) -> Result<Located<'a>, StoreError> {
    if !value.starts_with(&POINTER_MAGIC) {
        return Ok(Located::Inline(value));
    }
    let format = value.get(4).copied().unwrap_or(0);
    let known = [
        SNAPSHOT_POINTER_FORMAT_OFFSET_NAMED,
        SNAPSHOT_POINTER_FORMAT,
    ];
    if value.len() != POINTER_LEN || !known.contains(&format) {
        return Err(StoreError::Corrupt(format!(
            "a snapshot pointer of {} bytes, format {}; this build reads formats \
             {SNAPSHOT_POINTER_FORMAT_OFFSET_NAMED} and {SNAPSHOT_POINTER_FORMAT}, {POINTER_LEN} \
             bytes",
            value.len(),
            format
        )));
    }
    let word = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&value[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let (offset, len, hash) = (word(5), word(13), word(21));
    let path = if format == SNAPSHOT_POINTER_FORMAT_OFFSET_NAMED {
        path_before_hash_of(store_path, offset)
    } else {
        path_of(store_path, offset, hash)
    };
    Ok(Located::File { path, len, hash })
}

fn not_the_committed(path: &Path, len: u64, found: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "the snapshot file {} is not the one the store committed ({found} bytes, {len} \
         expected, or another hash); `vedetta replay` rebuilds the state from the log",
        path.display(),
    ))
}

/// The snapshot's bytes from a stored value: the value itself (inline), or the file its
/// pointer names, checked.
pub(super) fn resolve(store_path: &Path, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let (path, len, hash) = match locate(store_path, value)? {
        Located::Inline(bytes) => return Ok(bytes.to_vec()),
        Located::File { path, len, hash } => (path, len, hash),
    };
    let bytes = std::fs::read(&path).map_err(|e| io_error(MISSING, &path, &e))?;
    if bytes.len() as u64 != len || xxhash_rust::xxh3::xxh3_64(&bytes) != hash {
        return Err(not_the_committed(&path, len, bytes.len() as u64));
    }
    Ok(bytes)
}

/// What [`resolve`] would say of a file missing or of another length, without reading it
/// (the hash is checked when it is read).
pub(super) fn check_present(store_path: &Path, value: &[u8]) -> Result<(), StoreError> {
    if let Located::File { path, len, .. } = locate(store_path, value)? {
        let found = std::fs::metadata(&path)
            .map_err(|e| io_error(MISSING, &path, &e))?
            .len();
        if found != len {
            return Err(not_the_committed(&path, len, found));
        }
    }
    Ok(())
}

/// Removes the snapshot files (and unfinished ones) but the one of `keep`. Best effort:
/// a file left behind costs disk only, and goes at the next snapshot's commit.
pub(super) fn remove_others(store_path: &Path, keep: Option<&SnapshotFile>) -> usize {
    let prefix = prefix(store_path);
    let kept = keep.map(|file| path_of(store_path, file.offset, file.hash));
    let Ok(entries) = std::fs::read_dir(directory_of(store_path)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(&prefix));
        if ours && kept.as_ref() != Some(&path) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}
