//! Shopify webhooks against a real server: signatures computed independently (Python's
//! `hmac`), orders becoming one purchase each, redeliveries and `orders/paid` after
//! `orders/create` counted once, secret rotation, and bad input refused with nothing stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use support::{Server, client, get_json, now_ms, wait_processed};

const CONFIG_BOTH: &str = "[sources.shopify]\nsecrets = [\"shpss_current\", \"shpss_previous\"]\n";
const CONFIG_NEW_ONLY: &str = "[sources.shopify]\nsecrets = [\"shpss_current\"]\n";

/// The signature Shopify would send: base64 of HMAC-SHA-256, by Python's standard library
/// (not by the code under test).
fn python_hmac(secret: &str, body: &[u8]) -> String {
    support::python_hmac_sha256(secret, body, "base64")
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

fn order(id: u64, total: &str, at_ms: i64) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "name": format!("#{id}"),
        "total_price": total,
        "currency": "EUR",
        "created_at": rfc3339(at_ms),
        "buyer_accepts_marketing": false,
        "customer": {"id": 900 + id},
        "landing_site": "/saldi?utm_source=facebook&utm_medium=paid_social&utm_campaign=shopify_saldi",
        "referring_site": "https://l.facebook.com/",
        "line_items": [{"product_id": 42}],
    })
    .to_string()
    .into_bytes()
}

fn deliver(
    http: &reqwest::blocking::Client,
    server: &Server,
    topic: &str,
    webhook_id: &str,
    signature: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let response = http
        .post(server.url("/v1/sources/shopify"))
        .header("content-type", "application/json")
        .header("x-shopify-topic", topic)
        .header("x-shopify-webhook-id", webhook_id)
        .header("x-shopify-hmac-sha256", signature)
        .header("x-shopify-shop-domain", "bottega.myshopify.com")
        .body(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

fn campaign_totals(http: &reqwest::blocking::Client, server: &Server) -> (u64, u64, f64) {
    wait_processed(http, server);
    let answer = get_json(
        http,
        &server.url("/v1/kpis?granularity=1d&last=2d&group_by=campaign"),
    );
    let rows: Vec<_> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["campaign"] == "shopify_saldi")
        .collect();
    let sum = |f: &str| rows.iter().map(|r| r[f].as_f64().unwrap()).sum::<f64>();
    (
        sum("conversions") as u64,
        sum("duplicates") as u64,
        sum("revenue"),
    )
}

/// Sends a request head declaring `length` bytes of body and no body, and returns the
/// status of the answer.
fn declared_too_large(server: &Server, length: usize) -> u16 {
    use std::io::{BufRead, BufReader};
    let mut stream = std::net::TcpStream::connect(&server.address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /v1/sources/shopify HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         X-Shopify-Topic: orders/create\r\nX-Shopify-Hmac-Sha256: AAAA\r\n\
         Content-Length: {length}\r\n\r\n",
        server.address
    )
    .unwrap();
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).unwrap();
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn log_end(http: &reqwest::blocking::Client, server: &Server) -> u64 {
    get_json(http, &server.url("/v1/status"))["log_end_offset"]
        .as_u64()
        .unwrap()
}

#[test]
fn shopify_orders_are_verified_mapped_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vedetta.toml");
    std::fs::write(&config, CONFIG_BOTH).unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with_config_file(&data, &config, &[]);
    let http = client();
    let at = now_ms() - 60_000;

    // A wrong signature: 401, nothing stored.
    let body = order(1, "89.50", at);
    let forged = python_hmac("not_the_secret", &body);
    let (status, answer) = deliver(
        &http,
        &server,
        "orders/create",
        "w-0",
        &forged,
        body.clone(),
    );
    assert_eq!(status, 401, "{answer}");
    let (status, _) = deliver(&http, &server, "orders/create", "w-0", "", body.clone());
    assert_eq!(status, 401);
    // A body changed after signing does not verify either.
    let signature = python_hmac("shpss_current", &body);
    let tampered = order(1, "8.50", at);
    assert_eq!(
        deliver(&http, &server, "orders/create", "w-0", &signature, tampered).0,
        401
    );
    assert_eq!(log_end(&http, &server), 0);

    // orders/create, its redelivery, and orders/paid of the same order: one purchase.
    let (status, answer) = deliver(
        &http,
        &server,
        "orders/create",
        "w-1",
        &signature,
        body.clone(),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(
        deliver(&http, &server, "orders/create", "w-1", &signature, body).0,
        200
    );
    let paid = order(1, "89.50", at + 5_000);
    let paid_signature = python_hmac("shpss_current", &paid);
    assert_eq!(
        deliver(&http, &server, "orders/paid", "w-2", &paid_signature, paid).0,
        200
    );
    // The previous secret still verifies during the rotation.
    let second = order(2, "120.00", at + 10_000);
    let old_signature = python_hmac("shpss_previous", &second);
    assert_eq!(
        deliver(
            &http,
            &server,
            "orders/create",
            "w-3",
            &old_signature,
            second
        )
        .0,
        200
    );
    let (conversions, duplicates, revenue) = campaign_totals(&http, &server);
    assert_eq!((conversions, duplicates), (2, 2));
    assert_eq!(revenue, 209.5);

    // Other topics: 200 (Shopify must not retry), nothing stored, counted.
    let before = log_end(&http, &server);
    let customer = br#"{"id": 5, "email": "anna@example.it"}"#.to_vec();
    let customer_signature = python_hmac("shpss_current", &customer);
    let (status, answer) = deliver(
        &http,
        &server,
        "customers/create",
        "w-4",
        &customer_signature,
        customer,
    );
    assert_eq!(status, 200);
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("customers/create")
    );
    assert_eq!(log_end(&http, &server), before);

    // Bad bodies, correctly signed: each a clear 4xx, nothing stored.
    // A 3 MB body: refused on its declared length, before it is read. (Sent whole, the
    // server's early answer and close can race the client's write and surface as a broken
    // pipe instead of the 413; so the head goes alone over a raw socket.)
    assert_eq!(declared_too_large(&server, 3 << 20), 413);
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes();
    let deep_signature = python_hmac("shpss_current", &deep);
    let (status, answer) = deliver(
        &http,
        &server,
        "orders/create",
        "w-6",
        &deep_signature,
        deep,
    );
    assert_eq!(status, 400, "{answer}");
    let typed =
        serde_json::json!({"id": 3, "total_price": 12, "currency": "EUR", "created_at": true})
            .to_string()
            .into_bytes();
    let typed_signature = python_hmac("shpss_current", &typed);
    let (status, answer) = deliver(
        &http,
        &server,
        "orders/create",
        "w-7",
        &typed_signature,
        typed,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("created_at"), "{answer}");
    let priced = order(4, "89,50", at);
    let priced_signature = python_hmac("shpss_current", &priced);
    let (status, answer) = deliver(
        &http,
        &server,
        "orders/create",
        "w-8",
        &priced_signature,
        priced,
    );
    assert_eq!(status, 400);
    assert!(answer.to_string().contains("total_price"), "{answer}");
    assert_eq!(log_end(&http, &server), before);
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "vedetta_source_webhooks_total{source=\"shopify\",outcome=\"ignored_topic\"} 1",
        "vedetta_source_webhooks_total{source=\"shopify\",outcome=\"bad_signature\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    server.stop();

    // After the rotation: only the new secret verifies.
    std::fs::write(&config, CONFIG_NEW_ONLY).unwrap();
    let server = Server::start_with_config_file(&data, &config, &[]);
    let third = order(5, "10.00", at + 20_000);
    let old = python_hmac("shpss_previous", &third);
    assert_eq!(
        deliver(&http, &server, "orders/create", "w-9", &old, third.clone()).0,
        401
    );
    let new = python_hmac("shpss_current", &third);
    assert_eq!(
        deliver(&http, &server, "orders/create", "w-9", &new, third).0,
        200
    );
    let (conversions, _, revenue) = campaign_totals(&http, &server);
    assert_eq!(conversions, 3);
    assert_eq!(revenue, 219.5);
    server.stop();
}

fn refund(id: u64, order_id: u64, amounts: &[&str], at_ms: i64) -> Vec<u8> {
    let transactions: Vec<_> = amounts
        .iter()
        .enumerate()
        .map(|(i, amount)| {
            serde_json::json!({
                "id": id * 10 + i as u64,
                "order_id": order_id,
                "kind": "refund",
                "status": "success",
                "amount": amount,
                "currency": "EUR",
            })
        })
        .collect();
    serde_json::json!({
        "id": id,
        "order_id": order_id,
        "created_at": rfc3339(at_ms),
        "note": "reso",
        "refund_line_items": [],
        "transactions": transactions,
    })
    .to_string()
    .into_bytes()
}

/// Conversions, revenue, refunds and refunded of the Shopify campaign, today and
/// yesterday, as `/v1/kpis` answers them.
fn campaign_money(http: &reqwest::blocking::Client, server: &Server) -> (u64, f64, u64, f64) {
    wait_processed(http, server);
    let answer = get_json(
        http,
        &server.url("/v1/kpis?granularity=1d&last=2d&group_by=campaign"),
    );
    let rows: Vec<_> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["campaign"] == "shopify_saldi")
        .collect();
    let sum = |f: &str| rows.iter().map(|r| r[f].as_f64().unwrap()).sum::<f64>();
    (
        sum("conversions") as u64,
        sum("revenue"),
        sum("refunds") as u64,
        sum("refunded"),
    )
}

#[test]
fn shopify_refunds_lower_the_revenue_of_their_order_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vedetta.toml");
    std::fs::write(&config, CONFIG_BOTH).unwrap();
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let http = client();
    let at = now_ms() - 120_000;
    let mut webhook = 0;
    let mut send = |topic: &str, body: Vec<u8>| {
        webhook += 1;
        let signature = python_hmac("shpss_current", &body);
        let (status, answer) = deliver(
            &http,
            &server,
            topic,
            &format!("w-{webhook}"),
            &signature,
            body,
        );
        assert_eq!(status, 200, "{topic}: {answer}");
        answer
    };

    // An order followed by its refund: the revenue nets out exactly.
    send("orders/create", order(11, "89.50", at));
    let answer = send("refunds/create", refund(501, 11, &["89.50"], at + 30_000));
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(campaign_money(&http, &server), (1, 0.0, 1, 89.5));

    // Partial refunds sum up (one of two transactions); a redelivered refund (a new
    // webhook id, the same refund id) counts once.
    send("orders/create", order(12, "120.00", at + 1_000));
    send(
        "refunds/create",
        refund(502, 12, &["40.25", "5.00"], at + 31_000),
    );
    send("refunds/create", refund(503, 12, &["50.00"], at + 32_000));
    send("refunds/create", refund(503, 12, &["50.00"], at + 32_000));
    assert_eq!(campaign_money(&http, &server), (2, 24.75, 3, 184.75));

    // A refund over the order's value is clamped to it; the excess is counted apart.
    send("orders/create", order(13, "10.00", at + 2_000));
    send("refunds/create", refund(504, 13, &["15.00"], at + 33_000));
    assert_eq!(campaign_money(&http, &server), (3, 24.75, 4, 194.75));

    // A refund before its order (webhooks are not delivered in order): it waits, and the
    // order arrives already refunded.
    send("refunds/create", refund(505, 14, &["25.00"], at + 34_000));
    assert_eq!(campaign_money(&http, &server), (3, 24.75, 4, 194.75));
    send("orders/create", order(14, "100.00", at + 3_000));
    assert_eq!(campaign_money(&http, &server), (4, 99.75, 5, 219.75));

    // A refund without its order id: 400 naming the field, nothing stored.
    let before = log_end(&http, &server);
    let mut orphan: serde_json::Value =
        serde_json::from_slice(&refund(506, 15, &["1.00"], at)).unwrap();
    orphan.as_object_mut().unwrap().remove("order_id");
    let orphan = orphan.to_string().into_bytes();
    let signature = python_hmac("shpss_current", &orphan);
    let (status, answer) = deliver(&http, &server, "refunds/create", "w-x", &signature, orphan);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("order_id"), "{answer}");
    assert_eq!(log_end(&http, &server), before);

    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "vedetta_pipeline_refunds_total{outcome=\"matched\"} 5",
        "vedetta_pipeline_refunds_total{outcome=\"waiting\"} 0",
        "vedetta_pipeline_refund_excess_total 5",
        "vedetta_pipeline_duplicates_total{kind=\"exact\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    server.stop();
}
