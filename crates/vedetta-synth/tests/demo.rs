//! The demo's traffic (issue 11), checked with the generator's own truth: volume, rhythm,
//! money (CPA per channel, ROAS, AOV), device and region shares, the drifting campaign and
//! the alert rule it must trip, ids across history and live, determinism.
//!
//! The history is generated once per test binary (about 1.2 million records); the truth, the
//! slow part in a debug build, is computed on one week of it, which holds every day kind the
//! money checks need, and on the live part.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use vedetta_synth::demo::{
    self, DRIFTING_CAMPAIGN, HISTORY_DAYS, PROMOTION_CAMPAIGN, history_config, live_config,
};
use vedetta_synth::geoip::catalog_region_networks;
use vedetta_synth::rhythm::LocalTime;
use vedetta_synth::truth::{self, IpRegion, TruthConfig, TruthRow};
use vedetta_synth::{Arrival, ArrivalKind, Generator, SynthRecord, to_ndjson_line};

/// 2026-12-04T10:00:00Z, a Friday: the demo's "now".
const END_MS: i64 = 1_796_378_400_000;
const SEED: u64 = 2026;
const DAY_MS: i64 = 86_400_000;

fn take_until(config: vedetta_synth::SynthConfig, until_ms: i64) -> Vec<Arrival> {
    Generator::new(config)
        .expect("valid demo config")
        .take_while(|a| a.arrival_ms < until_ms)
        .collect()
}

fn history() -> &'static [Arrival] {
    static HISTORY: OnceLock<Vec<Arrival>> = OnceLock::new();
    HISTORY.get_or_init(|| take_until(history_config(SEED, END_MS), END_MS))
}

fn truth_config() -> TruthConfig {
    TruthConfig {
        geoip: catalog_region_networks()
            .into_iter()
            .map(|(network, prefix_len, region)| IpRegion {
                network,
                prefix_len,
                region: region.iso_code.to_owned(),
            })
            .collect(),
        ..TruthConfig::default()
    }
}

/// The truth's daily rows and spend of one week of the history (the last full week before
/// the end, which holds the 27th and 28th).
fn week_truth() -> &'static truth::Truth {
    static TRUTH: OnceLock<truth::Truth> = OnceLock::new();
    TRUTH.get_or_init(|| {
        let from = END_MS - 8 * DAY_MS;
        let to = END_MS - DAY_MS;
        let week: Vec<&Arrival> = history()
            .iter()
            .filter(|a| (from..to).contains(&a.arrival_ms))
            .collect();
        truth::compute(week, &truth_config())
    })
}

#[derive(Debug, Default, Clone, Copy)]
struct Money {
    spend_micros: i64,
    has_spend: bool,
    conversions: u64,
    revenue_micros: i64,
}

impl Money {
    fn cpa(self) -> f64 {
        self.spend_micros as f64 / 1e6 / self.conversions.max(1) as f64
    }
}

fn money_by_channel(truth: &truth::Truth) -> BTreeMap<String, Money> {
    let mut out: BTreeMap<String, Money> = BTreeMap::new();
    for row in truth.by_channel_and_campaign() {
        if row.granularity != "1d" {
            continue;
        }
        let money = out.entry(row.channel.clone()).or_default();
        money.conversions += row.conversions;
        money.revenue_micros += row.revenue_micros;
        if let Some(spend) = row.spend_micros {
            money.spend_micros += spend;
            money.has_spend = true;
        }
    }
    out
}

fn daily_rows(truth: &truth::Truth) -> impl Iterator<Item = &TruthRow> {
    truth.rows.iter().filter(|r| r.granularity == "1d")
}

#[test]
fn volume_fits_the_load_budget() {
    let records = history().len();
    let spend = history()
        .iter()
        .filter(|a| a.truth.kind == ArrivalKind::Spend)
        .count();
    println!("history: {records} records, {spend} spend records");
    assert!((1_000_000..=1_400_000).contains(&records), "{records}");
    // The history starts HISTORY_DAYS before its end and stops there.
    let first = history()
        .iter()
        .filter_map(|a| match &a.record {
            SynthRecord::Event(e) => Some(e.ts.epoch_ms),
            SynthRecord::Spend(_) => None,
        })
        .min();
    assert!(first.is_some_and(|ts| ts >= END_MS - HISTORY_DAYS * DAY_MS));
    assert!(history().iter().all(|a| a.arrival_ms < END_MS));
}

#[test]
fn the_history_rate_near_its_end_is_what_history_events_per_second_says() {
    let from = END_MS - 3 * 3_600_000;
    let events = history()
        .iter()
        .filter(|a| matches!(a.record, SynthRecord::Event(_)) && a.arrival_ms >= from)
        .count() as f64;
    let measured = events / (3.0 * 3_600.0);
    let expected = (0..180)
        .map(|m| demo::history_events_per_second(END_MS, from + m * 60_000))
        .sum::<f64>()
        / 180.0;
    println!("last three hours: {measured:.3} events/s, expected {expected:.3}");
    assert!(
        (measured / expected - 1.0).abs() < 0.15,
        "{measured} vs {expected}"
    );
}

#[test]
fn cpa_per_channel_lands_in_italian_e_commerce_ranges() {
    let money = money_by_channel(week_truth());
    for (channel, m) in &money {
        println!(
            "{channel:>12}: conversions {:>5} revenue {:>9.2} spend {:>9.2} cpa {:>6.2}",
            m.conversions,
            m.revenue_micros as f64 / 1e6,
            m.spend_micros as f64 / 1e6,
            m.cpa()
        );
    }
    let cpa = |channel: &str| money.get(channel).map_or(f64::NAN, |m| m.cpa());
    let paid_search = cpa("paid_search");
    let social = cpa("social");
    let display = cpa("display");
    assert!(
        (15.0..=35.0).contains(&paid_search),
        "paid search {paid_search}"
    );
    assert!((20.0..=45.0).contains(&social), "social {social}");
    assert!((40.0..=90.0).contains(&display), "display {display}");
    // Affiliates are paid a commission: about a tenth of what they bring (a bit less of
    // what is attributed to them, which includes their customers' direct returns).
    let affiliate = money.get("affiliate").copied().unwrap_or_default();
    let commission = affiliate.spend_micros as f64 / affiliate.revenue_micros.max(1) as f64;
    assert!(
        (0.06..=0.11).contains(&commission),
        "affiliate {commission}"
    );
    // Nobody pays for these: no spend records, so spend and CPA are unknown ("—").
    for channel in ["organic", "direct", "email", "referral"] {
        let m = money.get(channel).copied().unwrap_or_default();
        assert!(!m.has_spend, "{channel} has spend");
        assert!(m.conversions > 0, "{channel} has no conversions");
    }
}

#[test]
fn roas_and_aov_are_believable() {
    let money = money_by_channel(week_truth());
    let spend: i64 = money.values().map(|m| m.spend_micros).sum();
    let revenue: i64 = money.values().map(|m| m.revenue_micros).sum();
    let conversions: u64 = money.values().map(|m| m.conversions).sum();
    // ROAS as the ad platforms and the issue mean it: what the paid channels (and the
    // affiliates) bring, over what they cost. The blended ratio (all revenue over all spend,
    // "MER") is higher, since organic, direct, e-mail and referral cost nothing.
    let paid = ["paid_search", "social", "display", "affiliate"];
    let paid_revenue: i64 = paid.iter().map(|c| money[*c].revenue_micros).sum();
    let roas = paid_revenue as f64 / spend as f64;
    let blended = revenue as f64 / spend as f64;
    let aov = revenue as f64 / 1e6 / conversions as f64;
    let overall_cpa = spend as f64 / 1e6 / conversions as f64;
    println!("roas {roas:.2} (blended {blended:.2}) aov {aov:.2} overall cpa {overall_cpa:.2}");
    assert!((2.0..=6.0).contains(&roas), "roas {roas}");
    assert!((60.0..=120.0).contains(&aov), "aov {aov}");
    // The browser test wants the dashboard's overall CPA between €10 and €60.
    assert!(
        (12.0..=60.0).contains(&overall_cpa),
        "overall cpa {overall_cpa}"
    );
    // Search and social pay for themselves at least twice over; display (prospecting) less.
    for channel in ["paid_search", "social"] {
        let m = money[channel];
        let roas = m.revenue_micros as f64 / m.spend_micros as f64;
        assert!((2.0..=8.0).contains(&roas), "{channel} roas {roas}");
    }
}

#[test]
fn devices_and_regions_follow_the_demo_shares() {
    let mut devices: HashMap<&str, u64> = HashMap::new();
    let mut regions: HashMap<&str, u64> = HashMap::new();
    let mut sessions = 0;
    for row in daily_rows(week_truth()) {
        *devices.entry(&row.device).or_default() += row.sessions;
        *regions.entry(&row.region).or_default() += row.sessions;
        sessions += row.sessions;
    }
    let share = |map: &HashMap<&str, u64>, key: &str| {
        map.get(key).copied().unwrap_or(0) as f64 / sessions as f64
    };
    let (mobile, desktop, tablet) = (
        share(&devices, "mobile"),
        share(&devices, "desktop"),
        share(&devices, "tablet"),
    );
    println!("sessions {sessions}: mobile {mobile:.3} desktop {desktop:.3} tablet {tablet:.3}");
    assert!((0.62..=0.68).contains(&mobile), "mobile {mobile}");
    assert!((0.27..=0.33).contains(&desktop), "desktop {desktop}");
    assert!((0.035..=0.065).contains(&tablet), "tablet {tablet}");

    let unknown = share(&regions, "unknown");
    assert!(unknown < 0.05, "unknown region {unknown}");
    let mut ranked: Vec<(&str, u64)> = regions.iter().map(|(r, n)| (*r, *n)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    println!("regions: {ranked:?}");
    let top: HashSet<&str> = ranked.iter().take(3).map(|r| r.0).collect();
    assert_eq!(
        top,
        HashSet::from(["IT-25", "IT-62", "IT-72"]),
        "{ranked:?}"
    );
    // Lombardia leads by far, as its population does (about 17%).
    let lombardia = share(&regions, "IT-25");
    assert!((0.14..=0.20).contains(&lombardia), "lombardia {lombardia}");
}

/// Session starts of the whole history per local (day, hour).
fn starts_by_local_hour() -> &'static BTreeMap<(i64, i64), u64> {
    static STARTS: OnceLock<BTreeMap<(i64, i64), u64>> = OnceLock::new();
    STARTS.get_or_init(|| {
        let mut seen = HashSet::new();
        let mut out = BTreeMap::new();
        for arrival in history() {
            let (Some(session), SynthRecord::Event(event)) =
                (arrival.truth.session, &arrival.record)
            else {
                continue;
            };
            // Each session's first original event is its landing page view.
            if arrival.truth.kind == ArrivalKind::Original && seen.insert(session) {
                let local = LocalTime::of(event.ts.epoch_ms);
                *out.entry((local.day, local.hour())).or_insert(0) += 1;
            }
        }
        out
    })
}

#[test]
fn the_history_has_a_daily_and_weekly_rhythm() {
    let starts = starts_by_local_hour();
    let first_day = LocalTime::of(END_MS - HISTORY_DAYS * DAY_MS).day + 1;
    let last_day = LocalTime::of(END_MS).day - 1;
    let promotion = demo::promotion_day(END_MS);
    let day_facts = |day: i64| LocalTime::of((day * DAY_MS) + 12 * 3_600_000);
    let at = |day: i64, hours: std::ops::Range<i64>| -> u64 {
        hours
            .map(|h| starts.get(&(day, h)).copied().unwrap_or(0))
            .sum()
    };
    let ordinary = |day: i64| {
        let facts = day_facts(day);
        day != promotion && !(27..=28).contains(&facts.day_of_month)
    };
    let days: Vec<i64> = (first_day..=last_day).collect();
    let mean = |pick: &dyn Fn(i64) -> bool, hours: std::ops::Range<i64>| {
        let chosen: Vec<i64> = days.iter().copied().filter(|d| pick(*d)).collect();
        chosen.iter().map(|d| at(*d, hours.clone())).sum::<u64>() as f64 / chosen.len() as f64
    };
    let weekday = |d: i64| ordinary(d) && (1..=5).contains(&day_facts(d).weekday);
    let evening = mean(&weekday, 21..22);
    let night = mean(&weekday, 3..4);
    println!("per hour: evening {evening:.0} night {night:.0}");
    assert!(evening > 8.0 * night, "evening {evening} night {night}");

    let sunday_morning = mean(&|d| ordinary(d) && day_facts(d).weekday == 0, 9..12);
    let weekday_morning = mean(&weekday, 9..12);
    println!("mornings: sunday {sunday_morning:.0} weekday {weekday_morning:.0}");
    assert!(sunday_morning < 0.65 * weekday_morning);

    // Payday, the day after and the promotion against ordinary days of the same weekday.
    let whole = 0..24;
    let compare = |day: i64| -> f64 {
        let weekday = day_facts(day).weekday;
        let usual = mean(
            &|d| ordinary(d) && day_facts(d).weekday == weekday,
            whole.clone(),
        );
        at(day, whole.clone()) as f64 / usual
    };
    let day_of_month = |n: u32| {
        days.iter()
            .copied()
            .find(|d| day_facts(*d).day_of_month == n)
    };
    let payday = day_of_month(27)
        .map(compare)
        .expect("the history holds a 27th");
    let after = day_of_month(28)
        .map(compare)
        .expect("the history holds a 28th");
    let promotion_day = compare(promotion);
    println!(
        "per day, against the usual: 27th {payday:.2} 28th {after:.2} promotion {promotion_day:.2}"
    );
    assert!(payday > 1.18, "payday {payday}");
    assert!(after > 1.05, "28th {after}");
    assert!(promotion_day > 2.2, "promotion {promotion_day}");
    // The promotion brings its own campaign, only on its day.
    let promoted: Vec<i64> = history()
        .iter()
        .filter_map(|a| match &a.record {
            SynthRecord::Event(e) if e.campaign == Some(PROMOTION_CAMPAIGN) => {
                Some(LocalTime::of(e.ts.epoch_ms).day)
            }
            _ => None,
        })
        .collect();
    assert!(promoted.len() > 1_000, "{}", promoted.len());
    assert!(promoted.iter().all(|d| *d == promotion));
}

/// The live part with the last two hours of history before it (what the rule's window sees
/// at the start), and its truth.
fn live_truth() -> &'static (Vec<Arrival>, truth::Truth) {
    static LIVE: OnceLock<(Vec<Arrival>, truth::Truth)> = OnceLock::new();
    LIVE.get_or_init(|| {
        let live = take_until(live_config(SEED, END_MS, 4.0), END_MS + 60 * 60_000);
        let tail = history()
            .iter()
            .filter(|a| a.arrival_ms >= END_MS - 2 * 3_600_000);
        let truth = truth::compute(tail.chain(live.iter()), &truth_config());
        (live, truth)
    })
}

/// The demo's `cpa_high` rule as docs/alerts.md judges it, on 1-minute rows: per (channel,
/// campaign) the window of the last `over` minutes; the condition must hold `for` minutes
/// before firing; once firing, `resolve_expr` must hold for `keep_firing_for` minutes.
/// Returns per group the minute (from `END_MS`) it fires and the minute it resolves.
struct CpaRule {
    over: i64,
    fire_above: f64,
    resolve_below: f64,
    for_minutes: i64,
    keep_firing_for: i64,
    min_conversions: u64,
}

type Verdicts = BTreeMap<(String, String), (i64, Option<i64>)>;

fn judge(rule: &CpaRule, truth: &truth::Truth, minutes: i64) -> Verdicts {
    let mut per_minute: HashMap<(String, String, i64), (i64, bool, u64)> = HashMap::new();
    for row in truth.by_channel_and_campaign() {
        if row.granularity != "1m" {
            continue;
        }
        let minute = (row.window_start_ms - END_MS).div_euclid(60_000);
        let cell = per_minute
            .entry((row.channel.clone(), row.campaign.clone(), minute))
            .or_default();
        if let Some(spend) = row.spend_micros {
            cell.0 += spend;
            cell.1 = true;
        }
        cell.2 += row.conversions;
    }
    let groups: HashSet<(String, String)> = per_minute
        .keys()
        .map(|(c, k, _)| (c.clone(), k.clone()))
        .collect();
    let mut out = BTreeMap::new();
    for group in groups {
        // The CPA of the window ending with minute m (exclusive end m + 1).
        let cpa = |m: i64| -> Option<f64> {
            let (mut spend, mut known, mut conversions) = (0, false, 0);
            for minute in (m + 1 - rule.over)..=m {
                if let Some(cell) = per_minute.get(&(group.0.clone(), group.1.clone(), minute)) {
                    spend += cell.0;
                    known |= cell.1;
                    conversions += cell.2;
                }
            }
            (known && conversions >= rule.min_conversions && conversions > 0)
                .then(|| spend as f64 / 1e6 / conversions as f64)
        };
        let mut held = 0;
        let mut fired: Option<i64> = None;
        let mut recovered = 0;
        for m in 0..minutes {
            match fired {
                None => {
                    held = if cpa(m).is_some_and(|v| v > rule.fire_above) {
                        held + 1
                    } else {
                        0
                    };
                    if held > rule.for_minutes {
                        fired = Some(m);
                    }
                }
                Some(at) => {
                    // No data counts as recovered (docs/alerts.md).
                    let ok = cpa(m).is_none_or(|v| v < rule.resolve_below);
                    recovered = if ok { recovered + 1 } else { 0 };
                    if recovered > rule.keep_firing_for {
                        out.insert(group.clone(), (at, Some(m)));
                        break;
                    }
                }
            }
        }
        if let Some(at) = fired {
            out.entry(group).or_insert((at, None));
        }
    }
    out
}

/// The demo's `cpa_high` rule (crates/vedetta/src/watch/demo-alerts.toml).
const DEMO_CPA_RULE: CpaRule = CpaRule {
    over: 10,
    fire_above: 40.0,
    resolve_below: 30.0,
    for_minutes: 1,
    keep_firing_for: 5,
    min_conversions: 3,
};

#[test]
fn the_drifting_campaign_trips_the_demo_cpa_rule_and_recovers() {
    let (live, truth) = live_truth();
    // The live rate is what was asked for.
    let events = live
        .iter()
        .filter(|a| matches!(a.record, SynthRecord::Event(_)))
        .count();
    let rate = events as f64 / 3_600.0;
    println!("live: {rate:.2} events/s");
    assert!((3.5..=4.5).contains(&rate), "{rate}");

    // The drifting campaign's CPA: about €15 before the live part, far over €20 during the
    // drift (spend of minutes 3–23 over the conversions of minutes 8–28: purchases come
    // minutes after the click), back after it.
    let (channel, campaign) = (DRIFTING_CAMPAIGN.0.as_str(), DRIFTING_CAMPAIGN.1);
    let rows: Vec<_> = truth
        .by_channel_and_campaign()
        .into_iter()
        .filter(|r| r.granularity == "1m" && r.channel == channel && r.campaign == campaign)
        .collect();
    let sum = |from: i64, to: i64, spend: bool| -> f64 {
        rows.iter()
            .filter(|r| (END_MS + from * 60_000..END_MS + to * 60_000).contains(&r.window_start_ms))
            .map(|r| {
                if spend {
                    r.spend_micros.unwrap_or(0) as f64 / 1e6
                } else {
                    r.conversions as f64
                }
            })
            .sum()
    };
    let drifted = sum(3, 23, true) / sum(8, 28, false);
    println!("drifting campaign: cpa {drifted:.2} during the drift");
    assert!((70.0..=140.0).contains(&drifted), "{drifted}");
    let week = week_truth()
        .by_channel_and_campaign()
        .into_iter()
        .filter(|r| r.granularity == "1d" && r.channel == channel && r.campaign == campaign)
        .fold((0i64, 0u64), |(s, c), r| {
            (s + r.spend_micros.unwrap_or(0), c + r.conversions)
        });
    let before = week.0 as f64 / 1e6 / week.1 as f64;
    println!("drifting campaign: cpa {before:.2} in the history");
    assert!((10.0..=20.0).contains(&before), "{before}");

    // The demo's rule fires on it, and only on it, and resolves once the drift is over.
    // Purchases follow their click by minutes and the history before "now" is quieter than
    // the live part, so the rule's volume guard (3 conversions in 10 minutes) is met about
    // ten minutes in.
    let verdicts = judge(&DEMO_CPA_RULE, truth, 60);
    println!("{verdicts:?}");
    let drifting = verdicts
        .get(&(channel.to_owned(), campaign.to_owned()))
        .copied();
    let (fired, resolved) = drifting.expect("the drifting campaign never fired");
    assert!(fired <= 15, "fired at minute {fired}");
    let resolved = resolved.expect("it never resolved");
    assert!(resolved <= 45, "resolved at minute {resolved}");
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
}

#[test]
fn history_and_live_never_share_an_order_id() {
    let (live, _) = live_truth();
    let orders = |arrivals: &[Arrival]| -> HashSet<String> {
        arrivals
            .iter()
            .filter_map(|a| match &a.record {
                SynthRecord::Event(e) => e.order_id.map(|o| o.to_string()),
                SynthRecord::Spend(_) => None,
            })
            .collect()
    };
    let before = orders(history());
    let after = orders(live);
    assert!(before.len() > 10_000 && after.len() > 50);
    assert!(before.is_disjoint(&after));
    // A restart of live, even a minute later (here overlapping the first run's time), takes
    // new numbers: they start from its own start minute.
    let restart = take_until(
        live_config(SEED, END_MS + 60_000, 4.0),
        END_MS + 20 * 60_000,
    );
    assert!(orders(&restart).is_disjoint(&after));
    assert!(orders(&restart).is_disjoint(&before));
}

#[test]
fn a_seed_gives_the_same_demo_and_another_seed_another() {
    let digest = |arrivals: &[Arrival]| {
        let mut line = Vec::new();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for arrival in arrivals {
            line.clear();
            to_ndjson_line(&arrival.record, &mut line);
            for byte in &line {
                hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        hash
    };
    let start = END_MS - HISTORY_DAYS * DAY_MS;
    let first_day = |seed| take_until(history_config(seed, END_MS), start + DAY_MS);
    let again = first_day(SEED);
    assert_eq!(
        again.len(),
        history()
            .iter()
            .take_while(|a| a.arrival_ms < start + DAY_MS)
            .count()
    );
    assert_eq!(digest(&again), digest(&history()[..again.len()]));
    assert_ne!(digest(&again), digest(&first_day(SEED + 1)));
}

/// The live part that follows the history continues it at its level: in each of the five
/// hours after the first (the first is a warm-up: the generator's sessions start at
/// `start`, and their later events are not there yet), the event rate is within 15 % of
/// the history's for that hour (or of the night floor), so the charts do not step at "now".
#[test]
fn the_live_part_following_the_history_keeps_its_level() {
    // From 11:00 in Rome, and from 03:00, where the night floor lifts the level.
    for start in [END_MS, END_MS - 8 * 3_600_000] {
        let live = take_until(
            demo::live_config_following_history(SEED, start),
            start + 6 * 3_600_000,
        );
        for hour in 1..6 {
            let from = start + hour * 3_600_000;
            let events = live
                .iter()
                .filter(|a| {
                    matches!(a.record, SynthRecord::Event(_))
                        && (from..from + 3_600_000).contains(&a.arrival_ms)
                })
                .count() as f64;
            let measured = events / 3_600.0;
            let minutes = (0..60).map(|m| from + m * 60_000);
            let following = minutes
                .clone()
                .map(|t| demo::live_events_per_second_following_history(start, t))
                .sum::<f64>()
                / 60.0;
            let history = minutes
                .map(|t| demo::history_events_per_second(start, t))
                .sum::<f64>()
                / 60.0;
            println!(
                "hour {hour}: live {measured:.3} events/s, expected {following:.3}, history {history:.3}"
            );
            assert!(
                (measured / following - 1.0).abs() < 0.15,
                "hour {hour}: {measured} vs {following}"
            );
            // The same as the history's level, except where the night floor lifts it.
            assert!(following >= history * 0.999, "{following} < {history}");
            assert!(following >= 0.24, "{following}");
        }
    }
}
