//! Embedded storage adapters.
//!
//! - [`log`]: the durable, append-only event log that intake writes and the pipeline reads.
//!   An accepted event is one that this log has fsynced.
//! - [`kpi_store`]: aggregated KPI rows, the pipeline snapshot and the consumed offset,
//!   committed together: the ground of exactly-once processing.
//! - [`watch_store`]: alert state, history and silences, committed with the notifications
//!   they cause.
//! - [`outbox`]: the durable outbox of alert notifications and its dead-letter list.
//! - [`trigger_store`]: trigger state, consumed offset, pending pushes and firings.
//!
//! Built on `redb`, an ACID embedded B-tree in pure Rust: its copy-on-write commit protocol
//! already survives a crash at any instant, so this crate adds only what a log needs on top
//! (offsets that count records, batch checksums, group commit, retention). See
//! `docs/storage.md` for the measurements behind the choice.

mod error;
pub mod identity_store;
pub mod inbox;
pub mod kpi_store;
pub mod log;
pub mod outbox;
pub mod reopen;
pub mod trigger_store;
pub mod watch_store;

pub use identity_store::{ApplyOutcome, IdentityStore, IdentityStoreError, IdentityWrite};
pub use kpi_store::{
    Commit, KpiStore, MigrationReport, PendingSnapshotFile, Progress, RowKey, RowView,
    SettingsCheck, SnapshotFile, SnapshotFileWriter, SpendRowKey, StoreError,
};
pub use log::{
    AppendError, AppendFailure, EncodedBatch, EventLog, GroupCommitWriter, LogError, LogStats,
    Stored, WriterConfig,
};
pub use watch_store::{HistoryEntry, WatchState, WatchStore, WatchStoreError};
