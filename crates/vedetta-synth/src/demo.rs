//! The demo's traffic: a month of history ending now, then live traffic (issue 11).
//!
//! `vedetta serve --demo` loads [`history_config`] through the real intake, then streams
//! [`live_config`] in real time. Both derive from one seed, so two loads of the same seed
//! give the same KPIs for the history range.
//!
//! What the [`DemoShape`] of these configurations adds to the generator (`docs/demo.md` has
//! the numbers and where they come from):
//! - **Rhythm** (history): session starts follow [`crate::rhythm::intensity`] in Rome time:
//!   evening peak, quiet nights, Sunday mornings, payday, one promotion day
//!   [`PROMOTION_DAYS_BEFORE_END`] days before the end with its own campaign
//!   ([`PROMOTION_CAMPAIGN`]).
//! - **Devices and regions**: users are 65% mobile, 30% desktop, 5% tablet; each lives in a
//!   region drawn by ISTAT population and browses from addresses that the generator's own
//!   GeoIP database (`geoip::catalog_region_mmdb`, `vedetta gen --geoip-out`) places there.
//! - **Spend follows clicks**: each paid campaign is billed per click (a cost per click per
//!   campaign, ±15% per record), so spend rises and falls with traffic; affiliates are paid a
//!   commission of [`AFFILIATE_COMMISSION_PERCENT`]% of the orders they bring
//!   ([`AFFILIATE_CAMPAIGN`]). Records come every [`HISTORY_SPEND_EVERY_MS`] in the history and
//!   every minute live. Organic, direct, e-mail and referral get none (unknown spend, "—" CPA).
//! - **Drift** (live): [`DRIFTING_CAMPAIGN`] starts overbidding at the start of the live part:
//!   within [`DRIFT_RAMP_MS`] its cost per click is [`DRIFT_CPC_FACTOR`] times higher and it
//!   buys more clicks, so its CPA goes from about €15 to about €100; after [`DRIFT_HOLD_MS`] it
//!   is fixed and comes back, so the demo's `cpa_high` rule fires and resolves.
//! - **Ids**: the live part has its own seed and its order numbers start from its start
//!   minute, so history and live (and every restart of live) never share an order id.
//!
//! Users are the same people in history and live (one population seed), so returning
//! customers in the live part are the history's.

use crate::catalog::{CampaignSpec, paid_campaigns};
use crate::config::SynthConfig;
use crate::record::{Channel, ClickIdKind};
use crate::rhythm::LocalTime;

/// Days of history the demo loads on first start.
pub const HISTORY_DAYS: i64 = 30;

/// The history's session rate at intensity 1 (a weekday late morning): about 1.2 million
/// records over 30 days, which the demo loads in seconds.
pub const HISTORY_SESSIONS_PER_MINUTE: f64 = 8.7;

/// The promotion day is this many (local) days before the history's last day.
pub const PROMOTION_DAYS_BEFORE_END: i64 = 11;

/// Spend record period of the history (fewer records to load) and of the live part.
pub const HISTORY_SPEND_EVERY_MS: i64 = 300_000;
pub const LIVE_SPEND_EVERY_MS: i64 = 60_000;

/// The campaign that drifts over its CPA in the live part.
pub const DRIFTING_CAMPAIGN: (Channel, &str) = (Channel::PaidSearch, "brand_search_it");
/// The drift reaches its full strength this long after the live part starts...
pub const DRIFT_RAMP_MS: i64 = 3 * 60_000;
/// ...holds it this long...
pub const DRIFT_HOLD_MS: i64 = 20 * 60_000;
/// ...and takes [`DRIFT_RAMP_MS`] again to go back to normal.
/// Cost per click of the drifting campaign at full drift, relative to normal.
pub const DRIFT_CPC_FACTOR: f64 = 7.0;
/// Share of all sessions that the drifting campaign's extra budget buys at full drift, on
/// top of its usual clicks.
pub const DRIFT_EXTRA_CLICK_SHARE: f64 = 0.2;

/// The promotion day's campaign (paid social), and the share of that day's sessions it brings.
pub const PROMOTION_CAMPAIGN: &str = "festa_bottega_flash";
pub const PROMOTION_SESSION_SHARE: f64 = 0.3;

/// The affiliate programme: affiliate sessions carry it as their campaign and it is paid a
/// commission on their orders.
pub const AFFILIATE_CAMPAIGN: &str = "programma_affiliati";
pub const AFFILIATE_COMMISSION_PERCENT: u64 = 10;

/// The events a session brings on average under the demo's settings (page views, funnel
/// events, duplicates), to turn an event rate into a session rate.
pub const EVENTS_PER_SESSION: f64 = 3.4;

/// What makes demo traffic different from the flat traffic of `vedetta gen`; see the module
/// documentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoShape {
    /// Session starts follow the daily and weekly rhythm (else a constant rate).
    pub rhythm: bool,
    /// With the rhythm, the lowest intensity used (0: the rhythm as it is). The live part
    /// keeps some traffic at night so that the dashboard still moves.
    pub rhythm_floor: f64,
    /// The promotion day, as a local day number ([`LocalTime::day`]).
    pub promotion_day: Option<i64>,
    /// One spend record per spending campaign per this period (whole minutes).
    pub spend_every_ms: i64,
    /// When the drifting campaign starts overbidding, if it does.
    pub drift_from_ms: Option<i64>,
    /// The population's seed: the same for history and live, so they share their users.
    pub population_seed: u64,
}

/// The generator configuration of the history: event times from `end_ms - HISTORY_DAYS`
/// days; callers take arrivals while `arrival_ms < end_ms`.
pub fn history_config(seed: u64, end_ms: i64) -> SynthConfig {
    SynthConfig {
        seed,
        start_ms: end_ms - HISTORY_DAYS * 86_400_000,
        users: 200_000,
        sessions_per_minute: HISTORY_SESSIONS_PER_MINUTE,
        demo: Some(DemoShape {
            rhythm: true,
            rhythm_floor: 0.0,
            promotion_day: Some(promotion_day(end_ms)),
            spend_every_ms: HISTORY_SPEND_EVERY_MS,
            drift_from_ms: None,
            population_seed: seed,
        }),
        ..SynthConfig::default()
    }
}

/// The generator configuration of the live part, from `start_ms` on, at about
/// `events_per_second` (a constant rate, so that what `--rate` says is what one sees).
pub fn live_config(seed: u64, start_ms: i64, events_per_second: f64) -> SynthConfig {
    let sessions_per_minute = (events_per_second * 60.0 / EVENTS_PER_SESSION).max(0.1);
    SynthConfig {
        seed: seed ^ 0x11FE,
        start_ms,
        users: 200_000.max((sessions_per_minute * 100.0) as u64),
        sessions_per_minute,
        demo: Some(DemoShape {
            rhythm: false,
            rhythm_floor: 0.0,
            promotion_day: None,
            spend_every_ms: LIVE_SPEND_EVERY_MS,
            drift_from_ms: Some(start_ms),
            population_seed: seed,
        }),
        ..SynthConfig::default()
    }
}

/// The lowest intensity of the live part that follows the history: about 0.25 events per
/// second, an event every few seconds, when the history's night is quieter than that.
pub const LIVE_RHYTHM_FLOOR: f64 = 0.5;

/// The live part that continues the history at its level: from `start_ms` (where the
/// history ended) the same rhythm and the same base rate, so that the last hour of the
/// charts and "vs previous period" compare like with like; never below
/// [`LIVE_RHYTHM_FLOOR`]. The drifting campaign drifts as in [`live_config`].
pub fn live_config_following_history(seed: u64, start_ms: i64) -> SynthConfig {
    let mut config = live_config(
        seed,
        start_ms,
        HISTORY_SESSIONS_PER_MINUTE * EVENTS_PER_SESSION / 60.0,
    );
    config.sessions_per_minute = HISTORY_SESSIONS_PER_MINUTE;
    if let Some(shape) = config.demo.as_mut() {
        shape.rhythm = true;
        shape.rhythm_floor = LIVE_RHYTHM_FLOOR;
        shape.promotion_day = Some(promotion_day(start_ms));
    }
    config
}

/// The event rate of [`live_config_following_history`] around `t_ms`.
pub fn live_events_per_second_following_history(start_ms: i64, t_ms: i64) -> f64 {
    let intensity = crate::rhythm::intensity(t_ms, Some(promotion_day(start_ms)));
    HISTORY_SESSIONS_PER_MINUTE * intensity.max(LIVE_RHYTHM_FLOOR) * EVENTS_PER_SESSION / 60.0
}

/// The history's event rate (events per second, duplicates included) around `t_ms`, for a
/// history ending at `end_ms`: what a live rate must be for the live part to continue the
/// history at the same level (about 0.05 at night to 0.9 in the evening; the 30-day mean is
/// about 0.45). The default live rate of a few events per second is several times this.
pub fn history_events_per_second(end_ms: i64, t_ms: i64) -> f64 {
    let intensity = crate::rhythm::intensity(t_ms, Some(promotion_day(end_ms)));
    HISTORY_SESSIONS_PER_MINUTE * intensity * EVENTS_PER_SESSION / 60.0
}

/// The local day of the promotion for a history ending at `end_ms`.
pub fn promotion_day(end_ms: i64) -> i64 {
    LocalTime::of(end_ms - 1).day - PROMOTION_DAYS_BEFORE_END
}

/// How far the drift has gone at `t_ms`: 0 (normal) to 1 (full), ramping up over
/// [`DRIFT_RAMP_MS`], holding for [`DRIFT_HOLD_MS`], ramping down over [`DRIFT_RAMP_MS`].
pub fn drift_level(drift_from_ms: Option<i64>, t_ms: i64) -> f64 {
    let Some(from) = drift_from_ms else {
        return 0.0;
    };
    let since = t_ms.saturating_sub(from);
    let ramp = DRIFT_RAMP_MS as f64;
    if since < 0 {
        0.0
    } else if since < DRIFT_RAMP_MS {
        since as f64 / ramp
    } else if since < DRIFT_RAMP_MS + DRIFT_HOLD_MS {
        1.0
    } else {
        let down = (since - DRIFT_RAMP_MS - DRIFT_HOLD_MS) as f64 / ramp;
        (1.0 - down).max(0.0)
    }
}

/// Share of new sessions per channel, per thousand, in the demo: a shop that buys about
/// half of its visits (paid search, social, display, affiliates), as growing Italian shops
/// do; `vedetta gen` keeps the catalog's organic-heavy mix.
pub fn channel_per_mille(channel: Channel) -> u32 {
    match channel {
        Channel::Organic => 190,
        Channel::Direct => 110,
        Channel::PaidSearch => 280,
        Channel::Social => 190,
        Channel::Email => 60,
        Channel::Referral => 40,
        Channel::Display => 80,
        Channel::Affiliate => 50,
    }
}

/// How much better than its channel a campaign's visitors convert in the demo: people who
/// search for the shop's own name mean to buy (brand search converts about twice as well as
/// generic search in most accounts; the factor applies to adding to the cart and to checking
/// out, so 1.4 doubles the conversion rate).
pub fn conversion_factor(campaign: &CampaignSpec) -> f64 {
    if is_drifting(campaign) { 1.4 } else { 1.0 }
}

/// The promotion day's campaign: an Instagram flash sale.
pub(crate) static PROMOTION: CampaignSpec = CampaignSpec {
    channel: Channel::Social,
    name: PROMOTION_CAMPAIGN,
    spend_source: "meta",
    utm_source: "instagram",
    utm_medium: "paid_social",
    click_id: Some(ClickIdKind::Fbclid),
    referrer: Some("https://l.instagram.com/"),
    spend_cents_per_minute: 0,
    weight: 0,
};

/// The affiliate programme (its sessions keep their partner's `utm_source` and referrer).
pub(crate) static AFFILIATE: CampaignSpec = CampaignSpec {
    channel: Channel::Affiliate,
    name: AFFILIATE_CAMPAIGN,
    spend_source: "awin",
    utm_source: "awin",
    utm_medium: "affiliate",
    click_id: None,
    referrer: None,
    spend_cents_per_minute: 0,
    weight: 0,
};

/// Cost per click in cents, by campaign: set so that CPA lands in the ranges of Italian
/// e-commerce (docs/demo.md). Campaigns outside the table (none in the catalog) cost 0.
pub fn cost_per_click_cents(campaign: &CampaignSpec) -> u64 {
    match (campaign.channel, campaign.name) {
        (Channel::PaidSearch, "brand_search_it") => 115,
        (Channel::PaidSearch, "saldi_invernali_2024") => 140,
        (Channel::PaidSearch, "black_friday_2024") => 160,
        (Channel::PaidSearch, "scarpe_generica_bing") => 140,
        (Channel::Social, "primavera_estate_2024") => 85,
        (Channel::Social, "retargeting_carrello") => 85,
        (Channel::Social, "saldi_tiktok_2024") => 85,
        (Channel::Social, PROMOTION_CAMPAIGN) => 70,
        (Channel::Display, "remarketing_display") => 80,
        (Channel::Display, "black_friday_2024") => 80,
        _ => 0,
    }
}

/// The campaigns that get spend records in the demo, in a fixed order: the catalog's paid
/// campaigns, the promotion (on its day only), the affiliate programme.
pub(crate) fn spend_campaigns() -> Vec<&'static CampaignSpec> {
    let mut out: Vec<&'static CampaignSpec> = paid_campaigns().collect();
    out.push(&PROMOTION);
    out.push(&AFFILIATE);
    out
}

/// Is `campaign` the drifting one?
pub(crate) fn is_drifting(campaign: &CampaignSpec) -> bool {
    (campaign.channel, campaign.name) == DRIFTING_CAMPAIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_ramps_up_holds_and_comes_back() {
        let from = Some(1_000_000);
        assert_eq!(drift_level(from, 999_999), 0.0);
        assert_eq!(drift_level(None, 5_000_000), 0.0);
        assert!((drift_level(from, 1_000_000 + DRIFT_RAMP_MS / 2) - 0.5).abs() < 1e-9);
        assert_eq!(drift_level(from, 1_000_000 + DRIFT_RAMP_MS + 60_000), 1.0);
        let end = 1_000_000 + 2 * DRIFT_RAMP_MS + DRIFT_HOLD_MS;
        assert_eq!(drift_level(from, end), 0.0);
        assert_eq!(drift_level(from, end + 3_600_000), 0.0);
    }

    #[test]
    fn every_paid_campaign_has_a_price_and_the_drifting_one_exists() {
        for campaign in spend_campaigns() {
            if campaign.channel != Channel::Affiliate {
                assert!(cost_per_click_cents(campaign) > 0, "{}", campaign.name);
            }
        }
        assert!(spend_campaigns().iter().any(|c| is_drifting(c)));
    }

    #[test]
    fn history_and_live_share_users_but_not_seeds() {
        let end = 1_764_806_400_000;
        let history = history_config(5, end);
        let live = live_config(5, end, 4.0);
        assert_ne!(history.seed, live.seed);
        let population = |c: &SynthConfig| c.demo.as_ref().map(|d| d.population_seed);
        assert_eq!(population(&history), population(&live));
        assert_eq!(history.validate(), Ok(()));
        assert_eq!(live.validate(), Ok(()));
    }
}
