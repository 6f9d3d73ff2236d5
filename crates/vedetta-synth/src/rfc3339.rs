//! Epoch milliseconds → RFC 3339 text (`2024-04-05T14:23:05.123Z`), with no allocation and no
//! date library.
//!
//! The generator formats a timestamp for most events it emits, so this sits on the hot path; it
//! writes into a fixed stack buffer. The calendar conversion is the proleptic-Gregorian
//! "civil from days" algorithm (Howard Hinnant, `chrono`-compatible date algorithms), exact for
//! every day of years 0000–9999, which is all RFC 3339 can express.

use std::fmt;

/// `0000-01-01T00:00:00.000Z`, the earliest instant RFC 3339 can write.
pub const MIN_RFC3339_MS: i64 = -62_167_219_200_000;
/// `9999-12-31T23:59:59.999Z`, the latest instant RFC 3339 can write.
pub const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// A formatted RFC 3339 timestamp held on the stack; longest form is
/// `YYYY-MM-DDTHH:MM:SS.mmm+HH:MM` (29 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339 {
    buf: [u8; 29],
    len: u8,
}

impl Rfc3339 {
    /// The text, e.g. `2024-04-05T14:23:05.123Z`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written, so this cannot fail.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Formats `epoch_ms` as RFC 3339 with millisecond precision.
///
/// `offset_minutes == 0` writes the `Z` form; any other offset (clamped to ±23:59) writes the
/// local wall-clock time followed by `+HH:MM`/`-HH:MM`, denoting the same instant. Instants
/// outside years 0000–9999 are clamped to that range, since RFC 3339 cannot write them.
pub fn format_rfc3339_ms(epoch_ms: i64, offset_minutes: i16) -> Rfc3339 {
    let offset_minutes = i64::from(offset_minutes).clamp(-(23 * 60 + 59), 23 * 60 + 59);
    let local_ms = epoch_ms
        .clamp(MIN_RFC3339_MS, MAX_RFC3339_MS)
        .saturating_add(offset_minutes * 60_000)
        .clamp(MIN_RFC3339_MS, MAX_RFC3339_MS);
    let days = local_ms.div_euclid(MS_PER_DAY);
    let ms_of_day = local_ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);

    let mut out = Rfc3339 {
        buf: [0; 29],
        len: 0,
    };
    let b = &mut out.buf;
    put_digits(&mut b[0..4], year as u64);
    b[4] = b'-';
    put_digits(&mut b[5..7], u64::from(month));
    b[7] = b'-';
    put_digits(&mut b[8..10], u64::from(day));
    b[10] = b'T';
    put_digits(&mut b[11..13], (ms_of_day / 3_600_000) as u64);
    b[13] = b':';
    put_digits(&mut b[14..16], (ms_of_day / 60_000 % 60) as u64);
    b[16] = b':';
    put_digits(&mut b[17..19], (ms_of_day / 1_000 % 60) as u64);
    b[19] = b'.';
    put_digits(&mut b[20..23], (ms_of_day % 1_000) as u64);
    if offset_minutes == 0 {
        b[23] = b'Z';
        out.len = 24;
    } else {
        b[23] = if offset_minutes > 0 { b'+' } else { b'-' };
        let magnitude = offset_minutes.unsigned_abs();
        put_digits(&mut b[24..26], magnitude / 60);
        b[26] = b':';
        put_digits(&mut b[27..29], magnitude % 60);
        out.len = 29;
    }
    out
}

/// Writes `value` as exactly `slot.len()` zero-padded decimal digits.
fn put_digits(slot: &mut [u8], mut value: u64) {
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), proleptic Gregorian calendar.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11], March = 0
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month 1–12, day 1–31) → days since 1970-01-01; the inverse of [`civil_from_days`].
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The UTC offset of Italian wall-clock time (`Europe/Rome`) at `epoch_ms`, in minutes: +120
/// from the last Sunday of March to the last Sunday of October (switching at 01:00 UTC, the
/// EU rule since 1996), +60 otherwise. Italian tag managers that send local time with an
/// offset send this one.
pub fn rome_offset_minutes(epoch_ms: i64) -> i16 {
    let (year, _, _) = civil_from_days(epoch_ms.div_euclid(MS_PER_DAY));
    let last_sunday = |month: u32| {
        let last_day = days_from_civil(year, month, 31);
        // 1970-01-01 was a Thursday: (days + 4) mod 7 is the weekday with Sunday = 0.
        last_day - (last_day + 4).rem_euclid(7)
    };
    let summer_starts_ms = last_sunday(3) * MS_PER_DAY + 3_600_000;
    let summer_ends_ms = last_sunday(10) * MS_PER_DAY + 3_600_000;
    if (summer_starts_ms..summer_ends_ms).contains(&epoch_ms) {
        120
    } else {
        60
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (946_684_799_999, "1999-12-31T23:59:59.999Z"),
            (1_709_251_199_999, "2024-02-29T23:59:59.999Z"),
            (1_712_318_400_000, "2024-04-05T12:00:00.000Z"),
            (1_712_326_985_123, "2024-04-05T14:23:05.123Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (MAX_RFC3339_MS, "9999-12-31T23:59:59.999Z"),
            (MIN_RFC3339_MS, "0000-01-01T00:00:00.000Z"),
        ];
        for (ms, text) in cases {
            assert_eq!(format_rfc3339_ms(ms, 0).as_str(), text, "{ms}");
        }
    }

    #[test]
    fn formats_offsets_as_local_time_of_the_same_instant() {
        let ms = 1_712_326_985_123; // 2024-04-05T14:23:05.123Z
        assert_eq!(
            format_rfc3339_ms(ms, 120).as_str(),
            "2024-04-05T16:23:05.123+02:00"
        );
        assert_eq!(
            format_rfc3339_ms(ms, 60).as_str(),
            "2024-04-05T15:23:05.123+01:00"
        );
        assert_eq!(
            format_rfc3339_ms(ms, -330).as_str(),
            "2024-04-05T08:53:05.123-05:30"
        );
        // Crossing midnight and a year boundary.
        assert_eq!(
            format_rfc3339_ms(946_684_799_999, 60).as_str(),
            "2000-01-01T00:59:59.999+01:00"
        );
    }

    #[test]
    fn rome_switches_to_summer_time_on_the_last_sundays_of_march_and_october() {
        // 2024: summer time from 31 March 01:00 UTC to 27 October 01:00 UTC.
        let march_31_2024_0100z = 1_711_846_800_000;
        let october_27_2024_0100z = 1_729_990_800_000;
        assert_eq!(
            format_rfc3339_ms(march_31_2024_0100z, 0).as_str(),
            "2024-03-31T01:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_ms(october_27_2024_0100z, 0).as_str(),
            "2024-10-27T01:00:00.000Z"
        );
        assert_eq!(rome_offset_minutes(march_31_2024_0100z - 1), 60);
        assert_eq!(rome_offset_minutes(march_31_2024_0100z), 120);
        assert_eq!(rome_offset_minutes(october_27_2024_0100z - 1), 120);
        assert_eq!(rome_offset_minutes(october_27_2024_0100z), 60);
        assert_eq!(rome_offset_minutes(1_712_326_985_123), 120); // April
        assert_eq!(rome_offset_minutes(1_704_067_200_000), 60); // 1 January 2024
        // 2021: 28 March and 31 October.
        assert_eq!(rome_offset_minutes(1_616_893_200_000 - 1), 60); // 2021-03-28T01:00Z
        assert_eq!(rome_offset_minutes(1_616_893_200_000), 120);
        assert_eq!(rome_offset_minutes(1_635_642_000_000 - 1), 120); // 2021-10-31T01:00Z
        assert_eq!(rome_offset_minutes(1_635_642_000_000), 60);
    }

    #[test]
    fn every_year_switches_once_each_way_on_a_sunday_at_0100_utc() {
        let a_known_sunday = days_from_civil(2024, 3, 31);
        for year in 1996..2100 {
            for (month, before, after) in [(3, 60, 120), (10, 120, 60)] {
                let sundays: Vec<i64> = (25..=31)
                    .map(|day| days_from_civil(year, month, day))
                    .filter(|days| (days - a_known_sunday).rem_euclid(7) == 0)
                    .collect();
                assert_eq!(sundays.len(), 1, "{year}-{month}");
                let switch_ms = sundays[0] * MS_PER_DAY + 3_600_000;
                assert_eq!(rome_offset_minutes(switch_ms - 1), before, "{year}-{month}");
                assert_eq!(rome_offset_minutes(switch_ms), after, "{year}-{month}");
                // No other switch in that month.
                assert_eq!(rome_offset_minutes(switch_ms - 6 * MS_PER_DAY), before);
                assert_eq!(rome_offset_minutes(switch_ms + 6 * MS_PER_DAY), after);
            }
        }
    }

    #[test]
    fn clamps_outside_the_expressible_range() {
        assert_eq!(
            format_rfc3339_ms(i64::MAX, 0).as_str(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            format_rfc3339_ms(i64::MIN, 0).as_str(),
            "0000-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn every_day_from_1600_to_2400_round_trips_and_is_a_valid_date() {
        let first = days_from_civil(1600, 1, 1);
        let last = days_from_civil(2400, 12, 31);
        let mut previous = civil_from_days(first - 1);
        for days in first..=last {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            assert!((1..=month_len).contains(&d), "{y}-{m}-{d}");
            // Consecutive days are consecutive dates.
            let next_of_previous = if previous.2 < 28 {
                (previous.0, previous.1, previous.2 + 1)
            } else {
                (y, m, d)
            };
            assert_eq!(next_of_previous, (y, m, d));
            previous = (y, m, d);
        }
    }
}
