//! The stored shapes of earlier formats, with texts as strings, and their migration into
//! the current facts (texts and trigger names interned). Read only: a state read from
//! them is written whole in the current formats at the next commit
//! ([`StoredState::legacy`](super::StoredState::legacy)).
//!
//! - whole state, format 1: [`ActStateV1`];
//! - globals, format 2: [`GlobalsV2`]; user rows, format 1: `(UserPseudonym, UserFactsV1,
//!   Option<i64>)`.

use super::texts::{Texts, TriggerNames};
use super::{CartLine, FactsFields, Intent, SegmentState, UserFacts};
use crate::record::UserPseudonym;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// [`Intent`] with its texts as strings (field order is the format).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct IntentV1 {
    pub at_ms: i64,
    pub add_to_cart: bool,
    pub dims: [String; 2],
    pub product_id: Option<String>,
}

/// [`CartLine`] with its product as a string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct CartLineV1 {
    pub at_ms: i64,
    pub product_id: Option<String>,
    pub value: Option<f64>,
}

/// [`UserFacts`] with its texts as strings and its cooldowns by trigger name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct UserFactsV1 {
    pub marketing: bool,
    pub last_seen_ms: i64,
    pub touch: Option<(String, String, i64)>,
    pub intents: Vec<IntentV1>,
    pub last_conversion_ms: Option<i64>,
    pub last_conversion_kind: Option<String>,
    pub last_registration_ms: Option<i64>,
    pub cart: Vec<CartLineV1>,
    pub purchases: u32,
    pub event_ids: Vec<u64>,
    pub sent: Vec<(String, i64)>,
}

/// The whole state of format 1 (users in pseudonym order).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct ActStateV1 {
    pub users: BTreeMap<UserPseudonym, UserFactsV1>,
    pub segments: BTreeMap<(String, Vec<String>), SegmentState>,
    pub max_event_ms: Option<i64>,
    pub judged_through_ms: Option<i64>,
    pub advanced_minute_ms: Option<i64>,
    pub withheld: BTreeMap<String, u64>,
    pub candidates: BTreeMap<UserPseudonym, i64>,
}

/// The globals of format 2.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct GlobalsV2 {
    pub segments: BTreeMap<(String, Vec<String>), SegmentState>,
    pub max_event_ms: Option<i64>,
    pub judged_through_ms: Option<i64>,
    pub advanced_minute_ms: Option<i64>,
    pub withheld: BTreeMap<String, u64>,
    pub next_row: u64,
}

impl UserFactsV1 {
    /// The same facts with their texts interned in `texts` and their cooldowns by the id of
    /// their trigger's name in `names`.
    pub fn migrate(self, texts: &mut Texts, names: &mut TriggerNames) -> UserFacts {
        let mut text = |t: &str| texts.intern(t);
        UserFacts::from(FactsFields {
            row: 0,
            marketing: self.marketing,
            last_seen_ms: self.last_seen_ms,
            touch: (self.touch).map(|(c, k, at)| (text(&c), text(&k), at)),
            intents: (self.intents.into_iter())
                .map(|i| Intent {
                    at_ms: i.at_ms,
                    add_to_cart: i.add_to_cart,
                    dims: [text(&i.dims[0]), text(&i.dims[1])],
                    product_id: i.product_id.as_deref().map(&mut text).into(),
                })
                .collect(),
            last_conversion_ms: self.last_conversion_ms,
            last_conversion_kind: self.last_conversion_kind.as_deref().map(&mut text),
            last_registration_ms: self.last_registration_ms,
            cart: (self.cart.into_iter())
                .map(|l| CartLine {
                    at_ms: l.at_ms,
                    product_id: l.product_id.as_deref().map(&mut text),
                    value: l.value,
                })
                .collect(),
            purchases: self.purchases,
            event_ids: self.event_ids,
            sent: (self.sent.iter())
                .map(|(name, at)| (names.id(name), *at))
                .collect(),
        })
    }
}
