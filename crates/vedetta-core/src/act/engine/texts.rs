//! The texts a user's facts refer to (channel, campaign, product id, conversion kind) and
//! the trigger names its cooldowns refer to, each interned once: a user's facts hold small
//! ids, so a one-event user's stored row is tens of bytes and observing an event allocates
//! nothing once its texts are known.
//!
//! - [`Texts`] is bounded: at most [`MAX_TEXTS`] texts of at most
//!   [`MAX_TEXT_BYTES`](super::MAX_TEXT_BYTES) each (8 MiB, twice that with the lookup's
//!   copy). A text met while the table is full is not kept: it gets [`TextId::NOT_KEPT`],
//!   which never reads as a text (a product id is then left out of a push, an intent's
//!   segment matches no firing segment), and is counted. Ids are reclaimed by marking: once
//!   the table is three quarters full and has met an eighth of its size in new texts
//!   (kept or refused) since it was last compacted, or is full and has refused a
//!   sixty-fourth, [`Engine::advance`](super::Engine::advance) frees every
//!   text no user refers to (its id is given again, lowest first). No id is renumbered, so
//!   no user row changes; an id is freed only when nothing refers to it, so an id never
//!   reads as another text. When it runs depends only on the state, so a replay compacts
//!   at the same minute.
//! - Each text is interned whole (the key is the text itself), never joined with another.
//! - [`TriggerNames`]: cooldowns are kept by a trigger's id. A name keeps its id while the
//!   trigger is in force or a user's cooldown refers to it, so a reload that removes and
//!   adds triggers keeps the cooldowns of those that stay (and of one that comes back), as
//!   cooldowns by name did.

use crate::pipeline::hash::FastHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Texts kept at most (ids 1 to this; 0 is [`TextId::NOT_KEPT`]).
pub const MAX_TEXTS: u32 = 1 << 16;

/// A text of [`Texts`] by its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TextId(pub u32);

impl TextId {
    /// A text that was not kept (the table was full): reads as no text.
    pub const NOT_KEPT: TextId = TextId(0);
}

/// A [`TextId`] or none, in the four bytes of one (`Option<TextId>` takes eight): an
/// [`Intent`](super::Intent)'s product, so that an intent takes 24 bytes and a user's slot
/// holds two (see [`Intents`](super::Intents)). Ids are at most [`MAX_TEXTS`], so
/// `u32::MAX` is free to mean none. Encoded as the `Option<TextId>` it stands for (the
/// stored formats do not change); a stored id of `u32::MAX`, which no text has, is read
/// as [`TextId::NOT_KEPT`] (a product that was not kept), not as none.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Option<TextId>", into = "Option<TextId>")]
pub struct MaybeTextId(u32);

impl MaybeTextId {
    pub const NONE: MaybeTextId = MaybeTextId(u32::MAX);

    #[inline]
    pub fn get(self) -> Option<TextId> {
        (self != Self::NONE).then_some(TextId(self.0))
    }

    #[inline]
    pub fn is_some(self) -> bool {
        self != Self::NONE
    }

    #[inline]
    pub fn is_none(self) -> bool {
        self == Self::NONE
    }
}

impl From<Option<TextId>> for MaybeTextId {
    #[inline]
    fn from(id: Option<TextId>) -> Self {
        match id {
            None => Self::NONE,
            Some(TextId(u32::MAX)) => MaybeTextId(TextId::NOT_KEPT.0),
            Some(TextId(id)) => MaybeTextId(id),
        }
    }
}

impl From<MaybeTextId> for Option<TextId> {
    #[inline]
    fn from(id: MaybeTextId) -> Self {
        id.get()
    }
}

impl std::fmt::Debug for MaybeTextId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// The bounded intern table of texts (see the module's overview).
#[derive(Clone, Debug, Default)]
pub struct Texts {
    /// By id; slot 0 is never a text. `None`: a free id.
    slots: Vec<Option<Box<str>>>,
    /// Text → id (derived from `slots`).
    ids: FastHashMap<Box<str>, TextId>,
    /// Free ids below `slots.len()` (derived: the empty slots), given again lowest first.
    free: BTreeSet<u32>,
    /// Texts met since the last compaction, kept or refused (stored: it decides when the
    /// next runs).
    added: u32,
    /// Texts not kept because the table was full (stored, for the record).
    not_kept: u64,
    /// Ids added or freed since the last [`Texts::take_changed`] (not state: what to store).
    changed: BTreeSet<u32>,
    /// Set when `changed` is not kept (see [`Texts::set_change_tracking`]).
    untracked: bool,
}

/// Equal when they hold the same texts under the same ids and the same counts.
impl PartialEq for Texts {
    fn eq(&self, other: &Self) -> bool {
        self.added == other.added
            && self.not_kept == other.not_kept
            && self.entries().eq(other.entries())
    }
}

/// The stored shape: the counts and every (id, text), in id order.
#[derive(Serialize, Deserialize)]
struct TextsShape<T> {
    added: u32,
    not_kept: u64,
    entries: Vec<(u32, T)>,
}

impl Serialize for Texts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TextsShape {
            added: self.added,
            not_kept: self.not_kept,
            entries: self.entries().map(|(id, t)| (id.0, t)).collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Texts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let shape = TextsShape::<String>::deserialize(deserializer)?;
        let mut texts = Texts::restore(shape.added, shape.not_kept);
        for (id, text) in shape.entries {
            texts.put(id, &text).map_err(serde::de::Error::custom)?;
        }
        Ok(texts)
    }
}

impl Texts {
    /// An empty table with its stored counts; fill it with [`Texts::put`].
    pub fn restore(added: u32, not_kept: u64) -> Self {
        Texts {
            added,
            not_kept,
            ..Texts::default()
        }
    }

    /// Puts a stored (id, text) back.
    pub fn put(&mut self, id: u32, text: &str) -> Result<(), String> {
        if id == 0 || id > MAX_TEXTS {
            return Err(format!("text id {id} out of range"));
        }
        if self.ids.contains_key(text) {
            return Err(format!("text id {id} repeats a text"));
        }
        let index = id as usize;
        if self.slots.len() <= index {
            self.free.extend(self.slots.len().max(1) as u32..id);
            self.slots.resize(index + 1, None);
        } else if self.slots[index].is_some() {
            return Err(format!("text id {id} given twice"));
        }
        self.free.remove(&id);
        self.slots[index] = Some(text.into());
        self.ids.insert(text.into(), TextId(id));
        Ok(())
    }

    /// The id of `text` (already clipped by the caller), interned if new; [`TextId::NOT_KEPT`]
    /// when it is new and the table is full. Allocates only for a new text.
    pub fn intern(&mut self, text: &str) -> TextId {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = match self.free.pop_first() {
            Some(id) => id,
            None if self.slots.len() <= MAX_TEXTS as usize => {
                if self.slots.is_empty() {
                    self.slots.push(None); // slot 0: never a text
                }
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
            None => {
                self.not_kept += 1;
                // Counted as met since the last compaction: a table full of texts nobody
                // refers to any more is compacted again (it takes no new text, so a count
                // of texts kept alone would never reach the next compaction).
                self.added = self.added.saturating_add(1);
                return TextId::NOT_KEPT;
            }
        };
        self.slots[id as usize] = Some(text.into());
        self.ids.insert(text.into(), TextId(id));
        if !self.untracked {
            self.changed.insert(id);
        }
        self.added = self.added.saturating_add(1);
        TextId(id)
    }

    /// The text of `id` (`None` for [`TextId::NOT_KEPT`]).
    pub fn get(&self, id: TextId) -> Option<&str> {
        self.slots.get(id.0 as usize)?.as_deref()
    }

    /// Whether `id` reads as `text` (false for a text not kept).
    pub fn is(&self, id: TextId, text: &str) -> bool {
        self.get(id) == Some(text)
    }

    /// Texts held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Texts met (kept or refused) since the last compaction.
    pub fn added(&self) -> u32 {
        self.added
    }

    /// Texts not kept because the table was full.
    pub fn not_kept(&self) -> u64 {
        self.not_kept
    }

    /// Every (id, text), in id order.
    pub fn entries(&self) -> impl Iterator<Item = (TextId, &str)> {
        (self.slots.iter().enumerate())
            .filter_map(|(id, t)| Some((TextId(id as u32), t.as_deref()?)))
    }

    /// Bytes the texts take (both copies, approximately).
    pub fn approximate_bytes(&self) -> usize {
        self.entries().map(|(_, t)| 2 * (t.len() + 16) + 8).sum()
    }

    /// Whether a compaction is due (see the module's overview): three quarters full and an
    /// eighth of the size met since the last, or full and a sixty-fourth met (texts kept or
    /// refused; a full table refuses every new text until it is compacted).
    pub fn compaction_due(&self) -> bool {
        let full = self.len() >= MAX_TEXTS as usize;
        self.len() >= (MAX_TEXTS as usize) * 3 / 4
            && (self.added >= MAX_TEXTS / 8 || (full && self.added >= MAX_TEXTS / 64))
    }

    /// Frees every text whose id `referenced` does not mark (indexed by id).
    pub fn compact(&mut self, referenced: &[bool]) {
        for (id, slot) in self.slots.iter_mut().enumerate().skip(1) {
            if slot.is_some() && !referenced.get(id).copied().unwrap_or(false) {
                if let Some(text) = slot.take() {
                    self.ids.remove(&text);
                }
                self.free.insert(id as u32);
                if !self.untracked {
                    self.changed.insert(id as u32);
                }
            }
        }
        self.added = 0;
    }

    /// An all-false mark per id, for [`Texts::compact`] and for checking a stored state.
    pub fn marks(&self) -> Vec<bool> {
        vec![false; self.slots.len()]
    }

    /// The ids added or freed since the last call, with their text (`None`: freed).
    pub fn take_changed(&mut self) -> Vec<(TextId, Option<&str>)> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|id| (TextId(id), self.get(TextId(id))))
            .collect()
    }

    /// Whether texts added and freed are recorded for [`Texts::take_changed`] (on by
    /// default; off for a state stored whole, which never takes them: they would pile up).
    pub fn set_change_tracking(&mut self, on: bool) {
        self.untracked = !on;
        if !on {
            self.changed.clear();
        }
    }

    /// Counts every text as changed (written again at the next take).
    pub fn mark_all_changed(&mut self) {
        if self.untracked {
            return;
        }
        let ids: Vec<u32> = self.entries().map(|(id, _)| id.0).collect();
        self.changed.extend(ids);
    }
}

/// A trigger's name by its id in [`TriggerNames`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TriggerId(pub u32);

/// The trigger names cooldowns refer to, by id (stored with the globals).
#[derive(Clone, Debug, Default)]
pub struct TriggerNames {
    /// By id; `None`: a free id.
    names: Vec<Option<String>>,
    /// Name → id (derived).
    ids: FastHashMap<String, TriggerId>,
}

impl PartialEq for TriggerNames {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl Serialize for TriggerNames {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.names.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TriggerNames {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<Option<String>>::deserialize(deserializer)?;
        let mut ids = FastHashMap::default();
        for (id, name) in names.iter().enumerate() {
            if let Some(name) = name
                && ids.insert(name.clone(), TriggerId(id as u32)).is_some()
            {
                return Err(serde::de::Error::custom(format!(
                    "trigger name {name:?} given twice"
                )));
            }
        }
        Ok(TriggerNames { names, ids })
    }
}

impl TriggerNames {
    /// The id of `name`, given one (the lowest free) if it has none.
    pub fn id(&mut self, name: &str) -> TriggerId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = match self.names.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.names.push(None);
                self.names.len() - 1
            }
        };
        self.names[id] = Some(name.to_owned());
        self.ids.insert(name.to_owned(), TriggerId(id as u32));
        TriggerId(id as u32)
    }

    /// The id of `name`, if it has one.
    pub fn find(&self, name: &str) -> Option<TriggerId> {
        self.ids.get(name).copied()
    }

    /// The name of `id`.
    pub fn name(&self, id: TriggerId) -> Option<&str> {
        self.names.get(id.0 as usize)?.as_deref()
    }

    /// Ids (free or not) below this.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Frees every id that `keep` does not mark (indexed by id).
    pub fn retain(&mut self, keep: &[bool]) {
        for (id, name) in self.names.iter_mut().enumerate() {
            if !keep.get(id).copied().unwrap_or(false)
                && let Some(name) = name.take()
            {
                self.ids.remove(&name);
            }
        }
        while self.names.last().is_some_and(Option::is_none) {
            self.names.pop();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An intent's product is stored as the `Option<TextId>` it always was: the same bytes
    /// both ways, and the one id no text has is read as a product not kept, not as none.
    #[test]
    fn a_maybe_text_id_is_encoded_as_an_option_of_text_id() {
        for id in [
            None,
            Some(TextId::NOT_KEPT),
            Some(TextId(7)),
            Some(TextId(MAX_TEXTS)),
        ] {
            let compact = MaybeTextId::from(id);
            assert_eq!(compact.get(), id);
            assert_eq!(compact.is_some(), id.is_some());
            assert_eq!(compact.is_none(), id.is_none());
            let bytes = postcard::to_allocvec(&compact).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&id).unwrap());
            assert_eq!(
                postcard::from_bytes::<MaybeTextId>(&bytes).unwrap(),
                compact
            );
        }
        let odd = postcard::to_allocvec(&Some(TextId(u32::MAX))).unwrap();
        let read = postcard::from_bytes::<MaybeTextId>(&odd).unwrap();
        assert_eq!(read.get(), Some(TextId::NOT_KEPT));
        assert_eq!(std::mem::size_of::<MaybeTextId>(), 4);
    }
}
