//! Notifications to a real Alertmanager (Debian's `prometheus-alertmanager`, started here on
//! a free loopback port, clustering off), through the outbox and its sender: the firing
//! alert shows in its `/api/v2/alerts` with our labels and annotations, and the resolved
//! notice resolves it there.
//!
//! Needs the binary (`scripts/test.sh` installs Debian's package, or set `ALERTMANAGER`);
//! without it the test fails and says so — it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vedetta::watch::destinations::{self, DestinationConfig};
use vedetta::watch::sender::{self, SenderConfig};
use vedetta_core::watch::notification::{AlertStatus, Notification};
use vedetta_store::outbox::Outbox;

struct Alertmanager {
    child: Child,
    base: String,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_alertmanager(dir: &std::path::Path) -> Alertmanager {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let binary = std::env::var("ALERTMANAGER").unwrap_or_else(|_| "prometheus-alertmanager".into());
    let version = Command::new(&binary).arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "cannot run `{binary}`: install Debian's prometheus-alertmanager (scripts/test.sh does) \
         or set ALERTMANAGER"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("am.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let child = Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // Without it, Alertmanager listens for cluster peers on 0.0.0.0:9094.
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let am = Alertmanager {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    let http = reqwest::Client::new();
    loop {
        let ready = http.get(format!("{}/-/ready", am.base)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "Alertmanager did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    am
}

async fn alerts(base: &str) -> Vec<serde_json::Value> {
    let body = reqwest::get(format!("{base}/api/v2/alerts"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

async fn wait_for(
    base: &str,
    what: &str,
    mut found: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let list = alerts(base).await;
        if found(&list) {
            return list;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fires_and_resolves_in_a_real_alertmanager() {
    let dir = tempfile::tempdir().unwrap();
    let am = start_alertmanager(dir.path()).await;
    let config: DestinationConfig = toml::from_str(&format!(
        "name = \"am\"\nkind = \"alertmanager\"\nurl = \"{}\"\nlang = \"it\"\n",
        am.base
    ))
    .unwrap();
    let destination = destinations::build(&config).unwrap();
    let outbox = Outbox::open(&dir.path().join("watch.redb")).unwrap();
    let (handle, _task) = sender::start(
        outbox.clone(),
        vec![Arc::clone(&destination)],
        SenderConfig::default(),
        std::future::pending(),
    );

    let now = sender::wall_ms();
    let mut firing = Notification::example();
    firing.id = "n-am-1".into();
    firing.destination = "am".into();
    firing.created_ms = now;
    firing.notices[0].started_ms = now - 60_000;
    outbox.enqueue(&firing, now).unwrap();
    handle.wake();

    let list = wait_for(&am.base, "the firing alert", |l| {
        l.iter().any(|a| a["labels"]["alertname"] == "cpa_high")
    })
    .await;
    let alert = list
        .iter()
        .find(|a| a["labels"]["alertname"] == "cpa_high")
        .unwrap();
    assert_eq!(alert["labels"]["severity"], "warning");
    assert_eq!(alert["labels"]["channel"], "paid_search");
    assert_eq!(alert["labels"]["campaign"], "brand");
    assert_eq!(alert["status"]["state"], "active");
    assert_eq!(
        alert["annotations"]["link"],
        "http://127.0.0.1:8080/?channel=paid_search&campaign=brand"
    );
    let description = alert["annotations"]["description"].as_str().unwrap();
    assert!(
        description.contains("cpa 23,40 €, soglia 20,00 €"),
        "{description}"
    );
    assert!(description.contains("ora di Roma"), "{description}");
    let ends: jiff::Timestamp = alert["endsAt"].as_str().unwrap().parse().unwrap();
    assert!(ends > jiff::Timestamp::from_millisecond(now + 3_600_000).unwrap());

    let resolved_at = sender::wall_ms() - 1_000;
    let mut resolved = firing.clone();
    resolved.id = "n-am-2".into();
    resolved.status = AlertStatus::Resolved;
    resolved.notices[0].status = AlertStatus::Resolved;
    resolved.notices[0].resolved_ms = Some(resolved_at);
    outbox.enqueue(&resolved, sender::wall_ms()).unwrap();
    handle.wake();

    // Resolved: Alertmanager's list (active, silenced, inhibited, unprocessed) drops an
    // alert whose endsAt has passed.
    wait_for(&am.base, "the alert resolved", |l| {
        !l.iter().any(|a| a["labels"]["alertname"] == "cpa_high")
    })
    .await;
    assert_eq!(outbox.stats().unwrap().depth, 0);
}
