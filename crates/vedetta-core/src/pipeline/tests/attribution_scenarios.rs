//! Attribution and order dedup, hand-computed (docs/semantics.md, "Attribution" and
//! "Duplicates"), and the arrival-order property with realistic tagging under every model.

use super::*;

const DAY: i64 = 86_400_000;

/// An event tagged as a landing hit would be, or untagged (`None`): direct.
fn hit(user_n: u8, kind: EventKind, ts: i64, touch: Option<(&str, &str)>) -> StoredEvent {
    let mut e = event(user_n, kind, ts);
    e.channel = touch.map(|(channel, _)| channel.into());
    e.campaign = touch.map(|(_, campaign)| campaign.into());
    e
}

fn buy(user_n: u8, ts: i64, value: f64, order: &str) -> StoredEvent {
    let mut e = hit(user_n, EventKind::Purchase, ts, None);
    e.value = Some(value);
    e.order_id = Some(order.into());
    e
}

fn config(model: AttributionModel) -> PipelineConfig {
    PipelineConfig {
        attribution: model,
        ..PipelineConfig::default()
    }
}

impl Run {
    fn send(&mut self, events: impl IntoIterator<Item = StoredEvent>) {
        for e in events {
            self.feed(LogRecord::Event(e));
        }
    }

    /// Day totals of one counter by channel and campaign (every other dimension summed).
    fn by_touch(&self, counter: impl Fn(&KpiCounters) -> i64) -> BTreeMap<(String, String), i64> {
        let mut out = BTreeMap::new();
        for (k, c) in self.kpis.iter().filter(|(k, _)| k.0 == Day) {
            *out.entry((k.2.clone(), k.3.clone())).or_insert(0) += counter(c);
        }
        out.retain(|_, v| *v != 0);
        out
    }
}

fn touches(pairs: &[(&str, &str, i64)]) -> BTreeMap<(String, String), i64> {
    pairs
        .iter()
        .map(|(ch, ca, n)| ((ch.to_string(), ca.to_string()), *n))
        .collect()
}

/// Moves the watermark far ahead with another user's events, so that everyone else's
/// sessions become final and their users are dropped (a record expires state by the
/// watermark before it: the second one does).
fn pass_time(run: &mut Run, to: i64) {
    run.send([
        hit(99, EventKind::PageView, to, None),
        hit(99, EventKind::AddToCart, to, None),
    ]);
}

#[test]
fn a_sessions_untagged_events_count_under_its_landing_touch() {
    let mut run = Run::new();
    run.send([
        hit(1, EventKind::PageView, T0, Some(("paid_search", "brand"))),
        hit(1, EventKind::AddToCart, T0 + MIN, None),
        buy(1, T0 + 2 * MIN, 80.0, "o-1"),
    ]);
    assert_eq!(
        run.by_touch(|c| c.events.iter().sum()),
        touches(&[("paid_search", "brand", 3)])
    );
    assert_eq!(
        run.by_touch(|c| c.conversions),
        touches(&[("paid_search", "brand", 1)])
    );
    assert_eq!(
        run.by_touch(|c| c.converting_sessions),
        touches(&[("paid_search", "brand", 1)])
    );
}

#[test]
fn a_direct_return_inherits_within_the_lookback_and_not_just_past_it() {
    for (gap, inherits) in [(30 * DAY, true), (30 * DAY + 1, false)] {
        let mut run = Run::with(config(AttributionModel::LastNonDirect));
        run.send([hit(1, EventKind::PageView, T0, Some(("social", "saldi")))]);
        pass_time(&mut run, T0 + DAY);
        assert_eq!(run.pipeline.dormant_users(), 1, "user 1 was dropped");
        run.send([
            hit(1, EventKind::PageView, T0 + gap, None),
            buy(1, T0 + gap + MIN, 50.0, "o-1"),
        ]);
        let expected = if inherits {
            touches(&[("social", "saldi", 1)])
        } else {
            touches(&[("direct", "(none)", 1)])
        };
        assert_eq!(run.by_touch(|c| c.conversions), expected, "gap {gap}");
    }
}

#[test]
fn a_memory_kept_in_the_store_is_recalled_like_one_kept_in_memory() {
    let mut run = Run::with(config(AttributionModel::LastNonDirect)).with_store(1);
    run.send([hit(1, EventKind::PageView, T0, Some(("email", "news")))]);
    pass_time(&mut run, T0 + DAY);
    assert_eq!(run.pipeline.dormant_users(), 0, "taken by the store");
    assert_eq!(run.store.as_ref().unwrap().0.len(), 1);
    run.send([buy(1, T0 + 10 * DAY, 20.0, "o-1")]);
    assert_eq!(
        run.by_touch(|c| c.conversions),
        touches(&[("email", "news", 1)])
    );
}

#[test]
fn the_session_model_never_inherits() {
    let mut run = Run::with(config(AttributionModel::Session));
    run.send([hit(1, EventKind::PageView, T0, Some(("social", "saldi")))]);
    pass_time(&mut run, T0 + DAY);
    assert_eq!(run.pipeline.dormant_users(), 0, "no memory is kept");
    run.send([buy(1, T0 + 2 * DAY, 50.0, "o-1")]);
    assert_eq!(
        run.by_touch(|c| c.conversions),
        touches(&[("direct", "(none)", 1)])
    );
}

#[test]
fn a_late_landing_event_turns_a_direct_session_into_a_paid_one() {
    let mut run = Run::new();
    run.send([
        hit(1, EventKind::PageView, T0 + MIN, None),
        buy(1, T0 + 2 * MIN, 80.0, "o-1"),
    ]);
    assert_eq!(
        run.by_touch(|c| c.conversions),
        touches(&[("direct", "(none)", 1)])
    );
    // The landing hit, a minute earlier in event time, arrives last.
    run.send([hit(
        1,
        EventKind::PageView,
        T0,
        Some(("paid_search", "brand")),
    )]);
    assert_eq!(
        run.by_touch(|c| c.events.iter().sum()),
        touches(&[("paid_search", "brand", 3)])
    );
    assert_eq!(
        run.by_touch(|c| c.sessions),
        touches(&[("paid_search", "brand", 1)])
    );
    assert_eq!(
        run.by_touch(|c| c.revenue_micros as i64),
        touches(&[("paid_search", "brand", 80_000_000)])
    );
    // Nothing is left behind under direct, at any granularity.
    assert!(run.kpis.keys().all(|k| k.2 != "direct"));
}

#[test]
fn a_late_non_direct_session_re_credits_a_later_purchase() {
    let mut run = Run::new();
    run.send([
        hit(1, EventKind::PageView, T0 + 40 * MIN, None),
        buy(1, T0 + 41 * MIN, 30.0, "o-1"),
    ]);
    // An earlier session (40 minutes before: a session of its own) arrives late.
    run.send([hit(1, EventKind::PageView, T0, Some(("email", "news")))]);
    assert_eq!(
        run.by_touch(|c| c.conversions),
        touches(&[("email", "news", 1)])
    );
    assert_eq!(
        run.by_touch(|c| c.sessions),
        touches(&[("email", "news", 2)])
    );
    // The late session itself is late for its minute (and counted there all the same).
    assert_eq!(run.pipeline.counters().late[0], 1);
}

#[test]
fn a_session_merge_changes_the_acquisition() {
    let mut run = Run::with(config(AttributionModel::Session));
    run.send([
        hit(1, EventKind::PageView, T0, Some(("social", "saldi"))),
        buy(1, T0 + 40 * MIN, 30.0, "o-1"),
    ]);
    assert_eq!(
        run.by_touch(|c| c.sessions),
        touches(&[("direct", "(none)", 1), ("social", "saldi", 1)])
    );
    // An event between them, within the gap of both, merges the two sessions into one
    // acquired by social.
    run.send([hit(1, EventKind::AddToCart, T0 + 20 * MIN, None)]);
    assert_eq!(
        run.by_touch(|c| c.sessions),
        touches(&[("social", "saldi", 1)])
    );
    assert_eq!(
        run.by_touch(|c| c.conversions),
        touches(&[("social", "saldi", 1)])
    );
}

#[test]
fn a_session_counts_at_its_first_events_device_and_region_under_its_acquisition() {
    let mut run = Run::new();
    let mut first = hit(1, EventKind::PageView, T0, None);
    first.device = Some("desktop".into());
    first.region = Some("Lazio".into());
    let landing = hit(
        1,
        EventKind::PageView,
        T0 + MIN,
        Some(("display", "banner")),
    );
    run.send([first, landing, buy(1, T0 + 2 * MIN, 10.0, "o-1")]);
    let day: Vec<_> = run
        .kpis
        .iter()
        .filter(|(k, _)| k.0 == Day)
        .map(|(k, c)| (k.2.as_str(), k.4.as_str(), k.5.as_str(), c.sessions))
        .collect();
    assert_eq!(day, vec![("display", "desktop", "IT-62", 1)]);
}

#[test]
fn a_duplicate_landing_counts_under_its_own_touch_only() {
    let mut run = Run::new();
    let landing = with_id(
        hit(1, EventKind::PageView, T0, Some(("social", "saldi"))),
        "l-1",
    );
    run.send([
        landing.clone(),
        hit(1, EventKind::AddToCart, T0 + MIN, None),
        landing,
    ]);
    assert_eq!(
        run.by_touch(|c| c.duplicates),
        touches(&[("social", "saldi", 1)])
    );
    assert_eq!(
        run.by_touch(|c| c.sessions),
        touches(&[("social", "saldi", 1)])
    );
    assert_eq!(
        run.by_touch(|c| c.events.iter().sum()),
        touches(&[("social", "saldi", 2)])
    );
}

#[test]
fn one_order_is_one_conversion_from_the_tracker_the_webhook_and_a_reload() {
    let mut run = Run::new();
    let tracker = buy(1, T0, 89.5, "A-1001");
    let mut webhook = buy(2, T0 + 40 * SEC, 89.5, "A-1001"); // the shop's customer id
    webhook.channel = Some("email".into());
    let reload = buy(1, T0 + 3 * MIN, 89.5, "A-1001");
    let redelivered_late = buy(2, T0 + 7 * DAY - 1, 89.5, "A-1001");
    run.send([tracker, webhook, reload]);
    assert_eq!(run.total(Day, |c| c.conversions), 1);
    assert_eq!(run.total(Day, |c| c.revenue_micros), 89_500_000);
    assert_eq!(run.total(Day, |c| c.duplicates), 2);
    // The webhook's copy is a duplicate under its own dimensions.
    assert_eq!(
        run.by_touch(|c| c.duplicates),
        touches(&[("direct", "(none)", 1), ("email", "(none)", 1)])
    );
    assert_eq!(run.pipeline.counters().order_duplicates, 2);
    assert_eq!(run.pipeline.remembered_orders(), 1);

    // Within 7 days still one order; at 7 days or more apart, another conversion.
    run.send([redelivered_late]);
    assert_eq!(run.total(Day, |c| c.conversions), 1);
    run.send([buy(3, T0 + 7 * DAY, 89.5, "A-1001")]);
    assert_eq!(run.total(Day, |c| c.conversions), 2);
}

#[test]
fn order_ids_only_join_conversions_and_the_horizon_can_be_turned_off() {
    let mut run = Run::new();
    let mut cart = hit(1, EventKind::AddToCart, T0, None);
    cart.order_id = Some("A-1".into());
    run.send([cart, buy(1, T0 + MIN, 5.0, "A-1")]);
    assert_eq!(
        run.total(Day, |c| c.conversions),
        1,
        "a cart is no conversion"
    );

    let mut run = Run::with(PipelineConfig {
        order_dedup_horizon_ms: 0,
        ..PipelineConfig::default()
    });
    run.send([buy(1, T0, 5.0, "A-1"), buy(1, T0 + MIN, 5.0, "A-1")]);
    assert_eq!(run.total(Day, |c| c.conversions), 2);
}

/// One visit a day (a page view, then a purchase a minute later), each followed by time
/// passing so that the visit's session is dropped before the next: every later session
/// meets the earlier ones only through the user's memory.
fn daily_visits(run: &mut Run, visits: &[(i64, Option<(&str, &str)>)]) {
    for &(day, touch) in visits {
        let ts = T0 + day * DAY;
        run.send([
            hit(1, EventKind::PageView, ts, touch),
            buy(1, ts + MIN, 10.0, &format!("o-{day}")),
        ]);
        pass_time(run, ts + 6 * 3_600_000);
    }
}

fn first_touch(lookback: i64) -> PipelineConfig {
    PipelineConfig {
        attribution: AttributionModel::FirstTouch,
        attribution_lookback_ms: lookback,
        ..PipelineConfig::default()
    }
}

/// The user's first_touch runs (oldest first) as the pipeline or its store holds them.
fn runs_of_user_1(run: &Run) -> Vec<(i64, String)> {
    let user = event(1, EventKind::PageView, T0).user;
    let state = run.pipeline.snapshot();
    let memories = match (state.users.get(&user), state.dormant.get(&user)) {
        (Some(held), _) => Some(attribution::Memories {
            earlier: state
                .earlier_runs
                .get(&user)
                .map(|r| r.as_slice().to_vec())
                .unwrap_or_default(),
            latest: held.memory,
        }),
        (None, Some(latest)) => Some(attribution::Memories {
            earlier: state
                .earlier_runs
                .get(&user)
                .map(|r| r.as_slice().to_vec())
                .unwrap_or_default(),
            latest: *latest,
        }),
        (None, None) => run
            .store
            .as_ref()
            .and_then(|(store, _)| store.get(&user).cloned()),
    };
    let Some(memories) = memories else {
        return Vec::new();
    };
    memories
        .earlier
        .iter()
        .chain([&memories.latest])
        .filter(|m| !m.is_none())
        .map(|m| {
            let dims = run.pipeline.dims(m.touch).unwrap();
            ((m.start - T0) / DAY, dims.channel.clone())
        })
        .collect()
}

#[test]
fn first_touch_takes_the_earliest_click_within_the_lookback_not_a_lapsing_cookie() {
    // Lookback 10 days. Day 0 social; day 5 email; day 12 direct; day 13 paid search; day
    // 14 email again. Each session takes the earliest non-direct session started in
    // [its start − 10 days, its start]:
    // day 0 → social (itself); day 5 → social (day 0); day 12 → email (day 5: the social
    // click lapsed at day 10, the e-mail click of day 5 has not; a first-click cookie would
    // have said direct); day 13 → email (day 5); day 14 → email (day 5).
    for store_every in [None, Some(3)] {
        let mut run = Run::with(first_touch(10 * DAY));
        if let Some(every) = store_every {
            run = run.with_store(every);
        }
        daily_visits(
            &mut run,
            &[
                (0, Some(("social", "saldi"))),
                (5, Some(("email", "news"))),
                (12, None),
                (13, Some(("paid_search", "brand"))),
                (14, Some(("email", "news"))),
            ],
        );
        assert_eq!(
            run.by_touch(|c| c.conversions),
            touches(&[("email", "news", 3), ("social", "saldi", 2)]),
            "store every {store_every:?}"
        );
        // What is left: the social run went when the day-13 click came (more than 10
        // days before it); e-mail, paid search, e-mail remain.
        assert_eq!(
            runs_of_user_1(&run),
            vec![
                (5, "email".to_string()),
                (13, "paid_search".to_string()),
                (14, "email".to_string())
            ],
            "store every {store_every:?}"
        );
        assert_eq!(run.pipeline.counters().first_touch_capped, 0);
    }
}

#[test]
fn first_touch_keeps_a_run_of_one_touch_as_its_latest_session() {
    // Lookback 10 days. Social at day 0 and day 3 (one run), email at day 5, direct at
    // day 12. [day 2, day 12] holds social (day 3) and email (day 5): social. The run is
    // kept as one entry with its latest start (day 3); with its first (day 0) it would
    // have lapsed and the answer would wrongly be email.
    let mut run = Run::with(first_touch(10 * DAY)).with_store(2);
    daily_visits(
        &mut run,
        &[
            (0, Some(("social", "saldi"))),
            (3, Some(("social", "saldi"))),
            (5, Some(("email", "news"))),
        ],
    );
    assert_eq!(
        runs_of_user_1(&run),
        vec![(3, "social".to_string()), (5, "email".to_string())]
    );
    daily_visits(&mut run, &[(12, None)]);
    // day 0, 3 → social; day 5 → social (day 0); day 12 → social (day 3).
    assert_eq!(
        run.by_touch(|c| c.conversions),
        touches(&[("social", "saldi", 4)])
    );
    // A run is one touch whatever the device: a desktop e-mail visit joins the e-mail run.
    let mut desktop = hit(
        1,
        EventKind::PageView,
        T0 + 13 * DAY,
        Some(("email", "news")),
    );
    desktop.device = Some("desktop".into());
    run.send([desktop]);
    pass_time(&mut run, T0 + 13 * DAY + 6 * 3_600_000);
    // The e-mail visits of day 5 and 13 are one run, at day 13. The social run (day 3)
    // is exactly the lookback before that visit: kept.
    assert_eq!(
        runs_of_user_1(&run),
        vec![(3, "social".to_string()), (13, "email".to_string())]
    );
}

#[test]
fn first_touch_keeps_at_most_the_cap_of_runs_and_counts_what_it_refuses() {
    // 40 sessions an hour apart alternating social and email: 40 runs within the lookback.
    // The first MAX_FIRST_TOUCH_RUNS (32, hours 0 to 31, the last one e-mail) are kept.
    // Hours 32, 34, 36, 38 (social) would start a 33rd run: refused and counted. Hours 33,
    // 35, 37, 39 (e-mail) continue the latest kept run, which ends at hour 39.
    let mut run = Run::with(first_touch(30 * DAY)).with_store(5);
    let extra = 8;
    let n = attribution::MAX_FIRST_TOUCH_RUNS as i64 + extra;
    for i in 0..n {
        let touch = if i % 2 == 0 {
            ("social", "saldi")
        } else {
            ("email", "news")
        };
        run.send([hit(1, EventKind::PageView, T0 + i * HOUR, Some(touch))]);
    }
    pass_time(&mut run, T0 + (n + 6) * HOUR);
    assert_eq!(
        run.pipeline.counters().first_touch_capped,
        u64::try_from(extra / 2).unwrap()
    );
    let runs = runs_of_user_1(&run);
    assert_eq!(runs.len(), attribution::MAX_FIRST_TOUCH_RUNS);
    assert_eq!(runs[0], (0, "social".to_string()));
    assert_eq!(runs[runs.len() - 1], (1, "email".to_string())); // hour 39: day 1
    // Every session is credited to the first click, the social one of hour 0.
    assert_eq!(
        run.by_touch(|c| c.sessions),
        touches(&[("direct", "(none)", 1), ("social", "saldi", n)])
    );
    // A later direct visit still finds the first click.
    run.send([buy(1, T0 + 3 * DAY, 5.0, "o-bot")]);
    assert_eq!(
        run.by_touch(|c| c.conversions),
        touches(&[("social", "saldi", 1)])
    );
}

#[test]
fn last_non_direct_does_not_chain_through_an_inherited_session() {
    let lookback = 10 * DAY;
    let mut run = Run::with(PipelineConfig {
        attribution_lookback_ms: lookback,
        ..PipelineConfig::default()
    });
    // Social at day 0; a direct visit at day 8 inherits it; another direct visit at day
    // 12 is more than the lookback after the social click: direct, although the day-8
    // session was credited to social.
    for (day, touch) in [(0, Some(("social", "saldi"))), (8, None), (12, None)] {
        let ts = T0 + day * DAY;
        run.send([
            hit(1, EventKind::PageView, ts, touch),
            buy(1, ts + MIN, 10.0, &format!("o-{day}")),
        ]);
        pass_time(&mut run, ts + 6 * 3_600_000);
    }
    assert_eq!(
        run.by_touch(|c| c.conversions),
        touches(&[("direct", "(none)", 1), ("social", "saldi", 2)])
    );
}

#[test]
fn a_bot_cut_short_keeps_every_event_and_one_session() {
    let mut run = Run::with(PipelineConfig {
        max_events_per_user: 10,
        ..PipelineConfig::default()
    });
    run.send([hit(1, EventKind::PageView, T0, Some(("social", "saldi")))]);
    run.send((1..40).map(|i| hit(1, EventKind::PageView, T0 + i * SEC, None)));
    assert_eq!(run.total(Day, |c| c.events[0]), 40);
    assert_eq!(run.total(Day, |c| c.sessions), 1);
    assert!(run.pipeline.counters().truncated_users > 0);
}

/// Users with several sessions over three hours, every event tagged at random (a landing
/// touch, or none: direct), devices varying, purchases with order ids and exact retries.
/// Copies that could win by arrival are built so that which one wins cannot matter (see
/// `world`).
fn tagged_world() -> impl Strategy<Value = Vec<StoredEvent>> {
    prop::collection::vec(
        (0u8..4, 0usize..6, 0i64..(180 * 60 / 7), 0u8..5, 0u8..3),
        1..70,
    )
    .prop_map(|specs| {
        let kinds = [
            EventKind::PageView,
            EventKind::AddToCart,
            EventKind::Registration,
            EventKind::Checkout,
            EventKind::Purchase,
            EventKind::Lead,
        ];
        let mut events = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (n, (u, k, slot, tag, extra)) in specs.into_iter().enumerate() {
            if !seen.insert((u, slot)) {
                continue;
            }
            let touch = match tag {
                0 | 1 => None,
                2 => Some(("social", "saldi")),
                3 => Some(("email", "news")),
                _ => Some(("paid_search", "brand")),
            };
            let mut e = hit(u, kinds[k].clone(), T0 + slot * 7 * SEC + 200, touch);
            e.value = Some(f64::from(extra) * 7.5 + 0.01);
            e.event_id = Some(format!("e-{n}"));
            e.order_id = Some(format!("o-{n}"));
            if extra == 1 {
                e.device = Some("desktop".into());
            }
            events.push(e.clone());
            if extra == 2 {
                events.push(e.clone()); // exact retry
                if k == 4 {
                    // The same order again, 150 ms later (not a near duplicate): whichever
                    // copy arrives first is the conversion, in the same row and session.
                    let mut copy = e;
                    copy.event_id = Some(format!("e-{n}-webhook"));
                    copy.ts = EventTime(copy.ts.0 + 150);
                    events.push(copy);
                }
            }
        }
        events
    })
}

fn final_kpis_under(
    events: &[StoredEvent],
    config: &PipelineConfig,
    store_every: Option<u64>,
) -> Kpis {
    let mut run = Run::with(config.clone());
    if let Some(every) = store_every {
        run = run.with_store(every);
    }
    run.send(events.iter().cloned());
    run.kpis
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_arrival_order_gives_the_same_attributed_kpis_under_every_model(
        events in tagged_world(),
        delays in prop::collection::vec(0i64..(10 * MIN), 1..20),
        model in 0usize..3,
        lookback in prop::sample::select(vec![20 * MIN, 70 * MIN, 30 * DAY]),
        store_every in prop::option::of(1u64..50),
    ) {
        let config = PipelineConfig {
            attribution: AttributionModel::ALL[model],
            attribution_lookback_ms: lookback,
            ..PipelineConfig::default()
        };
        let expected = final_kpis_under(&arrival(&events, &[0]), &config, None);
        let actual = final_kpis_under(&arrival(&events, &delays), &config, store_every);
        prop_assert_eq!(&actual, &expected);
        for (key, c) in &actual {
            prop_assert!(
                c.sessions >= 0 && c.conversions >= 0 && c.revenue_micros >= 0 && c.late == 0,
                "{:?}: {:?}", key, c
            );
        }
        // A session's events and its count share one row: every row with events of an
        // accepted session's first event has sessions, unless it is a duplicate-only row.
        let sessions: i64 = actual.iter().filter(|(k, _)| k.0 == Day).map(|(_, c)| c.sessions).sum();
        prop_assert!(sessions >= 1 || events.is_empty());
    }
}

/// Users who come back many times over two days through changing channels (a visit of one
/// to three events in a 20-minute slot, a third of them direct): sessions are dropped and
/// later ones meet them only through the memory, so `first_touch` works off lists of runs.
fn returning_world() -> impl Strategy<Value = Vec<StoredEvent>> {
    prop::collection::vec((0u8..3, 0i64..(2 * 24 * 3), 0u8..6, 1usize..4), 1..60).prop_map(
        |specs| {
            let mut events = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (n, (u, slot, tag, len)) in specs.into_iter().enumerate() {
                if !seen.insert((u, slot)) {
                    continue;
                }
                let touch = match tag {
                    0 | 1 => None,
                    2 => Some(("social", "saldi")),
                    3 => Some(("email", "news")),
                    4 => Some(("social", "saldi")),
                    _ => Some(("paid_search", "brand")),
                };
                for i in 0..len {
                    let ts = T0 + slot * 20 * MIN + 200 + i as i64 * MIN;
                    let mut e = hit(
                        u,
                        EventKind::PageView,
                        ts,
                        if i == 0 { touch } else { None },
                    );
                    if i + 1 == len {
                        e.kind = EventKind::Purchase;
                        e.value = Some(10.0);
                        e.order_id = Some(format!("o-{n}"));
                    }
                    e.event_id = Some(format!("e-{n}-{i}"));
                    if tag == 4 {
                        e.device = Some("desktop".into());
                    }
                    events.push(e);
                }
            }
            events
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// Under `first_touch`, the numbers with sessions dropped into memory (lists of runs,
    /// moved through a store at any cadence, any arrival order within the lateness) are
    /// those of a pipeline that never drops a session and walks every session it saw.
    #[test]
    fn first_touch_from_memory_lists_equals_first_touch_over_every_session(
        events in returning_world(),
        delays in prop::collection::vec(0i64..(10 * MIN), 1..20),
        lookback in prop::sample::select(vec![2 * HOUR, 7 * HOUR, 20 * HOUR, 30 * DAY]),
        store_every in prop::option::of(1u64..40),
    ) {
        let config = first_touch(lookback);
        let never_drops = PipelineConfig {
            allowed_lateness_ms: 400 * DAY,
            ..config.clone()
        };
        let expected = final_kpis_under(&arrival(&events, &[0]), &never_drops, None);
        let in_order = final_kpis_under(&arrival(&events, &[0]), &config, store_every);
        let shuffled = final_kpis_under(&arrival(&events, &delays), &config, store_every);
        prop_assert_eq!(&in_order, &expected);
        prop_assert_eq!(&shuffled, &expected);
    }
}
