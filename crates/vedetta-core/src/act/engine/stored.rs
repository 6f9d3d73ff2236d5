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
//! - globals, [`ACT_STATE_FORMAT`] 3: `[3][postcard Globals]` (format 2 had no trigger names
//!   and no text counts; format 1 was the whole state, users and candidates included);
//! - a user's row, keyed by [`UserFacts::row`] (given in the order users are first seen,
//!   so a commit's users, mostly recent ones, share a few pages of the store's B-tree
//!   instead of dirtying one page each, as random pseudonym keys did), [`USER_ROW_FORMAT`]
//!   2: `[2][postcard RowRef]`: the pseudonym, the facts (texts by [`TextId`], cooldowns by
//!   [`TriggerId`](super::TriggerId), every time but the last seen as its distance back
//!   from it: one or two bytes instead of six), and the time of the latest intent when the
//!   user is a candidate of the segment triggers (format 1 held the texts and trigger
//!   names as strings and the times whole);
//! - a text of [`Texts`], keyed by [`TEXT_ROWS`] plus its id (beside the user rows: written
//!   when the text is added, removed when it is freed, so a commit writes only the texts
//!   new since the last one), [`TEXT_ROW_FORMAT`] 1: `[1][postcard str]`.
//!
//! A state read from an older format migrates on read (its texts interned, its trigger
//! names given ids) and is written whole in the current formats at the next commit
//! ([`StoredState::legacy`]).

use super::candidates::{Candidate, latest_times};
use super::legacy::{ActStateV1, GlobalsV2, UserFactsV1};
use super::texts::TriggerId;
use super::texts::{TextId, Texts, TriggerNames};
use super::{
    ActState, ActStateError, CartLine, Engine, FactsFields, Intent, SegmentState, UserFacts,
};
use crate::pipeline::refill;
use crate::record::UserPseudonym;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format byte of the stored globals ([`ActState::encode_globals`]); 1 (the whole
/// state in one value) and 2 are still read.
pub const ACT_STATE_FORMAT: u8 = 3;
/// The format of the whole state in one value, written before per-user rows.
const WHOLE_STATE_FORMAT: u8 = 1;
/// The globals before trigger ids and texts.
const GLOBALS_V2: u8 = 2;
/// The format byte of a user's row ([`ActState::encode_user`]); 1 is still read.
pub const USER_ROW_FORMAT: u8 = 2;
/// A user's row with its texts as strings.
const USER_ROW_V1: u8 = 1;
/// The format byte of a text's row.
pub const TEXT_ROW_FORMAT: u8 = 1;
/// Text rows are keyed from here (user rows from 0: they never meet).
pub const TEXT_ROWS: u64 = 1 << 63;

/// The globals, as encoded (field order is the format).
#[derive(Serialize)]
struct GlobalsRef<'a> {
    segments: &'a BTreeMap<(String, Vec<String>), SegmentState>,
    max_event_ms: Option<i64>,
    judged_through_ms: Option<i64>,
    advanced_minute_ms: Option<i64>,
    withheld: &'a BTreeMap<String, u64>,
    next_row: u64,
    trigger_names: &'a TriggerNames,
    texts_added: u32,
    texts_not_kept: u64,
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
    trigger_names: TriggerNames,
    texts_added: u32,
    texts_not_kept: u64,
}

/// A user's row as encoded (field order is the format): its times but `last_seen_ms` as
/// `last_seen_ms − time` (wrapping, so any time reads back exactly).
struct RowRef<'a> {
    user: &'a UserPseudonym,
    facts: &'a UserFacts,
    candidate: Option<i64>,
}

/// A user's row as decoded (the same fields in the same order as [`RowRef`]).
type Row = (
    UserPseudonym,
    bool,
    i64,
    Option<(TextId, TextId, i64)>,
    Vec<(i64, bool, [TextId; 2], Option<TextId>)>,
    Option<i64>,
    Option<TextId>,
    Option<i64>,
    Vec<(i64, Option<TextId>, Option<f64>)>,
    u32,
    Vec<[u8; 8]>,
    Vec<(TriggerId, i64)>,
    Option<i64>,
);

/// A list encoded from an iterator (no vector built).
struct Seq<F>(F);

impl<F, I> Serialize for Seq<F>
where
    F: Fn() -> I,
    I: Iterator<Item: Serialize>,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

impl Serialize for RowRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let f = self.facts;
        RowView {
            user: self.user,
            marketing: f.marketing,
            last_seen_ms: f.last_seen_ms,
            touch: f.touch(),
            intents: &f.intents,
            last_conversion_ms: f.last_conversion_ms,
            last_conversion_kind: f.last_conversion_kind,
            last_registration_ms: f.last_registration_ms(),
            cart: f.cart(),
            purchases: f.purchases,
            event_ids: f.event_ids(),
            sent: f.sent(),
            candidate: self.candidate,
        }
        .serialize(serializer)
    }
}

/// A user's row from its parts, wherever they are held (a user's facts, or a flat copy of
/// every user's: [`FlatRows`]); the one encoder of the row format.
struct RowView<'a> {
    user: &'a UserPseudonym,
    marketing: bool,
    last_seen_ms: i64,
    touch: Option<(TextId, TextId, i64)>,
    intents: &'a [Intent],
    last_conversion_ms: Option<i64>,
    last_conversion_kind: Option<TextId>,
    last_registration_ms: Option<i64>,
    cart: &'a [CartLine],
    purchases: u32,
    event_ids: &'a [u64],
    sent: &'a [(TriggerId, i64)],
    candidate: Option<i64>,
}

impl Serialize for RowView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let f = self;
        let base = f.last_seen_ms;
        let back = |at: i64| base.wrapping_sub(at);
        (
            self.user,
            f.marketing,
            base,
            f.touch.map(|(c, k, at)| (c, k, back(at))),
            Seq(|| {
                (f.intents.iter())
                    .map(|i| (back(i.at_ms), i.add_to_cart, i.dims, i.product_id.get()))
            }),
            f.last_conversion_ms.map(back),
            f.last_conversion_kind,
            f.last_registration_ms.map(back),
            Seq(|| (f.cart.iter()).map(|l| (back(l.at_ms), l.product_id, l.value))),
            f.purchases,
            Seq(|| f.event_ids.iter().map(|id| id.to_le_bytes())),
            Seq(|| f.sent.iter().map(|(t, at)| (*t, back(*at)))),
            self.candidate.map(back),
        )
            .serialize(serializer)
    }
}

/// One user of a [`FlatRows`]: its facts but the lists and the rare ones, how many of each
/// list's entries are its own, and whether it has an entry of [`FlatRare`]. 88 bytes: with
/// the touch and the registration time in it (which only the engine's own judging sets,
/// never the processor's stage) it was 128, and every snapshot's copy wrote, and its
/// encoding read, 40 bytes more per user held.
#[derive(Clone, Debug)]
struct FlatUser {
    user: UserPseudonym,
    /// Its place in the user table (see [`super::candidates::latest_times`]).
    at: u32,
    row: u64,
    marketing: bool,
    /// Whether the user's touch and registration time are the next entry of
    /// [`FlatRows::rare`] (else both are `None`).
    rare: bool,
    last_seen_ms: i64,
    last_conversion_ms: Option<i64>,
    last_conversion_kind: Option<TextId>,
    purchases: u32,
    /// Entries in `intents`, `cart`, `event_ids`, `sent`.
    counts: [u32; 4],
}

/// The facts of a [`FlatUser`] that only the engine's own judging sets.
#[derive(Clone, Debug)]
struct FlatRare {
    touch: Option<(TextId, TextId, i64)>,
    last_registration_ms: Option<i64>,
}

/// How many users ahead [`ActState::flat_copy_into`] asks for each user's box (and half
/// as many for the lists in it): a few hundred nanoseconds of copying per user, against a
/// wait of about that much for memory.
const BOXES_AHEAD: usize = 16;

/// Empties a list of an earlier copy for the next, keeping room for an eighth more than
/// it held, and letting go of memory past twice that (a state that shrank).
fn refill_like_before<T>(list: &mut Vec<T>) {
    let before = list.len();
    refill(list, before.saturating_add(before / 8));
}

/// Every row of a state copied flat ([`ActState::flat_copy`]): the users' lists in one
/// list each, so that a copy allocates a few large blocks, not a list per user (cloning the
/// map did: most of a copy's cost with many users held). It encodes the rows
/// [`ActState::each_row_by_place`] encodes, in the same order.
#[derive(Clone, Debug, Default)]
pub struct FlatRows {
    users: Vec<FlatUser>,
    /// One entry per user whose `rare` is set, in the users' order.
    rare: Vec<FlatRare>,
    intents: Vec<Intent>,
    cart: Vec<CartLine>,
    event_ids: Vec<u64>,
    sent: Vec<(TriggerId, i64)>,
    /// The candidates' entries, in no order (a user possibly more than once): looked up
    /// per user by the encoder, not by the copy
    /// (a lookup per user on the processor's thread, with a minute's candidates pending,
    /// was most of a copy's time).
    candidates: Vec<Candidate>,
    texts: Vec<(TextId, Box<str>)>,
    /// The approximate bytes of the users' facts and texts copied (as
    /// [`super::Engine::user_bytes`] of the state copied).
    user_bytes: usize,
}

impl FlatRows {
    /// The approximate bytes of the users' facts and the texts when copied: summed by the
    /// copy, which reads every user anyway (a walk of its own was a stall of a tenth of a
    /// second and more on the processor's thread at millions of users).
    pub fn user_bytes(&self) -> usize {
        self.user_bytes
    }

    /// Rows held: users' and texts'.
    pub fn len(&self) -> usize {
        self.users.len() + self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// As [`ActState::each_row_by_place`] of the state copied: the users in the order
    /// they were copied in, which is the order of their places, so the users, their lists
    /// and their candidate times are all read in order. (In key order, format 1 of the
    /// trigger stage's section, each row's parts were reads at random, asked for ahead,
    /// after a sort of the keys and two lists of a hundred megabytes made for it: what
    /// 100 triggers add to the snapshot threads went from 0.93 s to 0.65 s a pass at 3.8
    /// million users, `vedetta bench processor`, stops 44 and 45.)
    pub fn each_row_by_place<E>(
        &self,
        mut row: impl FnMut(u64, &[u8]) -> Result<(), E>,
        error: impl Fn(ActStateError) -> E,
    ) -> Result<(), E> {
        let mut total = [0usize; 4];
        let mut rare = 0;
        for user in &self.users {
            for (t, n) in total.iter_mut().zip(user.counts) {
                *t += n as usize;
            }
            rare += usize::from(user.rare);
        }
        let lists_fit = rare == self.rare.len()
            && total
                == [
                    self.intents.len(),
                    self.cart.len(),
                    self.event_ids.len(),
                    self.sent.len(),
                ];
        if !lists_fit {
            return Err(error(ActStateError::Body(
                "a flat copy whose lists do not fit its users".into(),
            )));
        }
        let users = &self.users;
        let candidates = latest_times(
            &self.candidates,
            users.len(),
            |i| users[i].at,
            |i| &users[i].user,
        );
        let mut buf = Vec::with_capacity(SCRATCH_BYTES);
        // Where the user's entries start in each list.
        let mut at = [0usize; 4];
        let mut rare = self.rare.iter();
        for (u, candidate) in users.iter().zip(candidates) {
            let span = |k: usize| at[k]..at[k] + u.counts[k] as usize;
            // (Counted above: as many entries as users with `rare` set.)
            let (touch, last_registration_ms) = match u.rare.then(|| rare.next()).flatten() {
                Some(r) => (r.touch, r.last_registration_ms),
                None => (None, None),
            };
            let value = RowView {
                user: &u.user,
                marketing: u.marketing,
                last_seen_ms: u.last_seen_ms,
                touch,
                intents: &self.intents[span(0)],
                last_conversion_ms: u.last_conversion_ms,
                last_conversion_kind: u.last_conversion_kind,
                last_registration_ms,
                cart: &self.cart[span(1)],
                purchases: u.purchases,
                event_ids: &self.event_ids[span(2)],
                sent: &self.sent[span(3)],
                candidate,
            };
            body_into(&mut buf, USER_ROW_FORMAT, &value).map_err(&error)?;
            row(u.row, &buf)?;
            for (a, n) in at.iter_mut().zip(u.counts) {
                *a += n as usize;
            }
        }
        for (id, text) in &self.texts {
            body_into(&mut buf, TEXT_ROW_FORMAT, &**text).map_err(&error)?;
            row(TEXT_ROWS + u64::from(id.0), &buf)?;
        }
        Ok(())
    }
}

/// The pseudonym, facts and candidate time of a decoded [`Row`].
fn from_row(row: Row) -> (UserPseudonym, UserFacts, Option<i64>) {
    let (user, marketing, base, touch, intents, conversion, kind, registration, cart) = (
        row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8,
    );
    let (purchases, event_ids, sent, candidate) = (row.9, row.10, row.11, row.12);
    let at = |back: i64| base.wrapping_sub(back);
    let facts = UserFacts::from(FactsFields {
        row: 0,
        marketing,
        last_seen_ms: base,
        touch: touch.map(|(c, k, back)| (c, k, at(back))),
        intents: (intents.into_iter())
            .map(|(back, add_to_cart, dims, product_id)| Intent {
                at_ms: at(back),
                add_to_cart,
                dims,
                product_id: product_id.into(),
            })
            .collect(),
        last_conversion_ms: conversion.map(at),
        last_conversion_kind: kind,
        last_registration_ms: registration.map(at),
        cart: (cart.into_iter())
            .map(|(back, product_id, value)| CartLine {
                at_ms: at(back),
                product_id,
                value,
            })
            .collect(),
        purchases,
        event_ids: event_ids.into_iter().map(u64::from_le_bytes).collect(),
        sent: sent.into_iter().map(|(t, back)| (t, at(back))).collect(),
    });
    (user, facts, candidate.map(at))
}

/// What changed since the last [`Engine::take_changes`], ready to store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateChanges {
    /// [`ActState::encode_globals`].
    pub globals: Vec<u8>,
    /// The rows changed, in key order: a user's row or a text's ([`TEXT_ROWS`] on), or
    /// `None` once forgotten or freed.
    pub users: Vec<(u64, Option<Vec<u8>>)>,
}

/// The order stored rows come in ([`ActState::decode_stored`],
/// [`ActState::decode_by_place`]).
#[derive(Clone, Copy)]
enum RowOrder {
    /// Ascending keys: a table's order, and the trigger stage's section of format 1.
    Keys,
    /// The order of the places their users were held at: any order of keys.
    Places,
}

/// A state read back from its stored parts.
#[derive(Debug)]
pub struct StoredState {
    pub state: ActState,
    /// Read from an older format (the whole state, or rows with texts as strings): every
    /// user and text must be written at the next commit ([`Engine::mark_all_changed`]).
    pub legacy: bool,
}

/// Rows up to this size are encoded on the stack and copied out in one allocation.
const SCRATCH_BYTES: usize = 1024;

fn body<T: Serialize + ?Sized>(format: u8, value: &T) -> Result<Vec<u8>, ActStateError> {
    // Most rows are small: encoded into a buffer on the stack and copied into a vector of
    // their size (`to_allocvec` grew its vector from empty, four or five times a row).
    let mut scratch = [0u8; SCRATCH_BYTES];
    scratch[0] = format;
    match postcard::to_slice(value, &mut scratch[1..]) {
        Ok(written) => {
            let len = 1 + written.len();
            return Ok(scratch[..len].to_vec());
        }
        Err(postcard::Error::SerializeBufferFull) => {}
        Err(e) => return Err(ActStateError::Body(e.to_string())),
    }
    // `to_allocvec` writes by slices; `to_extend` went byte by byte through `Extend` (a
    // tenth of the consumer's time in a profile). The format byte goes in front after.
    let mut out = postcard::to_allocvec(value).map_err(|e| ActStateError::Body(e.to_string()))?;
    out.insert(0, format);
    Ok(out)
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ActStateError> {
    postcard::from_bytes(bytes).map_err(|e| ActStateError::Body(e.to_string()))
}

/// `[format][postcard value]` into `buf`, cleared first.
fn body_into<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    format: u8,
    value: &T,
) -> Result<(), ActStateError> {
    buf.clear();
    buf.push(format);
    crate::encoding::append(value, buf).map_err(|e| ActStateError::Body(e.to_string()))
}

impl ActState {
    /// `[ACT_STATE_FORMAT][postcard]` of everything but the users, candidates and texts.
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
                trigger_names: &self.trigger_names,
                texts_added: self.texts.added(),
                texts_not_kept: self.texts.not_kept(),
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
        let row = body(
            USER_ROW_FORMAT,
            &RowRef {
                user,
                facts,
                candidate: self.candidates.get(user),
            },
        )?;
        Ok(Some((facts.row, row)))
    }

    /// Every row of the state, in key order: each user's row ([`Self::encode_user`]) and
    /// then each text's, as [`Engine::take_changes`] writes them, each handed to `row` from
    /// one reused buffer. With [`Self::encode_globals`] this is the whole state, and
    /// [`Self::decode_stored`] reads it back.
    pub fn each_row<E>(
        &self,
        row: impl FnMut(u64, &[u8]) -> Result<(), E>,
        error: impl Fn(ActStateError) -> E,
    ) -> Result<(), E> {
        self.each_row_in(RowOrder::Keys, row, error)
    }

    /// The rows [`Self::each_row`] gives, users' in the order of their places: the order a
    /// copy of the state reads them in ([`FlatRows::each_row_by_place`]). Read back by
    /// [`Self::decode_by_place`] (the trigger stage's snapshot section), whose users take
    /// their places in this order.
    pub fn each_row_by_place<E>(
        &self,
        row: impl FnMut(u64, &[u8]) -> Result<(), E>,
        error: impl Fn(ActStateError) -> E,
    ) -> Result<(), E> {
        self.each_row_in(RowOrder::Places, row, error)
    }

    fn each_row_in<E>(
        &self,
        order: RowOrder,
        mut row: impl FnMut(u64, &[u8]) -> Result<(), E>,
        error: impl Fn(ActStateError) -> E,
    ) -> Result<(), E> {
        let held: Vec<(usize, &UserPseudonym, &UserFacts)> = self.users.iter_at().collect();
        let candidates = latest_times(
            self.candidates.raw(),
            held.len(),
            |i| held[i].0 as u32,
            |i| held[i].1,
        );
        let mut users: Vec<(u64, &UserPseudonym, &UserFacts, Option<i64>)> = (held.iter())
            .zip(candidates)
            .map(|(&(_, user, facts), candidate)| (facts.row, user, facts, candidate))
            .collect();
        if let RowOrder::Keys = order {
            users.sort_unstable_by_key(|(key, ..)| *key);
        }
        let mut buf = Vec::with_capacity(SCRATCH_BYTES);
        for (key, user, facts, candidate) in users {
            let value = RowRef {
                user,
                facts,
                candidate,
            };
            body_into(&mut buf, USER_ROW_FORMAT, &value).map_err(&error)?;
            row(key, &buf)?;
        }
        for (id, text) in self.texts.entries() {
            body_into(&mut buf, TEXT_ROW_FORMAT, text).map_err(&error)?;
            row(TEXT_ROWS + u64::from(id.0), &buf)?;
        }
        Ok(())
    }

    /// Every row's parts, copied flat (see [`FlatRows`]), to encode elsewhere.
    pub fn flat_copy(&self) -> FlatRows {
        let mut flat = FlatRows::default();
        self.flat_copy_into(&mut flat);
        flat
    }

    /// [`Self::flat_copy`] into the memory of an earlier copy (see
    /// [`crate::pipeline::Pipeline::snapshot_copy_reusing`]: fresh pages cost more than the
    /// copying).
    ///
    /// One walk of the users, in slot order, each user's box (most held users have one:
    /// a cooldown) and its lists asked for [`BOXES_AHEAD`] users ahead: the boxes lie
    /// anywhere in memory, and a walk that counted the lists' entries first, to size them,
    /// then copied, waited for each box twice (a snapshot's copy took ~0.8 s more of the
    /// processor's thread with triggers than without at 3.8 million users, `vedetta bench
    /// processor`, stop 36). The lists keep the earlier copy's memory with an eighth more
    /// room, and grow past it as lists do.
    pub fn flat_copy_into(&self, flat: &mut FlatRows) {
        refill(&mut flat.users, self.users.len());
        refill_like_before(&mut flat.rare);
        refill_like_before(&mut flat.intents);
        refill_like_before(&mut flat.cart);
        refill_like_before(&mut flat.event_ids);
        refill_like_before(&mut flat.sent);
        refill(&mut flat.candidates, self.candidates.entries());
        flat.candidates.extend_from_slice(self.candidates.raw());
        flat.texts.clear();
        flat.texts
            .extend((self.texts.entries()).map(|(id, t)| (id, t.into())));
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut boxes_ahead = self.users.values().skip(BOXES_AHEAD);
        let mut lists_ahead = self.users.values().skip(BOXES_AHEAD / 2);
        let mut bytes = 0;
        for (at, user, f) in self.users.iter_at() {
            if let Some(ahead) = boxes_ahead.next() {
                ahead.prefetch_more();
            }
            if let Some(ahead) = lists_ahead.next() {
                ahead.prefetch_more_lists();
            }
            bytes += f.approximate_bytes();
            let (touch, last_registration_ms) = (f.touch(), f.last_registration_ms());
            let rare = touch.is_some() || last_registration_ms.is_some();
            if rare {
                flat.rare.push(FlatRare {
                    touch,
                    last_registration_ms,
                });
            }
            flat.users.push(FlatUser {
                user: *user,
                // Places are u32 (`UserRef::at`).
                at: at as u32,
                row: f.row,
                marketing: f.marketing,
                rare,
                last_seen_ms: f.last_seen_ms,
                last_conversion_ms: f.last_conversion_ms,
                last_conversion_kind: f.last_conversion_kind,
                purchases: f.purchases,
                counts: [
                    count(f.intents.len()),
                    count(f.cart().len()),
                    count(f.event_ids().len()),
                    count(f.sent().len()),
                ],
            });
            flat.intents.extend_from_slice(&f.intents);
            flat.cart.extend_from_slice(f.cart());
            flat.event_ids.extend_from_slice(f.event_ids());
            flat.sent.extend_from_slice(f.sent());
        }
        flat.user_bytes = bytes + self.texts.approximate_bytes();
    }

    /// The whole state as stored parts: [`Self::encode_globals`] and every row
    /// ([`Self::each_row`]), in key order.
    #[allow(clippy::type_complexity)]
    pub fn encode_whole(&self) -> Result<(Vec<u8>, Vec<(u64, Vec<u8>)>), ActStateError> {
        let mut rows = Vec::with_capacity(self.users.len() + self.texts.len());
        self.each_row(
            |key, bytes| {
                rows.push((key, bytes.to_vec()));
                Ok(())
            },
            |e| e,
        )?;
        Ok((self.encode_globals()?, rows))
    }

    /// The state from its globals and its rows (users' and texts'), the rows in key order
    /// (a table's order). A format-1 globals value is the whole state (there are no rows
    /// yet); it decodes with `legacy` set, as do format-2 globals and format-1 user rows
    /// (their texts are interned here).
    pub fn decode_stored<'a>(
        globals: &[u8],
        rows: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<StoredState, ActStateError> {
        Self::decode_rows(globals, rows, RowOrder::Keys)
    }

    /// [`Self::decode_stored`] of rows in the order of the places their users were held
    /// at ([`Self::each_row_by_place`]): any order of keys, each key once. The users take
    /// places in the order given, so the state read encodes its rows in that order again.
    pub fn decode_by_place<'a>(
        globals: &[u8],
        rows: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<StoredState, ActStateError> {
        Self::decode_rows(globals, rows, RowOrder::Places)
    }

    fn decode_rows<'a>(
        globals: &[u8],
        rows: impl IntoIterator<Item = (u64, &'a [u8])>,
        order: RowOrder,
    ) -> Result<StoredState, ActStateError> {
        let mut legacy = false;
        // Format-1 users, migrated once the stored texts are all read.
        let mut old_users: Vec<(u64, UserPseudonym, UserFactsV1, Option<i64>)> = Vec::new();
        let mut state = match globals.split_first() {
            None => return Err(ActStateError::Empty),
            Some((&WHOLE_STATE_FORMAT, body)) => {
                legacy = true;
                let whole: ActStateV1 = decode(body)?;
                // Rows in pseudonym order, the order the whole state was encoded in.
                for (row, (pseudonym, facts)) in whole.users.into_iter().enumerate() {
                    let candidate = whole.candidates.get(&pseudonym).copied();
                    old_users.push((row as u64, pseudonym, facts, candidate));
                }
                ActState {
                    segments: whole.segments,
                    max_event_ms: whole.max_event_ms,
                    judged_through_ms: whole.judged_through_ms,
                    advanced_minute_ms: whole.advanced_minute_ms,
                    withheld: whole.withheld,
                    next_row: old_users.len() as u64,
                    candidates: whole.candidates.into_iter().collect(),
                    ..ActState::default()
                }
            }
            Some((&GLOBALS_V2, body)) => {
                legacy = true;
                let g: GlobalsV2 = decode(body)?;
                ActState {
                    segments: g.segments,
                    max_event_ms: g.max_event_ms,
                    judged_through_ms: g.judged_through_ms,
                    advanced_minute_ms: g.advanced_minute_ms,
                    withheld: g.withheld,
                    next_row: g.next_row,
                    ..ActState::default()
                }
            }
            Some((&ACT_STATE_FORMAT, body)) => {
                let g: Globals = decode(body)?;
                ActState {
                    segments: g.segments,
                    max_event_ms: g.max_event_ms,
                    judged_through_ms: g.judged_through_ms,
                    advanced_minute_ms: g.advanced_minute_ms,
                    withheld: g.withheld,
                    next_row: g.next_row,
                    trigger_names: g.trigger_names,
                    texts: Texts::restore(g.texts_added, g.texts_not_kept),
                    ..ActState::default()
                }
            }
            Some((&found, _)) => return Err(ActStateError::Version { found }),
        };
        // A user's row key is below the next one given, and that below the texts' keys:
        // else a new user would be given a stored user's key (one row for two users), or a
        // key read back as a text's.
        if state.next_row >= TEXT_ROWS {
            return Err(ActStateError::Body(format!(
                "next row key {} among the texts' keys",
                state.next_row
            )));
        }
        // Each key once: two users under one key would be one row in the store, and (in
        // key order) be encoded in the map's order, so the same state would give other
        // bytes (found by the fuzz target `trigger_stage`). Rows in key order are checked
        // as they come; rows by place once all are read (their keys sorted apart).
        let mut last_key: Option<u64> = None;
        let mut keys: Vec<u64> = Vec::new();
        for (key, row) in rows {
            match order {
                RowOrder::Keys => {
                    if last_key.is_some_and(|last| key <= last) {
                        return Err(ActStateError::Body(format!(
                            "row key {key} after row key {} (rows must come in key order, \
                             each key once)",
                            last_key.unwrap_or_default()
                        )));
                    }
                    last_key = Some(key);
                }
                RowOrder::Places => keys.push(key),
            }
            let Some((&format, body)) = row.split_first() else {
                return Err(ActStateError::Empty);
            };
            if key >= TEXT_ROWS {
                if format != TEXT_ROW_FORMAT {
                    return Err(ActStateError::Version { found: format });
                }
                let text: &str = decode(body)?;
                let id = u32::try_from(key - TEXT_ROWS)
                    .map_err(|_| ActStateError::Body(format!("text row key {key}")))?;
                (state.texts.put(id, text)).map_err(ActStateError::Body)?;
                continue;
            }
            let (pseudonym, mut facts, candidate) = match format {
                USER_ROW_FORMAT => from_row(decode::<Row>(body)?),
                USER_ROW_V1 => {
                    legacy = true;
                    let (pseudonym, facts, candidate) =
                        decode::<(UserPseudonym, UserFactsV1, Option<i64>)>(body)?;
                    old_users.push((key, pseudonym, facts, candidate));
                    continue;
                }
                found => return Err(ActStateError::Version { found }),
            };
            if key >= state.next_row {
                return Err(ActStateError::Body(format!(
                    "a user's row key {key} is not below the next row key {}",
                    state.next_row
                )));
            }
            facts.row = key;
            if state.users.insert(pseudonym, facts).is_some() {
                return Err(ActStateError::Body(format!(
                    "a user has two rows (the second at key {key})"
                )));
            }
            if let Some(latest) = candidate {
                state.candidates.push(pseudonym, latest);
            }
        }
        keys.sort_unstable();
        if let Some(pair) = keys.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ActStateError::Body(format!(
                "row key {} given twice (each key once)",
                pair[0]
            )));
        }
        drop(keys);
        // Every text a stored user refers to must be stored (else its id could later be
        // given to another text).
        let mut held = state.texts.marks();
        for (id, _) in state.texts.entries() {
            held[id.0 as usize] = true;
        }
        for facts in state.users.values() {
            let mut missing = None;
            facts.each_text(|id| {
                if id != TextId::NOT_KEPT && !held.get(id.0 as usize).copied().unwrap_or(false) {
                    missing = Some(id);
                }
            });
            if let Some(id) = missing {
                return Err(ActStateError::Body(format!(
                    "a user refers to text {} not stored",
                    id.0
                )));
            }
            if let Some((id, _)) =
                (facts.sent().iter()).find(|(id, _)| state.trigger_names.name(*id).is_none())
            {
                return Err(ActStateError::Body(format!(
                    "a user refers to trigger {} not stored",
                    id.0
                )));
            }
        }
        for (row, pseudonym, facts, candidate) in old_users {
            if row >= state.next_row {
                return Err(ActStateError::Body(format!(
                    "a user's row key {row} is not below the next row key {}",
                    state.next_row
                )));
            }
            let mut facts = facts.migrate(&mut state.texts, &mut state.trigger_names);
            facts.row = row;
            if state.users.insert(pseudonym, facts).is_some() {
                return Err(ActStateError::Body(format!(
                    "a user has two rows (the second at key {row})"
                )));
            }
            if let Some(latest) = candidate {
                state.candidates.push(pseudonym, latest);
            }
        }
        state.candidates.normalize();
        Ok(StoredState { state, legacy })
    }
}

impl Engine {
    /// The globals and the rows of the users changed since the last call (every user the
    /// engine observed, judged, sent, pruned or forgot), and forgets the changes.
    pub fn take_changes(&mut self) -> Result<StateChanges, ActStateError> {
        // (So that each changed user's candidate time is found by a binary search.)
        self.state.candidates.normalize();
        let mut users: Vec<(u64, Option<Vec<u8>>)> =
            Vec::with_capacity(self.changed.users.len() + self.changed.forgotten_rows.len());
        for pseudonym in self.changed.users.drain() {
            // A user forgotten since is in `forgotten_rows`.
            if let Some((key, row)) = self.state.encode_user(&pseudonym)? {
                users.push((key, Some(row)));
            }
        }
        for (id, text) in self.state.texts.take_changed() {
            let row = text.map(|t| body(TEXT_ROW_FORMAT, t)).transpose()?;
            users.push((TEXT_ROWS + u64::from(id.0), row));
        }
        users.extend((self.changed.forgotten_rows.drain(..)).map(|key| (key, None)));
        users.sort_unstable_by_key(|(key, _)| *key);
        Ok(StateChanges {
            globals: self.state.encode_globals()?,
            users,
        })
    }

    /// Counts every user and text as changed (the next [`Engine::take_changes`] writes
    /// them all).
    pub fn mark_all_changed(&mut self) {
        self.changed.extend(self.state.users.keys().copied());
        self.state.texts.mark_all_changed();
    }
}

#[cfg(test)]
mod tests {
    /// Every snapshot's copy writes one per user held (millions): its size is the copy's
    /// and the encoding's memory traffic (see [`super::FlatUser`]).
    #[test]
    fn a_flat_user_is_88_bytes() {
        assert_eq!(std::mem::size_of::<super::FlatUser>(), 88);
    }
}
