//! The trigger stage over generated traffic: the same numbered outputs whatever the batch
//! boundaries, across snapshots and restores, and with a set applied at an offset; the
//! recorded forms round trip and bad bytes are errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::act::engine::TEXT_ROWS;
use crate::act::push::SegmentSignal;
use crate::act::test_traffic::traffic;
use crate::pipeline::PipelineConfig;
use crate::pipeline::snapshot::{SnapshotError, decode_snapshot, decode_snapshot_parts};

fn config() -> PipelineConfig {
    PipelineConfig {
        enrich: EnrichConfig {
            internal_hosts: vec!["www.bottega.example".into()],
            ..EnrichConfig::default()
        },
        ..PipelineConfig::default()
    }
}

fn trigger(name: &str, kind: &str) -> RawTrigger {
    RawTrigger {
        name: Some(name.into()),
        kind: Some(kind.into()),
        notify: vec!["crm".into()],
        ..RawTrigger::default()
    }
}

fn segment(name: &str, group_by: &[&str], threshold: f64, over: &str) -> RawTrigger {
    RawTrigger {
        group_by: group_by.iter().map(|d| d.to_string()).collect(),
        threshold: Some(threshold),
        over: Some(over.into()),
        min_conversions: Some(1),
        cooldown: Some("1h".into()),
        ..trigger(name, "segment_cpa")
    }
}

fn checked(raw: Vec<RawTrigger>) -> TriggerSet {
    let destinations: BTreeSet<String> = ["crm".to_string(), "webhook".to_string()].into();
    let triggers = check_triggers(&raw, &destinations, &destinations).unwrap();
    TriggerSet { raw, triggers }
}

/// A realistic set: segment CPA by channel and campaign and by channel, with thresholds
/// low enough that segments fire (and recover), an abandoned cart, two tags, a feed.
fn set_a() -> TriggerSet {
    checked(vec![
        RawTrigger {
            segment_label: Some("costi > 1€".into()),
            ..segment("cpa_channel_campaign", &["channel", "campaign"], 1.0, "10m")
        },
        segment("cpa_channel", &["channel"], 2.0, "5m"),
        RawTrigger {
            after: Some("10m".into()),
            ..trigger("cart", "abandoned_cart")
        },
        RawTrigger {
            tag: Some("customer".into()),
            on: Some("first_purchase".into()),
            ..trigger("first", "tag")
        },
        RawTrigger {
            tag: Some("VIP".into()),
            on: Some("purchase_over".into()),
            min_value: Some(50.0),
            cooldown: Some("2h".into()),
            ..trigger("vip", "tag")
        },
        RawTrigger {
            notify: vec!["crm".into(), "webhook".into()],
            ..trigger("feed", "conversion_feed")
        },
    ])
}

/// Another set: one segment trigger gone, one changed, a shorter cart, a new segment
/// trigger by campaign; the tags and the feed stay.
fn set_b() -> TriggerSet {
    let mut raw = set_a().raw;
    raw.remove(1);
    raw[0].threshold = Some(1.5);
    raw[1].after = Some("5m".into());
    raw.push(segment("cpa_campaign", &["campaign"], 1.0, "7m"));
    checked(raw)
}

fn stage_of(set: TriggerSet) -> TriggerStage {
    TriggerStage::beside(set, &config()).unwrap()
}

fn restore_stage(section: &[u8]) -> Result<TriggerStage, StageError> {
    let c = config();
    TriggerStage::restore(
        section,
        c.conversion_types.clone(),
        c.enrich.clone(),
        c.out_of_orderness_ms,
    )
}

/// How a run's snapshot is taken: from the live stage, from its copy, or from the copies
/// written out as they are encoded (the snapshot thread's file); or as a build before
/// format 2 wrote it, its rows in key order (format 1).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    Live,
    Copy,
    Written,
    KeyOrder,
}

/// The section's body as a test writes it: its rows given as they are.
#[derive(Serialize)]
struct SectionOf<'a> {
    set_offset: u64,
    set: Bytes<'a>,
    next_seq: u64,
    globals: Bytes<'a>,
    rows: Vec<(u64, Bytes<'a>)>,
    window: Bytes<'a>,
}

/// The parts of a section of the current format.
fn parts_of(section: &[u8]) -> Section<'_> {
    postcard::from_bytes(section.strip_prefix(&SECTION_HEAD).unwrap()).unwrap()
}

/// `section` written again in `format` with its rows as `order` puts them.
fn rewritten(section: &[u8], format: u8, order: impl FnOnce(&mut Vec<(u64, &[u8])>)) -> Vec<u8> {
    let mut parts = parts_of(section);
    order(&mut parts.rows);
    let mut out = STAGE_MAGIC.to_vec();
    out.push(format);
    let body = SectionOf {
        set_offset: parts.set_offset,
        set: Bytes(parts.set),
        next_seq: parts.next_seq,
        globals: Bytes(parts.globals),
        rows: (parts.rows.iter())
            .map(|&(key, row)| (key, Bytes(row)))
            .collect(),
        window: Bytes(parts.window),
    };
    out.extend(postcard::to_allocvec(&body).unwrap());
    out
}

/// `section` as format 1 wrote it: the rows in key order.
fn in_key_order(section: &[u8]) -> Vec<u8> {
    rewritten(section, STAGE_FORMAT_KEY_ORDER, |rows| {
        rows.sort_unstable_by_key(|(key, _)| *key)
    })
}

/// What the processor would store at a batch end: the pipeline's snapshot with the
/// stage's section after it.
fn snapshot(pipeline: &Pipeline, stage: &TriggerStage, via: Via) -> Vec<u8> {
    if via == Via::Written {
        let mut written = Vec::new();
        pipeline.snapshot_copy().encode_to(&mut written).unwrap();
        stage.copy().encode_section_to(&mut written).unwrap();
        return written;
    }
    let mut bytes = pipeline.encode_snapshot().unwrap();
    match via {
        Via::Live => stage.encode_section(&mut bytes).unwrap(),
        Via::Copy => stage.copy().encode_section(&mut bytes).unwrap(),
        Via::KeyOrder => {
            let mut section = Vec::new();
            stage.encode_section(&mut section).unwrap();
            bytes.extend(in_key_order(&section));
        }
        Via::Written => unreachable!("returned above"),
    }
    bytes
}

#[derive(Default)]
struct Plan<'a> {
    /// Batch sizes, in turn (a batch also ends at a set change or a restore).
    splits: &'a [usize],
    /// Sets applied at the batch starting at their offset.
    changes: &'a [(u64, TriggerSet)],
    /// Batch starts where the run snapshots, restores from the bytes and goes on.
    restores: &'a [(u64, Via)],
}

struct Outcome {
    staged: Vec<(u64, StagedOutput)>,
    restored: usize,
    stage: TriggerStage,
}

/// The processor's loop: batches as planned, `after_record` for every record, the batch's
/// deltas and staged outputs taken at its end.
fn run(records: &[LogRecord], set: TriggerSet, plan: &Plan<'_>) -> Outcome {
    let mut pipeline = Pipeline::new(config(), None);
    let mut stage = stage_of(set);
    let mut staged = Vec::new();
    let mut restored = 0;
    let mut sizes = plan.splits.iter().cycle();
    let mut offset = 0usize;
    while offset < records.len() {
        if let Some((_, via)) = plan.restores.iter().find(|(at, _)| *at == offset as u64) {
            let bytes = snapshot(&pipeline, &stage, *via);
            let (state, section) = decode_snapshot_parts(&bytes).unwrap();
            assert!(section.starts_with(&STAGE_MAGIC));
            let before = stage.next_seq();
            pipeline = Pipeline::restore(config(), None, state);
            stage = restore_stage(section).unwrap();
            assert_eq!(stage.next_seq(), before);
            restored += 1;
        }
        for (at, set) in plan.changes {
            if *at == offset as u64 {
                stage.set_triggers(set.clone(), *at).unwrap();
            }
        }
        let mut end = (offset + sizes.next().copied().unwrap_or(1).max(1)).min(records.len());
        let cuts = (plan.changes.iter().map(|c| c.0)).chain(plan.restores.iter().map(|r| r.0));
        for at in cuts {
            if (offset + 1..end).contains(&(at as usize)) {
                end = at as usize;
            }
        }
        for (i, record) in records[offset..end].iter().enumerate() {
            pipeline.process((offset + i) as u64, record);
            stage.after_record(&mut pipeline, record);
        }
        stage.take_batch_deltas(&mut pipeline);
        staged.extend(stage.take_staged());
        offset = end;
    }
    Outcome {
        staged,
        restored,
        stage,
    }
}

/// That a run decided something of every kind: segments firing and recovering, users
/// selected by a segment, carts, tags and the feed; and numbered 0, 1, 2, ….
fn assert_exercised(staged: &[(u64, StagedOutput)]) {
    let seqs: Vec<u64> = staged.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..staged.len() as u64).collect::<Vec<_>>());
    let count = |f: &dyn Fn(&StagedOutput) -> bool| staged.iter().filter(|(_, o)| f(o)).count();
    let signal =
        |s: SegmentSignal| move |o: &StagedOutput| o.signal.as_ref().is_some_and(|n| n.signal == s);
    let firing = count(&signal(SegmentSignal::Firing));
    let recovered = count(&signal(SegmentSignal::Recovered));
    let segment_users = count(&|o| o.kind == "segment_cpa" && o.user.is_some());
    let carts = count(&|o| o.kind == "abandoned_cart");
    let tags = count(&|o| o.kind == "tag");
    let feed = count(&|o| o.kind == "conversion_feed");
    let counts = (firing, recovered, segment_users, carts, tags, feed);
    assert!(
        firing >= 3 && recovered >= 1 && segment_users >= 3 && carts >= 3 && tags >= 3 && feed >= 3,
        "(firing, recovered, segment users, carts, tags, feed) = {counts:?}"
    );
}

const RECORDS: usize = 12_000;

/// (1.) Batch boundaries do not matter: the same (seq, output) sequence for every split.
#[test]
fn batch_boundaries_do_not_change_the_staged_outputs() {
    let records = traffic(7, RECORDS);
    let first = run(
        &records,
        set_a(),
        &Plan {
            splits: &[1],
            ..Plan::default()
        },
    );
    assert_exercised(&first.staged);
    for splits in [
        vec![records.len()],
        vec![1_000],
        vec![7, 333, 1, 2_500],
        vec![59],
    ] {
        let other = run(
            &records,
            set_a(),
            &Plan {
                splits: &splits,
                ..Plan::default()
            },
        );
        assert_eq!(other.staged.len(), first.staged.len(), "splits {splits:?}");
        assert!(other.staged == first.staged, "splits {splits:?}");
        assert_eq!(
            other.stage.stats(),
            first.stage.stats(),
            "splits {splits:?}"
        );
    }
}

/// (2.) A snapshot (pipeline + section) at any batch end, restored, goes on as the run
/// that was never interrupted; through the live stage and through its copy.
#[test]
fn a_restored_stage_continues_identically() {
    let records = traffic(11, RECORDS);
    let whole = run(
        &records,
        set_a(),
        &Plan {
            splits: &[1_000],
            ..Plan::default()
        },
    );
    assert_exercised(&whole.staged);
    // A restore at every batch end, from the live stage.
    let every: Vec<(u64, Via)> = (1..12).map(|k| (k * 1_000, Via::Live)).collect();
    let live = run(
        &records,
        set_a(),
        &Plan {
            splits: &[1_000],
            restores: &every,
            ..Plan::default()
        },
    );
    assert_eq!(live.restored, every.len());
    assert!(live.staged == whole.staged);
    // Other boundaries, through the copy for the snapshot thread, encoded into a vector
    // or written out.
    let some = [
        (777, Via::Copy),
        (3_000, Via::Written),
        (4_000, Via::KeyOrder),
        (5_100, Via::Copy),
        (8_123, Via::Live),
        (10_500, Via::KeyOrder),
    ];
    let copied = run(
        &records,
        set_a(),
        &Plan {
            splits: &[777, 1_500],
            restores: &some,
            ..Plan::default()
        },
    );
    assert_eq!(copied.restored, some.len());
    assert!(copied.staged == whole.staged);
    assert_eq!(copied.stage.stats(), whole.stage.stats());
}

/// Visits that can select no one bring consent, withdrawn and given again at random:
/// the hints carry it (sparing the place's read), and a restore at every batch end (no
/// hints) decides the same as the run that kept them. The consent they bring changes what
/// is sent (the users' last word counts), so the hints are exercised.
#[test]
fn consent_brought_by_visits_decides_the_same_with_hints_or_without() {
    let plain = traffic(13, RECORDS);
    let mut records = plain.clone();
    let mut flipped = 0;
    for (i, record) in records.iter_mut().enumerate() {
        if let LogRecord::Event(event) = record
            && event.kind == EventKind::PageView
            && event.product_id.is_none()
        {
            let roll = xxhash_rust::xxh3::xxh3_64(&(i as u64).to_le_bytes());
            event.consent.marketing = Some(!roll.is_multiple_of(3));
            flipped += usize::from(roll.is_multiple_of(3));
        }
    }
    assert!(flipped > 100, "{flipped}");
    let plan = |restores| Plan {
        splits: &[1_000],
        restores,
        ..Plan::default()
    };
    let whole = run(&records, set_a(), &plan(&[]));
    assert_exercised(&whole.staged);
    let every: Vec<(u64, Via)> = (1..12).map(|k| (k * 1_000, Via::Live)).collect();
    let restored = run(&records, set_a(), &plan(&every));
    assert_eq!(restored.restored, every.len());
    assert!(restored.staged == whole.staged);
    assert_eq!(restored.stage.stats(), whole.stage.stats());
    let without = run(&plain, set_a(), &plan(&[]));
    assert!(
        without.staged != whole.staged,
        "the visits' consent changed nothing sent"
    );
}

/// The section of a restored stage is the section it was restored from, and a copy's
/// section is the live one's: one encoder, nothing lost or added by the round trip.
#[test]
fn a_section_reads_back_to_the_same_bytes() {
    let records = traffic(5, 6_000);
    let outcome = run(
        &records,
        set_a(),
        &Plan {
            splits: &[6_000],
            ..Plan::default()
        },
    );
    let stage = outcome.stage;
    assert!(stage.stats().users > 100 && stage.stats().texts > 10);
    // Users listed for a segment, found by their places here and by pseudonym once
    // restored (below): both read back to the same bytes.
    assert!(stage.engine().state().candidates.users() > 10);
    let mut live = Vec::new();
    stage.encode_section(&mut live).unwrap();
    let mut copied = Vec::new();
    stage.copy().encode_section(&mut copied).unwrap();
    assert_eq!(live, copied);
    let mut written = Vec::new();
    stage.copy().encode_section_to(&mut written).unwrap();
    assert!(written == live, "a copy written out as it is encoded");
    let copy = stage.copy();
    assert_eq!(copy.user_bytes(), stage.user_bytes(), "summed by the copy");
    assert!(stage.user_bytes() > 100 * std::mem::size_of::<UserPseudonym>());
    // Copies made into an earlier copy's memory: of a smaller state, then of this one.
    let smaller = run(
        &records[..1_500],
        set_a(),
        &Plan {
            splits: &[1_500],
            ..Plan::default()
        },
    )
    .stage;
    assert!(smaller.stats().users < stage.stats().users);
    let mut smaller_live = Vec::new();
    smaller.encode_section(&mut smaller_live).unwrap();
    let into_larger = smaller.copy_reusing(Some(stage.copy()));
    let mut bytes = Vec::new();
    into_larger.encode_section(&mut bytes).unwrap();
    assert!(bytes == smaller_live, "a copy into a larger copy's memory");
    let into_smaller = stage.copy_reusing(Some(into_larger));
    bytes.clear();
    into_smaller.encode_section(&mut bytes).unwrap();
    assert!(bytes == live, "a copy into a smaller copy's memory");
    let restored = restore_stage(&live).unwrap();
    let mut again = Vec::new();
    restored.encode_section(&mut again).unwrap();
    assert_eq!(again, live);
    assert_eq!(restored.set(), stage.set());
    assert_eq!(restored.stats(), stage.stats());
    // The rows are the whole state: every user and text, as `encode_whole` lists them
    // (in key order; the section by place).
    let (_, rows) = stage.engine().state().encode_whole().unwrap();
    let users = rows.iter().filter(|(k, _)| *k < TEXT_ROWS).count();
    assert_eq!(users, stage.stats().users);
    assert_eq!(rows.len() - users, stage.stats().texts);
    let mut by_place = section_rows(&live);
    by_place.sort_unstable();
    assert!(by_place == rows, "the section's rows are encode_whole's");
}

/// The (key, row) pairs of a section, as it lists them.
fn section_rows(section: &[u8]) -> Vec<(u64, Vec<u8>)> {
    (parts_of(section).rows.iter())
        .map(|&(key, row)| (key, row.to_vec()))
        .collect()
}

/// A section of format 2 reads its rows in any order, each key once, its users taking
/// places in the order given (so it encodes them in that order again); format 1, in key
/// order, still reads; a key twice, or format 1 out of key order, is refused.
#[test]
fn rows_by_place_read_in_any_order_each_key_once() {
    let records = traffic(5, 6_000);
    let stage = run(
        &records,
        set_a(),
        &Plan {
            splits: &[6_000],
            ..Plan::default()
        },
    )
    .stage;
    let mut live = Vec::new();
    stage.encode_section(&mut live).unwrap();
    let rows = section_rows(&live);
    let users = stage.stats().users;
    assert!(users > 100);
    // Reversed: restores, and lists its users in the reversed order.
    let reversed = rewritten(&live, STAGE_FORMAT, |rows| rows[..users].reverse());
    let restored = restore_stage(&reversed).unwrap();
    assert_eq!(restored.stats(), stage.stats());
    let mut again = Vec::new();
    restored.encode_section(&mut again).unwrap();
    assert!(
        again == reversed,
        "the users keep the order they were read in"
    );
    // Format 1: restores to the same state, in key order.
    let old = in_key_order(&live);
    let restored = restore_stage(&old).unwrap();
    assert_eq!(restored.stats(), stage.stats());
    let mut again = Vec::new();
    restored.encode_section(&mut again).unwrap();
    let mut sorted = rows.clone();
    sorted.sort_unstable();
    assert!(section_rows(&again) == sorted, "read in key order");
    // Format 1 out of key order.
    let shuffled = rewritten(&live, STAGE_FORMAT_KEY_ORDER, |rows| {
        rows.sort_unstable_by_key(|(key, _)| std::cmp::Reverse(*key))
    });
    assert!(matches!(
        restore_stage(&shuffled),
        Err(StageError::State(ActStateError::Body(m))) if m.contains("key order")
    ));
    // A user's row twice, and two users under one key (the last user's row given the
    // first's key).
    let twice = rewritten(&live, STAGE_FORMAT, |rows| rows.insert(users, rows[0]));
    assert!(restore_stage(&twice).is_err());
    let first_key = rows[0].0;
    let one_key = rewritten(&live, STAGE_FORMAT, |rows| rows[users - 1].0 = first_key);
    assert!(matches!(
        restore_stage(&one_key),
        Err(StageError::State(ActStateError::Body(m))) if m.contains("given twice")
    ));
}

/// (3.) A set applied at an offset: the same outputs for other splits, and from a snapshot
/// taken before the offset with the set applied there again; the set's own triggers act
/// after it and the removed one does not.
#[test]
fn a_set_applied_at_an_offset_decides_the_same_whatever_the_batches() {
    let records = traffic(13, RECORDS);
    let at = 5_000;
    let changes = [(at, set_b())];
    let first = run(
        &records,
        set_a(),
        &Plan {
            splits: &[1_000],
            changes: &changes,
            ..Plan::default()
        },
    );
    assert_exercised(&first.staged);
    assert_eq!(first.stage.set(), &set_b());
    assert_eq!(first.stage.set_offset(), at);
    assert_eq!(first.stage.set_bytes(), set_b().encode().as_slice());
    let outputs_of = |name: &str| {
        (first.staged.iter())
            .filter(|(_, o)| o.trigger == name)
            .map(|(_, o)| o.at_ms)
            .collect::<Vec<_>>()
    };
    // The removed trigger decided before the change and not after; the new one after.
    let new_ones = outputs_of("cpa_campaign");
    let removed = outputs_of("cpa_channel");
    assert!(!new_ones.is_empty() && !removed.is_empty());
    let change_seq = first
        .staged
        .iter()
        .position(|(_, o)| o.trigger == "cpa_campaign")
        .unwrap();
    assert!(
        first.staged[change_seq..]
            .iter()
            .all(|(_, o)| o.trigger != "cpa_channel")
    );
    let other = run(
        &records,
        set_a(),
        &Plan {
            splits: &[7, 333, 1, 2_500],
            changes: &changes,
            ..Plan::default()
        },
    );
    assert!(other.staged == first.staged);
    // From a snapshot before the change (the stage holds set A), B applied at its offset
    // again; and from one after it (the section carries B and its offset).
    let restores = [(4_000, Via::Live), (7_000, Via::Copy)];
    let replayed = run(
        &records,
        set_a(),
        &Plan {
            splits: &[1_000],
            changes: &changes,
            restores: &restores,
        },
    );
    assert_eq!(replayed.restored, 2);
    assert!(replayed.staged == first.staged);
    assert_eq!(replayed.stage.set_offset(), at);
    // The same set again later changes nothing, not even its offset.
    let mut stage = replayed.stage;
    stage.set_triggers(set_b(), 11_000).unwrap();
    assert_eq!(stage.set_offset(), at);
}

/// A set the window cannot keep is refused and the old one stays in force.
#[test]
fn a_refused_set_leaves_the_old_one_in_force() {
    let mut stage = stage_of(set_a());
    let mut raw = set_a().raw;
    raw[0].group_by = vec!["device".into()];
    // The trigger check refuses a CPA by device already (as recorded, it does not check).
    let refused = TriggerSet {
        raw: raw.clone(),
        triggers: set_a().triggers,
    };
    assert!(matches!(
        stage.set_triggers(refused, 10),
        Err(StageError::Triggers(_))
    ));
    assert_eq!(stage.set(), &set_a());
    assert_eq!(stage.set_offset(), 0);
}

/// (4.) The recorded forms round trip; other versions, cut and damaged bytes are errors.
#[test]
fn a_trigger_set_round_trips_and_is_checked_again() {
    let set = set_a();
    let bytes = set.encode();
    assert_eq!(bytes[0], TRIGGER_SET_FORMAT);
    assert_eq!(bytes, set_a().encode(), "equal sets, equal bytes");
    let back = TriggerSet::decode(&bytes).unwrap();
    assert_eq!(back.triggers, set.triggers);
    assert_eq!(back, set);
    // The TOML's shape: keys left out stay out.
    let json: serde_json::Value = serde_json::from_slice(&bytes[1..]).unwrap();
    assert_eq!(
        json[2],
        serde_json::json!({"name": "cart", "kind": "abandoned_cart", "after": "10m", "notify": ["crm"]})
    );
    assert_eq!(
        TriggerSet::decode(&TriggerSet::empty().encode()).unwrap(),
        TriggerSet::empty()
    );
    // Re-checked: a recorded trigger that does not check is refused, by name and key.
    let mut raw = set.raw;
    raw[1].threshold = Some(-1.0);
    let mut bad = vec![TRIGGER_SET_FORMAT];
    bad.extend(serde_json::to_vec(&raw).unwrap());
    match TriggerSet::decode(&bad) {
        Err(StageError::Triggers(e)) => assert_eq!(
            (e.trigger.as_str(), e.key.as_str()),
            ("cpa_channel", "threshold")
        ),
        other => panic!("{other:?}"),
    }
    let mut future = bytes.clone();
    future[0] = 2;
    assert_eq!(
        TriggerSet::decode(&future),
        Err(StageError::Version {
            what: "recorded trigger set",
            found: 2,
            reads: TRIGGER_SET_FORMAT
        })
    );
    assert!(matches!(
        TriggerSet::decode(&[]),
        Err(StageError::Empty { .. })
    ));
    for cut in 1..bytes.len() {
        assert!(TriggerSet::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut unknown_key = vec![TRIGGER_SET_FORMAT];
    unknown_key
        .extend(br#"[{"name":"a","kind":"conversion_feed","notify":["crm"],"colour":"red"}]"#);
    assert!(matches!(
        TriggerSet::decode(&unknown_key),
        Err(StageError::Body { .. })
    ));
}

#[test]
fn staged_outputs_round_trip() {
    let records = traffic(3, 6_000);
    let outcome = run(
        &records,
        set_a(),
        &Plan {
            splits: &[2_000],
            ..Plan::default()
        },
    );
    assert!(outcome.staged.len() > 10);
    let mut with_signal = 0;
    let (mut bytes_now, mut bytes_as_json) = (0, 0);
    for (_, output) in &outcome.staged {
        let bytes = output.encode().unwrap();
        assert_eq!(bytes[0], STAGED_OUTPUT_FORMAT);
        assert_eq!(&StagedOutput::decode(&bytes).unwrap(), output);
        // What builds before wrote (JSON) still reads as the same output.
        let json = [
            &[STAGED_OUTPUT_JSON_FORMAT][..],
            &serde_json::to_vec(output).unwrap(),
        ]
        .concat();
        assert_eq!(&StagedOutput::decode(&json).unwrap(), output);
        // Bytes past the end are refused, not ignored.
        let longer = [&bytes[..], &[0]].concat();
        assert!(StagedOutput::decode(&longer).is_err());
        (bytes_now, bytes_as_json) = (bytes_now + bytes.len(), bytes_as_json + json.len());
        with_signal += usize::from(output.signal.is_some());
    }
    assert!(with_signal > 0);
    // The reason for the format: the store writes every output the processor stages.
    assert!(
        bytes_now * 2 < bytes_as_json,
        "{bytes_now} bytes against {bytes_as_json} as JSON"
    );
    // The push is what the router sends: the one event, the segment as labelled.
    let (_, labelled) = (outcome.staged.iter())
        .find(|(_, o)| o.trigger == "cpa_channel_campaign" && o.event.is_some())
        .expect("a user selected by the labelled segment trigger");
    let push = labelled.push();
    assert_eq!(push.segment.as_deref(), Some("costi > 1€"));
    assert_eq!(push.events, vec![labelled.event.clone().unwrap()]);
    assert_eq!(push.group, labelled.group);
    let (_, unlabelled) = (outcome.staged.iter())
        .find(|(_, o)| o.trigger == "cpa_channel")
        .expect("an output of the unlabelled segment trigger");
    assert_eq!(
        unlabelled.segment.as_deref(),
        Some(unlabelled.group[0].1.as_str())
    );
    let (_, feed) = (outcome.staged.iter())
        .find(|(_, o)| o.kind == "conversion_feed")
        .unwrap();
    assert_eq!(feed.destinations, ["crm", "webhook"]);
    assert_eq!(feed.segment, None);

    let bytes = outcome.staged[0].1.encode().unwrap();
    let mut future = bytes.clone();
    future[0] = 9;
    assert!(matches!(
        StagedOutput::decode(&future),
        Err(StageError::Version { found: 9, .. })
    ));
    assert!(matches!(
        StagedOutput::decode(&[]),
        Err(StageError::Empty { .. })
    ));
    assert!(StagedOutput::decode(&bytes[..bytes.len() - 1]).is_err());
}

/// A number that is not finite is refused on reading, as JSON's `null` for one was: no
/// output is made with one, so such bytes are damage.
#[test]
fn a_staged_output_with_a_number_not_finite_is_refused() {
    let output = StagedOutput {
        trigger: "feed".into(),
        kind: "conversion_feed".into(),
        segment: None,
        group: vec![],
        user: None,
        event: Some(crate::act::push::PushEvent {
            user: "ab".into(),
            kind: "purchase".into(),
            value: Some(10.0),
            at_ms: 1,
            product_id: Some("p".into()),
            product_ids: vec!["p".into(), "q".into()],
            cart_value: Some(12.5),
            tag: Some("vip".into()),
        }),
        signal: None,
        at_ms: 1,
        destinations: vec!["push".into()],
    };
    assert_eq!(
        StagedOutput::decode(&output.encode().unwrap()).unwrap(),
        output
    );
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut damaged = output.clone();
        if let Some(event) = damaged.event.as_mut() {
            event.cart_value = Some(bad);
        }
        let error = StagedOutput::decode(&damaged.encode().unwrap()).unwrap_err();
        assert!(error.to_string().contains("not finite"), "{error}");
    }
}

/// Regression (fuzz target `trigger_stage`): serde_json read some floats it had written one
/// unit in the last place off (its fast parser), so a staged CPA came back changed; the
/// workspace enables its `float_roundtrip` parser.
#[test]
fn a_staged_cpa_reads_back_exactly() {
    for cpa in [4.444444444444445e98, 0.1 + 0.2, 1.0 / 3.0, f64::MAX, 5e-324] {
        let mut output = StagedOutput::decode(
            &[&[STAGED_OUTPUT_JSON_FORMAT][..], br#"{"trigger":"t","kind":"segment_cpa","segment":null,"group":[],"user":null,"event":null,"signal":{"signal":"firing","cpa":1.0,"threshold":20.0,"at_ms":0},"at_ms":0,"destinations":[]}"#].concat(),
        )
        .unwrap();
        if let Some(signal) = output.signal.as_mut() {
            signal.cpa = Some(cpa);
        }
        let read = StagedOutput::decode(&output.encode().unwrap()).unwrap();
        assert_eq!(
            read.signal.and_then(|s| s.cpa).map(f64::to_bits),
            Some(cpa.to_bits()),
            "{cpa:e}"
        );
    }
}

#[test]
fn bad_sections_are_errors_not_panics() {
    let mut records = traffic(17, 4_000);
    let later = records.split_off(3_000);
    let outcome = run(
        &records,
        set_a(),
        &Plan {
            splits: &[3_000],
            ..Plan::default()
        },
    );
    let mut section = Vec::new();
    outcome.stage.encode_section(&mut section).unwrap();
    assert!(restore_stage(&section).is_ok());
    assert_eq!(restore_stage(&[]).err(), Some(StageError::NotASection));
    assert_eq!(
        restore_stage(b"VDSN\x03").err(),
        Some(StageError::NotASection)
    );
    let mut future = section.clone();
    future[STAGE_MAGIC.len()] = STAGE_FORMAT + 1;
    assert!(matches!(
        restore_stage(&future),
        Err(StageError::Version { found, .. }) if found == STAGE_FORMAT + 1
    ));
    // Every cut is an error (a sample of lengths, and every one near either end).
    let n = section.len();
    let cuts = (0..n.min(64))
        .chain((64..n).step_by(97))
        .chain(n.saturating_sub(64)..n);
    for cut in cuts {
        assert!(
            restore_stage(&section[..cut]).is_err(),
            "cut at {cut} of {n}"
        );
    }
    // A byte more is an error too.
    let mut longer = section.clone();
    longer.push(0);
    assert!(restore_stage(&longer).is_err());
    // Garbage after a good header is an error; damaged bytes give an answer, no panic.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for len in [1, 10, 100, 1_000] {
        let mut garbage = section[..STAGE_MAGIC.len() + 1].to_vec();
        garbage.extend((0..len).map(|_| next() as u8));
        assert!(restore_stage(&garbage).is_err(), "{len} bytes of garbage");
    }
    // A damaged section that still reads (a flipped bit in a time or a count) restores a
    // stage that runs on: decided differently, but no panic.
    let mut read = 0;
    for _ in 0..300 {
        let mut damaged = section.clone();
        let at = STAGE_MAGIC.len() + 1 + (next() as usize) % (n - STAGE_MAGIC.len() - 1);
        damaged[at] ^= 1 << (next() % 8);
        let Ok(mut stage) = restore_stage(&damaged) else {
            continue;
        };
        read += 1;
        if read % 10 == 1 {
            let mut pipeline = Pipeline::new(config(), None);
            for (offset, record) in later.iter().enumerate() {
                pipeline.process(offset as u64, record);
                stage.after_record(&mut pipeline, record);
            }
            stage.take_batch_deltas(&mut pipeline);
            let mut again = Vec::new();
            stage.encode_section(&mut again).unwrap();
        }
    }
    assert!(read > 0, "no damaged section read");
}

/// The snapshot's trailer: `decode_snapshot_parts` gives the bytes after the state;
/// `decode_snapshot` refuses them.
#[test]
fn the_snapshot_carries_the_section_as_its_trailer() {
    let records = traffic(19, 2_000);
    let mut pipeline = Pipeline::new(config(), None);
    let mut stage = stage_of(set_a());
    for (offset, record) in records.iter().enumerate() {
        pipeline.process(offset as u64, record);
        stage.after_record(&mut pipeline, record);
    }
    // Within a batch the section is refused (the window holds early deltas), and `out` is
    // left as it was.
    let mut bytes = pipeline.encode_snapshot().unwrap();
    let alone = bytes.clone();
    assert!(stage.window().mid_batch());
    assert_eq!(
        stage.encode_section(&mut bytes),
        Err(StageError::Window(SegmentWindowError::MidBatch))
    );
    assert_eq!(
        stage.copy().encode_section(&mut bytes),
        Err(StageError::Window(SegmentWindowError::MidBatch))
    );
    assert_eq!(bytes, alone);
    stage.take_batch_deltas(&mut pipeline);
    stage.encode_section(&mut bytes).unwrap();
    let (state, rest) = decode_snapshot_parts(&bytes).unwrap();
    assert_eq!(rest, &bytes[alone.len()..]);
    assert_eq!(state.next_offset, records.len() as u64);
    assert!(matches!(
        decode_snapshot(&bytes),
        Err(SnapshotError::Body(_))
    ));
    let (_, nothing) = decode_snapshot_parts(&alone).unwrap();
    assert!(nothing.is_empty());
    assert!(decode_snapshot(&alone).is_ok());
}

/// The stage can move to the processor's thread, its copy to the snapshot thread.
#[test]
fn the_stage_and_its_copy_are_send() {
    fn send<T: Send + 'static>() {}
    send::<TriggerStage>();
    send::<StageCopy>();
}

/// Sequence numbers: `skip_to_seq` only moves them on.
#[test]
fn skip_to_seq_never_goes_back() {
    let mut stage = stage_of(set_a());
    stage.skip_to_seq(40);
    assert_eq!(stage.next_seq(), 40);
    stage.skip_to_seq(10);
    assert_eq!(stage.next_seq(), 40);
}

/// Without change tracking the engine decides the same and records no rows.
#[test]
fn change_tracking_off_decides_the_same() {
    let records = traffic(23, 4_000);
    let set = set_a();
    let mut with = Engine::new(
        set.triggers.clone(),
        config().conversion_types,
        ActState::default(),
    )
    .with_enrichment(config().enrich);
    let mut without = Engine::new(set.triggers, config().conversion_types, ActState::default())
        .with_enrichment(config().enrich)
        .without_change_tracking();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut max = i64::MIN;
    for (i, record) in records.iter().enumerate() {
        if let LogRecord::Event(e) = record {
            max = max.max(e.ts.0);
            with.observe(e, &mut a);
            without.observe(e, &mut b);
        }
        if i % 500 == 499 {
            with.advance(max - 5_000, &mut a);
            without.advance(max - 5_000, &mut b);
        }
    }
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_eq!(with.state(), without.state());
    assert!(!with.take_changes().unwrap().users.is_empty());
    let changes = without.take_changes().unwrap();
    assert!(changes.users.is_empty());
    assert_eq!(changes.globals, with.state().encode_globals().unwrap());
}

// The stage observes events with the pipeline's verdicts (`Engine::observe_judged`).

const T0: i64 = 1_764_928_800_000; // 2025-12-05T10:00:00Z, a minute's start
const SECOND: i64 = 1_000;

fn shopper(n: u8, kind: EventKind, ts: i64) -> crate::record::StoredEvent {
    crate::record::StoredEvent {
        channel: Some("social".into()),
        campaign: Some("saldi".into()),
        device: Some("mobile".into()),
        region: Some("Lombardia".into()),
        event_id: Some(format!("e-{n}-{ts}-{kind:?}")),
        consent: crate::record::Consent {
            analytics: None,
            marketing: Some(true),
        },
        value: Some(40.0),
        ..crate::record::StoredEvent::bare(UserPseudonym([n; 16]), kind, crate::time::EventTime(ts))
    }
}

/// Runs `events` through a pipeline (of `config`) and a stage of `set`, one record each,
/// in order; gives the stage's outputs as (trigger, user's first byte) and the stage.
fn judged_run(
    config: &PipelineConfig,
    set: TriggerSet,
    events: Vec<crate::record::StoredEvent>,
) -> (Vec<(String, u8)>, TriggerStage) {
    let mut pipeline = Pipeline::new(config.clone(), None);
    let mut stage = TriggerStage::beside(set, config).unwrap();
    for (offset, event) in events.into_iter().enumerate() {
        let record = LogRecord::Event(event);
        pipeline.process(offset as u64, &record);
        stage.after_record(&mut pipeline, &record);
    }
    let outputs = stage
        .take_staged()
        .into_iter()
        .map(|(_, o)| {
            let user = o.user.map_or(0, |u| u.0[0]);
            (o.trigger, user)
        })
        .collect();
    (outputs, stage)
}

fn feed() -> TriggerSet {
    checked(vec![trigger("feed", "conversion_feed")])
}

#[test]
fn a_duplicate_the_pipeline_drops_is_not_sent_again() {
    let purchase = shopper(1, EventKind::Purchase, T0);
    let mut resent = purchase.clone();
    resent.ts = crate::time::EventTime(T0 + 30 * SECOND); // same event id, later
    let mut near = shopper(1, EventKind::Purchase, T0 + 50);
    near.event_id = Some("another id".into()); // same user and type within 100 ms
    let (outputs, _) = judged_run(&config(), feed(), vec![purchase, resent, near]);
    assert_eq!(outputs, vec![("feed".to_string(), 1)]);
}

#[test]
fn a_conversion_the_pipeline_flags_is_not_sent_and_its_rules_are_the_pipeline_s() {
    let events = || {
        vec![
            shopper(1, EventKind::Registration, T0),
            shopper(1, EventKind::Purchase, T0 + 2 * SECOND),
            shopper(2, EventKind::Registration, T0),
            shopper(2, EventKind::Purchase, T0 + 9 * SECOND),
        ]
    };
    // The default rule: a checkout within 5 s of a registration is flagged.
    let (outputs, _) = judged_run(&config(), feed(), events());
    assert_eq!(outputs, vec![("feed".to_string(), 2)]);
    // Without the rule, both are clean: the stage follows the pipeline's settings.
    let no_rules = PipelineConfig {
        sequence_rules: Vec::new(),
        ..config()
    };
    let (outputs, _) = judged_run(&no_rules, feed(), events());
    assert_eq!(
        outputs,
        vec![("feed".to_string(), 1), ("feed".to_string(), 2)]
    );
}

#[test]
fn a_visit_that_can_select_no_one_leaves_no_user() {
    let set = checked(vec![
        segment("cpa", &["channel", "campaign"], 1.0, "10m"),
        trigger("feed", "conversion_feed"),
    ]);
    let mut product = shopper(3, EventKind::PageView, T0 + 2 * SECOND);
    product.product_id = Some("divano".into());
    let events = vec![
        shopper(1, EventKind::PageView, T0), // a bounce: no product
        shopper(2, EventKind::Registration, T0 + SECOND), // nothing to select
        product,                             // an intent
        shopper(4, EventKind::Purchase, T0 + 3 * SECOND), // a clean conversion
    ];
    let (_, stage) = judged_run(&config(), set, events);
    let users = &stage.engine().state().users;
    let held: Vec<u8> = {
        let mut held: Vec<u8> = users.keys().map(|u| u.0[0]).collect();
        held.sort_unstable();
        held
    };
    assert_eq!(held, vec![3, 4]);
    // A later visit of a held user brings only its consent: taken in (here withdrawn),
    // while the user's last seen time stays its intent's (a visit keeps no one longer).
    let mut again = shopper(3, EventKind::PageView, T0 + 20 * SECOND);
    again.event_id = Some("later".into());
    again.consent.marketing = Some(false);
    let (_, stage) = judged_run(
        &config(),
        checked(vec![segment("cpa", &["channel", "campaign"], 1.0, "10m")]),
        vec![
            {
                let mut p = shopper(3, EventKind::PageView, T0);
                p.product_id = Some("divano".into());
                p
            },
            again,
        ],
    );
    let facts = &stage.engine().state().users[&UserPseudonym([3; 16])];
    assert_eq!(facts.last_seen_ms, T0);
    assert!(!facts.marketing);
    assert!(facts.event_ids().is_empty() && facts.touch().is_none());
    // Nothing but the facts' own bytes: no box for what only the engine's own judging
    // fills, no list spilled (one intent).
    assert_eq!(
        facts.approximate_bytes(),
        std::mem::size_of::<crate::act::engine::UserFacts>()
    );
}

#[test]
fn an_intent_is_placed_where_the_pipeline_counts_it() {
    // A direct product view in the session a social campaign started: counted (and so
    // placed) under social / saldi, as the KPIs count the session.
    let mut direct = shopper(1, EventKind::PageView, T0 + 10 * SECOND);
    direct.channel = None;
    direct.campaign = None;
    direct.product_id = Some("divano".into());
    let set = checked(vec![segment("cpa", &["channel", "campaign"], 1.0, "10m")]);
    let (_, stage) = judged_run(
        &config(),
        set,
        vec![shopper(1, EventKind::PageView, T0), direct],
    );
    let state = stage.engine().state();
    let facts = &state.users[&UserPseudonym([1; 16])];
    assert_eq!(facts.intents.len(), 1);
    let [channel, campaign] = facts.intents[0].dims;
    assert_eq!(state.texts.get(channel), Some("social"));
    assert_eq!(state.texts.get(campaign), Some("saldi"));
}

/// The engine finds the users it makes by the hint the pipeline keeps for them; a user the
/// pipeline lets go of (its session over) while the engine still holds it (here for its
/// purchase count and the tag's cooldown) is found by its pseudonym when it comes back,
/// not made twice: its second purchase is not a first one.
#[test]
fn a_user_the_pipeline_lets_go_of_is_found_when_it_comes_back() {
    let set = checked(vec![RawTrigger {
        tag: Some("customer".into()),
        on: Some("first_purchase".into()),
        cooldown: Some("1d".into()),
        ..trigger("first", "tag")
    }]);
    let config = config();
    let mut pipeline = Pipeline::new(config.clone(), None);
    let mut stage = TriggerStage::beside(set, &config).unwrap();
    let anna = UserPseudonym([1; 16]);
    let events = [
        shopper(1, EventKind::Purchase, T0),
        // Another user's events move the watermark hours on: Anna's session is over.
        shopper(2, EventKind::Purchase, T0 + 3 * 3_600 * SECOND),
        shopper(2, EventKind::Purchase, T0 + 4 * 3_600 * SECOND),
        shopper(1, EventKind::Purchase, T0 + 4 * 3_600 * SECOND + SECOND),
    ];
    let mut let_go = Vec::new();
    for (offset, event) in events.into_iter().enumerate() {
        let record = LogRecord::Event(event);
        pipeline.process(offset as u64, &record);
        let_go.extend(pipeline.let_go_hints().iter().map(|(u, _)| *u));
        stage.after_record(&mut pipeline, &record);
        let held = stage
            .engine()
            .state()
            .users
            .keys()
            .filter(|u| **u == anna)
            .count();
        assert_eq!(held, 1, "Anna held once, after record {offset}");
    }
    assert!(
        let_go.contains(&anna),
        "the pipeline let go of Anna: {let_go:?}"
    );
    let state = stage.engine().state();
    assert!(
        state.users.position(&anna).is_some(),
        "found by pseudonym now"
    );
    assert_eq!(state.users.lookup(&anna).map(|f| f.purchases), Some(2));
    let outputs: Vec<(String, u8)> = (stage.take_staged().into_iter())
        .map(|(_, o)| (o.trigger, o.user.map_or(0, |u| u.0[0])))
        .collect();
    assert_eq!(
        outputs,
        vec![("first".to_string(), 1), ("first".to_string(), 2)],
        "one first purchase each"
    );
}
