//! Target `kpi_query`: the `/v1/kpis` (and `/v1/stream`) query string, from the request
//! target to a validated [`KpiQuery`] (`query_params` splits and decodes, `KpiQuery::parse`
//! validates).
//!
//! The input is the query string (the bytes after `?`); one the HTTP layer would refuse as a
//! request target is skipped, as the server never sees it. Checked:
//! - bad input is a 400 or a 414, never another status, with a message that names what is
//!   wrong (a parameter, or the query string) and does not echo the input at length;
//! - a parsed query keeps its promises: `from < to`, both inside the supported range,
//!   each dimension grouped at most once, at most `MAX_FILTER_VALUES` values per filter, a
//!   device or region filter only of known values;
//! - the windows of the range can be computed (the first and last window of `[from, to)`).

use http::{StatusCode, Uri};
use vedetta::server::kpis::{
    DEVICE_VALUES, KpiQuery, MAX_FILTER_VALUES, PARAMETERS, TIME_MAX_MS, TIME_MIN_MS, query_params,
};
use vedetta_core::pipeline::windows::WindowCalendar;

/// The server's clock in the target: 2025-11-24T16:00:00Z.
const NOW_MS: i64 = 1_764_000_000_000;
/// An error message never needs more: parameter names and values are shown shortened.
const MAX_MESSAGE_BYTES: usize = 1024;

pub fn fuzz_kpi_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = Uri::try_from(format!("/v1/kpis?{query}")) else {
        return; // refused by the HTTP layer before any handler
    };
    let calendar = WindowCalendar::new(
        jiff::tz::TimeZone::get("Europe/Rome")
            .unwrap_or_else(|e| panic!("the bundled time zone database has Europe/Rome: {e}")),
    );
    let result = query_params(&uri).and_then(|params| KpiQuery::parse(&params, NOW_MS, &calendar));
    let parsed = match result {
        Ok(parsed) => parsed,
        Err(error) => {
            let status = error.status();
            assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::URI_TOO_LONG,
                "bad query answered {status}: {error}"
            );
            let message = error.to_string();
            assert!(
                message.len() <= MAX_MESSAGE_BYTES,
                "a {}-byte error message",
                message.len()
            );
            let named = message.starts_with("query string")
                || PARAMETERS
                    .iter()
                    .any(|p| message.starts_with(&format!("{p}:")))
                || message.contains(": unknown parameter")
                || message.contains(": given more than once");
            assert!(named, "the message names no parameter: {message}");
            return;
        }
    };
    assert!(
        parsed.from < parsed.to,
        "from {} !< to {}",
        parsed.from,
        parsed.to
    );
    for t in [parsed.from, parsed.to] {
        assert!((TIME_MIN_MS..=TIME_MAX_MS).contains(&t), "{t} out of range");
    }
    for (i, d) in parsed.group_by.iter().enumerate() {
        assert!(!parsed.group_by[..i].contains(d), "grouped by {d:?} twice");
    }
    for (dimension, values) in &parsed.filters {
        assert!(
            values.len() <= MAX_FILTER_VALUES,
            "{} filter values",
            values.len()
        );
        if dimension.name() == "device" {
            for value in values {
                assert!(DEVICE_VALUES.contains(&value.as_str()), "device {value:?}");
            }
        }
    }
    let mut calendar = calendar;
    let first = calendar.window(parsed.granularity, parsed.from);
    let last = calendar.window(parsed.granularity, parsed.to - 1);
    assert!(first.start <= last.start && first.start < first.end && last.start < last.end);
    let _ = calendar.end_of(parsed.granularity, last.start);
}
