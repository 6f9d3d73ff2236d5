//! The demo's traffic: a month of history ending now, then live traffic (issue 11).
//!
//! `vedetta serve --demo` loads [`history_config`] through the real intake, then streams
//! [`live_config`] in real time. Both derive from one seed, so two loads of the same seed
//! give the same KPIs for the history range.
//!
//! This is the interface the demo runtime builds on; the shape of the traffic (daily and
//! weekly rhythm, payday, a promotion day, believable spend, device and region shares, a
//! campaign drifting over its CPA budget in the live part) is filled in behind it.

use crate::config::SynthConfig;

/// Days of history the demo loads on first start.
pub const HISTORY_DAYS: i64 = 30;

/// The generator configuration of the history: event times from `end_ms - HISTORY_DAYS`
/// days; callers take arrivals while `arrival_ms < end_ms`.
pub fn history_config(seed: u64, end_ms: i64) -> SynthConfig {
    SynthConfig {
        seed,
        start_ms: end_ms - HISTORY_DAYS * 86_400_000,
        users: 200_000,
        sessions_per_minute: 8.0,
        ..SynthConfig::default()
    }
}

/// The generator configuration of the live part, from `start_ms` on, at about
/// `events_per_second`.
pub fn live_config(seed: u64, start_ms: i64, events_per_second: f64) -> SynthConfig {
    // About five events per session (calibrated properly behind this interface).
    let sessions_per_minute = (events_per_second * 60.0 / 5.0).max(0.1);
    SynthConfig {
        seed: seed ^ 0x11FE,
        start_ms,
        users: 200_000.max((sessions_per_minute * 100.0) as u64),
        sessions_per_minute,
        ..SynthConfig::default()
    }
}
