//! A JSON object split into its raw field values, without interpreting them yet.
//!
//! Splitting first and interpreting second is what lets an error name the field: serde's
//! own typed errors say "invalid type: string, expected f64 at column 40", which a
//! marketing team cannot act on. The split borrows from the body, so it costs no copies;
//! it also notices what a typed parse would silently accept: duplicate keys (including an
//! English name and its Italian alias both present) and unknown fields.

use super::fields;
use crate::privacy::Pseudonymizer;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Most distinct fields a table may have.
pub(crate) const MAX_SLOTS: usize = 32;

/// The fields an object may carry: (wire name, slot). Aliases share a slot.
#[derive(Debug)]
pub(crate) struct FieldTable {
    pub names: &'static [(&'static str, usize)],
    /// Canonical name per slot, for "missing required field" errors.
    pub canonical: &'static [&'static str],
    /// Slots that hold a personal identifier to redact in quarantine excerpts.
    pub pseudonymize_slot: Option<usize>,
    pub redact_slots: &'static [usize],
}

impl FieldTable {
    fn slot_of(&self, key: &str) -> Option<(usize, &'static str)> {
        self.names
            .iter()
            .find(|(name, _)| *name == key)
            .map(|&(name, slot)| (slot, name))
    }
}

/// An object's raw field values by slot, plus what was wrong with its keys.
#[derive(Debug)]
pub(crate) struct RawObject<'a> {
    values: [Option<&'a RawValue>; MAX_SLOTS],
    /// The wire name each present slot was sent under.
    sent_as: [&'static str; MAX_SLOTS],
    duplicate: Option<&'static str>,
    unknown: Option<String>,
}

impl<'a> RawObject<'a> {
    pub(crate) fn parse_slice(bytes: &'a [u8], table: &FieldTable) -> Result<Self, String> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let object = ObjectSeed(table)
            .deserialize(&mut de)
            .map_err(|e| describe_syntax_error(&e))?;
        de.end().map_err(|e| describe_syntax_error(&e))?;
        Ok(object)
    }

    pub(crate) fn parse_str(text: &'a str, table: &FieldTable) -> Result<Self, String> {
        Self::parse_slice(text.as_bytes(), table)
    }

    /// A problem with the keys themselves, reported before any value is looked at.
    pub(crate) fn problem(&self, table: &FieldTable) -> Option<super::FieldError> {
        if let Some(name) = self.duplicate {
            let slot = table.slot_of(name).map_or(0, |(slot, _)| slot);
            let canonical = table.canonical[slot];
            let message = if canonical == name {
                "appears more than once in the object".to_string()
            } else {
                format!("appears more than once (`{name}` is an alias of `{canonical}`)")
            };
            return Some(super::FieldError::new(name, message));
        }
        self.unknown.as_ref().map(|name| super::FieldError {
            field: "(unknown)",
            message: format!(
                "unknown field {}; custom data goes under `properties`",
                fields::quote_for_message(name, 64)
            ),
        })
    }

    /// The raw value of a slot and the name it was sent under.
    pub(crate) fn get(&self, slot: usize) -> Option<(&'static str, &'a RawValue)> {
        self.values[slot].map(|raw| (self.sent_as[slot], raw))
    }

    /// The object as JSON with the personal fields replaced, for the quarantine: the udid
    /// by its pseudonym, the IP (and anything else listed) by a placeholder. Long values
    /// are cut so the quarantine stays small.
    pub(crate) fn redacted(&self, table: &FieldTable, pseudonymizer: &Pseudonymizer) -> String {
        let mut out = serde_json::Map::new();
        for (slot, raw) in self.values.iter().enumerate() {
            let Some(raw) = raw else { continue };
            let name = self.sent_as[slot].to_string();
            let value = if Some(slot) == table.pseudonymize_slot {
                match serde_json::from_str::<String>(raw.get()) {
                    Ok(udid) => serde_json::Value::String(format!(
                        "pseudonym:{}",
                        pseudonymizer.pseudonym(&udid).to_hex()
                    )),
                    Err(_) => serde_json::Value::String("<redacted>".into()),
                }
            } else if table.redact_slots.contains(&slot) {
                serde_json::Value::String("<redacted>".into())
            } else if raw.get().len() > 256 {
                serde_json::Value::String(format!("<{} bytes, not kept>", raw.get().len()))
            } else {
                serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null)
            };
            out.insert(name, value);
        }
        serde_json::Value::Object(out).to_string()
    }
}

fn describe_syntax_error(error: &serde_json::Error) -> String {
    format!("invalid JSON: {error}")
}

struct ObjectSeed<'t>(&'t FieldTable);

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = RawObject<'de>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = RawObject<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = RawObject {
            values: [None; MAX_SLOTS],
            sent_as: [""; MAX_SLOTS],
            duplicate: None,
            unknown: None,
        };
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            match self.0.slot_of(&key) {
                Some((slot, name)) if object.values[slot].is_some() => {
                    object.duplicate.get_or_insert(name);
                }
                Some((slot, name)) => {
                    object.values[slot] = Some(value);
                    object.sent_as[slot] = name;
                }
                None => {
                    object.unknown.get_or_insert_with(|| key.into_owned());
                }
            }
        }
        Ok(object)
    }
}

/// An object key, borrowed from the body unless it had escapes. (serde's `Cow<str>` always
/// allocates; keys are on the hot path.)
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}
