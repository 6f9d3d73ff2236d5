//! Site keys: how a browser page may write events without a secret.
//!
//! A server key (`ingest.api_keys`) is a secret and may do anything the API offers. A page
//! cannot keep a secret, so the tracker uses a *site key* instead (`[[sites]]` in the
//! config): public, printed in the page's script tag, and worth little to a thief:
//! - it writes events only (`POST /v1/events?site=KEY`), never reads, never writes spend;
//! - it is bound to its site's origins: a browser sends `Origin` on every cross-origin POST
//!   (and `Referer` otherwise), and a request from any other origin is refused with 403 and
//!   the reason. A non-browser client can forge `Origin`, but then it can only do what the
//!   page could: write events of that site;
//! - it is rate-limited per client address (token bucket; IPv6 by /64, since one host
//!   holds a whole /64), so one client cannot flood the log through it;
//! - its bodies are small (`max_body_bytes`, 64 KiB by default; the tracker sends a few
//!   events per second at most).
//!
//! CORS: the preflight (`OPTIONS /v1/events?site=KEY`) is answered for the site's origins
//! only, and `Access-Control-Allow-Origin` echoes an allowed origin, never `*`.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// `[[sites]]` as written in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub key: String,
    pub origins: Vec<String>,
    /// Requests per second one client address may make with this key, sustained.
    pub rate_per_second: Option<f64>,
    /// Requests one client address may make at once before the rate applies.
    pub burst: Option<u32>,
    pub max_body_bytes: Option<u64>,
    pub max_events_per_request: Option<u64>,
}

/// A validated site.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub key: String,
    /// Normalized origins (`https://www.shop.it`, `http://localhost:8081`).
    pub origins: Vec<String>,
    pub rate_per_second: f64,
    pub burst: u32,
    pub max_body_bytes: usize,
    pub max_events_per_request: usize,
}

/// Longest site key; keys are printed in pages and logs, so they are kept short and plain.
const MAX_KEY_CHARS: usize = 64;
/// Most origins per site, and most sites.
const MAX_ORIGINS: usize = 64;
const MAX_SITES: usize = 1024;

/// Validates `[[sites]]`; errors name the key (`sites[1].origins[0]`) and what was wrong.
pub fn validate(raw: Vec<RawSite>) -> Result<Vec<Site>, (String, String)> {
    if raw.len() > MAX_SITES {
        return Err(("sites".into(), format!("at most {MAX_SITES} sites")));
    }
    let mut sites: Vec<Site> = Vec::with_capacity(raw.len());
    for (i, site) in raw.into_iter().enumerate() {
        let at = |key: &str| format!("sites[{i}].{key}");
        let key = site.key.trim().to_string();
        if key.is_empty()
            || key.chars().count() > MAX_KEY_CHARS
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err((
                at("key"),
                format!(
                    "a site key is 1 to {MAX_KEY_CHARS} characters of letters, digits, `_`, `-`, `.` \
                     (it is public, like \"pub_shop_it\")"
                ),
            ));
        }
        if sites.iter().any(|s| s.key == key) {
            return Err((at("key"), format!("{key:?} is declared twice")));
        }
        if site.origins.is_empty() || site.origins.len() > MAX_ORIGINS {
            return Err((
                at("origins"),
                format!("list 1 to {MAX_ORIGINS} exact origins, like [\"https://www.shop.it\"]"),
            ));
        }
        let mut origins = Vec::with_capacity(site.origins.len());
        for (j, origin) in site.origins.iter().enumerate() {
            let normalized = parse_origin(origin).ok_or_else(|| {
                (
                    at(&format!("origins[{j}]")),
                    format!(
                        "{:?} is not an origin: scheme, host and optional port, no path, \
                         like \"https://www.shop.it\" or \"http://localhost:8081\"",
                        origin.chars().take(200).collect::<String>()
                    ),
                )
            })?;
            origins.push(normalized);
        }
        let rate_per_second = match site.rate_per_second {
            None => 20.0,
            Some(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => r,
            Some(_) => {
                return Err((
                    at("rate_per_second"),
                    "must be a number above 0 and at most 1000000".into(),
                ));
            }
        };
        let burst = match site.burst {
            None => 100,
            Some(b) if (1..=1_000_000).contains(&b) => b,
            Some(_) => return Err((at("burst"), "must be 1 to 1000000".into())),
        };
        let max_body_bytes = match site.max_body_bytes {
            None => 64 * 1024,
            Some(b) if (1024..=10 << 20).contains(&b) => b as usize,
            Some(_) => {
                return Err((
                    at("max_body_bytes"),
                    "must be 1024 to 10485760 (10 MiB)".into(),
                ));
            }
        };
        let max_events_per_request = match site.max_events_per_request {
            None => 200,
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            Some(_) => return Err((at("max_events_per_request"), "must be 1 to 10000".into())),
        };
        sites.push(Site {
            key,
            origins,
            rate_per_second,
            burst,
            max_body_bytes,
            max_events_per_request,
        });
    }
    Ok(sites)
}

/// An origin (`scheme://host[:port]`) in normal form: lower-case scheme and host, the
/// default port dropped. `None` for anything else (a path, a query, user info, `*`).
pub fn parse_origin(text: &str) -> Option<String> {
    let text = text.trim();
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '\\', '*']) {
        return None;
    }
    // `[::1]:8080`, `host:8080`, `host`.
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", host.to_ascii_lowercase()), port)
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
            None => (rest.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty()
        || host.len() > 253
        || !host.starts_with('[')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return None;
    }
    match port {
        None => Some(format!("{scheme}://{host}")),
        Some(p) => {
            let n: u16 = p.parse().ok().filter(|n| *n > 0)?;
            if p == default_port {
                Some(format!("{scheme}://{host}"))
            } else {
                Some(format!("{scheme}://{host}:{n}"))
            }
        }
    }
}

/// The origin of a `Referer` URL (`https://www.shop.it/cart?x=1` → `https://www.shop.it`).
pub fn referer_origin(referer: &str) -> Option<String> {
    let (scheme, rest) = referer.trim().split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    parse_origin(&format!("{scheme}://{authority}"))
}

/// Why a site-key request is refused before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteRefusal {
    UnknownKey,
    /// The request's origin (or `None` when it showed neither `Origin` nor `Referer`).
    OriginNotAllowed(Option<String>),
}

impl SiteRefusal {
    pub fn message(&self) -> String {
        match self {
            SiteRefusal::UnknownKey => {
                "unknown site key: the `site` parameter must be a key declared in [[sites]]".into()
            }
            SiteRefusal::OriginNotAllowed(Some(origin)) => format!(
                "origin {:?} is not allowed for this site key; add it to the site's `origins` \
                 in [[sites]] if it is yours",
                origin.chars().take(200).collect::<String>()
            ),
            SiteRefusal::OriginNotAllowed(None) => "a site key is accepted only from a page of \
                 one of the site's origins: the request has neither an Origin nor a Referer \
                 header"
                .into(),
        }
    }
}

/// The configured sites, and the per-address rate of each.
#[derive(Debug)]
pub struct Sites {
    sites: Vec<Site>,
    limiter: AddressLimiter,
}

impl Sites {
    pub fn new(sites: Vec<Site>) -> Self {
        Self {
            sites,
            limiter: AddressLimiter::new(100_000),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// The site of `key`, and its index (the limiter's key).
    pub fn find(&self, key: &str) -> Option<(usize, &Site)> {
        self.sites.iter().enumerate().find(|(_, s)| s.key == key)
    }

    /// Checks a request's site key and origin. `origin` is the `Origin` header, `referer`
    /// the `Referer` header; `Origin` wins when both are present. On success, the allowed
    /// origin (to echo in `Access-Control-Allow-Origin`) and the site.
    pub fn admit(
        &self,
        key: &str,
        origin: Option<&str>,
        referer: Option<&str>,
    ) -> Result<(usize, &Site, String), SiteRefusal> {
        let (index, site) = self.find(key).ok_or(SiteRefusal::UnknownKey)?;
        // `Origin: null` (a sandboxed frame, a file:// page) is an origin no site lists.
        let presented = match origin {
            Some(o) => Some(parse_origin(o).ok_or_else(|| {
                SiteRefusal::OriginNotAllowed(Some(o.chars().take(200).collect()))
            })?),
            None => referer.and_then(referer_origin),
        };
        match presented {
            Some(o) if site.origins.contains(&o) => Ok((index, site, o)),
            other => Err(SiteRefusal::OriginNotAllowed(other)),
        }
    }

    /// Takes one request from the bucket of (`site`, `client`): `Err(seconds)` to wait when
    /// it is empty.
    pub fn take(&self, site: usize, client: Option<IpAddr>, now: Instant) -> Result<(), u32> {
        let Some(config) = self.sites.get(site) else {
            return Ok(());
        };
        // Requests without a known address (tests calling the router directly) share one
        // bucket per site.
        let address = client.map(rate_key).unwrap_or(IpAddr::from([0u8; 4]));
        self.limiter
            .take((site, address), config.rate_per_second, config.burst, now)
    }
}

/// The address a rate is kept for: IPv4 as is, IPv6 by its /64.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
        v4 => v4,
    }
}

/// Token buckets per (site, address), at most `capacity` of them.
#[derive(Debug)]
struct AddressLimiter {
    capacity: usize,
    buckets: Mutex<HashMap<(usize, IpAddr), Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl AddressLimiter {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, key: (usize, IpAddr), rate: f64, burst: u32, now: Instant) -> Result<(), u32> {
        let burst = f64::from(burst);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= self.capacity && !buckets.contains_key(&key) {
            // Forget the clients whose buckets have refilled: they are indistinguishable
            // from new ones. If that frees nothing (a flood of distinct addresses), start
            // over: memory stays bounded, and a bucket only ever forgets in the client's favour.
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= self.capacity {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / rate).ceil();
            Err(wait.clamp(1.0, 3600.0) as u32)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn site(key: &str, origins: &[&str]) -> RawSite {
        RawSite {
            key: key.into(),
            origins: origins.iter().map(|s| s.to_string()).collect(),
            rate_per_second: None,
            burst: None,
            max_body_bytes: None,
            max_events_per_request: None,
        }
    }

    #[test]
    fn origins_are_normalized_and_anything_else_is_refused() {
        assert_eq!(
            parse_origin("https://WWW.Shop.it").unwrap(),
            "https://www.shop.it"
        );
        assert_eq!(
            parse_origin("https://www.shop.it:443/").unwrap(),
            "https://www.shop.it"
        );
        assert_eq!(
            parse_origin("http://localhost:8081").unwrap(),
            "http://localhost:8081"
        );
        assert_eq!(
            parse_origin("http://[::1]:3000").unwrap(),
            "http://[::1]:3000"
        );
        for bad in [
            "*",
            "null",
            "www.shop.it",
            "ftp://shop.it",
            "https://shop.it/path",
            "https://shop.it?x",
            "https://user@shop.it",
            "https://shop.it:0",
            "https://shop.it:99999",
            "https://",
            "https://sh op.it",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
        assert_eq!(
            referer_origin("https://www.shop.it/cart?x=1#y").unwrap(),
            "https://www.shop.it"
        );
    }

    #[test]
    fn bad_sites_are_refused_naming_the_key() {
        let err = validate(vec![site("pub shop", &["https://a.it"])]).unwrap_err();
        assert_eq!(err.0, "sites[0].key");
        let err = validate(vec![
            site("a", &["https://a.it"]),
            site("b", &["https://a.it/x"]),
        ])
        .unwrap_err();
        assert_eq!(err.0, "sites[1].origins[0]");
        let err = validate(vec![
            site("a", &["https://a.it"]),
            site("a", &["https://b.it"]),
        ])
        .unwrap_err();
        assert!(err.1.contains("twice"), "{err:?}");
        let err = validate(vec![site("a", &[])]).unwrap_err();
        assert_eq!(err.0, "sites[0].origins");
        let mut fast = site("a", &["https://a.it"]);
        fast.rate_per_second = Some(f64::NAN);
        assert_eq!(
            validate(vec![fast]).unwrap_err().0,
            "sites[0].rate_per_second"
        );
    }

    #[test]
    fn only_the_sites_origins_are_admitted() {
        let sites =
            Sites::new(validate(vec![site("pub_shop_it", &["https://www.shop.it"])]).unwrap());
        let (_, _, echoed) = sites
            .admit("pub_shop_it", Some("https://WWW.shop.it"), None)
            .unwrap();
        assert_eq!(echoed, "https://www.shop.it");
        // Referer when there is no Origin.
        assert!(
            sites
                .admit("pub_shop_it", None, Some("https://www.shop.it/p/1"))
                .is_ok()
        );
        assert_eq!(
            sites
                .admit("pub_shop_it", Some("https://evil.example"), None)
                .unwrap_err(),
            SiteRefusal::OriginNotAllowed(Some("https://evil.example".into()))
        );
        // Origin wins over a matching Referer.
        assert!(
            sites
                .admit(
                    "pub_shop_it",
                    Some("https://evil.example"),
                    Some("https://www.shop.it/")
                )
                .is_err()
        );
        assert_eq!(
            sites.admit("pub_shop_it", None, None).unwrap_err(),
            SiteRefusal::OriginNotAllowed(None)
        );
        assert!(sites.admit("pub_shop_it", Some("null"), None).is_err());
        assert_eq!(
            sites
                .admit("pub_other", Some("https://www.shop.it"), None)
                .unwrap_err(),
            SiteRefusal::UnknownKey
        );
    }

    #[test]
    fn each_address_has_its_own_bucket_which_refills_at_the_rate() {
        let mut raw = site("a", &["https://a.it"]);
        raw.rate_per_second = Some(2.0);
        raw.burst = Some(3);
        let sites = Sites::new(validate(vec![raw]).unwrap());
        let t0 = Instant::now();
        let one = Some("10.0.0.1".parse().unwrap());
        let two = Some("10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            sites.take(0, one, t0).unwrap();
        }
        assert_eq!(sites.take(0, one, t0), Err(1));
        sites.take(0, two, t0).unwrap();
        // Half a second refills one token at 2/s.
        sites.take(0, one, t0 + Duration::from_millis(500)).unwrap();
        assert!(sites.take(0, one, t0 + Duration::from_millis(500)).is_err());
        // One IPv6 host holds a /64: its addresses share a bucket.
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(rate_key(a), rate_key(b));
    }

    #[test]
    fn the_limiter_stays_bounded_under_a_flood_of_addresses() {
        let limiter = AddressLimiter::new(100);
        let now = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            limiter.take((0, ip), 1.0, 5, now).unwrap();
            assert!(limiter.buckets.lock().unwrap().len() <= 100);
        }
    }
}
