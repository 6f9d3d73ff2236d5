//! What a trigger sends: a [`Push`], the contract between the trigger engine, the durable
//! outbox (inside a [`Notification`](crate::watch::notification::Notification)) and the
//! destinations that take pushes.
//!
//! A push is one request's worth: one trigger, one segment (or none), the users it selected
//! in one batching interval, and, for a segment trigger, the segment's signal. The webhook's
//! `format = "seed"` renders it as the issue's payload ([`Push::seed_json`]):
//!
//! ```json
//! {"events": [{"UDID": "it:7f3a9b2c", "tipo": "acquisto", "valore": 89.50,
//!              "tempo": "2024-04-05T14:23:05.123Z"}],
//!  "trigger": "cpa_alto", "segmento": "costi > 20€"}
//! ```
//!
//! `UDID` is the user's pseudonym (an identity-less destination never gets more), `tipo`
//! the Italian name of the event type when it has one, `valore` a JSON number (left out
//! when the event has no value), `tempo` RFC 3339 UTC with milliseconds. Beside these,
//! an event may carry `product_id` (the product to offer), `product_ids` and
//! `valore_carrello` (an abandoned cart) and `tag` (a tag trigger); a segment signal
//! request carries `"segnale": "attivo"` (the segment passed its threshold: block it) or
//! `"segnale": "rientrato"` (it recovered), with `cpa` and `soglia`.

use crate::time::EventTime;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// One selected user, as sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushEvent {
    /// The user's pseudonym, lower-case hex.
    pub user: String,
    /// The canonical English event type (`purchase`, `add_to_cart`, `page_view`).
    pub kind: String,
    pub value: Option<f64>,
    /// Event time of the event that selected the user (epoch ms).
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub product_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A segment trigger's state change. Staged outputs store it by its variant's index
/// (`act::stage::STAGED_OUTPUT_FORMAT`): a new variant goes last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentSignal {
    /// The segment's CPA passed the threshold: the receiver may block it.
    Firing,
    /// It came back under: unblock.
    Recovered,
}

/// A segment signal with its numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalNotice {
    pub signal: SegmentSignal,
    /// The CPA measured at the change (`None`: no longer measurable, e.g. no conversions).
    pub cpa: Option<f64>,
    pub threshold: f64,
    /// The minute end it was decided at (event time, epoch ms).
    pub at_ms: i64,
}

/// One request's worth of a trigger's output for one destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Push {
    pub trigger: String,
    /// `segment_cpa`, `abandoned_cart`, `tag`, `conversion_feed`.
    pub kind: String,
    /// What goes into `segmento`: the trigger's `segment_label`, else the group's values.
    pub segment: Option<String>,
    /// The segment's dimension values (empty for per-user triggers).
    #[serde(default)]
    pub group: Vec<(String, String)>,
    #[serde(default)]
    pub signal: Option<SignalNotice>,
    pub events: Vec<PushEvent>,
}

/// The Italian name of an event type (`EVENTS.md` aliases), else the English one.
pub fn tipo(kind: &str) -> &str {
    match kind {
        "page_view" => "visualizzazione",
        "add_to_cart" => "carrello",
        "registration" => "registrazione",
        "purchase" => "acquisto",
        other => other,
    }
}

/// A JSON number from an f64 (money is rounded to the cent, as a person reads it).
fn money(value: f64) -> Value {
    let cents = (value * 100.0).round() / 100.0;
    serde_json::Number::from_f64(cents)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

impl Push {
    /// The `format = "seed"` body.
    pub fn seed_json(&self) -> Value {
        let events: Vec<Value> = self
            .events
            .iter()
            .map(|e| {
                let mut object = Map::new();
                object.insert("UDID".into(), json!(e.user));
                object.insert("tipo".into(), json!(tipo(&e.kind)));
                if let Some(v) = e.value {
                    object.insert("valore".into(), money(v));
                }
                object.insert("tempo".into(), json!(EventTime(e.at_ms).to_rfc3339()));
                if let Some(p) = &e.product_id {
                    object.insert("product_id".into(), json!(p));
                }
                if !e.product_ids.is_empty() {
                    object.insert("product_ids".into(), json!(e.product_ids));
                }
                if let Some(v) = e.cart_value {
                    object.insert("valore_carrello".into(), money(v));
                }
                if let Some(t) = &e.tag {
                    object.insert("tag".into(), json!(t));
                }
                Value::Object(object)
            })
            .collect();
        let mut body = Map::new();
        body.insert("events".into(), Value::Array(events));
        body.insert("trigger".into(), json!(self.trigger));
        if let Some(segment) = &self.segment {
            body.insert("segmento".into(), json!(segment));
        }
        if let Some(signal) = &self.signal {
            body.insert(
                "segnale".into(),
                json!(match signal.signal {
                    SegmentSignal::Firing => "attivo",
                    SegmentSignal::Recovered => "rientrato",
                }),
            );
            body.insert("cpa".into(), signal.cpa.map(money).unwrap_or(Value::Null));
            body.insert("soglia".into(), money(signal.threshold));
        }
        Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_seed_payload_is_the_issue_s_payload() {
        let push = Push {
            trigger: "cpa_alto".into(),
            kind: "segment_cpa".into(),
            segment: Some("costi > 20€".into()),
            group: vec![],
            signal: None,
            events: vec![PushEvent {
                user: "it:7f3a9b2c".into(),
                kind: "purchase".into(),
                value: Some(89.5),
                at_ms: 1_712_326_985_123,
                product_id: None,
                product_ids: vec![],
                cart_value: None,
                tag: None,
            }],
        };
        let expected: Value = serde_json::from_str(
            r#"{"events": [{"UDID": "it:7f3a9b2c", "tipo": "acquisto", "valore": 89.50, "tempo": "2024-04-05T14:23:05.123Z"}],
                "trigger": "cpa_alto", "segmento": "costi > 20€"}"#,
        )
        .unwrap();
        assert_eq!(push.seed_json(), expected);
        // tempo keeps its milliseconds even when they are zero.
        let mut whole = push;
        whole.events[0].at_ms = 1_712_326_985_000;
        assert_eq!(
            whole.seed_json()["events"][0]["tempo"],
            "2024-04-05T14:23:05.000Z"
        );
    }

    #[test]
    fn a_signal_request_names_the_signal_and_the_numbers() {
        let push = Push {
            trigger: "cpa_alto".into(),
            kind: "segment_cpa".into(),
            segment: Some("costi > 20€".into()),
            group: vec![("channel".into(), "social".into())],
            signal: Some(SignalNotice {
                signal: SegmentSignal::Recovered,
                cpa: Some(12.345),
                threshold: 20.0,
                at_ms: 0,
            }),
            events: vec![],
        };
        let body = push.seed_json();
        assert_eq!(body["segnale"], "rientrato");
        assert_eq!(body["cpa"], 12.35);
        assert_eq!(body["soglia"], 20.0);
        assert_eq!(body["events"], json!([]));
    }
}
