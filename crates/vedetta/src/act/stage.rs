//! The trigger stage as the processor runs it (issue 12, stages 3–5 of `docs/triggers.md`).
//!
//! The processor owns a [`StageRunner`]: the pure [`TriggerStage`] (the engine, its segment
//! window, the trigger set in force) and the [`ActStatus`] it shares with the act thread.
//! Per micro-batch:
//!
//! ```text
//! batch start: a set the act thread loaded since? ─► in force from the batch's first offset,
//!              recorded with the batch's commit (a replay applies it there)
//! each record: Pipeline::process ─► TriggerStage::after_record (observe, judge minutes, advance)
//! commit:      KPI changes + offset + staged outputs (by seq) + next seq + the set, one transaction;
//!              staged outputs below the router's cursor deleted
//! durable commit ─► ActStatus::staged = (offset, next seq): what the router may route
//! ```
//!
//! Only durably committed outputs are published to the router: a crash then loses none it
//! routed, and the replay from the snapshot decides the same ones again (it drops them all:
//! they are staged already, see [`StageRunner::recover`]).

use super::ActStatus;
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use vedetta_core::act::stage::{StageCopy, TriggerSet, TriggerStage};
use vedetta_core::pipeline::kpi::KpiDeltas;
use vedetta_core::pipeline::{Pipeline, PipelineConfig};
use vedetta_core::record::LogRecord;
use vedetta_store::{Commit, KpiStore};

/// The trigger set the act thread loaded, with its encoding (compared with the stage's).
#[derive(Debug, Clone)]
pub struct LoadedSet {
    pub set: TriggerSet,
    pub bytes: Vec<u8>,
}

impl LoadedSet {
    pub fn new(set: TriggerSet) -> Self {
        let bytes = set.encode();
        Self { set, bytes }
    }
}

/// See the module docs.
pub struct StageRunner {
    pub stage: TriggerStage,
    status: Arc<ActStatus>,
    /// The generation of `status.set` last looked at.
    generation: u64,
    /// A set put in force at this batch's first offset, for the batch's commit.
    recorded: Option<(u64, Vec<u8>)>,
    /// Staged outputs below this seq were deleted (the router's cursor then).
    deleted_below: u64,
}

impl std::fmt::Debug for StageRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageRunner").finish_non_exhaustive()
    }
}

fn stage_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

impl StageRunner {
    /// The stage as of the snapshot at `snapshot_offset` (`section`: its part of the
    /// snapshot, `None` when the snapshot has none: a new store, one written before the
    /// engine ran in the processor, or by `vedetta replay`; the stage then starts empty
    /// there), replayed to where the store is by [`Self::replay`].
    pub fn recover(
        status: Arc<ActStatus>,
        config: &PipelineConfig,
        store: &KpiStore,
        section: Option<&[u8]>,
        snapshot_offset: u64,
    ) -> anyhow::Result<Replaying> {
        let stage = match section {
            Some(bytes) => TriggerStage::restore(
                bytes,
                config.conversion_types.clone(),
                config.enrich.clone(),
                config.out_of_orderness_ms,
            )
            .map_err(stage_error)
            .context("the trigger stage's part of the pipeline snapshot")?,
            None => TriggerStage::beside(TriggerSet::empty(), config).map_err(stage_error)?,
        };
        let sets = store
            .trigger_sets_from(snapshot_offset)
            .context("reading the recorded trigger sets")?;
        let (store_next_seq, _) = store.output_seqs().context("reading the staged outputs")?;
        Ok(Replaying {
            runner: StageRunner {
                stage,
                status,
                // Compared with the loaded set at the first batch.
                generation: u64::MAX,
                recorded: None,
                deleted_below: 0,
            },
            sets: sets.into_iter().collect(),
            store_next_seq,
        })
    }

    /// At a batch's start (first offset `offset`): puts in force the set the act thread
    /// loaded since the last look, when it differs from the stage's.
    pub fn batch_start(&mut self, offset: u64) {
        let generation = self.status.set_generation.load(Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let loaded = self
            .status
            .set
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        if loaded.bytes == self.stage.set_bytes() {
            return;
        }
        match self.stage.set_triggers(loaded.set.clone(), offset) {
            Ok(()) => {
                tracing::info!(
                    offset,
                    triggers = loaded.set.triggers.len(),
                    "trigger set in force in the processor"
                );
                self.recorded = Some((offset, loaded.bytes));
            }
            Err(error) => {
                // The act thread checked it; the stage refusing it is a bug, said loudly.
                tracing::error!(%error, "the trigger stage refused the loaded set; the previous one stays");
            }
        }
    }

    #[inline]
    pub fn after_record(&mut self, pipeline: &mut Pipeline, record: &LogRecord) {
        self.stage.after_record(pipeline, record);
    }

    /// The batch's deltas (instead of `Pipeline::take_deltas`), and its part of the commit:
    /// staged outputs, next seq, the set recorded, outputs routed since deleted.
    pub fn fill_commit(
        &mut self,
        pipeline: &mut Pipeline,
        commit: &mut Commit,
    ) -> anyhow::Result<KpiDeltas> {
        let deltas = self.stage.take_batch_deltas(pipeline);
        for (seq, output) in self.stage.take_staged() {
            let bytes = output.encode().map_err(stage_error)?;
            commit.outputs.push((seq, bytes));
        }
        commit.next_output_seq = Some(self.stage.next_seq());
        if let Some(set) = self.recorded.take() {
            // A set is recorded durably: a crash must not replay the batches after it
            // under another set than the router saw outputs of.
            commit.durable = true;
            commit.trigger_set = Some(set);
        }
        let routed = self.status.routed_seq.load(Ordering::Acquire);
        if routed > self.deleted_below {
            commit.delete_outputs_below = Some(routed);
        }
        Ok(deltas)
    }

    /// After the commit: what the router may route (when durable), and the stage's figures.
    pub fn committed(&mut self, commit: &Commit) {
        if let Some(below) = commit.delete_outputs_below {
            self.deleted_below = below;
        }
        let s = &self.status;
        if commit.durable {
            *s.staged.lock().unwrap_or_else(|e| e.into_inner()) =
                (commit.processed_offset, self.stage.next_seq());
        }
        let stats = self.stage.stats();
        s.users.store(stats.users as u64, Ordering::Relaxed);
        s.texts.store(stats.texts as u64, Ordering::Relaxed);
        s.texts_not_kept
            .store(stats.texts_not_kept, Ordering::Relaxed);
        s.users_evicted
            .store(stats.users_evicted, Ordering::Relaxed);
        s.judged_through_ms.store(
            stats.judged_through_ms.unwrap_or(i64::MIN),
            Ordering::Relaxed,
        );
        *s.withheld.lock().unwrap_or_else(|e| e.into_inner()) = stats.withheld;
    }

    /// A copy of the stage for the snapshot thread, into `spare`'s memory when given.
    ///
    /// The users' approximate bytes shown (`user_bytes`) are those of the last snapshot:
    /// the copy sums them as it reads every user (a walk of its own on this thread stalled
    /// it a tenth of a second and more at millions of users).
    pub fn copy(&self, spare: Option<StageCopy>) -> StageCopy {
        let copy = self.stage.copy_reusing(spare);
        (self.status.user_bytes).store(copy.user_bytes() as u64, Ordering::Relaxed);
        copy
    }

    /// Appends the stage's part of a snapshot encoded on this thread.
    pub fn encode_section(&self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        (self.status.user_bytes).store(self.stage.user_bytes() as u64, Ordering::Relaxed);
        self.stage.encode_section(out).map_err(stage_error)
    }
}

/// A stage being replayed from its snapshot to the store's processed offset.
#[derive(Debug)]
pub struct Replaying {
    runner: StageRunner,
    /// The sets recorded from the snapshot's offset on, by offset.
    sets: std::collections::VecDeque<(u64, Vec<u8>)>,
    store_next_seq: u64,
}

impl Replaying {
    /// Before the record at `offset`: the sets recorded at or before it go in force.
    pub fn before(&mut self, offset: u64) -> anyhow::Result<()> {
        while self.sets.front().is_some_and(|(at, _)| *at <= offset) {
            if let Some((at, bytes)) = self.sets.pop_front() {
                let set = TriggerSet::decode(&bytes)
                    .map_err(stage_error)
                    .with_context(|| format!("the trigger set recorded at offset {at}"))?;
                self.runner
                    .stage
                    .set_triggers(set, at)
                    .map_err(stage_error)
                    .with_context(|| format!("the trigger set recorded at offset {at}"))?;
            }
        }
        Ok(())
    }

    #[inline]
    pub fn after_record(&mut self, pipeline: &mut Pipeline, record: &LogRecord) {
        self.runner.stage.after_record(pipeline, record);
    }

    /// The end of a replayed batch: its deltas (already in the store) and its outputs
    /// (staged already, or routed) are dropped.
    pub fn end_batch(&mut self, pipeline: &mut Pipeline) {
        let _already_stored = self.runner.stage.take_batch_deltas(pipeline);
        let _already_staged = self.runner.stage.take_staged();
    }

    /// The stage, caught up: the sets recorded up to `processed_offset` in force, its next
    /// seq the store's (a replay decides what the first run decided; when it decided fewer
    /// outputs, as after an upgrade, seqs still never go back).
    pub fn finish(mut self, processed_offset: u64) -> anyhow::Result<StageRunner> {
        self.before(processed_offset)?;
        let replayed = self.runner.stage.next_seq();
        if replayed != self.store_next_seq {
            tracing::warn!(
                replayed,
                stored = self.store_next_seq,
                "the trigger stage's replay decided another number of outputs than were staged"
            );
        }
        self.runner.stage.skip_to_seq(self.store_next_seq);
        // What the store holds durably after recovery is routable.
        *self
            .runner
            .status
            .staged
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            (processed_offset, self.store_next_seq.max(replayed));
        Ok(self.runner)
    }
}
