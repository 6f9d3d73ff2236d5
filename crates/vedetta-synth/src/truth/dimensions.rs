//! The four dimensions of an event (channel, campaign, device, region) as the truth sees them:
//! from what the generator knows, not by parsing what it sent.
//!
//! The server derives the device from the user-agent string and the region from a GeoIP
//! database, and, when `channel` is absent, guesses the channel from `utm_*`, click ids and the
//! referrer. Re-implementing those parsers here would make the end-to-end test compare the
//! parsers with themselves. Instead the truth looks the answers up: the device class each
//! catalog user agent was chosen for ([`user_agents`]), the region code each catalog region
//! name stands for ([`regions`]), the region the test's GeoIP table assigns to an address
//! ([`IpRegion`]), and, for an event without `channel` that carries `utm_*`, click ids or a
//! referrer, the channel the generator chose those for (`GroundTruth::channel`). An event that
//! carries none of them is `direct`, whatever its session's channel: that is what the server
//! finds in its fields, and attribution (not the event's own touch) credits its session.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::catalog::{regions, user_agents};
use crate::record::{Channel, SynthEvent, SynthSpend};

/// What a value is when nothing says otherwise.
pub(super) const NO_CAMPAIGN: &str = "(none)";
pub(super) const UNKNOWN: &str = "unknown";
pub(super) const DIRECT: &str = "direct";

/// One entry of the GeoIP table the end-to-end test gives the server: addresses in
/// `network/prefix_len` are in `region` (an ISO 3166-2:IT code such as `IT-25`, or a region
/// name from [`regions`]). The most specific matching entry wins, as in an MMDB lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRegion {
    pub network: IpAddr,
    pub prefix_len: u8,
    pub region: String,
}

/// An event's dimensions, in the order rows are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Dims<'a> {
    pub(super) channel: &'a str,
    pub(super) campaign: &'a str,
    pub(super) device: &'a str,
    pub(super) region: &'a str,
}

/// The lookup tables, built once per computation.
#[derive(Debug)]
pub(super) struct DimensionTables<'a> {
    device_of_user_agent: HashMap<&'static str, &'static str>,
    /// Lower-cased region name or code → code.
    region_code: HashMap<String, &'static str>,
    /// Prefix length → (network address → region), for the longest-prefix match.
    geoip_by_prefix_len: BTreeMap<u8, HashMap<IpAddr, &'a str>>,
}

impl<'a> DimensionTables<'a> {
    pub(super) fn new(geoip: &'a [IpRegion]) -> Self {
        let device_of_user_agent = user_agents()
            .iter()
            .map(|spec| (spec.user_agent, spec.device.as_str()))
            .collect();
        let mut region_code = HashMap::new();
        for region in regions() {
            region_code.insert(region.name.to_lowercase(), region.iso_code);
            region_code.insert(region.iso_code.to_lowercase(), region.iso_code);
        }
        let mut tables = Self {
            device_of_user_agent,
            region_code,
            geoip_by_prefix_len: BTreeMap::new(),
        };
        for entry in geoip {
            let region = tables
                .region_code(&entry.region)
                .unwrap_or(entry.region.trim());
            tables
                .geoip_by_prefix_len
                .entry(entry.prefix_len)
                .or_default()
                .insert(network_of(entry.network, entry.prefix_len), region);
        }
        tables
    }

    /// The dimensions of a funnel event, from its own fields. `session_channel` is the
    /// generator's `GroundTruth::channel`, the channel its session came from.
    ///
    /// The channel is the `channel` field; else, when the event carries what the default
    /// grouping reads (`utm_source`, `utm_medium`, a click id, a referrer), the channel those
    /// say, which the generator chose them for: the session's (a hand-built log without that
    /// label gets `direct`); else `direct`. Under realistic tagging only a landing event carries
    /// them, so the events after it are direct, as a server reading their fields finds.
    pub(super) fn of_event(
        &self,
        event: &SynthEvent,
        session_channel: Option<Channel>,
    ) -> Dims<'a> {
        let carries_grouping_fields = event.utm_source.is_some()
            || event.utm_medium.is_some()
            || event.gclid.is_some()
            || event.fbclid.is_some()
            || event.referrer.is_some();
        let derived = session_channel.filter(|_| carries_grouping_fields);
        let channel = event.channel.or(derived).map_or(DIRECT, Channel::as_str);
        let campaign = [event.campaign, event.utm_campaign]
            .into_iter()
            .flatten()
            .map(str::trim)
            .find(|name| !name.is_empty())
            .unwrap_or(NO_CAMPAIGN);
        // The generator never sends a `device` field: the user agent decides.
        let device = event
            .user_agent
            .and_then(|user_agent| self.device_of_user_agent.get(user_agent).copied())
            .unwrap_or(UNKNOWN);
        let region = event
            .region
            .and_then(|region| self.region_code(region))
            .or_else(|| event.ip.and_then(|ip| self.region_of_ip(ip)))
            .unwrap_or(UNKNOWN);
        Dims {
            channel,
            campaign,
            device,
            region,
        }
    }

    /// The (channel, campaign) of a spend record.
    pub(super) fn of_spend(spend: &SynthSpend) -> (&'static str, &'static str) {
        let campaign = Some(spend.campaign.trim())
            .filter(|name| !name.is_empty())
            .unwrap_or(NO_CAMPAIGN);
        (spend.channel.as_str(), campaign)
    }

    fn region_code(&self, name_or_code: &str) -> Option<&'static str> {
        self.region_code
            .get(&name_or_code.trim().to_lowercase())
            .copied()
    }

    /// The region of the address as the server sees it: truncated first (/24, /48), then the
    /// longest matching prefix of the table.
    fn region_of_ip(&self, ip: IpAddr) -> Option<&'a str> {
        let truncated = match ip {
            IpAddr::V4(_) => network_of(ip, 24),
            IpAddr::V6(_) => network_of(ip, 48),
        };
        self.geoip_by_prefix_len
            .iter()
            .rev()
            .find_map(|(&prefix_len, networks)| {
                networks.get(&network_of(truncated, prefix_len)).copied()
            })
    }
}

/// `ip` with every bit after the first `prefix_len` cleared (a prefix longer than the address
/// keeps it whole).
fn network_of(ip: IpAddr, prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::from(prefix_len).min(32);
            let mask = u32::MAX.checked_shl(32 - keep).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let keep = u32::from(prefix_len).min(128);
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn masks_keep_the_prefix_bits() {
        assert_eq!(network_of(ip("79.18.120.72"), 10), ip("79.0.0.0"));
        assert_eq!(network_of(ip("79.18.120.72"), 24), ip("79.18.120.0"));
        assert_eq!(network_of(ip("79.18.120.72"), 0), ip("0.0.0.0"));
        assert_eq!(network_of(ip("79.18.120.72"), 40), ip("79.18.120.72"));
        assert_eq!(
            network_of(ip("2001:b07:6462:1234::1"), 48),
            ip("2001:b07:6462::")
        );
    }

    #[test]
    fn the_most_specific_geoip_entry_wins_and_names_become_codes() {
        let table = [
            IpRegion {
                network: ip("79.0.0.0"),
                prefix_len: 10,
                region: "Lombardia".into(),
            },
            IpRegion {
                network: ip("79.18.0.0"),
                prefix_len: 16,
                region: "IT-62".into(),
            },
            IpRegion {
                network: ip("2001:b07::"),
                prefix_len: 32,
                region: "it-21".into(),
            },
        ];
        let tables = DimensionTables::new(&table);
        assert_eq!(tables.region_of_ip(ip("79.18.120.72")), Some("IT-62"));
        assert_eq!(tables.region_of_ip(ip("79.19.120.72")), Some("IT-25"));
        assert_eq!(tables.region_of_ip(ip("2001:b07:1::9")), Some("IT-21"));
        assert_eq!(tables.region_of_ip(ip("80.1.2.3")), None);
        assert_eq!(tables.region_of_ip(ip("2001:b08::1")), None);
    }

    #[test]
    fn region_names_and_codes_map_to_codes() {
        let tables = DimensionTables::new(&[]);
        assert_eq!(tables.region_code("Valle d'Aosta"), Some("IT-23"));
        assert_eq!(tables.region_code(" lombardia "), Some("IT-25"));
        assert_eq!(tables.region_code("IT-88"), Some("IT-88"));
        assert_eq!(tables.region_code("Baviera"), None);
        for region in regions() {
            assert_eq!(tables.region_code(region.name), Some(region.iso_code));
        }
    }
}
