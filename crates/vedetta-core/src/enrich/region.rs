//! Italian regions: the values of the `region` dimension.
//!
//! The dimension holds ISO 3166-2:IT region codes (`IT-25`), never free text, so that
//! "Lombardia", "lombardy" and "IT-25" from three different tag managers fall into one row.
//! [`Region::from_text`] is that normalization for the `region` field; the GeoIP lookup
//! (`geoip`) arrives at the same codes from a database's subdivision codes or names.
//!
//! A [`Region`] is one byte: it is copied into every enrichment result and compared, never
//! allocated.

use std::fmt;

/// One of the twenty Italian regions, or [`Region::UNKNOWN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(u8);

struct RegionInfo {
    code: &'static str,
    name: &'static str,
    english_name: &'static str,
    /// Other spellings, already normalized (see `normalize`): English and historical names,
    /// the French name of Valle d'Aosta, the German one of Alto Adige, and provinces that
    /// make up a bilingual region's name on their own ("Trentino", "Südtirol").
    aliases: &'static [&'static str],
}

const fn info(
    code: &'static str,
    name: &'static str,
    english_name: &'static str,
    aliases: &'static [&'static str],
) -> RegionInfo {
    RegionInfo {
        code,
        name,
        english_name,
        aliases,
    }
}

/// By code. The index is the `Region`'s byte.
static REGIONS: [RegionInfo; 20] = [
    info("IT-21", "Piemonte", "Piedmont", &["piemonte", "piedmont"]),
    info(
        "IT-23",
        "Valle d'Aosta",
        "Aosta Valley",
        &[
            "valledaosta",
            "aostavalley",
            "valdaosta",
            "valleedaoste",
            "valledaostavalleedaoste",
        ],
    ),
    info("IT-25", "Lombardia", "Lombardy", &["lombardia", "lombardy"]),
    info(
        "IT-32",
        "Trentino-Alto Adige",
        "Trentino-Alto Adige",
        &[
            "trentinoaltoadige",
            "trentinoaltoadigesudtirol",
            "trentinoaltoadigesuedtirol",
            "trentinosudtirol",
            "trentinosuedtirol",
            "trentinosouthtyrol",
            "trentinoaltoadigesouthtyrol",
            "trentino",
            "altoadige",
            "sudtirol",
            "suedtirol",
            "southtyrol",
        ],
    ),
    info("IT-34", "Veneto", "Veneto", &["veneto", "venetia"]),
    info(
        "IT-36",
        "Friuli-Venezia Giulia",
        "Friuli Venezia Giulia",
        &["friuliveneziagiulia", "friuli"],
    ),
    info("IT-42", "Liguria", "Liguria", &["liguria"]),
    info(
        "IT-45",
        "Emilia-Romagna",
        "Emilia-Romagna",
        &["emiliaromagna"],
    ),
    info("IT-52", "Toscana", "Tuscany", &["toscana", "tuscany"]),
    info("IT-55", "Umbria", "Umbria", &["umbria"]),
    info(
        "IT-57",
        "Marche",
        "Marche",
        &["marche", "themarches", "marches"],
    ),
    info("IT-62", "Lazio", "Lazio", &["lazio", "latium"]),
    info("IT-65", "Abruzzo", "Abruzzo", &["abruzzo", "abruzzi"]),
    info("IT-67", "Molise", "Molise", &["molise"]),
    info("IT-72", "Campania", "Campania", &["campania"]),
    info("IT-75", "Puglia", "Apulia", &["puglia", "apulia", "puglie"]),
    info(
        "IT-77",
        "Basilicata",
        "Basilicata",
        &["basilicata", "lucania"],
    ),
    info("IT-78", "Calabria", "Calabria", &["calabria"]),
    info("IT-82", "Sicilia", "Sicily", &["sicilia", "sicily"]),
    info("IT-88", "Sardegna", "Sardinia", &["sardegna", "sardinia"]),
];

/// Longest normalized spelling we accept, with room to spare; anything longer is no region.
const MAX_NORMALIZED: usize = 48;

impl Region {
    /// No region: neither the `region` field nor the GeoIP database placed the event.
    pub const UNKNOWN: Region = Region(u8::MAX);

    /// A small number naming the region (distinct per region; [`Region::UNKNOWN`] too).
    pub fn index(self) -> u8 {
        self.0
    }

    /// The ISO 3166-2:IT code (`IT-25`), or `unknown`: the value of the dimension.
    pub fn code(self) -> &'static str {
        self.info().map_or("unknown", |info| info.code)
    }

    /// The official (Italian) name (`Lombardia`), or `unknown`.
    pub fn name(self) -> &'static str {
        self.info().map_or("unknown", |info| info.name)
    }

    /// The English name GeoIP databases use (`Lombardy`), or `unknown`.
    pub fn english_name(self) -> &'static str {
        self.info().map_or("unknown", |info| info.english_name)
    }

    pub fn is_known(self) -> bool {
        self.info().is_some()
    }

    /// The twenty regions, by code.
    pub fn all() -> impl ExactSizeIterator<Item = Region> + Clone {
        (0..REGIONS.len() as u8).map(Region)
    }

    /// The region a `region` field names: its ISO code with or without the country
    /// (`IT-25`, `it25`, `25`), or its name in Italian or English, ignoring case, accents,
    /// spaces, apostrophes and hyphens (`Valle d'Aosta`, `aosta valley`, `Emilia Romagna`,
    /// `Trentino-Südtirol`). `None` for anything else: the caller falls back to the IP.
    pub fn from_text(text: &str) -> Option<Region> {
        let mut buffer = [0u8; MAX_NORMALIZED];
        let normalized = normalize(text, &mut buffer)?;
        if let Some(region) = Self::from_code_digits(normalized) {
            return Some(region);
        }
        REGIONS
            .iter()
            .position(|info| info.aliases.contains(&normalized))
            .map(|index| Region(index as u8))
    }

    /// The region of an ISO 3166-2 subdivision code, as GeoIP databases give it for Italy
    /// (`25`; `IT-25` is accepted too). Province codes (`MI`) and other countries' codes are
    /// not regions: `None`.
    pub fn from_subdivision_code(code: &str) -> Option<Region> {
        let code = code.trim();
        let digits = match code.get(..3) {
            Some(prefix) if prefix.eq_ignore_ascii_case("IT-") => &code[3..],
            _ => code,
        };
        Self::from_code_digits(digits)
    }

    /// `25` or `it25` (a normalized code) → IT-25.
    fn from_code_digits(text: &str) -> Option<Region> {
        let digits = text.strip_prefix("it").unwrap_or(text);
        if digits.len() != 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        REGIONS
            .iter()
            .position(|info| &info.code[3..] == digits)
            .map(|index| Region(index as u8))
    }

    fn info(self) -> Option<&'static RegionInfo> {
        REGIONS.get(usize::from(self.0))
    }
}

impl Default for Region {
    fn default() -> Self {
        Region::UNKNOWN
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Lower-case ASCII letters and digits of `text`, with accents taken off and separators
/// (spaces, apostrophes of every kind, hyphens, dots, slashes) dropped, written into `buffer`.
/// `None` if `text` has any other character or is too long to be a region: no allocation,
/// since this runs for every event that names its region.
fn normalize<'b>(text: &str, buffer: &'b mut [u8; MAX_NORMALIZED]) -> Option<&'b str> {
    let mut len = 0;
    for c in text.chars() {
        let folded = match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            ' ' | '\t' | '\'' | '’' | '‘' | '`' | '´' | '-' | '‐' | '–' | '—' | '_' | '.' | ','
            | '/' => continue,
            'à' | 'á' | 'â' | 'ä' | 'À' | 'Á' | 'Â' | 'Ä' => 'a',
            'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'i',
            'ò' | 'ó' | 'ô' | 'ö' | 'Ò' | 'Ó' | 'Ô' | 'Ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'u',
            _ => return None,
        };
        *buffer.get_mut(len)? = folded as u8;
        len += 1;
    }
    // Only ASCII was written.
    std::str::from_utf8(&buffer[..len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> Option<&'static str> {
        Region::from_text(text).map(Region::code)
    }

    #[test]
    fn codes_with_and_without_the_country() {
        assert_eq!(code("IT-25"), Some("IT-25"));
        assert_eq!(code("it-25"), Some("IT-25"));
        assert_eq!(code("25"), Some("IT-25"));
        assert_eq!(code(" IT 88 "), Some("IT-88"));
        assert_eq!(code("IT-99"), None);
        assert_eq!(code("99"), None);
        assert_eq!(code("FR-75"), None);
    }

    #[test]
    fn italian_and_english_names_in_any_case_accents_and_punctuation() {
        let cases = [
            ("Lombardia", "IT-25"),
            ("lombardy", "IT-25"),
            ("LOMBARDIA", "IT-25"),
            ("Valle d'Aosta", "IT-23"),
            ("Valle d’Aosta", "IT-23"),
            ("Valle D Aosta", "IT-23"),
            ("Aosta Valley", "IT-23"),
            ("Vallée d'Aoste", "IT-23"),
            ("Emilia Romagna", "IT-45"),
            ("Emilia-Romagna", "IT-45"),
            ("Friuli Venezia Giulia", "IT-36"),
            ("Friuli-Venezia Giulia", "IT-36"),
            ("Trentino-Alto Adige", "IT-32"),
            ("Trentino-Südtirol", "IT-32"),
            ("Trentino-Alto Adige/Südtirol", "IT-32"),
            ("Piedmont", "IT-21"),
            ("Apulia", "IT-75"),
            ("Tuscany", "IT-52"),
            ("Sicily", "IT-82"),
            ("Sardinia", "IT-88"),
            ("The Marches", "IT-57"),
        ];
        for (text, expected) in cases {
            assert_eq!(code(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn every_region_by_its_own_code_name_and_english_name() {
        assert_eq!(Region::all().len(), 20);
        for region in Region::all() {
            assert!(region.is_known());
            assert_eq!(Region::from_text(region.code()), Some(region));
            assert_eq!(Region::from_text(region.name()), Some(region));
            assert_eq!(Region::from_text(region.english_name()), Some(region));
            assert_eq!(
                Region::from_subdivision_code(&region.code()[3..]),
                Some(region)
            );
        }
    }

    #[test]
    fn the_synthetic_catalog_regions_are_recognized() {
        for spec in vedetta_synth::regions() {
            let region = Region::from_text(spec.name).map(Region::code);
            assert_eq!(region, Some(spec.iso_code), "{}", spec.name);
            assert_eq!(
                Region::from_text(spec.iso_code).map(Region::code),
                Some(spec.iso_code)
            );
        }
    }

    #[test]
    fn anything_else_is_not_a_region() {
        for text in [
            "",
            "  ",
            "Baviera",
            "Milano",
            "Île-de-France",
            "lombardia!",
            "IT",
        ] {
            assert_eq!(Region::from_text(text), None, "{text}");
        }
        assert_eq!(Region::from_text(&"a".repeat(100)), None);
        assert_eq!(Region::from_subdivision_code("MI"), None);
    }

    #[test]
    fn unknown_is_a_value_too() {
        assert_eq!(Region::UNKNOWN.code(), "unknown");
        assert_eq!(Region::UNKNOWN.name(), "unknown");
        assert!(!Region::UNKNOWN.is_known());
        assert_eq!(Region::default(), Region::UNKNOWN);
        assert_eq!(
            Region::from_text("Lazio").map(|r| r.to_string()),
            Some("IT-62".into())
        );
    }
}
