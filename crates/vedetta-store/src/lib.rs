//! Embedded storage adapters.
//!
//! - [`log`]: the durable, append-only event log that intake writes and the pipeline reads.
//!   An accepted event is one that this log has fsynced.
//!
//! Built on `redb`, an ACID embedded B-tree in pure Rust: its copy-on-write commit protocol
//! already survives a crash at any instant, so this crate adds only what a log needs on top
//! (offsets that count records, batch checksums, group commit, retention). See
//! `docs/storage.md` for the measurements behind the choice.

pub mod log;

pub use log::{
    AppendError, EncodedBatch, EventLog, GroupCommitWriter, LogError, LogStats, WriterConfig,
};
