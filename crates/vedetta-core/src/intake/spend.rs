//! The ad spend record's fields (EVENTS.md, "Ad spend record") and how each is read.

use super::object::{FieldTable, RawObject};
use super::{FieldError, IntakeContext, fields};
use crate::record::{LogRecord, SpendRecord};

const TS: usize = 0;
const CHANNEL: usize = 1;
const CAMPAIGN: usize = 2;
const AMOUNT: usize = 3;
const CURRENCY: usize = 4;
const SOURCE: usize = 5;

/// Canonical field names, by slot.
pub const SPEND_FIELD_NAMES: &[&str] =
    &["ts", "channel", "campaign", "amount", "currency", "source"];

pub(super) static TABLE: FieldTable = FieldTable {
    names: &[
        ("ts", TS),
        ("channel", CHANNEL),
        ("campaign", CAMPAIGN),
        ("amount", AMOUNT),
        ("currency", CURRENCY),
        ("source", SOURCE),
    ],
    canonical: SPEND_FIELD_NAMES,
    pseudonymize_slot: None,
    redact_slots: &[],
};

pub(super) fn build(
    object: &RawObject<'_>,
    ctx: &IntakeContext<'_>,
) -> Result<LogRecord, FieldError> {
    let max = ctx.limits.max_text_chars;
    let required = |slot: usize| {
        object
            .get(slot)
            .ok_or_else(|| FieldError::new(SPEND_FIELD_NAMES[slot], "missing required field"))
    };
    let optional_text = |slot: usize| match object.get(slot) {
        Some((name, raw)) => fields::text(name, raw, max),
        None => Ok(None),
    };

    let (name, raw) = required(TS)?;
    let ts = fields::timestamp(name, raw, ctx)?;
    let (name, raw) = required(CHANNEL)?;
    let channel = fields::not_reserved(name, fields::text(name, raw, max)?)?
        .ok_or_else(|| FieldError::new(name, "must not be empty"))?;
    let (amount_name, amount_raw) = required(AMOUNT)?;
    let amount = fields::amount(amount_name, amount_raw)?
        .ok_or_else(|| FieldError::new(amount_name, "expected a number ≥ 0, got null"))?;
    let currency = match object.get(CURRENCY) {
        Some((name, raw)) => fields::currency(name, raw)?,
        None => None,
    };
    fields::bounded_amount(
        amount_name,
        amount_raw,
        amount,
        currency.as_deref(),
        &ctx.limits.money,
    )?;
    let campaign = match object.get(CAMPAIGN) {
        Some((name, raw)) => fields::not_reserved(name, fields::text(name, raw, max)?)?,
        None => None,
    };
    Ok(LogRecord::Spend(SpendRecord {
        ts,
        channel,
        campaign,
        amount,
        currency,
        source: optional_text(SOURCE)?,
    }))
}
