//! The segment window against the consumer's way (the KPI store read at the judging point,
//! `group_totals`), over generated traffic and hand-made cases: batch splits, late events,
//! bounds, snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::LogRecord;
use crate::act::test_traffic::traffic;
use crate::act::triggers::{RawTrigger, check_triggers};
use crate::pipeline::PipelineConfig;
use crate::record::{EventKind, SpendRecord, StoredEvent, UserPseudonym};
use crate::time::EventTime;
use crate::watch::evaluate::{self, MinuteRow, SpendMinute, WindowData};
use proptest::prelude::*;
use std::collections::BTreeSet;

const MIN: i64 = 60_000;
const SEC: i64 = 1_000;

fn raw(name: &str, group_by: &[&str], over: &str) -> RawTrigger {
    RawTrigger {
        name: Some(name.into()),
        kind: Some("segment_cpa".into()),
        group_by: group_by.iter().map(|d| d.to_string()).collect(),
        threshold: Some(10.0),
        over: Some(over.into()),
        notify: vec!["push".into()],
        ..RawTrigger::default()
    }
}

/// Segment triggers of every grouping and several windows (10 minutes the longest), and
/// one trigger of another kind.
fn triggers() -> Vec<Trigger> {
    let cart = RawTrigger {
        name: Some("cart".into()),
        kind: Some("abandoned_cart".into()),
        after: Some("30m".into()),
        notify: vec!["push".into()],
        ..RawTrigger::default()
    };
    let set = [
        raw("by_channel", &["channel"], "5m"),
        raw("by_campaign", &["campaign"], "3m"),
        raw("by_both", &["channel", "campaign"], "10m"),
        raw("by_campaign_and_channel", &["campaign", "channel"], "2m"),
        raw("everything", &[], "7m"),
        cart,
    ];
    let push: BTreeSet<String> = ["push".to_string()].into();
    check_triggers(&set, &push, &push).unwrap()
}

fn rules(triggers: &[Trigger]) -> Vec<&Rule> {
    triggers
        .iter()
        .filter_map(|t| match &t.kind {
            TriggerKind::SegmentCpa { rule, .. } => Some(&**rule),
            _ => None,
        })
        .collect()
}

fn config() -> PipelineConfig {
    PipelineConfig::default()
}

/// The rows and spend the KPI store holds (every granularity), by name, as the processor
/// commits them.
#[derive(Debug, Default, PartialEq)]
struct Store {
    rows: BTreeMap<(Granularity, i64, [String; 4]), KpiCounters>,
    spend: BTreeMap<(Granularity, i64, String, String), SpendCounters>,
}

impl Store {
    fn commit(&mut self, pipeline: &Pipeline, deltas: KpiDeltas) {
        for (key, change) in deltas.rows {
            let d = pipeline.dims(key.dims).unwrap();
            let names = [
                d.channel.clone(),
                d.campaign.clone(),
                d.device.clone(),
                d.region.clone(),
            ];
            let k = (key.granularity, key.window_start, names);
            let row = self.rows.entry(k.clone()).or_default();
            row.add(&change);
            if row.is_zero() {
                self.rows.remove(&k);
            }
        }
        for (key, change) in deltas.spend_micros {
            let d = pipeline.dims(key.channel_campaign).unwrap();
            let k = (
                key.granularity,
                key.window_start,
                d.channel.clone(),
                d.campaign.clone(),
            );
            let spend = self.spend.entry(k.clone()).or_default();
            spend.add(change);
            if spend.is_zero() {
                self.spend.remove(&k);
            }
        }
    }

    /// What `read_window` reads: the rows whose minute starts in `[from, to)`.
    fn window(&self, from: i64, to: i64) -> WindowData {
        WindowData {
            rows: (self.rows.iter())
                .filter(|((g, start, _), _)| {
                    *g == Granularity::Minute && (from..to).contains(start)
                })
                .map(|((_, start, dims), counters)| MinuteRow {
                    window_start: *start,
                    dims: dims.clone(),
                    counters: counters.clone(),
                })
                .collect(),
            spend: (self.spend.iter())
                .filter(|((g, start, ..), _)| {
                    *g == Granularity::Minute && (from..to).contains(start)
                })
                .map(|((_, start, channel, campaign), spend)| SpendMinute {
                    window_start: *start,
                    channel: channel.clone(),
                    campaign: campaign.clone(),
                    spend: *spend,
                })
                .collect(),
        }
    }
}

/// Per judged minute end, each segment rule's totals by group (custom event names sorted).
type Judged = Vec<(i64, Vec<BTreeMap<Vec<String>, GroupTotals>>)>;

fn sorted(totals: HashMap<Vec<String>, GroupTotals>) -> BTreeMap<Vec<String>, GroupTotals> {
    totals
        .into_iter()
        .map(|(group, mut t)| {
            t.counters.custom_events.sort();
            (group, t)
        })
        .collect()
}

/// The consumer's way, at its most exact: the store committed after every record, and a
/// minute end judged on the store's rows as soon as the watermark reaches it.
fn judged_by_the_store(records: &[LogRecord], triggers: &[Trigger]) -> (Judged, Store) {
    let rules = rules(triggers);
    let longest = rules.iter().map(|r| r.over_ms).max().unwrap();
    let mut pipeline = Pipeline::new(config(), None);
    let mut store = Store::default();
    let mut judged = Judged::new();
    let mut judged_through: Option<i64> = None;
    for (offset, record) in records.iter().enumerate() {
        pipeline.process(offset as u64, record);
        let deltas = pipeline.take_deltas();
        store.commit(&pipeline, deltas);
        let Some(w) = pipeline.watermark() else {
            continue;
        };
        let last_end = w.div_euclid(MIN) * MIN;
        let mut m = judged_through.map_or(last_end, |t| t + MIN);
        while m <= last_end {
            let data = store.window(m - longest, m);
            let totals = (rules.iter())
                .map(|rule| sorted(evaluate::group_totals(rule, m, &data)))
                .collect();
            judged.push((m, totals));
            judged_through = Some(m);
            m += MIN;
        }
    }
    (judged, store)
}

/// The processor's way with the window: batches of the sizes of `splits` (in turn), the
/// window after every record, its deltas committed at every batch's end.
fn judged_by_the_window(
    records: &[LogRecord],
    triggers: &[Trigger],
    splits: &[usize],
) -> (Judged, Store, SegmentWindow) {
    let rules = rules(triggers);
    let mut pipeline = Pipeline::new(config(), None);
    let mut window = SegmentWindow::new(triggers, config().out_of_orderness_ms).unwrap();
    let mut store = Store::default();
    let mut judged = Judged::new();
    let mut offset = 0;
    for size in splits.iter().cycle() {
        if offset >= records.len() {
            break;
        }
        let end = (offset + size.max(&1)).min(records.len());
        for record in &records[offset..end] {
            pipeline.process(offset as u64, record);
            offset += 1;
            window.after_record(&mut pipeline, |t| {
                let totals = rules.iter().map(|r| sorted(t.of(r))).collect();
                judged.push((t.minute_end(), totals));
            });
        }
        let deltas = window.take_batch_deltas(&mut pipeline);
        store.commit(&pipeline, deltas);
    }
    (judged, store, window)
}

/// That the run judged real segments (minutes with conversions and with spend), and that
/// deltas came after their minutes were judged: read from the store at the end, some
/// judged minutes have other totals than they were judged on.
fn assert_exercised(judged: &Judged, store_at_the_end: &Store, triggers: &[Trigger]) {
    let rules = rules(triggers);
    let changed_later = judged
        .iter()
        .filter(|(m, totals)| {
            let data = store_at_the_end.window(m - 10 * MIN, *m);
            let now: Vec<_> = (rules.iter())
                .map(|rule| sorted(evaluate::group_totals(rule, *m, &data)))
                .collect();
            now != *totals
        })
        .count();
    assert!(
        changed_later >= 3,
        "{changed_later} judged minutes changed later"
    );
    assert!(judged.len() >= 10, "{} minutes judged", judged.len());
    let with = |f: &dyn Fn(&GroupTotals) -> bool| {
        judged
            .iter()
            .filter(|(_, rules)| rules.iter().any(|groups| groups.values().any(f)))
            .count()
    };
    assert!(with(&|t| t.counters.conversions > 0) >= 5);
    assert!(with(&|t| t.spend.is_some_and(|s| s.records > 0)) >= 5);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    /// (a) Whatever the batch split, every minute's totals are what `group_totals` gives
    /// over the store's rows read at the judging point; and the store receives the same
    /// rows as with `take_deltas` alone.
    #[test]
    fn totals_are_group_totals_over_the_store_at_the_judging_point(
        seed in 0u64..1_000,
        splits in prop::collection::vec(1usize..3_000, 1..5),
    ) {
        let records = traffic(seed, 12_000);
        let triggers = triggers();
        let (expected, expected_store) = judged_by_the_store(&records, &triggers);
        assert_exercised(&expected, &expected_store, &triggers);
        let (judged, store, _) = judged_by_the_window(&records, &triggers, &splits);
        prop_assert_eq!(judged.len(), expected.len());
        for (got, want) in judged.iter().zip(&expected) {
            prop_assert_eq!(got, want);
        }
        prop_assert_eq!(store, expected_store);
    }
}

/// (b) One record sequence in batches of every size: the same minutes, in the same order,
/// on the same totals.
#[test]
fn batch_boundaries_do_not_change_what_is_judged() {
    let records = traffic(7, 12_000);
    let triggers = triggers();
    let (first, first_store, _) = judged_by_the_window(&records, &triggers, &[1]);
    assert_exercised(&first, &first_store, &triggers);
    for splits in [
        vec![records.len()],
        vec![1_000],
        vec![7, 333, 1, 2_500],
        vec![59],
    ] {
        let (judged, store, _) = judged_by_the_window(&records, &triggers, &splits);
        assert_eq!(judged, first, "splits {splits:?}");
        assert_eq!(store, first_store, "splits {splits:?}");
    }
}

const T0: i64 = 1_712_318_400_000; // 2024-04-05T12:00:00Z, a minute's start

fn event(user: u8, kind: EventKind, ts: i64) -> LogRecord {
    LogRecord::Event(StoredEvent {
        channel: Some("social".into()),
        campaign: Some("saldi".into()),
        device: Some("mobile".into()),
        region: Some("Lombardia".into()),
        ..StoredEvent::bare(UserPseudonym([user; 16]), kind, EventTime(ts))
    })
}

fn purchase(user: u8, ts: i64) -> LogRecord {
    let mut record = event(user, EventKind::Purchase, ts);
    if let LogRecord::Event(e) = &mut record {
        e.value = Some(50.0);
    }
    record
}

fn spend(ts: i64, amount: f64) -> LogRecord {
    LogRecord::Spend(SpendRecord {
        ts: EventTime(ts),
        channel: "social".into(),
        campaign: Some("saldi".into()),
        amount,
        currency: None,
        source: None,
    })
}

/// Runs `records` as one batch; per judged minute end, the `by_channel` totals of `social`.
fn social_by_minute(
    records: &[LogRecord],
) -> (Vec<(i64, Option<GroupTotals>)>, SegmentWindow, Store) {
    let triggers = triggers();
    let rule = rules(&triggers)[0].clone();
    assert_eq!((rule.name.as_str(), rule.over_ms), ("by_channel", 5 * MIN));
    let (judged, store, window) = judged_by_the_window(records, &triggers, &[records.len()]);
    let social = judged
        .into_iter()
        .map(|(m, rules)| (m, rules[0].get(&vec!["social".to_string()]).cloned()))
        .collect();
    (social, window, store)
}

/// (c) A purchase that arrives after its minute was judged: the judged minute keeps what
/// it was judged on (the consumer, reading the store after the batch, would see it), the
/// next minute's window has it; one older than the window is ignored, and counted.
#[test]
fn a_late_event_changes_later_windows_not_a_judged_one() {
    let records = [
        spend(T0, 10.0),
        purchase(1, T0 + 10 * SEC),
        // The watermark (5 s behind) reaches T0 + 1m: that minute end is judged.
        event(2, EventKind::PageView, T0 + MIN + 6 * SEC),
        // Late, into the minute judged: same batch, after the judging record.
        purchase(3, T0 + 20 * SEC),
        // The next minute end.
        event(2, EventKind::PageView, T0 + 2 * MIN + 6 * SEC),
    ];
    let (social, _, store) = social_by_minute(&records);
    let conversions = |t: &Option<GroupTotals>| t.as_ref().map(|t| t.counters.conversions);
    // The first event's watermark (T0 + 5 s) judges T0 at once, on an empty window.
    assert_eq!(social.len(), 3);
    assert_eq!(social[0], (T0, None));
    assert_eq!(social[1].0, T0 + MIN);
    assert_eq!(conversions(&social[1].1), Some(1));
    let spent = social[1].1.as_ref().unwrap().spend.unwrap();
    assert_eq!((spent.micros, spent.records), (10_000_000, 1));
    assert_eq!(social[2].0, T0 + 2 * MIN);
    assert_eq!(conversions(&social[2].1), Some(2));
    // Read from the store after the batch, the first minute would have counted the late
    // purchase: what the consumer judges depends on when it reads.
    let rule = rules(&triggers())[0].clone();
    let after = evaluate::group_totals(&rule, T0 + MIN, &store.window(T0 - 10 * MIN, T0 + MIN));
    assert_eq!(after[&vec!["social".to_string()]].counters.conversions, 2);

    // Twenty minutes on, a purchase into the first minute is older than the longest
    // window (10 minutes): ignored.
    let mut records = records.to_vec();
    records.push(event(2, EventKind::PageView, T0 + 20 * MIN + 6 * SEC));
    records.push(purchase(4, T0 + 30 * SEC));
    records.push(purchase(5, T0 + 19 * MIN + 30 * SEC));
    records.push(event(2, EventKind::PageView, T0 + 21 * MIN + 6 * SEC));
    let (social, window, _) = social_by_minute(&records);
    let last = social.last().unwrap();
    assert_eq!(last.0, T0 + 21 * MIN);
    // Only the in-window purchase (the pageviews convert nothing).
    assert_eq!(conversions(&last.1), Some(1));
    assert!(window.ignored().behind > 0);
    assert!(
        window
            .state()
            .minutes
            .keys()
            .all(|m| *m >= T0 + 22 * MIN - 10 * MIN)
    );
}

/// (d) The window holds the minutes of the longest window and a few ahead, however long
/// the traffic; spend dated far ahead is ignored and counted.
#[test]
fn memory_is_bounded_by_the_longest_window() {
    let records = traffic(3, 40_000);
    let triggers = triggers();
    let rules = rules(&triggers);
    let mut pipeline = Pipeline::new(config(), None);
    let mut window = SegmentWindow::new(&triggers, config().out_of_orderness_ms).unwrap();
    let mut most = (0, 0);
    let mut judged = 0;
    let mut pairs_seen = BTreeSet::new();
    for (offset, record) in records.iter().enumerate() {
        pipeline.process(offset as u64, record);
        window.after_record(&mut pipeline, |t| {
            let (m, w) = (t.minute_end(), t.window());
            judged += 1;
            let (minutes, cells) = w.held();
            most = (most.0.max(minutes), most.1.max(cells));
            for (group, _) in w.group_totals(rules[2], m) {
                pairs_seen.insert(group);
            }
            // Held: the 10 minutes of the longest window, the minute being judged's
            // successors the watermark has not reached (5 s of out-of-orderness: one).
            assert!(minutes <= 10 + 1, "{minutes} minutes held at {m}");
            assert!(w.state().minutes.keys().all(|s| *s >= m - 10 * MIN));
        });
        if offset % 1_000 == 999 {
            window.take_batch_deltas(&mut pipeline);
        }
    }
    assert!(judged > 60, "{judged} minutes judged");
    assert!(most.1 <= most.0 * window.state().pairs.len());
    assert!(window.state().pairs.len() >= pairs_seen.len() && pairs_seen.len() > 3);
    assert_eq!(window.ignored().ahead, 0);

    // Spend dated two days ahead: ignored, counted, nothing held for it.
    let far = pipeline.watermark().unwrap() + 2 * DAY;
    let offset = records.len() as u64;
    pipeline.process(offset, &spend(far, 5.0));
    window.take_batch_deltas(&mut pipeline);
    assert_eq!(window.ignored().ahead, 1);
    assert!(window.state().minutes.keys().all(|m| *m < far - DAY));
}

/// A window restored from its encoded state, beside a pipeline restored from the snapshot
/// of the same batch end, judges what the uninterrupted run judges.
#[test]
fn a_restored_window_continues_identically() {
    let records = traffic(11, 12_000);
    let triggers = triggers();
    let rules = rules(&triggers);
    let (whole, _, _) = judged_by_the_window(&records, &triggers, &[1_000]);

    let mut pipeline = Pipeline::new(config(), None);
    let mut window = SegmentWindow::new(&triggers, config().out_of_orderness_ms).unwrap();
    let mut judged = Judged::new();
    let split = 6_000;
    for (offset, record) in records.iter().enumerate() {
        if offset == split {
            // The processor's snapshot, at a batch end.
            window.take_batch_deltas(&mut pipeline);
            let bytes = window.encode().unwrap();
            assert_eq!(bytes[0], SEGMENT_WINDOW_FORMAT);
            let state = SegmentWindow::decode(&bytes).unwrap();
            assert_eq!(&state, window.state());
            pipeline = Pipeline::restore(config(), None, pipeline.snapshot());
            window =
                SegmentWindow::restore(&triggers, config().out_of_orderness_ms, state).unwrap();
        }
        pipeline.process(offset as u64, record);
        window.after_record(&mut pipeline, |t| {
            let m = t.minute_end();
            let w = t.window();
            judged.push((
                m,
                rules.iter().map(|r| sorted(w.group_totals(r, m))).collect(),
            ));
        });
        if offset % 1_000 == 999 {
            window.take_batch_deltas(&mut pipeline);
        }
    }
    assert_eq!(judged, whole);
}

#[test]
fn encoding_is_refused_within_a_batch_and_other_formats_are_named() {
    let mut pipeline = Pipeline::new(config(), None);
    let mut window = SegmentWindow::new(&triggers(), 5_000).unwrap();
    for (offset, record) in [
        spend(T0, 1.0),
        purchase(1, T0 + 10 * SEC),
        purchase(2, T0 + 70 * SEC),
    ]
    .iter()
    .enumerate()
    {
        pipeline.process(offset as u64, record);
        window.after_record(&mut pipeline, |_| {});
    }
    assert_eq!(window.encode(), Err(SegmentWindowError::MidBatch));
    window.take_batch_deltas(&mut pipeline);
    let mut bytes = window.encode().unwrap();
    bytes[0] = 9;
    assert_eq!(
        SegmentWindow::decode(&bytes),
        Err(SegmentWindowError::Version { found: 9 })
    );
    assert_eq!(SegmentWindow::decode(&[]), Err(SegmentWindowError::Empty));
    let mut bad = window.state().clone();
    bad.pairs.push((99, 0));
    assert_eq!(
        SegmentWindow::restore(&triggers(), 5_000, bad).err(),
        Some(SegmentWindowError::Inconsistent)
    );
    // Regression: a judged time at the edge of the integers (corrupt bytes) panicked on
    // restore (the next minute end overflowed); one off a minute's end is refused too.
    for judged in [i64::MAX, i64::MIN, T0 + 1] {
        let mut bad = window.state().clone();
        bad.judged_through_ms = Some(judged);
        assert_eq!(
            SegmentWindow::restore(&triggers(), 5_000, bad).err(),
            Some(SegmentWindowError::Inconsistent),
            "{judged}"
        );
    }
}

#[test]
fn a_segment_trigger_by_device_is_refused() {
    let mut set = triggers();
    if let TriggerKind::SegmentCpa { rule, .. } = &mut set[0].kind {
        rule.group_by = vec![Dimension::Device];
    }
    assert_eq!(
        SegmentWindow::new(&set, 5_000).err(),
        Some(SegmentWindowError::Dimension {
            trigger: "by_channel".into(),
            dimension: "device"
        })
    );
}

/// With no segment trigger nothing is kept or taken early, and only the latest minute end
/// of a jump is reported (as the consumer judges the time alone).
#[test]
fn without_segment_triggers_only_the_time_is_reported() {
    let set: Vec<Trigger> = triggers()
        .into_iter()
        .filter(|t| !matches!(t.kind, TriggerKind::SegmentCpa { .. }))
        .collect();
    let mut pipeline = Pipeline::new(config(), None);
    let mut window = SegmentWindow::new(&set, 5_000).unwrap();
    let mut ends = Vec::new();
    for (offset, record) in [
        spend(T0, 1.0),
        purchase(1, T0 + 10 * SEC),
        purchase(2, T0 + 5 * MIN + 10 * SEC),
    ]
    .iter()
    .enumerate()
    {
        pipeline.process(offset as u64, record);
        window.after_record(&mut pipeline, |t| ends.push(t.minute_end()));
    }
    assert_eq!(ends, vec![T0, T0 + 5 * MIN]);
    assert_eq!(window.held(), (0, 0));
    assert!(!window.take_batch_deltas(&mut pipeline).is_empty());
}

/// Deltas taken at a minute's end go to the store even when a reload within the batch left
/// no segment trigger.
#[test]
fn a_reload_within_a_batch_loses_no_delta() {
    let records = [
        spend(T0, 1.0),
        purchase(1, T0 + 10 * SEC),
        purchase(2, T0 + 70 * SEC),
        purchase(3, T0 + 80 * SEC),
    ];
    let mut alone = Pipeline::new(config(), None);
    let mut expected = Store::default();
    for (offset, record) in records.iter().enumerate() {
        alone.process(offset as u64, record);
    }
    let deltas = alone.take_deltas();
    expected.commit(&alone, deltas);

    let mut pipeline = Pipeline::new(config(), None);
    let mut window = SegmentWindow::new(&triggers(), 5_000).unwrap();
    for (offset, record) in records.iter().enumerate() {
        pipeline.process(offset as u64, record);
        window.after_record(&mut pipeline, |_| {});
        if offset == 2 {
            // T0 + 1m was judged at this record: its deltas were taken.
            assert_eq!(window.state().judged_through_ms, Some(T0 + MIN));
            window.set_triggers(&[]).unwrap();
        }
    }
    let mut store = Store::default();
    let deltas = window.take_batch_deltas(&mut pipeline);
    store.commit(&pipeline, deltas);
    assert_eq!(store, expected);
    assert_eq!(window.held(), (0, 0));
}
