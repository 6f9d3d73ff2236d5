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
    Command::new("node")
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg(browser_tests.join(file))
        .current_dir(browser_tests)
        .env("VEDETTA_URL", format!("http://{}", server.address))
        .env("ARTIFACTS_DIR", artifacts)
        .env("CHROMIUM", chromium)
        .output()
        .expect("run node --test")
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
