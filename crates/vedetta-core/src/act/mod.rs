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
//! - [`stage`]: the engine and the window run by the processor record by record, the
//!   trigger set in force at an offset, outputs numbered for the router, and the state's
//!   section of the processor's snapshot.

pub mod engine;
pub mod push;
pub mod segment_window;
pub mod stage;
#[cfg(test)]
mod test_traffic;
pub mod triggers;
