//! End to end (issue 12, parts 2 and 3): events with identity and consent reach a real
//! server, a tag trigger fires, and the fake ActiveCampaign and Mailchimp receive exactly
//! the consenting users with their e-mail (Mailchimp by md5 of it) and the trigger's tag;
//! users without consent, or without a stored address, never arrive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fakes;
mod support;

use fakes::activecampaign::FakeActiveCampaign;
use fakes::mailchimp::{FakeMailchimp, md5_hex};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Server, client, get_json, now_ms, post_all_accepted};

#[test]
fn a_tag_trigger_reaches_the_crms_with_exactly_the_consenting_users() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ac = FakeActiveCampaign::new("ac-token", &["12"]);
    let mc = FakeMailchimp::new("0123abcd-us6", "list1");
    let ac_base = runtime.block_on(fakes::oauth2::serve(ac.router()));
    let mc_base = runtime.block_on(fakes::oauth2::serve(mc.router()));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[triggers]]
name = "vip"
kind = "tag"
tag = "VIP"
on = "purchase_over"
min_value = 200
notify = ["ac", "mc"]

[[alerts.destinations]]
name = "ac"
kind = "activecampaign"
base_url = "{ac_base}"
api_token = "ac-token"
fields = {{ product = "12" }}

[[alerts.destinations]]
name = "mc"
kind = "mailchimp"
list_id = "list1"
api_key = "0123abcd-us6"
base_url = "{mc_base}/3.0"
merge_fields = {{ product = "PRODUCT" }}
"#
        ),
    )
    .unwrap();
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let http = client();

    let start = (now_ms() - 10 * 60_000) / 60_000 * 60_000;
    let purchase = |udid: &str, extra: Value| {
        let mut e = json!({"udid": udid, "type": "purchase", "ts": start + 10_000,
            "value": 350, "product_id": "P-7", "channel": "social"});
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    post_all_accepted(
        &http,
        &server,
        "/v1/events",
        &[
            // Consent and an address: arrives.
            purchase(
                "u-anna",
                json!({"email": "anna@example.it", "consent": {"marketing": true}}),
            ),
            // An address, consent by an earlier consent event: arrives.
            json!({"udid": "u-dario", "type": "consent", "ts": start,
                   "consent": {"marketing": true}}),
            // His purchase says nothing of consent: it takes the stored "yes".
            purchase("u-dario", json!({"email": "Dario@Example.it"})),
            // An address without consent: never arrives.
            purchase("u-bruno", json!({"email": "bruno@example.it"})),
            // Consent, then withdrawn: never arrives.
            purchase(
                "u-elena",
                json!({"email": "elena@example.it", "consent": {"marketing": true}}),
            ),
            json!({"udid": "u-elena", "type": "consent", "ts": start + 20_000,
                   "consent": {"marketing": false}}),
            // Consent without an address: nothing to send.
            purchase("u-carla", json!({"consent": {"marketing": true}})),
            // Moves the watermark past the purchases' minute.
            json!({"udid": "u-late", "type": "page_view", "ts": now_ms() - 1_000}),
        ],
    );

    // Pushes go every 30 s; wait for both CRMs to hold the two users.
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let ac_done = ac.state.lock().unwrap().contacts.len() >= 2;
        let mc_done = mc.state.lock().unwrap().members.len() >= 2;
        if ac_done && mc_done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the CRMs did not receive the users: triggers {}, dead letters {}, AC log {:?}",
            get_json(&http, &server.url("/v1/triggers")),
            get_json(&http, &server.url("/v1/outbox/dead")),
            ac.state.lock().unwrap().log
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // One more push interval: nothing else may arrive.
    std::thread::sleep(Duration::from_secs(2));

    let ac_state = ac.state.lock().unwrap();
    let mut emails: Vec<&str> = ac_state.contacts.iter().map(|c| c.email.as_str()).collect();
    emails.sort_unstable();
    assert_eq!(emails, ["Dario@Example.it", "anna@example.it"]);
    for contact in &ac_state.contacts {
        let tags: Vec<&str> = contact
            .tags
            .iter()
            .map(|id| ac_state.tags[id].as_str())
            .collect();
        assert_eq!(tags, ["VIP"], "{}", contact.email);
        assert_eq!(contact.fields.get("12").map(String::as_str), Some("P-7"));
    }
    drop(ac_state);

    let mc_state = mc.state.lock().unwrap();
    let mut hashes: Vec<String> = mc_state.members.keys().map(|(_, h)| h.clone()).collect();
    hashes.sort_unstable();
    let mut expected = vec![md5_hex("anna@example.it"), md5_hex("Dario@Example.it")];
    expected.sort_unstable();
    assert_eq!(hashes, expected);
    for member in mc_state.members.values() {
        assert!(member.tags.contains("VIP"), "{}", member.email);
        assert_eq!(
            member.merge_fields.get("PRODUCT").map(String::as_str),
            Some("P-7")
        );
    }
    for absent in ["bruno@example.it", "elena@example.it"] {
        assert!(
            !mc_state.members.values().any(|m| m.email == absent),
            "{absent} reached Mailchimp"
        );
    }
    drop(mc_state);
    // Per CRM: Anna and Dario sent; Elena (withdrawn) and Carla (no address) withheld.
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for (outcome, count) in [("sent", 4), ("no_consent", 2), ("no_identity", 2)] {
        let sample = format!("vedetta_crm_push_users_total{{outcome=\"{outcome}\"}} {count}");
        assert!(metrics.contains(&sample), "{sample} missing:\n{metrics}");
    }
    // Attempts are counted apart from users: each CRM took at least one push.
    let delivered = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vedetta_crm_push_attempts_total{result=\"delivered\"} "))
        .map(|v| v.parse::<f64>().unwrap());
    assert!(delivered.is_some_and(|n| n >= 2.0), "{metrics}");
    for address in ["anna@example.it", "Dario@Example.it", "elena@example.it"] {
        assert!(!metrics.contains(address), "{address} in /metrics");
    }
    server.stop();
}
