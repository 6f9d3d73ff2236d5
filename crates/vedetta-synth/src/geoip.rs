//! A small MaxMind DB writer, so that tests and demos have a GeoIP database that knows the
//! synthetic networks.
//!
//! Vedetta's enrichment places an event in an Italian region through a GeoIP database in the
//! MaxMind DB format (GeoLite2-City, DB-IP City Lite). Real databases are large, licensed and
//! change every week; a test needs a tiny one whose answers it knows. This module writes one,
//! following the MaxMind DB format specification v2.0:
//!
//! ```text
//! [binary search tree: node_count nodes of two records each]
//! [16 zero bytes: the data section separator]
//! [data section: one map per distinct record]
//! ["\xAB\xCD\xEFMaxMind.com"][metadata map]
//! ```
//!
//! The tree is an IPv6 tree (`ip_version` 6): IPv4 networks live under `::/96`, where readers
//! look for them, and `::ffff:0:0/96` (IPv4-mapped addresses) points at the same subtree, as
//! MaxMind's own databases do. Records have the GeoIP2-City layout, reduced to what region
//! enrichment reads: `{"country":{"iso_code":"IT"},"subdivisions":[{"iso_code":"25",
//! "names":{"en":"Lombardy","it":"Lombardia"}}]}`.
//!
//! [`catalog_region_mmdb`] covers every prefix of [`isp_prefixes`]: each prefix is split into
//! 16 blocks spread over the twenty regions (every region gets at least one), as a real
//! database places parts of a national provider's range in different regions.
//! [`catalog_region_of`] is the answer key. Like the rest of the crate the output is
//! deterministic: `build_epoch` is a constant, never the clock.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::catalog::{IspPrefix, RegionSpec, isp_prefixes, regions};

/// What one network maps to: the part of a GeoIP2-City record that region enrichment reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CityRecord<'a> {
    /// ISO 3166-1 alpha-2 code (`country.iso_code`), e.g. `IT`.
    pub country_iso_code: &'a str,
    /// `subdivisions[0]`, if the database names one.
    pub subdivision: Option<Subdivision<'a>>,
}

/// A first-level subdivision as GeoIP2-City stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subdivision<'a> {
    /// The ISO 3166-2 code without the country prefix (`25` for IT-25). DB-IP's free
    /// databases omit it and give only names, so it is optional here too.
    pub iso_code: Option<&'a str>,
    /// `names.en`.
    pub name_en: Option<&'a str>,
    /// `names.it`.
    pub name_it: Option<&'a str>,
}

/// One network of the database. Bits of `network` past `prefix_len` are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeoIpNetwork<'a> {
    pub network: IpAddr,
    /// At most 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
    pub record: CityRecord<'a>,
}

/// Bits per search-tree record. The format allows 24, 28 and 32; readers must handle all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordSize {
    /// The smallest size that can address the tree and data section.
    #[default]
    Smallest,
    Bits24,
    Bits28,
    Bits32,
}

impl RecordSize {
    fn minimum_bits(self) -> u16 {
        match self {
            RecordSize::Smallest | RecordSize::Bits24 => 24,
            RecordSize::Bits28 => 28,
            RecordSize::Bits32 => 32,
        }
    }
}

/// English names of the regions, as GeoLite2 gives them in `names.en`.
const ENGLISH_REGION_NAMES: [(&str, &str); 20] = [
    ("IT-21", "Piedmont"),
    ("IT-23", "Aosta Valley"),
    ("IT-25", "Lombardy"),
    ("IT-32", "Trentino-Alto Adige"),
    ("IT-34", "Veneto"),
    ("IT-36", "Friuli Venezia Giulia"),
    ("IT-42", "Liguria"),
    ("IT-45", "Emilia-Romagna"),
    ("IT-52", "Tuscany"),
    ("IT-55", "Umbria"),
    ("IT-57", "Marche"),
    ("IT-62", "Lazio"),
    ("IT-65", "Abruzzo"),
    ("IT-67", "Molise"),
    ("IT-72", "Campania"),
    ("IT-75", "Apulia"),
    ("IT-77", "Basilicata"),
    ("IT-78", "Calabria"),
    ("IT-82", "Sicily"),
    ("IT-88", "Sardinia"),
];

/// The Italian record for a region: country IT, the code without `IT-`, English and Italian
/// names.
pub fn italian_region_record(region: &RegionSpec) -> CityRecord<'static> {
    let name_en = ENGLISH_REGION_NAMES
        .iter()
        .find(|(code, _)| *code == region.iso_code)
        .map(|(_, name)| *name);
    CityRecord {
        country_iso_code: "IT",
        subdivision: Some(Subdivision {
            iso_code: region.iso_code.strip_prefix("IT-"),
            name_en,
            name_it: Some(region.name),
        }),
    }
}

/// Writes a database mapping each network to its Italian region, given by ISO 3166-2 code
/// with or without the `IT-` prefix (`"IT-25"`, `"25"`) or by its catalog name in any case
/// (`"Lombardia"`), as the truth's `IpRegion` table allows.
///
/// # Panics
/// If a region is not one of the twenty, or a prefix length exceeds the address width.
pub fn write_region_mmdb(entries: &[(IpAddr, u8, &str)]) -> Vec<u8> {
    let networks: Vec<GeoIpNetwork<'static>> = entries
        .iter()
        .map(|&(network, prefix_len, code)| {
            let code = code.trim();
            let digits = code
                .get(..3)
                .filter(|prefix| prefix.eq_ignore_ascii_case("IT-"))
                .map_or(code, |_| &code[3..]);
            let region = regions()
                .iter()
                .find(|r| {
                    r.iso_code.strip_prefix("IT-") == Some(digits)
                        || r.name.eq_ignore_ascii_case(code)
                })
                .unwrap_or_else(|| panic!("{code} is not an Italian region code or name"));
            GeoIpNetwork {
                network,
                prefix_len,
                record: italian_region_record(region),
            }
        })
        .collect();
    write_city_mmdb(&networks, RecordSize::Smallest)
}

/// Blocks each catalog prefix is split into (a power of two).
const BLOCKS_PER_PREFIX: usize = 16;
const BLOCK_BITS: u8 = BLOCKS_PER_PREFIX.trailing_zeros() as u8;

/// The networks of [`catalog_region_mmdb`]: every [`isp_prefixes`] prefix split into 16 blocks,
/// each with its region.
///
/// Blocks go to regions in proportion to population plus a floor that gives even Valle
/// d'Aosta one block, then a fixed permutation scatters them over the providers, so that
/// each provider serves several regions.
pub fn catalog_region_networks() -> Vec<(IpAddr, u8, &'static RegionSpec)> {
    let prefixes = isp_prefixes();
    let blocks = prefixes.len() * BLOCKS_PER_PREFIX;
    let regions = regions();
    let population: u64 = regions
        .iter()
        .map(|r| u64::from(r.population_thousands))
        .sum();
    // Region i owns an interval of width blocks·pop_i + floor on a line of total length
    // `line`; block k takes the region under its midpoint. The floor (2·population) is wider
    // than the spacing between midpoints (line / blocks ≈ 1.16·population), so every region
    // holds at least one midpoint.
    let floor = 2 * population;
    let weight = |r: &RegionSpec| blocks as u64 * u64::from(r.population_thousands) + floor;
    let line: u64 = regions.iter().map(weight).sum();
    let region_at = |k: usize| {
        let midpoint = (2 * k as u64 + 1) * line / (2 * blocks as u64);
        let mut start = 0;
        for region in regions {
            start += weight(region);
            if midpoint < start {
                return region;
            }
        }
        &regions[regions.len() - 1]
    };
    // An odd multiplier is a bijection modulo a power of two: it scatters consecutive
    // (same-region) blocks over different prefixes.
    let mut out = Vec::with_capacity(blocks);
    for slot in 0..blocks {
        let k = (slot * 167 + 89) % blocks;
        let prefix = &prefixes[slot / BLOCKS_PER_PREFIX];
        let (network, prefix_len) = block_of(prefix, slot % BLOCKS_PER_PREFIX);
        out.push((network, prefix_len, region_at(k)));
    }
    out
}

/// The blocks of [`catalog_region_networks`] grouped by region (in [`regions`] order), each as
/// a prefix of its provider with the provider's weight: where the demo draws the addresses of
/// a region's users from, so that the catalog database places them in their region.
pub(crate) fn catalog_blocks_by_region() -> Vec<Vec<IspPrefix>> {
    let prefixes = isp_prefixes();
    let mut by_region = vec![Vec::new(); regions().len()];
    for (slot, (network, prefix_len, region)) in catalog_region_networks().into_iter().enumerate() {
        let provider = &prefixes[slot / BLOCKS_PER_PREFIX];
        if let Some(index) = regions().iter().position(|r| std::ptr::eq(r, region)) {
            by_region[index].push(IspPrefix {
                isp: provider.isp,
                network,
                prefix_len,
                weight: provider.weight,
            });
        }
    }
    by_region
}

/// Block `index` of a catalog prefix: the prefix lengthened by [`BLOCK_BITS`].
fn block_of(prefix: &IspPrefix, index: usize) -> (IpAddr, u8) {
    let prefix_len = prefix.prefix_len + BLOCK_BITS;
    let network = match prefix.network {
        IpAddr::V4(base) => {
            let shift = 32 - u32::from(prefix_len);
            IpAddr::from((u32::from(base) | ((index as u32) << shift)).to_be_bytes())
        }
        IpAddr::V6(base) => {
            let shift = 128 - u32::from(prefix_len);
            IpAddr::from((u128::from(base) | ((index as u128) << shift)).to_be_bytes())
        }
    };
    (network, prefix_len)
}

/// The region [`catalog_region_mmdb`] gives `ip`, or `None` outside the catalog's prefixes.
/// The answer key for tests of GeoIP enrichment.
pub fn catalog_region_of(ip: IpAddr) -> Option<&'static RegionSpec> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    catalog_region_networks()
        .into_iter()
        .find(|&(network, prefix_len, _)| contains(network, prefix_len, ip))
        .map(|(_, _, region)| region)
}

fn contains(network: IpAddr, prefix_len: u8, ip: IpAddr) -> bool {
    match (network, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let shift = 32 - u32::from(prefix_len);
            u32::from(net).checked_shr(shift) == u32::from(ip).checked_shr(shift)
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let shift = 128 - u32::from(prefix_len);
            u128::from(net).checked_shr(shift) == u128::from(ip).checked_shr(shift)
        }
        _ => false,
    }
}

/// A database placing every address of the catalog's provider prefixes in a region (see
/// [`catalog_region_networks`]).
pub fn catalog_region_mmdb() -> Vec<u8> {
    let networks: Vec<GeoIpNetwork<'static>> = catalog_region_networks()
        .into_iter()
        .map(|(network, prefix_len, region)| GeoIpNetwork {
            network,
            prefix_len,
            record: italian_region_record(region),
        })
        .collect();
    write_city_mmdb(&networks, RecordSize::Smallest)
}

/// A fixed build time (2024-01-01T00:00:00Z): the output must not depend on the clock.
const BUILD_EPOCH: u64 = 1_704_067_200;
const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
const DATA_SECTION_SEPARATOR: [u8; 16] = [0; 16];

/// Writes a GeoIP2-City-shaped MaxMind DB holding `networks`.
///
/// Where networks overlap, the most specific one wins for the addresses it covers, whatever
/// the order of `networks` (a longest-prefix match, as lookups in real databases behave);
/// between two equal networks the later wins. Addresses in no network are absent: readers
/// return no data for them. `record_size` is a minimum: a larger one is used if the tree and
/// data need it.
///
/// # Panics
/// If a prefix length exceeds the width of its address family.
pub fn write_city_mmdb(networks: &[GeoIpNetwork<'_>], record_size: RecordSize) -> Vec<u8> {
    // The data section: each distinct record once; networks point at their record's offset.
    let mut data = Vec::new();
    let mut offsets: HashMap<CityRecord<'_>, u32> = HashMap::new();
    // Positions in the IPv6 tree: IPv4 networks sit under ::/96.
    let mut placed: Vec<(u128, u32, &CityRecord<'_>)> = networks
        .iter()
        .map(|entry| match entry.network {
            IpAddr::V4(v4) => {
                assert!(entry.prefix_len <= 32, "IPv4 prefix /{}", entry.prefix_len);
                let depth = 96 + u32::from(entry.prefix_len);
                (u128::from(u32::from(v4)), depth, &entry.record)
            }
            IpAddr::V6(v6) => {
                assert!(entry.prefix_len <= 128, "IPv6 prefix /{}", entry.prefix_len);
                (u128::from(v6), u32::from(entry.prefix_len), &entry.record)
            }
        })
        .collect();
    // Inserting general networks first lets the specific ones split them: longest prefix
    // wins. The sort is stable, so equal networks keep their order and the later wins.
    placed.sort_by_key(|&(_, depth, _)| depth);
    let mut tree = Trie::new();
    for (bits, depth, record) in placed {
        let offset = *offsets.entry(*record).or_insert_with(|| {
            let offset = data.len() as u32;
            encode_city_record(record, &mut data);
            offset
        });
        tree.insert(bits, depth, Slot::Data(offset));
    }
    tree.alias_ipv4_mapped();

    let order = tree.reachable_nodes();
    let node_count = order.len() as u32;
    let number: HashMap<u32, u32> = order
        .iter()
        .enumerate()
        .map(|(position, &node)| (node, position as u32))
        .collect();
    // Record values: a node number, `node_count` for "no data", or a pointer past the tree
    // and separator into the data section.
    let value = |slot: Slot| -> u64 {
        match slot {
            Slot::Node(node) => u64::from(number[&node]),
            Slot::Empty => u64::from(node_count),
            Slot::Data(offset) => u64::from(node_count) + 16 + u64::from(offset),
        }
    };
    let largest = u64::from(node_count) + 16 + data.len() as u64;
    let bits = [24u16, 28, 32]
        .into_iter()
        .find(|&bits| bits >= record_size.minimum_bits() && largest < 1u64 << bits)
        .unwrap_or(32);

    let mut out = Vec::with_capacity(order.len() * usize::from(bits) / 4 + data.len() + 256);
    for &node in &order {
        let [left, right] = tree.nodes[node as usize].map(value);
        write_node(&mut out, bits, left as u32, right as u32);
    }
    out.extend_from_slice(&DATA_SECTION_SEPARATOR);
    out.extend_from_slice(&data);
    out.extend_from_slice(METADATA_MARKER);
    encode_metadata(&mut out, node_count, bits);
    out
}

fn write_node(out: &mut Vec<u8>, bits: u16, left: u32, right: u32) {
    match bits {
        24 => {
            out.extend_from_slice(&left.to_be_bytes()[1..]);
            out.extend_from_slice(&right.to_be_bytes()[1..]);
        }
        28 => {
            // Three low bytes of each record; the middle byte holds the left record's top
            // nibble, then the right record's.
            out.extend_from_slice(&left.to_be_bytes()[1..]);
            out.push((((left >> 24) & 0x0F) << 4) as u8 | ((right >> 24) & 0x0F) as u8);
            out.extend_from_slice(&right.to_be_bytes()[1..]);
        }
        _ => {
            out.extend_from_slice(&left.to_be_bytes());
            out.extend_from_slice(&right.to_be_bytes());
        }
    }
}

/// One record of a tree node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Empty,
    Node(u32),
    /// Offset into the data section.
    Data(u32),
}

/// The search tree while it is built: nodes in an arena, root at 0. Nodes orphaned by a
/// covering network inserted later stay in the arena but are never written.
struct Trie {
    nodes: Vec<[Slot; 2]>,
}

impl Trie {
    fn new() -> Self {
        Self {
            nodes: vec![[Slot::Empty; 2]],
        }
    }

    fn bit(bits: u128, depth: u32) -> usize {
        ((bits >> (127 - depth)) & 1) as usize
    }

    fn push(&mut self, children: [Slot; 2]) -> u32 {
        self.nodes.push(children);
        (self.nodes.len() - 1) as u32
    }

    /// Maps the first `depth` bits of `bits` to `slot`.
    fn insert(&mut self, bits: u128, depth: u32, slot: Slot) {
        if depth == 0 {
            self.nodes[0] = [slot; 2];
            return;
        }
        let mut node = 0u32;
        for level in 0..depth - 1 {
            let side = Self::bit(bits, level);
            node = match self.nodes[node as usize][side] {
                Slot::Node(child) => child,
                // A more specific network inside a covered one: split the covering record so
                // that the rest of it keeps its data.
                covering @ (Slot::Empty | Slot::Data(_)) => {
                    let child = self.push([covering; 2]);
                    self.nodes[node as usize][side] = Slot::Node(child);
                    child
                }
            };
        }
        self.nodes[node as usize][Self::bit(bits, depth - 1)] = slot;
    }

    /// Points `::ffff:0:0/96` at the IPv4 subtree under `::/96`, unless either is not a plain
    /// path of nodes (then there is nothing to share, or the range was given explicitly).
    fn alias_ipv4_mapped(&mut self) {
        let mut node = 0u32;
        for _ in 0..96 {
            match self.nodes[node as usize][0] {
                Slot::Node(child) => node = child,
                Slot::Empty | Slot::Data(_) => return,
            }
        }
        let ipv4_root = node;
        let mapped: u128 = 0xffff << 32;
        let mut node = 0u32;
        for level in 0..95 {
            let side = Self::bit(mapped, level);
            node = match self.nodes[node as usize][side] {
                Slot::Node(child) => child,
                Slot::Empty => {
                    let child = self.push([Slot::Empty; 2]);
                    self.nodes[node as usize][side] = Slot::Node(child);
                    child
                }
                Slot::Data(_) => return,
            };
        }
        let last = &mut self.nodes[node as usize][Self::bit(mapped, 95)];
        if *last == Slot::Empty {
            *last = Slot::Node(ipv4_root);
        }
    }

    /// The nodes reachable from the root, breadth first, each once (the IPv4 subtree is
    /// reached twice through the alias). Their position is their number in the file.
    fn reachable_nodes(&self) -> Vec<u32> {
        let mut seen = vec![false; self.nodes.len()];
        let mut order = vec![0u32];
        seen[0] = true;
        let mut next = 0;
        while next < order.len() {
            for slot in self.nodes[order[next] as usize] {
                if let Slot::Node(child) = slot
                    && !seen[child as usize]
                {
                    seen[child as usize] = true;
                    order.push(child);
                }
            }
            next += 1;
        }
        order
    }
}

// Data section encoding (spec "Output Data Section"): a control byte with the type in the top
// three bits and the payload size in the low five; types above 7 are "extended" (type 0 in
// the control byte, type − 7 in the next byte); sizes of 29 and more continue in 1–3 bytes.

const TYPE_STRING: u8 = 2;
const TYPE_UINT16: u8 = 5;
const TYPE_UINT32: u8 = 6;
const TYPE_MAP: u8 = 7;
const TYPE_UINT64: u8 = 9;
const TYPE_ARRAY: u8 = 11;

fn control(out: &mut Vec<u8>, data_type: u8, size: usize) {
    let (size_bits, extra): (u8, &[u8]) = match size {
        0..29 => (size as u8, &[]),
        29..285 => (29, &[(size - 29) as u8]),
        285..65_821 => (30, &((size - 285) as u16).to_be_bytes()),
        _ => (31, &((size - 65_821) as u32).to_be_bytes()[1..]),
    };
    if data_type <= 7 {
        out.push(data_type << 5 | size_bits);
    } else {
        out.push(size_bits);
        out.push(data_type - 7);
    }
    out.extend_from_slice(extra);
}

fn string(out: &mut Vec<u8>, text: &str) {
    control(out, TYPE_STRING, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// An unsigned integer in as few big-endian bytes as it needs (zero takes none).
fn unsigned(out: &mut Vec<u8>, data_type: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = (value.leading_zeros() / 8) as usize;
    control(out, data_type, bytes.len() - skip);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode_city_record(record: &CityRecord<'_>, out: &mut Vec<u8>) {
    control(out, TYPE_MAP, 1 + usize::from(record.subdivision.is_some()));
    string(out, "country");
    control(out, TYPE_MAP, 1);
    string(out, "iso_code");
    string(out, record.country_iso_code);
    if let Some(subdivision) = &record.subdivision {
        string(out, "subdivisions");
        control(out, TYPE_ARRAY, 1);
        let names = [("en", subdivision.name_en), ("it", subdivision.name_it)];
        let named = names.iter().filter(|(_, name)| name.is_some()).count();
        control(
            out,
            TYPE_MAP,
            usize::from(subdivision.iso_code.is_some()) + usize::from(named > 0),
        );
        if let Some(code) = subdivision.iso_code {
            string(out, "iso_code");
            string(out, code);
        }
        if named > 0 {
            string(out, "names");
            control(out, TYPE_MAP, named);
            for (language, name) in names {
                if let Some(name) = name {
                    string(out, language);
                    string(out, name);
                }
            }
        }
    }
}

fn encode_metadata(out: &mut Vec<u8>, node_count: u32, record_size: u16) {
    control(out, TYPE_MAP, 9);
    string(out, "binary_format_major_version");
    unsigned(out, TYPE_UINT16, 2);
    string(out, "binary_format_minor_version");
    unsigned(out, TYPE_UINT16, 0);
    string(out, "build_epoch");
    unsigned(out, TYPE_UINT64, BUILD_EPOCH);
    string(out, "database_type");
    string(out, "GeoIP2-City");
    string(out, "description");
    control(out, TYPE_MAP, 1);
    string(out, "en");
    string(
        out,
        "Vedetta synthetic GeoIP database (test data, not real locations)",
    );
    string(out, "ip_version");
    unsigned(out, TYPE_UINT16, 6);
    string(out, "languages");
    control(out, TYPE_ARRAY, 2);
    string(out, "en");
    string(out, "it");
    string(out, "node_count");
    unsigned(out, TYPE_UINT32, u64::from(node_count));
    string(out, "record_size");
    unsigned(out, TYPE_UINT16, u64::from(record_size));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn control_bytes_follow_the_spec_size_forms() {
        let mut out = Vec::new();
        control(&mut out, TYPE_STRING, 3);
        assert_eq!(out, [0x43]);
        out.clear();
        control(&mut out, TYPE_STRING, 29 + 7);
        assert_eq!(out, [0x5D, 7]);
        out.clear();
        control(&mut out, TYPE_STRING, 285 + 0x0102);
        assert_eq!(out, [0x5E, 0x01, 0x02]);
        out.clear();
        control(&mut out, TYPE_STRING, 65_821 + 0x010203);
        assert_eq!(out, [0x5F, 0x01, 0x02, 0x03]);
        out.clear();
        // Extended type: array (11) is type 0 in the control byte and 11 − 7 after it.
        control(&mut out, TYPE_ARRAY, 2);
        assert_eq!(out, [0x02, 0x04]);
        out.clear();
        unsigned(&mut out, TYPE_UINT64, 0x0001_0000);
        assert_eq!(out, [0x03, 0x02, 0x01, 0x00, 0x00]);
        out.clear();
        unsigned(&mut out, TYPE_UINT16, 0);
        assert_eq!(out, [0xA0], "zero is a uint16 with no payload bytes");
    }

    #[test]
    fn records_28_bits_share_the_middle_nibbles() {
        let mut out = Vec::new();
        write_node(&mut out, 28, 0x0ABC_DEF1, 0x0234_5678);
        assert_eq!(out, [0xBC, 0xDE, 0xF1, 0xA2, 0x34, 0x56, 0x78]);
    }

    #[test]
    fn catalog_networks_cover_every_prefix_and_every_region() {
        let networks = catalog_region_networks();
        assert_eq!(networks.len(), isp_prefixes().len() * BLOCKS_PER_PREFIX);
        for region in regions() {
            assert!(
                networks
                    .iter()
                    .any(|(_, _, r)| r.iso_code == region.iso_code),
                "{} has no block",
                region.name
            );
        }
        let lombardia = networks
            .iter()
            .filter(|(_, _, r)| r.iso_code == "IT-25")
            .count();
        let molise = networks
            .iter()
            .filter(|(_, _, r)| r.iso_code == "IT-67")
            .count();
        assert!(lombardia > 5 * molise, "{lombardia} vs {molise}");
        let mut rng = Rng::seeded(3);
        for prefix in isp_prefixes() {
            let regions_of_prefix: std::collections::HashSet<&str> = (0..200)
                .map(|_| {
                    catalog_region_of(prefix.random_host(&mut rng))
                        .unwrap()
                        .iso_code
                })
                .collect();
            assert!(regions_of_prefix.len() > 1, "{prefix:?} is in one region");
        }
        assert_eq!(catalog_region_of("192.0.2.1".parse().unwrap()), None);
        let mapped: IpAddr = "::ffff:79.18.120.72".parse().unwrap();
        assert_eq!(
            catalog_region_of(mapped),
            catalog_region_of("79.18.120.72".parse().unwrap())
        );
    }

    #[test]
    fn database_layout_has_separator_marker_and_metadata() {
        let bytes = write_region_mmdb(&[("79.0.0.0".parse().unwrap(), 10, "IT-25")]);
        let marker_at = bytes
            .windows(METADATA_MARKER.len())
            .rposition(|w| w == METADATA_MARKER)
            .unwrap();
        // 96 nodes down the zero path to the IPv4 subtree and 10 for the /10, plus 15 where
        // the `::ffff:0:0/96` alias leaves the zero path at bit 80; 24-bit records, 6 bytes
        // a node.
        let node_count = 96 + 10 + 15;
        assert_eq!(&bytes[node_count * 6..node_count * 6 + 16], &[0; 16]);
        let metadata = &bytes[marker_at + METADATA_MARKER.len()..];
        assert_eq!(metadata[0], 0xE9, "a map of nine pairs");
        let text = String::from_utf8_lossy(metadata);
        for key in [
            "node_count",
            "record_size",
            "ip_version",
            "GeoIP2-City",
            "languages",
        ] {
            assert!(text.contains(key), "{key}");
        }
    }

    #[test]
    fn regions_are_given_by_code_or_catalog_name() {
        let network: IpAddr = "79.0.0.0".parse().unwrap();
        let by_code = write_region_mmdb(&[(network, 10, "IT-25")]);
        assert_eq!(write_region_mmdb(&[(network, 10, "25")]), by_code);
        assert_eq!(write_region_mmdb(&[(network, 10, "it-25")]), by_code);
        assert_eq!(write_region_mmdb(&[(network, 10, "lombardia")]), by_code);
    }

    #[test]
    fn output_is_deterministic() {
        assert_eq!(catalog_region_mmdb(), catalog_region_mmdb());
    }

    #[test]
    #[should_panic(expected = "not an Italian region code")]
    fn unknown_region_codes_are_refused() {
        write_region_mmdb(&[("79.0.0.0".parse().unwrap(), 10, "IT-99")]);
    }
}
