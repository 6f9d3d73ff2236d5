//! Wire types: one synthetic record and its JSON, exactly as EVENTS.md defines it.
//!
//! A [`SynthEvent`] serializes to a conversion-funnel event and a [`SynthSpend`] to an ad spend
//! record. Absent optional fields are omitted (never `null`). An event may use the Italian
//! aliases (`UDID`, `tipo`, `tempo`, `valore`, and `visualizzazione`/`carrello`/
//! `registrazione`/`acquisto` as type names) because real Italian tag managers send them, and
//! the server must accept both spellings.
//!
//! Pooled strings are `&'static str` and ids are numbers rendered on serialization, so building
//! an event allocates nothing; serializing writes straight into the caller's buffer.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

use crate::rfc3339::format_rfc3339_ms;

/// A funnel step. The six built-in types of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    PageView,
    AddToCart,
    Registration,
    Checkout,
    Purchase,
    Lead,
    /// Money given back on an order: not a funnel step, so not in [`EventType::ALL`] (whose
    /// order `as usize` indexes); the contract's `refund`.
    Refund,
}

impl EventType {
    /// All funnel types, in funnel order; `as usize` indexes this array.
    pub const ALL: [EventType; 6] = [
        EventType::PageView,
        EventType::AddToCart,
        EventType::Registration,
        EventType::Checkout,
        EventType::Purchase,
        EventType::Lead,
    ];

    /// The English wire name (`page_view`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::AddToCart => "add_to_cart",
            EventType::Registration => "registration",
            EventType::Checkout => "checkout",
            EventType::Purchase => "purchase",
            EventType::Lead => "lead",
            EventType::Refund => "refund",
        }
    }

    /// The Italian alias the contract accepts, where one exists (`checkout` and `lead` have none).
    pub fn italian_alias(self) -> Option<&'static str> {
        match self {
            EventType::PageView => Some("visualizzazione"),
            EventType::AddToCart => Some("carrello"),
            EventType::Registration => Some("registrazione"),
            EventType::Purchase => Some("acquisto"),
            EventType::Refund => Some("rimborso"),
            EventType::Checkout | EventType::Lead => None,
        }
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The marketing channels of the contract's default grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Social,
    PaidSearch,
    Email,
    Organic,
    Direct,
    Referral,
    Display,
    Affiliate,
}

impl Channel {
    pub const ALL: [Channel; 8] = [
        Channel::Social,
        Channel::PaidSearch,
        Channel::Email,
        Channel::Organic,
        Channel::Direct,
        Channel::Referral,
        Channel::Display,
        Channel::Affiliate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Social => "social",
            Channel::PaidSearch => "paid_search",
            Channel::Email => "email",
            Channel::Organic => "organic",
            Channel::Direct => "direct",
            Channel::Referral => "referral",
            Channel::Display => "display",
            Channel::Affiliate => "affiliate",
        }
    }

    /// Channels whose campaigns are bought by the minute and therefore get spend records.
    pub fn is_paid(self) -> bool {
        matches!(
            self,
            Channel::PaidSearch | Channel::Social | Channel::Display
        )
    }
}

impl Serialize for Channel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// How a timestamp is written; the contract accepts all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsFormat {
    /// `2024-04-05T14:23:05.123Z`
    Rfc3339Utc,
    /// `2024-04-05T16:23:05.123+02:00`: the same instant in local wall-clock time.
    Rfc3339Offset { minutes: i16 },
    /// `1712326985123`
    EpochMillis,
}

/// An event time: the instant (`epoch_ms`, the ground truth) and how it goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub epoch_ms: i64,
    pub format: TsFormat,
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.format {
            TsFormat::Rfc3339Utc => {
                serializer.serialize_str(format_rfc3339_ms(self.epoch_ms, 0).as_str())
            }
            TsFormat::Rfc3339Offset { minutes } => {
                serializer.serialize_str(format_rfc3339_ms(self.epoch_ms, minutes).as_str())
            }
            TsFormat::EpochMillis => serializer.serialize_i64(self.epoch_ms),
        }
    }
}

/// The shape of a user id, as different client integrations produce them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdidStyle {
    /// A first-party cookie id: `u-3f9a0c1e77d2b4a8`.
    Cookie,
    /// A mobile-app install id (UUID v4 layout): `3f9a0c1e-77d2-4b4a-8c1d-0e5f...`.
    AppInstall,
    /// A CRM customer number: `CRM-000123456`.
    Crm,
}

/// A user's id as the client knows it. `key` is unique per user within one generator (derived
/// by a bijection from the user's index), and every style embeds all of it, so distinct users
/// never share a udid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Udid {
    pub key: u64,
    pub style: UdidStyle,
}

impl fmt::Display for Udid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 40];
        let text: &[u8] = match self.style {
            UdidStyle::Cookie => {
                buf[..2].copy_from_slice(b"u-");
                put_hex(&mut buf[2..18], self.key);
                &buf[..18]
            }
            UdidStyle::AppInstall => {
                // 8-4-4-4-12 hex digits; the version nibble is 4 and the variant bits 10, as in
                // a random UUID. `key` fills the first 48 bits and the first 16 of the node, so
                // it survives whole; the rest is derived noise.
                let noise = crate::rng::mix64(self.key ^ 0xA5A5_5A5A_C3C3_3C3C);
                put_hex(&mut buf[0..8], self.key >> 32);
                buf[8] = b'-';
                put_hex(&mut buf[9..13], self.key >> 16);
                buf[13] = b'-';
                buf[14] = b'4';
                put_hex(&mut buf[15..18], noise);
                buf[18] = b'-';
                put_hex(&mut buf[19..23], 0x8000 | ((noise >> 12) & 0x3FFF));
                buf[23] = b'-';
                put_hex(&mut buf[24..28], self.key);
                put_hex(&mut buf[28..36], noise >> 32);
                &buf[..36]
            }
            UdidStyle::Crm => return write!(f, "CRM-{:09}", self.key),
        };
        f.write_str(std::str::from_utf8(text).unwrap_or(""))
    }
}

impl Serialize for Udid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The client's idempotency key, `ev-` and 16 hex digits. Unique per logical event within one
/// generator; an exact retry repeats it, a double-fire gets a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub u64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = *b"ev-0000000000000000";
        put_hex(&mut buf[3..], self.0);
        f.write_str(std::str::from_utf8(&buf).unwrap_or(""))
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The shop's order number, `ORD-` and 8 digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(pub u64);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ORD-{:08}", self.0)
    }
}

impl Serialize for OrderId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Which ad platform a click id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClickIdKind {
    /// Google Ads auto-tagging, `Cj0KCQ...`.
    Gclid,
    /// Meta's click id, `IwAR...`.
    Fbclid,
}

/// A click id as the ad platform appends it to the landing URL; rendered from `bits` so that it
/// costs no allocation and is the same on every event of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClickId {
    pub kind: ClickIdKind,
    pub bits: u64,
}

impl fmt::Display for ClickId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let (prefix, body_len): (&str, usize) = match self.kind {
            ClickIdKind::Gclid => ("Cj0KCQjw", 80),
            ClickIdKind::Fbclid => ("IwAR", 56),
        };
        f.write_str(prefix)?;
        let mut body = [0u8; 80];
        let mut state = crate::rng::SplitMix64::new(self.bits);
        let mut word = 0u64;
        for (i, byte) in body[..body_len].iter_mut().enumerate() {
            if i % 10 == 0 {
                word = state.next_u64();
            }
            *byte = ALPHABET[(word & 63) as usize];
            word >>= 6;
        }
        f.write_str(std::str::from_utf8(&body[..body_len]).unwrap_or(""))
    }
}

impl Serialize for ClickId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Consent as clients send it: per purpose, or one flag for everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    /// `{"analytics": true, "marketing": false}`
    Purposes { analytics: bool, marketing: bool },
    /// `true` or `false`
    All(bool),
}

impl Serialize for Consent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Consent::Purposes {
                analytics,
                marketing,
            } => {
                let mut object = serializer.serialize_struct("Consent", 2)?;
                object.serialize_field("analytics", &analytics)?;
                object.serialize_field("marketing", &marketing)?;
                object.end()
            }
            Consent::All(flag) => serializer.serialize_bool(flag),
        }
    }
}

/// The free-form `properties` object, as a shop would fill it: an A/B test, or payment details
/// on a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Properties {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<u32>,
}

/// A conversion-funnel event. Field meanings are those of EVENTS.md; `None` fields are omitted.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthEvent {
    pub udid: Udid,
    pub event_type: EventType,
    pub ts: Timestamp,
    pub event_id: EventId,
    /// EUR, two decimals.
    pub value: Option<f64>,
    pub currency: Option<&'static str>,
    pub order_id: Option<OrderId>,
    pub channel: Option<Channel>,
    pub campaign: Option<&'static str>,
    pub utm_source: Option<&'static str>,
    pub utm_medium: Option<&'static str>,
    pub utm_campaign: Option<&'static str>,
    pub gclid: Option<ClickId>,
    pub fbclid: Option<ClickId>,
    pub user_agent: Option<&'static str>,
    pub ip: Option<IpAddr>,
    pub region: Option<&'static str>,
    pub page: Option<&'static str>,
    pub referrer: Option<&'static str>,
    pub product_id: Option<&'static str>,
    pub consent: Option<Consent>,
    pub properties: Option<Properties>,
    /// Write `UDID`/`tipo`/`tempo`/`valore` and the Italian type alias instead of the English
    /// names, as some Italian tag managers do.
    pub italian_field_names: bool,
}

impl Serialize for SynthEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let italian = self.italian_field_names;
        let present = [
            self.value.is_some(),
            self.currency.is_some(),
            self.order_id.is_some(),
            self.channel.is_some(),
            self.campaign.is_some(),
            self.utm_source.is_some(),
            self.utm_medium.is_some(),
            self.utm_campaign.is_some(),
            self.gclid.is_some(),
            self.fbclid.is_some(),
            self.user_agent.is_some(),
            self.ip.is_some(),
            self.region.is_some(),
            self.page.is_some(),
            self.referrer.is_some(),
            self.product_id.is_some(),
            self.consent.is_some(),
            self.properties.is_some(),
        ];
        let len = 4 + present.iter().filter(|&&p| p).count();
        let mut object = serializer.serialize_struct("SynthEvent", len)?;
        object.serialize_field(if italian { "UDID" } else { "udid" }, &self.udid)?;
        let type_name = match self.event_type.italian_alias() {
            Some(alias) if italian => alias,
            _ => self.event_type.as_str(),
        };
        object.serialize_field(if italian { "tipo" } else { "type" }, type_name)?;
        object.serialize_field(if italian { "tempo" } else { "ts" }, &self.ts)?;
        object.serialize_field("event_id", &self.event_id)?;
        optional(
            &mut object,
            if italian { "valore" } else { "value" },
            &self.value,
        )?;
        optional(&mut object, "currency", &self.currency)?;
        optional(&mut object, "order_id", &self.order_id)?;
        optional(&mut object, "channel", &self.channel)?;
        optional(&mut object, "campaign", &self.campaign)?;
        optional(&mut object, "utm_source", &self.utm_source)?;
        optional(&mut object, "utm_medium", &self.utm_medium)?;
        optional(&mut object, "utm_campaign", &self.utm_campaign)?;
        optional(&mut object, "gclid", &self.gclid)?;
        optional(&mut object, "fbclid", &self.fbclid)?;
        optional(&mut object, "user_agent", &self.user_agent)?;
        optional(&mut object, "ip", &self.ip)?;
        optional(&mut object, "region", &self.region)?;
        optional(&mut object, "page", &self.page)?;
        optional(&mut object, "referrer", &self.referrer)?;
        optional(&mut object, "product_id", &self.product_id)?;
        optional(&mut object, "consent", &self.consent)?;
        optional(&mut object, "properties", &self.properties)?;
        object.end()
    }
}

fn optional<S: SerializeStruct, T: Serialize>(
    object: &mut S,
    key: &'static str,
    value: &Option<T>,
) -> Result<(), S::Error> {
    match value {
        Some(value) => object.serialize_field(key, value),
        None => object.skip_field(key),
    }
}

/// An ad spend record: `amount` EUR spent on (`channel`, `campaign`) in the minute containing
/// `ts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthSpend {
    pub ts: Timestamp,
    pub channel: Channel,
    pub campaign: &'static str,
    /// EUR, two decimals.
    pub amount: f64,
    pub currency: &'static str,
    /// The ad platform that reported it (`google_ads`, `meta`, ...).
    pub source: &'static str,
}

/// One line of synthetic traffic.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every record is an event; boxing it would add an allocation per record"
)]
pub enum SynthRecord {
    Event(SynthEvent),
    Spend(SynthSpend),
}

impl SynthRecord {
    /// The event time (for spend: the start of the minute it covers).
    pub fn ts_ms(&self) -> i64 {
        match self {
            SynthRecord::Event(event) => event.ts.epoch_ms,
            SynthRecord::Spend(spend) => spend.ts.epoch_ms,
        }
    }

    pub fn as_event(&self) -> Option<&SynthEvent> {
        match self {
            SynthRecord::Event(event) => Some(event),
            SynthRecord::Spend(_) => None,
        }
    }

    pub fn as_spend(&self) -> Option<&SynthSpend> {
        match self {
            SynthRecord::Spend(spend) => Some(spend),
            SynthRecord::Event(_) => None,
        }
    }
}

impl Serialize for SynthRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SynthRecord::Event(event) => event.serialize(serializer),
            SynthRecord::Spend(spend) => spend.serialize(serializer),
        }
    }
}

/// Appends `record` as one JSON line (terminated by `\n`) to `out`. Reuse `out` across records
/// (clear it, or let lines accumulate into a batch) to avoid allocating per record.
pub fn to_ndjson_line(record: &SynthRecord, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and none of our Serialize impls return errors: the only
    // failure serde_json could report is an I/O error from the writer.
    if let Err(error) = serde_json::to_writer(&mut *out, record) {
        unreachable!("serializing a synthetic record into memory failed: {error}");
    }
    out.push(b'\n');
}

/// Writes the low `4 * out.len()` bits of `value` as lowercase hex, most significant first.
fn put_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 15) as usize];
        value >>= 4;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample_event() -> SynthEvent {
        SynthEvent {
            udid: Udid {
                key: 0x3f9a_0c1e_77d2_b4a8,
                style: UdidStyle::Cookie,
            },
            event_type: EventType::Purchase,
            ts: Timestamp {
                epoch_ms: 1_712_326_985_123,
                format: TsFormat::Rfc3339Utc,
            },
            event_id: EventId(0xabc),
            value: Some(12_990.0 / 100.0),
            currency: Some("EUR"),
            order_id: Some(OrderId(123)),
            channel: Some(Channel::PaidSearch),
            campaign: Some("black_friday_2024"),
            utm_source: None,
            utm_medium: None,
            utm_campaign: Some("black_friday_2024"),
            gclid: None,
            fbclid: None,
            user_agent: None,
            ip: Some(IpAddr::from([79, 18, 120, 72])),
            region: None,
            page: Some("/checkout/grazie"),
            referrer: None,
            product_id: None,
            consent: Some(Consent::Purposes {
                analytics: true,
                marketing: false,
            }),
            properties: None,
            italian_field_names: false,
        }
    }

    fn line(record: &SynthRecord) -> String {
        let mut out = Vec::new();
        to_ndjson_line(record, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn event_serializes_to_the_contract_with_absent_fields_omitted() {
        let text = line(&SynthRecord::Event(sample_event()));
        assert_eq!(
            text,
            "{\"udid\":\"u-3f9a0c1e77d2b4a8\",\"type\":\"purchase\",\
             \"ts\":\"2024-04-05T14:23:05.123Z\",\"event_id\":\"ev-0000000000000abc\",\
             \"value\":129.9,\"currency\":\"EUR\",\"order_id\":\"ORD-00000123\",\
             \"channel\":\"paid_search\",\"campaign\":\"black_friday_2024\",\
             \"utm_campaign\":\"black_friday_2024\",\"ip\":\"79.18.120.72\",\
             \"page\":\"/checkout/grazie\",\
             \"consent\":{\"analytics\":true,\"marketing\":false}}\n"
        );
    }

    #[test]
    fn italian_field_names_and_type_aliases() {
        let mut event = sample_event();
        event.italian_field_names = true;
        event.ts.format = TsFormat::EpochMillis;
        let value: serde_json::Value =
            serde_json::from_str(&line(&SynthRecord::Event(event.clone()))).unwrap();
        assert_eq!(value["UDID"], "u-3f9a0c1e77d2b4a8");
        assert_eq!(value["tipo"], "acquisto");
        assert_eq!(value["tempo"], 1_712_326_985_123_i64);
        assert_eq!(value["valore"], 129.9);
        for english in ["udid", "type", "ts", "value"] {
            assert!(
                value.get(english).is_none(),
                "{english} must not appear with its alias"
            );
        }
        // Types without an Italian alias keep the English name under `tipo`.
        event.event_type = EventType::Checkout;
        let value: serde_json::Value =
            serde_json::from_str(&line(&SynthRecord::Event(event))).unwrap();
        assert_eq!(value["tipo"], "checkout");
    }

    #[test]
    fn spend_serializes_to_the_contract() {
        let spend = SynthSpend {
            ts: Timestamp {
                epoch_ms: 1_712_318_400_000,
                format: TsFormat::Rfc3339Utc,
            },
            channel: Channel::Social,
            campaign: "saldi_invernali",
            amount: 125.0 / 100.0,
            currency: "EUR",
            source: "meta",
        };
        assert_eq!(
            line(&SynthRecord::Spend(spend)),
            "{\"ts\":\"2024-04-05T12:00:00.000Z\",\"channel\":\"social\",\
             \"campaign\":\"saldi_invernali\",\"amount\":1.25,\"currency\":\"EUR\",\
             \"source\":\"meta\"}\n"
        );
    }

    #[test]
    fn udid_styles_render_and_embed_the_whole_key() {
        let key = 0x0123_4567_89ab_cdef;
        let cookie = Udid {
            key,
            style: UdidStyle::Cookie,
        }
        .to_string();
        assert_eq!(cookie, "u-0123456789abcdef");
        let uuid = Udid {
            key,
            style: UdidStyle::AppInstall,
        }
        .to_string();
        assert_eq!(uuid.len(), 36);
        let parts: Vec<&str> = uuid.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert_eq!(parts[0], "01234567");
        assert_eq!(parts[1], "89ab");
        assert!(parts[2].starts_with('4'), "version nibble");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "variant bits"
        );
        assert!(parts[4].starts_with("cdef"));
        assert_eq!(
            Udid {
                key: 42,
                style: UdidStyle::Crm
            }
            .to_string(),
            "CRM-000000042"
        );
    }

    #[test]
    fn click_ids_look_like_the_platforms_ones_and_are_stable() {
        let gclid = ClickId {
            kind: ClickIdKind::Gclid,
            bits: 9,
        }
        .to_string();
        assert!(gclid.starts_with("Cj0KCQjw"));
        assert_eq!(gclid.len(), 88);
        assert_eq!(
            gclid,
            ClickId {
                kind: ClickIdKind::Gclid,
                bits: 9
            }
            .to_string()
        );
        assert_ne!(
            gclid,
            ClickId {
                kind: ClickIdKind::Gclid,
                bits: 10
            }
            .to_string()
        );
        let fbclid = ClickId {
            kind: ClickIdKind::Fbclid,
            bits: 9,
        }
        .to_string();
        assert!(fbclid.starts_with("IwAR"));
        assert_eq!(fbclid.len(), 60);
        assert!(
            fbclid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn consent_flag_form_and_offset_timestamps() {
        let mut event = sample_event();
        event.consent = Some(Consent::All(true));
        event.ts.format = TsFormat::Rfc3339Offset { minutes: 120 };
        let value: serde_json::Value =
            serde_json::from_str(&line(&SynthRecord::Event(event))).unwrap();
        assert_eq!(value["consent"], true);
        assert_eq!(value["ts"], "2024-04-05T16:23:05.123+02:00");
    }
}
