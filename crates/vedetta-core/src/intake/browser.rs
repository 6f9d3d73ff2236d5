//! Events from browsers: what the server knows about a tracker request that the page does
//! not, and how it completes the page's events.
//!
//! A page cannot know its public address, and its clock may be minutes off. So for a request
//! made with a site key (`POST /v1/events?site=…`, docs/sources.md):
//! - `ip` and `user_agent` are the request's, whatever the body says: a page has no business
//!   choosing the address its region is read from;
//! - every `ts` is moved by the difference between the server's clock and the page's at
//!   sending ([`clock_offset_ms`]), as Snowplow's `dtm`/`stm` pair does, so a phone set an
//!   hour ahead still lands in the right minute;
//! - an event without `udid` is the tracker's cookieless mode (no consent to store an id): it
//!   gets an id derived from the site, the day, the truncated address and the user agent
//!   ([`anonymous_udid`]), rotating every day, and its consent is recorded as refused for
//!   every purpose, whatever the body says.

use crate::privacy::{PseudonymKey, encode_hex, truncate_ip};
use std::net::IpAddr;

/// What the server knows about one browser request.
#[derive(Clone, Copy, Debug)]
pub struct BrowserContext<'a> {
    /// The client's address as the server saw it (truncated before it is stored).
    pub ip: Option<IpAddr>,
    /// The request's `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// The id of events sent without `udid` (cookieless mode), from [`anonymous_udid`].
    pub anonymous_udid: &'a str,
    /// Added to each event's `ts`: server time minus the page's time at sending.
    pub clock_offset_ms: i64,
}

/// The largest clock correction applied; a page claiming a clock further off than this is
/// not corrected (its events are then judged on their own `ts`).
pub const MAX_CLOCK_OFFSET_MS: i64 = 24 * 3_600_000;

/// The correction for a page that says it sent at `sent_ms` (its clock) when the server
/// received at `now_ms`: 0 when the page gave no time or an implausible one.
pub fn clock_offset_ms(now_ms: i64, sent_ms: Option<i64>) -> i64 {
    match sent_ms {
        Some(sent) => {
            let offset = now_ms.saturating_sub(sent);
            if offset.abs() <= MAX_CLOCK_OFFSET_MS {
                offset
            } else {
                0
            }
        }
        None => 0,
    }
}

/// The id of a cookieless visitor: a keyed digest of the site, the UTC day, the truncated
/// address and the user agent. The same browser keeps it for a day, on one site; it cannot
/// be turned back into the address, and tomorrow's id cannot be linked to today's.
pub fn anonymous_udid(
    key: &PseudonymKey,
    site: &str,
    now_ms: i64,
    ip: Option<IpAddr>,
    user_agent: Option<&str>,
) -> String {
    let day = now_ms.div_euclid(86_400_000);
    let network = ip
        .map(truncate_ip)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let digest = key.tagged_digest(
        "vedetta.cookieless.v1",
        &[
            site.as_bytes(),
            &day.to_be_bytes(),
            network.as_bytes(),
            user_agent.unwrap_or("").as_bytes(),
        ],
    );
    format!("anon:{}", encode_hex(&digest))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key() -> PseudonymKey {
        PseudonymKey::from_bytes(1, &[7u8; 32]).unwrap()
    }

    #[test]
    fn the_cookieless_id_is_stable_within_a_day_and_rotates_at_midnight_utc() {
        let ip = Some("93.44.10.77".parse().unwrap());
        let ua = Some("Mozilla/5.0");
        let noon = 1_712_318_400_000; // 2024-04-05T12:00:00Z
        let a = anonymous_udid(&key(), "pub_shop", noon, ip, ua);
        assert!(a.starts_with("anon:") && a.len() == 5 + 32, "{a}");
        // Same day, same /24 network: the same visitor.
        let later_same_net = Some("93.44.10.200".parse().unwrap());
        assert_eq!(
            a,
            anonymous_udid(&key(), "pub_shop", noon + 3_600_000, later_same_net, ua)
        );
        // Next day, another site, another browser, another network: another id.
        assert_ne!(
            a,
            anonymous_udid(&key(), "pub_shop", noon + 86_400_000, ip, ua)
        );
        assert_ne!(a, anonymous_udid(&key(), "pub_other", noon, ip, ua));
        assert_ne!(
            a,
            anonymous_udid(&key(), "pub_shop", noon, ip, Some("curl/8"))
        );
        assert_ne!(
            a,
            anonymous_udid(
                &key(),
                "pub_shop",
                noon,
                Some("93.44.11.1".parse().unwrap()),
                ua
            )
        );
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        // "ab" + "c" and "a" + "bc" must differ: each part is length-prefixed.
        let ip = None;
        assert_ne!(
            anonymous_udid(&key(), "ab", 0, ip, Some("c")),
            anonymous_udid(&key(), "a", 0, ip, Some("bc"))
        );
    }

    #[test]
    fn the_clock_offset_is_bounded() {
        assert_eq!(clock_offset_ms(10_000, Some(4_000)), 6_000);
        assert_eq!(clock_offset_ms(10_000, Some(16_000)), -6_000);
        assert_eq!(clock_offset_ms(10_000, None), 0);
        assert_eq!(clock_offset_ms(0, Some(MAX_CLOCK_OFFSET_MS + 1)), 0);
        assert_eq!(clock_offset_ms(i64::MAX, Some(i64::MIN)), 0);
    }
}
