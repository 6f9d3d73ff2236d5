//! Mapped webhooks (`POST /v1/sources/{name}`) against a real server: bearer and HMAC
//! authentication (signatures by Python's `hmac`, not by the code under test), the documented
//! SAP example, a batch with bad rows keeping the good ones, wrong types naming the rule and
//! the pointer, and huge, deep or oversized bodies refused with nothing stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::process::Command;
use support::{Server, client, get_json, now_ms, wait_processed};

const TOKEN: &str = "erp-token-0123456789abcdef";
const BOOMI_SECRET: &str = "boomi-secret-0123456789";

fn config(example_mapping: &std::path::Path) -> String {
    format!(
        r#"
[sources.shopify]
secrets = ["shpss_current"]

[sources.boomi_sap]
auth = "hmac"
secrets = ["{BOOMI_SECRET}"]
hmac_header = "X-Boomi-Signature"
hmac_prefix = "sha256="
mapping_file = {path:?}

[sources.erp]
auth = "bearer"
secrets = ["{TOKEN}"]

[sources.erp.mapping]
items = "/rows"
max_rows = 50

[sources.erp.mapping.fields.udid]
pointer = "/customer"
[sources.erp.mapping.fields.type]
pointer = "/kind"
map = {{ ZPUR = "purchase" }}
[sources.erp.mapping.fields.ts]
pointer = "/at"
time = "sap"
[sources.erp.mapping.fields.order_id]
pointer = "/order"
convert = "string"
[sources.erp.mapping.fields.value]
pointer = "/NetValue"
convert = "number"
decimal_comma = true
[sources.erp.mapping.fields.currency]
constant = "EUR"
[sources.erp.mapping.fields.utm_campaign]
constant = "erp_orders"
[sources.erp.mapping.fields.utm_source]
constant = "erp"
"#,
        path = example_mapping.display().to_string()
    )
}

/// Hex HMAC-SHA-256 of the body by Python's standard library.
fn python_hmac_hex(secret: &str, body: &[u8]) -> String {
    support::python_hmac_sha256(secret, body, "hex")
}

fn post(
    http: &reqwest::blocking::Client,
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut request = http
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// The status line's code of a POST declaring a `Content-Length` of `length` bytes, sent by
/// hand with only the first KB of its body: the server must refuse it from the declared
/// length. (Sending a whole oversized body races the server's early answer and close
/// against the client's writes: the answer can be lost to the reset.)
fn post_declaring(server: &Server, path: &str, bearer: &str, length: usize) -> u16 {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(&server.address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        server.address
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(&[b' '; 1024]);
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"))
}

fn log_end(http: &reqwest::blocking::Client, server: &Server) -> u64 {
    get_json(http, &server.url("/v1/status"))["log_end_offset"]
        .as_u64()
        .unwrap()
}

fn sap_date(ms: i64) -> String {
    format!("/Date({ms}+0200)/")
}

fn row(order: u64, value: &str, at_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "customer": format!("c-{order}"),
        "kind": "ZPUR",
        "at": sap_date(at_ms),
        "order": order,
        "NetValue": value,
    })
}

fn campaign(http: &reqwest::blocking::Client, server: &Server, name: &str) -> (u64, f64) {
    wait_processed(http, server);
    let answer = get_json(
        http,
        &server.url("/v1/kpis?granularity=1d&last=2d&group_by=campaign"),
    );
    let rows: Vec<_> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["campaign"] == name)
        .collect();
    let conversions = rows
        .iter()
        .map(|r| r["conversions"].as_u64().unwrap())
        .sum();
    let revenue = rows.iter().map(|r| r["revenue"].as_f64().unwrap()).sum();
    (conversions, revenue)
}

#[test]
fn mapped_webhooks_authenticate_map_and_keep_the_good_rows() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("vedetta.toml");
    std::fs::write(
        &config_path,
        config(&examples.join("sap_sales_order.mapping.toml")),
    )
    .unwrap();
    let server = Server::start_with_config_file(&dir.path().join("data"), &config_path, &[]);
    let http = client();
    let at = now_ms() - 60_000;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];

    // Bearer: missing or wrong → 401, nothing stored.
    let body = serde_json::json!({"rows": [row(1, "10,00", at)]})
        .to_string()
        .into_bytes();
    let (status, answer) = post(&http, &server, "/v1/sources/erp", &[], body.clone());
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("Bearer"));
    let wrong = [("authorization", "Bearer erp-token-0123456789abcdeX")];
    assert_eq!(post(&http, &server, "/v1/sources/erp", &wrong, body).0, 401);
    assert_eq!(log_end(&http, &server), 0);

    // A batch with bad rows: the good ones are stored, each bad one named by row, rule and
    // pointer, whether the mapping (rows 1, 4) or intake (row 3, in the future) refused it.
    let batch = serde_json::json!({"rows": [
        row(1, "1.234,56", at),
        row(2, "abc", at),
        row(3, "10,00", at + 1_000),
        row(4, "5,00", now_ms() + 3_600_000),
        {"customer": "c-5", "kind": "ZXXX", "at": sap_date(at), "order": 5, "NetValue": "1,00"},
    ]})
    .to_string()
    .into_bytes();
    let (status, answer) = post(&http, &server, "/v1/sources/erp", &auth, batch);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"], 5);
    assert_eq!(answer["accepted"], 2, "{answer}");
    let rejected: Vec<(u64, String)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rejected.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 3, 4],
        "{answer}"
    );
    assert_eq!(
        rejected[0].1,
        "rows[1]: field value (pointer /NetValue): expected a number, got \"abc\" \
         (written \"1.234,56\" with decimal_comma)"
    );
    assert!(
        rejected[1].1.starts_with("rows[3]: field ts:"),
        "{}",
        rejected[1].1
    );
    assert!(
        rejected[2]
            .1
            .starts_with("rows[4]: field type (pointer /kind): \"ZXXX\" is not in the map"),
        "{}",
        rejected[2].1
    );
    let stored = log_end(&http, &server);
    assert_eq!(stored, 2);

    // Only bad rows: 400, nothing stored.
    let bad =
        serde_json::json!({"rows": [row(6, "12.5", at), row(7, true.to_string().as_str(), at)]})
            .to_string()
            .into_bytes();
    let (status, answer) = post(&http, &server, "/v1/sources/erp", &auth, bad);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["accepted"], 0);
    assert_eq!(answer["rejected_count"], 2);
    assert!(
        answer["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("field value (pointer /NetValue)")
    );

    // Bad bodies: each a clear 4xx, nothing stored.
    assert_eq!(
        post_declaring(&server, "/v1/sources/erp", &bearer, 3 << 20),
        413
    );
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes();
    let (status, answer) = post(&http, &server, "/v1/sources/erp", &auth, deep);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("not JSON"), "{answer}");
    let not_rows = br#"{"rows": {"customer": "c"}}"#.to_vec();
    let (status, answer) = post(&http, &server, "/v1/sources/erp", &auth, not_rows);
    assert_eq!(status, 400);
    assert!(
        answer.to_string().contains("items (pointer \\\"/rows\\\")"),
        "{answer}"
    );
    let many: Vec<_> = (0..51).map(|i| row(100 + i, "1,00", at)).collect();
    let many = serde_json::json!({ "rows": many }).to_string().into_bytes();
    let (status, answer) = post(&http, &server, "/v1/sources/erp", &auth, many);
    assert_eq!(status, 400);
    assert!(answer.to_string().contains("max_rows"), "{answer}");
    assert_eq!(log_end(&http, &server), stored);

    // HMAC, with the documented SAP example (times moved to now).
    let mut example: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(examples.join("sap_sales_order.json")).unwrap(),
    )
    .unwrap();
    for (i, order) in example["SalesOrders"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        order["CreationDateTime"] = sap_date(at + i as i64 * 1000).into();
    }
    let example = example.to_string().into_bytes();
    let signature = format!("sha256={}", python_hmac_hex(BOOMI_SECRET, &example));
    let forged = format!(
        "sha256={}",
        python_hmac_hex("another-secret-012345", &example)
    );
    let (status, answer) = post(
        &http,
        &server,
        "/v1/sources/boomi_sap",
        &[("x-boomi-signature", forged.as_str())],
        example.clone(),
    );
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("x-boomi-signature")
    );
    // The bearer token does not open an HMAC source.
    assert_eq!(
        post(
            &http,
            &server,
            "/v1/sources/boomi_sap",
            &auth,
            example.clone()
        )
        .0,
        401
    );
    let (status, answer) = post(
        &http,
        &server,
        "/v1/sources/boomi_sap",
        &[("x-boomi-signature", signature.as_str())],
        example,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");

    // An unknown source: 404 naming the configured ones; Shopify's fixed path still works.
    let (status, answer) = post(&http, &server, "/v1/sources/nope", &auth, b"{}".to_vec());
    assert_eq!(status, 404);
    assert!(answer.to_string().contains("boomi_sap, erp"), "{answer}");
    let (status, answer) = post(&http, &server, "/v1/sources/shopify", &[], b"{}".to_vec());
    assert_eq!(status, 401);
    assert!(
        answer.to_string().contains("X-Shopify-Hmac-Sha256"),
        "{answer}"
    );

    // The stored rows count: two purchases of the batch, 1234.56 + 10.00.
    let (conversions, revenue) = campaign(&http, &server, "erp_orders");
    assert_eq!(conversions, 2);
    assert!((revenue - 1244.56).abs() < 1e-9, "{revenue}");
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "vedetta_source_webhooks_total{source=\"erp\",outcome=\"bad_auth\"} 2",
        "vedetta_source_webhooks_total{source=\"erp\",outcome=\"stored\"} 1",
        "vedetta_source_webhooks_total{source=\"erp\",outcome=\"rejected_rows\"} 5",
        "vedetta_source_webhooks_total{source=\"boomi_sap\",outcome=\"stored\"} 1",
        "vedetta_source_webhooks_total{source=\"boomi_sap\",outcome=\"bad_auth\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    server.stop();
}

#[test]
fn a_bad_mapping_file_stops_the_start_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("bad.toml");
    std::fs::write(
        &mapping,
        "[fields.udid]\npointer = \"/u\"\n[fields.type]\nconstant = \"purchase\"\n\
         [fields.ts]\npointer = \"/t\"\ntime = \"compact\"\n",
    )
    .unwrap();
    let config_path = dir.path().join("vedetta.toml");
    std::fs::write(
        &config_path,
        format!(
            "[sources.erp]\nauth = \"bearer\"\nsecrets = [\"{TOKEN}\"]\nmapping_file = {:?}\n",
            mapping.display().to_string()
        ),
    )
    .unwrap();
    let output = Command::new(support::BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("VEDETTA_PRIVACY__PSEUDONYM_KEY", support::KEY)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sources.erp.mapping_file") && stderr.contains("fields.ts.zone"),
        "{stderr}"
    );
}

#[test]
fn sources_check_maps_a_sample_and_config_check_reads_the_mapping_file() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let mapping = examples.join("sap_sales_order.mapping.toml");
    let output = Command::new(support::BIN)
        .args(["sources", "check"])
        .arg(&mapping)
        .arg(examples.join("sap_sales_order.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["order_id"], "4500012345");

    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("bad.json");
    std::fs::write(
        &body,
        r#"{"header": {"TransactionCurrency": "EUR", "SalesOrganization": "IT01"}, "SalesOrders": [
            {"SalesOrder": 1, "SalesOrderType": "ZPUR", "SoldToParty": "c", "CreationDateTime": "/Date(0)/",
             "ChangedAt": "20240405142305", "NetValue": "abc"}]}"#,
    )
    .unwrap();
    let output = Command::new(support::BIN)
        .args(["sources", "check"])
        .arg(&mapping)
        .arg(&body)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rows[0]: field value (pointer /NetValue): expected a number"),
        "{stderr}"
    );

    // `config check` reads mapping files too.
    let bad_mapping = dir.path().join("bad.toml");
    std::fs::write(
        &bad_mapping,
        "[fields.udid]\npointer = \"u\"\n[fields.type]\nconstant = \"lead\"\n\
         [fields.ts]\npointer = \"/t\"\ntime = \"epoch_ms\"\n",
    )
    .unwrap();
    let config_path = dir.path().join("vedetta.toml");
    std::fs::write(
        &config_path,
        format!(
            "[sources.erp]\nauth = \"bearer\"\nsecrets = [\"{TOKEN}\"]\nmapping_file = {:?}\n",
            bad_mapping.display().to_string()
        ),
    )
    .unwrap();
    let output = Command::new(support::BIN)
        .args(["config", "check"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sources.erp.mapping_file") && stderr.contains("fields.udid.pointer"),
        "{stderr}"
    );
}
