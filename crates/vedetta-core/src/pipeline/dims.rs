//! Interned dimension tuples.
//!
//! Every event carries (channel, campaign, device, region). The pipeline's per-user state
//! and its deltas refer to a tuple by a 4-byte id instead of four strings: that is most of
//! what keeps per-user state small. The table only grows; its size is bounded by
//! `max_campaigns`: past it, new campaign names are counted under `(other)`, so a client
//! sending a fresh campaign string with every event cannot exhaust memory. Channels are
//! bounded the same way ([`MAX_CHANNELS`], then `(other)`): real channel groupings have a
//! dozen values, so the bound only stops abuse.

use super::hash::{FastHashMap, same_bytes, sampled};
use super::kpi::DimsId;
use crate::enrich::{DeviceClass, Region};

/// Distinct channel names kept before new ones count as `(other)`.
pub const MAX_CHANNELS: usize = 1_000;
/// The channel name used past [`MAX_CHANNELS`].
pub const OTHER_CHANNEL: &str = "(other)";

/// The campaign name used when none is given.
pub const NO_CAMPAIGN: &str = "(none)";
/// The campaign name used past the cardinality bound.
pub const OTHER_CAMPAIGN: &str = "(other)";

/// One interned tuple.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dims {
    pub channel: String,
    pub campaign: String,
    pub device: String,
    pub region: String,
}

/// Interner of dimension tuples and of (channel, campaign) pairs for spend.
///
/// The lookup key is the tuple encoded part by part, each part prefixed with its length
/// (`tuple_key`): two different tuples always have different keys, whatever characters
/// a client puts in a campaign name. (Joining the parts with a separator let
/// `("a\u{1f}b", "c")` and `("a", "b\u{1f}c")` share one id.)
#[derive(Debug, Clone)]
pub struct DimsTable {
    ids: FastHashMap<Box<[u8]>, DimsId>,
    tuples: Vec<Dims>,
    campaigns: FastHashMap<Box<str>, ()>,
    channels: FastHashMap<Box<str>, ()>,
    max_campaigns: usize,
    /// Scratch buffer for the lookup key: a known tuple is found without allocating.
    key: Vec<u8>,
    /// (touch, place) → the tuple with the touch's channel and campaign and the place's
    /// device and region: where an attributed session counts. Derived, not snapshotted.
    attributed: FastHashMap<(DimsId, DimsId), DimsId>,
    /// A direct-mapped front of `ids`: by a sample of the four parts ([`sampled`]), the id
    /// last interned there, taken only when its tuple equals the parts (building and hashing
    /// the key was a tenth of an event's cost). Derived, not snapshotted.
    front: Box<[DimsId]>,
    /// An event's tuple in two steps, without comparing its device and region as strings:
    /// `touch_front`, by a sample of the channel and campaign, holds an id whose tuple has
    /// them (checked on both parts); `place_front` holds, by that id with the device and
    /// region as numbers, the id of the whole tuple (checked on all three). Derived, not
    /// snapshotted.
    touch_front: Box<[DimsId]>,
    place_front: Box<[(u64, DimsId)]>,
}

/// Slots of the front (a power of two): a shop's hot tuples, a few kilobytes.
const FRONT_SLOTS: usize = 4096;
/// An empty front slot.
const NO_ID: DimsId = DimsId::MAX;
/// An empty slot of the place front (no id with a device and region reads as this).
const NO_PLACE: u64 = u64::MAX;

/// The channel of a direct touch.
pub const DIRECT: &str = "direct";

impl DimsTable {
    pub fn new(max_campaigns: usize) -> Self {
        Self {
            ids: FastHashMap::default(),
            tuples: Vec::new(),
            campaigns: FastHashMap::default(),
            channels: FastHashMap::default(),
            max_campaigns,
            key: Vec::with_capacity(128),
            attributed: FastHashMap::default(),
            front: vec![NO_ID; FRONT_SLOTS].into_boxed_slice(),
            touch_front: vec![NO_ID; FRONT_SLOTS].into_boxed_slice(),
            place_front: vec![(NO_PLACE, NO_ID); FRONT_SLOTS].into_boxed_slice(),
        }
    }

    /// Whether the tuple's touch is direct.
    pub fn is_direct(&self, id: DimsId) -> bool {
        self.get(id).is_some_and(|dims| dims.channel == DIRECT)
    }

    /// The tuple with `touch`'s channel and campaign and `place`'s device and region.
    pub fn attributed(&mut self, touch: DimsId, place: DimsId) -> DimsId {
        if touch == place {
            return place;
        }
        if let Some(&id) = self.attributed.get(&(touch, place)) {
            return id;
        }
        let (Some(t), Some(p)) = (self.get(touch), self.get(place)) else {
            // Ids come from this table; an unknown one counts where the place does.
            return place;
        };
        let (channel, campaign) = (t.channel.clone(), t.campaign.clone());
        let (device, region) = (p.device.clone(), p.region.clone());
        let id = self.intern(&channel, &campaign, &device, &region);
        self.attributed.insert((touch, place), id);
        id
    }

    /// Whether two ids name the same touch (channel and campaign), whatever their device
    /// and region.
    pub fn same_touch(&self, a: DimsId, b: DimsId) -> bool {
        a == b
            || matches!((self.get(a), self.get(b)), (Some(x), Some(y))
                if x.channel == y.channel && x.campaign == y.campaign)
    }

    /// The id of a tuple, interning it if new. Spend pairs use `device = region = ""`.
    pub fn intern(&mut self, channel: &str, campaign: &str, device: &str, region: &str) -> DimsId {
        // The front's id is the answer when its tuple is these very parts: every id's tuple
        // is interned under its own key, so the lookup below would find that same id.
        let slot = front_slot([channel, campaign, device, region]);
        if let Some(dims) = self.tuples.get(self.front[slot] as usize)
            && same_bytes(dims.channel.as_bytes(), channel.as_bytes())
            && same_bytes(dims.campaign.as_bytes(), campaign.as_bytes())
            && same_bytes(dims.device.as_bytes(), device.as_bytes())
            && same_bytes(dims.region.as_bytes(), region.as_bytes())
        {
            return self.front[slot];
        }
        let id = self.intern_by_key(channel, campaign, device, region);
        self.front[slot] = id;
        id
    }

    /// The id of an event's tuple: [`Self::intern`] of the four parts, the device and
    /// region as their dimension values, looked up by the touch first (see `touch_front`).
    pub fn intern_event(
        &mut self,
        channel: &str,
        campaign: &str,
        device: DeviceClass,
        region: Region,
    ) -> DimsId {
        let slot = touch_slot(channel, campaign);
        let touch = self.touch_front[slot];
        if let Some(dims) = self.tuples.get(touch as usize)
            && same_bytes(dims.channel.as_bytes(), channel.as_bytes())
            && same_bytes(dims.campaign.as_bytes(), campaign.as_bytes())
        {
            // Any id with these very channel and campaign stands for them: the whole
            // tuple's id depends only on the four parts.
            let place =
                u64::from(touch) | u64::from(device as u8) << 32 | u64::from(region.index()) << 40;
            let place_slot = (place.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                >> (64 - FRONT_SLOTS.trailing_zeros())) as usize;
            let (held, id) = self.place_front[place_slot];
            if held == place {
                return id;
            }
            let id = self.intern(channel, campaign, device.as_str(), region.code());
            self.place_front[place_slot] = (place, id);
            return id;
        }
        let id = self.intern(channel, campaign, device.as_str(), region.code());
        self.touch_front[slot] = id;
        id
    }

    fn intern_by_key(
        &mut self,
        channel: &str,
        campaign: &str,
        device: &str,
        region: &str,
    ) -> DimsId {
        // A known tuple needs one lookup: its campaign was admitted when it was interned (or
        // it is the overflow campaign, and the campaign set is full for good).
        self.set_key(channel, campaign, device, region);
        if let Some(&id) = self.ids.get(self.key.as_slice()) {
            return id;
        }
        let bounded = self.bounded_campaign(campaign);
        let bounded_channel = self.bounded_channel(channel);
        if bounded != campaign || bounded_channel != channel {
            self.set_key(bounded_channel, bounded, device, region);
            if let Some(&id) = self.ids.get(self.key.as_slice()) {
                return id;
            }
        }
        let campaign = bounded;
        let channel = bounded_channel;
        let id = self.tuples.len() as DimsId;
        self.tuples.push(Dims {
            channel: channel.to_string(),
            campaign: campaign.to_string(),
            device: device.to_string(),
            region: region.to_string(),
        });
        self.ids.insert(self.key.as_slice().into(), id);
        id
    }

    fn set_key(&mut self, channel: &str, campaign: &str, device: &str, region: &str) {
        tuple_key(&mut self.key, [channel, campaign, device, region]);
    }

    fn bounded_channel<'a>(&mut self, channel: &'a str) -> &'a str {
        if self.channels.contains_key(channel) {
            return channel;
        }
        if self.channels.len() >= MAX_CHANNELS {
            return OTHER_CHANNEL;
        }
        self.channels.insert(channel.into(), ());
        channel
    }

    fn bounded_campaign<'a>(&mut self, campaign: &'a str) -> &'a str {
        if self.campaigns.contains_key(campaign) {
            return campaign;
        }
        if self.campaigns.len() >= self.max_campaigns {
            return OTHER_CAMPAIGN;
        }
        self.campaigns.insert(campaign.into(), ());
        campaign
    }

    pub fn get(&self, id: DimsId) -> Option<&Dims> {
        self.tuples.get(id as usize)
    }

    pub fn len(&self) -> usize {
        self.tuples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tuples.is_empty()
    }

    /// Every tuple, in id order (for snapshots).
    pub fn tuples(&self) -> &[Dims] {
        &self.tuples
    }

    /// Rebuilds the table from tuples in id order (from a snapshot).
    pub fn restore(max_campaigns: usize, tuples: Vec<Dims>) -> Self {
        let mut table = Self::new(max_campaigns);
        for dims in tuples {
            table.intern(&dims.channel, &dims.campaign, &dims.device, &dims.region);
        }
        table
    }
}

/// The front slot of a tuple's parts: their samples, chained.
fn front_slot(parts: [&str; 4]) -> usize {
    let digest = parts.iter().fold(0u64, |acc, part| {
        acc.rotate_left(23) ^ sampled(part.as_bytes())
    });
    (digest.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FRONT_SLOTS.trailing_zeros())) as usize
}

/// The touch front slot of a channel and campaign.
fn touch_slot(channel: &str, campaign: &str) -> usize {
    let digest = sampled(channel.as_bytes()).rotate_left(23) ^ sampled(campaign.as_bytes());
    (digest.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FRONT_SLOTS.trailing_zeros())) as usize
}

/// Writes the in-memory lookup key of a tuple into `out`. Length prefixes make the encoding
/// injective: no part's content can be read as a boundary (the key is never stored).
fn tuple_key(out: &mut Vec<u8>, parts: [&str; 4]) {
    out.clear();
    let [channel, campaign, device, region] = parts;
    // Each part but the last is preceded by its length (LEB128: one byte below 128, the
    // common case), so the last one is simply the rest: the encoding is prefix-free, and
    // short keys keep the hash of every event cheap.
    for part in [channel, campaign, device] {
        let mut len = part.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(region.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_tuple_interned_by_its_touch_first_is_the_tuple_of_its_four_parts() {
        // Two campaigns admitted, the third counted as `(other)`; every device and region,
        // each asked three times in turn (the fronts filled and then answering).
        let mut by_event = DimsTable::new(2);
        let mut by_parts = DimsTable::new(2);
        let devices = [
            DeviceClass::Mobile,
            DeviceClass::Desktop,
            DeviceClass::Unknown,
        ];
        let regions: Vec<Region> = Region::all().chain([Region::UNKNOWN]).collect();
        for _ in 0..3 {
            for (channel, campaign) in [("social", "saldi"), ("email", "news"), ("social", "x")] {
                for &device in &devices {
                    for &region in &regions {
                        let id = by_event.intern_event(channel, campaign, device, region);
                        let expected =
                            by_parts.intern(channel, campaign, device.as_str(), region.code());
                        assert_eq!(id, expected, "{channel} {campaign} {device:?} {region:?}");
                        assert_eq!(by_event.get(id), by_parts.get(expected));
                    }
                }
            }
        }
        let other = by_event.intern_event("social", "x", devices[0], regions[0]);
        assert_eq!(
            by_event.get(other).map(|d| d.campaign.as_str()),
            Some(OTHER_CAMPAIGN)
        );
    }

    #[test]
    fn keys_of_long_parts_cannot_collide_either() {
        let mut t = DimsTable::new(100);
        let long = "c".repeat(300);
        let a = t.intern(&long, "x", "mobile", "IT-25");
        let b = t.intern(&long[..299], "cx", "mobile", "IT-25");
        let c = t.intern(&long, "", "xmobile", "IT-25");
        assert_eq!(
            [a, b, c]
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );
        assert_eq!(t.intern(&long, "x", "mobile", "IT-25"), a);
    }

    /// Issue 8: the key joined the parts with U+001F, so a campaign holding that character
    /// could take the id of another tuple (and its KPIs with it).
    #[test]
    fn tuples_with_the_old_separator_inside_never_share_an_id() {
        let mut t = DimsTable::new(100);
        let a = t.intern("social\u{1f}x", "y", "mobile", "IT-25");
        let b = t.intern("social", "x\u{1f}y", "mobile", "IT-25");
        let c = t.intern("social", "x", "y\u{1f}mobile", "IT-25");
        let d = t.intern("social", "x", "y", "mobile\u{1f}IT-25");
        assert_eq!(t.len(), 4, "four different tuples, four ids");
        assert_ne!(a, b);
        assert_eq!(t.get(a).map(|d| d.channel.as_str()), Some("social\u{1f}x"));
        assert_eq!(t.get(b).map(|d| d.campaign.as_str()), Some("x\u{1f}y"));
        assert_eq!(t.get(c).map(|d| d.device.as_str()), Some("y\u{1f}mobile"));
        assert_eq!(
            t.get(d).map(|d| d.region.as_str()),
            Some("mobile\u{1f}IT-25")
        );
        // Empty parts move no boundary either.
        let e = t.intern("", "social", "", "");
        let f = t.intern("social", "", "", "");
        assert_ne!(e, f);
        assert_eq!(t.intern("social\u{1f}x", "y", "mobile", "IT-25"), a);
    }

    #[test]
    fn the_front_gives_the_ids_of_the_keyed_lookup() {
        // Table `a` answers through its front, `b` by key only; over a stream with many
        // repeats, overflowing campaigns, literal overflow names and near-identical parts,
        // they agree on every id (and so on every tuple).
        let (mut a, mut b) = (DimsTable::new(20), DimsTable::new(20));
        let channels = [
            "direct",
            "paid_search",
            "social",
            "(other)",
            "social\u{1f}x",
            "",
        ];
        let devices = ["mobile", "desktop", "tablet", ""];
        let regions = ["IT-25", "IT-62", "unknown", "IT-2", ""];
        let mut front_hits = 0;
        let mut seed = 7u64;
        for step in 0..20_000u64 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let pick = |shift: u32, n: usize| (seed >> shift) as usize % n;
            let campaign = match pick(8, 4) {
                0 => NO_CAMPAIGN.to_string(),
                1 => OTHER_CAMPAIGN.to_string(),
                _ => format!("campaign-{}", pick(16, 40)),
            };
            let parts = (
                channels[pick(24, channels.len())],
                campaign.as_str(),
                devices[pick(32, devices.len())],
                regions[pick(40, regions.len())],
            );
            let before = a.front[front_slot([parts.0, parts.1, parts.2, parts.3])];
            let id = a.intern(parts.0, parts.1, parts.2, parts.3);
            front_hits += usize::from(before == id);
            assert_eq!(
                id,
                b.intern_by_key(parts.0, parts.1, parts.2, parts.3),
                "step {step}: {parts:?}"
            );
        }
        assert_eq!(a.tuples(), b.tuples());
        assert!(front_hits > 10_000, "{front_hits} answers from the front");
    }

    #[test]
    fn channels_are_bounded() {
        let mut t = DimsTable::new(10);
        for n in 0..MAX_CHANNELS {
            t.intern(&format!("c{n}"), "x", "mobile", "IT-25");
        }
        let over = t.intern("one-too-many", "x", "mobile", "IT-25");
        assert_eq!(t.get(over).map(|d| d.channel.as_str()), Some(OTHER_CHANNEL));
        assert_eq!(t.intern("yet-another", "x", "mobile", "IT-25"), over);
        let known = t.intern("c7", "x", "mobile", "IT-25");
        assert_eq!(t.get(known).map(|d| d.channel.as_str()), Some("c7"));
    }

    #[test]
    fn same_tuple_same_id_and_campaigns_are_bounded() {
        let mut t = DimsTable::new(2);
        let a = t.intern("social", "a", "mobile", "IT-25");
        assert_eq!(t.intern("social", "a", "mobile", "IT-25"), a);
        let b = t.intern("social", "b", "mobile", "IT-25");
        assert_ne!(a, b);
        let c = t.intern("social", "c", "mobile", "IT-25");
        assert_eq!(t.get(c).map(|d| d.campaign.as_str()), Some(OTHER_CAMPAIGN));
        assert_eq!(t.intern("social", "d", "mobile", "IT-25"), c);
        let restored = DimsTable::restore(2, t.tuples().to_vec());
        assert_eq!(restored.tuples(), t.tuples());
    }
}
