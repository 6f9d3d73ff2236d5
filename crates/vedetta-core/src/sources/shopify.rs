//! Shopify order webhooks → purchase events; refund webhooks → refund events.
//!
//! `orders/create` and `orders/paid` both become a `purchase` with the order's id as
//! `order_id`: the pipeline's order deduplication (docs/semantics.md, "One order, one
//! conversion") counts the pair once, and also a tracker purchase of the same order. The
//! webhook's id (`X-Shopify-Webhook-Id`) becomes the `event_id`, so a redelivered webhook
//! is a duplicate too.
//!
//! What each field becomes:
//! - `total_price` (a decimal string, `"89.50"`) → `value`, checked to be a plain decimal
//!   and passed on as written (no float formatting in between); `currency` → `currency`;
//! - `processed_at`, else `created_at` (RFC 3339 with offset) → `ts`;
//! - the tracker's id in `note_attributes` (`vedetta_id`, written by the shop's theme from
//!   `localStorage`) → `udid`, so the order joins the web session that brought it; else the
//!   customer's id; else the order's (a guest without a customer record);
//! - `buyer_accepts_marketing` (or `customer.email_marketing_consent.state ==
//!   "subscribed"`, its successor in newer API versions) → `consent.marketing`;
//! - UTM parameters, `gclid` and `fbclid` in `landing_site` (the landing URL, often a path
//!   and query) and `referring_site` → the event's attribution fields, as a tracker's
//!   landing hit would carry them;
//! - the first line item's `product_id` → `product_id`.
//!
//! A `refunds/create` webhook becomes a `refund` ([`refund_event`]): `order_id` the
//! refund's `order_id` (the same numeric id an order's `id` gave its purchase), `value` the
//! exact decimal sum of its successful refund transactions, `event_id` the refund's own
//! `id` (stable across redeliveries and across `orders/updated` noise), `ts` its
//! `created_at`. A refund carries no customer: its `udid` is the one a guest order of the
//! same id gets (`shopify-order:<order id>`); the pipeline finds the order by `order_id`,
//! whichever user placed it.

use serde_json::{Map, Value, json};

/// The topics that become purchases.
pub const ORDER_TOPICS: &[&str] = &["orders/create", "orders/paid"];

/// The topic that becomes a refund.
pub const REFUND_TOPIC: &str = "refunds/create";

/// The tracker's id as the shop's theme stores it in the order's note attributes.
pub const TRACKER_ID_ATTRIBUTE: &str = "vedetta_id";

/// Why an order cannot be mapped (the message names the Shopify field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct MappingError {
    pub field: &'static str,
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> MappingError {
    MappingError {
        field,
        message: message.into(),
    }
}

/// The purchase event of an order webhook, in the event contract's wire form.
pub fn order_event(order: &Value, webhook_id: Option<&str>) -> Result<Value, MappingError> {
    let order = order
        .as_object()
        .ok_or_else(|| error("order", "the body must be a JSON object (an order)"))?;
    let order_id = match order.get("id") {
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        _ => return Err(error("id", "expected the order's id (a number)")),
    };
    let value = match order.get("total_price") {
        Some(Value::String(s)) if is_decimal(s.trim()) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(error(
                "total_price",
                format!(
                    "expected a decimal string like \"89.50\", got {}",
                    short(other)
                ),
            ));
        }
        None => return Err(error("total_price", "missing")),
    };
    // Passed on as a JSON number from the digits Shopify wrote (no float formatting in
    // between); intake's money checks then apply as to any event.
    let value: Value =
        serde_json::from_str(&value).map_err(|_| error("total_price", "not a number"))?;
    let ts = ["processed_at", "created_at"]
        .iter()
        .find_map(|k| order.get(*k).and_then(Value::as_str))
        .ok_or_else(|| error("created_at", "missing: the order's time is needed"))?;

    let tracker_id = order
        .get("note_attributes")
        .and_then(Value::as_array)
        .and_then(|attributes| {
            attributes.iter().find_map(|a| {
                (a.get("name").and_then(Value::as_str) == Some(TRACKER_ID_ATTRIBUTE))
                    .then(|| a.get("value").and_then(Value::as_str))
                    .flatten()
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
            })
        });
    let customer_id = order
        .get("customer")
        .and_then(|c| c.get("id"))
        .and_then(|id| match id {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            _ => None,
        });
    // A prefix that no tracker id has, so a customer id never collides with a browser's.
    let udid = match (tracker_id, customer_id) {
        (Some(id), _) => id.to_string(),
        (None, Some(customer)) => format!("shopify-customer:{customer}"),
        (None, None) => format!("shopify-order:{order_id}"),
    };
    let marketing = order
        .get("buyer_accepts_marketing")
        .and_then(Value::as_bool)
        .or_else(|| {
            order
                .get("customer")
                .and_then(|c| c.get("email_marketing_consent"))
                .and_then(|c| c.get("state"))
                .and_then(Value::as_str)
                .map(|state| state == "subscribed")
        });

    let mut event = Map::new();
    event.insert("udid".into(), json!(udid));
    event.insert("type".into(), json!("purchase"));
    event.insert("ts".into(), json!(ts));
    if let Some(id) = webhook_id.map(str::trim).filter(|id| !id.is_empty()) {
        event.insert("event_id".into(), json!(format!("shopify:{id}")));
    }
    event.insert("value".into(), value);
    if let Some(currency) = order.get("currency") {
        event.insert("currency".into(), currency.clone());
    }
    event.insert("order_id".into(), json!(order_id));
    if let Some(marketing) = marketing {
        event.insert("consent".into(), json!({ "marketing": marketing }));
    }
    if let Some(landing) = order.get("landing_site").and_then(Value::as_str) {
        for (name, value) in query_pairs(landing) {
            if matches!(
                name.as_str(),
                "utm_source"
                    | "utm_medium"
                    | "utm_campaign"
                    | "utm_content"
                    | "utm_term"
                    | "gclid"
                    | "fbclid"
            ) && !event.contains_key(&name)
                && !value.is_empty()
            {
                event.insert(name, json!(value));
            }
        }
        event.insert("page".into(), json!(landing));
    }
    if let Some(referrer) = order
        .get("referring_site")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty())
    {
        event.insert("referrer".into(), json!(referrer));
    }
    if let Some(product) = order
        .get("line_items")
        .and_then(Value::as_array)
        .and_then(|items| items.first())
        .and_then(|item| item.get("product_id"))
        .and_then(|id| match id {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
    {
        event.insert("product_id".into(), json!(product));
    }
    let mut properties = Map::new();
    properties.insert("source".into(), json!("shopify"));
    if let Some(name) = order.get("name").and_then(Value::as_str) {
        properties.insert("order_name".into(), json!(name));
    }
    event.insert("properties".into(), Value::Object(properties));
    Ok(Value::Object(event))
}

/// The refund event of a `refunds/create` webhook, in the event contract's wire form.
pub fn refund_event(refund: &Value) -> Result<Value, MappingError> {
    let refund = refund
        .as_object()
        .ok_or_else(|| error("refund", "the body must be a JSON object (a refund)"))?;
    let id = |field: &'static str| match refund.get(field) {
        Some(Value::Number(n)) if n.is_u64() => Ok(n.to_string()),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(error(field, "expected a numeric id")),
    };
    let refund_id = id("id")?;
    let order_id = id("order_id")?;
    let ts = refund
        .get("created_at")
        .and_then(Value::as_str)
        .ok_or_else(|| error("created_at", "missing: the refund's time is needed"))?;
    let transactions = match refund.get("transactions") {
        Some(Value::Array(list)) => list,
        None => {
            return Err(error(
                "transactions",
                "missing: the refunded money is needed",
            ));
        }
        Some(other) => {
            return Err(error(
                "transactions",
                format!("expected a list, got {}", short(other)),
            ));
        }
    };
    // The exact decimal sum of the successful refund transactions, in micro-units: a
    // refund of a line item and of shipping are two transactions.
    let mut micros: u128 = 0;
    let mut currency: Option<&str> = None;
    for transaction in transactions.iter().take(MAX_TRANSACTIONS) {
        let text = |k: &str| transaction.get(k).and_then(Value::as_str);
        if text("kind") != Some("refund") || text("status") != Some("success") {
            continue;
        }
        let amount = match transaction.get("amount") {
            Some(Value::String(s)) if is_decimal(s.trim()) => decimal_micros(s.trim()),
            Some(other) => {
                return Err(error(
                    "transactions.amount",
                    format!(
                        "expected a decimal string like \"89.50\", got {}",
                        short(other)
                    ),
                ));
            }
            None => return Err(error("transactions.amount", "missing")),
        };
        micros += amount;
        match (currency, text("currency")) {
            (Some(a), Some(b)) if a != b => {
                return Err(error(
                    "transactions.currency",
                    format!("one refund in two currencies ({a} and {b})"),
                ));
            }
            (None, found) => currency = found,
            _ => {}
        }
    }
    if transactions.len() > MAX_TRANSACTIONS {
        return Err(error(
            "transactions",
            format!("more than {MAX_TRANSACTIONS} transactions"),
        ));
    }
    // As digits, so intake reads the exact decimal (no float formatting in between).
    let value: Value =
        serde_json::from_str(&format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000))
            .map_err(|_| error("transactions.amount", "the sum is not a number"))?;

    let mut event = Map::new();
    event.insert("udid".into(), json!(format!("shopify-order:{order_id}")));
    event.insert("type".into(), json!("refund"));
    event.insert("ts".into(), json!(ts));
    event.insert(
        "event_id".into(),
        json!(format!("shopify-refund:{refund_id}")),
    );
    event.insert("value".into(), value);
    if let Some(currency) = currency {
        event.insert("currency".into(), json!(currency));
    }
    event.insert("order_id".into(), json!(order_id));
    event.insert(
        "properties".into(),
        json!({"source": "shopify", "refund_id": refund_id}),
    );
    Ok(Value::Object(event))
}

/// Most transactions read from one refund.
const MAX_TRANSACTIONS: usize = 100;

/// A plain decimal (see [`is_decimal`]) in micro-units: at most 15 whole digits and 6
/// decimals, so it fits in a `u128` with room for any sum of [`MAX_TRANSACTIONS`].
fn decimal_micros(text: &str) -> u128 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().fold(0u128, |n, b| n * 10 + u128::from(b - b'0'));
    let scale = 10u128.pow(6 - fraction.len() as u32);
    digits(whole) * 1_000_000 + digits(fraction) * scale
}

/// A plain decimal: digits, at most one point, digits (what Shopify's money strings are).
fn is_decimal(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    !whole.is_empty()
        && whole.len() <= 15
        && fraction.len() <= 6
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && !(text.contains('.') && fraction.is_empty())
}

/// The query parameters of a URL or a path, percent-decoded (`+` as space).
fn query_pairs(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((super::percent_decode(name)?, super::percent_decode(value)?))
        })
        .take(64)
        .collect()
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn order() -> Value {
        json!({
            "id": 5_123_456_789_u64,
            "name": "#1001",
            "total_price": "89.50",
            "currency": "EUR",
            "created_at": "2024-04-05T16:23:05+02:00",
            "processed_at": "2024-04-05T16:23:06+02:00",
            "buyer_accepts_marketing": true,
            "customer": {"id": 7_001_u64, "email": "anna@example.it"},
            "landing_site": "/collections/saldi?utm_source=google&utm_medium=cpc&utm_campaign=saldi%20primavera&gclid=abc",
            "referring_site": "https://www.google.com/",
            "note_attributes": [{"name": "gift", "value": "no"}],
            "line_items": [{"product_id": 42, "title": "Borsa"}],
        })
    }

    #[test]
    fn an_order_becomes_a_purchase_with_its_landing_attribution() {
        let event = order_event(&order(), Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")).unwrap();
        assert_eq!(event["type"], "purchase");
        assert_eq!(event["udid"], "shopify-customer:7001");
        assert_eq!(event["order_id"], "5123456789");
        assert_eq!(
            event["event_id"],
            "shopify:b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
        );
        assert_eq!(event["value"].as_f64(), Some(89.5));
        assert_eq!(event["currency"], "EUR");
        assert_eq!(event["ts"], "2024-04-05T16:23:06+02:00");
        assert_eq!(event["utm_campaign"], "saldi primavera");
        assert_eq!(event["gclid"], "abc");
        assert_eq!(event["referrer"], "https://www.google.com/");
        assert_eq!(event["consent"]["marketing"], true);
        assert_eq!(event["product_id"], "42");
        // Identity (the e-mail) does not travel.
        assert!(!event.to_string().contains("anna@"));
    }

    #[test]
    fn the_trackers_id_joins_the_order_to_the_web_session() {
        let mut o = order();
        o["note_attributes"] = json!([{"name": "vedetta_id", "value": "3f2a-web"}]);
        assert_eq!(order_event(&o, None).unwrap()["udid"], "3f2a-web");
        let mut guest = order();
        guest.as_object_mut().unwrap().remove("customer");
        assert_eq!(
            order_event(&guest, None).unwrap()["udid"],
            "shopify-order:5123456789"
        );
    }

    #[test]
    fn bad_orders_name_the_shopify_field() {
        for (field, value) in [
            ("total_price", json!("89,50")),
            ("total_price", json!("1e9")),
            ("total_price", json!("-3.00")),
            ("total_price", json!(["89.50"])),
            ("id", json!(null)),
        ] {
            let mut o = order();
            o[field] = value.clone();
            let err = order_event(&o, None).unwrap_err();
            assert_eq!(err.field, field, "{value}");
        }
        assert_eq!(order_event(&json!([1]), None).unwrap_err().field, "order");
    }

    fn refund() -> Value {
        json!({
            "id": 929_361_465_u64,
            "order_id": 5_123_456_789_u64,
            "created_at": "2024-04-20T10:00:00+02:00",
            "note": "reso",
            "user_id": 42,
            "refund_line_items": [{"quantity": 1, "line_item_id": 1}],
            "transactions": [
                {"id": 1, "kind": "refund", "status": "success", "amount": "39.90", "currency": "EUR"},
                {"id": 2, "kind": "refund", "status": "success", "amount": "4.9", "currency": "EUR"},
                {"id": 3, "kind": "refund", "status": "failure", "amount": "44.80", "currency": "EUR"},
                {"id": 4, "kind": "sale", "status": "success", "amount": "1.00", "currency": "EUR"},
            ],
        })
    }

    #[test]
    fn a_refund_becomes_a_refund_of_its_order_summed_exactly() {
        let event = refund_event(&refund()).unwrap();
        assert_eq!(event["type"], "refund");
        // The same order id as the order's purchase, and the udid a guest order gets.
        assert_eq!(
            event["order_id"],
            order_event(&order(), None).unwrap()["order_id"]
        );
        assert_eq!(event["udid"], "shopify-order:5123456789");
        assert_eq!(event["event_id"], "shopify-refund:929361465");
        // 39.90 + 4.9, the failed and non-refund transactions left out.
        assert_eq!(event["value"].to_string(), "44.8");
        assert_eq!(event["currency"], "EUR");
        assert_eq!(event["ts"], "2024-04-20T10:00:00+02:00");
        let mut tiny = refund();
        tiny["transactions"] = json!([
            {"kind": "refund", "status": "success", "amount": "0.1"},
            {"kind": "refund", "status": "success", "amount": "0.2"},
        ]);
        // Decimal, not binary: 0.1 + 0.2 is exactly 0.3.
        assert_eq!(refund_event(&tiny).unwrap()["value"].to_string(), "0.3");
        assert_eq!(
            decimal_micros("999999999999999.999999"),
            999_999_999_999_999_999_999
        );
    }

    #[test]
    fn bad_refunds_name_the_shopify_field() {
        let cases = [
            ("order_id", json!(null)),
            ("id", json!(-1)),
            ("created_at", json!(17)),
            ("transactions", json!("39.90")),
        ];
        for (field, value) in cases {
            let mut r = refund();
            r[field] = value.clone();
            assert_eq!(refund_event(&r).unwrap_err().field, field, "{value}");
        }
        let mut r = refund();
        r["transactions"][0]["amount"] = json!("39,90");
        assert_eq!(refund_event(&r).unwrap_err().field, "transactions.amount");
        r["transactions"][0]["amount"] = json!(39.9);
        assert_eq!(refund_event(&r).unwrap_err().field, "transactions.amount");
        let mut r = refund();
        r["transactions"][1]["currency"] = json!("USD");
        assert_eq!(refund_event(&r).unwrap_err().field, "transactions.currency");
        assert_eq!(refund_event(&json!([])).unwrap_err().field, "refund");
    }

    #[test]
    fn decimals_are_plain() {
        for good in ["0", "89.50", "1000000.000001"] {
            assert!(is_decimal(good), "{good}");
        }
        for bad in ["", ".5", "5.", "1.2.3", "+1", "1 000", "٣"] {
            assert!(!is_decimal(bad), "{bad}");
        }
    }
}
