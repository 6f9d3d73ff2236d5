//! Enrichment: the pipeline stage that gives every event its four dimensions.
//!
//! ```text
//! record ─► watermark ─► ENRICH ─► dedup ─► flags ─► sessions ─► windows
//! ```
//!
//! KPIs are grouped by channel, campaign, device and region (`docs/semantics.md`,
//! "Dimensions of an event"). Clients send these facts in many shapes — a channel or only
//! `utm_*` parameters and a referrer, a device or only a user agent, a region name in Italian
//! or English or only an IP address — and enrichment turns each shape into one value per
//! dimension, so that rows add up. It runs in the pipeline rather than at intake so that the
//! log keeps what the client sent: a corrected rule (a new social network, a better tablet
//! test) applies to history by replaying the log.
//!
//! - [`channel`](channel_of): the `channel` field lower-cased, else the default channel
//!   grouping over click ids, `utm_*` and the referrer; and the campaign.
//! - [`device`](DeviceClass): the `device` field, else the user agent's class (with OS and
//!   browser as details), parsed once per distinct user agent.
//! - [`region`](Region): the `region` field as an ISO 3166-2:IT code, else the GeoIP region of
//!   the truncated IP address through a [`RegionLookup`] such as [`MmdbRegionLookup`].
//!
//! The stage is pure, like the rest of the core: no I/O (a GeoIP database arrives as bytes),
//! no clock. Its only state is bounded memos (user agents, GeoIP answers by network and by
//! database record) that change how fast it answers, never what. An event costs about 100 ns once the memos are warm
//! (`cargo bench -p vedetta-core --bench enrich`), and allocates only for a `channel` sent
//! with capitals.

mod cache;
mod channel;
mod device;
mod geoip;
mod region;
#[cfg(test)]
mod tests;

pub use channel::{
    AFFILIATE, DIRECT, DISPLAY, EMAIL, NO_CAMPAIGN, ORGANIC, PAID_SEARCH, REFERRAL, SOCIAL,
    campaign_of, channel_of, default_channel, normalize_channel, referrer_host,
};
pub use device::{DeviceClass, UserAgentClassifier, UserAgentFacts};
pub use geoip::{MmdbRegionLookup, RecordMemo, RegionLookup};
pub use region::Region;

use crate::record::StoredEvent;
use cache::GenerationalCache;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// A network and its GeoIP answer (`None`: abroad or not known).
type NetworkAnswer = (IpAddr, Option<Region>);

/// Slots of the network front at most (a power of two; 19 bytes each).
const MAX_NETWORK_FRONT_SLOTS: usize = 8_192;

/// The front slot (of `2^bits`) of a network: its address bits, multiplied, top bits.
fn network_slot(network: IpAddr, bits: u32) -> usize {
    let folded = match network {
        IpAddr::V4(v4) => u64::from(v4.to_bits()),
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            (bits >> 64) as u64 ^ (bits as u64).rotate_left(32) ^ 1
        }
    };
    match bits {
        0 => 0,
        bits => (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize,
    }
}

/// How enrichment behaves (`[pipeline]` in the configuration file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrichConfig {
    /// The shop's own hosts (`bottega.example`; subdomains and `www.` included). A referrer on
    /// one of them is a visitor moving within the shop: it is not `referral`, and without
    /// other hints the event is `direct`.
    pub internal_hosts: Vec<String>,
    /// Distinct user agents whose parse is remembered (a shop sees hundreds a day); up to a
    /// quarter of them (at most 512) in a direct-mapped front that answers first.
    pub user_agent_cache_capacity: usize,
    /// Distinct networks (/24, /48) whose GeoIP region is remembered; up to a quarter of
    /// them (at most 8,192) in a direct-mapped front. As many database records again.
    pub region_cache_capacity: usize,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            internal_hosts: Vec::new(),
            user_agent_cache_capacity: 10_000,
            region_cache_capacity: 65_536,
        }
    }
}

/// Why enrichment cannot be set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnrichError {
    /// The GeoIP database bytes are not a usable MaxMind DB; the reason says what is wrong.
    #[error("GeoIP database is not a valid MaxMind DB file: {0}")]
    GeoIpDatabase(String),
}

/// An event's dimensions, and the device details that go with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrichment<'e> {
    /// `paid_search`, `social`, ... or the client's own channel, lower-cased.
    pub channel: Cow<'e, str>,
    /// The campaign as sent (trimmed), or `(none)`.
    pub campaign: &'e str,
    pub device: DeviceClass,
    pub region: Region,
    /// Operating system family from the user agent (`iOS`, `Windows`, ...; `unknown`).
    pub os: &'static str,
    /// Browser or in-app browser from the user agent (`Chrome`, `Instagram`, ...; `unknown`).
    pub browser: &'static str,
}

/// The enrichment stage: one per pipeline, called for every event in log order.
pub struct Enricher {
    config: EnrichConfig,
    user_agents: UserAgentClassifier,
    regions: Option<Arc<dyn RegionLookup>>,
    /// GeoIP answers per network, misses included (`None`), so that foreign traffic does
    /// not walk the database again either.
    regions_of_networks: GenerationalCache<IpAddr, Option<Region>>,
    /// A direct-mapped front of `regions_of_networks` (`2^network_front_bits` slots, by the
    /// network's bits): the last answer that fell in each slot. A visitor's next event finds
    /// its network there with a multiply and a compare instead of the memo's lookups (and
    /// its move between generations). Clients choosing networks can only make each other
    /// miss it.
    network_front: Box<[Option<NetworkAnswer>]>,
    network_front_bits: u32,
    /// GeoIP answers per database record, for networks not in the memo above: many
    /// networks share a record, so a new network usually costs a tree walk, not a decode.
    regions_of_records: RecordMemo,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("config", &self.config)
            .field("user_agents_remembered", &self.user_agents.remembered())
            .field("has_region_lookup", &self.regions.is_some())
            .field("networks_remembered", &self.regions_of_networks.len())
            .field("records_remembered", &self.regions_of_records.len())
            .finish()
    }
}

impl Enricher {
    /// A stage with the given rules; `regions` places events by IP (without one, only the
    /// `region` field does).
    pub fn new(config: EnrichConfig, regions: Option<Arc<dyn RegionLookup>>) -> Self {
        // A quarter of the capacity at most goes to the front, the rest to the memo.
        let front_slots = match config.region_cache_capacity / 4 {
            0 => 0,
            quarter => MAX_NETWORK_FRONT_SLOTS.min(1 << quarter.ilog2()),
        };
        Self {
            user_agents: UserAgentClassifier::new(config.user_agent_cache_capacity),
            regions_of_networks: GenerationalCache::new(config.region_cache_capacity - front_slots),
            network_front: vec![None; front_slots].into_boxed_slice(),
            network_front_bits: front_slots.max(1).ilog2(),
            regions_of_records: RecordMemo::new(config.region_cache_capacity),
            regions,
            config,
        }
    }

    pub fn config(&self) -> &EnrichConfig {
        &self.config
    }

    /// Replaces the GeoIP source (a newer database) and forgets the old one's answers.
    pub fn set_region_lookup(&mut self, regions: Option<Arc<dyn RegionLookup>>) {
        self.regions = regions;
        self.regions_of_networks.clear();
        self.regions_of_records.clear();
        self.network_front.fill(None);
    }

    /// The dimensions of `event`. Deterministic: the memos only save work.
    pub fn enrich<'e>(&mut self, event: &'e StoredEvent) -> Enrichment<'e> {
        let user_agent = match event.user_agent.as_deref() {
            Some(user_agent) => self.user_agents.classify(user_agent),
            None => UserAgentFacts::UNKNOWN,
        };
        let device = match event.device.as_deref().map(str::trim) {
            Some(device) if !device.is_empty() => DeviceClass::from_field(device),
            _ => user_agent.device,
        };
        Enrichment {
            channel: channel_of(event, &self.config.internal_hosts),
            campaign: campaign_of(event),
            device,
            region: self.region_of(event),
            os: user_agent.os,
            browser: user_agent.browser,
        }
    }

    /// The `region` field if it names a region; else the GeoIP region of the network; else
    /// unknown. A `region` value that is no region is ignored rather than kept: the
    /// dimension holds only region codes.
    fn region_of(&mut self, event: &StoredEvent) -> Region {
        if let Some(region) = event.region.as_deref().and_then(Region::from_text) {
            return region;
        }
        let (Some(network), Some(lookup)) = (event.ip_network, self.regions.as_deref()) else {
            return Region::UNKNOWN;
        };
        let slot = network_slot(network, self.network_front_bits);
        if let Some(Some((held, region))) = self.network_front.get(slot)
            && *held == network
        {
            return region.unwrap_or(Region::UNKNOWN);
        }
        let region = match self.regions_of_networks.get(&network) {
            Some(remembered) => remembered,
            None => {
                let region = lookup.region_of_with_memo(network, &mut self.regions_of_records);
                self.regions_of_networks.insert(network, region);
                region
            }
        };
        if let Some(front) = self.network_front.get_mut(slot) {
            *front = Some((network, region));
        }
        region.unwrap_or(Region::UNKNOWN)
    }

    /// User agents remembered now (at most `user_agent_cache_capacity`).
    pub fn user_agents_remembered(&self) -> usize {
        self.user_agents.remembered()
    }

    /// Networks whose region is remembered now (at most `region_cache_capacity`).
    pub fn networks_remembered(&self) -> usize {
        self.regions_of_networks.len()
    }
}
