//! Channel and campaign: the attribution dimensions.
//!
//! A client that knows the channel sends it; the dimension is then that value, trimmed and
//! lower-cased, so `Social` and `social ` are one row. Otherwise the channel is derived by the
//! default channel grouping of `docs/semantics.md` from what a landing URL and the browser
//! carry: click ids, `utm_*` parameters, the referrer. The grouping is a pure function of the
//! stored event (and the configured internal hosts), so replaying the log under a changed
//! rule recomputes every row.
//!
//! The common cases allocate nothing: a channel already in lower case is borrowed from the
//! event, and a derived channel is a `&'static str`. Host names are compared without
//! lower-casing them into new strings.

use crate::record::StoredEvent;
use std::borrow::Cow;

/// The channel names of the default grouping.
pub const PAID_SEARCH: &str = "paid_search";
pub const SOCIAL: &str = "social";
pub const EMAIL: &str = "email";
pub const DISPLAY: &str = "display";
pub const AFFILIATE: &str = "affiliate";
pub const REFERRAL: &str = "referral";
pub const ORGANIC: &str = "organic";
pub const DIRECT: &str = "direct";

/// The campaign of an event that names none.
pub const NO_CAMPAIGN: &str = "(none)";

/// The `channel` dimension of an event: its `channel` field trimmed and lower-cased, else
/// [`default_channel`]. Borrowed unless the field has upper-case letters.
pub fn channel_of<'e>(event: &'e StoredEvent, internal_hosts: &[String]) -> Cow<'e, str> {
    match present(&event.channel) {
        // Already trimmed by `present`.
        Some(channel) => lower_case(channel),
        None => Cow::Borrowed(default_channel(event, internal_hosts)),
    }
}

/// The one spelling of a channel name: trimmed and lower-cased by Unicode's rules. Events,
/// spend records and query filters all go through it, so `Società`, `società` and
/// ` SOCIETÀ ` are one channel wherever they come from (lower-casing only ASCII in one place
/// and all letters in another made spend on a non-ASCII channel miss its events).
pub fn normalize_channel(channel: &str) -> Cow<'_, str> {
    lower_case(channel.trim())
}

/// Unicode lower case, borrowed when there is nothing to change.
fn lower_case(channel: &str) -> Cow<'_, str> {
    if channel.chars().any(char::is_uppercase) {
        Cow::Owned(channel.to_lowercase())
    } else {
        Cow::Borrowed(channel)
    }
}

/// The `campaign` dimension: `campaign`, else `utm_campaign`, else `(none)`; trimmed, kept in
/// the case it was sent (campaign names are the client's identifiers).
pub fn campaign_of(event: &StoredEvent) -> &str {
    present(&event.campaign)
        .or_else(|| present(&event.utm_campaign))
        .unwrap_or(NO_CAMPAIGN)
}

/// The default channel grouping (`docs/semantics.md`, "Default channel grouping"): the first
/// rule that matches wins.
pub fn default_channel(event: &StoredEvent, internal_hosts: &[String]) -> &'static str {
    // 1–2. Click ids: ad platforms append them to every ad click, and nothing else does.
    if present(&event.gclid).is_some() {
        return PAID_SEARCH;
    }
    if present(&event.fbclid).is_some() {
        return SOCIAL;
    }
    let source = present(&event.utm_source);
    // 3. The medium, when it is one we know; an unknown medium lets the later rules decide.
    if let Some(channel) = present(&event.utm_medium).and_then(|medium| of_medium(medium, source)) {
        return channel;
    }
    // 4. The source alone.
    if let Some(source) = source {
        if is_social_source(source) {
            return SOCIAL;
        }
        if is_email_source(source) {
            return EMAIL;
        }
    }
    // 5. Where the visitor came from.
    if let Some(channel) = event
        .referrer
        .as_deref()
        .and_then(referrer_host)
        .and_then(|host| of_referrer_host(host, internal_hosts))
    {
        return channel;
    }
    // 6.
    DIRECT
}

/// A field's value trimmed, if it has one (intake drops empty strings; other producers of
/// `StoredEvent` might not).
fn present(field: &Option<String>) -> Option<&str> {
    field
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

fn is_one_of(value: &str, names: &[&str]) -> bool {
    names.iter().any(|name| name.eq_ignore_ascii_case(value))
}

fn of_medium(medium: &str, source: Option<&str>) -> Option<&'static str> {
    if is_one_of(medium, &["cpc", "ppc", "paid_search", "paidsearch", "sem"]) {
        // A paid click on a social network is social, even when tagged "cpc".
        return Some(if source.is_some_and(is_social_source) {
            SOCIAL
        } else {
            PAID_SEARCH
        });
    }
    const MEDIUMS: &[(&[&str], &str)] = &[
        (
            &[
                "paid_social",
                "paidsocial",
                "social",
                "social-media",
                "social_media",
                "sm",
            ],
            SOCIAL,
        ),
        (&["email", "e-mail", "newsletter"], EMAIL),
        (&["display", "banner", "cpm", "programmatic"], DISPLAY),
        (&["affiliate", "affiliates"], AFFILIATE),
        (&["referral"], REFERRAL),
        (&["organic"], ORGANIC),
    ];
    MEDIUMS
        .iter()
        .find(|(names, _)| is_one_of(medium, names))
        .map(|&(_, channel)| channel)
}

fn is_social_source(source: &str) -> bool {
    is_one_of(
        source,
        &[
            "facebook",
            "instagram",
            "fb",
            "ig",
            "tiktok",
            "linkedin",
            "twitter",
            "x",
            "pinterest",
            "youtube",
        ],
    )
}

/// `newsletter`, `email`, or an e-mail marketing tool that tags its links with its own name
/// (semantics.md says "an e-mail tool" without a list; these are the common ones in Italy).
fn is_email_source(source: &str) -> bool {
    is_one_of(
        source,
        &[
            "newsletter",
            "email",
            "e-mail",
            "mailchimp",
            "mailup",
            "brevo",
            "sendinblue",
            "klaviyo",
            "mailerlite",
            "mailjet",
            "activecampaign",
            "sendgrid",
            "hs_email",
            "hs_automation",
            "campaignmonitor",
            "substack",
        ],
    )
}

/// The host of a referrer URL (`https://user@www.Google.it:443/search?q=…` → `www.Google.it`),
/// in the case it was sent. A referrer without a scheme (`www.google.it/search`) is read as
/// starting with its host; one with a scheme but no authority (`about:blank`) has none.
pub fn referrer_host(referrer: &str) -> Option<&str> {
    let referrer = referrer.trim();
    let (authority_and_rest, had_scheme) = match referrer.find("://") {
        Some(at) => (&referrer[at + 3..], true),
        None => match referrer.strip_prefix("//") {
            Some(rest) => (rest, false),
            None => {
                // `about:blank`, `mailto:a@b.it`: a scheme without an authority. A host with
                // a port (`shop.example:8080`) has a dot before its colon.
                let first_segment = referrer.split(['/', '?', '#']).next().unwrap_or_default();
                if first_segment
                    .split_once(':')
                    .is_some_and(|(before, _)| !before.contains('.'))
                {
                    return None;
                }
                (referrer, false)
            }
        },
    };
    let authority = authority_and_rest
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host_and_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match host_and_port.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match host_and_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_and_port, None),
        },
    };
    if port.is_some_and(|port| !port.bytes().all(|b| b.is_ascii_digit())) {
        return None; // `mailto:x@y`, `about:blank`: a scheme, not a host and port
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let plausible = !host.is_empty() && (had_scheme || host.contains('.'));
    plausible.then_some(host)
}

/// Rule 5 for a referrer host: `None` when the host is internal (the visitor moved within the
/// shop, which says nothing about how they arrived).
fn of_referrer_host(host: &str, internal_hosts: &[String]) -> Option<&'static str> {
    // Webmail first: `mail.google.com` and `mail.yahoo.com` also match the search engines'
    // `google.*` and `yahoo.*`, and a click in an e-mail is e-mail, not a search.
    if is_webmail(host) {
        return Some(EMAIL);
    }
    const SEARCH_DOMAINS: &[&str] = &[
        "bing.com",
        "duckduckgo.com",
        "ecosia.org",
        "baidu.com",
        "qwant.com",
    ];
    const SEARCH_BRANDS: &[&str] = &["google", "yahoo", "yandex"];
    if SEARCH_DOMAINS.iter().any(|d| in_domain(host, d))
        || SEARCH_BRANDS.iter().any(|b| in_brand_domain(host, b))
    {
        return Some(ORGANIC);
    }
    // Their `m.`, `l.`, `lm.` and `www.` hosts are subdomains, covered by `in_domain`.
    const SOCIAL_DOMAINS: &[&str] = &[
        "facebook.com",
        "instagram.com",
        "t.co",
        "twitter.com",
        "x.com",
        "linkedin.com",
        "tiktok.com",
        "youtube.com",
    ];
    if SOCIAL_DOMAINS.iter().any(|d| in_domain(host, d)) || in_brand_domain(host, "pinterest") {
        return Some(SOCIAL);
    }
    if internal_hosts
        .iter()
        .any(|internal| is_internal(host, internal))
    {
        return None;
    }
    Some(REFERRAL)
}

/// Web interfaces of mail services: well-known ones by name, and any host whose first label
/// says mail (`mail.libero.it`, `webmail.aruba.it`, `posta.virgilio.it`, `mail2.tiscali.it`).
fn is_webmail(host: &str) -> bool {
    const WEBMAIL_DOMAINS: &[&str] = &[
        "outlook.live.com",
        "outlook.office.com",
        "outlook.office365.com",
        "mail.proton.me",
        "mail.aol.com",
    ];
    if WEBMAIL_DOMAINS.iter().any(|d| in_domain(host, d)) {
        return true;
    }
    let Some((first_label, rest)) = host.split_once('.') else {
        return false;
    };
    // `mail.libero.it`, not `mail.ru` (a portal whose referrers are mostly its search).
    let word = first_label.trim_end_matches(|c: char| c.is_ascii_digit());
    rest.contains('.') && is_one_of(word, &["mail", "webmail", "posta"])
}

/// `host` is `domain` or one of its subdomains, ignoring case.
fn in_domain(host: &str, domain: &str) -> bool {
    if host.len() == domain.len() {
        return host.eq_ignore_ascii_case(domain);
    }
    host.len() > domain.len()
        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
        && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
}

/// `host` is in `brand.*`: the brand's domain under any country or generic top-level domain
/// (`google.it`, `www.google.com`, `google.co.uk`, `it.search.yahoo.com`), but not a
/// look-alike such as `google.example.org` or `notgoogle.com`.
fn in_brand_domain(host: &str, brand: &str) -> bool {
    host.match_indices('.').any(|(dot, _)| {
        let label_start = host[..dot].rfind('.').map_or(0, |at| at + 1);
        host[label_start..dot].eq_ignore_ascii_case(brand) && is_public_suffix(&host[dot + 1..])
    })
}

/// A top-level domain (`it`, `com`), or a country's second-level registry (`co.uk`, `com.br`).
/// Not the full Public Suffix List: enough to tell `google.co.uk` from `google.evil.example`.
fn is_public_suffix(suffix: &str) -> bool {
    let is_label =
        |label: &str| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric());
    match suffix.split_once('.') {
        None => is_label(suffix),
        Some((second, country)) => {
            country.len() == 2
                && is_label(country)
                && is_one_of(
                    second,
                    &["co", "com", "net", "org", "ac", "gov", "edu", "ne", "or"],
                )
        }
    }
}

/// `host` is the configured internal host or a subdomain of it, with `www.` ignored on both
/// sides (so `bottega.example` covers `www.bottega.example` and the other way round). The
/// entry may be written as a URL.
fn is_internal(host: &str, internal: &str) -> bool {
    let internal = referrer_host(internal).unwrap_or(internal.trim());
    let internal = strip_www(internal);
    !internal.is_empty() && in_domain(strip_www(host), internal)
}

fn strip_www(host: &str) -> &str {
    match host.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case("www.") => &host[4..],
        _ => host,
    }
}
