//! E-mail notifications through a real SMTP server: `aiosmtpd` from PyPI, started here with
//! a handler that writes each received message, parsed by Python's `email` package, as
//! JSON. Checks the subject, the numbers in it-IT format, both parts, the Message-ID,
//! authentication, and that a refused recipient (550) is a refusal, not a retry.
//!
//! Needs a Python with `aiosmtpd` 1.4.6: `scripts/test.sh` installs it into
//! `~/.cache/vedetta/aiosmtpd-1.4.6` (or set `AIOSMTPD_PYTHON`). Without it the test
//! fails and says so; it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vedetta::watch::destination::DeliveryError;
use vedetta::watch::destinations::{self, DestinationConfig};
use vedetta_core::watch::notification::{AlertStatus, Notification};

const HANDLER: &str = r#"
import email, email.policy, json, os, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

out_dir, port = sys.argv[1], int(sys.argv[2])

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"vedetta" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        parts = {}
        for part in msg.walk():
            if part.get_content_maintype() == "text":
                parts[part.get_content_type()] = part.get_content()
        record = {
            "subject": str(msg["subject"]),
            "message_id": str(msg["message-id"]),
            "from": str(msg["from"]),
            "to": envelope.rcpt_tos,
            "text": parts.get("text/plain", ""),
            "html": parts.get("text/html", ""),
        }
        name = os.path.join(out_dir, "%d.json" % time.time_ns())
        with open(name + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(name + ".tmp", name)
        return "250 Message accepted"

controller = Controller(Handler(), hostname="127.0.0.1", port=port,
                        authenticator=authenticator, auth_require_tls=False)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("AIOSMTPD_PYTHON") {
        return p.into();
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
    cache.join("vedetta/aiosmtpd-1.4.6/bin/python")
}

struct Smtp {
    child: Child,
    port: u16,
    inbox: PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_smtp(dir: &Path) -> Smtp {
    let python = python();
    let check = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .output();
    assert!(
        check.is_ok_and(|o| o.status.success()),
        "cannot import aiosmtpd with {}: run scripts/test.sh (it installs aiosmtpd 1.4.6 there) \
         or set AIOSMTPD_PYTHON",
        python.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let script = dir.join("smtpd.py");
    std::fs::write(&script, HANDLER).unwrap();
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(&inbox)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("aiosmtpd exited at start: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "aiosmtpd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Smtp { child, port, inbox }
}

fn received(inbox: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(inbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

fn config(port: u16, lang: &str, password: &str, to: &str) -> DestinationConfig {
    toml::from_str(&format!(
        r#"
        name = "mail-team"
        kind = "email"
        host = "127.0.0.1"
        port = {port}
        tls = "none"
        username = "vedetta"
        password = "{password}"
        from = "Vedetta <vedetta@example.com>"
        to = ["{to}"]
        lang = "{lang}"
        timeout_seconds = 10
        "#
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_smtp_server_receives_the_alert_in_italian_and_english() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = start_smtp(dir.path());

    let mut n = Notification::example();
    n.notices[0].value = Some(1234.56);
    n.notices[0].threshold = Some(1000.0);
    let it = destinations::build(&config(smtp.port, "it", "s3cret", "team@example.com")).unwrap();
    it.deliver(&n).await.unwrap();

    let mut resolved = Notification::example();
    resolved.id = "n-resolved-1".into();
    resolved.status = AlertStatus::Resolved;
    resolved.notices[0].status = AlertStatus::Resolved;
    resolved.notices[0].value = Some(17.5);
    let en = destinations::build(&config(smtp.port, "en", "s3cret", "team@example.com")).unwrap();
    en.deliver(&resolved).await.unwrap();

    let start = Instant::now();
    while received(&smtp.inbox).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the mails did not arrive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mails = received(&smtp.inbox);
    let it_mail = &mails[0];
    assert_eq!(
        it_mail["subject"],
        "[Vedetta] ATTIVO cpa_high: channel=paid_search, campaign=brand"
    );
    assert_eq!(it_mail["message_id"], "<n-0123456789abcdef@vedetta>");
    assert_eq!(it_mail["to"], serde_json::json!(["team@example.com"]));
    let text = it_mail["text"].as_str().unwrap();
    assert!(
        text.contains("cpa 1.234,56 €, soglia 1.000,00 € (cpa > 20)"),
        "{text}"
    );
    assert!(
        text.contains("finestra: 05/04/2024 14:00–14:10 ora di Roma (CEST)"),
        "{text}"
    );
    assert!(
        text.contains("http://127.0.0.1:8080/?channel=paid_search&campaign=brand"),
        "{text}"
    );
    let html = it_mail["html"].as_str().unwrap();
    assert!(
        html.contains("1.234,56 €") && html.contains("Apri il dettaglio"),
        "{html}"
    );

    let en_mail = &mails[1];
    assert_eq!(
        en_mail["subject"],
        "[Vedetta] RESOLVED cpa_high: channel=paid_search, campaign=brand"
    );
    assert!(
        en_mail["text"]
            .as_str()
            .unwrap()
            .contains("cpa €17.50, threshold €20.00")
    );

    // A wrong password (535) and a refused recipient (550) are refusals: the same message
    // would be refused again, so it goes to the dead-letter list for a person.
    let wrong = destinations::build(&config(smtp.port, "it", "wrong", "team@example.com")).unwrap();
    assert!(matches!(
        wrong.deliver(&n).await,
        Err(DeliveryError::Refused { .. })
    ));
    let nobody =
        destinations::build(&config(smtp.port, "it", "s3cret", "nobody@example.com")).unwrap();
    assert!(matches!(
        nobody.deliver(&n).await,
        Err(DeliveryError::Refused { reason }) if reason.contains("no such user")
    ));
    assert_eq!(received(&smtp.inbox).len(), 2);

    // A server that is gone is a retry.
    let port = smtp.port;
    drop(smtp);
    let gone = destinations::build(&config(port, "it", "s3cret", "team@example.com")).unwrap();
    assert!(matches!(
        gone.deliver(&n).await,
        Err(DeliveryError::Retry { .. })
    ));
}

/// Regression: an SMTP server that stops answering after `AUTH` held a delivery for
/// minutes (lettre's timeout does not cover that read); the destination bounds the whole
/// exchange by its own `timeout_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_server_silent_after_auth_is_bounded_by_the_timeout() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 silent ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.to_ascii_uppercase().starts_with("EHLO") {
                        write
                            .write_all(b"250-silent\r\n250 AUTH PLAIN LOGIN\r\n")
                            .await
                            .unwrap();
                    }
                    // Anything else, AUTH included, gets no answer at all.
                }
            });
        }
    });
    let mut c = config(port, "it", "s3cret", "team@example.com");
    if let DestinationConfig::Email(e) = &mut c {
        e.timeout_seconds = 1;
    }
    let silent = destinations::build(&c).unwrap();
    let start = Instant::now();
    let answer = silent.deliver(&Notification::example()).await;
    assert!(
        matches!(&answer, Err(DeliveryError::Retry { reason, .. }) if reason.contains("no answer")),
        "{answer:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}
