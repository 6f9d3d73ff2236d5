//! Identity with consent (issue 12): `email` and `crm_id` are kept, sealed, only for users
//! with marketing consent; they never reach the event log, the server's log (at debug
//! level), `/v1/rejected` or `/metrics`. Against the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::time::Duration;
use support::{KEY, client, get_json, now_ms};
use vedetta::crypto::IdentityField;
use vedetta_core::privacy::PseudonymKey;

const ADDRESSES: [&str; 5] = [
    "anna.secret@example.it",
    "bruno.secret@example.it",
    "carla.secret@example.it",
    "dario.secret@example.it",
    "CRM-SECRET-1",
];

fn ts(offset_ms: i64) -> String {
    vedetta_core::time::EventTime(now_ms() - 60_000 + offset_ms).to_rfc3339()
}

#[test]
fn identity_travels_only_with_consent_and_never_into_logs_rejected_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(support::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("VEDETTA_PRIVACY__PSEUDONYM_KEY", KEY)
        .env("VEDETTA_LOG", "debug")
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
    let url = |path: &str| format!("http://{address}{path}");
    let http = client();
    let mut answers = String::new();
    let mut post = |body: String| -> serde_json::Value {
        let response = http
            .post(url("/v1/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let text = response.text().unwrap();
        answers.push_str(&text);
        serde_json::from_str(&text).unwrap()
    };

    let first = post(format!(
        r#"[
        {{"udid":"u-anna","type":"purchase","ts":"{t0}","event_id":"e1","value":40,
          "email":"anna.secret@example.it","crm_id":"CRM-SECRET-1","consent":{{"marketing":true}}}},
        {{"udid":"u-bruno","type":"page_view","ts":"{t0}","event_id":"e2",
          "email":"bruno.secret@example.it"}},
        {{"udid":"u-carla","type":"lead","ts":"ieri","email":"carla.secret@example.it"}},
        {{"udid":"u-dario","type":"consent","ts":"{t0}","consent":{{"marketing":true}}}},
        {{"udid":"u-dario","type":"add_to_cart","ts":"{t1}","event_id":"e3",
          "email":"dario.secret@example.it","product_id":"P-7"}}
        ]"#,
        t0 = ts(0),
        t1 = ts(1_000)
    ));
    assert_eq!(first["accepted"], 4, "{first}");
    assert_eq!(first["rejected"].as_array().unwrap().len(), 1, "{first}");
    // Three funnel events entered the log; the consent event did not.
    assert_eq!(first["end_offset"], 3, "{first}");

    // Anna withdraws consent: her stored identity goes.
    let second = post(format!(
        r#"{{"udid":"u-anna","type":"consent","ts":"{}","consent":{{"marketing":false}}}}"#,
        ts(2_000)
    ));
    assert_eq!(second["accepted"], 1, "{second}");

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        let status = get_json(&http, &url("/v1/status"));
        if status["log_end_offset"] == status["processed_offset"] {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not processed: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["log_end_offset"], 3, "{status}");
    let rejected = get_json(&http, &url("/v1/rejected"));
    let rejected_text = rejected.to_string();
    assert!(rejected_text.contains("<redacted>"), "{rejected_text}");
    let metrics = http.get(url("/metrics")).send().unwrap().text().unwrap();
    for (outcome, count) in [("stored", 2), ("dropped_no_consent", 1), ("deleted", 1)] {
        let sample = format!("vedetta_identities_total{{outcome=\"{outcome}\"}} {count}");
        assert!(metrics.contains(&sample), "{sample} missing:\n{metrics}");
    }
    answers.push_str(&rejected_text);
    answers.push_str(&metrics);
    answers.push_str(&status.to_string());

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let log = reader.join().unwrap().join("\n");
    assert!(
        log.contains("DEBUG") && log.contains("identity claims applied"),
        "the debug log was read: {log}"
    );

    for secret in ADDRESSES {
        assert!(!answers.contains(secret), "{secret} in an answer");
        assert!(!log.contains(secret), "{secret} in the server log");
    }
    // Nothing in the data directory holds an identity in clear: not the event log, not
    // the quarantine, not the identity store.
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap();
        for secret in ADDRESSES {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in clear in {}",
                entry.display()
            );
        }
    }

    // What is stored: Dario's identity (consent given by a consent event), sealed to him;
    // Anna's decision "no" and nothing else; Bruno and Carla not at all.
    let store = vedetta_store::IdentityStore::open(&data.join("identity.redb")).unwrap();
    let crypto = vedetta::crypto::load(None, &[], &data).unwrap();
    let key = PseudonymKey::from_hex(1, KEY).unwrap();
    let pseudonym = |udid: &str| key.pseudonym(udid);
    let dario = store.get(&pseudonym("u-dario").0).unwrap().expect("dario");
    assert!(dario.marketing);
    let email = crypto
        .open_identity(
            IdentityField::Email,
            &pseudonym("u-dario").to_hex(),
            dario.email.as_deref().unwrap(),
        )
        .unwrap();
    assert_eq!(email, "dario.secret@example.it");
    assert!(
        crypto
            .open_identity(
                IdentityField::Email,
                &pseudonym("u-anna").to_hex(),
                dario.email.as_deref().unwrap(),
            )
            .is_err(),
        "a sealed address opens only for its user"
    );
    let anna = store.get(&pseudonym("u-anna").0).unwrap().expect("anna");
    assert!(!anna.marketing);
    assert_eq!((anna.email, anna.crm_id), (None, None));
    assert_eq!(store.get(&pseudonym("u-bruno").0).unwrap(), None);
    assert_eq!(store.get(&pseudonym("u-carla").0).unwrap(), None);
    assert_eq!(store.entries(10).unwrap().len(), 2);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A tmpfs mounted for the test (the tests run as root; a failed mount fails the test),
/// unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("cannot run mount");
        assert!(
            output.status.success(),
            "this test needs to mount a tmpfs (run as root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs(at.to_path_buf())
    }

    /// Fills it to the last byte.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("ballast");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        while let Ok(1) = file.write(&[0]) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The identity store on a disk of its own, full: the request is refused with a 503 that
/// says a resend is safe, and none of its events is logged; once space is back the resend
/// is stored, events and identity, once.
#[test]
fn an_identity_store_that_cannot_write_refuses_the_request_and_the_resend_is_safe() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("identity-disk"), "4m");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(disk.0.join("identity.redb"), data.join("identity.redb")).unwrap();
    let server = support::Server::start(&data, &[]);
    let http = client();
    let ballast = disk.fill();
    let body = format!(
        r#"{{"udid":"u-full","type":"purchase","ts":"{}","event_id":"full-1","value":5,
            "email":"full.secret@example.it","consent":{{"marketing":true}}}}"#,
        ts(0)
    );
    let post = || {
        let response = http
            .post(server.url("/v1/events"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").is_some();
        (status, retry_after, response.text().unwrap())
    };
    let (status, retry_after, text) = post();
    assert_eq!(status, 503, "{text}");
    assert!(retry_after, "a 503 says when to come back");
    assert!(text.contains("resending it is safe"), "{text}");
    assert!(!text.contains("full.secret"), "{text}");
    let status = get_json(&http, &server.url("/v1/status"));
    assert_eq!(status["log_end_offset"], 0, "nothing was logged: {status}");

    std::fs::remove_file(ballast).unwrap();
    let (status, _, text) = post();
    assert_eq!(status, 200, "{text}");
    let status = get_json(&http, &server.url("/v1/status"));
    assert_eq!(status["log_end_offset"], 1, "{status}");
    server.stop();

    let store = vedetta_store::IdentityStore::open(&data.join("identity.redb")).unwrap();
    let crypto = vedetta::crypto::load(None, &[], &data).unwrap();
    let user = PseudonymKey::from_hex(1, KEY).unwrap().pseudonym("u-full");
    let stored = store
        .get(&user.0)
        .unwrap()
        .expect("stored after the resend");
    let email = crypto
        .open_identity(
            IdentityField::Email,
            &user.to_hex(),
            stored.email.as_deref().unwrap(),
        )
        .unwrap();
    assert_eq!(email, "full.secret@example.it");
}
