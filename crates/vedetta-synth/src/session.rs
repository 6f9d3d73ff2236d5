//! One visit: where a user comes from and what they do before leaving, as a list of events in
//! event-time order.
//!
//! This module is the funnel model. A session lands from a channel (and maybe a campaign), views
//! 1–8 pages a few seconds to a few minutes apart, and may add to cart, register, check out and
//! buy, or leave a lead. Rates are in the range of Italian e-commerce: about 30% of sessions add
//! to cart and about 3% buy; channels and devices shift these rates so that the KPIs per
//! dimension differ the way a dashboard user expects.
//!
//! Timing promises the generator's tests rely on:
//! - consecutive events of a session are at least 1 s apart, so two events of one user never
//!   look like a near duplicate (< 100 ms, same type) by accident;
//! - a checkout or purchase follows a registration by less than 5 s only in a planned fast
//!   checkout (0.5–4.5 s), and by at least 8 s otherwise, so the contract's `fast_checkout`
//!   flag fires exactly on the events marked as such.

use crate::catalog::{
    self, AFFILIATES, BLOG, CATEGORIES, CHANNELS, CampaignSpec, ChannelSpec, DeviceClass,
    EXPERIMENTS, INFO, LEAD_PAGES, PAYMENT_METHODS, PRODUCTS, PROMOTIONS, PageSpec, ProductSpec,
    REFERRAL_SITES, SEARCH_REFERRERS, SEARCHES, SOCIAL_SITES,
};
use crate::config::Tagging;
use crate::population::UserProfile;
use crate::record::{
    Channel, ClickId, ClickIdKind, EventId, EventType, OrderId, Properties, SynthEvent, Timestamp,
    TsFormat,
};
use crate::rfc3339::rome_offset_minutes;
use crate::rng::{Rng, mix64};

/// Hands out ids that are unique within one generator. Logical events take even counters and
/// double-fires odd ones, both through one bijection, so the two can never collide and adding
/// duplicates does not shift the ids of the logical events.
#[derive(Debug)]
pub(crate) struct Ids {
    key: u64,
    next_logical: u64,
    next_double_fire: u64,
    next_order: u64,
}

impl Ids {
    pub(crate) fn new(seed: u64) -> Self {
        // Order numbers of a shop that has been open a while.
        Self::with_order_base(seed, 100_000 + seed % 900_000)
    }

    /// Ids whose first order number is `order_base + 1`.
    pub(crate) fn with_order_base(seed: u64, order_base: u64) -> Self {
        Self {
            key: mix64(seed ^ 0x4556_454E_5449_4453),
            next_logical: 0,
            next_double_fire: 0,
            next_order: order_base,
        }
    }

    fn logical_event(&mut self) -> EventId {
        let counter = self.next_logical * 2;
        self.next_logical += 1;
        EventId(mix64(counter ^ self.key))
    }

    pub(crate) fn double_fire(&mut self) -> EventId {
        let counter = self.next_double_fire * 2 + 1;
        self.next_double_fire += 1;
        EventId(mix64(counter ^ self.key))
    }

    /// The id of refund `n` of an order: derived from the order alone, so refunds leave
    /// every other id as it was.
    pub(crate) fn refund(&self, order: OrderId, n: u64) -> EventId {
        EventId(mix64(mix64(order.0 ^ 0x5245_4655_4E44) ^ self.key).wrapping_add(n))
    }

    fn order(&mut self) -> OrderId {
        self.next_order += 1;
        OrderId(self.next_order)
    }
}

/// One event of a session plan, with the ground truth the wire does not carry.
#[derive(Debug, Clone)]
pub(crate) struct PlannedEvent {
    pub(crate) event: SynthEvent,
    /// A checkout or purchase less than 5 s after a registration of the same user.
    pub(crate) fast_checkout: bool,
}

/// What the population needs to know after a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionOutcome {
    pub(crate) last_event_ms: i64,
    pub(crate) registered: bool,
    /// Where the session came from, whether or not its events say so.
    pub(crate) channel: Channel,
    /// The campaign the session landed from, if any (for the demo's per-click spend).
    pub(crate) campaign: Option<&'static CampaignSpec>,
}

/// What the demo changes about a session (see `crate::demo`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DemoSession {
    /// The session is on the promotion day: a share comes from the promotion's campaign.
    pub(crate) promotion: bool,
    /// How far the drifting campaign's overbidding has gone (0–1): it buys extra clicks.
    pub(crate) drift_level: f64,
}

/// The user and moment a session starts with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionStart<'a> {
    pub(crate) user: &'a UserProfile,
    pub(crate) new_user: bool,
    pub(crate) registered: bool,
    pub(crate) start_ms: i64,
    pub(crate) fast_checkout_share: f64,
    pub(crate) tagging: Tagging,
    pub(crate) demo: Option<DemoSession>,
}

/// Page views per session: 1 (a bounce) to 8.
const PAGE_VIEWS_WEIGHTS: [(u32, u32); 8] = [
    (1, 40),
    (2, 18),
    (3, 12),
    (4, 9),
    (5, 7),
    (6, 6),
    (7, 4),
    (8, 4),
];

const NEW_USER_REGISTRATION: f64 = 0.08;
const RETURNING_USER_REGISTRATION: f64 = 0.02;
const CHECKOUT_AFTER_CART: f64 = 0.25;
const CHECKOUT_AFTER_REGISTRATION_WITHOUT_CART: f64 = 0.10;
const PURCHASE_AFTER_CHECKOUT: f64 = 0.38;
const LEAD: f64 = 0.02;
/// Purchases reported by the shop's back end: no browser, so no user agent, IP or page.
const SERVER_SIDE_PURCHASE: f64 = 0.10;
/// Sessions whose events carry only `utm_*`/click ids/referrer and let the server derive the
/// channel.
const CHANNEL_LEFT_TO_SERVER: f64 = 0.15;
const ITALIAN_FIELD_NAMES: f64 = 0.05;
const AWAY_FROM_HOME_NETWORK: f64 = 0.15;
/// Under realistic tagging, the share of a returning user's sessions that are typed-in direct
/// visits (a bookmark, the address bar): about a third, as shops see it.
const RETURN_DIRECT: f64 = 1.0 / 3.0;

/// Plans one session into `out` (which the caller clears) and returns what it changed about
/// the user.
pub(crate) fn plan_session(
    rng: &mut Rng,
    ids: &mut Ids,
    start: &SessionStart<'_>,
    out: &mut Vec<PlannedEvent>,
) -> SessionOutcome {
    let realistic = start.tagging == Tagging::Realistic;
    // Under realistic tagging a returning user comes back typed-in a third of the time, and
    // otherwise through any channel but direct (often another one than last time). Every-event
    // tagging draws exactly as before it existed, so its output stays the same.
    let returning = realistic && !start.new_user;
    let typed_in = returning && rng.chance(RETURN_DIRECT);
    let channel_spec = if typed_in {
        &DIRECT_VISIT
    } else {
        // The demo's shop buys more of its traffic (see `demo::channel_per_mille`).
        let share = |c: &ChannelSpec| match start.demo {
            Some(_) => crate::demo::channel_per_mille(c.channel),
            None => c.sessions_per_mille,
        };
        if returning {
            rng.pick_weighted(&CHANNELS, |c| {
                if c.channel == Channel::Direct {
                    0
                } else {
                    share(c)
                }
            })
        } else {
            rng.pick_weighted(&CHANNELS, share)
        }
    };
    // The demo's forced landings: the promotion's campaign on its day, the drifting
    // campaign's extra clicks. Without a demo nothing is drawn, so the output stays the same.
    let forced = match start.demo {
        Some(demo) if !typed_in => {
            if demo.promotion && rng.chance(crate::demo::PROMOTION_SESSION_SHARE) {
                Some(&crate::demo::PROMOTION)
            } else if demo.drift_level > 0.0
                && rng.chance(crate::demo::DRIFT_EXTRA_CLICK_SHARE * demo.drift_level)
            {
                catalog::campaigns()
                    .iter()
                    .find(|c| crate::demo::is_drifting(c))
            } else {
                None
            }
        }
        _ => None,
    };
    let channel_spec = match forced {
        Some(campaign) => CHANNELS
            .iter()
            .find(|c| c.channel == campaign.channel)
            .unwrap_or(channel_spec),
        None => channel_spec,
    };
    let channel = channel_spec.channel;
    let campaign = if forced.is_some() {
        forced
    } else if rng.below(100) < u64::from(channel_spec.campaign_percent) {
        pick_campaign(rng, channel)
    } else {
        None
    };
    let hints = landing_hints(rng, channel, campaign);
    // Demo affiliates tag their programme as the campaign (their partner stays the source).
    let campaign = match (start.demo, channel) {
        (Some(_), Channel::Affiliate) => Some(&crate::demo::AFFILIATE),
        _ => campaign,
    };
    let mut base = session_template(rng, start, channel, campaign);
    if typed_in {
        // Nothing says where a typed-in visit came from, not even `channel: "direct"`.
        base.channel = None;
    }
    let mut session = SessionWriter {
        channel,
        campaign,
        base,
        hints,
        channel_left_to_server: rng.chance(CHANNEL_LEFT_TO_SERVER),
        landing_only: realistic,
        previous_url: None,
        landed: false,
        ids,
        out,
    };

    let mut propensity = propensity(channel_spec, start.user.user_agent.device);
    if let (Some(_), Some(campaign)) = (start.demo, campaign) {
        propensity *= crate::demo::conversion_factor(campaign);
    }
    let mut t = start.start_ms;

    // Browsing.
    let (page_views, _) = *rng.pick_weighted(&PAGE_VIEWS_WEIGHTS, |w| w.1);
    let mut last_product: Option<&'static ProductSpec> = None;
    let mut last_page: &'static PageSpec = &catalog::HOME;
    for view in 0..page_views {
        if view > 0 {
            t += page_gap_ms(rng);
        }
        let (page, product) = if view == 0 {
            landing_page(rng, channel)
        } else {
            next_page(rng)
        };
        let mut event = session.event(EventType::PageView, t, Some(page));
        event.product_id = product.map(|p| p.id);
        if rng.chance(0.02) {
            let (experiment, variants) = *rng.pick(&EXPERIMENTS);
            event.properties = Some(Properties {
                experiment: Some(experiment),
                variant: Some(*rng.pick(&variants)),
                ..Properties::default()
            });
        }
        session.push(event, false);
        last_page = page;
        if product.is_some() {
            last_product = product;
        }
    }

    // Cart.
    let add_to_cart_chance = (0.15 + 0.08 * f64::from(page_views - 1)).min(0.7) * propensity;
    let mut cart: Option<&'static ProductSpec> = None;
    if rng.chance(add_to_cart_chance) {
        t += rng.range_i64(5_000, 60_000);
        // Added from the product page, or from a listing when no product page was seen.
        let product =
            last_product.unwrap_or_else(|| rng.pick_weighted(&PRODUCTS, |p| p.popularity));
        let page = if last_product.is_some() {
            &product.page
        } else {
            last_page
        };
        let mut event = session.event(EventType::AddToCart, t, Some(page));
        event.product_id = Some(product.id);
        session.push(event, false);
        cart = Some(product);
    }

    // Registration, and the fast checkouts the contract flags.
    let registration_chance = if start.registered {
        0.0
    } else if start.new_user {
        NEW_USER_REGISTRATION
    } else {
        RETURNING_USER_REGISTRATION
    };
    let registers = rng.chance(registration_chance);
    if registers {
        t += rng.range_i64(20_000, 180_000);
        let event = session.event(EventType::Registration, t, Some(&catalog::REGISTRATION));
        session.push(event, false);
        if rng.chance(start.fast_checkout_share) {
            let registration_ms = t;
            t += rng.range_i64(500, 2_500);
            let checkout = session.event(EventType::Checkout, t, Some(&catalog::CHECKOUT));
            session.push(checkout, true);
            t += rng.range_i64(500, 2_000);
            debug_assert!(t - registration_ms <= 4_500);
            let purchase = purchase(rng, &mut session, t, cart);
            session.push(purchase, true);
            return finish(rng, &mut session, t, true);
        }
    }

    // Checkout and purchase.
    let checkout_chance = if cart.is_some() {
        (CHECKOUT_AFTER_CART * propensity).min(0.9)
    } else if registers {
        CHECKOUT_AFTER_REGISTRATION_WITHOUT_CART
    } else {
        0.0
    };
    if rng.chance(checkout_chance) {
        // At least 8 s after a registration: well clear of the 5 s fast-checkout rule.
        t += if registers {
            rng.range_i64(8_000, 120_000)
        } else {
            rng.range_i64(10_000, 180_000)
        };
        let checkout = session.event(EventType::Checkout, t, Some(&catalog::CHECKOUT));
        session.push(checkout, false);
        if rng.chance(PURCHASE_AFTER_CHECKOUT) {
            t += rng.range_i64(30_000, 300_000);
            let purchase = purchase(rng, &mut session, t, cart);
            session.push(purchase, false);
        }
    }
    finish(rng, &mut session, t, registers)
}

/// An optional lead to close the session, then the outcome.
fn finish(
    rng: &mut Rng,
    session: &mut SessionWriter<'_>,
    mut t: i64,
    registered: bool,
) -> SessionOutcome {
    if rng.chance(LEAD) {
        t += rng.range_i64(5_000, 60_000);
        let mut lead = session.event(EventType::Lead, t, Some(rng.pick(&LEAD_PAGES)));
        if rng.chance(0.4) {
            lead.value = Some(cents_to_eur(*rng.pick(&[250, 500, 1_000, 2_500])));
        }
        session.push(lead, false);
    }
    SessionOutcome {
        last_event_ms: t,
        registered,
        channel: session.channel,
        campaign: session.campaign,
    }
}

/// A purchase: a basket of 1–3 products (9.90–400 EUR), sometimes discounted, with shipping
/// below the free-shipping threshold; sometimes reported by the back end instead of the browser.
fn purchase(
    rng: &mut Rng,
    session: &mut SessionWriter<'_>,
    t: i64,
    cart: Option<&'static ProductSpec>,
) -> SynthEvent {
    const MAX_BASKET_CENTS: u64 = 40_000;
    const FREE_SHIPPING_FROM_CENTS: u64 = 4_900;
    const SHIPPING_CENTS: u64 = 590;

    let first = cart.unwrap_or_else(|| rng.pick_weighted(&PRODUCTS, |p| p.popularity));
    let wanted_items = match rng.below(100) {
        0..=59 => 1,
        60..=87 => 2,
        _ => 3,
    };
    let mut items = 1;
    let mut subtotal = first.price_cents;
    for _ in 1..wanted_items {
        let extra = rng.pick_weighted(&PRODUCTS, |p| p.popularity);
        if subtotal + extra.price_cents <= MAX_BASKET_CENTS {
            subtotal += extra.price_cents;
            items += 1;
        }
    }
    if rng.chance(0.15) {
        subtotal -= subtotal / 10; // a 10% discount code
    }
    if subtotal < FREE_SHIPPING_FROM_CENTS {
        subtotal += SHIPPING_CENTS;
    }

    let server_side = rng.chance(SERVER_SIDE_PURCHASE);
    let mut event = session.event(EventType::Purchase, t, Some(&catalog::THANK_YOU));
    event.value = Some(cents_to_eur(subtotal.clamp(990, MAX_BASKET_CENTS)));
    event.currency = Some("EUR");
    event.order_id = Some(session.ids.order());
    event.product_id = Some(first.id);
    if rng.chance(0.35) {
        event.properties = Some(Properties {
            payment_method: Some(rng.pick_weighted(&PAYMENT_METHODS, |m| m.1).0),
            items: Some(items),
            ..Properties::default()
        });
    }
    if server_side {
        event.user_agent = None;
        event.ip = None;
        event.page = None;
        if !session.channel_left_to_server {
            event.referrer = None;
        }
    }
    event
}

/// Two decimals, exactly as the cents say (the nearest `f64`, which JSON prints shortest).
fn cents_to_eur(cents: u64) -> f64 {
    cents as f64 / 100.0
}

/// How likely this session is to convert, relative to the average (1.0).
fn propensity(channel: &ChannelSpec, device: DeviceClass) -> f64 {
    let device_percent = match device {
        DeviceClass::Mobile => 85.0,
        DeviceClass::Tablet => 100.0,
        DeviceClass::Desktop => 125.0,
    };
    f64::from(channel.conversion_percent) / 100.0 * device_percent / 100.0
}

/// Seconds between page views: mostly quick, some reading, a few long pauses.
fn page_gap_ms(rng: &mut Rng) -> i64 {
    match rng.below(10) {
        0..=5 => rng.range_i64(3_000, 30_000),
        6..=8 => rng.range_i64(30_000, 90_000),
        _ => rng.range_i64(90_000, 240_000),
    }
}

fn pick_campaign(rng: &mut Rng, channel: Channel) -> Option<&'static CampaignSpec> {
    let total: u64 = catalog::campaigns()
        .iter()
        .filter(|c| c.channel == channel)
        .map(|c| u64::from(c.weight))
        .sum();
    let mut ticket = rng.below(total);
    for campaign in catalog::campaigns().iter().filter(|c| c.channel == channel) {
        if ticket < u64::from(campaign.weight) {
            return Some(campaign);
        }
        ticket -= u64::from(campaign.weight);
    }
    None
}

/// The attribution facts of the landing URL and the external referrer.
#[derive(Debug, Clone, Copy, Default)]
struct LandingHints {
    utm_source: Option<&'static str>,
    utm_medium: Option<&'static str>,
    gclid: Option<ClickId>,
    fbclid: Option<ClickId>,
    referrer: Option<&'static str>,
}

fn landing_hints(
    rng: &mut Rng,
    channel: Channel,
    campaign: Option<&'static CampaignSpec>,
) -> LandingHints {
    if let Some(campaign) = campaign {
        let click = campaign.click_id.map(|kind| ClickId {
            kind,
            bits: rng.next_u64(),
        });
        return LandingHints {
            utm_source: Some(campaign.utm_source),
            utm_medium: Some(campaign.utm_medium),
            gclid: click.filter(|c| c.kind == ClickIdKind::Gclid),
            fbclid: click.filter(|c| c.kind == ClickIdKind::Fbclid),
            referrer: campaign.referrer,
        };
    }
    match channel {
        Channel::Organic => LandingHints {
            referrer: Some(rng.pick_weighted(&SEARCH_REFERRERS, |r| r.1).0),
            ..LandingHints::default()
        },
        Channel::Referral => LandingHints {
            referrer: Some(*rng.pick(&REFERRAL_SITES)),
            ..LandingHints::default()
        },
        Channel::Social => LandingHints {
            referrer: Some(*rng.pick(&SOCIAL_SITES)),
            ..LandingHints::default()
        },
        Channel::Affiliate => {
            let (source, referrer) = *rng.pick(&AFFILIATES);
            LandingHints {
                utm_source: Some(source),
                utm_medium: Some("affiliate"),
                referrer: Some(referrer),
                ..LandingHints::default()
            }
        }
        // Direct has nothing; paid channels and e-mail always come with a campaign.
        Channel::Direct | Channel::PaidSearch | Channel::Display | Channel::Email => {
            LandingHints::default()
        }
    }
}

/// The fields every event of the session shares.
fn session_template(
    rng: &mut Rng,
    start: &SessionStart<'_>,
    channel: Channel,
    campaign: Option<&'static CampaignSpec>,
) -> SynthEvent {
    let user = start.user;
    let format = match rng.below(100) {
        0..=81 => TsFormat::Rfc3339Utc,
        // Local Italian time with its offset, as some tag managers send it. A session that
        // spans the DST switch keeps its first offset: still a correct way to write the instant.
        82..=84 => TsFormat::Rfc3339Offset {
            minutes: rome_offset_minutes(start.start_ms),
        },
        _ => TsFormat::EpochMillis,
    };
    let ip = if rng.chance(AWAY_FROM_HOME_NETWORK) {
        match user.home_region {
            // A demo user away from home is still in their region (mobile data, work).
            Some(region) => crate::population::address_in_region(rng, region),
            None => rng
                .pick_weighted(catalog::isp_prefixes(), |p| p.weight)
                .random_host(rng),
        }
    } else {
        user.home_ip
    };
    SynthEvent {
        udid: user.udid,
        event_type: EventType::PageView,
        ts: Timestamp {
            epoch_ms: start.start_ms,
            format,
        },
        event_id: EventId(0),
        value: None,
        currency: None,
        order_id: None,
        channel: Some(channel),
        campaign: campaign.map(|c| c.name),
        utm_source: None,
        utm_medium: None,
        utm_campaign: campaign.map(|c| c.name),
        gclid: None,
        fbclid: None,
        user_agent: Some(user.user_agent.user_agent),
        ip: Some(ip),
        region: user.explicit_region,
        page: None,
        referrer: None,
        product_id: None,
        consent: user.consent,
        properties: None,
        italian_field_names: rng.chance(ITALIAN_FIELD_NAMES),
    }
}

/// Where a session lands, by channel.
fn landing_page(
    rng: &mut Rng,
    channel: Channel,
) -> (&'static PageSpec, Option<&'static ProductSpec>) {
    let roll = rng.below(100);
    let (product_below, category_below, promotion_below) = match channel {
        Channel::PaidSearch => (60, 100, 100),
        Channel::Social => (50, 80, 100),
        Channel::Display => (50, 50, 100),
        Channel::Email => (40, 40, 100),
        Channel::Affiliate => (100, 100, 100),
        Channel::Referral => (50, 50, 50),
        Channel::Organic => (25, 55, 55),
        Channel::Direct => (15, 15, 15),
    };
    if roll < product_below {
        product_page(rng)
    } else if roll < category_below {
        (rng.pick(&CATEGORIES), None)
    } else if roll < promotion_below {
        (rng.pick(&PROMOTIONS), None)
    } else {
        match channel {
            Channel::Organic | Channel::Referral if rng.chance(0.5) => (rng.pick(&BLOG), None),
            Channel::Direct if rng.chance(0.15) => (&catalog::LOGIN, None),
            _ => (&catalog::HOME, None),
        }
    }
}

/// The next page once inside the shop.
fn next_page(rng: &mut Rng) -> (&'static PageSpec, Option<&'static ProductSpec>) {
    match rng.below(100) {
        0..=44 => product_page(rng),
        45..=69 => (rng.pick(&CATEGORIES), None),
        70..=79 => (rng.pick(&SEARCHES), None),
        80..=87 => (rng.pick(&PROMOTIONS), None),
        88..=91 => (&catalog::CART, None),
        92..=95 => (rng.pick(&INFO), None),
        _ => (&catalog::HOME, None),
    }
}

fn product_page(rng: &mut Rng) -> (&'static PageSpec, Option<&'static ProductSpec>) {
    let product = rng.pick_weighted(&PRODUCTS, |p| p.popularity);
    (&product.page, Some(product))
}

/// A returning user's typed-in visit: direct, with the direct channel's conversion propensity.
static DIRECT_VISIT: ChannelSpec = ChannelSpec {
    channel: Channel::Direct,
    sessions_per_mille: 0,
    conversion_percent: 115,
    campaign_percent: 0,
};

/// Stamps session events from the template: ids, time, page, and attribution the way a real
/// tag sends it.
struct SessionWriter<'a> {
    channel: Channel,
    campaign: Option<&'static CampaignSpec>,
    base: SynthEvent,
    hints: LandingHints,
    /// Omit `channel` and leave the landing hints to the server: on every event (every-event
    /// tagging, as a tag that persists UTM parameters does), or on the landing event only.
    channel_left_to_server: bool,
    /// Realistic tagging: only the landing event carries attribution (`channel`, `campaign`,
    /// `utm_*`, click ids, referrer); the events after it carry none.
    landing_only: bool,
    previous_url: Option<&'static str>,
    landed: bool,
    ids: &'a mut Ids,
    out: &'a mut Vec<PlannedEvent>,
}

impl SessionWriter<'_> {
    fn event(
        &mut self,
        event_type: EventType,
        ts_ms: i64,
        page: Option<&'static PageSpec>,
    ) -> SynthEvent {
        let mut event = self.base.clone();
        event.event_type = event_type;
        event.ts.epoch_ms = ts_ms;
        event.event_id = self.ids.logical_event();
        event.page = page.map(|p| p.path);
        let hints = self.hints;
        if self.landing_only {
            if self.landed {
                event.channel = None;
                event.campaign = None;
                event.utm_campaign = None;
            } else {
                if self.channel_left_to_server {
                    event.channel = None;
                }
                event.utm_source = hints.utm_source;
                event.utm_medium = hints.utm_medium;
                event.gclid = hints.gclid;
                event.fbclid = hints.fbclid;
                event.referrer = hints.referrer;
            }
            self.landed = true;
            return event;
        }
        if self.channel_left_to_server || !self.landed {
            event.utm_source = hints.utm_source;
            event.utm_medium = hints.utm_medium;
            event.gclid = hints.gclid;
            event.fbclid = hints.fbclid;
        }
        if self.channel_left_to_server {
            event.channel = None;
            event.referrer = hints.referrer;
        } else if self.landed {
            event.referrer = self.previous_url;
        } else {
            event.referrer = hints.referrer;
        }
        if let Some(page) = page {
            self.previous_url = Some(page.url);
        }
        self.landed = true;
        event
    }

    fn push(&mut self, event: SynthEvent, fast_checkout: bool) {
        self.out.push(PlannedEvent {
            event,
            fast_checkout,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::Population;

    fn plan_many(sessions: u64, fast_checkout_share: f64) -> Vec<Vec<PlannedEvent>> {
        let population = Population::new(3, 1_000_000);
        let mut rng = Rng::seeded(3);
        let mut ids = Ids::new(3);
        (0..sessions)
            .map(|i| {
                let user = population.profile(i);
                let mut out = Vec::new();
                plan_session(
                    &mut rng,
                    &mut ids,
                    &SessionStart {
                        user: &user,
                        new_user: true,
                        registered: false,
                        start_ms: 1_000_000_000_000,
                        fast_checkout_share,
                        tagging: Tagging::Realistic,
                        demo: None,
                    },
                    &mut out,
                );
                out
            })
            .collect()
    }

    fn share(sessions: &[Vec<PlannedEvent>], event_type: EventType) -> f64 {
        let with = sessions
            .iter()
            .filter(|s| s.iter().any(|p| p.event.event_type == event_type))
            .count();
        with as f64 / sessions.len() as f64
    }

    #[test]
    fn funnel_rates_are_realistic() {
        let sessions = plan_many(100_000, 0.01);
        let add_to_cart = share(&sessions, EventType::AddToCart);
        let purchase = share(&sessions, EventType::Purchase);
        let registration = share(&sessions, EventType::Registration);
        let lead = share(&sessions, EventType::Lead);
        assert!(
            (0.24..=0.36).contains(&add_to_cart),
            "add_to_cart {add_to_cart}"
        );
        assert!((0.02..=0.045).contains(&purchase), "purchase {purchase}");
        assert!(
            (0.07..=0.09).contains(&registration),
            "registration of new users {registration}"
        );
        assert!((0.015..=0.025).contains(&lead), "lead {lead}");
        for session in &sessions {
            assert!(
                (1..=8).contains(
                    &session
                        .iter()
                        .filter(|p| p.event.event_type == EventType::PageView)
                        .count()
                )
            );
            assert_eq!(session[0].event.event_type, EventType::PageView);
        }
    }

    #[test]
    fn events_are_in_time_order_and_at_least_a_second_apart_except_fast_checkouts() {
        for session in plan_many(20_000, 0.3) {
            for pair in session.windows(2) {
                let gap = pair[1].event.ts.epoch_ms - pair[0].event.ts.epoch_ms;
                if pair[1].fast_checkout {
                    assert!((500..=2_500).contains(&gap), "{gap}");
                } else {
                    assert!(gap >= 1_000, "{gap}");
                }
            }
        }
    }

    #[test]
    fn fast_checkouts_follow_registration_within_4_5_seconds_and_others_after_8() {
        let sessions = plan_many(50_000, 0.3);
        let mut fast_sessions = 0;
        for session in &sessions {
            let Some(registration) = session
                .iter()
                .find(|p| p.event.event_type == EventType::Registration)
            else {
                assert!(session.iter().all(|p| !p.fast_checkout));
                continue;
            };
            let registered_at = registration.event.ts.epoch_ms;
            let conversions = session.iter().filter(|p| {
                matches!(
                    p.event.event_type,
                    EventType::Checkout | EventType::Purchase
                )
            });
            let mut any_fast = false;
            for conversion in conversions {
                let after = conversion.event.ts.epoch_ms - registered_at;
                if conversion.fast_checkout {
                    assert!((500..=4_500).contains(&after), "{after}");
                    any_fast = true;
                } else {
                    assert!(after >= 8_000, "{after}");
                }
            }
            fast_sessions += usize::from(any_fast);
        }
        let registering = sessions
            .iter()
            .filter(|s| {
                s.iter()
                    .any(|p| p.event.event_type == EventType::Registration)
            })
            .count();
        let fast_share = fast_sessions as f64 / registering as f64;
        assert!((0.25..=0.35).contains(&fast_share), "{fast_share}");
    }

    #[test]
    fn purchases_carry_realistic_eur_baskets_and_unique_orders() {
        let mut orders = std::collections::HashSet::new();
        for session in plan_many(50_000, 0.01) {
            for planned in session
                .iter()
                .filter(|p| p.event.event_type == EventType::Purchase)
            {
                let event = &planned.event;
                let value = event.value.unwrap_or(-1.0);
                assert!((9.90..=400.0).contains(&value), "{value}");
                assert_eq!((value * 100.0).round() / 100.0, value, "two decimals");
                assert_eq!(event.currency, Some("EUR"));
                assert!(event.product_id.is_some());
                assert!(orders.insert(event.order_id));
            }
        }
        assert!(orders.len() > 1_000);
    }

    #[test]
    fn ids_never_collide_between_logical_events_and_double_fires() {
        let mut ids = Ids::new(77);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50_000 {
            assert!(seen.insert(ids.logical_event()));
            assert!(seen.insert(ids.double_fire()));
        }
    }
}
