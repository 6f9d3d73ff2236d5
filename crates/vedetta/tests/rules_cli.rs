//! `vedetta rules check` names the rule and the key of a mistake; `vedetta rules backtest`
//! replays stored history through rules and reports what would have fired, sending nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use support::{BIN, KEY, Server, client, now_ms, wait_processed};

const CONFIG: &str = r#"
[[alerts.destinations]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/x"
"#;

const RULES: &str = r#"
[[alerts.rules]]
name = "cpa_high"
expr = "cpa > 20"
over = "1m"
group_by = ["channel"]
notify = ["hook"]
"#;

fn vedetta(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("VEDETTA_PRIVACY__PSEUDONYM_KEY", KEY)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn check_names_mistakes_and_backtest_reports_what_would_have_fired() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vedetta.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let config_arg = config.to_str().unwrap();
    let rules_arg = rules.to_str().unwrap();

    let (ok, out) = vedetta(
        &["rules", "check", rules_arg, "--config", config_arg],
        dir.path(),
    );
    assert!(ok, "{out}");
    assert!(out.contains("ok (1 rules"), "{out}");
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, RULES.replace("over = \"1m\"", "over = \"1x\"")).unwrap();
    let (ok, out) = vedetta(
        &[
            "rules",
            "check",
            broken.to_str().unwrap(),
            "--config",
            config_arg,
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(out.contains("rule \"cpa_high\": over:"), "{out}");
    std::fs::write(
        &broken,
        RULES.replace("notify = [\"hook\"]", "notify = [\"slack\"]"),
    )
    .unwrap();
    let (ok, out) = vedetta(
        &[
            "rules",
            "check",
            broken.to_str().unwrap(),
            "--config",
            config_arg,
        ],
        dir.path(),
    );
    assert!(
        !ok && out.contains("no destination is named \"slack\""),
        "{out}"
    );

    // History: one minute where social's CPA is 30.
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let client = client();
    let minute = (now_ms() / 60_000 - 30) * 60_000;
    let post = |path: &str, body: serde_json::Value| {
        let response = client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().unwrap()
        );
    };
    post(
        "/v1/costs",
        serde_json::json!({"ts": minute + 1_000, "channel": "social", "campaign": "saldi", "amount": 30.0}),
    );
    post(
        "/v1/events",
        serde_json::json!([
            {"udid": "anna", "type": "page_view", "ts": minute + 2_000, "channel": "social", "campaign": "saldi"},
            {"udid": "anna", "type": "purchase", "ts": minute + 3_000, "value": 50.0}
        ]),
    );
    wait_processed(&client, &server);
    server.stop();

    let from = vedetta_core::time::EventTime(minute - 10 * 60_000).to_rfc3339();
    let to = vedetta_core::time::EventTime(minute + 10 * 60_000).to_rfc3339();
    let (ok, out) = vedetta(
        &[
            "rules",
            "backtest",
            "--from",
            &from,
            "--to",
            &to,
            "--rules",
            rules_arg,
            "--config",
            config_arg,
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
    );
    assert!(ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["rule"], "cpa_high", "{out}");
    assert_eq!(report[0]["group"]["channel"], "social");
    assert_eq!(report[0]["fired"], 1);
    assert_eq!(report[0]["resolved"], 1, "the next minute has no data");
    assert_eq!(
        report[0]["first"],
        vedetta_core::time::EventTime(minute + 60_000).to_rfc3339()
    );
    assert_eq!(report.as_array().unwrap().len(), 1);
}
