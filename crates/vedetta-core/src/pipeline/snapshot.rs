//! The snapshot format: what the store keeps of the pipeline state between restarts.
//!
//! ```text
//! [magic "VDSN"][format u8 = 3][PipelineState: postcard]
//! ```
//!
//! Format 3 (issue 9, `first_touch` as the earliest non-direct session in the lookback,
//! and issue 13, refunds): the state ends with `earlier_runs`, the earlier runs of users
//! whose `first_touch` memory holds more than one, and `refunds` (orders remembered for
//! their refunds, refunds waiting for their order: [`super::refunds`]); the counters end
//! with `first_touch_capped` and the refund counters. Nothing else moved. A format-2
//! snapshot is refused (`vedetta replay`): the counters grew inside the state, and the
//! store's settings check asks a replay of a store built before `refund_horizon` anyway.
//!
//! Format 2 (attribution): events carry where they are counted, users a memory of their
//! dropped sessions, and the state order ids and dormant memories. A format-1 snapshot
//! was taken under the old contract (every event under its own touch) and cannot be
//! continued under the new one; the settings check asks for `vedetta replay` first.
//!
//! The header lets a reader tell a snapshot from other bytes, and a snapshot of another
//! format version from a corrupt one: a build that finds a version it does not know stops
//! with an error that says so, rather than misreading the state. A snapshot is only ever
//! a shortcut (the state can always be rebuilt from the log by `vedetta replay`), so an
//! unreadable one is never silently skipped either: the numbers would be wrong.
//!
//! **A trailer.** The processor appends the trigger stage's section after the state, in the
//! same snapshot value, so that both are taken at one offset and stored in one commit:
//!
//! ```text
//! [magic "VDSN"][format u8 = 3][PipelineState: postcard][b"VDTG"][stage format][postcard]
//! ```
//!
//! [`decode_snapshot_parts`] returns the state and the bytes after it (empty for a snapshot
//! taken without the stage); the section has its own magic and version
//! ([`crate::act::stage`]), so a trailer of other bytes is an error there, never misread.
//! [`decode_snapshot`] stays strict: bytes after the state are an error.
//!
//! Stores written before the header existed hold the bare postcard body; the KPI store's
//! migration prefixes it with [`header`] (the body of format 1 is that same encoding).

use super::PipelineState;
use super::attribution::NO_DIMS;
use super::kpi::DimsId;

/// The first bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"VDSN";
/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT: u8 = 3;
/// Length of the header before the postcard body.
pub const SNAPSHOT_HEADER_LEN: usize = SNAPSHOT_MAGIC.len() + 1;

/// Why snapshot bytes cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not a pipeline snapshot: the {SNAPSHOT_HEADER_LEN}-byte header is missing")]
    NoHeader,
    #[error(
        "the pipeline snapshot has format version {found}, this build reads version \
         {SNAPSHOT_FORMAT}; run `vedetta replay` with this build to rebuild the state"
    )]
    Version { found: u8 },
    #[error("the pipeline snapshot does not decode: {0}")]
    Body(String),
}

/// The header this build writes.
pub fn header() -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut out = [0; SNAPSHOT_HEADER_LEN];
    out[..SNAPSHOT_MAGIC.len()].copy_from_slice(&SNAPSHOT_MAGIC);
    out[SNAPSHOT_MAGIC.len()] = SNAPSHOT_FORMAT;
    out
}

/// Reads a snapshot written by [`super::Pipeline::encode_snapshot`], and nothing after it.
/// Any bytes give an answer, never a panic (a fuzz target feeds it arbitrary input).
pub fn decode_snapshot(bytes: &[u8]) -> Result<PipelineState, SnapshotError> {
    let (state, rest) = decode_snapshot_parts(bytes)?;
    if !rest.is_empty() {
        return Err(SnapshotError::Body(format!(
            "{} bytes left over after the state",
            rest.len()
        )));
    }
    Ok(state)
}

/// Reads the pipeline's state at the start of `bytes` and returns it with the bytes after
/// it: the trailer the processor appends (the trigger stage's section,
/// [`crate::act::stage`]), which the caller decodes. Checked as [`decode_snapshot`].
pub fn decode_snapshot_parts(bytes: &[u8]) -> Result<(PipelineState, &[u8]), SnapshotError> {
    let body = snapshot_body(bytes)?;
    let (state, rest) = postcard::take_from_bytes::<PipelineState>(body)
        .map_err(|e| SnapshotError::Body(e.to_string()))?;
    check_consistency(&state).map_err(SnapshotError::Body)?;
    Ok((state, rest))
}

/// Refuses a state whose parts do not fit together. The pipeline writes none (it interns
/// each tuple and type once, and refers only to what it interned), so such a state is
/// damage; restoring it would misread it silently (a repeated dimension tuple shifts every
/// id after it when [`super::Pipeline::restore`] interns the list again, so users' events
/// land in other rows) or panic later (an event type id past the known types indexes out of
/// the counters). Found by the `snapshot` fuzz target.
fn check_consistency(state: &PipelineState) -> Result<(), String> {
    check_times(state)?;
    let mut tuples = std::collections::HashSet::with_capacity(state.dims.len());
    for (id, dims) in state.dims.iter().enumerate() {
        let tuple = (&dims.channel, &dims.campaign, &dims.device, &dims.region);
        if !tuples.insert(tuple) {
            return Err(format!("dimension tuple {id} repeats an earlier one"));
        }
    }
    let mut names = std::collections::HashSet::with_capacity(state.custom_kinds.len());
    for name in &state.custom_kinds {
        if !names.insert(name) {
            return Err(format!("custom event type {name:?} is listed twice"));
        }
    }
    let kinds = super::BUILT_IN_KINDS + state.custom_kinds.len();
    let known = |id: DimsId| usize::try_from(id).is_ok_and(|id| id < state.dims.len());
    if let Some(memory) = state.dormant.values().find(|m| !known(m.touch)) {
        return Err(format!(
            "a dormant memory refers to dimension tuple {} of {}",
            memory.touch,
            state.dims.len()
        ));
    }
    for (user, runs) in &state.earlier_runs {
        let runs = runs.as_slice();
        if !state.users.contains_key(user) && !state.dormant.contains_key(user) {
            return Err("earlier first_touch runs of a user with no memory".into());
        }
        if runs.is_empty() || runs.len() >= super::attribution::MAX_FIRST_TOUCH_RUNS {
            return Err(format!("a list of {} earlier first_touch runs", runs.len()));
        }
        if !runs.windows(2).all(|pair| pair[0].start <= pair[1].start) {
            return Err("a user's first_touch runs are out of order".into());
        }
        if let Some(run) = runs.iter().find(|r| !known(r.touch)) {
            return Err(format!(
                "a first_touch run refers to dimension tuple {} of {}",
                run.touch,
                state.dims.len()
            ));
        }
    }
    check_refunds(state, &known)?;
    for user in state.users.values() {
        if !user.entries.windows(2).all(|pair| pair[0].ts <= pair[1].ts) {
            return Err("a user's events are out of order".into());
        }
        if !user.memory.is_none() && !known(user.memory.touch) {
            return Err(format!(
                "a user's memory refers to dimension tuple {} of {}",
                user.memory.touch,
                state.dims.len()
            ));
        }
        for entry in &user.entries {
            if !known(entry.dims) || !(known(entry.counted) || entry.counted == NO_DIMS) {
                return Err(format!(
                    "an event refers to dimension tuple {} (counted under {}) of {}",
                    entry.dims,
                    entry.counted,
                    state.dims.len()
                ));
            }
            if usize::from(entry.kind) >= kinds {
                return Err(format!(
                    "an event refers to event type {} of {kinds}",
                    entry.kind
                ));
            }
        }
    }
    Ok(())
}

/// Refund state that refers to what the state has: final orders to known dimensions (or
/// none), held orders to entries of held users, both ways alike, and no negative money.
fn check_refunds(state: &PipelineState, known: &dyn Fn(DimsId) -> bool) -> Result<(), String> {
    let book = &state.refunds;
    if let Some(order) = book
        .orders
        .values()
        .find(|o| !(known(o.dims) || o.dims == NO_DIMS) || o.remaining_micros < 0)
    {
        return Err(format!(
            "a remembered order refers to dimension tuple {} of {} (or has negative value left)",
            order.dims,
            state.dims.len()
        ));
    }
    if book.held_orders.len() != book.held_entries.len()
        || book
            .held_orders
            .iter()
            .any(|(order, key)| book.held_entries.get(key) != Some(order))
    {
        return Err("the held orders and their entries do not match".into());
    }
    let held = |key: &super::refunds::EntryKey| {
        state.users.get(&key.user).is_some_and(|user| {
            user.entries
                .iter()
                .any(|e| e.ts == key.ts && e.kind == key.kind)
        })
    };
    if !book.held_entries.keys().all(held) || !book.tallies.keys().all(held) {
        return Err("a held order's entry is not among its user's events".into());
    }
    let mut tallies = book
        .tallies
        .values()
        .chain(book.pending.values().map(|p| &p.tally));
    if tallies.any(|t| t.count < 0 || t.micros < 0) {
        return Err("a refund tally is negative".into());
    }
    Ok(())
}

/// The times a state may hold, in epoch milliseconds: years 0000 to 9999. The pipeline
/// adds durations (at most ten years, `crates/vedetta/src/config.rs`) to them and multiplies
/// minute buckets back into milliseconds; inside this range none of that can overflow.
/// (A fuzzed snapshot with an expiry bucket near `i64::MAX` overflowed `bucket × 60,000`.)
pub const STATE_TIME_RANGE: std::ops::RangeInclusive<i64> =
    -62_167_219_200_000..=253_402_300_799_999;

fn check_times(state: &PipelineState) -> Result<(), String> {
    let out = |what: &str, ms: i64| Err(format!("{what} {ms} is outside years 0000–9999"));
    let inside = |ms: i64| STATE_TIME_RANGE.contains(&ms);
    if let Some(ts) = state.max_event_ts.filter(|ts| !inside(*ts)) {
        return out("the highest event time", ts);
    }
    for &bucket in state.expiry.keys() {
        if !bucket.checked_mul(super::MINUTE).is_some_and(inside) {
            return out("an expiry minute", bucket);
        }
    }
    for user in state.users.values() {
        if !inside(user.due) {
            return out("a user's due time", user.due);
        }
        if let Some(entry) = user.entries.iter().find(|e| !inside(e.ts)) {
            return out("an event time", entry.ts);
        }
    }
    let memories = state.users.values().map(|u| &u.memory);
    if let Some(memory) = memories
        .chain(state.dormant.values())
        .chain(state.earlier_runs.values().flat_map(|r| r.as_slice()))
        .find(|m| !m.is_none() && !inside(m.start))
    {
        return out("a memory's session start", memory.start);
    }
    if let Some(ts) = state.dedup.remembered_times().find(|ts| !inside(*ts)) {
        return out("a remembered event id's time", ts);
    }
    if let Some(ts) = state.orders.remembered_times().find(|ts| !inside(*ts)) {
        return out("a remembered order id's time", ts);
    }
    let book = &state.refunds;
    let order_times = book.orders.values().map(|o| o.ts);
    let held_times = book.held_entries.keys().map(|k| k.ts);
    let pending_times = book.pending.values().map(|p| p.latest_ts);
    if let Some(ts) = order_times
        .chain(held_times)
        .chain(pending_times)
        .find(|ts| !inside(*ts))
    {
        return out("a refund's or an order's time", ts);
    }
    Ok(())
}

/// The postcard body of a snapshot, after checking its header.
pub fn snapshot_body(bytes: &[u8]) -> Result<&[u8], SnapshotError> {
    if bytes.len() < SNAPSHOT_HEADER_LEN || bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
        return Err(SnapshotError::NoHeader);
    }
    match bytes[SNAPSHOT_MAGIC.len()] {
        SNAPSHOT_FORMAT => Ok(&bytes[SNAPSHOT_HEADER_LEN..]),
        found => Err(SnapshotError::Version { found }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_snapshot_round_trips_and_other_bytes_are_errors() {
        let state = PipelineState {
            next_offset: 42,
            max_event_ts: Some(1_700_000_000_000),
            ..PipelineState::default()
        };
        let mut bytes = header().to_vec();
        bytes.extend(postcard::to_allocvec(&state).unwrap());
        let back = decode_snapshot(&bytes).unwrap();
        assert_eq!(
            (back.next_offset, back.max_event_ts),
            (42, state.max_event_ts)
        );

        let bare = postcard::to_allocvec(&state).unwrap();
        assert_eq!(decode_snapshot(&bare).unwrap_err(), SnapshotError::NoHeader);
        let mut future = bytes.clone();
        future[4] = SNAPSHOT_FORMAT + 1;
        assert_eq!(
            decode_snapshot(&future).unwrap_err(),
            SnapshotError::Version {
                found: SNAPSHOT_FORMAT + 1
            }
        );
        // Format 1 was the state before attribution: refused, with the way out.
        let mut before_attribution = bytes.clone();
        before_attribution[4] = 1;
        assert_eq!(
            decode_snapshot(&before_attribution).unwrap_err(),
            SnapshotError::Version { found: 1 }
        );
        assert!(
            decode_snapshot(&future)
                .unwrap_err()
                .to_string()
                .contains("vedetta replay")
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode_snapshot(&trailing),
            Err(SnapshotError::Body(_))
        ));
        for cut in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    fn encoded(state: &PipelineState) -> Vec<u8> {
        let mut bytes = header().to_vec();
        bytes.extend(postcard::to_allocvec(state).unwrap());
        bytes
    }

    /// Found by the `snapshot` fuzz target (`fuzz/artifacts/snapshot/`): a snapshot that
    /// listed a dimension tuple twice decoded, and restoring it re-interned the list, so
    /// every later id shifted and users' events were counted in other rows; an event type id
    /// past the known types would have indexed out of the counters on the next session.
    /// Found by the `snapshot` fuzz target: an expiry bucket near `i64::MAX` minutes
    /// decoded, and the next event overflowed `bucket × 60,000` (a panic in the processor,
    /// at every restart from that snapshot).
    #[test]
    fn snapshots_with_times_past_year_9999_are_refused() {
        let mut state = PipelineState::default();
        state.expiry.insert(i64::MAX / 1000, Vec::new());
        assert_eq!(
            decode_snapshot(&encoded(&state)).unwrap_err(),
            SnapshotError::Body(format!(
                "an expiry minute {} is outside years 0000–9999",
                i64::MAX / 1000
            ))
        );
        let state = PipelineState {
            max_event_ts: Some(i64::MIN),
            ..PipelineState::default()
        };
        assert!(decode_snapshot(&encoded(&state)).is_err());
        let state = PipelineState {
            max_event_ts: Some(*STATE_TIME_RANGE.end()),
            ..PipelineState::default()
        };
        assert!(decode_snapshot(&encoded(&state)).is_ok());
    }

    /// Format 3: the earlier `first_touch` runs round-trip, and runs that do not fit the
    /// rest of the state (a user with no memory, an unknown tuple, disorder, too many) are
    /// refused.
    #[test]
    fn earlier_first_touch_runs_round_trip_and_misfits_are_refused() {
        use crate::pipeline::attribution::{EarlierRuns, MAX_FIRST_TOUCH_RUNS, Memory};
        use crate::pipeline::dims::Dims;
        use crate::record::UserPseudonym;
        let user = UserPseudonym([3; 16]);
        let at = |start, touch| Memory { start, touch };
        let state = |runs: Vec<Memory>, dormant: bool| {
            let mut state = PipelineState {
                dims: vec![Dims {
                    channel: "social".into(),
                    campaign: "(none)".into(),
                    device: "mobile".into(),
                    region: "unknown".into(),
                }],
                ..PipelineState::default()
            };
            if dormant {
                state.dormant.insert(user, at(1_763_997_000_000, 0));
            }
            state
                .earlier_runs
                .insert(user, EarlierRuns::Many(runs.into_boxed_slice()));
            state
        };
        let fits = state(
            vec![at(1_763_990_000_000, 0), at(1_763_995_000_000, 0)],
            true,
        );
        assert_eq!(
            decode_snapshot(&encoded(&fits)).unwrap().earlier_runs,
            fits.earlier_runs
        );
        for (broken, reason) in [
            (
                state(vec![at(1_763_990_000_000, 0)], false),
                "earlier first_touch runs of a user with no memory",
            ),
            (state(vec![], true), "a list of 0 earlier first_touch runs"),
            (
                state(vec![at(1_763_990_000_000, 1)], true),
                "a first_touch run refers to dimension tuple 1 of 1",
            ),
            (
                state(
                    vec![at(1_763_995_000_000, 0), at(1_763_990_000_000, 0)],
                    true,
                ),
                "a user's first_touch runs are out of order",
            ),
            (
                state(vec![at(1_763_990_000_000, 0); MAX_FIRST_TOUCH_RUNS], true),
                "a list of 32 earlier first_touch runs",
            ),
            (
                state(vec![at(i64::MIN + 1, 0)], true),
                "a memory's session start -9223372036854775807 is outside years 0000–9999",
            ),
        ] {
            assert_eq!(
                decode_snapshot(&encoded(&broken)).unwrap_err(),
                SnapshotError::Body(reason.into())
            );
        }
    }

    #[test]
    fn snapshots_whose_parts_do_not_fit_are_refused_not_misread() {
        use crate::pipeline::dims::Dims;
        use crate::pipeline::user::{EventEntry, UserState};
        use crate::record::UserPseudonym;
        let dims = |channel: &str| Dims {
            channel: channel.into(),
            campaign: "(none)".into(),
            device: "mobile".into(),
            region: "unknown".into(),
        };
        let entry = |dims, kind| EventEntry::new(1_763_997_000_000, 0, dims, kind, 0);
        let state = |tuples: Vec<Dims>, custom: Vec<&str>, entry: EventEntry| {
            let mut state = PipelineState {
                dims: tuples,
                custom_kinds: custom.into_iter().map(String::from).collect(),
                next_offset: 1,
                ..PipelineState::default()
            };
            state.users.insert(
                UserPseudonym([7; 16]),
                UserState {
                    entries: vec![entry],
                    ..UserState::default()
                },
            );
            state
        };
        let fits = state(
            vec![dims("social"), dims("email")],
            vec!["signup"],
            entry(1, 6),
        );
        assert!(decode_snapshot(&encoded(&fits)).is_ok());
        for (broken, reason) in [
            (
                state(vec![dims("social"), dims("social")], vec![], entry(1, 0)),
                "dimension tuple 1 repeats an earlier one",
            ),
            (
                state(vec![dims("social")], vec![], entry(1, 0)),
                "an event refers to dimension tuple 1 (counted under 4294967295) of 1",
            ),
            (
                state(vec![dims("social")], vec!["signup"], entry(0, 7)),
                "an event refers to event type 7 of 7",
            ),
            (
                state(vec![dims("social")], vec!["x", "x"], entry(0, 0)),
                "custom event type \"x\" is listed twice",
            ),
            (
                state(
                    vec![dims("social")],
                    vec![],
                    EventEntry {
                        ts: i64::MAX,
                        ..entry(0, 0)
                    },
                ),
                "an event time 9223372036854775807 is outside years 0000–9999",
            ),
        ] {
            assert_eq!(
                decode_snapshot(&encoded(&broken)).unwrap_err(),
                SnapshotError::Body(reason.into())
            );
        }
    }
}
