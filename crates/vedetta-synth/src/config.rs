//! What to generate: the knobs of the synthetic traffic, their defaults and their validation.
//!
//! `SynthConfig` is the raw shape callers fill (from CLI flags, a demo preset, a test);
//! [`SynthConfig::validate`] is the gate every generator passes through, so the generator never
//! sees a share outside `[0, 1]` or a rate that would stall it.

use std::fmt;

pub use crate::demo::DemoShape;

/// 2024-04-05T12:00:00Z: a Friday around noon, a busy time for an Italian shop.
pub const DEFAULT_START_MS: i64 = 1_712_318_400_000;

/// 2200-01-01T00:00:00Z. Later starts are refused so that even a very long run stays inside
/// the years RFC 3339 can write.
pub const MAX_START_MS: i64 = 7_258_118_400_000;

/// Population limit: per-user state is two bits, so this caps it at 25 MB.
pub const MAX_USERS: u64 = 100_000_000;

/// Arrival-rate limit: one session per 60 µs of event time. The reorder buffer grows with the
/// rate (it holds a few minutes of event time; see `Generator`).
pub const MAX_SESSIONS_PER_MINUTE: f64 = 1_000_000.0;

/// A user starts at most one session per this many minutes (30 minutes of inactivity end a
/// session; see `population`), so `users` must be at least `sessions_per_minute` times this.
/// Near that limit many session starts find only busy users and are skipped (counted in
/// `SynthStats::sessions_skipped`); a population of 100 × `sessions_per_minute` or more avoids
/// that and gives realistic return rates.
pub const MIN_USERS_PER_SESSION_PER_MINUTE: f64 = 31.0;

/// The normal arrival jitter must stay below the one-minute minimum delay of late events, so
/// that "late" remains a separate population.
pub const MAX_DISORDER_MS: i64 = 59_000;

/// The knobs of the synthetic traffic. Two generators built from equal configs produce
/// byte-identical output.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Everything random derives from this.
    pub seed: u64,
    /// Event time of the first session start, epoch milliseconds.
    pub start_ms: i64,
    /// Size of the user population; udids are reused across sessions.
    pub users: u64,
    /// Arrival intensity of new sessions, per minute of event time (a Poisson process).
    pub sessions_per_minute: f64,
    /// Share of logical events that are sent twice: half as an exact retry (same `event_id`,
    /// 0.1–5 s later), half as a double-fire (new `event_id`, `ts` 1–99 ms later).
    pub duplicate_share: f64,
    /// Share of logical events that arrive 1–10 minutes after their event time.
    pub late_share: f64,
    /// Share of sessions delivered whole 16–40 minutes after they happen (a phone that was
    /// offline, a batch upload): later than the pipeline's 15-minute allowed lateness, so
    /// their events are counted as `late`. The delay is common to the session, so its events
    /// keep their order and gaps.
    pub late_session_share: f64,
    /// Other events arrive 0..=`max_disorder_ms` after their event time, hence out of order.
    pub max_disorder_ms: i64,
    /// Share of registering sessions whose checkout and purchase follow the registration by
    /// 0.5–4.5 s (the contract's `fast_checkout` flag).
    pub fast_checkout_share: f64,
    /// Emit ad spend: one record per paid (channel, campaign) per minute of event time.
    pub spend: bool,
    /// Where the attribution fields go; see [`Tagging`].
    pub tagging: Tagging,
    /// Share of purchases whose order is sent again with a new `event_id` and the same
    /// `order_id`: half as a thank-you page reloaded 2–60 s later (same user, same browser),
    /// half as the shop's webhook 5 s–10 min later (server side, the user under another id).
    /// The contract counts each copy as a same-order duplicate.
    pub order_resend_share: f64,
    /// Share of purchases refunded (issue 13): one refund (half of them of the whole
    /// value) or two partial ones, minutes, hours or days after the order, as the shop's
    /// `refunds/create` webhook sends them; one in twenty asks more than the order's value.
    /// Its own random stream: the share leaves every other record as it was. Off (0) by
    /// default, so that existing configurations (benchmarks, recorded truth files, the
    /// demo) produce the same bytes; the end-to-end tests turn it on.
    pub refund_share: f64,
    /// The demo's shape of traffic (rhythm, spend following clicks, device and region shares,
    /// a drifting campaign; see [`crate::demo`]). `None`, the default, is the flat traffic
    /// every other use gets, byte for byte as before the demo shape existed.
    pub demo: Option<DemoShape>,
}

/// How sessions carry their attribution (UTM parameters, click ids, referrer, `channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tagging {
    /// As real tags send it: only a session's landing event (its first) carries the landing
    /// URL's UTM parameters and click ids, the external referrer and, when the client sets it,
    /// `channel` and `campaign`; the events after it carry none. About a third of returning
    /// users' sessions are typed-in direct visits that carry nothing at all; the others come
    /// back through any other channel.
    #[default]
    Realistic,
    /// Every event of a session carries its session's attribution (the behaviour before
    /// realistic tagging; with `order_resend_share = 0` the output is byte for byte the same).
    EveryEvent,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 0x7ED3_77A0,
            start_ms: DEFAULT_START_MS,
            users: 50_000,
            sessions_per_minute: 120.0,
            duplicate_share: 0.02,
            late_share: 0.002,
            late_session_share: 0.003,
            max_disorder_ms: 3_000,
            fast_checkout_share: 0.01,
            spend: true,
            tagging: Tagging::Realistic,
            order_resend_share: 0.05,
            refund_share: 0.0,
            demo: None,
        }
    }
}

/// Why a [`SynthConfig`] was refused; each variant names the field.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A `*_share` field outside `[0, 1]` or not a number.
    Share {
        field: &'static str,
        value: f64,
    },
    SessionsPerMinute(f64),
    Users(u64),
    MaxDisorderMs(i64),
    StartMs(i64),
    /// `demo.spend_every_ms` is not a whole number of minutes between 1 and 60.
    DemoSpendEveryMs(i64),
    /// The population cannot sustain the session rate: each user starts at most one session
    /// per 31 minutes.
    TooFewUsers {
        users: u64,
        sessions_per_minute: f64,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Share { field, value } => {
                write!(f, "`{field}` must be a share between 0 and 1, got {value}")
            }
            ConfigError::SessionsPerMinute(value) => write!(
                f,
                "`sessions_per_minute` must be above 0 and at most {MAX_SESSIONS_PER_MINUTE}, got {value}"
            ),
            ConfigError::Users(value) => {
                write!(f, "`users` must be between 1 and {MAX_USERS}, got {value}")
            }
            ConfigError::MaxDisorderMs(value) => write!(
                f,
                "`max_disorder_ms` must be between 0 and {MAX_DISORDER_MS} (late events start at one minute), got {value}"
            ),
            ConfigError::TooFewUsers {
                users,
                sessions_per_minute,
            } => write!(
                f,
                "`users` ({users}) is too small for `sessions_per_minute` ({sessions_per_minute}): \
                 a user starts at most one session per {MIN_USERS_PER_SESSION_PER_MINUTE} minutes, \
                 so at least {} users are needed (100 times the rate is comfortable)",
                (sessions_per_minute * MIN_USERS_PER_SESSION_PER_MINUTE).ceil()
            ),
            ConfigError::DemoSpendEveryMs(value) => write!(
                f,
                "`demo.spend_every_ms` must be a whole number of minutes from 60000 to 3600000, got {value}"
            ),
            ConfigError::StartMs(value) => write!(
                f,
                "`start_ms` must be between 0 (1970) and {MAX_START_MS} (2200), got {value}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl SynthConfig {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("duplicate_share", self.duplicate_share),
            ("late_share", self.late_share),
            ("late_session_share", self.late_session_share),
            ("fast_checkout_share", self.fast_checkout_share),
            ("order_resend_share", self.order_resend_share),
            ("refund_share", self.refund_share),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::Share { field, value });
            }
        }
        let rate = self.sessions_per_minute;
        if !(rate > 0.0 && rate <= MAX_SESSIONS_PER_MINUTE) {
            return Err(ConfigError::SessionsPerMinute(rate));
        }
        if !(1..=MAX_USERS).contains(&self.users) {
            return Err(ConfigError::Users(self.users));
        }
        if (self.users as f64) < rate * MIN_USERS_PER_SESSION_PER_MINUTE {
            return Err(ConfigError::TooFewUsers {
                users: self.users,
                sessions_per_minute: rate,
            });
        }
        if !(0..=MAX_DISORDER_MS).contains(&self.max_disorder_ms) {
            return Err(ConfigError::MaxDisorderMs(self.max_disorder_ms));
        }
        if !(0..=MAX_START_MS).contains(&self.start_ms) {
            return Err(ConfigError::StartMs(self.start_ms));
        }
        if let Some(demo) = &self.demo {
            let every = demo.spend_every_ms;
            if !(60_000..=3_600_000).contains(&every) || every % 60_000 != 0 {
                return Err(ConfigError::DemoSpendEveryMs(every));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_issue() {
        let config = SynthConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.duplicate_share, 0.02);
        assert_eq!(config.late_share, 0.002);
        assert_eq!(config.max_disorder_ms, 3_000);
        assert_eq!(config.fast_checkout_share, 0.01);
        assert!(config.spend);
    }

    #[test]
    fn each_bad_field_is_named() {
        let bad = |change: fn(&mut SynthConfig)| {
            let mut config = SynthConfig::default();
            change(&mut config);
            config
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(bad(|c| c.duplicate_share = 1.5).contains("`duplicate_share`"));
        assert!(bad(|c| c.late_share = f64::NAN).contains("`late_share`"));
        assert!(bad(|c| c.fast_checkout_share = -0.1).contains("`fast_checkout_share`"));
        assert!(bad(|c| c.order_resend_share = 2.0).contains("`order_resend_share`"));
        assert!(bad(|c| c.sessions_per_minute = 0.0).contains("`sessions_per_minute`"));
        assert!(bad(|c| c.sessions_per_minute = f64::INFINITY).contains("`sessions_per_minute`"));
        assert!(bad(|c| c.users = 0).contains("`users`"));
        assert!(bad(|c| c.users = 3_000).contains("at least 3720 users"));
        assert!(bad(|c| c.max_disorder_ms = 60_000).contains("`max_disorder_ms`"));
        assert!(bad(|c| c.start_ms = -1).contains("`start_ms`"));
        let mut demo = crate::demo::history_config(1, DEFAULT_START_MS);
        assert_eq!(demo.validate(), Ok(()));
        if let Some(shape) = &mut demo.demo {
            shape.spend_every_ms = 90_000;
        }
        assert!(
            demo.validate()
                .is_err_and(|e| e.to_string().contains("`demo.spend_every_ms`"))
        );
    }
}
