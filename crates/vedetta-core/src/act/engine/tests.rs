#![allow(clippy::unwrap_used)]
use super::*;
use crate::act::triggers::{RawTrigger, check_triggers};
use crate::pipeline::kpi::{KpiCounters, SpendCounters};
use crate::record::Consent;
use crate::time::EventTime;
use std::collections::BTreeSet;

const T0: i64 = 1_712_318_400_000;
const MIN: i64 = 60_000;

fn user(n: u8) -> UserPseudonym {
    UserPseudonym([n; 16])
}

fn event(n: u8, kind: EventKind, ts: i64) -> StoredEvent {
    StoredEvent {
        user: user(n),
        kind,
        ts: EventTime(ts),
        event_id: None,
        value: None,
        currency: None,
        order_id: None,
        channel: Some("social".into()),
        campaign: Some("saldi".into()),
        utm_source: None,
        utm_medium: None,
        utm_campaign: None,
        utm_content: None,
        utm_term: None,
        gclid: None,
        fbclid: None,
        user_agent: None,
        device: Some("mobile".into()),
        ip_network: None,
        region: Some("Lombardia".into()),
        page: None,
        referrer: None,
        product_id: None,
        consent: Consent {
            analytics: None,
            marketing: Some(true),
        },
        properties: None,
    }
}

fn view(n: u8, ts: i64, product: &str) -> StoredEvent {
    let mut e = event(n, EventKind::PageView, ts);
    e.product_id = Some(product.into());
    e
}

fn triggers(toml_text: &str) -> Vec<Trigger> {
    #[derive(serde::Deserialize)]
    struct File {
        triggers: Vec<RawTrigger>,
    }
    let file: File = toml::from_str(toml_text).unwrap();
    let d: BTreeSet<String> = ["push".to_string()].into();
    check_triggers(&file.triggers, &d, &d).unwrap()
}

const CPA: &str = r#"
[[triggers]]
name = "cpa_alto"
kind = "segment_cpa"
group_by = ["channel", "campaign"]
threshold = 20
over = "10m"
min_conversions = 2
segment_label = "costi > 20€"
notify = ["push"]
"#;

fn totals(conversions: i64, spend_eur: i64) -> GroupTotals {
    GroupTotals {
        counters: KpiCounters {
            conversions,
            sessions: conversions.max(1),
            ..KpiCounters::default()
        },
        spend: Some(SpendCounters {
            micros: i128::from(spend_eur) * 1_000_000,
            records: 1,
        }),
        ..GroupTotals::default()
    }
}

fn judge(engine: &mut Engine, minute_end: i64, conversions: i64, spend: i64) -> Vec<Output> {
    let mut out = Vec::new();
    engine.judge_minute(
        minute_end,
        &mut |_| {
            [(
                vec!["social".to_string(), "saldi".to_string()],
                totals(conversions, spend),
            )]
            .into()
        },
        &mut out,
    );
    out
}

#[test]
fn a_segment_over_cpa_sends_its_intent_users_once_each_with_their_last_product() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    engine.observe(&view(1, T0 + MIN, "scarpa-1"), &mut out);
    engine.observe(&view(1, T0 + 2 * MIN, "scarpa-2"), &mut out);
    // User 2 looked, then bought: not selected.
    engine.observe(&view(2, T0 + MIN, "borsa"), &mut out);
    let mut bought = event(2, EventKind::Purchase, T0 + 3 * MIN);
    bought.value = Some(40.0);
    engine.observe(&bought, &mut out);
    // User 3 has no marketing consent: counted, never sent.
    let mut no_consent = view(3, T0 + MIN, "cappello");
    no_consent.consent.marketing = None;
    engine.observe(&no_consent, &mut out);
    // User 4 looked in another segment.
    let mut elsewhere = view(4, T0 + MIN, "guanti");
    elsewhere.channel = Some("email".into());
    engine.observe(&elsewhere, &mut out);
    assert!(
        out.is_empty(),
        "no trigger of this set acts on events alone"
    );

    // CPA 15 over 2 conversions: under the threshold.
    assert!(judge(&mut engine, T0 + 5 * MIN, 2, 30).is_empty());
    // CPA 25: fires, a signal then the one user.
    let fired = judge(&mut engine, T0 + 6 * MIN, 2, 50);
    assert_eq!(fired.len(), 2, "{fired:?}");
    let signal = fired[0].signal.as_ref().unwrap();
    assert_eq!(signal.signal, SegmentSignal::Firing);
    assert_eq!(signal.cpa, Some(25.0));
    assert_eq!(
        fired[0].group,
        vec![
            ("channel".to_string(), "social".to_string()),
            ("campaign".to_string(), "saldi".to_string())
        ]
    );
    let sent = fired[1].event.as_ref().unwrap();
    assert_eq!(fired[1].user, Some(user(1)));
    assert_eq!(sent.product_id.as_deref(), Some("scarpa-2"));
    assert_eq!(sent.kind, "page_view");
    assert_eq!(engine.state().withheld.get("cpa_alto"), Some(&1));
    // Still firing next minute: nobody again (cooldown), no second signal.
    assert!(judge(&mut engine, T0 + 7 * MIN, 2, 50).is_empty());
    // A new user with intent while it fires is sent at the next minute.
    engine.observe(&view(5, T0 + 7 * MIN + 5_000, "orologio"), &mut out);
    let more = judge(&mut engine, T0 + 8 * MIN, 2, 50);
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].user, Some(user(5)));
    // Recovery: one signal.
    let recovered = judge(&mut engine, T0 + 9 * MIN, 4, 50);
    assert_eq!(recovered.len(), 1);
    assert_eq!(
        recovered[0].signal.as_ref().unwrap().signal,
        SegmentSignal::Recovered
    );
    // Below the volume guard the segment is not firing either.
    assert!(judge(&mut engine, T0 + 10 * MIN, 1, 500).is_empty());
}

#[test]
fn a_minute_is_judged_once() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    assert_eq!(judge(&mut engine, T0 + 6 * MIN, 2, 50).len(), 1);
    // A replay of the same minute (after a restart from an older commit) decides nothing.
    assert!(judge(&mut engine, T0 + 6 * MIN, 4, 50).is_empty());
}

#[test]
fn an_abandoned_cart_is_sent_after_its_delay_with_products_and_value() {
    let t = triggers(
        "[[triggers]]\nname = \"carrello\"\nkind = \"abandoned_cart\"\nafter = \"30m\"\nnotify = [\"push\"]\n",
    );
    let mut engine = Engine::new(t, vec![EventKind::Purchase], ActState::default());
    let mut out = Vec::new();
    let mut a = event(1, EventKind::AddToCart, T0);
    a.product_id = Some("p1".into());
    a.value = Some(10.0);
    let mut b = event(1, EventKind::AddToCart, T0 + MIN);
    b.product_id = Some("p2".into());
    b.value = Some(15.5);
    engine.observe(&a, &mut out);
    engine.observe(&b, &mut out);
    // User 2 adds and buys: nothing.
    engine.observe(&event(2, EventKind::AddToCart, T0), &mut out);
    engine.observe(&event(2, EventKind::Purchase, T0 + 10 * MIN), &mut out);
    engine.advance(T0 + 29 * MIN, &mut out);
    assert!(out.is_empty());
    engine.advance(T0 + 30 * MIN, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let e = out[0].event.as_ref().unwrap();
    assert_eq!(e.product_ids, ["p1", "p2"]);
    assert_eq!(e.cart_value, Some(25.5));
    assert_eq!(out[0].at_ms, T0 + 30 * MIN);
    out.clear();
    engine.advance(T0 + 90 * MIN, &mut out);
    assert!(out.is_empty(), "sent once");
}

#[test]
fn tags_and_the_feed_see_clean_conversions_only() {
    let t = triggers(
        r#"
        [[triggers]]
        name = "vip"
        kind = "tag"
        tag = "VIP"
        on = "purchase_over"
        min_value = 100
        notify = ["push"]
        [[triggers]]
        name = "cliente"
        kind = "tag"
        tag = "customer"
        on = "first_purchase"
        notify = ["push"]
        [[triggers]]
        name = "feed"
        kind = "conversion_feed"
        notify = ["push"]
        "#,
    );
    let mut engine = Engine::new(t, vec![EventKind::Purchase], ActState::default());
    let mut out = Vec::new();
    let mut big = event(1, EventKind::Purchase, T0);
    big.value = Some(150.0);
    big.event_id = Some("o-1".into());
    engine.observe(&big, &mut out);
    let names: Vec<usize> = out.iter().map(|o| o.trigger).collect();
    assert_eq!(names, [0, 1, 2]);
    assert_eq!(out[0].event.as_ref().unwrap().tag.as_deref(), Some("VIP"));
    out.clear();
    // The same event id again, and a near duplicate: nothing.
    engine.observe(&big, &mut out);
    let mut near = big.clone();
    near.event_id = None;
    near.ts = EventTime(T0 + 50);
    engine.observe(&near, &mut out);
    // A fast checkout: a purchase 2 s after a registration.
    engine.observe(&event(2, EventKind::Registration, T0), &mut out);
    engine.observe(&event(2, EventKind::Purchase, T0 + 2_000), &mut out);
    assert!(out.is_empty(), "{out:?}");
    // A second, small purchase: the feed only (not first, not over 100).
    engine.observe(&event(1, EventKind::Purchase, T0 + 10 * MIN), &mut out);
    assert_eq!(out.iter().map(|o| o.trigger).collect::<Vec<_>>(), [2]);
}

/// Stores `changes` into `rows` as the trigger store does: a row per user, removed when
/// the user is forgotten.
fn apply(rows: &mut BTreeMap<u64, Vec<u8>>, changes: StateChanges) -> Vec<u8> {
    for (key, row) in changes.users {
        match row {
            Some(row) => rows.insert(key, row),
            None => rows.remove(&key),
        };
    }
    changes.globals
}

fn restored(globals: &[u8], rows: &BTreeMap<u64, Vec<u8>>) -> StoredState {
    ActState::decode_stored(globals, rows.iter().map(|(p, r)| (*p, r.as_slice()))).unwrap()
}

#[test]
fn state_round_trips_through_its_rows_and_other_formats_are_refused() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    let mut rows = BTreeMap::new();
    engine.observe(&view(1, T0, "x"), &mut out);
    engine.observe(&view(2, T0, "y"), &mut out);
    let changes = engine.take_changes().unwrap();
    // Rows keyed in the order users were first seen.
    assert_eq!(
        changes.users.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [0, 1]
    );
    apply(&mut rows, changes);
    // Judging takes both out of the candidates: both rows change, nothing else.
    judge(&mut engine, T0 + 6 * MIN, 2, 50);
    let changes = engine.take_changes().unwrap();
    assert_eq!(changes.users.len(), 2, "{changes:?}");
    let globals = apply(&mut rows, changes);
    let back = restored(&globals, &rows);
    assert!(!back.legacy);
    assert_eq!(&back.state, engine.state());
    // Only the users a step touched are written.
    engine.observe(&view(2, T0 + 7 * MIN, "z"), &mut out);
    let changes = engine.take_changes().unwrap();
    assert_eq!(
        changes.users.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [1]
    );
    let globals = apply(&mut rows, changes);
    assert_eq!(&restored(&globals, &rows).state, engine.state());
    // A forgotten user's row goes (a day idle, no cooldown, no cart).
    let mut engine = Engine::new(triggers(CPA), vec![EventKind::Purchase], back.state);
    engine.advance(T0 + 2 * 86_400_000, &mut out);
    let changes = engine.take_changes().unwrap();
    assert!(
        changes.users.iter().all(|(_, row)| row.is_none()),
        "{changes:?}"
    );
    assert_eq!(changes.users.len(), 2);
    let globals = apply(&mut rows, changes);
    assert!(rows.is_empty());
    assert_eq!(&restored(&globals, &rows).state, engine.state());
    // Other formats are refused, named.
    let mut other = globals.clone();
    other[0] = 9;
    assert_eq!(
        ActState::decode_stored(&other, []).unwrap_err(),
        ActStateError::Version { found: 9 }
    );
    let row = [9u8, 0];
    assert_eq!(
        ActState::decode_stored(&globals, [(0, &row[..])]).unwrap_err(),
        ActStateError::Version { found: 9 }
    );
}

/// A state stored whole by format 1 (before rows; its user map in pseudonym order) still
/// loads, marked legacy, and every user is written as a row at the next take.
#[test]
fn a_format_1_state_loads_and_its_users_are_rewritten_as_rows() {
    #[derive(serde::Serialize)]
    struct FormatOne<'a> {
        users: BTreeMap<UserPseudonym, &'a UserFacts>,
        segments: &'a BTreeMap<(String, Vec<String>), SegmentState>,
        max_event_ms: Option<i64>,
        judged_through_ms: Option<i64>,
        advanced_minute_ms: Option<i64>,
        withheld: &'a BTreeMap<String, u64>,
        candidates: &'a BTreeMap<UserPseudonym, i64>,
    }
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    for n in (0..200).rev() {
        engine.observe(&view(n, T0, &format!("p{n}")), &mut out);
    }
    let a = engine.state().clone();
    let old = FormatOne {
        users: a.users.iter().map(|(p, f)| (*p, f)).collect(),
        segments: &a.segments,
        max_event_ms: a.max_event_ms,
        judged_through_ms: a.judged_through_ms,
        advanced_minute_ms: a.advanced_minute_ms,
        withheld: &a.withheld,
        candidates: &a.candidates,
    };
    let mut format_one = vec![1];
    format_one.extend(postcard::to_allocvec(&old).unwrap());
    let back = ActState::decode_stored(&format_one, []).unwrap();
    assert!(back.legacy);
    // Format 1 had no row keys: they are given in pseudonym order.
    let without_rows = |mut state: ActState| {
        state.users.values_mut().for_each(|f| f.row = 0);
        state.next_row = 0;
        state
    };
    assert_eq!(without_rows(back.state.clone()), without_rows(a.clone()));
    assert_eq!(back.state.users[&user(7)].row, 7);
    assert_eq!(back.state.next_row, 200);
    let mut engine = Engine::new(triggers(CPA), vec![EventKind::Purchase], back.state);
    engine.mark_all_changed();
    let mut rows = BTreeMap::new();
    let globals = apply(&mut rows, engine.take_changes().unwrap());
    assert_eq!(rows.len(), 200);
    assert_eq!(globals[0], ACT_STATE_FORMAT);
    assert_eq!(&restored(&globals, &rows).state, engine.state());
}

/// With no trigger in force the engine keeps nothing of the events it is shown.
#[test]
fn an_engine_without_triggers_keeps_no_user() {
    let mut engine = Engine::new(Vec::new(), vec![EventKind::Purchase], ActState::default());
    let mut out = Vec::new();
    engine.observe(&view(1, T0, "x"), &mut out);
    engine.observe(&event(1, EventKind::Purchase, T0 + MIN), &mut out);
    assert_eq!(engine.users(), 0);
    assert!(out.is_empty());
    assert!(engine.take_changes().unwrap().users.is_empty());
    assert_eq!(engine.state().max_event_ms, Some(T0 + MIN));
}

#[test]
fn per_user_state_is_bounded_and_pruned_by_time() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    let long = "p".repeat(10_000);
    for i in 0..1_000 {
        engine.observe(&view(1, T0 + i, &long), &mut out);
    }
    let facts = &engine.state().users[&user(1)];
    assert_eq!(facts.intents.len(), MAX_INTENTS);
    assert!(
        facts.approximate_bytes() < 4_096,
        "{}",
        facts.approximate_bytes()
    );
    engine.advance(T0 + 2 * 86_400_000, &mut out);
    assert_eq!(engine.users(), 0);
}

#[test]
fn a_direct_visit_counts_in_the_segment_of_the_user_s_last_touch() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    engine.observe(&event(1, EventKind::PageView, T0), &mut out);
    let mut direct = view(1, T0 + MIN, "divano");
    direct.channel = None;
    direct.campaign = None;
    engine.observe(&direct, &mut out);
    let fired = judge(&mut engine, T0 + 6 * MIN, 2, 50);
    assert_eq!(fired.len(), 2);
    assert_eq!(
        fired[1].event.as_ref().unwrap().product_id.as_deref(),
        Some("divano")
    );
}

/// The bug: once a segment fired, only users with an intent observed *after* the firing
/// were looked at; a backtest (or a catch-up) observes the log before judging its minutes,
/// so intents later than the firing minute but observed before it were never sent.
#[test]
fn intents_observed_before_their_minute_is_judged_are_not_lost() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    // Everything observed first: intents at minutes 3 and 4.
    engine.observe(&view(1, T0 + 3 * MIN, "a"), &mut out);
    engine.observe(&view(2, T0 + 4 * MIN, "b"), &mut out);
    // The segment fires at minute 2, before those intents: nobody yet.
    let fired = judge(&mut engine, T0 + 2 * MIN, 2, 50);
    assert_eq!(fired.len(), 1, "the signal only: {fired:?}");
    let users = |o: &[Output]| o.iter().filter_map(|o| o.user).collect::<Vec<_>>();
    assert!(judge(&mut engine, T0 + 3 * MIN, 2, 50).is_empty());
    assert_eq!(users(&judge(&mut engine, T0 + 4 * MIN, 2, 50)), [user(1)]);
    assert_eq!(users(&judge(&mut engine, T0 + 5 * MIN, 2, 50)), [user(2)]);
    assert!(engine.state().candidates.is_empty(), "all judged");
}

/// Idle users are forgotten at the first minute judged after the keep time (a day here)
/// and after their cooldowns, and kept while they come back: `advance` looks only at the
/// users due, not at every user every minute.
#[test]
fn idle_users_are_forgotten_after_a_day_and_their_cooldowns() {
    let set = r#"
[[triggers]]
name = "customer"
kind = "tag"
on = "first_purchase"
tag = "customer"
cooldown = "3d"
notify = ["push"]

[[triggers]]
name = "cart"
kind = "abandoned_cart"
after = "2h"
notify = ["push"]
"#;
    const HOUR: i64 = 3_600_000;
    let mut engine = Engine::new(
        triggers(set),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    engine.observe(&event(1, EventKind::Purchase, T0), &mut out);
    engine.observe(&view(2, T0, "a"), &mut out);
    engine.observe(&view(3, T0, "a"), &mut out);
    let mut cart = event(4, EventKind::AddToCart, T0);
    cart.value = Some(10.0);
    engine.observe(&cart, &mut out);
    let mut gone: BTreeMap<u8, i64> = BTreeMap::new();
    for hour in 0..=120 {
        if hour == 23 {
            engine.observe(&view(3, T0 + 23 * HOUR, "b"), &mut out);
        }
        if hour == 60 {
            engine.observe(&view(1, T0 + 60 * HOUR, "b"), &mut out);
        }
        engine.advance(T0 + hour * HOUR, &mut out);
        for n in 1..=4 {
            if !engine.state().users.contains_key(&user(n)) {
                gone.entry(n).or_insert(hour);
            }
        }
    }
    // 1: tagged at 0 (3 days' cooldown), back at 60 h: idle at 84 h, cooldown over at 72 h.
    // 2: idle a day after its view. 3: back at 23 h. 4: its cart sent at 2 h (a day's
    // cooldown, to 26 h).
    assert_eq!(gone, BTreeMap::from([(1, 84), (2, 24), (3, 47), (4, 26)]));
    let sent: Vec<(usize, Option<UserPseudonym>)> =
        out.iter().map(|o| (o.trigger, o.user)).collect();
    assert_eq!(sent, [(0, Some(user(1))), (1, Some(user(4)))]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Whatever the engine does (observes, selects, sends carts, prunes, forgets), the rows
    /// written at each step plus the globals read back as the engine's state: no change
    /// to a user is left out of [`Engine::take_changes`].
    #[test]
    fn the_rows_of_every_step_read_back_as_the_state(
        steps in proptest::collection::vec(
            (
                proptest::collection::vec((0u8..24, 0u8..5, 0i64..600_000, proptest::bool::ANY), 0..12),
                0i64..4,
                proptest::bool::ANY,
            ),
            1..40,
        )
    ) {
        let set = format!(
            "{CPA}{}",
            r#"
[[triggers]]
name = "vip"
kind = "tag"
tag = "VIP"
on = "purchase_over"
min_value = 50
cooldown = "1h"
notify = ["push"]
[[triggers]]
name = "cart"
kind = "abandoned_cart"
after = "5m"
cooldown = "30m"
notify = ["push"]
"#
        );
        let mut engine = Engine::new(triggers(&set), vec![EventKind::Purchase], ActState::default());
        let mut rows = BTreeMap::new();
        let mut out = Vec::new();
        let mut now = T0;
        for (events, gap, over) in steps {
            for (n, kind, offset, consent) in events {
                let mut e = match kind {
                    0 => view(n, now + offset, &format!("p{}", offset % 7)),
                    1 => event(n, EventKind::AddToCart, now + offset),
                    2 => event(n, EventKind::Purchase, now + offset),
                    3 => event(n, EventKind::Registration, now + offset),
                    _ => event(n, EventKind::PageView, now + offset),
                };
                e.value = Some((offset % 120) as f64);
                e.product_id.get_or_insert_with(|| format!("q{}", offset % 5));
                e.consent.marketing = Some(consent);
                engine.observe(&e, &mut out);
            }
            // Time moves by minutes, an hour, or two days (users are forgotten).
            now += [MIN, 10 * MIN, 60 * MIN, 2 * 86_400_000][gap as usize];
            let end = now.div_euclid(MIN) * MIN;
            judge(&mut engine, end, 3, if over { 90 } else { 30 });
            engine.advance(now, &mut out);
            let changes = engine.take_changes().unwrap();
            let globals = apply(&mut rows, changes);
            proptest::prop_assert_eq!(&restored(&globals, &rows).state, engine.state());
        }
    }
}
