//! Event time and the clock it is compared against.
//!
//! Event time (`ts` in EVENTS.md) is when something happened; it is what windows, sessions
//! and dedup are computed on. It is kept as whole epoch milliseconds: the contract's
//! precision, cheap to compare and to store. Wall-clock time enters the core only through a
//! [`Clock`] passed in by the caller, so every computation can be replayed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds since the Unix epoch, UTC, at which an event happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventTime(pub i64);

impl EventTime {
    /// The epoch milliseconds.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// RFC 3339 in UTC with millisecond precision, or the raw number when out of range.
    pub fn to_rfc3339(self) -> String {
        match jiff::Timestamp::from_millisecond(self.0) {
            Ok(ts) => format!("{ts:.3}"),
            Err(_) => self.0.to_string(),
        }
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// The source of "now" for everything that must compare with wall-clock time (the
/// future-timestamp check at intake, retention, processing latency).
///
/// Adapters pass the system clock; tests pass a [`FixedClock`].
pub trait Clock: Send + Sync {
    /// Current time in epoch milliseconds.
    fn now_ms(&self) -> i64;
}

/// A clock that always says the same time. For tests and replays.
#[derive(Clone, Copy, Debug)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_millis() {
        assert_eq!(
            EventTime(1_712_327_985_123).to_rfc3339(),
            "2024-04-05T14:39:45.123Z"
        );
        assert_eq!(EventTime(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
    }
}
