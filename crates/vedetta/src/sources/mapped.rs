//! `POST /v1/sources/{name}`: mapped webhooks from an ERP or a middleware (SAP through
//! Dell Boomi, MuleSoft, an iPaaS), one `[sources.NAME]` table each.
//!
//! ```toml
//! [sources.boomi_sap]
//! auth = "hmac"                        # or "bearer"
//! secrets = ["current", "previous"]    # newest first; bearer tokens or HMAC keys
//! hmac_header = "X-Boomi-Signature"    # HMAC only (default X-Signature)
//! hmac_encoding = "hex"                # or "base64" (default hex)
//! hmac_prefix = "sha256="              # optional text before the digest
//! mapping_file = "sap_orders.toml"     # or an inline [sources.boomi_sap.mapping]
//! ```
//!
//! The mapping itself (`vedetta_core::sources::mapping`) is pure; this module holds the
//! settings, reads the mapping file when the server starts (a bad file stops the start,
//! naming the file and the rule) and checks each request's authentication in constant time:
//! a bearer token is compared through HMAC digests of both sides (so neither its content
//! nor the length of a prefix leaks), an HMAC signature by `hmac`'s `verify_slice`.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vedetta_core::sources::mapping::{Mapping, RawMapping};

/// Most secrets listed at once (the current and the previous, with room to spare).
const MAX_SECRETS: usize = 4;
/// Most mapped sources.
const MAX_SOURCES: usize = 32;
/// Largest mapping file read.
const MAX_MAPPING_FILE_BYTES: u64 = 1 << 20;

/// `[sources.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMapped {
    pub auth: String,
    pub secrets: Vec<String>,
    pub hmac_header: Option<String>,
    pub hmac_encoding: Option<String>,
    pub hmac_prefix: Option<String>,
    pub mapping_file: Option<PathBuf>,
    pub mapping: Option<RawMapping>,
}

/// How a request proves it comes from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Bearer,
    Hmac {
        header: String,
        encoding: Encoding,
        prefix: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

/// Where the mapping is.
#[derive(Debug, Clone)]
pub enum MappingSpec {
    Inline(Arc<Mapping>),
    File(PathBuf),
}

/// Validated settings of one mapped source.
#[derive(Clone)]
pub struct MappedSource {
    pub name: String,
    pub auth: Auth,
    secrets: Vec<String>,
    pub mapping: MappingSpec,
}

impl std::fmt::Debug for MappedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never appear in logs or debug output.
        f.debug_struct("MappedSource")
            .field("name", &self.name)
            .field(
                "auth",
                &match self.auth {
                    Auth::Bearer => "bearer",
                    Auth::Hmac { .. } => "hmac",
                },
            )
            .field("secrets", &self.secrets.len())
            .field("mapping", &self.mapping)
            .finish()
    }
}

/// Whether `name` may be a source's name (and so a path segment).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl MappedSource {
    pub fn from_raw(name: &str, raw: RawMapped) -> Result<Self, (String, String)> {
        let key = |part: &str| format!("sources.{name}.{part}");
        if !valid_name(name) {
            return Err((
                format!("sources.{}", name.chars().take(64).collect::<String>()),
                "a source's name is 1 to 64 lowercase letters, digits, `_` or `-` \
                 (it is the path /v1/sources/NAME)"
                    .into(),
            ));
        }
        if raw.secrets.is_empty() || raw.secrets.len() > MAX_SECRETS {
            return Err((
                key("secrets"),
                format!("list 1 to {MAX_SECRETS} secrets, newest first"),
            ));
        }
        if raw
            .secrets
            .iter()
            .any(|s| s.trim().len() < 16 || s.len() > 1024)
        {
            return Err((
                key("secrets"),
                "a secret is shorter than 16 characters (or longer than 1024): use a random one"
                    .into(),
            ));
        }
        let auth = match raw.auth.as_str() {
            "bearer" => {
                if raw.hmac_header.is_some()
                    || raw.hmac_encoding.is_some()
                    || raw.hmac_prefix.is_some()
                {
                    return Err((
                        key("auth"),
                        "hmac_header, hmac_encoding and hmac_prefix are for auth = \"hmac\"".into(),
                    ));
                }
                Auth::Bearer
            }
            "hmac" => {
                let header = raw
                    .hmac_header
                    .unwrap_or_else(|| "X-Signature".into())
                    .to_ascii_lowercase();
                if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err((key("hmac_header"), "not a valid header name".into()));
                }
                let encoding = match raw.hmac_encoding.as_deref() {
                    None | Some("hex") => Encoding::Hex,
                    Some("base64") => Encoding::Base64,
                    Some(other) => {
                        return Err((
                            key("hmac_encoding"),
                            format!("{other:?}: expected \"hex\" or \"base64\""),
                        ));
                    }
                };
                let prefix = raw.hmac_prefix.unwrap_or_default();
                if prefix.len() > 32 {
                    return Err((key("hmac_prefix"), "at most 32 characters".into()));
                }
                Auth::Hmac {
                    header,
                    encoding,
                    prefix,
                }
            }
            other => {
                return Err((
                    key("auth"),
                    format!("{other:?}: expected \"bearer\" or \"hmac\""),
                ));
            }
        };
        let mapping = match (raw.mapping, raw.mapping_file) {
            (Some(_), Some(_)) => {
                return Err((
                    key("mapping"),
                    "an inline mapping or a mapping_file, not both".into(),
                ));
            }
            (None, None) => {
                return Err((
                    key("mapping_file"),
                    "missing: name the mapping file (or write [sources.NAME.mapping])".into(),
                ));
            }
            (Some(inline), None) => MappingSpec::Inline(Arc::new(
                Mapping::compile(inline)
                    .map_err(|e| (format!("sources.{name}.mapping.{}", e.key), e.message))?,
            )),
            (None, Some(path)) => MappingSpec::File(path),
        };
        Ok(Self {
            name: name.to_string(),
            auth,
            secrets: raw.secrets,
            mapping,
        })
    }

    /// Whether the request's headers authenticate `body`.
    pub fn authenticate(&self, headers: &axum::http::HeaderMap, body: &[u8]) -> bool {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match &self.auth {
            Auth::Bearer => {
                let Some(token) = text("authorization")
                    .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
                    .map(str::trim)
                else {
                    return false;
                };
                self.secrets
                    .iter()
                    .any(|s| equal_in_constant_time(s, token))
            }
            Auth::Hmac {
                header,
                encoding,
                prefix,
            } => {
                let Some(signature) = text(header)
                    .map(str::trim)
                    .and_then(|s| s.strip_prefix(prefix.as_str()))
                else {
                    return false;
                };
                let expected = match encoding {
                    Encoding::Hex => decode_hex(signature),
                    Encoding::Base64 => crate::sources::shopify::decode_base64(signature),
                };
                let Some(expected) = expected else {
                    return false;
                };
                self.secrets.iter().any(|secret| {
                    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                        return false;
                    };
                    mac.update(body);
                    mac.verify_slice(&expected).is_ok()
                })
            }
        }
    }

    /// The compiled mapping: the inline one, or the file's.
    pub fn load_mapping(&self) -> anyhow::Result<Arc<Mapping>> {
        match &self.mapping {
            MappingSpec::Inline(mapping) => Ok(mapping.clone()),
            MappingSpec::File(path) => load_mapping_file(path)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("sources.{}.mapping_file: {e}", self.name)),
        }
    }
}

/// Reads and compiles a mapping file; errors name the file and the rule.
pub fn load_mapping_file(path: &Path) -> anyhow::Result<Mapping> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_MAPPING_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_MAPPING_FILE_BYTES {
        anyhow::bail!(
            "{}: larger than {MAX_MAPPING_FILE_BYTES} bytes",
            path.display()
        );
    }
    let raw: RawMapping =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Mapping::compile(raw).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Equality of two secrets without an early exit: both sides are reduced to HMAC digests
/// under a fixed key and those compared with `verify_slice`.
fn equal_in_constant_time(secret: &str, given: &str) -> bool {
    let digest = |text: &str| {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"vedetta bearer comparison")
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(text.as_bytes());
        mac
    };
    let expected = digest(secret).finalize().into_bytes();
    digest(given).verify_slice(&expected).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The mapped sources of a running server, with their compiled mappings and counts.
#[derive(Debug, Default)]
pub struct MappedSources {
    sources: BTreeMap<String, LoadedSource>,
}

#[derive(Debug)]
pub struct LoadedSource {
    pub settings: MappedSource,
    pub mapping: Arc<Mapping>,
    pub counters: MappedCounters,
}

impl MappedSources {
    /// Compiles every source's mapping (reading mapping files); the first error stops.
    pub fn load(sources: &BTreeMap<String, MappedSource>) -> anyhow::Result<Self> {
        let mut loaded = BTreeMap::new();
        for (name, settings) in sources {
            let mapping = settings.load_mapping()?;
            loaded.insert(
                name.clone(),
                LoadedSource {
                    settings: settings.clone(),
                    mapping,
                    counters: MappedCounters::default(),
                },
            );
        }
        Ok(Self { sources: loaded })
    }

    pub fn get(&self, name: &str) -> Option<&LoadedSource> {
        self.sources.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &MappedCounters)> {
        self.sources
            .iter()
            .map(|(name, source)| (name.as_str(), &source.counters))
    }
}

/// Validates `[sources.NAME]` tables (all but `shopify`).
pub fn validate(
    raw: BTreeMap<String, RawMapped>,
) -> Result<BTreeMap<String, MappedSource>, (String, String)> {
    if raw.len() > MAX_SOURCES {
        return Err((
            "sources".into(),
            format!("at most {MAX_SOURCES} mapped sources"),
        ));
    }
    raw.into_iter()
        .map(|(name, raw)| Ok((name.clone(), MappedSource::from_raw(&name, raw)?)))
        .collect()
}

/// Deliveries of one mapped source, for `/metrics`.
#[derive(Debug, Default)]
pub struct MappedCounters {
    /// Requests with at least one event stored.
    pub stored: AtomicU64,
    /// Rows refused (by the mapping or by intake).
    pub rejected_rows: AtomicU64,
    pub bad_auth: AtomicU64,
    /// Requests whose body could not be mapped at all.
    pub unmappable: AtomicU64,
}

impl MappedCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> [(&'static str, u64); 4] {
        [
            ("stored", self.stored.load(Ordering::Relaxed)),
            ("rejected_rows", self.rejected_rows.load(Ordering::Relaxed)),
            ("bad_auth", self.bad_auth.load(Ordering::Relaxed)),
            ("unmappable", self.unmappable.load(Ordering::Relaxed)),
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    const MAPPING: &str = r#"
        [fields.udid]
        pointer = "/customer"
        [fields.type]
        constant = "purchase"
        [fields.ts]
        pointer = "/at"
        time = "epoch_ms"
    "#;

    fn source(auth: &str, extra: &str) -> Result<MappedSource, (String, String)> {
        let text = format!(
            "auth = \"{auth}\"\nsecrets = [\"0123456789abcdef-new\", \"0123456789abcdef-old\"]\n{extra}\n{}",
            MAPPING.replace("[fields.", "[mapping.fields.")
        );
        MappedSource::from_raw("erp", toml::from_str(&text).unwrap())
    }

    fn hmac_hex(key: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn bearer_tokens_of_either_secret_authenticate() {
        let s = source("bearer", "").unwrap();
        let mut headers = HeaderMap::new();
        assert!(!s.authenticate(&headers, b"{}"));
        for (token, ok) in [
            ("0123456789abcdef-new", true),
            ("0123456789abcdef-old", true),
            ("0123456789abcdef", false),
            ("0123456789abcdef-newer", false),
            ("", false),
        ] {
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            assert_eq!(s.authenticate(&headers, b"{}"), ok, "{token}");
        }
    }

    #[test]
    fn hmac_signatures_in_hex_with_a_prefix() {
        let s = source(
            "hmac",
            "hmac_header = \"X-Boomi-Signature\"\nhmac_prefix = \"sha256=\"",
        )
        .unwrap();
        let body = br#"{"customer": "c1", "at": 1}"#;
        let mut headers = HeaderMap::new();
        let good = hmac_hex("0123456789abcdef-old", body);
        headers.insert(
            "x-boomi-signature",
            format!("sha256={good}").parse().unwrap(),
        );
        assert!(s.authenticate(&headers, body));
        assert!(!s.authenticate(&headers, b"{}"));
        headers.insert("x-boomi-signature", good.parse().unwrap());
        assert!(!s.authenticate(&headers, body), "the prefix is required");
        headers.insert(
            "x-boomi-signature",
            format!("sha256={}", hmac_hex("wrong-secret-000000", body))
                .parse()
                .unwrap(),
        );
        assert!(!s.authenticate(&headers, body));
    }

    #[test]
    fn settings_are_validated_naming_the_key() {
        for (auth, extra, key) in [
            ("token", "", "sources.erp.auth"),
            ("bearer", "hmac_header = \"X-S\"", "sources.erp.auth"),
            (
                "hmac",
                "hmac_encoding = \"b32\"",
                "sources.erp.hmac_encoding",
            ),
            (
                "hmac",
                "hmac_header = \"bad header\"",
                "sources.erp.hmac_header",
            ),
            ("hmac", "mapping_file = \"x.toml\"", "sources.erp.mapping"),
        ] {
            assert_eq!(source(auth, extra).unwrap_err().0, key, "{extra}");
        }
        let raw: RawMapped =
            toml::from_str("auth = \"bearer\"\nsecrets = [\"short\"]\nmapping_file = \"m.toml\"")
                .unwrap();
        assert_eq!(
            MappedSource::from_raw("erp", raw.clone()).unwrap_err().0,
            "sources.erp.secrets"
        );
        assert!(MappedSource::from_raw("Bad/Name", raw).is_err());
        let s = source("bearer", "").unwrap();
        assert!(!format!("{s:?}").contains("0123456789"));
        let text = format!(
            "auth = \"bearer\"\nsecrets = [\"0123456789abcdef\"]\n{}",
            MAPPING
                .replace("epoch_ms", "epoch_us")
                .replace("[fields.", "[mapping.fields.")
        );
        let err = MappedSource::from_raw("erp", toml::from_str(&text).unwrap()).unwrap_err();
        assert_eq!(err.0, "sources.erp.mapping.fields.ts.time");
    }

    #[test]
    fn hex_decodes_and_refuses() {
        assert_eq!(decode_hex("00ff10").unwrap(), vec![0, 255, 16]);
        for bad in ["", "0", "zz", "0g", "é1"] {
            assert_eq!(decode_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_documented_sap_example_maps() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
        let mapping = load_mapping_file(&dir.join("sap_sales_order.mapping.toml")).unwrap();
        let body: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("sap_sales_order.json")).unwrap(),
        )
        .unwrap();
        let events: Vec<serde_json::Value> = mapping
            .map_body(&body)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events.len(), 2);
        let order = &events[0];
        assert_eq!(order["udid"], "0010004711");
        assert_eq!(order["type"], "purchase");
        assert_eq!(order["ts"], "2024-04-05T14:23:20Z");
        assert_eq!(order["order_id"], "4500012345");
        assert_eq!(order["value"], serde_json::json!(1234.56));
        assert_eq!(order["currency"], "EUR");
        assert_eq!(order["product_id"], "MAT-100-BLU");
        assert_eq!(order["channel"], "direct");
        assert_eq!(order["consent"]["marketing"], true);
        assert_eq!(order["properties"]["changed_at"], "2024-04-05T12:23:05Z");
        assert_eq!(order["properties"]["sales_org"], "IT01");
        let lead = &events[1];
        assert_eq!(lead["type"], "lead");
        assert_eq!(lead["value"], serde_json::json!(0.0));
        assert_eq!(lead["channel"], "referral");
        assert_eq!(lead["consent"]["marketing"], false);
    }

    #[test]
    fn mapped_sources_sit_beside_shopify_and_sites_in_the_config() {
        let text = format!(
            "[[sites]]\nkey = \"pub_shop_it\"\norigins = [\"https://www.shop.it\"]\n\
             [sources.shopify]\nsecrets = [\"shpss_current\", \"shpss_previous\"]\n\
             [sources.erp]\nauth = \"bearer\"\nsecrets = [\"0123456789abcdef\"]\n{}",
            MAPPING.replace("[fields.", "[sources.erp.mapping.fields.")
        );
        let config = crate::config::load_text(
            &text,
            "vedetta.toml",
            &[],
            &crate::config::Overrides::default(),
        )
        .unwrap();
        assert!(config.sources.shopify.is_some());
        assert_eq!(config.sources.mapped["erp"].auth, Auth::Bearer);
        // A typo in a mapped source is refused, naming the key.
        let err = crate::config::load_text(
            &text.replace("auth = ", "auht = "),
            "vedetta.toml",
            &[],
            &crate::config::Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("auht"), "{err:#}");
    }
}
