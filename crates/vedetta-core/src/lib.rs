//! Vedetta's pure core.
//!
//! Everything here is plain, deterministic Rust: no sockets, no files, no async runtime and
//! no clock it was not handed. The adapters around it (the HTTP server, the log, the store)
//! feed it bytes and timestamps and persist what it returns. Because of that, a test, a
//! replay of the log and a crash recovery are the same operation.
//!
//! The picture (see `ARCHITECTURE.md`):
//!
//! ```text
//! intake (parse, validate, pseudonymize) ──► log record ──► pipeline (dedup, rules,
//!                                                           enrich, sessions, windows)
//! ```
//!
//! - [`intake`] turns request bodies into validated, pseudonymized records, judging every
//!   event alone and naming the field when it refuses one.
//! - [`record`] is the compact binary form kept in the log, so nothing downstream parses
//!   JSON again.
//! - [`privacy`] holds the keyed pseudonymizer and IP truncation: nothing personal leaves
//!   intake in clear.
//! - [`enrich`] gives each event its dimensions: channel (given or derived by the default
//!   grouping), campaign, device class from the user agent, region from the field or GeoIP.
//! - [`pipeline`] is the streaming core: dedup, sequence flags, sessions and windowed KPI
//!   deltas, exact under out-of-order arrival.
//! - [`time`] gives event time its own types.

pub mod act;
mod encoding;
pub mod enrich;
pub mod intake;
pub mod pipeline;
pub mod privacy;
pub mod record;
pub mod sources;
pub mod time;
pub mod watch;

pub use encoding::WriteError;
pub use record::{EventKind, LogRecord, SpendRecord, StoredEvent};
pub use time::EventTime;
