//! How the engine's state is stored: one small value for what is global (firing segments,
//! the times judged and advanced, the withheld counts) and one row per user, so that a
//! consumer step writes the users it changed and not the whole state.
//!
//! Writing the whole state at every step (format 1) cost the consumer more than the engine
//! itself: 22.7 MB for 112,000 users, ten times a second at 100,000 events/s. A step now
//! writes the globals (bytes) and the rows of the users it touched
//! ([`Engine::take_changes`]); the store commits them with the offset, the pushes and the
//! firings in one transaction, so exactly-once is unchanged.
//!
//! Formats:
//! - globals, [`ACT_STATE_FORMAT`] 2: `[2][postcard Globals]`. A format-1 value (the whole
//!   state, users and candidates included) still decodes: the consumer then rewrites every
//!   user as a row at its next commit ([`StoredState::legacy`]);
//! - a user's row, keyed by [`UserFacts::row`] (given in the order users are first seen,
//!   so a commit's users, mostly recent ones, share a few pages of the store's B-tree
//!   instead of dirtying one page each, as random pseudonym keys did), [`USER_ROW_FORMAT`]
//!   1: `[1][postcard (UserPseudonym, UserFacts, Option<i64>)]`: the pseudonym, the facts,
//!   and the time of the latest intent when the user is a candidate of the segment
//!   triggers.

use super::{ActState, ActStateError, Engine, SegmentState, UserFacts};
use crate::record::UserPseudonym;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format byte of the stored globals ([`ActState::encode_globals`]); 1 was the whole
/// state in one value, still read.
pub const ACT_STATE_FORMAT: u8 = 2;
/// The format of the whole state in one value, written before per-user rows.
const WHOLE_STATE_FORMAT: u8 = 1;
/// The format byte of a user's row ([`ActState::encode_user`]).
pub const USER_ROW_FORMAT: u8 = 1;

/// The globals, as encoded (field order is the format).
#[derive(Serialize)]
struct GlobalsRef<'a> {
    segments: &'a BTreeMap<(String, Vec<String>), SegmentState>,
    max_event_ms: Option<i64>,
    judged_through_ms: Option<i64>,
    advanced_minute_ms: Option<i64>,
    withheld: &'a BTreeMap<String, u64>,
    next_row: u64,
}

/// The globals, as decoded (the same fields in the same order as [`GlobalsRef`]).
#[derive(Deserialize)]
struct Globals {
    segments: BTreeMap<(String, Vec<String>), SegmentState>,
    max_event_ms: Option<i64>,
    judged_through_ms: Option<i64>,
    advanced_minute_ms: Option<i64>,
    withheld: BTreeMap<String, u64>,
    next_row: u64,
}

/// What changed since the last [`Engine::take_changes`], ready to store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateChanges {
    /// [`ActState::encode_globals`].
    pub globals: Vec<u8>,
    /// The rows changed, in key order: the user's row, or `None` once forgotten.
    pub users: Vec<(u64, Option<Vec<u8>>)>,
}

/// A state read back from its stored parts.
#[derive(Debug)]
pub struct StoredState {
    pub state: ActState,
    /// Read from a format-1 value (the whole state, no rows): every user must be written
    /// as a row at the next commit ([`Engine::mark_all_changed`]).
    pub legacy: bool,
}

fn body<T: Serialize + ?Sized>(format: u8, value: &T) -> Result<Vec<u8>, ActStateError> {
    // `to_allocvec` writes by slices; `to_extend` went byte by byte through `Extend` (a
    // tenth of the consumer's time in a profile). The format byte goes in front after.
    let mut out = postcard::to_allocvec(value).map_err(|e| ActStateError::Body(e.to_string()))?;
    out.insert(0, format);
    Ok(out)
}

impl ActState {
    /// `[ACT_STATE_FORMAT][postcard]` of everything but the users and candidates.
    pub fn encode_globals(&self) -> Result<Vec<u8>, ActStateError> {
        body(
            ACT_STATE_FORMAT,
            &GlobalsRef {
                segments: &self.segments,
                max_event_ms: self.max_event_ms,
                judged_through_ms: self.judged_through_ms,
                advanced_minute_ms: self.advanced_minute_ms,
                withheld: &self.withheld,
                next_row: self.next_row,
            },
        )
    }

    /// The row key and row of `user` (`None` when the state does not hold it).
    pub fn encode_user(
        &self,
        user: &UserPseudonym,
    ) -> Result<Option<(u64, Vec<u8>)>, ActStateError> {
        let Some(facts) = self.users.get(user) else {
            return Ok(None);
        };
        let row = body(USER_ROW_FORMAT, &(user, facts, self.candidates.get(user)))?;
        Ok(Some((facts.row, row)))
    }

    /// The state from its globals and its users' rows. A format-1 globals value is the
    /// whole state (there are no rows yet); it decodes with `legacy` set.
    pub fn decode_stored<'a>(
        globals: &[u8],
        rows: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<StoredState, ActStateError> {
        let (state, legacy) = match globals.split_first() {
            None => return Err(ActStateError::Empty),
            Some((&WHOLE_STATE_FORMAT, body)) => (
                postcard::from_bytes::<ActState>(body)
                    .map_err(|e| ActStateError::Body(e.to_string()))?,
                true,
            ),
            Some((&ACT_STATE_FORMAT, body)) => {
                let g: Globals =
                    postcard::from_bytes(body).map_err(|e| ActStateError::Body(e.to_string()))?;
                let state = ActState {
                    segments: g.segments,
                    max_event_ms: g.max_event_ms,
                    judged_through_ms: g.judged_through_ms,
                    advanced_minute_ms: g.advanced_minute_ms,
                    withheld: g.withheld,
                    next_row: g.next_row,
                    ..ActState::default()
                };
                (state, false)
            }
            Some((&found, _)) => return Err(ActStateError::Version { found }),
        };
        let mut state = state;
        if legacy {
            // Rows in pseudonym order, the order the whole state was encoded in.
            let mut all: Vec<(&UserPseudonym, &mut UserFacts)> = state.users.iter_mut().collect();
            all.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (row, (_, facts)) in all.into_iter().enumerate() {
                facts.row = row as u64;
            }
            state.next_row = state.users.len() as u64;
        }
        for (key, row) in rows {
            let (pseudonym, mut facts, candidate) = match row.split_first() {
                None => return Err(ActStateError::Empty),
                Some((&USER_ROW_FORMAT, body)) => {
                    postcard::from_bytes::<(UserPseudonym, UserFacts, Option<i64>)>(body)
                        .map_err(|e| ActStateError::Body(e.to_string()))?
                }
                Some((&found, _)) => return Err(ActStateError::Version { found }),
            };
            facts.row = key;
            state.users.insert(pseudonym, facts);
            if let Some(latest) = candidate {
                state.candidates.insert(pseudonym, latest);
            }
        }
        Ok(StoredState { state, legacy })
    }
}

impl Engine {
    /// The globals and the rows of the users changed since the last call (every user the
    /// engine observed, judged, sent, pruned or forgot), and forgets the changes.
    pub fn take_changes(&mut self) -> Result<StateChanges, ActStateError> {
        let mut users: Vec<(u64, Option<Vec<u8>>)> =
            Vec::with_capacity(self.changed.len() + self.forgotten_rows.len());
        for pseudonym in self.changed.drain() {
            // A user forgotten since is in `forgotten_rows`.
            if let Some((key, row)) = self.state.encode_user(&pseudonym)? {
                users.push((key, Some(row)));
            }
        }
        users.extend(self.forgotten_rows.drain(..).map(|key| (key, None)));
        users.sort_unstable_by_key(|(key, _)| *key);
        Ok(StateChanges {
            globals: self.state.encode_globals()?,
            users,
        })
    }

    /// Counts every user as changed (the next [`Engine::take_changes`] writes them all).
    pub fn mark_all_changed(&mut self) {
        self.changed.extend(self.state.users.keys().copied());
    }
}
