//! The trigger engine: per-user and per-segment state machines, fed accepted log records in
//! log order, with event time; pure and deterministic (no clock, no I/O).
//!
//! ```text
//! observe_judged(event, the pipeline's verdict)   (the trigger stage; observe: judging itself)
//!                     ─► per-user facts (consent, intents, cart, conversions)
//!                        ─► tag and conversion_feed outputs at once
//! judge_minute(m, KPI totals of [m − over, m)) ─► segment_cpa: firing / recovered signals,
//!                        and while firing the segment's users with intent and no conversion
//! advance(watermark)  ─► abandoned carts whose delay passed; pruning by time
//! ```
//!
//! - **Segment CPA** is judged on the KPI store's 1-minute rows with the alert rules' own
//!   functions ([`group_totals`](crate::watch::evaluate::group_totals), the same volume
//!   guard), so it means the segment's attributed clean conversions against its spend.
//!   Intent (a product view or an add to cart) is placed in the (channel, campaign) the
//!   pipeline counts its event under: the session's touch under the attribution model,
//!   folded as the KPI rows are ([`Engine::observe_judged`]).
//! - **Clean conversions** (conversion_feed, tag, abandoned cart): a conversion type (from
//!   the pipeline settings) that the pipeline accepted (not a duplicate) and did not flag
//!   by a sequence rule. An out-of-order registration that arrives after the purchase does
//!   not take back a push already made.
//! - **Which users**: only an intent or a clean conversion makes a user; a visit that can
//!   select no one leaves nothing. ([`Engine::observe`], the engine judging events itself
//!   by its own checks and keeping each visitor a day for its touch, is what the engine's
//!   unit tests and the consumer-era benches drive.)
//! - **Consent**: a user's marketing consent is the last explicit value its events gave; a
//!   user without it is counted (`withheld`) and never selected.
//! - **Cooldown** per trigger and user; **bounded state**: each user keeps at most
//!   [`MAX_INTENTS`] intents and [`MAX_CART_LINES`] cart lines, and is forgotten once the
//!   watermark is past its last event by the longest trigger horizon and past its cooldowns.
//! - **Compact facts**: a user's facts hold no text: channel, campaign, product id and
//!   conversion kind are ids into [`ActState::texts`] (bounded, reclaimed; see [`Texts`]),
//!   cooldowns are by [`TriggerId`]. A one-event user's stored row is about 50 bytes.

use super::push::{PushEvent, SegmentSignal, SignalNotice};
use super::triggers::{TagWhen, Trigger, TriggerKind};
use crate::enrich::{DIRECT, EnrichConfig, campaign_of, channel_of};
use crate::pipeline::hash::{FastHashMap, FastHashState};
use crate::record::{EventKind, StoredEvent, UserPseudonym};
use crate::watch::evaluate::{GroupTotals, measured_value};
use crate::watch::rules::Dimension;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Intents kept per user (the newest win).
pub const MAX_INTENTS: usize = 8;

/// Adds `intent` to a user's intents. One that says everything the last held says (the
/// same segment, the same minute, no earlier, and a product unless the last had none)
/// takes its place instead of following it: every judging then finds what it found with
/// both held (the latest intent in a firing segment within the window, and the product
/// of the latest with one: the window ends at a minute's end, so the two fall on the same
/// side of it, and a window that starts after the earlier still holds the later), and a
/// user's second look at the same segment, most users' second intent, needs no block of
/// its own (a spilled [`Intents`] is an allocation per user:
/// about a tenth of the stage's time at 100,000 events/s, stop 29's `perf`).
fn hold_intent(intents: &mut Intents, intent: Intent) {
    if let Some(last) = intents.last_mut()
        && last.dims == intent.dims
        && minute_of(last.at_ms) == minute_of(intent.at_ms)
        && last.at_ms <= intent.at_ms
        && (intent.product_id.is_some() || last.product_id.is_none())
    {
        *last = intent;
        return;
    }
    if intents.len() >= MAX_INTENTS {
        intents.remove(0);
    }
    intents.push(intent);
}
/// Cart lines kept per user.
pub const MAX_CART_LINES: usize = 16;
/// Event ids remembered per user for dedup.
pub const MAX_EVENT_IDS: usize = 8;
/// The longest product id or dimension value kept (longer ones are cut, on a char edge).
pub const MAX_TEXT_BYTES: usize = 128;
/// How long a user's last non-direct touch stands in for a direct event (the attribution
/// lookback's default).
pub const TOUCH_LOOKBACK_MS: i64 = 30 * 86_400_000;
const NEAR_DUPLICATE_MS: i64 = 100;
const FAST_CHECKOUT_MS: i64 = 5_000;

mod candidates;
mod legacy;
mod stored;
mod texts;
mod users;
pub use candidates::Candidates;
pub use stored::{
    ACT_STATE_FORMAT, FlatRows, StateChanges, StoredState, TEXT_ROWS, USER_ROW_FORMAT,
};
pub use texts::{MAX_TEXTS, MaybeTextId, TextId, Texts, TriggerId, TriggerNames};
pub use users::{UserRef, UserTable};

/// The most users the engine holds by default ([`Engine::with_max_users`]): about 0.5 GB
/// of slots (128 bytes each), and the boxes of the few with a cart or a cooldown. At a
/// new user past it, the users waiting for nothing but a segment to fire (an intent, no
/// cart, no cooldown) are let go, oldest minute of last events first.
pub const MAX_USERS: usize = 4_000_000;

/// When no one can be let go (every held user has a cart or a cooldown), the table grows
/// past its bound, and room is looked for again only every 1/`EVICTION_RETRY_PARTS` of
/// the bound more (at least [`EVICTION_RETRY_MIN`] users): a full table of users that
/// cannot go must not cost a walk of it per new user. (A count of the state, not a flag:
/// a restored engine looks at the same users as the one it replaces, and so lets the same
/// users go.)
const EVICTION_RETRY_PARTS: usize = 64;
const EVICTION_RETRY_MIN: usize = 4_096;

/// A full table lets go until this part of the bound is free (see [`Engine::make_room`]).
const EVICTION_ROOM_PARTS: usize = 64;

/// How far ahead of the entry it judges the walk at the bound asks for a place: enough
/// to cover a read of memory no cache holds with the work of the entries between, few
/// enough that the places asked for stay in the cache until their turn.
const WALK_PREFETCH: usize = 16;

/// The first [`MAX_TEXT_BYTES`] of `text`, cut on a char edge.
fn clipped(text: &str) -> &str {
    let mut end = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn clip(text: &str) -> String {
    clipped(text).to_owned()
}

/// How a channel or campaign is kept: itself when it fits in [`MAX_TEXT_BYTES`], else its
/// start, a control character (which no value has: intake refuses them) and a hash of the
/// whole. A long value then reads as no other value (cut, it read as the value spelled
/// like its start), and a firing segment's group is tested in the same form
/// ([`Selecting::in_firing`]).
fn dim_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_TEXT_BYTES {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = MAX_TEXT_BYTES - 17;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
    std::borrow::Cow::Owned(format!("{}\u{1}{hash:016x}", &text[..end]))
}

/// The id of the clipped `text`: `hint` when it already reads so (no lookup), else interned.
fn text_id(texts: &mut Texts, hint: Option<TextId>, text: &str) -> TextId {
    let text = clipped(text);
    match hint {
        Some(id) if texts.is(id, text) => id,
        _ => texts.intern(text),
    }
}

/// A product view or add to cart, placed in its segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub at_ms: i64,
    pub add_to_cart: bool,
    /// Channel and campaign: what a CPA segment can be (spend has no device or region).
    pub dims: [TextId; 2],
    /// The product looked at (an `Option<TextId>` in 4 bytes).
    pub product_id: MaybeTextId,
}

/// An add to cart not yet followed by a purchase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CartLine {
    pub at_ms: i64,
    pub product_id: Option<TextId>,
    pub value: Option<f64>,
}

/// A user's intents: the first two held in the facts themselves (most users show one or
/// two intents in the triggers' horizon, and a block of its own per user was an
/// allocation per new user: a tenth of the trigger stage's time at 100,000 events/s; with
/// one inline, a second intent in another segment or minute still took one, a fresh
/// page's worth of them every few thousand users).
pub type Intents = smallvec::SmallVec<[Intent; 2]>;
/// A user's cart lines, the first held in the facts (as [`Intents`]).
pub type CartLines = smallvec::SmallVec<[CartLine; 1]>;

/// What the engine keeps of one user: times, flags and small ids (texts in
/// [`ActState::texts`], trigger names in [`ActState::trigger_names`]).
///
/// Held for millions of users and reached at random, one slot per user
/// ([`UserTable`]), so it is kept to what most users have: its times, its intents (the
/// first inline), its conversions. What few have (a cart, cooldowns) and what only the
/// engine's own judging fills (the touch, event ids, the registration time: empty on the
/// pipeline's verdicts) sit behind one box, [`MoreFacts`]: 112 bytes (two intents inline)
/// instead of 232, so a slot takes two cache lines instead of four (docs/triggers.md,
/// "After stage 5", steps 7 and 13).
/// Encoded as before ([`FactsFields`]): the stored formats do not change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "FactsFields", into = "FactsFields")]
pub struct UserFacts {
    /// The key of the user's stored row: given in the order users are first seen, so the
    /// users a commit writes (mostly recent ones) sit in a few pages of the store, not one
    /// page each. Not in the row's value (it is the key).
    pub row: u64,
    /// The time of the user's last event that gave the triggers a fact: with the
    /// pipeline's verdicts an intent or a clean conversion (a visit that can select no one
    /// only brings its consent); judging itself, any event (its touch). A user is held
    /// for the horizon after it, and let go by its minute.
    pub last_seen_ms: i64,
    pub intents: Intents,
    pub last_conversion_ms: Option<i64>,
    pub last_conversion_kind: Option<TextId>,
    pub purchases: u32,
    pub marketing: bool,
    /// Whether the user has a cart or cooldowns (then not let go at the bound), known
    /// without reading the box: the walk at the bound read every kept user's box again at
    /// each letting-go, a cache miss each (two thirds of the walk at 100,000 events/s,
    /// `perf`, stop 31). Set where a cart line or a send is added, recomputed by
    /// [`Self::change_more`]; derived, not stored (see [`Self::has_cart_or_cooldown`]).
    kept: bool,
    /// Made when one of its facts is first set ([`Self::more_mut`]), let go once a change
    /// empties it ([`Self::change_more`]); `None` for most users.
    more: Option<Box<MoreFacts>>,
}

/// The facts few users have (see [`UserFacts`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MoreFacts {
    /// Latest non-direct (channel, campaign) and its time.
    pub touch: Option<(TextId, TextId, i64)>,
    pub last_registration_ms: Option<i64>,
    pub cart: CartLines,
    /// Hashes of the last event ids (xxh3), for exact-duplicate drops (stored as 8 bytes
    /// each: a varint of a hash takes 9 or 10).
    pub event_ids: Vec<u64>,
    /// (trigger, last sent event time) for cooldowns.
    pub sent: Vec<(TriggerId, i64)>,
}

impl MoreFacts {
    fn is_empty(&self) -> bool {
        self.touch.is_none()
            && self.last_registration_ms.is_none()
            && self.cart.is_empty()
            && self.event_ids.is_empty()
            && self.sent.is_empty()
    }
}

/// Equal when they say the same: a box of empty facts is as none.
impl PartialEq for UserFacts {
    fn eq(&self, other: &Self) -> bool {
        self.row == other.row
            && self.last_seen_ms == other.last_seen_ms
            && self.intents == other.intents
            && self.last_conversion_ms == other.last_conversion_ms
            && self.last_conversion_kind == other.last_conversion_kind
            && self.purchases == other.purchases
            && self.marketing == other.marketing
            && self.touch() == other.touch()
            && self.last_registration_ms() == other.last_registration_ms()
            && self.cart() == other.cart()
            && self.event_ids() == other.event_ids()
            && self.sent() == other.sent()
    }
}

/// [`UserFacts`] field by field, in the order (and with the encodings) its serde form has
/// always had.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FactsFields {
    #[serde(skip)]
    pub row: u64,
    pub marketing: bool,
    pub last_seen_ms: i64,
    pub touch: Option<(TextId, TextId, i64)>,
    pub intents: Intents,
    pub last_conversion_ms: Option<i64>,
    pub last_conversion_kind: Option<TextId>,
    pub last_registration_ms: Option<i64>,
    pub cart: CartLines,
    pub purchases: u32,
    #[serde(with = "fixed_u64s")]
    pub event_ids: Vec<u64>,
    pub sent: Vec<(TriggerId, i64)>,
}

impl From<FactsFields> for UserFacts {
    fn from(f: FactsFields) -> Self {
        let more = MoreFacts {
            touch: f.touch,
            last_registration_ms: f.last_registration_ms,
            cart: f.cart,
            event_ids: f.event_ids,
            sent: f.sent,
        };
        UserFacts {
            row: f.row,
            last_seen_ms: f.last_seen_ms,
            intents: f.intents,
            last_conversion_ms: f.last_conversion_ms,
            last_conversion_kind: f.last_conversion_kind,
            purchases: f.purchases,
            marketing: f.marketing,
            kept: !more.cart.is_empty() || !more.sent.is_empty(),
            // (No box for users with none of these: most of a restored state's.)
            more: (!more.is_empty()).then(|| Box::new(more)),
        }
    }
}

impl From<UserFacts> for FactsFields {
    fn from(f: UserFacts) -> Self {
        let more = f.more.map(|m| *m).unwrap_or_default();
        FactsFields {
            row: f.row,
            marketing: f.marketing,
            last_seen_ms: f.last_seen_ms,
            touch: more.touch,
            intents: f.intents,
            last_conversion_ms: f.last_conversion_ms,
            last_conversion_kind: f.last_conversion_kind,
            last_registration_ms: more.last_registration_ms,
            cart: more.cart,
            purchases: f.purchases,
            event_ids: more.event_ids,
            sent: more.sent,
        }
    }
}

/// A list of `u64` as 8 little-endian bytes each.
mod fixed_u64s {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(values: &[u64], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(|v| v.to_le_bytes()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u64>, D::Error> {
        let bytes = Vec::<[u8; 8]>::deserialize(deserializer)?;
        Ok(bytes.into_iter().map(u64::from_le_bytes).collect())
    }
}

/// Bytes a list's entries take outside the facts (none while they fit inline).
fn heap_bytes<A: smallvec::Array>(list: &smallvec::SmallVec<A>) -> usize {
    if list.spilled() {
        list.len() * std::mem::size_of::<A::Item>()
    } else {
        0
    }
}

impl UserFacts {
    /// Bytes this user's facts take in memory (approximate; the texts are counted once, in
    /// [`Texts::approximate_bytes`]).
    pub fn approximate_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + heap_bytes(&self.intents)
            + self.more.as_ref().map_or(0, |m| {
                std::mem::size_of::<MoreFacts>()
                    + heap_bytes(&m.cart)
                    + m.event_ids.len() * 8
                    + m.sent.len() * std::mem::size_of::<(TriggerId, i64)>()
            })
    }

    /// Latest non-direct (channel, campaign) and its time (the engine's own judging only).
    pub fn touch(&self) -> Option<(TextId, TextId, i64)> {
        self.more.as_ref().and_then(|m| m.touch)
    }

    /// The latest registration (the engine's own judging only).
    pub fn last_registration_ms(&self) -> Option<i64> {
        self.more.as_ref().and_then(|m| m.last_registration_ms)
    }

    /// Add-to-cart lines not yet followed by a purchase.
    pub fn cart(&self) -> &[CartLine] {
        self.more.as_ref().map_or(&[], |m| &m.cart)
    }

    /// Hashes of the last event ids (the engine's own judging only).
    pub fn event_ids(&self) -> &[u64] {
        self.more.as_ref().map_or(&[], |m| &m.event_ids)
    }

    /// (trigger, last sent event time) for cooldowns.
    pub fn sent(&self) -> &[(TriggerId, i64)] {
        self.more.as_ref().map_or(&[], |m| &m.sent)
    }

    /// Asks the CPU for the box of the facts few users have, when there is one, without
    /// waiting ([`users::prefetch`]): a walk of every user in slot order reads the slots
    /// one after another, but their boxes lie anywhere in memory.
    #[inline]
    fn prefetch_more(&self) {
        if let Some(more) = &self.more {
            users::prefetch(&**more);
        }
    }

    /// As [`Self::prefetch_more`], for the lists the box points to (its cooldowns, a
    /// spilled cart, event ids); reads the box, so best once [`Self::prefetch_more`] has
    /// brought it in.
    #[inline]
    fn prefetch_more_lists(&self) {
        if let Some(more) = &self.more {
            if let Some(first) = more.sent.first() {
                users::prefetch(first);
            }
            if more.cart.spilled()
                && let Some(first) = more.cart.first()
            {
                users::prefetch(first);
            }
            if let Some(first) = more.event_ids.first() {
                users::prefetch(first);
            }
        }
    }

    /// The facts few users have, made when first needed. Not public: a cart line or a
    /// send added through it must also set [`Self::kept`], which only this module does.
    fn more_mut(&mut self) -> &mut MoreFacts {
        self.more.get_or_insert_with(Box::default)
    }

    /// Changes the facts few users have, when the user has any (none made). Gives back
    /// whether the change let go of the user's last cart line and cooldown: the user can
    /// then be let go at the bound, and must be listed where the walk there looks
    /// ([`Sweep::idle`], see [`Sweep::idle_kept`]).
    #[must_use]
    fn change_more(&mut self, change: impl FnOnce(&mut MoreFacts)) -> bool {
        let Some(more) = &mut self.more else {
            return false;
        };
        change(more);
        let was_kept = self.kept;
        self.kept = !more.cart.is_empty() || !more.sent.is_empty();
        self.tidy();
        was_kept && !self.kept
    }

    /// Whether the user has a cart line or a cooldown, from the facts' own flag (no read
    /// of the box).
    #[inline]
    fn has_cart_or_cooldown(&self) -> bool {
        debug_assert_eq!(
            self.kept,
            !self.cart().is_empty() || !self.sent().is_empty(),
            "the kept flag says what the box holds"
        );
        self.kept
    }

    /// Lets go of the box once nothing is in it.
    fn tidy(&mut self) {
        if self.more.as_ref().is_some_and(|m| m.is_empty()) {
            self.more = None;
        }
    }

    /// Calls `f` with every text id the facts refer to.
    pub fn each_text(&self, mut f: impl FnMut(TextId)) {
        if let Some((c, k, _)) = self.touch() {
            f(c);
            f(k);
        }
        for intent in &self.intents {
            f(intent.dims[0]);
            f(intent.dims[1]);
            intent.product_id.get().map(&mut f);
        }
        for line in self.cart() {
            line.product_id.map(&mut f);
        }
        self.last_conversion_kind.map(&mut f);
    }

    fn in_cooldown(&self, trigger: TriggerId, cooldown_ms: i64, at_ms: i64) -> bool {
        self.sent()
            .iter()
            .any(|(t, sent)| *t == trigger && at_ms < sent.saturating_add(cooldown_ms))
    }

    fn mark_sent(&mut self, trigger: TriggerId, at_ms: i64) {
        let sent = &mut self.more_mut().sent;
        match sent.iter_mut().find(|(t, _)| *t == trigger) {
            Some(entry) => entry.1 = at_ms,
            None => sent.push((trigger, at_ms)),
        }
        self.kept = true;
    }
}

/// A segment trigger's state for one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentState {
    pub since_ms: i64,
    pub cpa: Option<f64>,
}

/// Everything the engine keeps: stored with the consumed offset, in one commit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActState {
    /// By pseudonym (see [`UserTable`]), encoded in pseudonym order (the same bytes as the
    /// `BTreeMap` of format 1).
    pub users: UserTable,
    /// Firing segments by (trigger, group values).
    pub segments: BTreeMap<(String, Vec<String>), SegmentState>,
    /// The highest event time observed.
    pub max_event_ms: Option<i64>,
    /// The end of the last minute judged.
    pub judged_through_ms: Option<i64>,
    /// The minute (start) the per-user scan of [`Engine::advance`] last ran in.
    pub advanced_minute_ms: Option<i64>,
    /// Selections not sent for lack of marketing consent, by trigger.
    pub withheld: BTreeMap<String, u64>,
    /// The next user row key ([`UserFacts::row`]); stored with the globals (format 1, the
    /// whole state in one value, had no rows).
    #[serde(skip)]
    pub next_row: u64,
    /// Users with an intent not yet judged at a minute end after it: while a segment
    /// fires, only these are looked at. (An intent observed before its minute is judged, as
    /// in a catch-up or a backtest, waits here.) A list appended to (see [`Candidates`]):
    /// a map looked up by every intent was a seventh of the stage's time.
    pub candidates: Candidates,
    /// The texts the users' facts refer to (bounded; see [`Texts`]): stored as rows of their
    /// own, written when added or freed.
    pub texts: Texts,
    /// The trigger names the users' cooldowns refer to; stored with the globals.
    pub trigger_names: TriggerNames,
}

/// Why stored state does not decode.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActStateError {
    #[error("trigger state of format {found}; this build reads format {ACT_STATE_FORMAT}")]
    Version { found: u8 },
    #[error("empty trigger state")]
    Empty,
    #[error("trigger state does not decode: {0}")]
    Body(String),
}

/// One thing a trigger decided to send (or a user it selected but withheld).
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Index of the trigger in the engine's set.
    pub trigger: usize,
    /// The segment's dimension values (segment_cpa; empty otherwise).
    pub group: Vec<(String, String)>,
    pub user: Option<UserPseudonym>,
    pub event: Option<PushEvent>,
    pub signal: Option<SignalNotice>,
    /// Event time it was decided at.
    pub at_ms: i64,
}

/// The engine over a trigger set and its state.
pub struct Engine {
    triggers: Vec<Trigger>,
    /// Each trigger's id in [`ActState::trigger_names`] (by index in `triggers`).
    trigger_ids: Vec<TriggerId>,
    /// The cooldown of each trigger in force, by its id (`None`: not in force).
    cooldown_of: Vec<Option<i64>>,
    /// The shop's own hosts, for the channel grouping (as the pipeline's enrichment).
    internal_hosts: Vec<String>,
    /// Whether any trigger is a segment_cpa (else no candidates are kept).
    has_segment_triggers: bool,
    /// The triggers a clean conversion may fire (tag, conversion_feed), in order.
    on_conversion: Vec<usize>,
    /// The shortest abandoned_cart delay (`None`: no cart trigger).
    first_cart_ms: Option<i64>,
    conversion_types: Vec<EventKind>,
    state: ActState,
    /// The longest per-user horizon of the set (intent window, cart delay).
    horizon_ms: i64,
    /// The (channel, campaign) segments of the candidates' intents, as small ids, so a
    /// segment trigger tests an intent by an index. Derived from the state (rebuilt on
    /// load, not stored): every intent of a candidate has an id.
    segment_ids: SegmentIds,
    /// Which users [`Engine::advance`] looks at (derived, rebuilt on load and reload).
    sweep: Sweep,
    /// The lists [`Engine::advance`] works in, kept between minutes.
    scratch: Scratch,
    /// Users changed and rows forgotten since the last [`Engine::take_changes`] (nothing
    /// once [`Engine::without_change_tracking`]).
    changed: Changes,
    /// Whether events come with the pipeline's verdicts ([`Engine::observe_judged`]): then
    /// a user is held only for what can select it (intents, a cart, cooldowns), not for a
    /// day for its touch, which the pipeline's attribution keeps.
    judged: bool,
    /// The (channel, campaign) text ids of the pipeline's dimension tuples met, by tuple id
    /// (derived: emptied when the texts are compacted, never stored).
    counted_texts: Vec<Option<[TextId; 2]>>,
    /// This engine's hint for "not held" ([`UserHint`]): distinct from every other
    /// engine's in the process, so that a hint an earlier engine left on a pipeline's user
    /// never reads as this one's.
    not_held_hint: u32,
    /// The most users held ([`MAX_USERS`] unless set).
    max_users: usize,
    /// Users let go for the bound since this engine was made ([`Engine::evicted_users`]).
    evicted_users: u64,
}

/// The hints the engine leaves on the pipeline's users ([`Judged::hint`]), so that an
/// event of a user the pipeline holds finds the user's facts without a lookup in the
/// engine's table of millions (a probe that missed the cache twice: half of the stage's
/// time at 100,000 events/s, `perf`). 0: nothing known; odd: not held by the engine whose
/// [`Engine::not_held_hint`] it is; even from 4: the position of the user's facts plus
/// one, times four, plus two when the user's marketing consent is on (the position is
/// checked against the pseudonym held there before use: a removal moves another user into
/// a freed place). The consent bit lets a visit that can select no one and brings the
/// consent the engine holds pass without reading the user's place (see
/// [`Engine::take_in_visit`]). Hints only spare lookups: what the engine decides is the
/// same without them.
struct UserHint;

impl UserHint {
    const UNKNOWN: u32 = 0;

    fn of_position(at: usize, marketing: bool) -> u32 {
        u32::try_from(at)
            .ok()
            .and_then(|at| at.checked_add(1))
            .and_then(|n| n.checked_mul(4))
            .map_or(Self::UNKNOWN, |hint| hint | (u32::from(marketing) << 1))
    }

    fn position(hint: u32) -> Option<usize> {
        (hint >= 4 && hint.is_multiple_of(2)).then(|| (hint / 4 - 1) as usize)
    }

    /// The position the hint names, when `user` is held there (a removal moves another
    /// user into a freed place).
    #[inline]
    fn place(hint: u32, users: &mut UserTable, user: &UserPseudonym) -> Option<usize> {
        Self::position(hint).filter(|p| users.at_mut(*p, user).is_some())
    }

    /// The marketing consent of the user at [`Self::position`], when the hint holds one.
    fn marketing(hint: u32) -> Option<bool> {
        Self::position(hint).map(|_| hint & 2 != 0)
    }
}

/// Gives each engine its own "not held" hint.
fn next_not_held_hint() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (n << 1) | 1
}

/// The pipeline's verdict as [`Engine::observe_with`] takes it (`None` there: the engine
/// judges the event itself).
#[derive(Clone, Copy, Debug)]
struct Verdict {
    flagged: bool,
    /// The (channel, campaign) the event is counted under.
    placement: Option<[TextId; 2]>,
}

/// A product view or an add to cart: what can make a user a candidate or fill a cart.
#[inline]
fn is_intent(event: &StoredEvent) -> bool {
    match event.kind {
        EventKind::AddToCart => true,
        EventKind::PageView => event.product_id.is_some(),
        _ => false,
    }
}

/// The most tuple ids [`Engine::observe_judged`] remembers the texts of (the pipeline's
/// tuples are bounded by its settings; past this the texts are looked up each time).
const MAX_COUNTED_TEXTS: usize = 1 << 20;

/// What the pipeline made of an event, as [`Engine::observe_judged`] takes it.
#[derive(Clone, Copy, Debug)]
pub struct Judged<'a> {
    /// A duplicate or a refund: nothing of it is observed.
    pub ignored: bool,
    /// Flagged by a sequence rule: not a clean conversion.
    pub flagged: bool,
    /// The id and the tuple its contribution is counted under (see
    /// [`crate::pipeline::EventVerdict`]).
    pub counted: Option<(
        crate::pipeline::kpi::DimsId,
        &'a crate::pipeline::dims::Dims,
    )>,
    /// The hint this engine left on the event's user in the pipeline
    /// ([`crate::pipeline::Pipeline::last_stage_hint`]; 0 when none).
    pub hint: u32,
}

/// What [`Engine::take_changes`] writes next: the users changed since the last take and
/// the rows of the users forgotten. Off ([`Engine::without_change_tracking`]) when the
/// state is stored whole instead (the trigger stage's snapshot section): then nothing is
/// recorded, and a user's change costs one branch, not a hash set insert.
#[derive(Debug)]
struct Changes {
    on: bool,
    users: HashSet<UserPseudonym, FastHashState>,
    forgotten_rows: Vec<u64>,
}

impl Changes {
    #[inline]
    fn insert(&mut self, user: UserPseudonym) {
        if self.on {
            self.users.insert(user);
        }
    }

    fn extend(&mut self, users: impl IntoIterator<Item = UserPseudonym>) {
        if self.on {
            self.users.extend(users);
        }
    }

    fn forgot(&mut self, row: u64) {
        if self.on {
            self.forgotten_rows.push(row);
        }
    }
}

/// Cooldown lists up to this long are walked per trigger in `advance`; longer ones are read
/// once into a table for all cart triggers.
const SHORT_SENT: usize = 8;

fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60_000
}

/// The users [`Engine::advance`] has to look at, so that it does not walk every user
/// every minute. Derived from the state (not stored): rebuilt by [`Engine::set_triggers`].
#[derive(Debug, Default)]
struct Sweep {
    /// Users with a cart by the minute something may happen to it (a cart trigger's delay
    /// passes, or the cart is let go); stale entries are harmless (the user is looked at,
    /// nothing is due, it is listed again at its next time).
    cart_due: BTreeMap<i64, Vec<UserRef>>,
    /// Users by the minute of their last event (an entry is stale once the user's last
    /// event is in a later minute): looked at once idle for the keep time.
    idle: BTreeMap<i64, Vec<UserRef>>,
    /// Users the walk at the bound found in `idle` with a cart or a cooldown, by the same
    /// minute, moved here so that it does not walk them again at each letting-go: at
    /// 100,000 events/s most users held have one (a cooldown of a trigger that sent them),
    /// they gather in the oldest minutes, and the walk read two million of them each
    /// time the table filled, to let go of a few hundred late users (`perf` and the
    /// walk's own counts, stop 32). [`Engine::advance`] looks at them with `idle`'s. A
    /// user whose last cart line and cooldown go while it stays in its minute is listed
    /// in `idle` again ([`UserFacts::change_more`]): every user the walk may let go is in
    /// `idle` under the minute of its last event, as in an engine restored (whose `idle`
    /// lists every user), so both let the same users go.
    idle_kept: BTreeMap<i64, Vec<UserRef>>,
    /// Entries in `idle` and `idle_kept`: past twice the users, both are rebuilt (stale
    /// entries bounded).
    idle_entries: usize,
    /// Idle users kept for a cooldown or a cart, by the minute to look at them again.
    recheck: BTreeMap<i64, Vec<UserRef>>,
    /// Lists a sweep emptied, kept with their memory for later minutes' lists. At 100,000
    /// events/s a minute's list reaches tens of megabytes; grown by doubling and freed
    /// every minute, such lists left glibc's heap in large free pieces that the
    /// pipeline's small allocations (decoding every record) were then carved from.
    spare: Vec<Vec<UserRef>>,
}

/// Lists [`Sweep::spare`] keeps at most.
const SPARE_LISTS: usize = 4;

impl Sweep {
    /// `map`'s list under `minute`, the smallest spare one when there is none yet (a list
    /// of a few users: carts, rechecks, a late minute's idle users).
    fn under<'a>(
        map: &'a mut BTreeMap<i64, Vec<UserRef>>,
        spare: &mut Vec<Vec<UserRef>>,
        minute: i64,
    ) -> &'a mut Vec<UserRef> {
        map.entry(minute).or_insert_with(|| {
            let sized = (spare.iter().enumerate()).map(|(i, list)| (list.capacity(), i));
            sized
                .min()
                .map(|(_, i)| spare.swap_remove(i))
                .unwrap_or_default()
        })
    }

    /// The idle list of `minute`. A new minute's list (later than every listed one) takes
    /// the largest spare when it has room for an eighth more than the last minute's
    /// users, else is made with room for half more: grown by doubling from a smaller one,
    /// it was copied into fresh memory each time, which the kernel had to clear (a tenth
    /// of the stage's time at 100,000 events/s, `perf`, stop 31), and a list made at its
    /// minute's size would rarely fit the next. Lists of earlier minutes (a late event,
    /// users put back by [`Engine::advance`]) take the smallest spare.
    fn idle_at(&mut self, minute: i64) -> &mut Vec<UserRef> {
        let newest = self.idle.last_key_value();
        if newest.is_none_or(|(last, _)| *last < minute) {
            let last = newest.map_or(0, |(_, list)| list.len());
            let list = self.idle.entry(minute).or_insert_with(|| {
                let largest = (self.spare.iter().enumerate())
                    .max_by_key(|(_, list)| list.capacity())
                    .map(|(i, _)| i);
                match largest {
                    Some(i) if self.spare[i].capacity() >= last.saturating_add(last / 8) => {
                        self.spare.swap_remove(i)
                    }
                    _ => Vec::with_capacity(last.saturating_add(last / 2)),
                }
            });
            return list;
        }
        Self::under(&mut self.idle, &mut self.spare, minute)
    }

    /// Lists `user` under `minute` in `idle`.
    fn list_idle(&mut self, minute: i64, user: UserRef) {
        self.idle_at(minute).push(user);
        self.idle_entries += 1;
    }

    fn cart_due_at(&mut self, minute: i64) -> &mut Vec<UserRef> {
        Self::under(&mut self.cart_due, &mut self.spare, minute)
    }

    fn recheck_at(&mut self, minute: i64) -> &mut Vec<UserRef> {
        Self::under(&mut self.recheck, &mut self.spare, minute)
    }

    /// Keeps an emptied list's memory for a later one (see [`Self::spare`]).
    /// (With [`SPARE_LISTS`] kept, the smallest goes for a larger one.)
    fn give_back(&mut self, mut list: Vec<UserRef>) {
        if list.capacity() == 0 {
            return;
        }
        list.clear();
        if self.spare.len() < SPARE_LISTS {
            self.spare.push(list);
        } else if let Some(smallest) = (self.spare.iter_mut())
            .min_by_key(|kept| kept.capacity())
            .filter(|kept| kept.capacity() < list.capacity())
        {
            *smallest = list;
        }
    }
}

/// The lists [`Engine::advance`] fills and empties each minute, kept with their memory
/// (as [`Sweep::spare`]).
#[derive(Debug, Default)]
struct Scratch {
    refs: Vec<UserRef>,
    found: Vec<(UserPseudonym, usize)>,
    not_yet: Vec<(i64, UserRef)>,
    forgotten: Vec<UserRef>,
}

/// `user` listed at position `at` (of [`UserTable`], which holds fewer than 2³² users).
#[inline]
fn user_ref(user: UserPseudonym, at: usize) -> UserRef {
    UserRef {
        user,
        at: u32::try_from(at).unwrap_or(UserRef::UNKNOWN_AT),
    }
}

/// The users `refs` names that `users` still holds, each once, in pseudonym order, with
/// their positions, into `found` (emptied first, its memory kept).
fn found_in_order_into(
    users: &UserTable,
    refs: &[UserRef],
    found: &mut Vec<(UserPseudonym, usize)>,
) {
    found.clear();
    found.extend((refs.iter()).filter_map(|r| users.find(r).map(|at| (r.user, at))));
    found.sort_unstable();
    found.dedup();
}

/// The places of the users `candidates` lists that `users` holds, in order, each once;
/// each listed place asked for a few entries ahead, as the walk at the bound does
/// ([`WALK_PREFETCH`]).
fn candidate_places(users: &UserTable, candidates: &[candidates::Candidate]) -> Vec<u32> {
    let mut places = Vec::with_capacity(candidates.len());
    for (i, &(user, _, at)) in candidates.iter().enumerate() {
        if let Some((_, _, ahead)) = candidates.get(i + WALK_PREFETCH) {
            users.prefetch(*ahead as usize);
        }
        // (A place is below 2³², see `UserRef::at`.)
        if let Some(place) = (users.find(&UserRef { user, at })).and_then(|p| u32::try_from(p).ok())
        {
            places.push(place);
        }
    }
    places.sort_unstable();
    places.dedup();
    places
}

/// Ids handed out before the table is rebuilt from the candidates (bounds its memory).
const MAX_SEGMENT_IDS: u32 = 1 << 16;

/// (channel, campaign) text ids → id.
#[derive(Debug, Default)]
struct SegmentIds {
    ids: FastHashMap<[TextId; 2], u32>,
    next: u32,
}

impl SegmentIds {
    fn clear(&mut self) {
        self.ids.clear();
        self.next = 0;
    }

    /// Gives `dims` an id if it has none.
    fn intern(&mut self, dims: [TextId; 2]) {
        if let std::collections::hash_map::Entry::Vacant(vacant) = self.ids.entry(dims) {
            vacant.insert(self.next);
            self.next += 1;
        }
    }

    fn get(&self, dims: [TextId; 2]) -> Option<u32> {
        self.ids.get(&dims).copied()
    }
}

/// A segment_cpa trigger with firing segments, while a minute is judged.
struct Selecting<'a> {
    /// Its outputs' place in the minute's outputs.
    slot: usize,
    index: usize,
    trigger: &'a Trigger,
    trigger_id: TriggerId,
    rule: &'a crate::watch::rules::Rule,
    positions: Vec<usize>,
    /// The window's start.
    from: i64,
    /// A segment started firing this minute: every user is looked at.
    newly: bool,
    firing: HashSet<Vec<&'a str>, FastHashState>,
    /// The firing segments with a value longer than [`MAX_TEXT_BYTES`]: their values as
    /// kept ([`dim_text`]), and as named.
    firing_long: Vec<(Vec<String>, Vec<&'a str>)>,
    /// Whether each segment id is in a firing segment.
    flags: Vec<bool>,
}

impl Selecting<'_> {
    /// Whether the (channel, campaign) of text ids `dims` lies in a firing segment (never
    /// for a text not kept).
    fn in_firing_ids(&self, texts: &Texts, dims: [TextId; 2]) -> bool {
        match (texts.get(dims[0]), texts.get(dims[1])) {
            (Some(channel), Some(campaign)) => self.in_firing(&[channel, campaign]),
            _ => false,
        }
    }

    /// Whether (channel, campaign) `dims`, as kept ([`dim_text`]), lies in a firing segment.
    fn in_firing(&self, dims: &[&str; 2]) -> bool {
        let found = if self.positions.len() <= 2 {
            let mut key = [""; 2];
            for (k, p) in key.iter_mut().zip(&self.positions) {
                *k = dims[*p];
            }
            self.firing.contains(&key[..self.positions.len()])
        } else {
            let key: Vec<&str> = self.positions.iter().map(|p| dims[*p]).collect();
            self.firing.contains(key.as_slice())
        };
        found
            || (!self.firing_long.is_empty()
                && (self.long_group(&self.positions.iter().map(|p| dims[*p]))).is_some())
    }

    /// The firing segment with a long value whose values, as kept, are `kept`.
    fn long_group<'k>(&self, kept: &(impl Iterator<Item = &'k str> + Clone)) -> Option<&[&str]> {
        (self.firing_long.iter())
            .find(|(values, _)| values.iter().map(String::as_str).eq(kept.clone()))
            .map(|(_, named)| named.as_slice())
    }

    /// A firing group's values by name, from its values as kept.
    fn named_group<'k>(&self, kept: impl Iterator<Item = &'k str> + Clone) -> Vec<String> {
        match self.long_group(&kept) {
            Some(named) => named.iter().map(|v| (*v).to_owned()).collect(),
            None => kept.map(str::to_owned).collect(),
        }
    }
}

/// A user a segment trigger selected at a judged minute: what its output is made of
/// ([`Pick::output`]), small, so that the minute's selections are put in order before any
/// output is made.
struct Pick {
    /// The trigger's place among the minute's [`Selecting`].
    selecting: usize,
    user: UserPseudonym,
    /// The latest intent in the window in a firing segment: its time, its kind and its
    /// (channel, campaign).
    at_ms: i64,
    add_to_cart: bool,
    dims: [TextId; 2],
    /// The product of the latest intent with a kept one in the window, in the same group.
    product: MaybeTextId,
}

impl Pick {
    fn output(&self, s: &Selecting<'_>, texts: &Texts, minute_end: i64) -> Output {
        // (The intent lies in a firing segment: its texts are kept.)
        let group = s.named_group(
            (s.positions.iter()).map(|p| texts.get(self.dims[*p]).unwrap_or_default()),
        );
        Output {
            trigger: s.index,
            group: named(s.rule, &group),
            user: Some(self.user),
            event: Some(PushEvent {
                user: self.user.to_hex(),
                kind: if self.add_to_cart {
                    "add_to_cart"
                } else {
                    "page_view"
                }
                .into(),
                value: None,
                at_ms: self.at_ms,
                product_id: self
                    .product
                    .get()
                    .and_then(|id| texts.get(id))
                    .map(str::to_owned),
                product_ids: Vec::new(),
                cart_value: None,
                tag: None,
            }),
            signal: None,
            at_ms: minute_end,
        }
    }
}

/// A group's values with their dimensions' names.
fn named(rule: &crate::watch::rules::Rule, values: &[String]) -> Vec<(String, String)> {
    rule.group_by
        .iter()
        .map(|d| d.name().to_owned())
        .zip(values.iter().cloned())
        .collect()
}

/// Where each `group_by` dimension is in an intent's dims (`None`: not a CPA dimension).
fn positions(rule: &crate::watch::rules::Rule) -> Option<Vec<usize>> {
    rule.group_by
        .iter()
        .map(|d| match d {
            Dimension::Channel => Some(0),
            Dimension::Campaign => Some(1),
            Dimension::Device | Dimension::Region => None,
        })
        .collect()
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("triggers", &self.triggers.len())
            .field("users", &self.state.users.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with the default enrichment settings; see [`Engine::with_enrichment`].
    pub fn new(triggers: Vec<Trigger>, conversion_types: Vec<EventKind>, state: ActState) -> Self {
        let mut engine = Engine {
            triggers: Vec::new(),
            trigger_ids: Vec::new(),
            cooldown_of: Vec::new(),
            internal_hosts: Vec::new(),
            has_segment_triggers: false,
            on_conversion: Vec::new(),
            first_cart_ms: None,
            conversion_types,
            state,
            horizon_ms: 0,
            segment_ids: SegmentIds::default(),
            sweep: Sweep::default(),
            scratch: Scratch::default(),
            changed: Changes {
                on: true,
                users: HashSet::default(),
                forgotten_rows: Vec::new(),
            },
            judged: false,
            counted_texts: Vec::new(),
            not_held_hint: next_not_held_hint(),
            max_users: MAX_USERS,
            evicted_users: 0,
        };
        engine.set_triggers(triggers);
        engine
    }

    /// The candidates, in pseudonym order.
    fn candidates_in_order(&mut self) -> Vec<UserRef> {
        (self.state.candidates.ordered().iter())
            .map(|(user, _, at)| UserRef {
                user: *user,
                at: *at,
            })
            .collect()
    }

    /// Gives every intent of every candidate a segment id, afresh (in pseudonym order, so
    /// that the ids do not depend on the map's history).
    fn rebuild_segment_ids(&mut self) {
        self.segment_ids.clear();
        for listed in self.candidates_in_order() {
            if let Some(at) = self.state.users.find(&listed) {
                for intent in &self.state.users.facts_at(at).intents {
                    self.segment_ids.intern(intent.dims);
                }
            }
        }
    }

    /// Frees the texts no user refers to ([`Texts`]: when it is due, at a minute's advance).
    fn compact_texts(&mut self) {
        let mut referenced = self.state.texts.marks();
        for user in self.state.users.values() {
            user.each_text(|id| {
                if let Some(mark) = referenced.get_mut(id.0 as usize) {
                    *mark = true;
                }
            });
        }
        self.state.texts.compact(&referenced);
        // Ids freed may be given again: the candidates' segment ids are made afresh, and
        // the tuples' texts looked up again.
        self.counted_texts.clear();
        self.rebuild_segment_ids();
    }

    /// Gives each trigger of the set its name's id, keeping the ids of the names a user's
    /// cooldown refers to and freeing the others.
    fn set_trigger_ids(&mut self) {
        let names = &mut self.state.trigger_names;
        let mut keep = vec![false; names.len()];
        for user in self.state.users.values() {
            for (id, _) in user.sent() {
                if let Some(mark) = keep.get_mut(id.0 as usize) {
                    *mark = true;
                }
            }
        }
        for trigger in &self.triggers {
            if let Some(id) = names.find(&trigger.name)
                && let Some(mark) = keep.get_mut(id.0 as usize)
            {
                *mark = true;
            }
        }
        names.retain(&keep);
        self.trigger_ids = (self.triggers.iter()).map(|t| names.id(&t.name)).collect();
        self.cooldown_of = vec![None; names.len()];
        for (trigger, id) in self.triggers.iter().zip(&self.trigger_ids) {
            self.cooldown_of[id.0 as usize] = Some(trigger.cooldown_ms);
        }
    }

    /// Replaces the trigger set (a reload). Segments of triggers that are gone, or whose
    /// definition changed, are dropped without a signal.
    pub fn set_triggers(&mut self, triggers: Vec<Trigger>) {
        let kept: BTreeMap<&str, &Trigger> =
            triggers.iter().map(|t| (t.name.as_str(), t)).collect();
        let old: BTreeMap<String, Trigger> = self
            .triggers
            .drain(..)
            .map(|t| (t.name.clone(), t))
            .collect();
        self.state.segments.retain(|(name, _), _| {
            kept.get(name.as_str())
                .is_some_and(|t| old.get(name).is_none_or(|o| o == *t))
        });
        self.horizon_ms = triggers.iter().map(Trigger::horizon_ms).max().unwrap_or(0);
        self.triggers = triggers;
        self.set_trigger_ids();
        self.has_segment_triggers = self
            .triggers
            .iter()
            .any(|t| matches!(t.kind, TriggerKind::SegmentCpa { .. }));
        self.first_cart_ms = (self.triggers.iter())
            .filter_map(|t| match t.kind {
                TriggerKind::AbandonedCart { after_ms } => Some(after_ms),
                _ => None,
            })
            .min();
        self.on_conversion = (self.triggers.iter().enumerate())
            .filter(|(_, t)| {
                matches!(
                    t.kind,
                    TriggerKind::Tag { .. } | TriggerKind::ConversionFeed
                )
            })
            .map(|(i, _)| i)
            .collect();
        if self.has_segment_triggers {
            self.relist_candidates();
        } else {
            let listed = self.candidates_in_order();
            self.changed.extend(listed.into_iter().map(|r| r.user));
            self.state.candidates.clear();
        }
        self.rebuild_segment_ids();
        self.rebuild_sweep();
    }

    /// Lists every user with an intent not yet judged that is not listed: none, when the
    /// set had segment triggers since the state began (every such intent was listed as it
    /// came); the users whose intents came while it had none (the list was let go), when
    /// a reload brings them back. An intent then finds its user listed whenever the
    /// previous one lies in its minute and is not judged (see `observe_with`).
    fn relist_candidates(&mut self) {
        let judged = self.state.judged_through_ms.unwrap_or(i64::MIN);
        self.state.candidates.normalize();
        let mut missing = Vec::new();
        for (at, pseudonym, user) in self.state.users.iter_at() {
            let latest = (user.intents.iter())
                .map(|i| i.at_ms)
                .filter(|at| *at >= judged)
                .max();
            if let Some(latest) = latest
                && !self.state.candidates.contains_sorted(pseudonym)
            {
                missing.push((user_ref(*pseudonym, at), latest));
            }
        }
        for (listed, latest) in missing {
            let pseudonym = listed.user;
            (self.state.candidates).push_at(pseudonym, latest, listed.at);
            self.changed.insert(pseudonym);
        }
        self.state.candidates.normalize();
    }

    /// Lists every user with a cart, and every user under the minute of its last event.
    fn rebuild_sweep(&mut self) {
        self.sweep = Sweep::default();
        for (at, pseudonym, user) in self.state.users.iter_at() {
            if !user.cart().is_empty() {
                self.sweep
                    .cart_due
                    .entry(i64::MIN)
                    .or_default()
                    .push(user_ref(*pseudonym, at));
            }
        }
        self.rebuild_idle();
    }

    /// Lists every user under the minute of its last event, once.
    fn rebuild_idle(&mut self) {
        self.sweep.idle.clear();
        self.sweep.idle_kept.clear();
        for (at, pseudonym, user) in self.state.users.iter_at() {
            self.sweep
                .idle
                .entry(minute_of(user.last_seen_ms))
                .or_default()
                .push(user_ref(*pseudonym, at));
        }
        self.sweep.idle_entries = self.state.users.len();
    }

    /// An engine that records no changes for [`Engine::take_changes`] (which then gives
    /// the globals and no rows): for a state stored whole, as the trigger stage's snapshot
    /// section is ([`crate::act::stage`]). Tracking every user observed was wasted work
    /// there. What the engine decides is the same either way.
    pub fn without_change_tracking(mut self) -> Self {
        self.changed = Changes {
            on: false,
            users: HashSet::default(),
            forgotten_rows: Vec::new(),
        };
        self.state.texts.set_change_tracking(false);
        self
    }

    /// An engine fed by [`Engine::observe_judged`] (the trigger stage's): users are held
    /// for the triggers' horizon only (see `judged`).
    pub fn with_pipeline_verdicts(mut self) -> Self {
        self.judged = true;
        self
    }

    /// Holds at most `max_users` users (see [`MAX_USERS`]).
    pub fn with_max_users(mut self, max_users: usize) -> Self {
        self.max_users = max_users;
        self
    }

    /// Users let go because the engine held more than its bound, since it was made (a
    /// restart counts again the ones its replay lets go again).
    pub fn evicted_users(&self) -> u64 {
        self.evicted_users
    }

    /// Past the bound on users held: lets go of the users waiting only for a segment to
    /// fire (no cart, no cooldown), whole minutes of last events at a time, oldest first,
    /// until the bound holds (or only users with a cart or a cooldown are left: they are
    /// kept, a cart's push and a cooldown's promise outrank a chance of selection). Whole
    /// minutes, so that which users go depends on the state alone (not on the order a
    /// minute's users were listed in, which a restored engine does not share): a replay
    /// after a crash lets the same users go. They are added to `forgotten`, each with the
    /// place it was freed from.
    fn evict_over_bound(&mut self, forgotten: &mut Vec<UserRef>) {
        self.evict_down_to(self.max_users, forgotten);
    }

    /// Makes room for a new user when the table is full (see [`EVICTION_RETRY_PARTS`]):
    /// lets go as [`Self::evict_over_bound`] does, until the bound less a
    /// 1/[`EVICTION_ROOM_PARTS`] of it are held (at least one fewer than the bound), and
    /// of them as candidates at once (their slots are reused next). Room for more than
    /// one: the oldest minutes hold a few users each (seen late), so letting go down to
    /// one under the bound let go of a few hundred at a time, and each time the table
    /// filled again the candidates were walked again (stop 32).
    fn make_room(&mut self) {
        let len = self.state.users.len();
        let retry = (self.max_users / EVICTION_RETRY_PARTS).max(EVICTION_RETRY_MIN);
        if len < self.max_users || !(len - self.max_users).is_multiple_of(retry) {
            return;
        }
        let mut forgotten = std::mem::take(&mut self.scratch.forgotten);
        forgotten.clear();
        let room = (self.max_users / EVICTION_ROOM_PARTS).max(1);
        self.evict_down_to(self.max_users.saturating_sub(room), &mut forgotten);
        self.state.candidates.remove_all(&mut forgotten);
        self.scratch.forgotten = forgotten;
    }

    /// [`Self::evict_over_bound`] to at most `limit` users.
    fn evict_down_to(&mut self, limit: usize, forgotten: &mut Vec<UserRef>) {
        if self.state.users.len() <= limit {
            return;
        }
        let users = &mut self.state.users;
        let changed = &mut self.changed;
        let idle_kept = &mut self.sweep.idle_kept;
        let mut removed_entries = 0;
        let mut walked = Vec::new();
        for (&minute, listed) in self.sweep.idle.iter_mut() {
            if users.len() <= limit {
                break;
            }
            // In the order listed, each place asked for a few entries ahead
            // ([`WALK_PREFETCH`]): sorting a minute's millions of entries by place (so the
            // slots were read one after another) cost more than the walk (stop 33); the
            // order does not decide who goes (see above).
            let before = listed.len();
            let mut kept = 0;
            for i in 0..listed.len() {
                if let Some(ahead) = listed.get(i + WALK_PREFETCH) {
                    users.prefetch(ahead.at as usize);
                }
                let entry = listed[i];
                let Some(at) = users.find(&entry) else {
                    continue; // gone
                };
                let user = users.facts_at(at);
                if minute_of(user.last_seen_ms) != minute {
                    continue; // seen later: listed under a later minute
                }
                if user.has_cart_or_cooldown() {
                    listed[kept] = entry; // moved to `idle_kept` below
                    kept += 1;
                    continue;
                }
                if let Some((pseudonym, facts)) = users.remove_at(at) {
                    changed.forgot(facts.row);
                    forgotten.push(user_ref(pseudonym, at));
                    self.evicted_users += 1;
                }
            }
            listed.truncate(kept);
            removed_entries += before - listed.len();
            if !listed.is_empty() {
                // The walked list itself moves, its kept users first (most users at the
                // bound are kept): copied into a list made for them, it was fresh memory
                // the kernel had to clear at every letting-go (`perf`, stop 42). Its
                // memory goes to the spares when `advance` sweeps the minute.
                match idle_kept.entry(minute) {
                    std::collections::btree_map::Entry::Vacant(vacant) => {
                        vacant.insert(std::mem::take(listed));
                    }
                    std::collections::btree_map::Entry::Occupied(occupied) => {
                        occupied.into_mut().extend_from_slice(listed);
                    }
                }
            }
            walked.push(minute);
        }
        // Every walked list is empty now (or moved): its memory goes to the spares, for
        // the next minute's new users.
        for minute in walked {
            if let Some(list) = self.sweep.idle.remove(&minute) {
                self.sweep.give_back(list);
            }
        }
        self.sweep.idle_entries = self.sweep.idle_entries.saturating_sub(removed_entries);
    }

    /// Uses the pipeline's enrichment settings (its internal hosts), so a touch means here
    /// what it means in the KPIs.
    pub fn with_enrichment(mut self, config: EnrichConfig) -> Self {
        self.internal_hosts = config.internal_hosts;
        self
    }

    pub fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }

    pub fn state(&self) -> &ActState {
        &self.state
    }

    /// Users whose facts are kept.
    pub fn users(&self) -> usize {
        self.state.users.len()
    }

    /// The approximate bytes of all users' facts, with the texts they refer to.
    pub fn user_bytes(&self) -> usize {
        self.state
            .users
            .values()
            .map(UserFacts::approximate_bytes)
            .sum::<usize>()
            + self.state.texts.approximate_bytes()
    }

    fn is_conversion(&self, kind: &EventKind) -> bool {
        self.conversion_types.contains(kind)
    }

    /// One accepted event, in log order, the engine judging it itself: exact duplicates by
    /// the user's last event ids, near duplicates and fast checkouts by its own checks, an
    /// intent placed by the user's last non-direct touch (kept a day). What the engine's
    /// unit tests and the consumer-era benches drive; the trigger stage (and so the server
    /// and `vedetta triggers backtest`) uses [`Self::observe_judged`]. With no trigger in
    /// force nothing is kept of it (a trigger set acts on the events observed once it is
    /// loaded; the backtest covers the history).
    pub fn observe(&mut self, event: &StoredEvent, out: &mut Vec<Output>) {
        let mut hint = UserHint::UNKNOWN;
        self.observe_with(event, None, &mut hint, out);
    }

    /// Asks the CPU for the place `hint` (a pipeline's hint, as [`Self::observe_judged`]
    /// takes it) points to, without waiting (see
    /// [`crate::act::stage::TriggerStage::read_ahead`]). Changes nothing: a stale hint
    /// brings in another user's place, or none.
    #[inline]
    pub fn prefetch(&self, hint: u32) {
        if let Some(at) = UserHint::position(hint) {
            self.state.users.prefetch(at);
        }
    }

    /// [`Self::prefetch`] of `event`'s user by `hint`, and for an intent the bytes of its
    /// product id, which [`Self::observe_judged`] interns: the id's text lies wherever the
    /// batch's decoding put it, and hashing it was the first read of it (half of the
    /// interning's samples, `perf`, stop 38). Changes nothing but what the cache holds.
    #[inline]
    pub fn prefetch_event(&self, hint: u32, event: &StoredEvent) {
        self.prefetch(hint);
        if is_intent(event)
            && let Some(first) = event
                .product_id
                .as_deref()
                .and_then(|p| p.as_bytes().first())
        {
            users::prefetch(first);
        }
    }

    /// Whether `event` can make or change a user here given a clean verdict: an intent or
    /// a conversion. Any other visit only brings consent (`Engine::take_in_visit`, which
    /// mostly reads no place), so the stage's read-ahead skips it.
    #[inline]
    pub fn may_select(&self, event: &StoredEvent) -> bool {
        is_intent(event) || self.is_conversion(&event.kind)
    }

    /// The pipeline could not keep the hint [`Self::observe_judged`] gave back for `user`
    /// (it does not hold the user): the engine then finds the user by pseudonym.
    pub fn hint_not_kept(&mut self, user: &UserPseudonym, hint: u32) {
        self.pipeline_let_go(&[(*user, hint)]);
    }

    /// The pipeline let go of these users and of the hints it kept for them
    /// ([`crate::pipeline::Pipeline::let_go_hints`]): each user this engine holds where its
    /// hint says is found by pseudonym from now on. Call before the next event is observed.
    pub fn pipeline_let_go(&mut self, dropped: &[(UserPseudonym, u32)]) {
        for (user, hint) in dropped {
            if let Some(at) = UserHint::position(*hint)
                && self.state.users.user_at(at) == Some(user)
            {
                self.state.users.index_at(at);
            }
        }
    }

    /// One event with the pipeline's verdict on it (the trigger stage): a duplicate or a
    /// refund is not observed; a conversion is clean unless the pipeline flagged it; an
    /// intent is placed in the (channel, campaign) the pipeline counts the event under (its
    /// session's touch under the attribution model, folded as the KPI rows are, so a
    /// segment folded into "(other)" selects its users). Only an intent or a clean
    /// conversion makes a user: a visit that can select no one leaves nothing here.
    ///
    /// Gives back the hint to leave on the event's user in the pipeline
    /// ([`crate::pipeline::Pipeline::set_stage_hint`]; the one given when unchanged). A
    /// user it makes is found by that hint alone (see [`UserTable`]): the caller keeps the
    /// hint with the pipeline's user, calls [`Self::hint_not_kept`] when it cannot, and
    /// hands over the hints of the users the pipeline lets go of
    /// ([`Self::pipeline_let_go`]), as [`crate::act::stage::TriggerStage::after_record`]
    /// does.
    pub fn observe_judged(
        &mut self,
        event: &StoredEvent,
        judged: Judged<'_>,
        out: &mut Vec<Output>,
    ) -> u32 {
        let mut hint = judged.hint;
        if judged.ignored {
            let at = event.ts.0;
            self.state.max_event_ms = Some(self.state.max_event_ms.map_or(at, |m| m.max(at)));
            return hint;
        }
        let placement = match judged.counted {
            Some((id, dims)) if !self.triggers.is_empty() => Some(self.counted_texts(id, dims)),
            _ => None,
        };
        let verdict = Verdict {
            flagged: judged.flagged,
            placement,
        };
        self.observe_with(event, Some(verdict), &mut hint, out);
        hint
    }

    /// The (channel, campaign) text ids of the pipeline's tuple `id`.
    #[inline]
    fn counted_texts(
        &mut self,
        id: crate::pipeline::kpi::DimsId,
        dims: &crate::pipeline::dims::Dims,
    ) -> [TextId; 2] {
        let at = id as usize;
        if let Some(Some(known)) = self.counted_texts.get(at) {
            return *known;
        }
        let texts = &mut self.state.texts;
        let ids = [
            text_id(texts, None, &dim_text(&dims.channel)),
            text_id(texts, None, &dim_text(&dims.campaign)),
        ];
        // A text not kept (the table full) is looked up again next time.
        if at < MAX_COUNTED_TEXTS && !ids.contains(&TextId::NOT_KEPT) {
            if self.counted_texts.len() <= at {
                self.counted_texts.resize(at + 1, None);
            }
            self.counted_texts[at] = Some(ids);
        }
        ids
    }

    /// A visit that can select no one, with the pipeline's verdict on it (a page view
    /// without a product, a registration, a flagged conversion…). It makes no user and
    /// keeps none: a user's `last_seen_ms` is the last event that gave the triggers a fact
    /// (an intent or a clean conversion), so a user is held for the horizon after its last
    /// intent, not its last click (docs/triggers.md, "Bounds"). Only its marketing consent
    /// is taken in, for a user already held. A hint that holds a place and the consent the
    /// visit brings (or a visit without one) spares reading the place: half the traffic,
    /// each a miss of the cache. A stale hint changes nothing here either way: its place
    /// is another user's or nobody's, and this user is not held (the pipeline keeps the
    /// hint of the user's latest place).
    fn take_in_visit(&mut self, event: &StoredEvent, hint: &mut u32) {
        let Some(marketing) = event.consent.marketing else {
            return;
        };
        if UserHint::marketing(*hint) == Some(marketing) || *hint == self.not_held_hint {
            return;
        }
        let users = &mut self.state.users;
        let hinted = UserHint::place(*hint, users, &event.user);
        let Some(position) = hinted.or_else(|| users.position(&event.user)) else {
            *hint = self.not_held_hint;
            return;
        };
        users.facts_at_mut(position).marketing = marketing;
        self.changed.insert(event.user);
        *hint = UserHint::of_position(position, marketing);
    }

    fn observe_with(
        &mut self,
        event: &StoredEvent,
        verdict: Option<Verdict>,
        hint: &mut u32,
        out: &mut Vec<Output>,
    ) {
        let at = event.ts.0;
        self.state.max_event_ms = Some(self.state.max_event_ms.map_or(at, |m| m.max(at)));
        if self.triggers.is_empty() {
            return;
        }
        let is_conversion = self.is_conversion(&event.kind);
        if verdict.is_some_and(|v| !(is_intent(event) || (is_conversion && !v.flagged))) {
            self.take_in_visit(event, hint);
            return;
        }
        let users = &mut self.state.users;
        // The hint's position, when it still holds this user.
        let hinted = UserHint::place(*hint, users, &event.user);
        let (position, new) = match (&verdict, hinted) {
            (_, Some(held)) => (held, false),
            _ => {
                // This engine's "not held" hint: no need to ask the map.
                let not_held = verdict.is_some() && *hint == self.not_held_hint;
                match users.position(&event.user).filter(|_| !not_held) {
                    Some(position) => (position, false),
                    None => (usize::MAX, true),
                }
            }
        };
        let position = if new {
            // The bound holds at each new user: the table never grows past it while
            // users can be let go (checked only at minute advances, it grew a million
            // users past it between two at 100,000 events/s, each new slot a fresh page).
            self.make_room();
            let row = self.state.next_row;
            self.state.next_row += 1;
            let facts = UserFacts {
                row,
                ..UserFacts::default()
            };
            // With the pipeline's verdicts the pipeline keeps the new user's position (the
            // hint given back), unless changes are tracked (rows are then written by
            // pseudonym): not in the map.
            let indexed = verdict.is_none() || self.changed.on;
            let at = self.state.users.add(event.user, facts, indexed);
            if !indexed && UserHint::of_position(at, false) == UserHint::UNKNOWN {
                // A place no hint can name (past a billion users): found by the map.
                self.state.users.index_at(at);
            }
            at
        } else {
            position
        };
        let users = &mut self.state.users;
        let held = users.len();
        let user = users.facts_at_mut(position);
        self.changed.insert(event.user);
        let seen_minute = minute_of(user.last_seen_ms);
        user.last_seen_ms = user.last_seen_ms.max(at);
        if new || minute_of(user.last_seen_ms) != seen_minute {
            (self.sweep).list_idle(minute_of(user.last_seen_ms), user_ref(event.user, position));
        }
        if let Some(marketing) = event.consent.marketing {
            user.marketing = marketing;
        }
        *hint = UserHint::of_position(position, user.marketing);
        let texts = &mut self.state.texts;
        // The engine's own judging (no verdict): exact duplicates, the touch.
        let mut channel = std::borrow::Cow::Borrowed(DIRECT);
        let mut own: Option<[TextId; 2]> = None;
        if verdict.is_none() {
            // Exact duplicates: the same event id again.
            if let Some(id) = &event.event_id {
                let hash = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
                if user.event_ids().contains(&hash) {
                    return;
                }
                let ids = &mut user.more_mut().event_ids;
                if ids.len() >= MAX_EVENT_IDS {
                    ids.remove(0);
                }
                ids.push(hash);
            }
            // The touch needs only the channel grouping (no user-agent parse).
            channel = channel_of(event, &self.internal_hosts);
            // The event's own (channel, campaign), once interned (the touch's ids are tried
            // first: a returning user mostly comes back the same way).
            let touch = user.touch();
            if channel != DIRECT && touch.is_none_or(|t| t.2 <= at) {
                let c = text_id(texts, touch.map(|t| t.0), &dim_text(&channel));
                let k = text_id(texts, touch.map(|t| t.1), &dim_text(campaign_of(event)));
                user.more_mut().touch = Some((c, k, at));
                own = Some([c, k]);
            }
        }
        match &event.kind {
            EventKind::Registration if verdict.is_none() => {
                let registration = &mut user.more_mut().last_registration_ms;
                *registration = Some(registration.map_or(at, |r| r.max(at)));
            }
            EventKind::PageView | EventKind::AddToCart if is_intent(event) => {
                let previous_intent_ms = user.intents.last().map(|i| i.at_ms);
                let dims = match (&verdict, user.touch()) {
                    // Where the pipeline counts it.
                    (Some(v), _) => v.placement.unwrap_or([TextId::NOT_KEPT; 2]),
                    // The event's own segment, or for a direct event the user's latest
                    // non-direct touch within the lookback.
                    (None, Some((c, k, touched)))
                        if channel == DIRECT
                            && event.ts.0.saturating_sub(touched) <= TOUCH_LOOKBACK_MS =>
                    {
                        [c, k]
                    }
                    (None, _) => match own {
                        Some(own) => own,
                        None => {
                            let hint = user.touch();
                            [
                                text_id(texts, hint.map(|t| t.0), &dim_text(&channel)),
                                text_id(texts, hint.map(|t| t.1), &dim_text(campaign_of(event))),
                            ]
                        }
                    },
                };
                let product_id = (event.product_id.as_deref()).map(|p| text_id(texts, None, p));
                let intent = Intent {
                    at_ms: at,
                    add_to_cart: event.kind == EventKind::AddToCart,
                    dims,
                    product_id: product_id.into(),
                };
                // A candidate for the firing segments of the next minutes judged: listed,
                // unless its previous intent lies in this minute and is not judged yet (then
                // the user is listed with a time in this minute, which keeps it listed as
                // long as this intent would: judging lets go at minute edges).
                let mut new_candidate = false;
                if self.has_segment_triggers {
                    let judged = self.state.judged_through_ms.unwrap_or(i64::MIN);
                    let listed = previous_intent_ms.is_some_and(|previous| {
                        minute_of(previous) == minute_of(at) && previous >= judged
                    });
                    if !listed {
                        let listed = user_ref(event.user, position);
                        (self.state.candidates).push_at(event.user, at, listed.at);
                        self.state.candidates.bound(held);
                        new_candidate = true;
                    }
                    self.segment_ids.intern(intent.dims);
                }
                hold_intent(&mut user.intents, intent);
                if new_candidate {
                    for intent in &user.intents {
                        self.segment_ids.intern(intent.dims);
                    }
                }
                if event.kind == EventKind::AddToCart {
                    user.kept = true;
                    let cart = &mut user.more_mut().cart;
                    let evicted = cart.len() >= MAX_CART_LINES;
                    if evicted {
                        cart.remove(0);
                    }
                    cart.push(CartLine {
                        at_ms: at,
                        product_id,
                        value: event.value.filter(|v| v.is_finite() && *v >= 0.0),
                    });
                    if evicted || cart.len() == 1 {
                        // A new first line: the cart's times start from it.
                        let key = self
                            .first_cart_ms
                            .map_or(i64::MIN, |a| minute_of(cart[0].at_ms.saturating_add(a)));
                        let listed = user_ref(event.user, position);
                        self.sweep.cart_due_at(key).push(listed);
                    }
                }
            }
            _ => {}
        }
        if !is_conversion {
            return;
        }
        let kind = event.kind.as_str();
        let texts = &mut self.state.texts;
        let clean = match &verdict {
            Some(v) => !v.flagged,
            None => {
                let near_duplicate = user
                    .last_conversion_kind
                    .is_some_and(|k| texts.is(k, clipped(kind)))
                    && user
                        .last_conversion_ms
                        .is_some_and(|c| c.abs_diff(at) < NEAR_DUPLICATE_MS as u64);
                let fast = user
                    .last_registration_ms()
                    .is_some_and(|r| at >= r && at.abs_diff(r) < FAST_CHECKOUT_MS as u64);
                !near_duplicate && !fast
            }
        };
        if !clean {
            return;
        }
        user.last_conversion_ms = Some(user.last_conversion_ms.map_or(at, |c| c.max(at)));
        user.last_conversion_kind = Some(text_id(texts, user.last_conversion_kind, kind));
        // A purchase closes the carts it follows.
        let lines = user.cart().len();
        if user.change_more(|m| m.cart.retain(|line| line.at_ms > at)) {
            // A late purchase leaves the user in its minute (see `Sweep::idle_kept`).
            (self.sweep).list_idle(minute_of(user.last_seen_ms), user_ref(event.user, position));
        }
        if user.cart().len() < lines && !user.cart().is_empty() {
            let key = self.first_cart_ms.map_or(i64::MIN, |a| {
                minute_of(user.cart()[0].at_ms.saturating_add(a))
            });
            let listed = user_ref(event.user, position);
            self.sweep.cart_due_at(key).push(listed);
        }
        user.purchases = user.purchases.saturating_add(1);
        let first = user.purchases == 1;
        let marketing = user.marketing;
        let value = event.value.filter(|v| v.is_finite());
        // Rendered once, for every trigger that sends this conversion.
        let mut hex: Option<String> = None;
        for &index in &self.on_conversion {
            let trigger = &self.triggers[index];
            let tag = match &trigger.kind {
                TriggerKind::ConversionFeed => None,
                TriggerKind::Tag {
                    tag,
                    when: TagWhen::FirstPurchase,
                } if first => Some(tag),
                TriggerKind::Tag {
                    tag,
                    when: TagWhen::PurchaseOver { min_value },
                } if value.is_some_and(|v| v > *min_value) => Some(tag),
                _ => continue,
            };
            let is_feed = matches!(trigger.kind, TriggerKind::ConversionFeed);
            // The feed sends every clean conversion; tags are per user and cooldown.
            let id = self.trigger_ids[index];
            if !is_feed && user.in_cooldown(id, trigger.cooldown_ms, at) {
                continue;
            }
            if !marketing {
                *self.state.withheld.entry(trigger.name.clone()).or_default() += 1;
                continue;
            }
            if !is_feed {
                user.mark_sent(id, at);
            }
            out.push(Output {
                trigger: index,
                group: Vec::new(),
                user: Some(event.user),
                event: Some(PushEvent {
                    user: hex.get_or_insert_with(|| event.user.to_hex()).clone(),
                    kind: kind.to_owned(),
                    value,
                    at_ms: at,
                    product_id: event.product_id.as_deref().map(clip),
                    product_ids: Vec::new(),
                    cart_value: None,
                    tag: tag.cloned(),
                }),
                signal: None,
                at_ms: at,
            });
        }
    }

    /// Judges every segment_cpa trigger at the minute end `minute_end`: `totals` sums the
    /// 1-minute KPI rows of the trigger's window by its groups ([`group_totals`]).
    ///
    /// [`group_totals`]: crate::watch::evaluate::group_totals
    pub fn judge_minute(
        &mut self,
        minute_end: i64,
        totals: &mut dyn FnMut(&crate::watch::rules::Rule) -> HashMap<Vec<String>, GroupTotals>,
        out: &mut Vec<Output>,
    ) {
        if self
            .state
            .judged_through_ms
            .is_some_and(|t| t >= minute_end)
        {
            return;
        }
        self.state.judged_through_ms = Some(minute_end);
        // Each trigger's outputs, appended in trigger order at the end: the signals first,
        // then the users in pseudonym order (users are judged once for all triggers).
        let mut outputs: Vec<Vec<Output>> = Vec::new();
        // The segment triggers that may select users this minute.
        let mut selecting: Vec<Selecting<'_>> = Vec::new();
        for (index, trigger) in self.triggers.iter().enumerate() {
            let TriggerKind::SegmentCpa {
                rule, threshold, ..
            } = &trigger.kind
            else {
                continue;
            };
            let mut signals = Vec::new();
            let groups = totals(rule);
            let guarded = |t: &GroupTotals| {
                t.counters.conversions >= rule.min_conversions
                    && t.counters.sessions >= rule.min_sessions
            };
            // Firing segments that no longer hold recover (no data is no longer firing).
            let firing: Vec<Vec<String>> = self
                .state
                .segments
                .range((trigger.name.clone(), Vec::new())..)
                .take_while(|((t, _), _)| *t == trigger.name)
                .map(|((_, g), _)| g.clone())
                .collect();
            for group in firing {
                let t = groups.get(&group);
                let cpa = t.and_then(|t| measured_value(rule, Some(t)));
                let holds = t.is_some_and(guarded) && cpa.is_some_and(|c| c > *threshold);
                if !holds {
                    self.state
                        .segments
                        .remove(&(trigger.name.clone(), group.clone()));
                    signals.push(Output {
                        trigger: index,
                        group: named(rule, &group),
                        user: None,
                        event: None,
                        signal: Some(SignalNotice {
                            signal: SegmentSignal::Recovered,
                            cpa,
                            threshold: *threshold,
                            at_ms: minute_end,
                        }),
                        at_ms: minute_end,
                    });
                }
            }
            let mut ordered: Vec<(&Vec<String>, &GroupTotals)> = groups.iter().collect();
            ordered.sort_by(|a, b| a.0.cmp(b.0));
            let mut newly = false;
            for (group, t) in ordered {
                let cpa = measured_value(rule, Some(t));
                if !(guarded(t) && cpa.is_some_and(|c| c > *threshold)) {
                    continue;
                }
                let key = (trigger.name.clone(), group.clone());
                if let std::collections::btree_map::Entry::Vacant(vacant) =
                    self.state.segments.entry(key)
                {
                    vacant.insert(SegmentState {
                        since_ms: minute_end,
                        cpa,
                    });
                    newly = true;
                    signals.push(Output {
                        trigger: index,
                        group: named(rule, group),
                        user: None,
                        event: None,
                        signal: Some(SignalNotice {
                            signal: SegmentSignal::Firing,
                            cpa,
                            threshold: *threshold,
                            at_ms: minute_end,
                        }),
                        at_ms: minute_end,
                    });
                }
            }
            let slot = outputs.len();
            outputs.push(signals);
            if let Some(positions) = positions(rule) {
                selecting.push(Selecting {
                    slot,
                    index,
                    trigger,
                    trigger_id: self.trigger_ids[index],
                    rule,
                    positions,
                    from: minute_end - rule.over_ms,
                    newly,
                    firing: HashSet::default(),
                    firing_long: Vec::new(),
                    flags: Vec::new(),
                });
            }
        }
        // While a segment fires: its users with intent in the window and no conversion
        // since the window opened. A segment that starts firing looks at every user;
        // after that only at the candidates (users with an intent since last minute).
        for s in &mut selecting {
            s.firing = self
                .state
                .segments
                .range((s.trigger.name.clone(), Vec::new())..)
                .take_while(|((t, _), _)| *t == s.trigger.name)
                .map(|((_, g), _)| g.iter().map(String::as_str).collect())
                .collect();
            s.firing_long = (s.firing.iter())
                .filter(|g| g.iter().any(|v| v.len() > MAX_TEXT_BYTES))
                .map(|g| {
                    (
                        g.iter().map(|v| dim_text(v).into_owned()).collect(),
                        g.clone(),
                    )
                })
                .collect();
            s.firing_long.sort_unstable();
        }
        selecting.retain(|s| !s.firing.is_empty());
        // Which interned (channel, campaign) segments fire, per trigger: an intent's test
        // is then an index, not a key built and hashed per trigger.
        for s in &mut selecting {
            s.flags = vec![false; self.segment_ids.next as usize];
            for (dims, id) in &self.segment_ids.ids {
                s.flags[*id as usize] = s.in_firing_ids(&self.state.texts, *dims);
            }
        }
        if !selecting.is_empty() {
            let oldest = selecting.iter().map(|s| s.from).min().unwrap_or(minute_end);
            let ids = &self.segment_ids;
            let texts = &self.state.texts;
            let withheld = &mut self.state.withheld;
            let changed = &mut self.changed;
            // A user's cooldowns are read in one pass over its list for all the segment
            // triggers, not one pass per trigger: by trigger id, the trigger's place here.
            let mut by_id: Vec<Option<usize>> = vec![None; self.cooldown_of.len()];
            for (k, s) in selecting.iter().enumerate() {
                by_id[s.trigger_id.0 as usize] = Some(k);
            }
            let mut until: Vec<i64> = vec![i64::MIN; selecting.len()];
            // The users selected, as [`Pick`]s (their outputs are made once they are in
            // order, below).
            let mut picks: Vec<Pick> = Vec::new();
            let mut judge = |pseudonym: UserPseudonym, user: &mut UserFacts, candidate: bool| {
                // The segment ids of the user's intents in the longest window (computed
                // once, for every trigger).
                let mut segment = [None; MAX_INTENTS];
                let mut looked_up = false;
                let mut cooldowns_read = false;
                for (k, s) in selecting.iter().enumerate() {
                    if !(s.newly || candidate) {
                        continue;
                    }
                    if user.last_conversion_ms.is_some_and(|c| c >= s.from) {
                        continue;
                    }
                    if !looked_up {
                        looked_up = true;
                        for (id, intent) in segment.iter_mut().zip(&user.intents) {
                            if intent.at_ms >= oldest && intent.at_ms < minute_end {
                                *id = ids.get(intent.dims);
                            }
                        }
                    }
                    // The latest intent in the window that lies in a firing segment.
                    let found = user.intents.iter().enumerate().rev().find(|(n, i)| {
                        i.at_ms >= s.from
                            && i.at_ms < minute_end
                            && match segment.get(*n).copied().flatten() {
                                Some(id) => s.flags.get(id as usize).copied().unwrap_or(false),
                                None => s.in_firing_ids(texts, i.dims),
                            }
                    });
                    let Some((_, intent)) = found else {
                        continue;
                    };
                    if !cooldowns_read {
                        cooldowns_read = true;
                        until.fill(i64::MIN);
                        for (id, at) in user.sent() {
                            if let Some(&Some(j)) = by_id.get(id.0 as usize) {
                                let end = at.saturating_add(selecting[j].trigger.cooldown_ms);
                                until[j] = until[j].max(end);
                            }
                        }
                    }
                    // (Marking a send below changes only this trigger's cooldown.)
                    if minute_end < until[k] {
                        continue;
                    }
                    let (intent_at, add_to_cart, dims) =
                        (intent.at_ms, intent.add_to_cart, intent.dims);
                    if !user.marketing {
                        // Counted once per cooldown, like a send.
                        user.mark_sent(s.trigger_id, minute_end);
                        changed.insert(pseudonym);
                        *withheld.entry(s.trigger.name.clone()).or_default() += 1;
                        continue;
                    }
                    let in_group = |i: &Intent| s.positions.iter().all(|p| i.dims[*p] == dims[*p]);
                    let product = (user.intents.iter().rev())
                        .filter(|i| i.at_ms >= s.from && i.at_ms < minute_end && in_group(i))
                        .find_map(|i| i.product_id.get().filter(|id| texts.get(*id).is_some()));
                    user.mark_sent(s.trigger_id, minute_end);
                    changed.insert(pseudonym);
                    picks.push(Pick {
                        selecting: k,
                        user: pseudonym,
                        at_ms: intent_at,
                        add_to_cart,
                        dims,
                        product: product.into(),
                    });
                }
            };
            let candidates = &mut self.state.candidates;
            candidates.normalize();
            // The candidates' places, in order. Each user is judged on its own facts alone,
            // so the order users are judged in changes nothing but the order of their
            // outputs, which are put in pseudonym order after: users are judged in the
            // order of their places, the slots read one after another (ahead, when not every
            // one is). In pseudonym order, a segment that started firing cost a list of every
            // held user grown by doubling into fresh pages, its sort, the slots then read at
            // random and a search of the candidates per user: 3.4 s of the processor's
            // thread at the minute 4 segment triggers started firing at 100,000 events/s
            // (`perf`, stop 47).
            let listed = candidate_places(&self.state.users, candidates.ordered());
            if selecting.iter().any(|s| s.newly) {
                // Every user.
                let mut next = listed.iter().peekable();
                for (at, pseudonym, user) in self.state.users.iter_at_mut() {
                    while next.next_if(|p| (**p as usize) < at).is_some() {}
                    let candidate = next.next_if(|p| **p as usize == at).is_some();
                    judge(*pseudonym, user, candidate);
                }
            } else {
                let users = &mut self.state.users;
                for (i, &at) in listed.iter().enumerate() {
                    if let Some(&ahead) = listed.get(i + WALK_PREFETCH) {
                        users.prefetch(ahead as usize);
                    }
                    let at = at as usize;
                    if let Some(&pseudonym) = users.user_at(at) {
                        judge(pseudonym, users.facts_at_mut(at), true);
                    }
                }
            }
            // Each trigger's users in pseudonym order (one pick per user and trigger: the
            // keys differ), after its signals; every output made once, where it stays. Made
            // as they were judged, hundreds of thousands at a minute a large segment starts
            // firing, they were moved twice through lists grown by doubling (`perf`, stop
            // 47).
            picks.sort_unstable_by_key(|p| (p.selecting, p.user));
            out.reserve(outputs.iter().map(Vec::len).sum::<usize>() + picks.len());
            let mut picks = picks.iter().peekable();
            for (slot, signals) in outputs.iter_mut().enumerate() {
                out.append(signals);
                let Some(k) = selecting.iter().position(|s| s.slot == slot) else {
                    continue;
                };
                let s = &selecting[k];
                while let Some(pick) = picks.next_if(|p| p.selecting == k) {
                    out.push(pick.output(s, texts, minute_end));
                }
            }
        }
        for mut each in outputs {
            out.append(&mut each);
        }
        // Judged: candidates whose latest intent is before this minute's end are done.
        let changed = &mut self.changed;
        (self.state.candidates).retain_from(minute_end, |pseudonym| changed.insert(pseudonym));
        if self.state.candidates.is_empty() {
            self.segment_ids.clear();
        } else if self.segment_ids.next > MAX_SEGMENT_IDS {
            self.rebuild_segment_ids();
        }
    }

    /// Moves event time to `watermark`: abandoned carts whose delay passed are sent, and
    /// users with nothing left to wait for are forgotten.
    ///
    /// The scan over users runs once per minute of event time (a cart is sent within a
    /// minute of its delay), so calling this after every read costs nothing in between.
    pub fn advance(&mut self, watermark: i64, out: &mut Vec<Output>) {
        let minute = watermark.div_euclid(60_000) * 60_000;
        if self.state.advanced_minute_ms.is_some_and(|m| m >= minute) {
            return;
        }
        self.state.advanced_minute_ms = Some(minute);
        if self.sweep.idle_entries > 2 * self.state.users.len() + 4_096 {
            self.rebuild_idle(); // stale entries of users seen in later minutes
        }
        let carts: Vec<(usize, &Trigger, i64)> = self
            .triggers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t.kind {
                TriggerKind::AbandonedCart { after_ms } => Some((i, t, after_ms)),
                _ => None,
            })
            .collect();
        let trigger_ids = &self.trigger_ids;
        let longest_cart = carts.iter().map(|(_, _, a)| *a).max();
        // One pass over the users with a cart; each cart trigger sends a cart once, when
        // its own delay after the cart's first line has passed.
        // In pseudonym order (the user map has none).
        // The users whose cart may have something due (in pseudonym order, as before).
        let mut listed = std::mem::take(&mut self.scratch.refs);
        listed.clear();
        while let Some(bucket) = self.sweep.cart_due.first_entry() {
            if *bucket.key() > watermark {
                break;
            }
            let list = bucket.remove();
            listed.extend_from_slice(&list);
            self.sweep.give_back(list);
        }
        let mut with_cart = std::mem::take(&mut self.scratch.found);
        found_in_order_into(&self.state.users, &listed, &mut with_cart);
        // A user's cooldown list is read once for all cart triggers (by trigger id): the
        // latest send and the cooldown's end of each.
        let mut by_id: Vec<Option<usize>> = vec![None; self.cooldown_of.len()];
        for (k, (index, _, _)) in carts.iter().enumerate() {
            by_id[trigger_ids[*index].0 as usize] = Some(k);
        }
        let mut last_sent: Vec<i64> = vec![i64::MIN; carts.len()];
        let mut until: Vec<i64> = vec![i64::MIN; carts.len()];
        let texts = &self.state.texts;
        for &(pseudonym, at) in &with_cart {
            let user = self.state.users.facts_at_mut(at);
            let Some(first) = user.cart().first().map(|l| l.at_ms) else {
                continue;
            };
            self.changed.insert(pseudonym);
            let mut read = false;
            for (k, (index, trigger, after_ms)) in carts.iter().enumerate() {
                let due = first.saturating_add(*after_ms);
                if due > watermark {
                    continue;
                }
                let id = trigger_ids[*index];
                // A short list is cheaper to walk per trigger than to read into a table.
                if user.sent().len() <= SHORT_SENT {
                    if user.sent().iter().any(|(t, at)| *t == id && *at >= first)
                        || user.in_cooldown(id, trigger.cooldown_ms, due)
                    {
                        continue;
                    }
                } else if !read {
                    read = true;
                    last_sent.fill(i64::MIN);
                    until.fill(i64::MIN);
                    for (sent, at) in user.sent() {
                        if let Some(&Some(j)) = by_id.get(sent.0 as usize) {
                            last_sent[j] = last_sent[j].max(*at);
                            until[j] = until[j].max(at.saturating_add(carts[j].1.cooldown_ms));
                        }
                    }
                }
                // (Marking a send below changes only this trigger's entries.)
                if user.sent().len() > SHORT_SENT && (last_sent[k] >= first || due < until[k]) {
                    continue;
                }
                user.mark_sent(id, due);
                if !user.marketing {
                    *self.state.withheld.entry(trigger.name.clone()).or_default() += 1;
                    continue;
                }
                let lines = user.cart();
                let values: Vec<f64> = lines.iter().filter_map(|l| l.value).collect();
                let last = lines.last().map_or(first, |l| l.at_ms);
                out.push(Output {
                    trigger: *index,
                    group: Vec::new(),
                    user: Some(pseudonym),
                    event: Some(PushEvent {
                        user: pseudonym.to_hex(),
                        kind: "add_to_cart".into(),
                        value: None,
                        at_ms: last,
                        product_id: (lines.iter().rev())
                            .find_map(|l| texts.get(l.product_id?))
                            .map(str::to_owned),
                        product_ids: (lines.iter())
                            .filter_map(|l| texts.get(l.product_id?))
                            .map(str::to_owned)
                            .collect(),
                        cart_value: (!values.is_empty()).then(|| values.iter().sum()),
                        tag: None,
                    }),
                    signal: None,
                    at_ms: due,
                });
            }
            // Every cart trigger has had its turn (or none waits): the cart is let go.
            if longest_cart.is_none_or(|a| first.saturating_add(a) <= watermark) {
                if user.change_more(|m| m.cart.clear()) {
                    (self.sweep).list_idle(minute_of(user.last_seen_ms), user_ref(pseudonym, at));
                }
            } else if let Some(next) = (carts.iter())
                .map(|(_, _, a)| first.saturating_add(*a))
                .filter(|due| *due > watermark)
                .min()
            {
                (self.sweep)
                    .cart_due_at(minute_of(next))
                    .push(user_ref(pseudonym, at));
            }
        }
        let horizon = self.horizon_ms;
        let cooldown_of = &self.cooldown_of;
        let cooldown = |id: &TriggerId| cooldown_of.get(id.0 as usize).copied().flatten();
        // A user is kept while it can still be selected or is in a cooldown; the purchase
        // count (first purchase) goes with it. An active user's lists are already bounded
        // (one cooldown per trigger, MAX_INTENTS intents): only idle users are looked at.
        // Judging itself, the engine keeps a user a day for its touch; with the pipeline's
        // verdicts the touch is the pipeline's, and a user is kept for the horizon only.
        let keep_ms = if self.judged {
            horizon
        } else {
            horizon.max(TOUCH_LOOKBACK_MS.min(86_400_000))
        };
        let idle = |user: &UserFacts| user.last_seen_ms.saturating_add(keep_ms) <= watermark;
        // The users idle since this advance (from the minutes of their last events), and
        // the idle users kept for a cooldown or a cart whose time to look again came.
        let mut due = listed;
        due.clear();
        let limit = watermark.saturating_sub(keep_ms);
        let mut not_yet = std::mem::take(&mut self.scratch.not_yet);
        not_yet.clear();
        let mut lists = Vec::new();
        for map in [&mut self.sweep.idle, &mut self.sweep.idle_kept] {
            while let Some(bucket) = map.first_entry() {
                if *bucket.key() > limit {
                    break;
                }
                lists.push(bucket.remove_entry());
            }
        }
        for (minute, users) in lists {
            self.sweep.idle_entries = self.sweep.idle_entries.saturating_sub(users.len());
            for &listed in &users {
                let Some(at) = self.state.users.find(&listed) else {
                    continue;
                };
                let user = self.state.users.facts_at(at);
                if minute_of(user.last_seen_ms) != minute {
                    continue; // seen later: listed under a later minute
                }
                if idle(user) {
                    due.push(listed);
                } else {
                    not_yet.push((minute, listed));
                }
            }
            self.sweep.give_back(users);
        }
        self.sweep.idle_entries += not_yet.len();
        for &(minute, listed) in &not_yet {
            self.sweep.idle_at(minute).push(listed);
        }
        while let Some(bucket) = self.sweep.recheck.first_entry() {
            if *bucket.key() > watermark {
                break;
            }
            let list = bucket.remove();
            due.extend_from_slice(&list);
            self.sweep.give_back(list);
        }
        // Forgotten users, with the places freed: let go of as candidates at once.
        let mut forgotten = std::mem::take(&mut self.scratch.forgotten);
        forgotten.clear();
        let mut found = with_cart;
        found_in_order_into(&self.state.users, &due, &mut found);
        for &(pseudonym, at) in &found {
            let user = self.state.users.facts_at_mut(at);
            if !idle(user) {
                continue; // active again: listed under the minute of its last event
            }
            self.changed.insert(pseudonym);
            let user_row = user.row;
            // (Let go here or looked at again below: no listing needed.)
            let _ = user.change_more(|m| {
                m.sent.retain(|(t, at)| {
                    cooldown(t).is_some_and(|c| at.saturating_add(c) > watermark)
                });
            });
            user.intents.clear();
            if user.sent().is_empty() && user.cart().is_empty() {
                self.state.users.remove_at(at);
                // (A candidate's entry goes with it: it is stored in the user's row, so a
                // forgotten user's entry was left in memory only, never read back.)
                forgotten.push(user_ref(pseudonym, at));
                self.changed.forgot(user_row);
                continue;
            }
            // Looked at again when its next cooldown ends, or each minute while a cart
            // waits (as every idle user was, each minute, before).
            let next = if user.cart().is_empty() {
                (user.sent().iter())
                    .filter_map(|(t, at)| cooldown(t).map(|c| at.saturating_add(c)))
                    .min()
                    .unwrap_or(watermark)
            } else {
                watermark.saturating_add(1)
            };
            (self.sweep)
                .recheck_at(minute_of(next))
                .push(user_ref(pseudonym, at));
        }
        self.evict_over_bound(&mut forgotten);
        self.state.candidates.remove_all(&mut forgotten);
        self.scratch = Scratch {
            refs: due,
            found,
            not_yet,
            forgotten,
        };
        if self.state.texts.compaction_due() {
            self.compact_texts();
        }
    }
}

#[cfg(test)]
mod tests;
