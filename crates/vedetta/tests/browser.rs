//! The dashboard in a real browser: Debian's headless Chromium, driven by Playwright
//! (`tests/browser/dashboard.test.mjs`), against a real server fed with generated traffic.
//! The Node test checks that the tiles equal `/v1/kpis`, drills into a channel, sees a live
//! update arrive, and saves screenshots into `artifacts/`. Then `tests/browser/stream.test.mjs`
//! checks the live stream's deltas, applied by the page's own code, against whole answers.
//! A second server, with an alert rule, runs `tests/browser/alerts.test.mjs`: the banner of
//! firing alerts, its drill-down, the link form notifications carry, the alerts page and
//! silences made and deleted in it.
//!
//! Needs `node`, Chromium (`/usr/bin/chromium` or `CHROMIUM`) and `tests/browser/node_modules`
//! (`npm ci --prefix tests/browser`); `scripts/test.sh` provides all three. Without them the
//! test fails and says what is missing — it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use support::{Server, client, now_ms, post_ndjson, recent_traffic, wait_processed};
use vedetta_synth::SynthConfig;

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// One browser test at a time: two Chromiums and two servers at once on a small machine
/// would make the page tests' timing limits measure the machine.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// Chromium, node and the Node packages, or a failure that says what is missing.
fn browser_prerequisites(browser_tests: &Path) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium not found at {chromium}: install Debian's chromium (scripts/test.sh does) or set CHROMIUM"
    );
    assert!(
        browser_tests.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run `npm ci --prefix tests/browser` (scripts/test.sh does)"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is not installed"
    );
    chromium
}

/// Runs one Node test file against `server`; its output and whether it passed.
fn run_node_test(
    browser_tests: &Path,
    file: &str,
    server: &Server,
    artifacts: &Path,
    chromium: &str,
) -> std::process::Output {
    run_node_test_with(browser_tests, file, server, artifacts, chromium, &[])
}

/// [`run_node_test`] with more environment for the Node test.
fn run_node_test_with(
    browser_tests: &Path,
    file: &str,
    server: &Server,
    artifacts: &Path,
    chromium: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut command = Command::new("node");
    command
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg(browser_tests.join(file))
        .current_dir(browser_tests)
        .env("VEDETTA_URL", format!("http://{}", server.address))
        .env("ARTIFACTS_DIR", artifacts)
        .env("CHROMIUM", chromium);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run node --test")
}

fn assert_passed(file: &str, output: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{file}:\n{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "the browser test {file} failed (see above)"
    );
}

#[test]
fn the_dashboard_shows_the_api_numbers_drills_down_and_updates_live() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = repository_root();
    let browser_tests = root.join("tests/browser");
    let chromium = browser_prerequisites(&browser_tests);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_regions(dir.path());
    let http = client();

    // The last two hours of generated traffic, events and spend.
    let now = now_ms();
    let (events, costs) = recent_traffic(
        SynthConfig {
            seed: 4,
            start_ms: now - 2 * 3_600_000,
            sessions_per_minute: 120.0,
            users: 20_000,
            ..SynthConfig::default()
        },
        now,
    );
    post_ndjson(&http, &server, "/v1/events", &events);
    post_ndjson(&http, &server, "/v1/costs", &costs);
    wait_processed(&http, &server);

    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    // The page first; then the stream protocol, whose test posts events of its own (run
    // apart, so that they never land while the page test compares numbers).
    let mut outputs = Vec::new();
    for file in ["dashboard.test.mjs", "stream.test.mjs"] {
        let output = run_node_test(&browser_tests, file, &server, &artifacts, &chromium);
        outputs.push((file, output));
    }
    server.stop();
    for (file, output) in outputs {
        assert_passed(file, &output);
    }
}

/// The rule `alerts.test.mjs` makes fire (it posts the spend and the purchase itself).
const ALERT_RULES: &str = r#"
[[alerts.rules]]
name = "cpa_high"
expr = "cpa > 20"
resolve_expr = "cpa < 17"
over = "1m"
group_by = ["channel", "campaign"]
severity = "critical"
"#;

#[test]
fn the_dashboard_shows_firing_alerts_opens_their_drill_down_and_manages_silences() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = repository_root();
    let browser_tests = root.join("tests/browser");
    let chromium = browser_prerequisites(&browser_tests);

    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, ALERT_RULES).unwrap();
    let rules_path = rules.display().to_string();
    // No group wait: the alert is decided the moment the watermark passes the minute.
    let server = Server::start(
        &dir.path().join("data"),
        &[
            ("VEDETTA_ALERTS__RULES_FILE", rules_path.as_str()),
            ("VEDETTA_ALERTS__GROUP_WAIT", "0s"),
        ],
    );
    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let output = run_node_test(
        &browser_tests,
        "alerts.test.mjs",
        &server,
        &artifacts,
        &chromium,
    );
    server.stop();
    assert_passed("alerts.test.mjs", &output);
}

/// The triggers page (`tests/browser/triggers.test.mjs`, issue 12 "Visible"): a feed and a
/// tag trigger pushing to a seed webhook whose port is closed, so that what they queue waits
/// in the outbox; the test posts the purchases that make them fire, opens `/triggers` and
/// checks that each number shown equals `/v1/triggers`.
#[test]
fn the_triggers_page_shows_the_api_numbers_per_trigger_and_destination() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = repository_root();
    let browser_tests = root.join("tests/browser");
    let chromium = browser_prerequisites(&browser_tests);

    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[triggers]]
name = "feed"
kind = "conversion_feed"
notify = ["crm-down"]

[[triggers]]
name = "vip"
kind = "tag"
tag = "VIP"
on = "purchase_over"
min_value = 200
notify = ["crm-down"]

[[alerts.destinations]]
name = "crm-down"
kind = "webhook"
format = "seed"
interval = "1s"
url = "http://127.0.0.1:{closed}/push"
timeout_seconds = 1
"#
        ),
    )
    .unwrap();
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let output = run_node_test(
        &browser_tests,
        "triggers.test.mjs",
        &server,
        &artifacts,
        &chromium,
    );
    // /metrics has the same per-destination depth as the API (read after, retried while
    // the sender's retries are in flight; the depth does not move while the port is shut).
    let http = client();
    let mut seen = Vec::new();
    let agreed = (0..20).any(|_| {
        let api = support::get_json(&http, &server.url("/v1/triggers"));
        let text = http
            .get(server.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let line = |name: &str| {
            let prefix = format!("{name}{{destination=\"crm-down\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|v| v.parse::<f64>().unwrap())
        };
        let depth = api["destinations"][0]["depth"].as_f64();
        let age = line("vedetta_outbox_destination_oldest_age_seconds");
        seen.push((depth, line("vedetta_outbox_destination_depth"), age));
        let failures = text.lines().find_map(|l| {
            l.strip_prefix(
                "vedetta_trigger_delivery_failures_total{trigger=\"feed\",destination=\"crm-down\"} ",
            )
                .map(|v| v.parse::<f64>().unwrap())
        });
        let same = depth.is_some_and(|d| d >= 1.0)
            && failures.is_some_and(|f| f >= 1.0)
            && line("vedetta_outbox_destination_depth") == depth
            && age.is_some_and(|a| a > 0.0);
        if !same {
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        same
    });
    server.stop();
    assert_passed("triggers.test.mjs", &output);
    assert!(
        agreed,
        "(API depth, /metrics depth, /metrics age): {seen:?}"
    );
}

/// The tracker in a real browser (`tests/browser/tracker.test.mjs`): a shop page on another
/// origin loads `/v1/tracker.js` with a site key. Then what arrived is checked here: the
/// purchase counts under the landing page's campaign, the cookieless visitor's events are
/// marked as without consent, and the foreign origin's never arrived.
#[test]
fn the_tracker_sends_from_a_page_of_another_origin_with_and_without_consent() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = repository_root();
    let browser_tests = root.join("tests/browser");
    let chromium = browser_prerequisites(&browser_tests);

    let page_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        format!("[[sites]]\nkey = \"pub_test\"\norigins = [\"http://127.0.0.1:{page_port}\"]\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with_config_file(&data, &config, &[]);
    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let page_port_text = page_port.to_string();
    let output = run_node_test_with(
        &browser_tests,
        "tracker.test.mjs",
        &server,
        &artifacts,
        &chromium,
        &[("PAGE_PORT", &page_port_text), ("SITE_KEY", "pub_test")],
    );
    let http = client();
    wait_processed(&http, &server);
    let answer = support::get_json(
        &http,
        &server.url("/v1/kpis?granularity=1d&last=2d&group_by=channel,campaign"),
    );
    server.stop();
    assert_passed("tracker.test.mjs", &output);

    let rows = answer["rows"].as_array().unwrap();
    let total = |campaign: &str, field: &str| -> f64 {
        rows.iter()
            .filter(|r| r["campaign"] == campaign)
            .map(|r| match &r[field] {
                // `events` counts by type.
                serde_json::Value::Object(by_type) => {
                    by_type.values().map(|n| n.as_f64().unwrap()).sum()
                }
                value => value.as_f64().unwrap(),
            })
            .sum()
    };
    let channels = |campaign: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r["campaign"] == campaign)
            .map(|r| r["channel"].as_str().unwrap().to_string())
            .collect()
    };
    // Landing view, SPA view and purchase: all under the landing's paid-search campaign.
    assert_eq!(total("tracker_brand", "events"), 3.0, "{answer}");
    assert_eq!(total("tracker_brand", "conversions"), 1.0, "{answer}");
    assert_eq!(total("tracker_brand", "revenue"), 89.5, "{answer}");
    assert_eq!(channels("tracker_brand"), ["paid_search"], "{answer}");
    assert_eq!(total("tracker_cookieless", "events"), 1.0, "{answer}");
    assert_eq!(channels("tracker_cookieless"), ["email"], "{answer}");
    assert_eq!(total("tracker_forbidden", "events"), 0.0, "{answer}");

    // The log: one id for the consenting visitor, consent recorded; the cookieless one
    // marked as refused.
    let dump = Command::new(support::BIN)
        .args(["log", "dump", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(dump.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 4, "{events:?}");
    let landing = events
        .iter()
        .find(|e| e["utm_campaign"] == "tracker_brand")
        .unwrap();
    let consenting: Vec<_> = events
        .iter()
        .filter(|e| e["user"] == landing["user"])
        .collect();
    assert_eq!(consenting.len(), 3, "{events:?}");
    assert!(consenting.iter().all(|e| e["consent"]["analytics"] == true));
    let purchase = consenting.iter().find(|e| e["type"] == "purchase").unwrap();
    assert_eq!(purchase["value"], 89.5);
    assert!(
        purchase["page"]
            .as_str()
            .unwrap()
            .ends_with("/shop/product/42")
    );
    let cookieless = events
        .iter()
        .find(|e| e["utm_campaign"] == "tracker_cookieless")
        .unwrap();
    assert_eq!(cookieless["consent"]["analytics"], false);
    assert_eq!(cookieless["consent"]["marketing"], false);
    assert_ne!(cookieless["user"], landing["user"]);
}

/// `serve --demo` after its history loaded (issue 11): the 30-day view has data on at least
/// 28 days, a believable overall CPA, regions for nearly every session and no CPA for
/// organic search (`tests/browser/demo.test.mjs`). A twentieth of the history's sessions
/// (`DEMO_HISTORY_SCALE`; spend follows clicks) keeps it short; no live traffic.
#[test]
fn the_demo_shows_a_believable_month() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = repository_root();
    let browser_tests = root.join("tests/browser");
    let chromium = browser_prerequisites(&browser_tests);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_args(
        &dir.path().join("data"),
        &["--demo", "--rate", "0"],
        &[("DEMO_HISTORY_SCALE", "0.05")],
    );
    let http = client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        let status = support::get_json(&http, &server.url("/v1/status"));
        assert_ne!(status["demo"]["phase"], "failed", "{}", status["demo"]);
        if status["demo"]["phase"] == "live" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo's history did not load: {}",
            status["demo"]
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    wait_processed(&http, &server);

    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let output = run_node_test(
        &browser_tests,
        "demo.test.mjs",
        &server,
        &artifacts,
        &chromium,
    );
    server.stop();
    assert_passed("demo.test.mjs", &output);
}
