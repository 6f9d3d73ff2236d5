//! The demo's rhythm: how busy an Italian shop is at a given instant, relative to an average
//! weekday hour (issue 11).
//!
//! The generator's session starts are a Poisson process; with a rhythm it draws candidates at
//! the busiest possible rate ([`MAX_INTENSITY`] times the base rate) and keeps each with
//! probability `intensity(t) / MAX_INTENSITY` (thinning, Lewis and Shedler 1979), which gives
//! exactly a Poisson process of intensity `base · intensity(t)`.
//!
//! Time is Italian wall-clock time (`Europe/Rome`, EU summer time rules, see
//! `rfc3339::rome_offset_minutes`; no time-zone database): evenings peak around 21–22h at
//! about 1.7, nights fall to about 0.1, Sunday mornings are halved, the 27th (Italian payday)
//! is 1.3 times busier and the 28th 1.15, and one promotion day is 2.5 times busier. The shape
//! is an assumption drawn from the usual e-commerce curves (mobile evening browsing, a quiet
//! night), not from a data set; `docs/demo.md` says so.

use crate::rfc3339::{civil_from_days, rome_offset_minutes};

const MS_PER_DAY: i64 = 86_400_000;
const MS_PER_HOUR: i64 = 3_600_000;

/// Intensity at the start of each local hour (index 24 is the next midnight); between two
/// hours it moves linearly, so the curve has no steps.
const HOURLY: [f64; 25] = [
    0.45, 0.25, 0.14, 0.10, 0.10, 0.12, 0.22, 0.42, 0.62, 0.80, 0.92, 1.00, 1.05, 1.10, 1.00, 0.95,
    1.00, 1.08, 1.20, 1.35, 1.52, 1.70, 1.70, 1.20, 0.45,
];

/// Sunday before 13h (local): half the traffic (brunch, church, the beach).
const SUNDAY_MORNING: f64 = 0.5;
const SUNDAY_MORNING_ENDS_HOUR: i64 = 13;
/// Italian salaries arrive on the 27th; the day after still shows it.
const PAYDAY: f64 = 1.3;
const DAY_AFTER_PAYDAY: f64 = 1.15;
/// The promotion day's multiplier.
pub const PROMOTION: f64 = 2.5;

/// The highest value [`intensity`] can take: the evening peak on a promotion day that is also
/// payday. Thinning needs a bound.
pub const MAX_INTENSITY: f64 = 1.70 * PAYDAY * PROMOTION;

/// Italian local calendar facts of an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// Local days since 1970-01-01 (the local date's day number).
    pub day: i64,
    /// Milliseconds since local midnight.
    pub ms_of_day: i64,
    /// 0 = Sunday … 6 = Saturday.
    pub weekday: u32,
    /// 1–31.
    pub day_of_month: u32,
}

impl LocalTime {
    pub fn of(epoch_ms: i64) -> Self {
        let local_ms = epoch_ms + i64::from(rome_offset_minutes(epoch_ms)) * 60_000;
        let day = local_ms.div_euclid(MS_PER_DAY);
        let (_, _, day_of_month) = civil_from_days(day);
        Self {
            day,
            ms_of_day: local_ms.rem_euclid(MS_PER_DAY),
            // 1970-01-01 was a Thursday.
            weekday: (day + 4).rem_euclid(7) as u32,
            day_of_month,
        }
    }

    /// The local hour, 0–23.
    pub fn hour(self) -> i64 {
        self.ms_of_day / MS_PER_HOUR
    }
}

/// How busy the shop is at `epoch_ms` relative to an average weekday midday hour (1.0), with
/// `promotion_day` (a [`LocalTime::day`]) the promotion. Always in `(0, MAX_INTENSITY]`.
pub fn intensity(epoch_ms: i64, promotion_day: Option<i64>) -> f64 {
    let local = LocalTime::of(epoch_ms);
    let hour = local.hour();
    let within = (local.ms_of_day - hour * MS_PER_HOUR) as f64 / MS_PER_HOUR as f64;
    let at = hour as usize;
    let mut value = HOURLY[at] + (HOURLY[at + 1] - HOURLY[at]) * within;
    if local.weekday == 0 && hour < SUNDAY_MORNING_ENDS_HOUR {
        value *= SUNDAY_MORNING;
    }
    value *= match local.day_of_month {
        27 => PAYDAY,
        28 => DAY_AFTER_PAYDAY,
        _ => 1.0,
    };
    if promotion_day == Some(local.day) {
        value *= PROMOTION;
    }
    value.min(MAX_INTENSITY)
}

/// The mean of [`intensity`] over the local week starting at `week_start_ms`, sampled every
/// minute (used to turn a mean event rate into a base rate).
pub fn mean_intensity(from_ms: i64, to_ms: i64, promotion_day: Option<i64>) -> f64 {
    let minutes = ((to_ms - from_ms) / 60_000).max(1);
    let sum: f64 = (0..minutes)
        .map(|m| intensity(from_ms + m * 60_000, promotion_day))
        .sum();
    sum / minutes as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02T00:00:00Z, a Wednesday in winter time (UTC+1).
    const WEDNESDAY_UTC_MIDNIGHT: i64 = 1_796_169_600_000;

    #[test]
    fn local_time_follows_rome() {
        let local = LocalTime::of(WEDNESDAY_UTC_MIDNIGHT);
        assert_eq!(local.weekday, 3);
        assert_eq!(local.hour(), 1);
        assert_eq!(local.day_of_month, 2);
        // 2026-07-01T20:30Z is 22:30 in Rome (summer time).
        let summer = LocalTime::of(1_782_937_800_000);
        assert_eq!(summer.hour(), 22);
    }

    #[test]
    fn the_day_has_an_evening_peak_and_a_quiet_night() {
        let at_local_hour = |h: i64| {
            intensity(
                WEDNESDAY_UTC_MIDNIGHT - MS_PER_HOUR + h * MS_PER_HOUR + 1_800_000,
                None,
            )
        };
        assert!(at_local_hour(21) > 1.6, "{}", at_local_hour(21));
        assert!(at_local_hour(3) < 0.15, "{}", at_local_hour(3));
        assert!(at_local_hour(11) > 0.9 && at_local_hour(11) < 1.1);
        let mean = mean_intensity(
            WEDNESDAY_UTC_MIDNIGHT - MS_PER_HOUR,
            WEDNESDAY_UTC_MIDNIGHT - MS_PER_HOUR + MS_PER_DAY,
            None,
        );
        assert!((0.7..0.95).contains(&mean), "{mean}");
    }

    #[test]
    fn sunday_morning_payday_and_promotion_scale_the_day() {
        let wednesday_10h = WEDNESDAY_UTC_MIDNIGHT + 9 * MS_PER_HOUR;
        let sunday_10h = wednesday_10h + 4 * MS_PER_DAY;
        assert_eq!(LocalTime::of(sunday_10h).weekday, 0);
        let ratio = intensity(sunday_10h, None) / intensity(wednesday_10h, None);
        assert!((ratio - 0.5).abs() < 1e-9, "{ratio}");
        // 2026-11-27 was a Friday: payday.
        let payday_10h = wednesday_10h - 5 * MS_PER_DAY;
        assert_eq!(LocalTime::of(payday_10h).day_of_month, 27);
        let ratio = intensity(payday_10h, None) / intensity(payday_10h + 7 * MS_PER_DAY, None);
        assert!((ratio - 1.3).abs() < 1e-9, "{ratio}");
        let day = LocalTime::of(wednesday_10h).day;
        let ratio = intensity(wednesday_10h, Some(day)) / intensity(wednesday_10h, None);
        assert!((ratio - 2.5).abs() < 1e-9, "{ratio}");
    }

    #[test]
    fn intensity_stays_within_the_thinning_bound() {
        for minute in 0..(40 * 24 * 60) {
            let t = WEDNESDAY_UTC_MIDNIGHT + minute * 60_000;
            let value = intensity(t, Some(LocalTime::of(t).day));
            assert!(value > 0.0 && value <= MAX_INTENSITY, "{value}");
        }
    }
}
