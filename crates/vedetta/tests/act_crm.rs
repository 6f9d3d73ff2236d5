//! The CRM destinations against fakes that enforce ActiveCampaign's and Mailchimp's
//! contracts (`fakes::activecampaign`, `fakes::mailchimp`): auth headers, paths, md5
//! member ids, rate limits and 429, Mailchimp's 204 on a dropped tag, batch operations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fakes;

use fakes::activecampaign::FakeActiveCampaign;
use fakes::mailchimp::{FakeMailchimp, md5_hex};
use fakes::oauth2::serve;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vedetta::watch::crm::{CrmBatch, CrmDestination, CrmEvent, CrmUser};
use vedetta::watch::destination::DeliveryError;
use vedetta::watch::destinations::{self, DestinationConfig};

fn user(i: usize, email: Option<&str>, tags: &[&str]) -> CrmUser {
    CrmUser {
        pseudonym: format!("p{i:04}"),
        email: email.map(str::to_owned),
        crm_id: None,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        fields: BTreeMap::from([
            ("product".to_owned(), format!("sku-{i}")),
            ("offer".to_owned(), "10%".to_owned()),
            ("unmapped".to_owned(), "x".to_owned()),
        ]),
        events: vec![],
    }
}

fn batch(id: &str, users: Vec<CrmUser>) -> CrmBatch {
    CrmBatch {
        id: id.into(),
        trigger: "cpa_alto".into(),
        users,
    }
}

/// Builds the CRM destinations of a `[[alerts.destinations]]` TOML list.
fn crms(toml_text: &str) -> BTreeMap<String, Arc<dyn CrmDestination>> {
    #[derive(serde::Deserialize)]
    struct Alerts {
        destinations: Vec<DestinationConfig>,
    }
    let alerts: Alerts = toml::from_str(toml_text).unwrap();
    // They are ordinary destinations too (listed, metered; alert notifications refused).
    let all = destinations::build_all(&alerts.destinations, None).unwrap();
    assert!(
        all.iter()
            .all(|d| ["activecampaign", "mailchimp"].contains(&d.kind()))
    );
    destinations::build_crm_all(&alerts.destinations, None).unwrap()
}

fn ac_config(name: &str, base: &str, token: &str) -> String {
    format!(
        "[[destinations]]\nname = \"{name}\"\nkind = \"activecampaign\"\nbase_url = \"{base}\"\n\
         api_token = \"{token}\"\nfields = {{ product = \"12\", offer = \"13\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activecampaign_syncs_contacts_by_email_with_tags_and_fields() {
    let ac = FakeActiveCampaign::new("ac-token", &["12", "13"]);
    let base = serve(ac.router()).await;
    let dest = crms(&ac_config("ac", &base, "ac-token"))["ac"].clone();
    assert_eq!(dest.kind(), "activecampaign");
    let users = vec![
        user(1, Some("anna@example.it"), &["vip", "customer"]),
        user(2, None, &["vip"]), // no consent: never leaves
        user(3, Some("Bruno@Example.it"), &["customer"]),
    ];
    let b = batch("b1", users);
    dest.push(&b).await.unwrap();
    {
        let state = ac.state.lock().unwrap();
        assert_eq!(state.contacts.len(), 2);
        let anna = &state.contacts[0];
        assert_eq!(anna.email, "anna@example.it");
        // Mapped fields only; the unmapped one stays home.
        assert_eq!(
            anna.fields,
            BTreeMap::from([("12".into(), "sku-1".into()), ("13".into(), "10%".into())])
        );
        let names = |c: &fakes::activecampaign::Contact| -> BTreeSet<String> {
            c.tags.iter().map(|t| state.tags[t].clone()).collect()
        };
        assert_eq!(
            names(anna),
            BTreeSet::from(["vip".into(), "customer".into()])
        );
        assert_eq!(
            names(&state.contacts[1]),
            BTreeSet::from(["customer".into()])
        );
        assert_eq!(state.tags.len(), 2);
    }
    // The same batch again (a crash before "sent"): same contacts, same tags; tag ids are
    // cached, so no further lookups.
    let searches = ac.count("GET", "/api/3/tags");
    dest.push(&b).await.unwrap();
    assert_eq!(ac.state.lock().unwrap().contacts.len(), 2);
    assert_eq!(ac.count("GET", "/api/3/tags"), searches);
    // A tag whose name is a substring of another's is told apart (search is by substring).
    dest.push(&batch("b2", vec![user(4, Some("c@example.it"), &["vi"])]))
        .await
        .unwrap();
    assert_eq!(ac.state.lock().unwrap().tags.len(), 3);
    assert!(ac.statuses().iter().all(|s| *s == 200 || *s == 201));

    // A wrong token is refused (403), and the error carries neither token nor e-mail.
    let wrong = crms(&ac_config("ac-wrong", &base, "nope"))["ac-wrong"].clone();
    match wrong.push(&b).await {
        Err(DeliveryError::Refused { reason }) => {
            assert!(reason.contains("403"), "{reason}");
            assert!(reason.contains("p0001"), "names the pseudonym: {reason}");
            assert!(
                !reason.contains("anna@") && !reason.contains("nope"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activecampaign_stays_within_5_requests_per_second_per_account_and_honours_429() {
    let ac = FakeActiveCampaign::new("ac-token", &["12", "13"]);
    let base = serve(ac.router()).await;
    // Two destinations on one account share its limit.
    let dests = crms(&format!(
        "{}{}",
        ac_config("ac-a", &base, "ac-token"),
        ac_config("ac-b", &base, "ac-token")
    ));
    let users = |from: usize| -> Vec<CrmUser> {
        (from..from + 5)
            .map(|i| user(i, Some(&format!("u{i}@example.it")), &["vip"]))
            .collect()
    };
    let started = Instant::now();
    let (batch_a, batch_b) = (batch("a", users(0)), batch("b", users(100)));
    let (a, b) = tokio::join!(dests["ac-a"].push(&batch_a), dests["ac-b"].push(&batch_b));
    a.unwrap();
    b.unwrap();
    let requests = ac.statuses().len();
    // 10 syncs + 10 contact tags + a tag lookup or two.
    assert!(requests >= 21, "{requests}");
    assert!(
        ac.statuses().iter().all(|s| *s != 429),
        "never rate-limited"
    );
    assert!(ac.peak_per_second() <= 5, "peak {}", ac.peak_per_second());
    let full_seconds = (requests as u64 - 1) / 5;
    assert!(
        started.elapsed() >= Duration::from_secs(full_seconds),
        "paced: {requests} requests in {:?}",
        started.elapsed()
    );

    // A 429 with Retry-After: the push is a retry with the receiver's delay, and the account
    // is held that long for every destination on it.
    ac.state.lock().unwrap().force_429 = 1;
    let hit = Instant::now();
    match dests["ac-a"]
        .push(&batch("c", vec![user(7, Some("z@example.it"), &[])]))
        .await
    {
        Err(DeliveryError::Retry { after, reason }) => {
            assert_eq!(after, Some(Duration::from_secs(2)), "{reason}");
            assert!(!reason.contains("z@example.it"), "{reason}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    dests["ac-b"]
        .push(&batch("d", vec![user(8, Some("y@example.it"), &[])]))
        .await
        .unwrap();
    assert!(
        hit.elapsed() >= Duration::from_secs(2),
        "{:?}",
        hit.elapsed()
    );
}

/// Two destinations on one account with different `requests_per_second`: the account's
/// pacer took the rate of whichever was built first, so a destination set to 2 a second
/// (leaving room for another integration on the account) went at 5. The account now goes
/// at the lowest rate of the destinations on it, while they exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_goes_at_the_lowest_rate_of_its_destinations() {
    let ac = FakeActiveCampaign::new("ac-token", &["12", "13"]);
    let base = serve(ac.router()).await;
    let dests = crms(&format!(
        "{}{}requests_per_second = 2\n",
        ac_config("ac-fast", &base, "ac-token"),
        ac_config("ac-slow", &base, "ac-token"),
    ));
    let users: Vec<CrmUser> = (0..4)
        .map(|i| user(i, Some(&format!("s{i}@example.it")), &[]))
        .collect();
    let started = Instant::now();
    dests["ac-fast"].push(&batch("slow", users)).await.unwrap();
    assert_eq!(ac.statuses().len(), 4);
    assert!(ac.peak_per_second() <= 2, "peak {}", ac.peak_per_second());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// Tag names are case-insensitive in ActiveCampaign (its API docs: "Tags should be treated
/// as case-insensitive") and in a Mailchimp audience. A trigger's `vip` where the account
/// has `VIP`: ActiveCampaign's search found `VIP`, the exact comparison missed it, creating
/// `vip` was refused as a duplicate, and every push naming the tag was refused; Mailchimp
/// tagged the member `VIP` and the read-back, missing `vip`, refused the push. Now both
/// take the existing tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_differing_only_in_case_is_the_existing_tag() {
    let ac = FakeActiveCampaign::new("ac-token", &["12", "13"]);
    let base = serve(ac.router()).await;
    ac.state.lock().unwrap().tags.insert(7, "VIP".into());
    let dest = crms(&ac_config("ac-case", &base, "ac-token"))["ac-case"].clone();
    dest.push(&batch("c1", vec![user(1, Some("a@example.it"), &["vip"])]))
        .await
        .unwrap();
    {
        let state = ac.state.lock().unwrap();
        assert_eq!(state.tags.values().collect::<Vec<_>>(), ["VIP"]);
        assert_eq!(state.contacts[0].tags, BTreeSet::from([7]));
    }

    let mc = FakeMailchimp::new("0123abcd-us6", "list1");
    let base = serve(mc.router()).await;
    let dest = crms(&mc_config(&base, "0123abcd-us6", ""))["mc"].clone();
    dest.push(&batch("c2", vec![user(1, Some("a@example.it"), &["VIP"])]))
        .await
        .unwrap();
    dest.push(&batch("c3", vec![user(2, Some("b@example.it"), &["vip"])]))
        .await
        .unwrap();
    let state = mc.state.lock().unwrap();
    let b = &state.members[&("list1".to_owned(), md5_hex("b@example.it"))];
    assert_eq!(b.tags, BTreeSet::from(["VIP".to_owned()]));
}

fn mc_config(base: &str, key: &str, extra: &str) -> String {
    format!(
        "[[destinations]]\nname = \"mc\"\nkind = \"mailchimp\"\nlist_id = \"list1\"\n\
         api_key = \"{key}\"\nbase_url = \"{base}/3.0\"\n\
         merge_fields = {{ product = \"PRODUCT\", offer = \"OFFER\" }}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailchimp_upserts_members_by_md5_with_tags_read_back_and_events() {
    let mc = FakeMailchimp::new("0123abcd-us6", "list1");
    let base = serve(mc.router()).await;
    let dest = crms(&mc_config(&base, "0123abcd-us6", ""))["mc"].clone();
    let mut anna = user(1, Some("Anna.Rossi@Example.it"), &["vip", "customer"]);
    anna.events = vec![CrmEvent {
        name: "acquisto".into(),
        properties: BTreeMap::from([("valore".into(), "89.50".into())]),
        time_ms: 1_712_326_985_123,
    }];
    let b = batch("b1", vec![anna, user(2, None, &["vip"])]);
    dest.push(&b).await.unwrap();
    {
        let state = mc.state.lock().unwrap();
        assert_eq!(
            state.members.len(),
            1,
            "the user without consent never arrives"
        );
        let key = ("list1".to_owned(), md5_hex("anna.rossi@example.it"));
        let m = &state.members[&key];
        assert_eq!(
            m.status, "pending",
            "status_if_new defaults to double opt-in"
        );
        assert_eq!(
            m.merge_fields,
            BTreeMap::from([
                ("PRODUCT".into(), "sku-1".into()),
                ("OFFER".into(), "10%".into())
            ])
        );
        assert_eq!(m.tags, BTreeSet::from(["vip".into(), "customer".into()]));
        assert_eq!(m.events.len(), 1);
        assert_eq!(m.events[0].0, "acquisto");
        assert_eq!(m.events[0].1["vedetta_batch"], "b1");
        assert_eq!(m.events[0].1["valore"], "89.50");
    }
    // Tags are read back after every write.
    assert_eq!(mc.count("GET", "/tags"), 1);
    assert_eq!(mc.count("POST", "/tags"), 1);

    // A dropped tag: Mailchimp answers 204, the read-back catches it, the push is refused
    // naming the tag and the user's pseudonym, never the address.
    mc.state
        .lock()
        .unwrap()
        .dropped_tags
        .insert("bad tag".into());
    let dropped = batch("b2", vec![user(3, Some("carla@example.it"), &["bad tag"])]);
    match dest.push(&dropped).await {
        Err(DeliveryError::Refused { reason }) => {
            assert!(
                reason.contains("\"bad tag\"") && reason.contains("204"),
                "{reason}"
            );
            assert!(
                reason.contains("p0003") && !reason.contains("carla"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(mc.state.lock().unwrap().log.iter().any(|l| l.2 == 204));

    // Mailchimp echoes a refused address in its answer: scrubbed from the error.
    mc.state
        .lock()
        .unwrap()
        .fake_addresses
        .insert("Dario@Example.it".into());
    match dest
        .push(&batch("b3", vec![user(4, Some("Dario@Example.it"), &[])]))
        .await
    {
        Err(DeliveryError::Refused { reason }) => {
            assert!(reason.contains("<email> looks fake"), "{reason}");
            assert!(!reason.to_lowercase().contains("dario"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A wrong key is refused (401); the key is in no error.
    let wrong = crms(&mc_config(&base, "ffff-us6", ""))["mc"].clone();
    match wrong.push(&b).await {
        Err(DeliveryError::Refused { reason }) => {
            assert!(reason.contains("401"), "{reason}");
            assert!(!reason.contains("ffff-us6"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_50_mailchimp_members_go_as_one_batch_operation() {
    let mc = FakeMailchimp::new("0123abcd-us6", "list1");
    let base = serve(mc.router()).await;
    let dest = crms(&mc_config(
        &base,
        "0123abcd-us6",
        "status_if_new = \"subscribed\"\n",
    ))["mc"]
        .clone();
    let users: Vec<CrmUser> = (0..60)
        .map(|i| user(i, Some(&format!("m{i}@example.it")), &["vip"]))
        .collect();
    dest.push(&batch("big", users)).await.unwrap();
    {
        let state = mc.state.lock().unwrap();
        assert_eq!(state.members.len(), 60);
        assert!(
            state
                .members
                .values()
                .all(|m| m.tags.contains("vip") && m.status == "subscribed")
        );
        assert_eq!(state.batches.len(), 1);
        assert_eq!(state.batch_operations, 120, "60 upserts and 60 tag writes");
        assert!(state.batches["batch1"].2 >= 2, "polled until finished");
    }
    assert_eq!(mc.count("PUT", ""), 0, "no member written one by one");
    assert_eq!(mc.count("GET", "/tags"), 60, "every tag read back");

    // 50 or fewer go one by one.
    let few: Vec<CrmUser> = (0..50)
        .map(|i| user(i, Some(&format!("f{i}@example.it")), &[]))
        .collect();
    dest.push(&batch("few", few)).await.unwrap();
    assert_eq!(mc.count("PUT", ""), 50);
    assert_eq!(mc.state.lock().unwrap().batches.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailchimp_over_oauth2_refreshes_after_a_401_and_needs_a_base_url() {
    let auth = fakes::oauth2::FakeAuth::new("vedetta", "s3cret", Some("rt-initial"));
    let auth_base = serve(auth.router()).await;
    let mc = FakeMailchimp::new("unused-us6", "list1");
    *mc.oauth2.lock().unwrap() = Some(auth.clone());
    let base = serve(mc.router()).await;
    let oauth2 = format!(
        "oauth2 = {{ token_url = \"{auth_base}/oauth/token\", client_id = \"vedetta\", client_secret = \"s3cret\", refresh_token = \"rt-initial\" }}\n"
    );
    let text = format!(
        "[[destinations]]\nname = \"mc\"\nkind = \"mailchimp\"\nlist_id = \"list1\"\nbase_url = \"{base}/3.0\"\n{oauth2}"
    );
    let dest = crms(&text)["mc"].clone();
    dest.push(&batch("o1", vec![user(1, Some("a@example.it"), &["vip"])]))
        .await
        .unwrap();
    auth.revoke_access();
    dest.push(&batch("o2", vec![user(2, Some("b@example.it"), &["vip"])]))
        .await
        .unwrap();
    assert_eq!(mc.state.lock().unwrap().members.len(), 2);
    assert_eq!(
        auth.state.lock().unwrap().issued,
        2,
        "one refresh after the 401"
    );
    assert!(mc.state.lock().unwrap().log.iter().any(|l| l.2 == 401));

    let no_base = format!(
        "[[destinations]]\nname = \"mc\"\nkind = \"mailchimp\"\nlist_id = \"list1\"\n{oauth2}"
    );
    #[derive(serde::Deserialize)]
    struct Alerts {
        destinations: Vec<DestinationConfig>,
    }
    let alerts: Alerts = toml::from_str(&no_base).unwrap();
    let Err(e) = destinations::build_all(&alerts.destinations, None) else {
        panic!("oauth2 without base_url must be refused");
    };
    assert!(format!("{e:#}").contains(".base_url"), "{e:#}");
}

#[test]
fn crm_kinds_refuse_alert_notifications_and_keep_secrets_out_of_debug() {
    let text = "[[destinations]]\nname = \"mc\"\nkind = \"mailchimp\"\nlist_id = \"l\"\napi_key = \"topsecret-us6\"\n\
                [[destinations]]\nname = \"ac\"\nkind = \"activecampaign\"\nbase_url = \"https://a.api-us1.com\"\napi_token = \"hushhush\"\n";
    #[derive(serde::Deserialize)]
    struct Alerts {
        destinations: Vec<DestinationConfig>,
    }
    let alerts: Alerts = toml::from_str(text).unwrap();
    let debug = format!("{:?}", alerts.destinations);
    assert!(
        !debug.contains("topsecret") && !debug.contains("hushhush"),
        "{debug}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let built = destinations::build_all(&alerts.destinations, None).unwrap();
    for d in built {
        let n = vedetta_core::watch::notification::Notification::example();
        match runtime.block_on(d.deliver(&n)) {
            Err(DeliveryError::Refused { reason }) => {
                assert!(reason.contains("trigger"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // An API token named by an environment variable that is not set: the key is named.
    let missing = "[[destinations]]\nname = \"ac\"\nkind = \"activecampaign\"\nbase_url = \"https://a.api-us1.com\"\napi_token_env = \"H4_TEST_SURELY_UNSET\"\n";
    let alerts: Alerts = toml::from_str(missing).unwrap();
    let Err(e) = destinations::build_all(&alerts.destinations, None) else {
        panic!("an unset api_token_env must be refused");
    };
    assert!(format!("{e:#}").contains(".api_token_env"), "{e:#}");
}

/// A real server with CRM destinations and an OAuth2 webhook: none of their secrets in its
/// log (at debug level) or in any answer.
#[test]
fn a_server_with_crm_destinations_shows_no_secret_in_logs_or_answers() {
    use std::io::{BufRead, BufReader};
    let secrets = [
        "ac-SECRET-token",
        "mc-SECRET-key-us6",
        "cs-SECRET",
        "rt-SECRET",
    ];
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        r#"
[[alerts.rules]]
name = "cpa_high"
expr = "cpa > 20"
over = "10m"
notify = ["hook"]

[[alerts.destinations]]
name = "ac"
kind = "activecampaign"
base_url = "https://acct.api-us1.com"
api_token = "ac-SECRET-token"

[[alerts.destinations]]
name = "mc"
kind = "mailchimp"
list_id = "abc"
api_key_env = "H4_TEST_MC_KEY"

[[alerts.destinations]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/push"
oauth2 = { token_url = "http://127.0.0.1:9/token", client_id = "vedetta", client_secret = "cs-SECRET", refresh_token = "rt-SECRET" }
"#,
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vedetta"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env(
            "VEDETTA_PRIVACY__PSEUDONYM_KEY",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        )
        .env("VEDETTA_LOG", "debug")
        .env("H4_TEST_MC_KEY", "mc-SECRET-key-us6")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start vedetta serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .inspect(|line| {
                if let Some(rest) = line.split("address=").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            })
            .collect::<Vec<_>>()
    });
    let address = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the server started listening");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::blocking::Client::new();
    let mut answers = String::new();
    for path in [
        "/v1/rules",
        "/v1/status",
        "/metrics",
        "/v1/outbox/dead",
        "/v1/openapi.json",
    ] {
        let response = http.get(format!("http://{address}{path}")).send().unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        answers.push_str(&response.text().unwrap());
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let log = reader.join().unwrap().join("\n");
    assert!(answers.contains("cpa_high"), "the rules were listed");
    assert!(
        log.contains("DEBUG") || log.contains("INFO"),
        "the log was read: {log}"
    );
    for secret in secrets {
        assert!(!answers.contains(secret), "{secret} in an answer");
        assert!(!log.contains(secret), "{secret} in the log");
    }
    // The generated encryption key is private and beside the pseudonym key.
    assert!(dir.path().join("data").join("encryption.key").exists());
}

/// A hostile `Retry-After` (u64::MAX seconds) on a 429: before the bound, adding it to
/// `Instant::now()` panicked inside the push (the sender's delivery task died with it and
/// the destination stayed busy for good), and a merely huge one held the whole account for
/// years. Now it is a retry whose delay is bounded, and the account is held that long only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_an_absurd_retry_after_is_a_bounded_retry_not_a_panic() {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let router = axum::Router::new().fallback(|| async {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "18446744073709551615".parse().unwrap());
        (StatusCode::TOO_MANY_REQUESTS, headers, "slow down").into_response()
    });
    let base = serve(router).await;
    let dest = crms(&ac_config("ac-absurd", &base, "t"))["ac-absurd"].clone();
    let pushed = tokio::spawn(async move {
        dest.push(&batch("x", vec![user(1, Some("a@example.it"), &[])]))
            .await
    })
    .await
    .expect("the push does not panic");
    match pushed {
        Err(DeliveryError::Retry { after, reason }) => {
            let after = after.expect("the receiver's delay");
            assert!(after <= Duration::from_secs(3_600), "{after:?}: {reason}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }
}

/// A receiver's error body is kept as an excerpt, and the batch's addresses are scrubbed
/// from it. Before the fix the excerpt was cut at a fixed length, so an address straddling
/// the cut survived as a fragment (`anna.rossi@exa…`) that the scrub, looking for whole
/// addresses, did not see: identity in the error, hence in logs, `/v1/triggers` and the
/// dead-letter list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_cut_by_the_error_excerpt_is_not_left_in_the_error() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    for pad in 150..200 {
        let body = format!(
            "{{\"errors\":[{{\"title\":\"{} anna.rossi@example.it is not valid\"}}]}}",
            "x".repeat(pad)
        );
        let router = axum::Router::new().fallback(move || async move {
            (StatusCode::UNPROCESSABLE_ENTITY, body).into_response()
        });
        let base = serve(router).await;
        let dest = crms(&ac_config("ac-echo", &base, "t"))["ac-echo"].clone();
        match dest
            .push(&batch(
                "x",
                vec![user(1, Some("Anna.Rossi@example.it"), &[])],
            ))
            .await
        {
            Err(DeliveryError::Refused { reason }) => {
                assert!(reason.contains("422"), "{reason}");
                assert!(
                    !reason.to_ascii_lowercase().contains("anna.r"),
                    "pad {pad}: {reason}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// A batch operation reported `finished` with an `errored_operations` that is not a whole
/// number (a string, or missing): it was read as 0, so a batch whose operations failed was
/// delivered, its users silently lost. Now the push is a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_mailchimp_batch_with_an_unreadable_error_count_is_a_retry() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    for status in [
        r#"{"id":"b1","status":"finished","errored_operations":"3","total_operations":4}"#,
        r#"{"id":"b1","status":"finished","total_operations":4}"#,
    ] {
        let router = axum::Router::new()
            .route(
                "/3.0/batches",
                axum::routing::post(|| async {
                    (StatusCode::OK, r#"{"id":"b1"}"#).into_response()
                }),
            )
            .route(
                "/3.0/batches/b1",
                axum::routing::get(move || async move { (StatusCode::OK, status).into_response() }),
            );
        let base = serve(router).await;
        let dest = crms(&mc_config(&base, "0123abcd-us6", "batch_threshold = 1\n"))["mc"].clone();
        let users = (0..2)
            .map(|i| user(i, Some(&format!("u{i}@example.it")), &[]))
            .collect();
        match dest.push(&batch("mb", users)).await {
            Err(DeliveryError::Retry { reason, .. }) => {
                assert!(reason.contains("b1"), "{reason}");
            }
            other => panic!("{status}: expected a retry, got {other:?}"),
        }
    }
}

/// A tag deleted in ActiveCampaign after its id was cached: linking it is refused (422),
/// and every later push naming it was refused and dead-lettered until a restart. Now a
/// refused link of a cached id looks the tag up afresh (re-creating it) once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_deleted_in_activecampaign_is_created_again_not_refused_for_good() {
    let ac = FakeActiveCampaign::new("ac-token", &["12", "13"]);
    let base = serve(ac.router()).await;
    let dest = crms(&ac_config("ac-stale", &base, "ac-token"))["ac-stale"].clone();
    dest.push(&batch("t1", vec![user(1, Some("a@example.it"), &["vip"])]))
        .await
        .unwrap();
    {
        // Someone deletes the tag in ActiveCampaign's UI.
        let mut state = ac.state.lock().unwrap();
        state.tags.clear();
        for c in &mut state.contacts {
            c.tags.clear();
        }
    }
    dest.push(&batch("t2", vec![user(2, Some("b@example.it"), &["vip"])]))
        .await
        .unwrap();
    let state = ac.state.lock().unwrap();
    assert_eq!(state.tags.values().collect::<Vec<_>>(), ["vip"]);
    let b = state
        .contacts
        .iter()
        .find(|c| c.email == "b@example.it")
        .unwrap();
    assert_eq!(b.tags.len(), 1);
}

/// One user the CRM refuses (Mailchimp: "looks fake or invalid") refused the whole push at
/// that user: the users after it were never sent, and the push went to the dead-letter
/// list with them. Now every other user is sent, and the refusal names the refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_user_does_not_keep_the_others_from_the_crm() {
    let mc = FakeMailchimp::new("0123abcd-us6", "list1");
    let base = serve(mc.router()).await;
    let dest = crms(&mc_config(&base, "0123abcd-us6", ""))["mc"].clone();
    mc.state
        .lock()
        .unwrap()
        .fake_addresses
        .insert("dario@example.it".into());
    let users = vec![
        user(1, Some("anna@example.it"), &[]),
        user(2, Some("dario@example.it"), &[]),
        user(3, Some("elena@example.it"), &[]),
    ];
    match dest.push(&batch("r1", users)).await {
        Err(DeliveryError::Refused { reason }) => {
            assert!(reason.contains("p0002"), "{reason}");
            assert!(!reason.contains("dario"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let state = mc.state.lock().unwrap();
    for email in ["anna@example.it", "elena@example.it"] {
        assert!(
            state
                .members
                .contains_key(&("list1".to_owned(), md5_hex(email))),
            "{email} was not sent"
        );
    }
}

/// ActiveCampaign's tag search matches substrings and answers one page (20 by default). With
/// more than a page of tags containing the name (`vip-2023`, `vip-2024`, …) the exact tag
/// was not on it: creating it was refused as a duplicate, the second search missed it too,
/// and every push naming the tag was refused. Now the search reads every page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_past_the_first_page_of_the_search_is_found() {
    let ac = FakeActiveCampaign::new("ac-token", &["12", "13"]);
    let base = serve(ac.router()).await;
    {
        // 130 tags containing "vip", the exact one created last (the highest id).
        let mut state = ac.state.lock().unwrap();
        for i in 0..130u64 {
            state.tags.insert(1_000_000 + i, format!("vip-{i:03}"));
        }
        state.tags.insert(2_000_000, "vip".into());
    }
    let dest = crms(&ac_config("ac-pages", &base, "ac-token"))["ac-pages"].clone();
    dest.push(&batch("p", vec![user(1, Some("a@example.it"), &["vip"])]))
        .await
        .unwrap();
    let state = ac.state.lock().unwrap();
    assert_eq!(state.tags.values().filter(|t| *t == "vip").count(), 1);
    let a = state
        .contacts
        .iter()
        .find(|c| c.email == "a@example.it")
        .unwrap();
    assert_eq!(
        a.tags
            .iter()
            .map(|t| state.tags[t].as_str())
            .collect::<Vec<_>>(),
        ["vip"]
    );
}

/// A member with many tags (1,000 names of 60 characters: about 100 KB of answer) made the
/// tag read-back fail: it asked for every tag at once (`count=1000`), the answer was cut at
/// 64 KiB, did not decode, and the push was retried for ever. Now the tags are read a page
/// at a time, until the written ones are all seen or the member's tags run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_many_tags_has_the_written_tag_confirmed_page_by_page() {
    let mc = FakeMailchimp::new("0123abcd-us6", "list1");
    let base = serve(mc.router()).await;
    let dest = crms(&mc_config(&base, "0123abcd-us6", ""))["mc"].clone();
    let email = "molti@example.it";
    dest.push(&batch("m0", vec![user(1, Some(email), &[])]))
        .await
        .unwrap();
    {
        let mut state = mc.state.lock().unwrap();
        let member = state
            .members
            .get_mut(&("list1".to_owned(), md5_hex(email)))
            .unwrap();
        for i in 0..1_000 {
            member
                .tags
                .insert(format!("campagna-{i:04}-{}", "x".repeat(46)));
        }
    }
    // `zz-vip` sorts after every other tag: the fake answers it on the last page.
    dest.push(&batch("m1", vec![user(1, Some(email), &["zz-vip"])]))
        .await
        .unwrap();
    let reads = mc.count("GET", "/tags");
    assert!(reads >= 2, "read a page at a time: {reads} reads");
    // A tag Mailchimp drops is still caught on a member this size.
    mc.state
        .lock()
        .unwrap()
        .dropped_tags
        .insert("zz-dropped".into());
    match dest
        .push(&batch("m2", vec![user(1, Some(email), &["zz-dropped"])]))
        .await
    {
        Err(DeliveryError::Refused { reason }) => {
            assert!(reason.contains("zz-dropped"), "{reason}")
        }
        other => panic!("expected a refusal naming the tag, got {other:?}"),
    }
}

/// A receiver (a proxy at `base_url`, an echoing endpoint) whose error repeats what it was
/// sent: the Mailchimp API key, whole or without its data-centre suffix, or the `Basic`
/// header that carries it. Only OAuth2 secrets were scrubbed from such errors, so the key
/// went into logs, `/v1/triggers` and the dead-letter list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_echoing_the_mailchimp_key_does_not_put_it_in_errors() {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    const KEY: &str = "0123456789abcdef0123456789abcdef-us6";
    const STEM: &str = "0123456789abcdef0123456789abcdef";
    for status in [StatusCode::UNAUTHORIZED, StatusCode::BAD_GATEWAY] {
        let router = axum::Router::new().fallback(move |headers: HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body =
                format!("{{\"detail\":\"key {KEY} (account {STEM}) refused; you sent {auth}\"}}");
            (status, body).into_response()
        });
        let base = serve(router).await;
        let dest = crms(&mc_config(&base, KEY, ""))["mc"].clone();
        let reason = match dest
            .push(&batch("k", vec![user(1, Some("a@example.it"), &[])]))
            .await
        {
            Err(DeliveryError::Refused { reason } | DeliveryError::Retry { reason, .. }) => reason,
            Ok(()) => panic!("{status}: expected an error"),
        };
        assert!(reason.contains(status.as_str()), "{reason}");
        assert!(reason.contains("refused; you sent Basic "), "{reason}");
        assert!(!reason.contains(STEM), "{status}: {reason}");
        assert!(!reason.contains("us6"), "{status}: {reason}");
        // The header's credentials (base64 of `user:key`) are scrubbed as well.
        let sent = reason.split("you sent Basic ").nth(1).unwrap_or("");
        assert!(sent.starts_with("<secret>"), "{status}: {reason}");
    }
}

/// A receiver (a proxy at `base_url`, an echoing endpoint) whose error repeats the
/// `Api-Token` header it was sent: the token went into the error, hence into logs,
/// `/v1/triggers` and the dead-letter list (the Mailchimp key had the same leak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_echoing_the_activecampaign_token_does_not_put_it_in_errors() {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    const TOKEN: &str = "0f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a6978";
    for status in [StatusCode::UNPROCESSABLE_ENTITY, StatusCode::BAD_GATEWAY] {
        let router = axum::Router::new().fallback(move |headers: HeaderMap| async move {
            let token = headers
                .get("api-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            (status, format!("{{\"message\":\"token {token} refused\"}}")).into_response()
        });
        let base = serve(router).await;
        let dest = crms(&ac_config("ac-echo", &base, TOKEN))["ac-echo"].clone();
        let reason = match dest
            .push(&batch("t", vec![user(1, Some("a@example.it"), &[])]))
            .await
        {
            Err(DeliveryError::Refused { reason } | DeliveryError::Retry { reason, .. }) => reason,
            Ok(()) => panic!("{status}: expected an error"),
        };
        assert!(
            reason.contains("token <secret> refused"),
            "{status}: {reason}"
        );
        assert!(!reason.contains(TOKEN), "{status}: {reason}");
    }
}
