//! Tumbling event-time windows: 1 minute, 1 hour, 1 day.
//!
//! Minutes and hours are aligned to UTC, which equals local alignment in every zone with
//! whole-hour offsets (Europe/Rome among them). Days follow the calendar of the configured
//! time zone, so a daylight-saving day is 23 or 25 hours long. Converting a timestamp to a
//! local day costs a time-zone lookup; events arrive nearly in order, so the last day seen
//! is cached and most events never pay it.

use serde::{Deserialize, Serialize};

/// A window size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// `1m`, `1h`, `1d`.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "1m",
            Granularity::Hour => "1h",
            Granularity::Day => "1d",
        }
    }

    pub fn parse(text: &str) -> Option<Granularity> {
        match text {
            "1m" => Some(Granularity::Minute),
            "1h" => Some(Granularity::Hour),
            "1d" => Some(Granularity::Day),
            _ => None,
        }
    }

    /// A one-byte code for storage keys.
    pub fn code(self) -> u8 {
        match self {
            Granularity::Minute => 0,
            Granularity::Hour => 1,
            Granularity::Day => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Granularity> {
        match code {
            0 => Some(Granularity::Minute),
            1 => Some(Granularity::Hour),
            2 => Some(Granularity::Day),
            _ => None,
        }
    }
}

/// A window: `[start, end)` in epoch milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

/// Finds the window of a timestamp at each granularity.
#[derive(Clone, Debug)]
pub struct WindowCalendar {
    zone: jiff::tz::TimeZone,
    /// The last local day computed: most events fall in it.
    last_day: Option<Window>,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

impl WindowCalendar {
    pub fn new(zone: jiff::tz::TimeZone) -> Self {
        Self {
            zone,
            last_day: None,
        }
    }

    pub fn zone(&self) -> &jiff::tz::TimeZone {
        &self.zone
    }

    pub fn window(&mut self, granularity: Granularity, ts: i64) -> Window {
        match granularity {
            Granularity::Minute => aligned(ts, MINUTE),
            Granularity::Hour => aligned(ts, HOUR),
            Granularity::Day => self.day(ts),
        }
    }

    fn day(&mut self, ts: i64) -> Window {
        if let Some(day) = self.last_day
            && day.start <= ts
            && ts < day.end
        {
            return day;
        }
        let day = local_day(&self.zone, ts);
        self.last_day = Some(day);
        day
    }

    /// Whether the local day of `ts` starts and ends on minute boundaries, so that every
    /// minute window lies wholly in one day (true of every zone's offsets since the 1970s;
    /// historical local mean times had seconds).
    pub fn day_holds_whole_minutes(&mut self, ts: i64) -> bool {
        let day = self.day(ts);
        day.start.rem_euclid(MINUTE) == 0 && day.end.rem_euclid(MINUTE) == 0
    }

    /// The end of the window that starts at `start` (for windows read back from storage).
    pub fn end_of(&self, granularity: Granularity, start: i64) -> i64 {
        match granularity {
            Granularity::Minute => start + MINUTE,
            Granularity::Hour => start + HOUR,
            Granularity::Day => local_day(&self.zone, start).end,
        }
    }
}

fn aligned(ts: i64, size: i64) -> Window {
    let start = ts.div_euclid(size) * size;
    Window {
        start,
        end: start + size,
    }
}

/// The local calendar day containing `ts`.
fn local_day(zone: &jiff::tz::TimeZone, ts: i64) -> Window {
    let fallback = || aligned(ts, 24 * HOUR);
    let Ok(instant) = jiff::Timestamp::from_millisecond(ts) else {
        return fallback();
    };
    let date = instant.to_zoned_datetime(zone.clone()).date();
    let start = date.to_zoned_datetime(zone.clone());
    let end = date
        .tomorrow()
        .ok()
        .and_then(|next| next.to_zoned_datetime(zone.clone()).ok());
    match (start, end) {
        (Ok(start), Some(end)) => Window {
            start: start.timestamp().as_millisecond(),
            end: end.timestamp().as_millisecond(),
        },
        _ => fallback(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rome() -> WindowCalendar {
        WindowCalendar::new(jiff::tz::TimeZone::get("Europe/Rome").unwrap())
    }

    fn ms(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn minutes_and_hours_are_aligned() {
        let mut c = rome();
        let w = c.window(Granularity::Minute, ms("2024-04-05T14:23:05.123Z"));
        assert_eq!(
            (w.start, w.end),
            (ms("2024-04-05T14:23:00Z"), ms("2024-04-05T14:24:00Z"))
        );
        let w = c.window(Granularity::Hour, ms("2024-04-05T14:23:05.123Z"));
        assert_eq!(
            (w.start, w.end),
            (ms("2024-04-05T14:00:00Z"), ms("2024-04-05T15:00:00Z"))
        );
    }

    #[test]
    fn days_follow_rome_including_daylight_saving() {
        let mut c = rome();
        // 23:30 UTC on 5 April is 01:30 on 6 April in Rome (UTC+2).
        let w = c.window(Granularity::Day, ms("2024-04-05T23:30:00Z"));
        assert_eq!(w.start, ms("2024-04-05T22:00:00Z"));
        assert_eq!(w.end, ms("2024-04-06T22:00:00Z"));
        // 31 March 2024 lost an hour: a 23-hour day.
        let w = c.window(Granularity::Day, ms("2024-03-31T12:00:00Z"));
        assert_eq!(w.start, ms("2024-03-30T23:00:00Z"));
        assert_eq!(w.end - w.start, 23 * HOUR);
        // 27 October 2024 gained one: 25 hours.
        let w = c.window(Granularity::Day, ms("2024-10-27T12:00:00Z"));
        assert_eq!(w.end - w.start, 25 * HOUR);
        assert_eq!(c.end_of(Granularity::Day, w.start), w.end);
    }
}
