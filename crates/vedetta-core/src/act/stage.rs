//! The trigger stage (issue 12, stage 3 of `docs/triggers.md`): the trigger engine run by
//! the processor, record by record, beside the pipeline, instead of by a consumer that
//! reads the log a second time.
//!
//! ```text
//! for each record:  Pipeline::process ─► TriggerStage::after_record
//!                     observe the event ─► judge each minute end the watermark reached
//!                     (SegmentWindow's totals) ─► advance(watermark) ─► outputs, numbered
//! end of the batch: TriggerStage::take_batch_deltas ─► the KPI store
//!                   TriggerStage::take_staged     ─► act_outputs (seq → StagedOutput), same commit
//! a new set:        TriggerStage::set_triggers(set, the batch's first offset)
//! a snapshot:       Pipeline::encode_snapshot + TriggerStage::encode_section, one value
//! ```
//!
//! **The promise.** Everything the stage decides, and the sequence number of each output,
//! is a function of the records from its snapshot on and of the trigger sets applied at
//! their offsets: whatever the batch boundaries, whether it ran through or was restored
//! from a snapshot between batches, it stages the same `(seq, StagedOutput)` sequence. A
//! replay from a snapshot therefore recomputes the outputs from the snapshot's sequence
//! number on, and the processor drops those below the store's next sequence
//! ([`TriggerStage::skip_to_seq`] is for a store that is further on).
//! That holds because each step hangs on a record, not on a batch: the event is observed
//! as it is processed; a minute end is judged right after the record whose watermark
//! first reaches it, on that record's and every earlier record's deltas
//! ([`SegmentWindow`]'s promise); `advance` runs at that same record.
//!
//! **The set in force** is the one its recorded bytes decode to ([`TriggerSet::encode`],
//! [`TriggerSet::decode`]): the stage decodes what it is given once, so a live run and a
//! replay of the recorded bytes run the same checked triggers (JSON reads some floats back
//! one unit in the last place off; decoded once, they are what a replay reads). A set
//! equal to the one in force changes nothing, its offset included.
//!
//! **Outputs are self-contained** ([`StagedOutput`]): the trigger's name, kind, segment
//! label and destinations are copied in when the output is decided, since the set may
//! change before the router reads it.
//!
//! **The snapshot section** follows the pipeline's snapshot bytes in the same value
//! ([`crate::pipeline::snapshot::decode_snapshot_parts`]):
//!
//! ```text
//! [b"VDTG"][STAGE_FORMAT = 2][postcard: set offset u64, set bytes, next seq u64,
//!                             engine globals, rows [(key u64, row bytes)], window bytes]
//! ```
//!
//! The set bytes are [`TriggerSet::encode`] (`[TRIGGER_SET_FORMAT = 1][JSON]`), the
//! globals [`ActState::encode_globals`], the rows every user's and text's row as the
//! consumer's per-user store writes them, users' in the order of their places
//! ([`ActState::each_row_by_place`], read back by [`ActState::decode_by_place`]: each key
//! once, the users taking places in that order, so a restored stage encodes the same
//! bytes; format 1, still read, had them in key order, which the snapshot thread paid for
//! in reads at random), the window bytes [`SegmentWindow::encode`]: each part
//! carries its own format byte, so a part changes its version without this one. Bytes
//! that are not a section, of another version, cut short or damaged are an error, never a
//! panic. Taken between batches only (the window refuses within one).
//!
//! **Cost.** The engine runs without change tracking
//! ([`Engine::without_change_tracking`]): its state is stored whole with each snapshot, so
//! recording which users a step changed (for per-user rows) would be wasted work.

use super::engine::{ActState, ActStateError, Engine, FlatRows, Judged, Output};
use super::push::{Push, PushEvent, SegmentSignal, SignalNotice};
use super::segment_window::{SegmentWindow, SegmentWindowError, SegmentWindowState};
use super::triggers::{RawTrigger, Trigger, TriggerError, check_triggers};
use crate::encoding::WriteError;
use crate::enrich::EnrichConfig;
use crate::pipeline::kpi::KpiDeltas;
use crate::pipeline::{EventVerdict, Pipeline, PipelineConfig};
use crate::record::{EventKind, LogRecord, UserPseudonym};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[cfg(test)]
mod tests;

/// The format byte of an encoded [`TriggerSet`].
pub const TRIGGER_SET_FORMAT: u8 = 1;
/// The format byte of an encoded [`StagedOutput`]: postcard ([`StagedOutputWire`]).
pub const STAGED_OUTPUT_FORMAT: u8 = 2;
/// The format byte of a [`StagedOutput`] as JSON, which builds before 2026-12-06 wrote:
/// still read (a store may hold outputs staged and not yet routed when it was upgraded).
pub const STAGED_OUTPUT_JSON_FORMAT: u8 = 1;
/// The first bytes of the stage's snapshot section.
pub const STAGE_MAGIC: [u8; 4] = *b"VDTG";
/// The format of the stage's snapshot section (after [`STAGE_MAGIC`]): 2, its users' rows
/// in the order of their places ([`ActState::each_row_by_place`]).
pub const STAGE_FORMAT: u8 = 2;
/// The section's format with its rows in key order ([`ActState::each_row`]), written
/// before 2026-12-07: still read (a store's snapshot from an earlier build).
pub const STAGE_FORMAT_KEY_ORDER: u8 = 1;

/// Why the stage cannot be made, restored or given a set, or bytes do not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StageError {
    #[error("{what} of format {found}; this build reads format {reads}")]
    Version {
        what: &'static str,
        found: u8,
        reads: u8,
    },
    #[error("empty {what}")]
    Empty { what: &'static str },
    #[error("not a trigger stage section: the {} bytes {STAGE_MAGIC:?} are missing", STAGE_MAGIC.len())]
    NotASection,
    #[error("{what} does not decode: {message}")]
    Body { what: &'static str, message: String },
    #[error("the recorded trigger set does not check: {0}")]
    Triggers(#[from] TriggerError),
    #[error(transparent)]
    Window(#[from] SegmentWindowError),
    #[error(transparent)]
    State(#[from] ActStateError),
}

fn body_error(what: &'static str) -> impl Fn(String) -> StageError {
    move |message| StageError::Body { what, message }
}

/// `body` read whole as postcard: bytes after the value are an error ("{n} bytes
/// {after}"), not ignored.
fn postcard_whole<'a, T: Deserialize<'a>>(
    what: &'static str,
    body: &'a [u8],
    after: &str,
) -> Result<T, StageError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| body_error(what)(e.to_string()))?;
    if !rest.is_empty() {
        return Err(body_error(what)(format!("{} bytes {after}", rest.len())));
    }
    Ok(value)
}

/// `[format][rest]` of `bytes`, refusing another format.
fn versioned<'a>(what: &'static str, reads: u8, bytes: &'a [u8]) -> Result<&'a [u8], StageError> {
    match bytes.split_first() {
        None => Err(StageError::Empty { what }),
        Some((&found, rest)) if found == reads => Ok(rest),
        Some((&found, _)) => Err(StageError::Version { what, found, reads }),
    }
}

/// A checked trigger set as recorded with the log offset it takes effect at.
#[derive(Clone, Debug, PartialEq)]
pub struct TriggerSet {
    pub raw: Vec<RawTrigger>,
    pub triggers: Vec<Trigger>,
}

impl TriggerSet {
    pub fn empty() -> Self {
        TriggerSet {
            raw: Vec::new(),
            triggers: Vec::new(),
        }
    }

    /// `[TRIGGER_SET_FORMAT][JSON of raw]`, keys left out as in the TOML: equal sets give
    /// equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TRIGGER_SET_FORMAT];
        // A list of plain structs of strings and numbers into memory: serializing it does
        // not fail (a non-finite float, which JSON has no word for, is written as null and
        // refused by the check when read back). Were it to, the bytes would be the format
        // byte alone, which does not decode: the set would be refused, never read as
        // another.
        if serde_json::to_writer(&mut out, &self.raw).is_err() {
            out.truncate(1);
        }
        out
    }

    /// Decodes and re-checks the raw triggers with [`check_triggers`], taking as
    /// destinations the names the triggers themselves notify (they were checked against
    /// the configuration when recorded; its destinations may have changed since).
    pub fn decode(bytes: &[u8]) -> Result<Self, StageError> {
        const WHAT: &str = "recorded trigger set";
        let body = versioned(WHAT, TRIGGER_SET_FORMAT, bytes)?;
        let raw: Vec<RawTrigger> =
            serde_json::from_slice(body).map_err(|e| body_error(WHAT)(e.to_string()))?;
        let destinations: BTreeSet<String> =
            raw.iter().flat_map(|t| t.notify.iter().cloned()).collect();
        let triggers = check_triggers(&raw, &destinations, &destinations)?;
        Ok(TriggerSet { raw, triggers })
    }
}

/// One output of the stage, self-contained for routing (the set may change before it is
/// routed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagedOutput {
    pub trigger: String,
    /// [`Trigger::kind_name`].
    pub kind: String,
    /// The trigger's label, else the group's values joined with " / " (what goes into
    /// `segmento`).
    pub segment: Option<String>,
    /// The segment's dimension values (segment_cpa; empty otherwise).
    pub group: Vec<(String, String)>,
    pub user: Option<UserPseudonym>,
    pub event: Option<PushEvent>,
    pub signal: Option<SignalNotice>,
    /// Event time it was decided at.
    pub at_ms: i64,
    /// The trigger's `notify`.
    pub destinations: Vec<String>,
}

impl StagedOutput {
    /// The output of `trigger` that `output` is.
    fn of(trigger: &Trigger, output: Output) -> Self {
        let segment = trigger.label.clone().or_else(|| {
            (!output.group.is_empty()).then(|| {
                (output.group.iter())
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
        });
        StagedOutput {
            trigger: trigger.name.clone(),
            kind: trigger.kind_name().into(),
            segment,
            group: output.group,
            user: output.user,
            event: output.event,
            signal: output.signal,
            at_ms: output.at_ms,
            destinations: trigger.notify.clone(),
        }
    }

    /// `[STAGED_OUTPUT_FORMAT][postcard]`. The processor encodes every output it stages
    /// (at 100,000 events/s with a conversion feed, thousands a second) and the store
    /// writes them in its commit: as JSON they were ~300 bytes each (a pseudonym alone
    /// an array of sixteen numbers) and their encoding and writing a few percent of the
    /// processor's thread (`perf`, docs/benchmarks.md).
    pub fn encode(&self) -> Result<Vec<u8>, StageError> {
        let wire = StagedOutputWire {
            trigger: self.trigger.as_str(),
            kind: self.kind.as_str(),
            segment: self.segment.as_deref(),
            group: std::borrow::Cow::Borrowed(&self.group),
            user: self.user,
            event: self.event.as_ref().map(PushEventWire::of),
            signal: self
                .signal
                .as_ref()
                .map(|s| (s.signal, s.cpa, s.threshold, s.at_ms)),
            at_ms: self.at_ms,
            destinations: std::borrow::Cow::Borrowed(&self.destinations),
        };
        postcard::to_extend(&wire, vec![STAGED_OUTPUT_FORMAT])
            .map_err(|e| body_error("staged output")(e.to_string()))
    }

    /// Reads either format ([`STAGED_OUTPUT_FORMAT`], [`STAGED_OUTPUT_JSON_FORMAT`]); a
    /// number that is not finite is refused (JSON has no word for one, and none is made).
    pub fn decode(bytes: &[u8]) -> Result<Self, StageError> {
        const WHAT: &str = "staged output";
        if bytes.first() == Some(&STAGED_OUTPUT_JSON_FORMAT) {
            let body = versioned(WHAT, STAGED_OUTPUT_JSON_FORMAT, bytes)?;
            return serde_json::from_slice(body).map_err(|e| body_error(WHAT)(e.to_string()));
        }
        let body = versioned(WHAT, STAGED_OUTPUT_FORMAT, bytes)?;
        let wire: StagedOutputWire<'_> = postcard_whole(WHAT, body, "past its end")?;
        let numbers = [
            wire.event.as_ref().and_then(|e| e.value),
            wire.event.as_ref().and_then(|e| e.cart_value),
            wire.signal.and_then(|s| s.1),
            wire.signal.map(|s| s.2),
        ];
        if numbers.into_iter().flatten().any(|n| !n.is_finite()) {
            return Err(body_error(WHAT)("a number that is not finite".into()));
        }
        Ok(StagedOutput {
            trigger: wire.trigger.into(),
            kind: wire.kind.into(),
            segment: wire.segment.map(Into::into),
            group: wire.group.into_owned(),
            user: wire.user,
            event: wire.event.map(PushEventWire::into_event),
            signal: (wire.signal).map(|(signal, cpa, threshold, at_ms)| SignalNotice {
                signal,
                cpa,
                threshold,
                at_ms,
            }),
            at_ms: wire.at_ms,
            destinations: wire.destinations.into_owned(),
        })
    }

    /// The push it makes: its event, if any, as the one event.
    pub fn push(&self) -> Push {
        Push {
            trigger: self.trigger.clone(),
            kind: self.kind.clone(),
            segment: self.segment.clone(),
            group: self.group.clone(),
            signal: self.signal.clone(),
            events: self.event.iter().cloned().collect(),
        }
    }
}

/// A [`StagedOutput`] as postcard writes it ([`STAGED_OUTPUT_FORMAT`]): field by field in
/// this order, nothing skipped (postcard's form is not self-describing: a field left out
/// when empty, as the JSON form does, would shift every field after it; and an enum is
/// written as its variant's index, so [`SegmentSignal`]'s order is part of the format).
/// Borrowed when encoding, so that an output is not copied to be written.
#[derive(Serialize, Deserialize)]
struct StagedOutputWire<'a> {
    #[serde(borrow)]
    trigger: &'a str,
    #[serde(borrow)]
    kind: &'a str,
    #[serde(borrow)]
    segment: Option<&'a str>,
    group: std::borrow::Cow<'a, [(String, String)]>,
    user: Option<UserPseudonym>,
    #[serde(borrow)]
    event: Option<PushEventWire<'a>>,
    /// [`SignalNotice`]'s signal, CPA, threshold and time.
    signal: Option<(SegmentSignal, Option<f64>, f64, i64)>,
    at_ms: i64,
    destinations: std::borrow::Cow<'a, [String]>,
}

/// A [`PushEvent`] in [`StagedOutputWire`].
#[derive(Serialize, Deserialize)]
struct PushEventWire<'a> {
    #[serde(borrow)]
    user: &'a str,
    #[serde(borrow)]
    kind: &'a str,
    value: Option<f64>,
    at_ms: i64,
    #[serde(borrow)]
    product_id: Option<&'a str>,
    product_ids: std::borrow::Cow<'a, [String]>,
    cart_value: Option<f64>,
    #[serde(borrow)]
    tag: Option<&'a str>,
}

impl<'a> PushEventWire<'a> {
    fn of(event: &'a PushEvent) -> Self {
        PushEventWire {
            user: &event.user,
            kind: &event.kind,
            value: event.value,
            at_ms: event.at_ms,
            product_id: event.product_id.as_deref(),
            product_ids: std::borrow::Cow::Borrowed(&event.product_ids),
            cart_value: event.cart_value,
            tag: event.tag.as_deref(),
        }
    }

    fn into_event(self) -> PushEvent {
        PushEvent {
            user: self.user.into(),
            kind: self.kind.into(),
            value: self.value,
            at_ms: self.at_ms,
            product_id: self.product_id.map(Into::into),
            product_ids: self.product_ids.into_owned(),
            cart_value: self.cart_value,
            tag: self.tag.map(Into::into),
        }
    }
}

/// What the stage holds, for `/metrics` and the status page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageStats {
    /// Users whose facts are kept.
    pub users: usize,
    /// Texts the users' facts refer to, held.
    pub texts: usize,
    /// Texts not kept because their table was full.
    pub texts_not_kept: u64,
    /// Users let go because the engine held more than its bound ([`Engine::evicted_users`]).
    pub users_evicted: u64,
    /// The end of the last minute judged.
    pub judged_through_ms: Option<i64>,
    /// Selections not sent for lack of marketing consent, by trigger.
    pub withheld: BTreeMap<String, u64>,
}

/// Records whose users [`TriggerStage::read_ahead`] reads at once: enough reads to overlap
/// (a core keeps about a dozen misses in flight), few enough that the places read stay in
/// the nearest caches until their events come (a group later).
pub const READ_AHEAD: usize = 32;

/// The trigger engine and its segment window, run by the processor (see the module docs).
#[derive(Debug)]
pub struct TriggerStage {
    engine: Engine,
    window: SegmentWindow,
    set: TriggerSet,
    /// [`TriggerSet::encode`] of `set` (shared with the copies for the snapshot thread).
    set_bytes: Arc<[u8]>,
    set_offset: u64,
    next_seq: u64,
    staged: Vec<(u64, StagedOutput)>,
    /// The engine's outputs of the current record (reused).
    outputs: Vec<Output>,
}

/// A set as its bytes decode (see the module docs, "The set in force"), with its bytes:
/// the set given when it reads back equal (a float JSON reads back otherwise is the
/// exception), else what a replay reads.
fn as_recorded(set: TriggerSet) -> Result<(TriggerSet, Vec<u8>), StageError> {
    let bytes = set.encode();
    let recorded = TriggerSet::decode(&bytes)?;
    Ok((if recorded == set { set } else { recorded }, bytes))
}

impl TriggerStage {
    /// A stage with no state, `set` in force from offset 0.
    pub fn new(
        set: TriggerSet,
        conversion_types: Vec<EventKind>,
        enrich: EnrichConfig,
        out_of_orderness_ms: i64,
    ) -> Result<Self, StageError> {
        let (set, bytes) = as_recorded(set)?;
        let window = SegmentWindow::new(&set.triggers, out_of_orderness_ms)?;
        Ok(Self::of_parts(
            set,
            bytes.into(),
            0,
            0,
            ActState::default(),
            window,
            conversion_types,
            enrich,
        ))
    }

    /// [`Self::new`] with the settings of the pipeline it runs beside (its conversion
    /// types, enrichment and out-of-orderness).
    pub fn beside(set: TriggerSet, pipeline: &PipelineConfig) -> Result<Self, StageError> {
        Self::new(
            set,
            pipeline.conversion_types.clone(),
            pipeline.enrich.clone(),
            pipeline.out_of_orderness_ms,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn of_parts(
        set: TriggerSet,
        set_bytes: Arc<[u8]>,
        set_offset: u64,
        next_seq: u64,
        state: ActState,
        window: SegmentWindow,
        conversion_types: Vec<EventKind>,
        enrich: EnrichConfig,
    ) -> Self {
        let engine = Engine::new(set.triggers.clone(), conversion_types, state)
            .with_enrichment(enrich)
            .with_pipeline_verdicts()
            .without_change_tracking();
        TriggerStage {
            engine,
            window,
            set,
            set_bytes,
            set_offset,
            next_seq,
            staged: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// A stage continuing from a snapshot section ([`Self::encode_section`]); the other
    /// arguments as in [`Self::new`].
    pub fn restore(
        section: &[u8],
        conversion_types: Vec<EventKind>,
        enrich: EnrichConfig,
        out_of_orderness_ms: i64,
    ) -> Result<Self, StageError> {
        const WHAT: &str = "trigger stage section";
        let rest = section
            .strip_prefix(&STAGE_MAGIC)
            .ok_or(StageError::NotASection)?;
        // Either format (as `StagedOutput::decode` reads its two).
        let key_order = rest.first() == Some(&STAGE_FORMAT_KEY_ORDER);
        let format = if key_order {
            STAGE_FORMAT_KEY_ORDER
        } else {
            STAGE_FORMAT
        };
        let body = versioned(WHAT, format, rest)?;
        let parts: Section<'_> = postcard_whole(WHAT, body, "left over after the section")?;
        let set = TriggerSet::decode(parts.set)?;
        let rows = parts.rows.iter().copied();
        let stored = if key_order {
            ActState::decode_stored(parts.globals, rows)?
        } else {
            ActState::decode_by_place(parts.globals, rows)?
        };
        let window = SegmentWindow::restore(
            &set.triggers,
            out_of_orderness_ms,
            SegmentWindow::decode(parts.window)?,
        )?;
        Ok(Self::of_parts(
            set,
            parts.set.into(),
            parts.set_offset,
            parts.next_seq,
            stored.state,
            window,
            conversion_types,
            enrich,
        ))
    }

    /// A new set in force from log offset `offset` (the batch's first). On error (a set
    /// that does not check as recorded, or a segment trigger the window cannot keep) the
    /// old set stays. A set equal to the one in force changes nothing.
    pub fn set_triggers(&mut self, set: TriggerSet, offset: u64) -> Result<(), StageError> {
        let (set, bytes) = as_recorded(set)?;
        if set == self.set {
            return Ok(());
        }
        self.window.set_triggers(&set.triggers)?;
        self.engine.set_triggers(set.triggers.clone());
        self.set = set;
        self.set_bytes = bytes.into();
        self.set_offset = offset;
        Ok(())
    }

    pub fn set(&self) -> &TriggerSet {
        &self.set
    }

    /// [`TriggerSet::encode`] of the set in force.
    pub fn set_bytes(&self) -> &[u8] {
        &self.set_bytes
    }

    /// The offset the set in force took effect at.
    pub fn set_offset(&self) -> u64 {
        self.set_offset
    }

    /// Asks for the engine's places of the users of `records` (at most [`READ_AHEAD`]; the
    /// processor hands it the group after the one it is about to process, so that a
    /// group's first events, too, come well after their places were asked for) all at
    /// once, so that their events find them in the cache. Each is memory no cache holds
    /// (the places of millions of users reached at random); read one at a time as each
    /// event comes, they were the largest single cost of the stage (docs/triggers.md,
    /// "After stage 5", step 11), while independent reads made together overlap;
    /// prefetched, they no longer hold up the core either (step 14). The product ids the
    /// intents among them will intern are asked for too. (The free places new users take
    /// are asked for one user ahead by [`crate::act::engine::UserTable::add`] itself:
    /// counted here by the users new to the pipeline, they were mostly not the ones
    /// taken.) Only intents and conversions are read ahead: other visits mostly read no
    /// place ([`Engine::may_select`]). Changes nothing but what the cache holds.
    #[inline]
    pub fn read_ahead<'a>(
        &self,
        pipeline: &Pipeline,
        records: impl IntoIterator<Item = &'a LogRecord>,
    ) {
        if self.engine.triggers().is_empty() {
            return;
        }
        for record in records.into_iter().take(READ_AHEAD) {
            if let LogRecord::Event(event) = record
                && self.engine.may_select(event)
            {
                self.engine
                    .prefetch_event(pipeline.stage_hint_of(&event.user), event);
            }
        }
    }

    /// Call right after `pipeline.process(offset, record)` for every record: an event is
    /// observed, then each minute end the watermark reached is judged on the window's
    /// totals, then the engine advances to the watermark. Outputs get consecutive
    /// sequence numbers ([`Self::take_staged`]).
    #[inline]
    pub fn after_record(&mut self, pipeline: &mut Pipeline, record: &LogRecord) {
        let engine = &mut self.engine;
        let outputs = &mut self.outputs;
        if !pipeline.let_go_hints().is_empty() {
            engine.pipeline_let_go(pipeline.let_go_hints());
        }
        if let LogRecord::Event(event) = record {
            let judged = match pipeline.last_verdict() {
                Some(EventVerdict::Accepted { flagged, counted }) => Judged {
                    ignored: false,
                    flagged,
                    counted: pipeline.dims_of(counted).map(|dims| (counted, dims)),
                    hint: pipeline.last_stage_hint(),
                },
                _ => Judged {
                    ignored: true,
                    flagged: false,
                    counted: None,
                    hint: 0,
                },
            };
            let given = judged.hint;
            let hint = engine.observe_judged(event, judged, outputs);
            if hint != given && !judged.ignored && !pipeline.set_stage_hint(&event.user, hint) {
                engine.hint_not_kept(&event.user, hint);
            }
        }
        self.window.after_record(pipeline, |totals| {
            let minute_end = totals.minute_end();
            engine.judge_minute(minute_end, &mut |rule| totals.of(rule), outputs);
        });
        if let Some(watermark) = pipeline.watermark() {
            engine.advance(watermark, outputs);
        }
        if !self.outputs.is_empty() {
            self.stage_outputs();
        }
    }

    #[inline(never)]
    fn stage_outputs(&mut self) {
        let triggers = self.engine.triggers();
        // (Hundreds of thousands at a minute a large segment starts firing: not grown by
        // doubling.)
        self.staged.reserve(self.outputs.len());
        for output in self.outputs.drain(..) {
            // (An output's index is always of the set in force: outputs are staged at the
            // record that decided them.)
            let Some(trigger) = triggers.get(output.trigger) else {
                continue;
            };
            self.staged
                .push((self.next_seq, StagedOutput::of(trigger, output)));
            self.next_seq += 1;
        }
    }

    /// Replaces `pipeline.take_deltas()` at the end of each batch
    /// ([`SegmentWindow::take_batch_deltas`]).
    pub fn take_batch_deltas(&mut self, pipeline: &mut Pipeline) -> KpiDeltas {
        self.window.take_batch_deltas(pipeline)
    }

    /// The outputs decided since the last take, with their sequence numbers, in order.
    pub fn take_staged(&mut self) -> Vec<(u64, StagedOutput)> {
        std::mem::take(&mut self.staged)
    }

    /// The sequence number the next output gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers the next output at least `seq`.
    pub fn skip_to_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// A copy of the state for the snapshot thread, taken between batches (after
    /// [`Self::take_batch_deltas`]; a copy taken within a batch refuses to encode). The
    /// users are copied flat ([`ActState::flat_copy`]) and the small globals encoded here.
    pub fn copy(&self) -> StageCopy {
        self.copy_reusing(None)
    }

    /// [`Self::copy`] into the memory of an earlier copy whose encoding is done
    /// ([`ActState::flat_copy_into`]).
    pub fn copy_reusing(&self, spare: Option<StageCopy>) -> StageCopy {
        let state = self.engine.state();
        let mut rows = spare.map(|s| s.rows).unwrap_or_default();
        state.flat_copy_into(&mut rows);
        StageCopy {
            set_offset: self.set_offset,
            set_bytes: Arc::clone(&self.set_bytes),
            next_seq: self.next_seq,
            globals: state.encode_globals(),
            rows,
            window: if self.window.mid_batch() {
                None
            } else {
                Some(self.window.state().clone())
            },
        }
    }

    /// Appends the snapshot section of the live state to `out` (between batches). On
    /// error `out` is as it was.
    pub fn encode_section(&self, out: &mut Vec<u8>) -> Result<(), StageError> {
        let window = self.window.encode()?;
        let state = self.engine.state();
        let globals = state.encode_globals()?;
        let body = SectionRef {
            set_offset: self.set_offset,
            set: Bytes(&self.set_bytes),
            next_seq: self.next_seq,
            globals: Bytes(&globals),
            rows: RowsOf::Live(state),
            window: Bytes(&window),
        };
        append_section(out, &body)
    }

    pub fn stats(&self) -> StageStats {
        let state = self.engine.state();
        StageStats {
            users: state.users.len(),
            texts: state.texts.len(),
            texts_not_kept: state.texts.not_kept(),
            users_evicted: self.engine.evicted_users(),
            judged_through_ms: state.judged_through_ms,
            withheld: state.withheld.clone(),
        }
    }

    /// The approximate bytes of the users' facts ([`Engine::user_bytes`]).
    pub fn user_bytes(&self) -> usize {
        self.engine.user_bytes()
    }

    /// The engine (its triggers, its state).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The segment window (what it holds and ignored).
    pub fn window(&self) -> &SegmentWindow {
        &self.window
    }
}

/// The stage's state copied for the snapshot thread ([`TriggerStage::copy`]).
#[derive(Debug)]
pub struct StageCopy {
    set_offset: u64,
    set_bytes: Arc<[u8]>,
    next_seq: u64,
    globals: Result<Vec<u8>, ActStateError>,
    rows: FlatRows,
    /// `None`: copied within a batch.
    window: Option<SegmentWindowState>,
}

impl StageCopy {
    /// The approximate bytes of the users' facts when copied ([`TriggerStage::user_bytes`]
    /// then).
    pub fn user_bytes(&self) -> usize {
        self.rows.user_bytes()
    }

    /// Appends the section [`TriggerStage::encode_section`] appended when the copy was
    /// taken. On error `out` is as it was.
    pub fn encode_section(&self, out: &mut Vec<u8>) -> Result<(), StageError> {
        let window = self.window_bytes()?;
        append_section(out, &self.body(&window)?)
    }

    /// Writes the bytes [`Self::encode_section`] appends to `out`, as they are encoded
    /// (after the pipeline's, into the snapshot's file: see
    /// [`crate::pipeline::SnapshotCopy::encode_to`]).
    pub fn encode_section_to<W: std::io::Write>(&self, out: &mut W) -> Result<(), WriteError> {
        let encode_error = |e: StageError| WriteError::Encode(e.to_string());
        let window = self.window_bytes().map_err(encode_error)?;
        let body = self.body(&window).map_err(encode_error)?;
        out.write_all(&SECTION_HEAD)?;
        crate::encoding::write(&body, out)
    }

    fn window_bytes(&self) -> Result<Vec<u8>, StageError> {
        let window = self.window.as_ref().ok_or(SegmentWindowError::MidBatch)?;
        Ok(SegmentWindow::encode_state(window)?)
    }

    fn body<'a>(&'a self, window: &'a [u8]) -> Result<SectionRef<'a>, StageError> {
        Ok(SectionRef {
            set_offset: self.set_offset,
            set: Bytes(&self.set_bytes),
            next_seq: self.next_seq,
            globals: Bytes(self.globals.as_ref().map_err(Clone::clone)?),
            rows: RowsOf::Flat(&self.rows),
            window: Bytes(window),
        })
    }
}

/// Bytes written as postcard bytes (a length, then the bytes), not as a list of numbers
/// one by one.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Every row of the state, as a list of (key, bytes), users' in the order of their places:
/// from the live state ([`ActState::each_row_by_place`]) or from its flat copy
/// ([`FlatRows::each_row_by_place`]), the same.
#[derive(Clone, Copy)]
enum RowsOf<'a> {
    Live(&'a ActState),
    Flat(&'a FlatRows),
}

impl Serialize for RowsOf<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let len = match self {
            RowsOf::Live(state) => state.users.len() + state.texts.len(),
            RowsOf::Flat(rows) => rows.len(),
        };
        let mut seq = serializer.serialize_seq(Some(len))?;
        let row = |key: u64, row: &[u8]| seq.serialize_element(&(key, Bytes(row)));
        match self {
            RowsOf::Live(state) => state.each_row_by_place(row, S::Error::custom)?,
            RowsOf::Flat(rows) => rows.each_row_by_place(row, S::Error::custom)?,
        }
        seq.end()
    }
}

/// The section's body as encoded (field order is the format).
#[derive(Serialize)]
struct SectionRef<'a> {
    set_offset: u64,
    set: Bytes<'a>,
    next_seq: u64,
    globals: Bytes<'a>,
    rows: RowsOf<'a>,
    window: Bytes<'a>,
}

/// The section's body as decoded (the same fields, borrowed from the bytes).
#[derive(Deserialize)]
struct Section<'a> {
    set_offset: u64,
    set: &'a [u8],
    next_seq: u64,
    globals: &'a [u8],
    #[serde(borrow)]
    rows: Vec<(u64, &'a [u8])>,
    window: &'a [u8],
}

/// A section's first bytes: the magic, then the format of the body that follows.
const SECTION_HEAD: [u8; 5] = {
    let [a, b, c, d] = STAGE_MAGIC;
    [a, b, c, d, STAGE_FORMAT]
};

/// Appends the section of `body` to `out`; on error `out` is as it was.
fn append_section(out: &mut Vec<u8>, body: &SectionRef<'_>) -> Result<(), StageError> {
    let start = out.len();
    out.extend_from_slice(&SECTION_HEAD);
    if let Err(e) = crate::encoding::append(body, out) {
        out.truncate(start);
        return Err(body_error("trigger stage section")(e.to_string()));
    }
    Ok(())
}
