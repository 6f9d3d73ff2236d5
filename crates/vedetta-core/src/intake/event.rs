//! The funnel event's fields (EVENTS.md, "Conversion-funnel event") and how each is read.

use super::browser::BrowserContext;
use super::object::{FieldTable, RawObject};
use super::{Built, FieldError, IdentityClaim, IntakeContext, fields};
use crate::privacy::truncate_ip;
use crate::record::{EventKind, LogRecord, StoredEvent};

// Slots. Aliases share the slot of the field they stand for.
const UDID: usize = 0;
const TYPE: usize = 1;
const TS: usize = 2;
const EVENT_ID: usize = 3;
const VALUE: usize = 4;
const CURRENCY: usize = 5;
const ORDER_ID: usize = 6;
const CHANNEL: usize = 7;
const CAMPAIGN: usize = 8;
const UTM_SOURCE: usize = 9;
const UTM_MEDIUM: usize = 10;
const UTM_CAMPAIGN: usize = 11;
const UTM_CONTENT: usize = 12;
const UTM_TERM: usize = 13;
const GCLID: usize = 14;
const FBCLID: usize = 15;
const USER_AGENT: usize = 16;
const DEVICE: usize = 17;
const IP: usize = 18;
const REGION: usize = 19;
const PAGE: usize = 20;
const REFERRER: usize = 21;
const PRODUCT_ID: usize = 22;
const CONSENT: usize = 23;
const PROPERTIES: usize = 24;
const EMAIL: usize = 25;
const CRM_ID: usize = 26;

/// Canonical field names, by slot.
pub const EVENT_FIELD_NAMES: &[&str] = &[
    "udid",
    "type",
    "ts",
    "event_id",
    "value",
    "currency",
    "order_id",
    "channel",
    "campaign",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
    "gclid",
    "fbclid",
    "user_agent",
    "device",
    "ip",
    "region",
    "page",
    "referrer",
    "product_id",
    "consent",
    "properties",
    "email",
    "crm_id",
];

pub(super) static TABLE: FieldTable = FieldTable {
    names: &[
        ("udid", UDID),
        ("UDID", UDID),
        ("type", TYPE),
        ("tipo", TYPE),
        ("ts", TS),
        ("tempo", TS),
        ("event_id", EVENT_ID),
        ("value", VALUE),
        ("valore", VALUE),
        ("currency", CURRENCY),
        ("order_id", ORDER_ID),
        ("channel", CHANNEL),
        ("campaign", CAMPAIGN),
        ("utm_source", UTM_SOURCE),
        ("utm_medium", UTM_MEDIUM),
        ("utm_campaign", UTM_CAMPAIGN),
        ("utm_content", UTM_CONTENT),
        ("utm_term", UTM_TERM),
        ("gclid", GCLID),
        ("fbclid", FBCLID),
        ("user_agent", USER_AGENT),
        ("device", DEVICE),
        ("ip", IP),
        ("region", REGION),
        ("page", PAGE),
        ("referrer", REFERRER),
        ("product_id", PRODUCT_ID),
        ("consent", CONSENT),
        ("properties", PROPERTIES),
        ("email", EMAIL),
        ("crm_id", CRM_ID),
    ],
    canonical: EVENT_FIELD_NAMES,
    pseudonymize_slot: Some(UDID),
    redact_slots: &[IP, EMAIL, CRM_ID],
};

/// The event type that only records a consent decision (docs/events.md, "Consent events").
/// It is judged like any event but never enters the log, so KPIs do not see it.
pub const CONSENT_EVENT_TYPE: &str = "consent";

/// Longest custom event type name.
const MAX_TYPE_CHARS: usize = 64;

/// One event from its fields. A browser request ([`BrowserContext`]) supplies the address,
/// the user agent, a clock correction and, for a cookieless page, the id (see
/// `super::browser`).
pub(super) fn build(
    object: &RawObject<'_>,
    ctx: &IntakeContext<'_>,
    browser: Option<&BrowserContext<'_>>,
) -> Result<Built, FieldError> {
    let limits = ctx.limits;
    let offset = browser.map_or(0, |b| b.clock_offset_ms);
    // A page's `ts` is judged against the page's own "now", then moved onto the server's.
    let page_ctx = IntakeContext {
        now_ms: ctx.now_ms.saturating_sub(offset),
        ..*ctx
    };
    let required = |slot: usize| {
        object
            .get(slot)
            .ok_or_else(|| FieldError::new(EVENT_FIELD_NAMES[slot], "missing required field"))
    };
    let optional_text = |slot: usize, max_chars: usize| match object.get(slot) {
        Some((name, raw)) => fields::text(name, raw, max_chars),
        None => Ok(None),
    };
    let text = |slot: usize| optional_text(slot, limits.max_text_chars);

    let udid = match (object.get(UDID), browser) {
        (Some((name, raw)), _) => fields::required_identifier(name, raw, limits.max_id_chars)?,
        (None, Some(browser)) => browser.anonymous_udid.to_string(),
        (None, None) => return Err(FieldError::new("udid", "missing required field")),
    };
    let cookieless = browser.is_some() && object.get(UDID).is_none();

    let (name, raw) = required(TYPE)?;
    let kind = match fields::text(name, raw, MAX_TYPE_CHARS)? {
        Some(type_name) => EventKind::from_wire(&type_name),
        None => return Err(FieldError::new(name, "must not be empty")),
    };

    let (name, raw) = required(TS)?;
    let ts = fields::timestamp(name, raw, &page_ctx)?;
    let ts = crate::time::EventTime(ts.0.saturating_add(offset));

    let value = match object.get(VALUE) {
        Some((name, raw)) => fields::amount(name, raw)?,
        None => None,
    };
    let currency = match object.get(CURRENCY) {
        Some((name, raw)) => fields::currency(name, raw)?,
        None => None,
    };
    if let (Some(amount), Some((name, raw))) = (value, object.get(VALUE)) {
        fields::bounded_amount(name, raw, amount, currency.as_deref(), &limits.money)?;
    }
    let dimension = |slot: usize| match object.get(slot) {
        Some((name, raw)) => {
            fields::not_reserved(name, fields::text(name, raw, limits.max_text_chars)?)
        }
        None => Ok(None),
    };
    let ip_network = match (browser, object.get(IP)) {
        (Some(browser), _) => browser.ip.map(truncate_ip),
        (None, Some((name, raw))) => fields::ip(name, raw)?.map(truncate_ip),
        (None, None) => None,
    };
    let mut consent = match object.get(CONSENT) {
        Some((name, raw)) => fields::consent(name, raw)?,
        None => Default::default(),
    };
    if cookieless {
        // No stored id means no consent to one: nothing of this visitor leaves Vedetta.
        consent.analytics = Some(false);
        consent.marketing = Some(false);
    }
    let user_agent = match browser {
        Some(browser) => browser
            .user_agent
            .map(|ua| ua.chars().take(limits.max_text_chars).collect::<String>())
            .filter(|ua| !ua.trim().is_empty()),
        None => text(USER_AGENT)?,
    };
    let properties = match object.get(PROPERTIES) {
        Some((name, raw)) => fields::properties(name, raw, ctx)?,
        None => None,
    };

    // Identity is read (and refused when malformed) whatever the consent, so a client hears
    // about a bad address; whether it is kept is the identity store's decision.
    let email = match object.get(EMAIL) {
        Some((name, raw)) => fields::email(name, raw)?,
        None => None,
    };
    let crm_id = match object.get(CRM_ID) {
        Some((name, raw)) => fields::crm_id(name, raw)?,
        None => None,
    };
    let user = ctx.pseudonymizer.pseudonym(&udid);
    let is_consent_event = kind.as_str().eq_ignore_ascii_case(CONSENT_EVENT_TYPE);
    if is_consent_event && consent.marketing.is_none() {
        return Err(FieldError::new(
            "consent",
            "a consent event must say the marketing decision, e.g. {\"marketing\": true}",
        ));
    }
    let says_something = email.is_some() || crm_id.is_some() || consent.marketing.is_some();
    let identity = says_something.then_some(IdentityClaim {
        index: 0,
        user,
        ts,
        email,
        crm_id,
        marketing: consent.marketing,
    });
    if is_consent_event {
        return Ok(Built {
            record: None,
            identity,
        });
    }

    let order_id = optional_text(ORDER_ID, limits.max_id_chars)?;
    if kind == EventKind::Refund {
        // A refund means nothing without its order and its amount (docs/events.md).
        if order_id.is_none() {
            return Err(FieldError::new(
                "order_id",
                "a refund must name the order it refunds (missing required field)",
            ));
        }
        if value.is_none() {
            return Err(FieldError::new(
                "value",
                "a refund must say the amount refunded (missing required field)",
            ));
        }
    }
    let record = LogRecord::Event(StoredEvent {
        user,
        kind,
        ts,
        event_id: optional_text(EVENT_ID, limits.max_id_chars)?,
        value,
        currency,
        order_id,
        channel: dimension(CHANNEL)?,
        campaign: dimension(CAMPAIGN)?,
        utm_source: text(UTM_SOURCE)?,
        utm_medium: text(UTM_MEDIUM)?,
        utm_campaign: dimension(UTM_CAMPAIGN)?,
        utm_content: text(UTM_CONTENT)?,
        utm_term: text(UTM_TERM)?,
        gclid: text(GCLID)?,
        fbclid: text(FBCLID)?,
        user_agent,
        device: text(DEVICE)?,
        ip_network,
        region: text(REGION)?,
        page: text(PAGE)?,
        referrer: text(REFERRER)?,
        product_id: optional_text(PRODUCT_ID, limits.max_id_chars)?,
        consent,
        properties,
    });
    Ok(Built {
        record: Some(record),
        identity,
    })
}
