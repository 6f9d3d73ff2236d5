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
        channel: Some("social".into()),
        campaign: Some("saldi".into()),
        device: Some("mobile".into()),
        region: Some("Lombardia".into()),
        consent: Consent {
            analytics: None,
            marketing: Some(true),
        },
        ..StoredEvent::bare(user(n), kind, EventTime(ts))
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
fn a_second_look_at_a_segment_in_its_minute_takes_the_first_s_place_and_sends_the_same() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    let at = T0 + MIN;
    // User 1: two looks in one minute, the later with a product: one intent, the later.
    engine.observe(&view(1, at + 1_000, "p1"), &mut out);
    engine.observe(&view(1, at + 2_000, "p2"), &mut out);
    // User 2: the later look (an add to cart) names no product: both held, the product
    // sent is the earlier's, the kind the later's.
    engine.observe(&view(2, at + 1_000, "p1"), &mut out);
    engine.observe(&event(2, EventKind::AddToCart, at + 2_000), &mut out);
    // User 3: the later look lies in the next minute: both held.
    engine.observe(&view(3, at + 1_000, "p1"), &mut out);
    engine.observe(&view(3, at + MIN, "p2"), &mut out);
    // User 4: the later look is in another segment: both held.
    engine.observe(&view(4, at + 1_000, "p1"), &mut out);
    let mut elsewhere = view(4, at + 2_000, "p2");
    elsewhere.campaign = Some("natale".into());
    engine.observe(&elsewhere, &mut out);
    // User 5: the second look arrives late (earlier in event time): both held.
    engine.observe(&view(5, at + 2_000, "p2"), &mut out);
    engine.observe(&view(5, at + 1_000, "p1"), &mut out);
    let held = |n: u8| engine.state().users[&user(n)].intents.len();
    assert_eq!(
        [held(1), held(2), held(3), held(4), held(5)],
        [1, 2, 2, 2, 2]
    );

    // The minute of the first looks fires: the window ends before user 3's second look.
    let fired = judge(&mut engine, T0 + 2 * MIN, 2, 50);
    let sent: BTreeMap<UserPseudonym, (String, Option<String>, i64)> = fired
        .iter()
        .filter_map(|o| {
            let e = o.event.as_ref()?;
            Some((o.user?, (e.kind.clone(), e.product_id.clone(), e.at_ms)))
        })
        .collect();
    let expected: BTreeMap<_, _> = [
        (
            user(1),
            ("page_view".to_string(), Some("p2".to_string()), at + 2_000),
        ),
        (
            user(2),
            (
                "add_to_cart".to_string(),
                Some("p1".to_string()),
                at + 2_000,
            ),
        ),
        (
            user(3),
            ("page_view".to_string(), Some("p1".to_string()), at + 1_000),
        ),
        (
            user(4),
            ("page_view".to_string(), Some("p1".to_string()), at + 1_000),
        ),
        // The later by position is sent, as it was when every look was held.
        (
            user(5),
            ("page_view".to_string(), Some("p1".to_string()), at + 1_000),
        ),
    ]
    .into();
    assert_eq!(sent, expected);
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

/// The stored state (globals, rows) an engine had before each event.
type StatesBefore = Vec<(Vec<u8>, BTreeMap<u64, Vec<u8>>)>;

/// Feeds `events` to `engine` (judged alike), keeping its stored state before each one
/// (for restores at every point of the stream); `after` sees the engine after each.
fn observe_keeping_states(
    engine: &mut Engine,
    events: &[StoredEvent],
    judged: Judged<'_>,
    out: &mut Vec<Output>,
    mut after: impl FnMut(&Engine),
) -> StatesBefore {
    let mut states = Vec::new();
    let mut rows = BTreeMap::new();
    for e in events {
        let globals = apply(&mut rows, engine.take_changes().unwrap());
        states.push((globals, rows.clone()));
        engine.observe_judged(e, judged, out);
        after(engine);
    }
    states
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
    // Rows keyed in the order users were first seen, then the texts new in the step
    // (channel, campaign, two products).
    assert_eq!(
        changes.users.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [
            0,
            1,
            TEXT_ROWS + 1,
            TEXT_ROWS + 2,
            TEXT_ROWS + 3,
            TEXT_ROWS + 4
        ]
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
    // Only the users a step touched are written, and the texts new since the last step.
    engine.observe(&view(2, T0 + 7 * MIN, "z"), &mut out);
    engine.observe(&view(1, T0 + 7 * MIN, "y"), &mut out);
    let changes = engine.take_changes().unwrap();
    assert_eq!(
        changes.users.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [0, 1, TEXT_ROWS + 5]
    );
    let globals = apply(&mut rows, changes);
    let back = restored(&globals, &rows);
    assert_eq!(&back.state, engine.state());
    // A forgotten user's row goes (a day idle, no cooldown, no cart); its texts stay until
    // the table is compacted.
    let mut engine = Engine::new(triggers(CPA), vec![EventKind::Purchase], back.state);
    engine.advance(T0 + 2 * 86_400_000, &mut out);
    let changes = engine.take_changes().unwrap();
    assert!(
        changes.users.iter().all(|(_, row)| row.is_none()),
        "{changes:?}"
    );
    assert_eq!(changes.users.len(), 2);
    let globals = apply(&mut rows, changes);
    assert!(rows.keys().all(|k| *k >= TEXT_ROWS), "{rows:?}");
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

/// A state stored whole by format 1 (before rows; its user map in pseudonym order, texts
/// as strings) still loads, marked legacy, its texts interned, and every user and text is
/// written as a row at the next take.
#[test]
fn a_format_1_state_loads_and_its_users_are_rewritten_as_rows() {
    use super::legacy::{ActStateV1, IntentV1, UserFactsV1};
    let mut old = ActStateV1::default();
    for n in (0..200u8).rev() {
        old.users.insert(
            user(n),
            UserFactsV1 {
                marketing: true,
                last_seen_ms: T0,
                touch: Some(("social".into(), "saldi".into(), T0)),
                intents: vec![IntentV1 {
                    at_ms: T0,
                    add_to_cart: false,
                    dims: ["social".into(), "saldi".into()],
                    product_id: Some(format!("p{n}")),
                }],
                sent: vec![("cpa_alto".into(), T0)],
                ..UserFactsV1::default()
            },
        );
        old.candidates.insert(user(n), T0);
    }
    old.max_event_ms = Some(T0);
    let mut format_one = vec![1];
    format_one.extend(postcard::to_allocvec(&old).unwrap());
    let back = ActState::decode_stored(&format_one, []).unwrap();
    assert!(back.legacy);
    // Format 1 had no row keys: they are given in pseudonym order.
    let state = &back.state;
    assert_eq!(state.users.len(), 200);
    assert_eq!(state.users[&user(7)].row, 7);
    assert_eq!(state.next_row, 200);
    assert_eq!(state.candidates.users(), 200);
    // Two dimension texts and 200 products, each once.
    assert_eq!(state.texts.len(), 202);
    let facts = &state.users[&user(7)];
    let text = |id: TextId| state.texts.get(id).unwrap();
    assert_eq!(text(facts.intents[0].product_id.get().unwrap()), "p7");
    assert_eq!(text(facts.intents[0].dims[1]), "saldi");
    let (c, k, at) = facts.touch().unwrap();
    assert_eq!((text(c), text(k), at), ("social", "saldi", T0));
    assert_eq!(
        state.trigger_names.name(facts.sent()[0].0),
        Some("cpa_alto")
    );
    let mut engine = Engine::new(triggers(CPA), vec![EventKind::Purchase], back.state);
    engine.mark_all_changed();
    let mut rows = BTreeMap::new();
    let globals = apply(&mut rows, engine.take_changes().unwrap());
    assert_eq!(rows.len(), 200 + 202);
    assert_eq!(globals[0], ACT_STATE_FORMAT);
    let again = restored(&globals, &rows);
    assert!(!again.legacy);
    assert_eq!(&again.state, engine.state());
}

/// Bytes written by the engine of format 2 (globals) and 1 (user rows, texts as strings)
/// for [`golden_events`] judged at minute 6, captured before the texts became ids.
const GOLDEN_V2: &str = include_str!("golden_v2.txt");

/// A state stored in the formats before text ids loads as the state the engine of today
/// builds from the same events, and decides the same afterwards.
#[test]
fn a_state_stored_with_texts_as_strings_loads_and_decides_the_same() {
    let hex = |h: &str| -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut globals = Vec::new();
    let mut rows: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for line in GOLDEN_V2.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts[..] {
            ["GLOBALS", g] => globals = hex(g),
            ["ROW", key, row] => {
                rows.insert(key.parse().unwrap(), hex(row));
            }
            _ => panic!("{line}"),
        }
    }
    assert_eq!((globals[0], rows[&0][0]), (2, 1), "the old formats");
    let back = restored(&globals, &rows);
    assert!(back.legacy);
    // Today's engine on the same events.
    let set = format!("{CPA}{GOLDEN_SET}");
    let mut today = Engine::new(
        triggers(&set),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    for e in golden_events() {
        today.observe(&e, &mut out);
    }
    judge(&mut today, T0 + 6 * MIN, 2, 50);
    let mut loaded = Engine::new(triggers(&set), vec![EventKind::Purchase], back.state);
    // The same facts, whatever ids the texts and triggers were given.
    let readable = |engine: &Engine| {
        let state = engine.state();
        let text = |id: TextId| state.texts.get(id).map(str::to_owned);
        let mut users: Vec<String> = (state.users.iter())
            .map(|(p, f)| {
                let intents: Vec<_> = (f.intents.iter())
                    .map(|i| {
                        (
                            i.at_ms,
                            i.add_to_cart,
                            text(i.dims[0]),
                            text(i.dims[1]),
                            i.product_id.get().map(text),
                        )
                    })
                    .collect();
                let cart: Vec<_> = (f.cart().iter())
                    .map(|l| (l.at_ms, l.product_id.map(text), l.value))
                    .collect();
                let sent: Vec<_> = (f.sent().iter())
                    .map(|(t, at)| (state.trigger_names.name(*t).map(str::to_owned), *at))
                    .collect();
                format!(
                    "{p:?} {} {} {:?} {intents:?} {:?} {:?} {:?} {cart:?} {} {:?} {sent:?} {:?}",
                    f.row,
                    f.marketing,
                    f.touch().map(|(c, k, at)| (text(c), text(k), at)),
                    f.last_conversion_ms,
                    f.last_conversion_kind.map(text),
                    f.last_registration_ms(),
                    f.purchases,
                    f.event_ids(),
                    state.candidates.get(p),
                )
            })
            .collect();
        users.sort();
        (
            users,
            state.segments.clone(),
            state.withheld.clone(),
            state.max_event_ms,
            state.judged_through_ms,
            state.next_row,
        )
    };
    assert_eq!(readable(&loaded), readable(&today));
    // What follows is decided the same: the cart at 5 minutes, the tag's cooldown.
    let mut purchase = event(3, EventKind::Purchase, T0 + 10 * MIN);
    purchase.value = Some(90.0);
    let then = |engine: &mut Engine| {
        let mut out = Vec::new();
        engine.advance(T0 + 6 * MIN, &mut out);
        engine.observe(&view(6, T0 + 7 * MIN, "divano"), &mut out);
        engine.observe(&purchase, &mut out);
        let mut judged = judge(engine, T0 + 8 * MIN, 2, 50);
        out.append(&mut judged);
        out
    };
    let decided = then(&mut today);
    assert!(
        decided.iter().any(|o| o.trigger == 2),
        "the cart: {decided:?}"
    );
    assert_eq!(then(&mut loaded), decided);
    // Written whole in today's formats, it reads back as itself.
    loaded.mark_all_changed();
    let mut rewritten = BTreeMap::new();
    let globals = apply(&mut rewritten, loaded.take_changes().unwrap());
    let again = restored(&globals, &rewritten);
    assert!(!again.legacy);
    assert_eq!(&again.state, loaded.state());
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
    // One a minute: a second look in the same minute would take the first's place.
    for i in 0..1_000 {
        engine.observe(&view(1, T0 + i * MIN, &long), &mut out);
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
                if offset % 3 == 0 {
                    // Direct: a user with only these has no touch.
                    (e.channel, e.campaign) = (None, None);
                }
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
            // A flat copy (a snapshot's) gives the live state's rows, touches and
            // registration times (set only by the engine's own judging) among them.
            let state = engine.state();
            let mut live = Vec::new();
            let mut copied = Vec::new();
            state
                .each_row_by_place(
                    |key, bytes| {
                        live.push((key, bytes.to_vec()));
                        Ok::<(), ActStateError>(())
                    },
                    |e| e,
                )
                .unwrap();
            (state.flat_copy())
                .each_row_by_place(
                    |key, bytes| {
                        copied.push((key, bytes.to_vec()));
                        Ok::<(), ActStateError>(())
                    },
                    |e| e,
                )
                .unwrap();
            proptest::prop_assert_eq!(copied, live);
        }
    }
}

const GOLDEN_SET: &str = r#"
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
"#;

/// The events of the golden state: a view, a cart, a purchase, a direct visit with an id.
fn golden_events() -> Vec<StoredEvent> {
    let mut cart = event(2, EventKind::AddToCart, T0);
    cart.product_id = Some("sedia".into());
    cart.value = Some(30.0);
    let mut purchase = event(3, EventKind::Purchase, T0 + 1);
    purchase.value = Some(80.0);
    let mut direct = view(4, T0 + 2, "lampada");
    direct.channel = None;
    direct.campaign = None;
    direct.event_id = Some("e-1".into());
    let mut refused = view(5, T0 + 3, "tavolo");
    refused.consent.marketing = Some(false);
    vec![view(1, T0, "divano"), cart, purchase, direct, refused]
}

fn numbered(n: u32) -> UserPseudonym {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    UserPseudonym(bytes)
}

/// The text table holds at most [`MAX_TEXTS`]: a text met when it is full is not kept
/// (never read as another text), and the texts of forgotten users are freed and their ids
/// given again, lowest first; every step's rows read back as the state.
#[test]
fn the_text_table_is_bounded_and_frees_the_texts_of_forgotten_users() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    let mut rows = BTreeMap::new();
    // Two dimension texts and a product per user: the last two products are not kept.
    for n in 0..MAX_TEXTS {
        let mut e = view(0, T0 + i64::from(n), &format!("product {n}"));
        e.user = numbered(n);
        engine.observe(&e, &mut out);
    }
    let state = engine.state();
    assert_eq!(state.texts.len(), MAX_TEXTS as usize);
    assert_eq!(state.texts.not_kept(), 2);
    let product = |n: u32| {
        engine.state().users[&numbered(n)].intents[0]
            .product_id
            .get()
            .unwrap()
    };
    assert_eq!(product(MAX_TEXTS - 1), TextId::NOT_KEPT);
    assert_eq!(
        state.texts.get(product(MAX_TEXTS - 3)),
        Some(format!("product {}", MAX_TEXTS - 3).as_str())
    );
    // A segment that fires sends the user whose product was not kept without a product.
    let fired = judge(&mut engine, T0 + 2 * MIN, 2, 50);
    let last = fired
        .iter()
        .find(|o| o.user == Some(numbered(MAX_TEXTS - 1)))
        .unwrap();
    assert_eq!(last.event.as_ref().unwrap().product_id, None);
    let first = fired.iter().find(|o| o.user == Some(numbered(0))).unwrap();
    assert_eq!(last.group, first.group);
    assert_eq!(
        first.event.as_ref().unwrap().product_id.as_deref(),
        Some("product 0")
    );
    let globals = apply(&mut rows, engine.take_changes().unwrap());
    assert_eq!(&restored(&globals, &rows).state, engine.state());
    // A user kept for its cooldown keeps its texts; the others are forgotten a day later
    // and their texts freed at that minute's advance.
    engine.advance(T0 + 2 * 86_400_000, &mut out);
    assert_eq!(engine.users(), 0);
    assert!(engine.state().texts.is_empty());
    let globals = apply(&mut rows, engine.take_changes().unwrap());
    assert!(rows.is_empty(), "every row gone: {}", rows.len());
    // Freed ids are given again, lowest first.
    engine.observe(&view(1, T0 + 3 * 86_400_000, "new"), &mut out);
    let facts = &engine.state().users[&user(1)];
    assert_eq!(facts.touch().map(|t| t.0), Some(TextId(1)));
    assert_eq!(
        engine
            .state()
            .texts
            .get(facts.intents[0].product_id.get().unwrap()),
        Some("new")
    );
    let globals_after = apply(&mut rows, engine.take_changes().unwrap());
    assert_ne!(globals, globals_after);
    assert_eq!(&restored(&globals_after, &rows).state, engine.state());
}

/// A reload keeps the cooldowns of the triggers that stay, and of one that comes back
/// while a user still holds its cooldown; a name nothing refers to any more is let go.
#[test]
fn a_reload_keeps_the_cooldowns_of_the_triggers_that_stay() {
    let tags = |names: &[&str]| {
        let set: String = (names.iter())
            .map(|n| {
                format!(
                    "[[triggers]]\nname = \"{n}\"\nkind = \"tag\"\ntag = \"{n}\"\non = \"purchase_over\"\nmin_value = 1\ncooldown = \"1h\"\nnotify = [\"push\"]\n"
                )
            })
            .collect();
        triggers(&set)
    };
    let mut engine = Engine::new(
        tags(&["a", "b", "c"]),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    let mut purchase = event(1, EventKind::Purchase, T0);
    purchase.value = Some(10.0);
    engine.observe(&purchase, &mut out);
    assert_eq!(out.len(), 3);
    // "b" goes, "d" comes: "a" and "c" keep their cooldowns; "b"'s name stays while user 1
    // refers to it.
    engine.set_triggers(tags(&["d", "c", "a"]));
    out.clear();
    purchase.ts = EventTime(T0 + MIN);
    engine.observe(&purchase, &mut out);
    let sent: Vec<&str> = out
        .iter()
        .map(|o| engine.triggers()[o.trigger].name.as_str())
        .collect();
    assert_eq!(sent, ["d"]);
    assert!(engine.state().trigger_names.find("b").is_some());
    // "b" back within its cooldown: not sent again.
    engine.set_triggers(tags(&["b"]));
    out.clear();
    purchase.ts = EventTime(T0 + 2 * MIN);
    engine.observe(&purchase, &mut out);
    assert!(out.is_empty(), "{out:?}");
    // Once user 1 is forgotten, names of triggers gone are let go at the next reload.
    engine.advance(T0 + 3 * 86_400_000, &mut out);
    assert_eq!(engine.users(), 0);
    engine.set_triggers(tags(&["e"]));
    let names = &engine.state().trigger_names;
    assert_eq!(
        (names.find("a"), names.find("b"), names.find("e")),
        (None, None, Some(TriggerId(0)))
    );
}

/// Stage 1 of the plan for the 10 % target (docs/triggers.md): a one-event user's stored
/// row is about 50 bytes (177 with its texts as strings), and the per-user facts in
/// memory hold no text.
#[test]
fn a_one_event_user_s_row_is_tens_of_bytes() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    let mut e = view(1, T0, "divano-letto-matrimoniale-grigio");
    e.campaign = Some("saldi-invernali-2026-retargeting".into());
    e.event_id = Some("0b9c7a1e-52f4-4d1f-9a55-3f0a8e2f7c11".into());
    engine.observe(&e, &mut out);
    let changes = engine.take_changes().unwrap();
    let row = &changes.users[0];
    assert_eq!(row.0, 0);
    let bytes = row.1.as_ref().unwrap().len();
    // The same facts in the row format before (texts as strings).
    let facts = &engine.state().users[&user(1)];
    let texts = &engine.state().texts;
    let text = |id: TextId| texts.get(id).unwrap().to_owned();
    let (c, k, at) = facts.touch().unwrap();
    let intent = &facts.intents[0];
    let before = super::legacy::UserFactsV1 {
        marketing: facts.marketing,
        last_seen_ms: facts.last_seen_ms,
        touch: Some((text(c), text(k), at)),
        intents: vec![super::legacy::IntentV1 {
            at_ms: intent.at_ms,
            add_to_cart: intent.add_to_cart,
            dims: [text(intent.dims[0]), text(intent.dims[1])],
            product_id: intent.product_id.get().map(text),
        }],
        event_ids: facts.event_ids().to_vec(),
        ..Default::default()
    };
    let candidate = engine.state().candidates.get(&user(1));
    let before = 1 + postcard::to_allocvec(&(user(1), before, candidate))
        .unwrap()
        .len();
    eprintln!("a one-event user's row: {bytes} bytes (format 1: {before})");
    assert!(bytes <= 56, "{bytes} bytes");
    assert!(before >= 3 * bytes, "{before} bytes before");
    assert!(
        facts.approximate_bytes() <= 256,
        "{}",
        facts.approximate_bytes()
    );
}

/// Regression: a compaction that found the full table all referenced reset its count of
/// new texts, and a full table takes no new text, so the count never grew again: once
/// those users were forgotten their texts were never freed and every new text was refused
/// for good (a product left out of every push, an intent in no segment).
#[test]
fn a_full_table_whose_texts_all_stood_at_a_compaction_frees_them_once_they_are_let_go() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    for n in 0..MAX_TEXTS {
        let mut e = view(0, T0 + i64::from(n), &format!("product {n}"));
        e.user = numbered(n);
        engine.observe(&e, &mut out);
    }
    assert_eq!(engine.state().texts.len(), MAX_TEXTS as usize);
    // Compacted while every text is referenced: nothing freed.
    engine.advance(T0 + 2 * MIN, &mut out);
    assert_eq!(engine.state().texts.len(), MAX_TEXTS as usize);
    assert_eq!(engine.users(), MAX_TEXTS as usize);
    // A day later every user is forgotten: nothing refers to the texts any more.
    engine.advance(T0 + 2 * 86_400_000, &mut out);
    assert_eq!(engine.users(), 0);
    // New users keep coming, each with a new product, minute after minute.
    let mut kept = 0;
    for n in 0..MAX_TEXTS / 8 {
        let at = T0 + 3 * 86_400_000 + i64::from(n) * 100;
        let mut e = view(0, at, &format!("new {n}"));
        e.user = numbered(n);
        engine.observe(&e, &mut out);
        engine.advance(at, &mut out);
        if engine.state().users[&numbered(n)].intents[0]
            .product_id
            .get()
            != Some(TextId::NOT_KEPT)
        {
            kept += 1;
        }
    }
    assert!(
        kept > MAX_TEXTS / 16,
        "{kept} of {} new products kept",
        MAX_TEXTS / 8
    );
}

/// Regression: stored rows that break the row keys' invariants were read without a word,
/// and the engine then gave a new user the key of a stored one (one row for two users:
/// whichever was written last was the only one back after a restart). A user's row key is
/// below the stored next key, which is below the texts' keys, and a pseudonym has one row.
#[test]
fn stored_user_rows_that_could_meet_another_s_key_are_refused() {
    let engine_with = |users: &[u8]| {
        let mut engine = Engine::new(
            triggers(CPA),
            vec![EventKind::Purchase],
            ActState::default(),
        );
        let mut out = Vec::new();
        for n in users {
            engine.observe(&view(*n, T0, "x"), &mut out);
        }
        let mut rows = BTreeMap::new();
        let globals = apply(&mut rows, engine.take_changes().unwrap());
        (globals, rows)
    };
    let (one_user, _) = engine_with(&[1]);
    let (_, two_rows) = engine_with(&[1, 2]);
    let body_error = |globals: &[u8], rows: &BTreeMap<u64, Vec<u8>>| match ActState::decode_stored(
        globals,
        rows.iter().map(|(k, r)| (*k, r.as_slice())),
    ) {
        Err(ActStateError::Body(message)) => message,
        other => panic!("{other:?}"),
    };
    // A user's row at or past the next key: the next new user would be given it.
    let message = body_error(&one_user, &two_rows);
    assert!(message.contains("row key 1"), "{message}");
    // Without the stray row the state reads and the next user gets key 1.
    let mut fine = two_rows;
    fine.remove(&1);
    let back = restored(&one_user, &fine);
    let mut engine = Engine::new(triggers(CPA), vec![EventKind::Purchase], back.state);
    engine.observe(&view(3, T0, "x"), &mut Vec::new());
    assert_eq!(engine.state().users[&user(3)].row, 1);
    // One pseudonym in two rows.
    let mut twice = fine.clone();
    twice.insert(7, fine[&0].clone());
    let (globals, _) = engine_with(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let message = body_error(&globals, &twice);
    assert!(message.contains("two rows"), "{message}");
    // A next key among the texts' keys: the next user's row would be read as a text.
    let far = ActState {
        next_row: TEXT_ROWS,
        ..ActState::default()
    };
    let message = body_error(&far.encode_globals().unwrap(), &BTreeMap::new());
    assert!(message.contains("next row key"), "{message}");
}

/// Regression (fuzz target `trigger_stage`): a snapshot section listing two users under one
/// row key restored, and the state then encoded its rows in the user map's order, so equal
/// states gave other bytes. Rows must come in key order, each key once.
#[test]
fn rows_under_one_key_or_out_of_order_are_refused() {
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    for n in [1, 2] {
        engine.observe(&view(n, T0, "x"), &mut Vec::new());
    }
    let (globals, rows) = engine.state().encode_whole().unwrap();
    let users: Vec<&[u8]> = (rows.iter())
        .filter(|(key, _)| *key < TEXT_ROWS)
        .map(|(_, row)| row.as_slice())
        .collect();
    assert_eq!(users.len(), 2);
    let texts = rows.iter().filter(|(key, _)| *key >= TEXT_ROWS);
    let with = |users: Vec<(u64, &[u8])>| {
        let all: Vec<(u64, &[u8])> = users
            .into_iter()
            .chain(texts.clone().map(|(k, r)| (*k, r.as_slice())))
            .collect();
        ActState::decode_stored(&globals, all)
    };
    assert!(with(vec![(0, users[0]), (1, users[1])]).is_ok());
    for bad in [
        vec![(0, users[0]), (0, users[1])],
        vec![(1, users[1]), (0, users[0])],
    ] {
        match with(bad) {
            Err(ActStateError::Body(message)) => {
                assert!(message.contains("key order"), "{message}")
            }
            other => panic!("{:?}", other.map(|s| s.state.users.len())),
        }
    }
}

/// Regression: a channel or campaign longer than [`MAX_TEXT_BYTES`] was kept cut, so its
/// users were never selected when its segment fired (the KPI groups hold it whole), and
/// were selected, as that segment, when the segment of a campaign spelled like its cut
/// fired. Each is now selected in its own segment only, and named whole.
#[test]
fn a_long_campaign_s_users_are_selected_in_its_own_segment_only() {
    let long = "saldi-invernali-".repeat(12); // 192 bytes
    let cut = clipped(&long).to_owned(); // another campaign: the long one's first 128 bytes
    assert_eq!(cut.len(), MAX_TEXT_BYTES);
    let mut engine = Engine::new(
        triggers(CPA),
        vec![EventKind::Purchase],
        ActState::default(),
    );
    let mut out = Vec::new();
    let mut a = view(1, T0 + MIN, "divano");
    a.campaign = Some(long.clone());
    engine.observe(&a, &mut out);
    let mut b = view(2, T0 + MIN, "sedia");
    b.campaign = Some(cut.clone());
    engine.observe(&b, &mut out);
    let judge_one = |engine: &mut Engine, minute_end: i64, campaign: &str| {
        let mut out = Vec::new();
        let group = vec!["social".to_string(), campaign.to_string()];
        engine.judge_minute(
            minute_end,
            &mut |_| [(group.clone(), totals(2, 50))].into(),
            &mut out,
        );
        out.retain(|o| o.user.is_some());
        out.iter()
            .map(|o| (o.user.unwrap(), o.group[1].1.clone()))
            .collect::<Vec<_>>()
    };
    // The long campaign fires: its user, named by the whole campaign.
    assert_eq!(
        judge_one(&mut engine, T0 + 3 * MIN, &long),
        [(user(1), long.clone())]
    );
    // The other campaign fires (the long one recovers): its user only.
    assert_eq!(
        judge_one(&mut engine, T0 + 4 * MIN, &cut),
        [(user(2), cut.clone())]
    );
}

/// Regression: times at the integers' edges in a stored row (corrupt bytes; events are
/// refused at intake long before) overflowed when an event was compared with them (a
/// panic in a debug build, a wrapped difference in release).
#[test]
fn a_stored_row_with_times_at_the_edges_does_not_overflow() {
    let mut state = ActState::default();
    state.texts.put(1, "social").unwrap();
    state.texts.put(2, "saldi").unwrap();
    state.texts.put(3, "purchase").unwrap();
    for (n, edge) in [(1, i64::MIN), (2, i64::MAX)] {
        state.users.insert(
            user(n),
            UserFacts::from(FactsFields {
                row: u64::from(n),
                marketing: true,
                last_seen_ms: T0,
                touch: Some((TextId(1), TextId(2), edge)),
                last_conversion_ms: Some(edge),
                last_conversion_kind: Some(TextId(3)),
                last_registration_ms: Some(edge),
                ..FactsFields::default()
            }),
        );
    }
    state.next_row = 3;
    let mut engine = Engine::new(triggers(CPA), vec![EventKind::Purchase], state);
    let mut out = Vec::new();
    for n in [1, 2] {
        let mut direct = view(n, T0 + MIN, "x");
        direct.channel = None;
        direct.campaign = None;
        engine.observe(&direct, &mut out);
        engine.observe(&event(n, EventKind::Purchase, T0 + 2 * MIN), &mut out);
    }
    // The purchase after a registration at the far past is a conversion.
    assert_eq!(
        engine.state().users[&user(1)].last_conversion_ms,
        Some(T0 + 2 * MIN)
    );
}

/// The hints the engine leaves on the pipeline's users find the users it makes (they are
/// not in its map); a hint whose place another user took, or another engine's "not held",
/// is not trusted; a user whose hint the pipeline lets go of, or could not keep, is found
/// by its pseudonym from then on. A visit that can select no one brings only its consent:
/// taken in for a held user (the hint then carries it), never keeping the user longer.
#[test]
fn hints_find_users_and_stale_or_foreign_hints_are_not_trusted() {
    let new_engine = || {
        Engine::new(
            triggers(CPA),
            vec![EventKind::Purchase],
            ActState::default(),
        )
        .with_pipeline_verdicts()
        .without_change_tracking()
    };
    let judged = |hint| Judged {
        ignored: false,
        flagged: false,
        counted: None,
        hint,
    };
    // No product: no intent. Consent as given.
    let visit = |n, ts, marketing| {
        let mut e = event(n, EventKind::PageView, ts);
        e.consent.marketing = marketing;
        e
    };
    let marketing = |engine: &Engine, n| engine.state().users[&user(n)].marketing;
    let mut engine = new_engine();
    let mut out = Vec::new();
    let h1 = engine.observe_judged(&view(1, T0, "a"), judged(0), &mut out);
    let h2 = engine.observe_judged(&view(2, T0 + 30 * MIN, "b"), judged(0), &mut out);
    assert!(h1 != 0 && h2 != 0 && h1 != h2, "{h1} {h2}");
    assert_eq!(
        engine.state().users.indexed(),
        0,
        "found by their hints only"
    );
    // With its hint, user 2's visit is taken in: a withdrawal of consent is kept (and the
    // hint changes with it), a visit bringing the consent held, or none, changes nothing;
    // no visit keeps the user longer than its intent does.
    let withdrawn =
        engine.observe_judged(&visit(2, T0 + 31 * MIN, Some(false)), judged(h2), &mut out);
    assert_ne!(withdrawn, h2);
    assert!(!marketing(&engine, 2));
    for consent in [Some(false), None] {
        let h = engine.observe_judged(
            &visit(2, T0 + 32 * MIN, consent),
            judged(withdrawn),
            &mut out,
        );
        assert_eq!(h, withdrawn);
    }
    let h = engine.observe_judged(
        &visit(2, T0 + 33 * MIN, Some(true)),
        judged(withdrawn),
        &mut out,
    );
    assert_eq!(h, h2);
    assert!(marketing(&engine, 2));
    assert_eq!(engine.state().users[&user(2)].last_seen_ms, T0 + 30 * MIN);
    // Without a hint, the visit does not find user 2: it is in no map.
    let unknown = engine.observe_judged(&visit(2, T0 + 33 * MIN, Some(false)), judged(0), &mut out);
    assert_eq!(unknown % 2, 1);
    assert!(marketing(&engine, 2));
    // User 1 is forgotten (idle past the 10-minute horizon); its hint finds no one, and a
    // new user takes its place.
    engine.advance(T0 + 25 * MIN, &mut out);
    assert!(!engine.state().users.contains_key(&user(1)));
    let not_held =
        engine.observe_judged(&visit(1, T0 + 26 * MIN, Some(false)), judged(h1), &mut out);
    assert_eq!(not_held, unknown, "this engine's \"not held\"");
    let h3 = engine.observe_judged(&view(3, T0 + 32 * MIN, "c"), judged(0), &mut out);
    assert_eq!(h3, h1, "user 3 where user 1 was");
    // User 1's old hint points at user 3's facts: not used. User 1 is not held, so its
    // visit leaves nothing (user 3 untouched), whether it brings user 3's consent or not.
    for consent in [Some(true), Some(false)] {
        let h = engine.observe_judged(&visit(1, T0 + 33 * MIN, consent), judged(h1), &mut out);
        assert!(h == h1 || h == not_held, "{h}");
        assert!(!engine.state().users.contains_key(&user(1)));
        assert!(marketing(&engine, 3));
    }
    // The pipeline lets go of user 2 (its session over): found by pseudonym after.
    engine.pipeline_let_go(&[(user(2), h2), (user(9), h3)]);
    assert_eq!(engine.state().users.indexed(), 1, "user 9 is not user 3");
    let h = engine.observe_judged(&visit(2, T0 + 34 * MIN, Some(false)), judged(0), &mut out);
    assert_eq!(h, withdrawn);
    assert!(!marketing(&engine, 2));
    // A hint the pipeline could not keep: the same.
    let h4 = engine.observe_judged(&view(4, T0 + 34 * MIN, "d"), judged(0), &mut out);
    engine.hint_not_kept(&user(4), h4);
    let h = engine.observe_judged(&visit(4, T0 + 35 * MIN, Some(false)), judged(0), &mut out);
    assert_ne!(h % 2, 1);
    assert!(!marketing(&engine, 4));
    assert_eq!(engine.state().users[&user(4)].last_seen_ms, T0 + 34 * MIN);
    // Another engine does not take this one's "not held" for its own: it holds user 1
    // on an intent, once.
    let mut other = new_engine();
    other.observe_judged(&view(3, T0, "c"), judged(0), &mut out);
    let h = other.observe_judged(&view(1, T0 + MIN, "d"), judged(not_held), &mut out);
    assert_eq!(h % 2, 0);
    let again = other.observe_judged(&view(1, T0 + 2 * MIN, "d"), judged(h), &mut out);
    assert_eq!(again, h);
    assert_eq!(other.users(), 2);
    assert_eq!(other.state().users[&user(1)].intents.len(), 2);
    // This engine's own "not held" drops a visit without a lookup, as it should: user 1 is
    // still not held here.
    let h = engine.observe_judged(
        &visit(1, T0 + 36 * MIN, Some(false)),
        judged(not_held),
        &mut out,
    );
    assert_eq!(h, not_held);
    assert_eq!(engine.users(), 3);
    assert!(out.is_empty(), "{out:?}");
}

/// A visit that can select no one does not keep a user: the user is let go the horizon
/// after its last intent, however much it browses after it, with its hint or without.
#[test]
fn visits_without_intent_do_not_keep_a_user() {
    for hinted in [true, false] {
        let mut engine = Engine::new(
            triggers(CPA),
            vec![EventKind::Purchase],
            ActState::default(),
        )
        .with_pipeline_verdicts()
        .without_change_tracking();
        let judged = |hint| Judged {
            ignored: false,
            flagged: false,
            counted: None,
            hint,
        };
        let mut out = Vec::new();
        let hint = engine.observe_judged(&view(1, T0, "a"), judged(0), &mut out);
        if !hinted {
            engine.pipeline_let_go(&[(user(1), hint)]);
        }
        // The hint the pipeline keeps: the one given back each time.
        let mut given = if hinted { hint } else { 0 };
        for minute in 1..=20 {
            let mut visit = event(1, EventKind::PageView, T0 + minute * MIN);
            visit.consent.marketing = Some(minute % 2 == 0);
            let back = engine.observe_judged(&visit, judged(given), &mut out);
            if hinted {
                given = back;
            }
            if minute < 10 {
                let held = &engine.state().users[&user(1)];
                assert_eq!(held.marketing, minute % 2 == 0, "hinted {hinted}");
                assert_eq!(held.last_seen_ms, T0);
            }
            engine.advance(T0 + minute * MIN, &mut out);
        }
        assert!(
            !engine.state().users.contains_key(&user(1)),
            "hinted {hinted}: let go the horizon after the intent"
        );
    }
}

/// Past the bound on users held, at the next new user, the users waiting only for a segment
/// to fire go, whole minutes of last events at a time, oldest first; a user with a cart
/// stays. The table never holds more than the bound while someone can go, and an engine
/// restored at any point of the stream (its users listed in another order) lets the same
/// users go as the one it replaces.
#[test]
fn past_the_bound_the_oldest_users_with_only_intents_are_let_go() {
    let set = format!(
        "{CPA}\n[[triggers]]\nname = \"carrello\"\nkind = \"abandoned_cart\"\nafter = \"30m\"\nnotify = [\"push\"]\n"
    );
    let make = |state| {
        Engine::new(triggers(&set), vec![EventKind::Purchase], state)
            .with_pipeline_verdicts()
            .with_max_users(3)
    };
    let judged = Judged {
        ignored: false,
        flagged: false,
        counted: None,
        hint: 0,
    };
    let mut cart = event(1, EventKind::AddToCart, T0);
    cart.product_id = Some("p1".into());
    let events = [
        cart,
        view(2, T0 + 1_000, "a"),
        view(4, T0 + MIN, "b"),
        view(3, T0 + MIN + 1_000, "c"),
        view(5, T0 + 2 * MIN, "d"),
        view(6, T0 + 2 * MIN + 1_000, "e"),
    ];
    let mut engine = make(ActState::default());
    let mut out = Vec::new();
    let mut most = 0;
    let states = observe_keeping_states(&mut engine, &events, judged, &mut out, |engine| {
        most = most.max(engine.users());
    });
    assert_eq!(most, 3, "the bound held at every new user");
    // User 3 found the table full: minute 0 went but user 1 (a cart). User 5 found it
    // full again: minute 1 (users 3 and 4) went. User 6 fitted.
    let mut held: Vec<u8> = engine.state().users.keys().map(|u| u.0[0]).collect();
    held.sort_unstable();
    assert_eq!(held, [1, 5, 6]);
    assert_eq!(engine.evicted_users(), 3);
    assert_eq!(
        engine.state().candidates.users(),
        3,
        "the evicted are not candidates"
    );
    for (k, (globals, rows)) in states.iter().enumerate() {
        let mut again = make(restored(globals, rows).state);
        let mut again_out = Vec::new();
        for e in &events[k..] {
            again.observe_judged(e, judged, &mut again_out);
        }
        assert_eq!(engine.state(), again.state(), "restored after {k} events");
        assert!(again_out.is_empty(), "{again_out:?}");
    }
    // At a minute's advance the bound holds too, and nothing more goes.
    engine.advance(T0 + 4 * MIN, &mut out);
    assert_eq!(engine.users(), 3);
    assert!(out.is_empty(), "{out:?}");
}

/// An engine with one abandoned-cart trigger, on the pipeline's verdicts, holding at most
/// three users; and a clean verdict.
fn cart_engine_of_three() -> (Engine, Judged<'static>) {
    let set = "[[triggers]]\nname = \"carrello\"\nkind = \"abandoned_cart\"\nafter = \"30m\"\nnotify = [\"push\"]\n";
    let engine = Engine::new(
        triggers(set),
        vec![EventKind::Purchase],
        ActState::default(),
    )
    .with_pipeline_verdicts()
    .with_max_users(3);
    let judged = Judged {
        ignored: false,
        flagged: false,
        counted: None,
        hint: 0,
    };
    (engine, judged)
}

/// User `n`'s add to cart of product "p`n`", `n` seconds after `T0`.
fn cart_of(n: u8) -> StoredEvent {
    let mut cart = event(n, EventKind::AddToCart, T0 + i64::from(n) * 1_000);
    cart.product_id = Some(format!("p{n}"));
    cart
}

/// When every held user has a cart (nothing can go), the table grows past its bound rather
/// than lose a cart's push: every cart is sent after its delay.
#[test]
fn users_with_carts_are_kept_past_the_bound() {
    let (mut engine, judged) = cart_engine_of_three();
    let mut out = Vec::new();
    for n in 1..=5 {
        engine.observe_judged(&cart_of(n), judged, &mut out);
    }
    assert_eq!(engine.users(), 5);
    assert_eq!(engine.evicted_users(), 0);
    // The carts are sent after their delay and let go; the users stay for the cooldown.
    engine.advance(T0 + 32 * MIN, &mut out);
    assert_eq!(out.len(), 5, "{out:?}");
}

/// At the bound a user is kept for its cart, and let go once a purchase emptied it: what
/// keeps a user is read from the facts' own flag (checked against the box in debug
/// builds), set by a cart line and cleared with the cart.
#[test]
fn a_user_whose_cart_a_purchase_emptied_is_let_go_at_the_bound() {
    let (mut engine, judged) = cart_engine_of_three();
    let mut out = Vec::new();
    for n in 1..=2 {
        engine.observe_judged(&cart_of(n), judged, &mut out);
    }
    engine.observe_judged(&event(1, EventKind::Purchase, T0 + 5_000), judged, &mut out);
    assert!(
        engine
            .state()
            .users
            .lookup(&user(1))
            .unwrap()
            .cart()
            .is_empty()
    );
    for n in 3..=5 {
        engine.observe_judged(
            &view(n, T0 + MIN + i64::from(n) * 1_000, "p"),
            judged,
            &mut out,
        );
    }
    let held = |n: u8| engine.state().users.lookup(&user(n)).is_some();
    assert!(!held(1), "its cart emptied, nothing keeps it");
    assert!(held(2), "kept for its cart");
    assert!(
        !held(3) && !held(4),
        "the next minute's users, let go whole"
    );
    assert!(held(5));
    assert_eq!(engine.evicted_users(), 3);
    assert_eq!(engine.users(), 2);
}

/// A user the walk at the bound kept for its cart (and so does not walk again) is let go
/// at the next letting-go once a late purchase emptied its cart (the minute of its last
/// event unchanged), before the next minute's users: as an engine restored at any point
/// (which lists every user afresh) lets it go.
#[test]
fn a_user_kept_at_the_bound_is_let_go_once_a_late_purchase_empties_its_cart() {
    let (mut engine, judged) = cart_engine_of_three();
    let mut out = Vec::new();
    let mut events = Vec::new();
    for n in 1..=2 {
        events.push(cart_of(n));
    }
    events.push(view(3, T0 + MIN + 3_000, "p"));
    // The table is full: minute 0 keeps users 1 and 2 (carts), minute 1 lets 3 go.
    events.push(view(4, T0 + MIN + 4_000, "p"));
    // Late: user 1's last event stays in minute 0, its cart empties.
    events.push(event(1, EventKind::Purchase, T0 + 5_000));
    // Full again: user 1 goes (minute 0), which is room enough; user 4 stays.
    events.push(view(5, T0 + MIN + 6_000, "p"));
    let states = observe_keeping_states(&mut engine, &events, judged, &mut out, |_| {});
    let mut held: Vec<u8> = engine.state().users.keys().map(|u| u.0[0]).collect();
    held.sort_unstable();
    assert_eq!(held, [2, 4, 5]);
    assert_eq!(engine.evicted_users(), 2);
    for (k, (globals, rows)) in states.iter().enumerate() {
        let mut again = Engine::new(
            engine.triggers().to_vec(),
            vec![EventKind::Purchase],
            restored(globals, rows).state,
        )
        .with_pipeline_verdicts()
        .with_max_users(3);
        for e in &events[k..] {
            again.observe_judged(e, judged, &mut Vec::new());
        }
        assert_eq!(engine.state(), again.state(), "restored after {k} events");
    }
}

/// Letting go at the bound moves a walked minute's list, its kept users first, to the
/// kept users' lists: no list made and copied into (fresh memory at every letting-go).
#[test]
fn the_users_kept_at_the_bound_keep_their_minute_s_list() {
    let (mut engine, judged) = cart_engine_of_three();
    let mut out = Vec::new();
    for n in 1..=2 {
        engine.observe_judged(&cart_of(n), judged, &mut out);
    }
    engine.observe_judged(&view(3, T0 + 3_000, "p"), judged, &mut out);
    let (&minute, list) = engine.sweep.idle.first_key_value().unwrap();
    let memory = list.as_ptr();
    // The table is full: minute 0 keeps users 1 and 2 (carts) and lets 3 go.
    engine.observe_judged(&view(4, T0 + MIN, "p"), judged, &mut out);
    assert_eq!(engine.evicted_users(), 1);
    assert!(!engine.sweep.idle.contains_key(&minute));
    let kept = &engine.sweep.idle_kept[&minute];
    let users: Vec<u8> = kept.iter().map(|r| r.user.0[0]).collect();
    assert_eq!(users, [1, 2]);
    assert_eq!(kept.as_ptr(), memory, "the walked list itself, not a copy");
}

/// The facts few users have sit in a box made when first needed and let go when emptied;
/// the serde form is field by field as before the box (an empty box encodes as none).
#[test]
fn facts_few_users_have_are_boxed_only_while_held() {
    let mut facts = UserFacts::default();
    assert!(facts.more.is_none());
    facts.more_mut().cart.push(CartLine {
        at_ms: T0,
        product_id: None,
        value: Some(12.5),
    });
    assert_eq!(facts.cart().len(), 1);
    let _ = facts.change_more(|m| m.cart.clear()); // (the kept flag: not this test's)
    assert!(facts.more.is_none(), "an emptied box is let go");
    let mut boxed = UserFacts::default();
    boxed.more_mut();
    assert_eq!(facts, boxed);
    assert_eq!(
        postcard::to_allocvec(&facts).unwrap(),
        postcard::to_allocvec(&boxed).unwrap()
    );
    let fields = FactsFields {
        marketing: true,
        last_seen_ms: T0,
        touch: Some((TextId(1), TextId(2), T0 - 5)),
        intents: Intents::new(),
        last_conversion_ms: Some(T0 - 1),
        last_conversion_kind: Some(TextId(3)),
        last_registration_ms: Some(T0 - 9),
        cart: [CartLine {
            at_ms: T0 - 3,
            product_id: Some(TextId(4)),
            value: None,
        }]
        .into_iter()
        .collect(),
        purchases: 2,
        event_ids: vec![7, 8],
        sent: vec![(TriggerId(1), T0 - 2)],
        row: 0,
    };
    let full = UserFacts::from(fields.clone());
    let bytes = postcard::to_allocvec(&full).unwrap();
    assert_eq!(bytes, postcard::to_allocvec(&fields).unwrap());
    let back: UserFacts = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, full);
    assert_eq!(back.touch(), fields.touch);
    assert_eq!(back.last_registration_ms(), Some(T0 - 9));
    assert_eq!(back.event_ids(), &[7, 8]);
    assert_eq!(back.sent(), &[(TriggerId(1), T0 - 2)]);
    assert_eq!(back.cart(), &fields.cart[..]);
}

/// The sweeps' per-minute lists are kept with their memory once emptied, at most
/// `SPARE_LISTS` of them, and a new minute's list starts from one: no list is grown from
/// nothing and freed every minute. The decisions are those of fresh lists.
#[test]
fn emptied_sweep_lists_are_kept_for_later_minutes() {
    let t = triggers(
        "[[triggers]]\nname = \"carrello\"\nkind = \"abandoned_cart\"\nafter = \"2m\"\nnotify = [\"push\"]\n",
    );
    let mut engine = Engine::new(t, vec![EventKind::Purchase], ActState::default());
    let mut out = Vec::new();
    for minute in 0..20u8 {
        let at = T0 + i64::from(minute) * MIN;
        for n in 0..5u8 {
            let mut cart = event(minute * 5 + n, EventKind::AddToCart, at);
            cart.product_id = Some(format!("p{n}"));
            engine.observe(&cart, &mut out);
        }
        engine.advance(at, &mut out);
        assert!(engine.sweep.spare.len() <= SPARE_LISTS);
    }
    assert!(!engine.sweep.spare.is_empty(), "emptied lists are kept");
    assert!(
        engine
            .sweep
            .spare
            .iter()
            .all(|l| l.is_empty() && l.capacity() > 0)
    );
    // A new minute's list starts from a spare one (with room already).
    let spare = engine.sweep.spare.len();
    let mut late = event(200, EventKind::AddToCart, T0 + 40 * MIN);
    late.product_id = Some("p9".into());
    engine.observe(&late, &mut out);
    assert!(engine.sweep.spare.len() < spare);
    // Every cart was sent once, two minutes after it (the last two minutes' not yet).
    let sent: BTreeSet<_> = (out.iter()).filter_map(|o| o.user).collect();
    assert_eq!(out.len(), sent.len());
    assert_eq!(sent.len(), 18 * 5);
}

/// A new minute's idle list has room for the last minute's users and more before it
/// grows (growing, it was copied into fresh memory), and takes a spare list when one has
/// that room; a list of an earlier minute takes a small one.
#[test]
fn a_new_minute_s_idle_list_is_sized_from_the_last_minute_s() {
    let mut sweep = Sweep::default();
    let listed = |n: u32| user_ref(numbered(n), n as usize);
    for n in 0..1_000 {
        sweep.idle_at(0).push(listed(n));
    }
    let room = sweep.idle_at(MIN).capacity();
    assert!(
        room >= 1_125,
        "room for 1,000 users and an eighth more: {room}"
    );
    for n in 0..1_400 {
        sweep.idle_at(MIN).push(listed(n));
    }
    assert_eq!(
        sweep.idle[&MIN].capacity(),
        room,
        "no growth below the room made"
    );
    // The first minute's list, given back, is too small for the next minute: not taken.
    let first = sweep.idle.remove(&0).unwrap();
    let first_room = first.capacity();
    sweep.give_back(first);
    assert!(sweep.idle_at(2 * MIN).capacity() >= 1_575);
    assert_eq!(sweep.spare.len(), 1, "the small spare stays");
    // A late minute's list takes the small spare.
    assert_eq!(sweep.idle_at(-MIN).capacity(), first_room);
    assert!(sweep.spare.is_empty());
    // The second minute's list, given back, has room for the third minute's: taken.
    let second = sweep.idle.remove(&MIN).unwrap();
    let second_ptr = second.as_ptr();
    sweep.give_back(second);
    for n in 0..1_300 {
        sweep.idle_at(2 * MIN).push(listed(n));
    }
    assert_eq!(sweep.idle_at(3 * MIN).as_ptr(), second_ptr);
}

/// A hint names a place and the consent held there, both read back as written; a place
/// past what a hint can name gives the "nothing known" hint, and none of the hints that
/// name no place (nothing known, "not held", the unused 2) reads as a place.
#[test]
fn a_hint_reads_back_its_place_and_consent() {
    let last = (u32::MAX / 4 - 1) as usize;
    for at in [0, 1, 2, 1_000, 4_000_000, last] {
        for marketing in [false, true] {
            let hint = UserHint::of_position(at, marketing);
            assert_eq!(UserHint::position(hint), Some(at), "{at} {marketing}");
            assert_eq!(UserHint::marketing(hint), Some(marketing), "{at}");
        }
    }
    assert_eq!(UserHint::of_position(last + 1, true), UserHint::UNKNOWN);
    assert_eq!(UserHint::of_position(usize::MAX, false), UserHint::UNKNOWN);
    for hint in [UserHint::UNKNOWN, 1, 2, 3, next_not_held_hint()] {
        assert_eq!(UserHint::position(hint), None, "{hint}");
        assert_eq!(UserHint::marketing(hint), None, "{hint}");
    }
}
