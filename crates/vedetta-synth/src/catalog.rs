//! The world the synthetic traffic happens in: an Italian online shop, its visitors' devices
//! and networks, its marketing channels and campaigns.
//!
//! Everything here is static data with weights. The tables are public because they are useful
//! beyond generation: the enrichment tests can check their user-agent parser against
//! [`user_agents`] (each row says what a correct parser must answer), and the CLI can list the
//! paid campaigns that will receive spend.
//!
//! Shares are rough but plausible for Italian e-commerce: mobile-heavy traffic, iPhone strong,
//! TIM and Vodafone the largest fixed-line networks, Lombardia the largest region.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::record::{Channel, ClickIdKind};
use crate::rng::Rng;

/// The shop's origin. A reserved `.example` name, so synthetic referrers never point at a real
/// site.
macro_rules! shop_origin {
    () => {
        "https://www.bottega.example"
    };
}

/// The shop's origin, as internal referrers start with it.
pub const SHOP_ORIGIN: &str = shop_origin!();

/// Device class as EVENTS.md defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceClass {
    Mobile,
    Tablet,
    Desktop,
}

impl DeviceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Mobile => "mobile",
            DeviceClass::Tablet => "tablet",
            DeviceClass::Desktop => "desktop",
        }
    }
}

/// A real user-agent string and what a correct parser must say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserAgentSpec {
    pub user_agent: &'static str,
    pub device: DeviceClass,
    pub os: &'static str,
    pub browser: &'static str,
    /// Share of users, per thousand.
    pub users_per_mille: u32,
}

const fn ua(
    user_agent: &'static str,
    device: DeviceClass,
    os: &'static str,
    browser: &'static str,
    users_per_mille: u32,
) -> UserAgentSpec {
    UserAgentSpec {
        user_agent,
        device,
        os,
        browser,
        users_per_mille,
    }
}

use DeviceClass::{Desktop, Mobile, Tablet};

/// Tablets are the trap for UA parsers: an iPad says "iPad" but also "Mobile/15E148"; an
/// Android tablet says "Android" but, unlike a phone, not "Mobile". iPadOS 13+ in its default
/// desktop mode sends a plain macOS Safari string that no parser can tell apart, so it is not
/// in this table as a tablet (its traffic is indistinguishable from the macOS rows).
#[rustfmt::skip]
static USER_AGENTS: [UserAgentSpec; 24] = [
    // iPhone
    ua("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1", Mobile, "iOS", "Safari", 140),
    ua("Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1", Mobile, "iOS", "Safari", 60),
    ua("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.111 Mobile/15E148 Safari/604.1", Mobile, "iOS", "Chrome", 30),
    ua("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/21E219 Instagram 326.0.3.30.91 (iPhone15,3; iOS 17_4; it_IT; it; scale=3.00; 1290x2796; 590541398)", Mobile, "iOS", "Instagram", 25),
    // Android phones
    ua("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36", Mobile, "Android", "Chrome", 165),
    ua("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.6312.118 Mobile Safari/537.36", Mobile, "Android", "Chrome", 50),
    ua("Mozilla/5.0 (Linux; Android 13; SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36", Mobile, "Android", "Samsung Internet", 45),
    ua("Mozilla/5.0 (Linux; Android 13; 2201117TY) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.6261.119 Mobile Safari/537.36", Mobile, "Android", "Chrome", 35),
    ua("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP1A.240405.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/123.0.6312.99 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/458.0.0.43.112;]", Mobile, "Android", "Facebook", 20),
    ua("Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0", Mobile, "Android", "Firefox", 10),
    // iPad, classic form
    ua("Mozilla/5.0 (iPad; CPU OS 12_5_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Mobile/15E148 Safari/604.1", Tablet, "iOS", "Safari", 12),
    ua("Mozilla/5.0 (iPad; CPU OS 16_7_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1", Tablet, "iOS", "Safari", 18),
    ua("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/123.0.6312.52 Mobile/15E148 Safari/604.1", Tablet, "iOS", "Chrome", 8),
    // Android tablets: no "Mobile" token
    ua("Mozilla/5.0 (Linux; Android 11; SM-T870) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Safari/537.36", Tablet, "Android", "Chrome", 12),
    ua("Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.6312.118 Safari/537.36", Tablet, "Android", "Chrome", 10),
    ua("Mozilla/5.0 (Linux; Android 12; Lenovo TB-X606F) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.163 Safari/537.36", Tablet, "Android", "Chrome", 5),
    // Windows
    ua("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", Desktop, "Windows", "Chrome", 150),
    ua("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0", Desktop, "Windows", "Edge", 55),
    ua("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0", Desktop, "Windows", "Firefox", 25),
    // macOS
    ua("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15", Desktop, "macOS", "Safari", 55),
    ua("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", Desktop, "macOS", "Chrome", 40),
    ua("Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0", Desktop, "macOS", "Firefox", 8),
    // Linux
    ua("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", Desktop, "Linux", "Firefox", 12),
    ua("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", Desktop, "Linux", "Chrome", 10),
];

/// The user-agent pool with the answers a correct parser must give.
pub fn user_agents() -> &'static [UserAgentSpec] {
    &USER_AGENTS
}

/// An Italian region: its name and its ISO 3166-2:IT code, both accepted by the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpec {
    pub name: &'static str,
    pub iso_code: &'static str,
    /// Resident population in thousands (ISTAT, rounded): the weight of the region.
    pub population_thousands: u32,
}

const fn region(
    name: &'static str,
    iso_code: &'static str,
    population_thousands: u32,
) -> RegionSpec {
    RegionSpec {
        name,
        iso_code,
        population_thousands,
    }
}

static REGIONS: [RegionSpec; 20] = [
    region("Piemonte", "IT-21", 4_252),
    region("Valle d'Aosta", "IT-23", 123),
    region("Lombardia", "IT-25", 9_976),
    region("Trentino-Alto Adige", "IT-32", 1_077),
    region("Veneto", "IT-34", 4_847),
    region("Friuli-Venezia Giulia", "IT-36", 1_194),
    region("Liguria", "IT-42", 1_507),
    region("Emilia-Romagna", "IT-45", 4_437),
    region("Toscana", "IT-52", 3_661),
    region("Umbria", "IT-55", 856),
    region("Marche", "IT-57", 1_487),
    region("Lazio", "IT-62", 5_715),
    region("Abruzzo", "IT-65", 1_273),
    region("Molise", "IT-67", 290),
    region("Campania", "IT-72", 5_610),
    region("Puglia", "IT-75", 3_922),
    region("Basilicata", "IT-77", 537),
    region("Calabria", "IT-78", 1_847),
    region("Sicilia", "IT-82", 4_833),
    region("Sardegna", "IT-88", 1_579),
];

/// The twenty Italian regions.
pub fn regions() -> &'static [RegionSpec] {
    &REGIONS
}

/// A network prefix of an Italian access provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IspPrefix {
    pub isp: &'static str,
    /// Network address and prefix length, e.g. `79.0.0.0/10`.
    pub network: IpAddr,
    pub prefix_len: u8,
    /// Share of users whose home connection is in this prefix, relative to the other rows.
    pub weight: u32,
}

const fn v4(isp: &'static str, octets: [u8; 4], prefix_len: u8, weight: u32) -> IspPrefix {
    IspPrefix {
        isp,
        network: IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3])),
        prefix_len,
        weight,
    }
}

const fn v6(isp: &'static str, segments: [u16; 2], prefix_len: u8, weight: u32) -> IspPrefix {
    IspPrefix {
        isp,
        network: IpAddr::V6(Ipv6Addr::new(segments[0], segments[1], 0, 0, 0, 0, 0, 0)),
        prefix_len,
        weight,
    }
}

/// Prefixes of Italian residential providers, chosen from address ranges whose reverse DNS
/// names the provider (e.g. `host-79-18-….retail.telecomitalia.it`,
/// `net-2-34-….cust.vodafonedsl.it`). A GeoIP database places them in Italy; which region it
/// names depends on the database, which is why some users also send `region` explicitly.
static ISP_PREFIXES: [IspPrefix; 16] = [
    v4("TIM", [79, 0, 0, 0], 10, 18),
    v4("TIM", [82, 48, 0, 0], 12, 8),
    v4("TIM", [87, 0, 0, 0], 11, 8),
    v4("TIM", [95, 224, 0, 0], 11, 6),
    v4("TIM", [80, 116, 0, 0], 14, 3),
    v4("Vodafone Italia", [2, 32, 0, 0], 12, 10),
    v4("Vodafone Italia", [93, 144, 0, 0], 14, 3),
    v4("Vodafone Italia", [5, 88, 0, 0], 13, 3),
    v4("Vodafone Italia", [188, 216, 0, 0], 14, 2),
    v4("Fastweb", [2, 224, 0, 0], 12, 8),
    v4("Fastweb", [83, 103, 0, 0], 16, 2),
    v4("Wind Tre", [151, 16, 0, 0], 12, 8),
    v4("Tiscali", [84, 220, 0, 0], 14, 3),
    v4("Tiscali", [78, 12, 0, 0], 14, 1),
    v6("Fastweb", [0x2001, 0x0b07], 32, 10),
    v6("GARR", [0x2001, 0x0760], 32, 1),
];

/// The provider prefixes users' addresses are drawn from.
pub fn isp_prefixes() -> &'static [IspPrefix] {
    &ISP_PREFIXES
}

impl IspPrefix {
    /// A random host address inside the prefix. IPv4 hosts avoid the `.0` and `.255` addresses
    /// of each /24; IPv6 hosts get a random /64 in the prefix and a random interface id.
    pub(crate) fn random_host(&self, rng: &mut Rng) -> IpAddr {
        match self.network {
            IpAddr::V4(network) => {
                let host_bits = 32 - u32::from(self.prefix_len.min(32));
                let host_mask = if host_bits >= 32 {
                    u32::MAX
                } else {
                    (1u32 << host_bits) - 1
                };
                let host = (rng.next_u64() as u32) & host_mask & !0xFF;
                let last_octet = rng.range_u64(1, 254) as u32;
                IpAddr::V4(Ipv4Addr::from(
                    (u32::from(network) & !host_mask) | host | last_octet,
                ))
            }
            IpAddr::V6(network) => {
                let host_bits = 128 - u32::from(self.prefix_len.min(128));
                let host_mask = if host_bits >= 128 {
                    u128::MAX
                } else {
                    (1u128 << host_bits) - 1
                };
                let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
                IpAddr::V6(Ipv6Addr::from(
                    (u128::from(network) & !host_mask) | (random & host_mask),
                ))
            }
        }
    }
}

/// A page of the shop, with its path (the `page` field) and full URL (an internal `referrer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSpec {
    pub path: &'static str,
    pub url: &'static str,
}

macro_rules! page {
    ($path:literal) => {
        PageSpec {
            path: $path,
            url: concat!(shop_origin!(), $path),
        }
    };
}

/// A product: id, product page, price in cents and popularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductSpec {
    pub id: &'static str,
    pub page: PageSpec,
    pub price_cents: u64,
    pub(crate) popularity: u32,
}

macro_rules! product {
    ($id:literal, $slug:literal, $price_cents:literal, $popularity:literal) => {
        ProductSpec {
            id: $id,
            page: PageSpec {
                path: concat!("/prodotto/", $slug),
                url: concat!(shop_origin!(), "/prodotto/", $slug),
            },
            price_cents: $price_cents,
            popularity: $popularity,
        }
    };
}

pub(crate) static PRODUCTS: [ProductSpec; 24] = [
    product!("SKU-10421", "sneakers-pelle-bianche", 8_990, 30),
    product!("SKU-10433", "stivaletti-chelsea-camoscio", 12_900, 12),
    product!("SKU-10502", "borsa-tote-pelle-nera", 14_900, 14),
    product!("SKU-10517", "zaino-urbano-impermeabile", 5_990, 16),
    product!("SKU-20114", "piumino-leggero-blu", 11_900, 12),
    product!("SKU-20150", "maglione-lana-merino-grigio", 6_990, 14),
    product!("SKU-20188", "camicia-lino-bianca", 4_590, 16),
    product!("SKU-20203", "jeans-slim-fit-lavaggio-scuro", 5_490, 18),
    product!("SKU-20245", "t-shirt-cotone-bio-pacco-3", 2_990, 24),
    product!("SKU-30012", "occhiali-da-sole-polarizzati", 7_900, 10),
    product!("SKU-30027", "cintura-cuoio-intrecciato", 3_490, 10),
    product!("SKU-30031", "sciarpa-cashmere-cammello", 9_900, 8),
    product!("SKU-30040", "portafoglio-pelle-uomo", 3_990, 12),
    product!("SKU-40007", "caffettiera-moka-6-tazze", 2_490, 26),
    product!("SKU-40019", "set-coltelli-cucina-5-pezzi", 7_490, 8),
    product!("SKU-40033", "tovaglia-lino-rettangolare", 3_890, 8),
    product!("SKU-40058", "candela-profumata-fico", 1_490, 20),
    product!("SKU-40061", "tazza-ceramica-artigianale", 990, 22),
    product!("SKU-50002", "body-neonato-cotone-pacco-2", 1_990, 12),
    product!("SKU-50015", "pigiama-bambino-flanella", 2_290, 10),
    product!("SKU-60001", "orologio-cronografo-acciaio", 18_900, 5),
    product!("SKU-60010", "eau-de-parfum-50ml", 6_900, 12),
    product!("SKU-60022", "crema-viso-idratante-spf30", 2_450, 16),
    product!("SKU-70003", "tappetino-yoga-antiscivolo", 3_290, 10),
];

pub(crate) static HOME: PageSpec = page!("/");
pub(crate) static CART: PageSpec = page!("/carrello");
pub(crate) static CHECKOUT: PageSpec = page!("/checkout");
pub(crate) static THANK_YOU: PageSpec = page!("/checkout/grazie");
pub(crate) static REGISTRATION: PageSpec = page!("/account/registrazione");
pub(crate) static LOGIN: PageSpec = page!("/account/login");

pub(crate) static CATEGORIES: [PageSpec; 8] = [
    page!("/donna/scarpe"),
    page!("/donna/borse"),
    page!("/uomo/abbigliamento"),
    page!("/uomo/accessori"),
    page!("/casa/cucina"),
    page!("/casa/tessili"),
    page!("/bambini"),
    page!("/bellezza"),
];

pub(crate) static PROMOTIONS: [PageSpec; 3] =
    [page!("/offerte"), page!("/saldi"), page!("/novita")];

pub(crate) static SEARCHES: [PageSpec; 5] = [
    page!("/cerca?q=sneakers"),
    page!("/cerca?q=borsa+pelle"),
    page!("/cerca?q=moka"),
    page!("/cerca?q=regalo+uomo"),
    page!("/cerca?q=piumino"),
];

pub(crate) static BLOG: [PageSpec; 3] = [
    page!("/blog/guida-alle-taglie"),
    page!("/blog/come-pulire-le-sneakers-bianche"),
    page!("/blog/idee-regalo-natale"),
];

pub(crate) static INFO: [PageSpec; 3] = [
    page!("/chi-siamo"),
    page!("/spedizioni-e-resi"),
    page!("/contatti"),
];

pub(crate) static LEAD_PAGES: [PageSpec; 2] = [page!("/newsletter"), page!("/contatti")];

/// A campaign: where its clicks come from and, for paid channels, what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CampaignSpec {
    pub channel: Channel,
    pub name: &'static str,
    /// The ad platform reporting spend (`source` of spend records).
    pub spend_source: &'static str,
    pub utm_source: &'static str,
    pub utm_medium: &'static str,
    /// The click id the platform appends to landing URLs, if it auto-tags.
    pub click_id: Option<ClickIdKind>,
    /// Where the click came from.
    pub referrer: Option<&'static str>,
    /// Typical spend in cents per minute (paid channels only; actual minutes vary ±40%).
    pub spend_cents_per_minute: u64,
    /// Share of the channel's campaign sessions, relative to its other campaigns.
    pub(crate) weight: u32,
}

/// Display has no click id on purpose: a gclid makes a default grouping call the click paid
/// search. `black_friday_2024` runs in three channels, so (channel, campaign) — not the name
/// alone — identifies a campaign, as it does for spend.
pub(crate) static CAMPAIGNS: [CampaignSpec; 12] = [
    paid(
        Channel::PaidSearch,
        "brand_search_it",
        "google_ads",
        "google",
        "cpc",
    )
    .clicks(ClickIdKind::Gclid, "https://www.google.com/")
    .costs(45, 35),
    paid(
        Channel::PaidSearch,
        "saldi_invernali_2024",
        "google_ads",
        "google",
        "cpc",
    )
    .clicks(ClickIdKind::Gclid, "https://www.google.it/")
    .costs(140, 25),
    paid(
        Channel::PaidSearch,
        "black_friday_2024",
        "google_ads",
        "google",
        "cpc",
    )
    .clicks(ClickIdKind::Gclid, "https://www.google.com/")
    .costs(260, 25),
    paid(
        Channel::PaidSearch,
        "scarpe_generica_bing",
        "microsoft_ads",
        "bing",
        "cpc",
    )
    .referred_by("https://www.bing.com/")
    .costs(25, 15),
    paid(
        Channel::Social,
        "primavera_estate_2024",
        "meta",
        "instagram",
        "paid_social",
    )
    .clicks(ClickIdKind::Fbclid, "https://l.instagram.com/")
    .costs(110, 40),
    paid(
        Channel::Social,
        "retargeting_carrello",
        "meta",
        "facebook",
        "paid_social",
    )
    .clicks(ClickIdKind::Fbclid, "https://l.facebook.com/")
    .costs(60, 35),
    paid(
        Channel::Social,
        "saldi_tiktok_2024",
        "tiktok_ads",
        "tiktok",
        "paid_social",
    )
    .referred_by("https://www.tiktok.com/")
    .costs(70, 25),
    paid(
        Channel::Display,
        "remarketing_display",
        "google_ads",
        "google",
        "display",
    )
    .referred_by("https://www.corriere.it/")
    .costs(35, 55),
    paid(
        Channel::Display,
        "black_friday_2024",
        "criteo",
        "criteo",
        "display",
    )
    .referred_by("https://www.repubblica.it/")
    .costs(90, 45),
    email("newsletter_settimanale", "newsletter", 50),
    email("carrello_abbandonato", "crm", 30),
    email("black_friday_2024", "newsletter", 20),
];

/// A paid campaign, before its clicks and costs are described.
const fn paid(
    channel: Channel,
    name: &'static str,
    spend_source: &'static str,
    utm_source: &'static str,
    utm_medium: &'static str,
) -> CampaignSpec {
    CampaignSpec {
        channel,
        name,
        spend_source,
        utm_source,
        utm_medium,
        click_id: None,
        referrer: None,
        spend_cents_per_minute: 0,
        weight: 0,
    }
}

/// An e-mail campaign: no click id, no referrer (mail clients send none), no spend.
const fn email(name: &'static str, utm_source: &'static str, weight: u32) -> CampaignSpec {
    CampaignSpec {
        weight,
        ..paid(Channel::Email, name, "", utm_source, "email")
    }
}

impl CampaignSpec {
    const fn clicks(self, click_id: ClickIdKind, referrer: &'static str) -> Self {
        Self {
            click_id: Some(click_id),
            referrer: Some(referrer),
            ..self
        }
    }

    const fn referred_by(self, referrer: &'static str) -> Self {
        Self {
            referrer: Some(referrer),
            ..self
        }
    }

    const fn costs(self, spend_cents_per_minute: u64, weight: u32) -> Self {
        Self {
            spend_cents_per_minute,
            weight,
            ..self
        }
    }
}

/// Every campaign (paid and e-mail).
pub fn campaigns() -> &'static [CampaignSpec] {
    &CAMPAIGNS
}

/// The campaigns that get one spend record per minute: those of paid channels.
pub fn paid_campaigns() -> impl Iterator<Item = &'static CampaignSpec> {
    CAMPAIGNS.iter().filter(|c| c.channel.is_paid())
}

/// How a channel behaves: how many sessions it brings, how well they convert, where they land.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelSpec {
    pub(crate) channel: Channel,
    /// Share of sessions, per thousand.
    pub(crate) sessions_per_mille: u32,
    /// Conversion propensity relative to the average, in percent.
    pub(crate) conversion_percent: u32,
    /// Share of the channel's sessions that come from one of its campaigns, in percent.
    pub(crate) campaign_percent: u32,
}

pub(crate) static CHANNELS: [ChannelSpec; 8] = [
    ChannelSpec {
        channel: Channel::Organic,
        sessions_per_mille: 280,
        conversion_percent: 100,
        campaign_percent: 0,
    },
    ChannelSpec {
        channel: Channel::Direct,
        sessions_per_mille: 200,
        conversion_percent: 115,
        campaign_percent: 0,
    },
    ChannelSpec {
        channel: Channel::PaidSearch,
        sessions_per_mille: 160,
        conversion_percent: 120,
        campaign_percent: 100,
    },
    ChannelSpec {
        channel: Channel::Social,
        sessions_per_mille: 140,
        conversion_percent: 75,
        campaign_percent: 70,
    },
    ChannelSpec {
        channel: Channel::Email,
        sessions_per_mille: 70,
        conversion_percent: 135,
        campaign_percent: 100,
    },
    ChannelSpec {
        channel: Channel::Referral,
        sessions_per_mille: 60,
        conversion_percent: 90,
        campaign_percent: 0,
    },
    ChannelSpec {
        channel: Channel::Display,
        sessions_per_mille: 50,
        conversion_percent: 55,
        campaign_percent: 100,
    },
    ChannelSpec {
        channel: Channel::Affiliate,
        sessions_per_mille: 40,
        conversion_percent: 125,
        campaign_percent: 0,
    },
];

/// Search engines, for organic sessions, with their weight.
pub(crate) static SEARCH_REFERRERS: [(&str, u32); 5] = [
    ("https://www.google.com/", 55),
    ("https://www.google.it/", 30),
    ("https://www.bing.com/", 8),
    ("https://duckduckgo.com/", 4),
    ("https://it.search.yahoo.com/", 3),
];

/// Sites linking to the shop, for referral sessions.
pub(crate) static REFERRAL_SITES: [&str; 6] = [
    "https://www.giallozafferano.it/",
    "https://www.aranzulla.it/",
    "https://www.ilpost.it/",
    "https://www.vogue.it/",
    "https://www.reddit.com/",
    "https://forum.hwupgrade.it/",
];

/// Social networks, for social sessions that do not come from a campaign.
pub(crate) static SOCIAL_SITES: [&str; 5] = [
    "https://l.facebook.com/",
    "https://www.instagram.com/",
    "https://www.pinterest.it/",
    "https://t.co/",
    "https://www.linkedin.com/",
];

/// Affiliates and price comparators: (utm_source, referrer).
pub(crate) static AFFILIATES: [(&str, &str); 3] = [
    ("trovaprezzi", "https://www.trovaprezzi.it/"),
    ("idealo", "https://www.idealo.it/"),
    ("awin", "https://www.awin1.com/"),
];

pub(crate) static PAYMENT_METHODS: [(&str, u32); 5] = [
    ("carta", 55),
    ("paypal", 25),
    ("satispay", 8),
    ("klarna", 7),
    ("contrassegno", 5),
];

pub(crate) static EXPERIMENTS: [(&str, [&str; 2]); 2] = [
    ("nuova_home", ["A", "B"]),
    ("checkout_v2", ["controllo", "variante"]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_cover_every_required_device_family() {
        let has = |needle: &str, device: DeviceClass| {
            USER_AGENTS
                .iter()
                .any(|u| u.user_agent.contains(needle) && u.device == device)
        };
        assert!(has("iPhone;", Mobile));
        assert!(has("iPad; CPU OS", Tablet));
        assert!(has("SM-T", Tablet));
        assert!(has("Windows NT", Desktop));
        assert!(has("Macintosh", Desktop));
        assert!(has("X11; Linux", Desktop));
        assert!(has("Android", Mobile));
        assert!(USER_AGENTS.len() >= 20);
    }

    #[test]
    fn android_tablets_never_say_mobile_and_android_phones_always_do() {
        for spec in USER_AGENTS.iter().filter(|u| u.os == "Android") {
            let says_mobile = spec.user_agent.contains("Mobile");
            assert_eq!(says_mobile, spec.device == Mobile, "{}", spec.user_agent);
        }
    }

    #[test]
    fn device_mix_is_mobile_heavy() {
        let total: u32 = USER_AGENTS.iter().map(|u| u.users_per_mille).sum();
        let of = |device| {
            USER_AGENTS
                .iter()
                .filter(|u| u.device == device)
                .map(|u| u.users_per_mille)
                .sum::<u32>()
        };
        assert_eq!(total, 1_000);
        assert!(of(Mobile) > 500 && of(Tablet) >= 50 && of(Desktop) > 250);
    }

    #[test]
    fn regions_have_official_codes() {
        assert_eq!(REGIONS.len(), 20);
        for region in &REGIONS {
            let digits = region.iso_code.strip_prefix("IT-").unwrap_or("");
            assert!(
                digits.len() == 2 && digits.bytes().all(|b| b.is_ascii_digit()),
                "{region:?}"
            );
        }
        let mut codes: Vec<_> = REGIONS.iter().map(|r| r.iso_code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), 20);
    }

    #[test]
    fn random_hosts_stay_inside_their_prefix() {
        let mut rng = Rng::seeded(5);
        for prefix in &ISP_PREFIXES {
            for _ in 0..200 {
                let host = prefix.random_host(&mut rng);
                match (prefix.network, host) {
                    (IpAddr::V4(net), IpAddr::V4(h)) => {
                        let shift = 32 - u32::from(prefix.prefix_len);
                        assert_eq!(u32::from(net) >> shift, u32::from(h) >> shift, "{h}");
                        let last = h.octets()[3];
                        assert!(last != 0 && last != 255, "{h}");
                    }
                    (IpAddr::V6(net), IpAddr::V6(h)) => {
                        let shift = 128 - u32::from(prefix.prefix_len);
                        assert_eq!(u128::from(net) >> shift, u128::from(h) >> shift, "{h}");
                    }
                    _ => panic!("address family changed"),
                }
            }
        }
    }

    #[test]
    fn pages_are_absolute_paths_on_the_shop() {
        for product in &PRODUCTS {
            assert!(product.page.path.starts_with("/prodotto/"));
            assert_eq!(
                product.page.url,
                format!("{SHOP_ORIGIN}{}", product.page.path)
            );
            assert!((990..=40_000).contains(&product.price_cents));
        }
        assert_eq!(CHECKOUT.url, "https://www.bottega.example/checkout");
    }

    #[test]
    fn paid_channels_have_two_to_four_campaigns_with_spend() {
        for channel in Channel::ALL.into_iter().filter(|c| c.is_paid()) {
            let of_channel: Vec<_> = paid_campaigns().filter(|c| c.channel == channel).collect();
            assert!((2..=4).contains(&of_channel.len()), "{channel:?}");
            for c in of_channel {
                assert!(
                    (5..=300).contains(&c.spend_cents_per_minute) && !c.spend_source.is_empty()
                );
            }
        }
        let shares: u32 = CHANNELS.iter().map(|c| c.sessions_per_mille).sum();
        assert_eq!(shares, 1_000);
    }
}
