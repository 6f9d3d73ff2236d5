//! Act (issue 12): user-level triggers that select users and push them to destinations.
//!
//! ```text
//! accepted log records ─► engine (per-user facts, per-segment state) ─► outputs
//!                          ▲ KPI totals per minute (the alert rules' CPA)
//! outputs ─► (adapter) pending pushes ─► every `interval`: one Push per trigger, segment
//!            and destination ─► outbox (same commit as the engine state and log offset)
//! ```
//!
//! - [`triggers`]: the TOML shape and its validation.
//! - [`engine`]: the state machines, pure and deterministic.
//! - [`segment_window`]: the 1-minute rows segment triggers are judged on, from the
//!   pipeline's own deltas, judged at the record whose watermark passes a minute's end.
//! - [`push`]: what goes out, and the `seed` payload.

pub mod engine;
pub mod push;
pub mod segment_window;
pub mod triggers;
