//! Region from the IP address: the GeoIP side of the `region` dimension.
//!
//! Enrichment asks a [`RegionLookup`] for the region of an event's (truncated) address when
//! the event does not name its region. The trait keeps the stage independent of where the
//! answer comes from; [`MmdbRegionLookup`] answers from a MaxMind DB file in the
//! GeoLite2-City or DB-IP City Lite layout. The core does no I/O, so it takes the file's bytes:
//! the binary reads the file (and re-reads it when the provider publishes a new one) and
//! hands over a new lookup.
//!
//! The address the pipeline has is the client's /24 (IPv4) or /48 (IPv6) network, as intake
//! keeps it. GeoIP databases rarely split a /24, and an Italian /48 belongs to one customer,
//! so looking up the network address costs no accuracy worth having.

use super::EnrichError;
use super::cache::GenerationalCache;
use super::region::Region;
use serde::{Deserialize, Deserializer};
use std::net::IpAddr;

/// Where an address is. Implementations must be pure (the same address always gives the same
/// answer for the life of the value) because enrichment remembers answers, and cheap to call
/// from several pipeline threads at once.
pub trait RegionLookup: Send + Sync {
    /// The Italian region of `ip`, or `None` if the address is abroad or not known.
    fn region_of(&self, ip: IpAddr) -> Option<Region>;

    /// The same answer as [`Self::region_of`], with the caller's memo of answers per database
    /// record: a source where many networks share one stored record (every network of a
    /// region or city points at the same one) decodes each record once. The default ignores
    /// the memo.
    fn region_of_with_memo(&self, ip: IpAddr, records: &mut RecordMemo) -> Option<Region> {
        let _ = records;
        self.region_of(ip)
    }
}

/// Answers per database record (its offset in the data section), remembered by the caller
/// of [`RegionLookup::region_of_with_memo`]: one per pipeline, so no lock. Bounded like the
/// other enrichment memos; it must be cleared when the database changes.
#[derive(Debug, Clone)]
pub struct RecordMemo {
    answers: GenerationalCache<usize, Option<Region>>,
}

impl RecordMemo {
    /// A memo of at most `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Self {
            answers: GenerationalCache::new(capacity),
        }
    }

    /// Records remembered now.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.answers.clear();
    }
}

/// A [`RegionLookup`] over a MaxMind DB (`.mmdb`) held in memory.
///
/// It reads `country.iso_code` and `subdivisions[0]` of the GeoIP2-City layout: an address is
/// in an Italian region when the country is `IT` and the first subdivision's `iso_code` is a
/// region code (`25`, as GeoLite2 writes it) or, for databases without codes (DB-IP Lite),
/// when its English or Italian name is a region's name. Lookup errors (a corrupt record) are
/// answered as "not known": one bad record must not stop the pipeline.
pub struct MmdbRegionLookup {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for MmdbRegionLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let metadata = self.reader.metadata();
        f.debug_struct("MmdbRegionLookup")
            .field("database_type", &metadata.database_type)
            .field("build_epoch", &metadata.build_epoch)
            .field("node_count", &metadata.node_count)
            .finish_non_exhaustive()
    }
}

impl MmdbRegionLookup {
    /// Opens a database from the bytes of an `.mmdb` file. Refuses bytes that are not a
    /// MaxMind DB (no metadata, a tree that runs past the data), naming what is wrong.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, EnrichError> {
        let reader = maxminddb::Reader::from_source(bytes)
            .map_err(|error| EnrichError::GeoIpDatabase(error.to_string()))?;
        Ok(Self { reader })
    }

    /// The database's own name for its layout, e.g. `GeoLite2-City` or `DBIP-City-Lite`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// When the database was built, in seconds since the epoch (for staleness checks).
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }
}

impl RegionLookup for MmdbRegionLookup {
    fn region_of(&self, ip: IpAddr) -> Option<Region> {
        region_of_record(self.reader.lookup(ip).ok()?.decode().ok()??)
    }

    fn region_of_with_memo(&self, ip: IpAddr, records: &mut RecordMemo) -> Option<Region> {
        let found = self.reader.lookup(ip).ok()?;
        // The tree walk is cheap; decoding the record is most of a lookup's cost.
        let offset = found.offset()?;
        if let Some(answer) = records.answers.get(&offset) {
            return answer;
        }
        let answer = region_of_record(found.decode().ok()??);
        records.answers.insert(offset, answer);
        answer
    }
}

/// The region a decoded record names (see [`MmdbRegionLookup`]).
fn region_of_record(record: CityRegionRecord<'_>) -> Option<Region> {
    if record.country?.iso_code? != "IT" {
        return None;
    }
    let subdivision = record.subdivisions?;
    let names = subdivision.names.unwrap_or_default();
    subdivision
        .iso_code
        .and_then(Region::from_subdivision_code)
        .or_else(|| names.en.and_then(Region::from_text))
        .or_else(|| names.it.and_then(Region::from_text))
}

// The few fields read from a GeoIP2-City record, borrowed from the database. Everything else
// in the record (city, location, postal code, names in eight languages) is skipped unread.

#[derive(Deserialize)]
struct CityRegionRecord<'a> {
    #[serde(borrow, default)]
    country: Option<Country<'a>>,
    #[serde(borrow, default, deserialize_with = "first_subdivision")]
    subdivisions: Option<Subdivision<'a>>,
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Subdivision<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize, Default)]
struct Names<'a> {
    #[serde(borrow, default)]
    en: Option<&'a str>,
    #[serde(borrow, default)]
    it: Option<&'a str>,
}

/// The first element of `subdivisions` (the region, for Italy; the second is the province),
/// without collecting the list into a `Vec`.
fn first_subdivision<'de, D>(deserializer: D) -> Result<Option<Subdivision<'de>>, D::Error>
where
    D: Deserializer<'de>,
{
    struct First;
    impl<'de> serde::de::Visitor<'de> for First {
        type Value = Option<Subdivision<'de>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of subdivisions")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let first = seq.next_element::<Subdivision<'de>>()?;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }
    deserializer.deserialize_seq(First)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use vedetta_synth::geoip::{
        CityRecord, GeoIpNetwork, RecordSize, Subdivision as SynthSubdivision, catalog_region_mmdb,
        catalog_region_of, write_city_mmdb, write_region_mmdb,
    };
    use vedetta_synth::isp_prefixes;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn region(code: &str) -> Option<Region> {
        Some(Region::from_subdivision_code(code).unwrap())
    }

    #[test]
    fn ipv4_and_ipv6_networks_resolve_and_misses_are_none() {
        let bytes = write_region_mmdb(&[
            (ip("79.0.0.0"), 10, "IT-25"),
            (ip("79.18.0.0"), 16, "62"),
            (ip("2001:b07::"), 32, "IT-21"),
            (ip("2.32.0.0"), 12, "IT-88"),
        ]);
        let lookup = MmdbRegionLookup::from_bytes(bytes).unwrap();
        assert_eq!(lookup.database_type(), "GeoIP2-City");
        assert_eq!(lookup.region_of(ip("79.19.120.0")), region("25"));
        // The more specific network wins.
        assert_eq!(lookup.region_of(ip("79.18.120.0")), region("62"));
        assert_eq!(lookup.region_of(ip("2.47.255.0")), region("88"));
        assert_eq!(lookup.region_of(ip("2001:b07:6462::")), region("21"));
        // IPv4-mapped IPv6 addresses find the IPv4 networks.
        assert_eq!(lookup.region_of(ip("::ffff:79.19.120.0")), region("25"));
        for miss in [
            "80.1.2.0",
            "2.48.0.0",
            "2001:b08::",
            "::",
            "255.255.255.0",
            "fe80::",
        ] {
            assert_eq!(lookup.region_of(ip(miss)), None, "{miss}");
        }
    }

    #[test]
    fn every_record_size_reads_back() {
        for size in [RecordSize::Bits24, RecordSize::Bits28, RecordSize::Bits32] {
            let record = CityRecord {
                country_iso_code: "IT",
                subdivision: Some(SynthSubdivision {
                    iso_code: Some("82"),
                    name_en: Some("Sicily"),
                    name_it: Some("Sicilia"),
                }),
            };
            let bytes = write_city_mmdb(
                &[GeoIpNetwork {
                    network: ip("151.16.0.0"),
                    prefix_len: 12,
                    record,
                }],
                size,
            );
            let lookup = MmdbRegionLookup::from_bytes(bytes).unwrap();
            assert_eq!(lookup.region_of(ip("151.20.3.0")), region("82"), "{size:?}");
            assert_eq!(lookup.region_of(ip("151.32.0.0")), None, "{size:?}");
        }
    }

    #[test]
    fn abroad_is_none_and_names_stand_in_for_missing_codes() {
        let network = |network: &str, prefix_len, record| GeoIpNetwork {
            network: ip(network),
            prefix_len,
            record,
        };
        let bytes = write_city_mmdb(
            &[
                // San Marino's subdivision codes are digits too: the country decides.
                network(
                    "5.0.0.0",
                    16,
                    CityRecord {
                        country_iso_code: "SM",
                        subdivision: Some(SynthSubdivision {
                            iso_code: Some("07"),
                            name_en: Some("San Marino"),
                            name_it: None,
                        }),
                    },
                ),
                // DB-IP Lite style: names, no code.
                network(
                    "5.1.0.0",
                    16,
                    CityRecord {
                        country_iso_code: "IT",
                        subdivision: Some(SynthSubdivision {
                            iso_code: None,
                            name_en: Some("Aosta Valley"),
                            name_it: None,
                        }),
                    },
                ),
                network(
                    "5.2.0.0",
                    16,
                    CityRecord {
                        country_iso_code: "IT",
                        subdivision: Some(SynthSubdivision {
                            iso_code: None,
                            name_en: None,
                            name_it: Some("Friuli-Venezia Giulia"),
                        }),
                    },
                ),
                // Italy, but no region.
                network(
                    "5.3.0.0",
                    16,
                    CityRecord {
                        country_iso_code: "IT",
                        subdivision: None,
                    },
                ),
            ],
            RecordSize::Smallest,
        );
        let lookup = MmdbRegionLookup::from_bytes(bytes).unwrap();
        assert_eq!(lookup.region_of(ip("5.0.1.0")), None);
        assert_eq!(lookup.region_of(ip("5.1.1.0")), region("23"));
        assert_eq!(lookup.region_of(ip("5.2.1.0")), region("36"));
        assert_eq!(lookup.region_of(ip("5.3.1.0")), None);
    }

    #[test]
    fn the_catalog_database_agrees_with_its_answer_key() {
        let lookup = MmdbRegionLookup::from_bytes(catalog_region_mmdb()).unwrap();
        let mut seen = std::collections::HashSet::new();
        for prefix in isp_prefixes() {
            // Walk the prefix in steps that visit every block, at truncated addresses.
            let (steps, width) = match prefix.network {
                IpAddr::V4(_) => (64u128, 32),
                IpAddr::V6(_) => (64u128, 128),
            };
            let span = 1u128 << (width - u32::from(prefix.prefix_len));
            for step in 0..steps {
                let offset = span / steps * step;
                let address = match prefix.network {
                    IpAddr::V4(net) => IpAddr::from((u32::from(net) + offset as u32).to_be_bytes()),
                    IpAddr::V6(net) => IpAddr::from((u128::from(net) + offset).to_be_bytes()),
                };
                let truncated = crate::privacy::truncate_ip(address);
                let expected = catalog_region_of(address).map(|r| r.iso_code);
                let found = lookup.region_of(truncated).map(Region::code);
                assert_eq!(found, expected, "{address}");
                seen.insert(found);
            }
        }
        assert_eq!(seen.len(), 20, "every region is reachable by IP");
        assert_eq!(lookup.region_of(ip("192.0.2.0")), None);
    }

    #[test]
    fn the_record_memo_gives_the_answers_of_a_plain_lookup() {
        let lookup = MmdbRegionLookup::from_bytes(catalog_region_mmdb()).unwrap();
        let mut networks = Vec::new();
        for prefix in isp_prefixes() {
            let IpAddr::V4(net) = prefix.network else {
                continue;
            };
            for block in 0..64u32 {
                networks.push(IpAddr::from((u32::from(net) + (block << 8)).to_be_bytes()));
            }
        }
        networks.extend([ip("192.0.2.0"), ip("2001:b07:6462::"), ip("fe80::")]);
        // A roomy memo, and one of two records that turns over all the time.
        for capacity in [1_000, 2] {
            let mut memo = RecordMemo::new(capacity);
            for round in 0..2 {
                for &network in &networks {
                    assert_eq!(
                        lookup.region_of_with_memo(network, &mut memo),
                        lookup.region_of(network),
                        "{network}, round {round}, capacity {capacity}"
                    );
                }
            }
            assert!(!memo.is_empty() && memo.len() <= capacity);
        }
        // Networks share records: the memo holds far fewer records than networks asked.
        let mut memo = RecordMemo::new(1_000);
        for &network in &networks {
            lookup.region_of_with_memo(network, &mut memo);
        }
        assert!(memo.len() * 10 < networks.len(), "{} records", memo.len());
    }

    #[test]
    fn bytes_that_are_not_a_database_are_refused() {
        for bytes in [Vec::new(), b"not a database".to_vec(), vec![0; 4096]] {
            let error = MmdbRegionLookup::from_bytes(bytes).unwrap_err();
            assert!(matches!(error, EnrichError::GeoIpDatabase(_)), "{error}");
        }
        // A truncated file loses its metadata.
        let mut bytes = catalog_region_mmdb();
        bytes.truncate(bytes.len() / 2);
        assert!(MmdbRegionLookup::from_bytes(bytes).is_err());
    }
}
