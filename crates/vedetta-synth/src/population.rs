//! The users: who each one is (id, device, network, region, consent) and when they may start
//! their next session.
//!
//! A user's traits are derived from the seed and the user's index alone, so they cost no memory
//! and stay the same in every session: same udid, same device, mostly the same address. The
//! only per-user state is two bits (seen before, registered) plus, for users active in the last
//! half hour, the time their next session may start. That last rule keeps sessions of one user
//! separated by more than the contract's 30 minutes of inactivity, so a sessionizer that follows
//! EVENTS.md finds exactly the sessions generated.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use crate::catalog::{DeviceClass, IspPrefix, UserAgentSpec, isp_prefixes, regions, user_agents};
use crate::geoip::catalog_blocks_by_region;
use crate::record::{Consent, Udid, UdidStyle};
use crate::rng::{Rng, mix64};

/// A user's next session starts at least this long after the last event of the previous one:
/// the contract's 30 minutes, plus a minute of margin for double-fires (which land up to 99 ms
/// after the event they copy).
pub(crate) const SESSION_SEPARATION_MS: i64 = 31 * 60_000;

/// How often idle users are forgotten (event time).
const PRUNE_EVERY_MS: i64 = 60_000;

/// Tries to find a user who is not in, or just after, a session before giving up on a start.
const PICK_ATTEMPTS: u32 = 8;

/// Everything about a user that stays the same across sessions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserProfile {
    pub(crate) udid: Udid,
    pub(crate) user_agent: &'static UserAgentSpec,
    pub(crate) home_ip: IpAddr,
    /// `region` as the client sends it (a name or an ISO code), for the few users whose shop
    /// knows it from their address; `None` leaves geolocation to the IP.
    pub(crate) explicit_region: Option<&'static str>,
    pub(crate) consent: Option<Consent>,
    /// Demo users only: the index in `regions()` of the region they live in, whose address
    /// blocks they browse from (see [`region_blocks`]).
    pub(crate) home_region: Option<usize>,
}

/// Demo device shares, per thousand users: mobile, desktop, tablet.
const DEMO_DEVICES: [(DeviceClass, u32); 3] = [
    (DeviceClass::Mobile, 650),
    (DeviceClass::Desktop, 300),
    (DeviceClass::Tablet, 50),
];

/// The catalog GeoIP blocks of each region (computed once; pure data).
pub(crate) fn region_blocks(region: usize) -> &'static [IspPrefix] {
    static BLOCKS: OnceLock<Vec<Vec<IspPrefix>>> = OnceLock::new();
    BLOCKS
        .get_or_init(catalog_blocks_by_region)
        .get(region)
        .map_or(&[], Vec::as_slice)
}

/// An address in `region`'s blocks (any catalog address if it had none).
pub(crate) fn address_in_region(rng: &mut Rng, region: usize) -> IpAddr {
    let blocks = region_blocks(region);
    if blocks.is_empty() {
        return rng
            .pick_weighted(isp_prefixes(), |p| p.weight)
            .random_host(rng);
    }
    rng.pick_weighted(blocks, |p| p.weight).random_host(rng)
}

#[derive(Debug)]
struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    fn new(bits: u64) -> Self {
        Self {
            words: vec![0; bits.div_ceil(64) as usize],
        }
    }

    fn get(&self, bit: u64) -> bool {
        self.words
            .get((bit / 64) as usize)
            .is_some_and(|word| word & (1 << (bit % 64)) != 0)
    }

    fn set(&mut self, bit: u64) {
        if let Some(word) = self.words.get_mut((bit / 64) as usize) {
            *word |= 1 << (bit % 64);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Population {
    users: u64,
    /// The first 10% of indices are the shop's loyal customers, who bring a quarter of the
    /// sessions.
    loyal_users: u64,
    profile_key: u64,
    udid_key: u64,
    seen: BitSet,
    registered: BitSet,
    /// Users who had a session recently → event time from which they may start another.
    next_session_from: HashMap<u64, i64>,
    last_prune_ms: i64,
    /// Demo users: device by the demo's shares, address in their home region.
    demo: bool,
}

impl Population {
    pub(crate) fn new(seed: u64, users: u64) -> Self {
        Self::with_shape(seed, users, false)
    }

    /// A population whose users are drawn the demo's way when `demo` is set.
    pub(crate) fn with_shape(seed: u64, users: u64, demo: bool) -> Self {
        Self {
            users,
            loyal_users: (users / 10).max(1),
            profile_key: mix64(seed ^ 0x5052_4F46_494C_4553),
            udid_key: mix64(seed ^ 0x5544_4944_5544_4944),
            seen: BitSet::new(users),
            registered: BitSet::new(users),
            next_session_from: HashMap::new(),
            last_prune_ms: i64::MIN,
            demo,
        }
    }

    /// Draws the user of a session starting at `start_ms`, skipping users whose previous
    /// session is too recent. `None` when every attempt hit a busy user (a population far too
    /// small for the session rate); the caller then drops that session start.
    pub(crate) fn pick_user(&mut self, rng: &mut Rng, start_ms: i64) -> Option<u64> {
        if start_ms.saturating_sub(self.last_prune_ms) >= PRUNE_EVERY_MS {
            self.next_session_from
                .retain(|_, free_from| *free_from > start_ms);
            self.last_prune_ms = start_ms;
        }
        for attempt in 0..PICK_ATTEMPTS {
            // A quarter of sessions come from loyal customers; retries draw from everyone.
            let index = if attempt == 0 && rng.chance(0.25) {
                rng.below(self.loyal_users)
            } else {
                rng.below(self.users)
            };
            let free = self
                .next_session_from
                .get(&index)
                .is_none_or(|free_from| *free_from <= start_ms);
            if free {
                return Some(index);
            }
        }
        None
    }

    pub(crate) fn is_new(&self, index: u64) -> bool {
        !self.seen.get(index)
    }

    pub(crate) fn is_registered(&self, index: u64) -> bool {
        self.registered.get(index)
    }

    /// Records a finished plan: the user has been seen, may have registered, and is busy until
    /// `last_event_ms` plus the session separation.
    pub(crate) fn record_session(&mut self, index: u64, last_event_ms: i64, registered: bool) {
        self.seen.set(index);
        if registered {
            self.registered.set(index);
        }
        self.next_session_from
            .insert(index, last_event_ms + SESSION_SEPARATION_MS);
    }

    /// The user's stable traits, recomputed from the seed on demand.
    pub(crate) fn profile(&self, index: u64) -> UserProfile {
        let mut rng = Rng::seeded(self.profile_key ^ mix64(index));
        let style_roll = rng.below(100);
        let udid = if style_roll < 80 {
            Udid {
                key: mix64(index ^ self.udid_key),
                style: UdidStyle::Cookie,
            }
        } else if style_roll < 95 {
            Udid {
                key: mix64(index ^ self.udid_key),
                style: UdidStyle::AppInstall,
            }
        } else {
            // CRM numbers are sequential in real shops.
            Udid {
                key: index + 1,
                style: UdidStyle::Crm,
            }
        };
        let (user_agent, home_ip, region, home_region) = if self.demo {
            let device = rng.pick_weighted(&DEMO_DEVICES, |d| d.1).0;
            let user_agent = rng.pick_weighted(user_agents(), |u| {
                if u.device == device {
                    u.users_per_mille
                } else {
                    0
                }
            });
            let region = rng.pick_weighted(regions(), |r| r.population_thousands);
            let home = regions()
                .iter()
                .position(|r| std::ptr::eq(r, region))
                .unwrap_or(0);
            let home_ip = address_in_region(&mut rng, home);
            (user_agent, home_ip, region, Some(home))
        } else {
            let user_agent = rng.pick_weighted(user_agents(), |u| u.users_per_mille);
            let home_ip = rng
                .pick_weighted(isp_prefixes(), |p| p.weight)
                .random_host(&mut rng);
            let region = rng.pick_weighted(regions(), |r| r.population_thousands);
            (user_agent, home_ip, region, None)
        };
        let explicit_region = match rng.below(100) {
            0..=4 => Some(region.name),
            5..=7 => Some(region.iso_code),
            _ => None,
        };
        let consent = match rng.below(100) {
            0..=77 => Some(Consent::Purposes {
                analytics: true,
                marketing: true,
            }),
            78..=89 => Some(Consent::Purposes {
                analytics: true,
                marketing: false,
            }),
            90..=92 => Some(Consent::All(true)),
            _ => None,
        };
        UserProfile {
            udid,
            user_agent,
            home_ip,
            explicit_region,
            consent,
            home_region,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_users_live_where_the_catalog_database_places_their_addresses() {
        let population = Population::with_shape(4, 100_000, true);
        let mut rng = Rng::seeded(4);
        let mut devices = HashMap::new();
        for index in 0..20_000 {
            let user = population.profile(index);
            let home = user.home_region.expect("demo users have a home region");
            let region = &regions()[home];
            let placed = crate::geoip::catalog_region_of(user.home_ip);
            assert_eq!(placed.map(|r| r.iso_code), Some(region.iso_code));
            if let Some(explicit) = user.explicit_region {
                assert!(explicit == region.name || explicit == region.iso_code);
            }
            let away = address_in_region(&mut rng, home);
            assert_eq!(
                crate::geoip::catalog_region_of(away).map(|r| r.iso_code),
                Some(region.iso_code)
            );
            *devices.entry(user.user_agent.device).or_insert(0u32) += 1;
        }
        let mobile = f64::from(devices[&DeviceClass::Mobile]) / 20_000.0;
        let tablet = f64::from(devices[&DeviceClass::Tablet]) / 20_000.0;
        assert!((0.63..=0.67).contains(&mobile), "{mobile}");
        assert!((0.04..=0.06).contains(&tablet), "{tablet}");
        // Without the demo shape, users are drawn as before: no home region.
        assert!(Population::new(4, 100).profile(3).home_region.is_none());
    }

    #[test]
    fn every_region_has_catalog_blocks() {
        for (index, region) in regions().iter().enumerate() {
            let blocks = region_blocks(index);
            assert!(!blocks.is_empty(), "{}", region.name);
            for block in blocks {
                assert_eq!(
                    crate::geoip::catalog_region_of(block.network).map(|r| r.iso_code),
                    Some(region.iso_code)
                );
            }
        }
    }

    #[test]
    fn profiles_are_stable_and_udids_distinct() {
        let population = Population::new(9, 10_000);
        let mut udids = std::collections::HashSet::new();
        for index in 0..10_000 {
            let a = population.profile(index);
            let b = population.profile(index);
            assert_eq!(a.udid, b.udid);
            assert_eq!(a.home_ip, b.home_ip);
            assert_eq!(a.user_agent.user_agent, b.user_agent.user_agent);
            assert!(
                udids.insert(a.udid.to_string()),
                "udid repeated for user {index}"
            );
        }
        // Another seed gives other people.
        let other = Population::new(10, 10_000);
        assert_ne!(population.profile(1).udid, other.profile(1).udid);
    }

    #[test]
    fn a_busy_user_is_not_picked_until_the_separation_has_passed() {
        let mut population = Population::new(1, 1);
        let mut rng = Rng::seeded(1);
        assert_eq!(population.pick_user(&mut rng, 0), Some(0));
        population.record_session(0, 10_000, false);
        assert_eq!(
            population.pick_user(&mut rng, 10_000 + SESSION_SEPARATION_MS - 1),
            None
        );
        assert_eq!(
            population.pick_user(&mut rng, 10_000 + SESSION_SEPARATION_MS),
            Some(0)
        );
        assert!(!population.is_new(0));
    }

    #[test]
    fn bits_are_kept_per_user() {
        let mut population = Population::new(1, 130);
        population.record_session(129, 0, true);
        assert!(population.is_registered(129));
        assert!(!population.is_registered(128));
        assert!(population.is_new(0));
        assert!(!population.is_new(129));
    }
}
