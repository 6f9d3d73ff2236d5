//! The event-time windows of the truth: `1m` and `1h` aligned on UTC, `1d` the calendar day in
//! `Europe/Rome` (23 hours on the last Sunday of March, 25 on the last Sunday of October).
//!
//! Written from the definitions in `docs/semantics.md`, not taken from the pipeline's clock
//! code: a minute is `floor(ts / 60 000)`, an hour `floor(ts / 3 600 000)`, and a day runs from
//! one Italian local midnight to the next, found with the EU summer-time rule the generator
//! already uses for its `+02:00` timestamps (`rome_offset_minutes`).

use crate::rfc3339::rome_offset_minutes;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// The three window sizes of the KPIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    /// Finest first; this is also the order of the truth's rows.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// The name used by the API and in the truth file: `1m`, `1h`, `1d`.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "1m",
            Granularity::Hour => "1h",
            Granularity::Day => "1d",
        }
    }

    /// The window of this granularity that contains `ts_ms`.
    pub fn window(self, ts_ms: i64) -> Window {
        match self {
            Granularity::Minute => fixed_window(ts_ms, MINUTE_MS),
            Granularity::Hour => fixed_window(ts_ms, HOUR_MS),
            Granularity::Day => rome_day(ts_ms),
        }
    }
}

/// A tumbling window, `[start_ms, end_ms)` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

fn fixed_window(ts_ms: i64, length_ms: i64) -> Window {
    let start_ms = ts_ms.div_euclid(length_ms) * length_ms;
    Window {
        start_ms,
        end_ms: start_ms + length_ms,
    }
}

/// The Italian calendar day containing `ts_ms`, from its local midnight to the next one.
fn rome_day(ts_ms: i64) -> Window {
    let local_ms = ts_ms + i64::from(rome_offset_minutes(ts_ms)) * MINUTE_MS;
    let local_day = local_ms.div_euclid(DAY_MS);
    Window {
        start_ms: rome_midnight(local_day),
        end_ms: rome_midnight(local_day + 1),
    }
}

/// The instant of 00:00 Italian time on `local_day` (days since 1970-01-01 on the Italian
/// calendar). Midnight is never inside a switch (they happen at 02:00 and 03:00 local time), so
/// exactly one of the two offsets Italy uses is in force at the midnight it implies.
fn rome_midnight(local_day: i64) -> i64 {
    for offset_minutes in [60_i16, 120] {
        let candidate_ms = local_day * DAY_MS - i64::from(offset_minutes) * MINUTE_MS;
        if rome_offset_minutes(candidate_ms) == offset_minutes {
            return candidate_ms;
        }
    }
    unreachable!("midnight of Italian day {local_day} is in neither winter nor summer time")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfc3339::format_rfc3339_ms;

    fn utc(ms: i64) -> String {
        format_rfc3339_ms(ms, 0).to_string()
    }

    fn day_of(ts_ms: i64) -> (String, String, i64) {
        let window = Granularity::Day.window(ts_ms);
        (
            utc(window.start_ms),
            utc(window.end_ms),
            (window.end_ms - window.start_ms) / HOUR_MS,
        )
    }

    #[test]
    fn minutes_and_hours_are_utc_aligned_half_open_intervals() {
        let noon = 1_712_318_400_000; // 2024-04-05T12:00:00Z
        assert_eq!(
            Granularity::Minute.window(noon + 59_999),
            Window {
                start_ms: noon,
                end_ms: noon + 60_000
            }
        );
        assert_eq!(
            Granularity::Minute.window(noon + 60_000).start_ms,
            noon + 60_000
        );
        assert_eq!(Granularity::Minute.window(noon - 1).start_ms, noon - 60_000);
        assert_eq!(
            Granularity::Hour.window(noon + 3_599_999),
            Window {
                start_ms: noon,
                end_ms: noon + HOUR_MS
            }
        );
        // Before 1970 floors downwards too.
        assert_eq!(Granularity::Minute.window(-1).start_ms, -60_000);
    }

    #[test]
    fn days_run_from_italian_midnight_to_italian_midnight() {
        // Summer: midnight is 22:00 UTC the day before.
        let april_5_noon = 1_712_318_400_000;
        assert_eq!(
            day_of(april_5_noon),
            (
                "2024-04-04T22:00:00.000Z".into(),
                "2024-04-05T22:00:00.000Z".into(),
                24
            )
        );
        // Winter: 23:00 UTC the day before.
        let january_1_0030_utc = 1_704_069_000_000;
        assert_eq!(
            day_of(january_1_0030_utc),
            (
                "2023-12-31T23:00:00.000Z".into(),
                "2024-01-01T23:00:00.000Z".into(),
                24
            )
        );
        // 23:30 UTC on 1 January is already 2 January in Rome.
        assert_eq!(
            day_of(january_1_0030_utc + 23 * HOUR_MS).0,
            "2024-01-01T23:00:00.000Z"
        );
    }

    #[test]
    fn daylight_saving_days_last_23_and_25_hours() {
        let march_31_2024_1200z = 1_711_886_400_000;
        assert_eq!(
            day_of(march_31_2024_1200z),
            (
                "2024-03-30T23:00:00.000Z".into(),
                "2024-03-31T22:00:00.000Z".into(),
                23
            )
        );
        let october_27_2024_1200z = 1_730_030_400_000;
        assert_eq!(
            day_of(october_27_2024_1200z),
            (
                "2024-10-26T22:00:00.000Z".into(),
                "2024-10-27T23:00:00.000Z".into(),
                25
            )
        );
        // The instants around the switches belong to the switch day.
        let march_switch = 1_711_846_800_000; // 2024-03-31T01:00Z
        assert_eq!(day_of(march_switch - 1).2, 23);
        assert_eq!(day_of(march_switch).2, 23);
    }

    #[test]
    fn consecutive_days_tile_the_timeline_for_years() {
        let mut start = Granularity::Day.window(1_704_067_200_000).start_ms; // 2024-01-01
        let mut short_days = 0;
        let mut long_days = 0;
        for _ in 0..(3 * 366) {
            let window = Granularity::Day.window(start);
            assert_eq!(window.start_ms, start);
            assert_eq!(Granularity::Day.window(window.end_ms - 1), window);
            match (window.end_ms - window.start_ms) / HOUR_MS {
                23 => short_days += 1,
                25 => long_days += 1,
                hours => assert_eq!(hours, 24),
            }
            // Every UTC hour lies inside one Italian day (whole-hour offsets).
            assert_eq!(window.start_ms % HOUR_MS, 0);
            start = window.end_ms;
        }
        assert_eq!((short_days, long_days), (3, 3));
    }
}
