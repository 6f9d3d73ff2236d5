//! The rules file (`alerts.rules_file`) of a running server: reloaded when it changes, a
//! file that does not check keeps the rules in force and says why (naming the rule and the
//! key) at `GET /v1/rules`, and SIGHUP reloads it when its modification time says nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};
use support::{Server, client, get_json};

const RULE_A: &str = r#"
[[alerts.rules]]
name = "rule_a"
expr = "conversions > 100"
over = "5m"
notify = ["hook"]
"#;

const RULE_B: &str = r#"
[[alerts.rules]]
name = "rule_b"
expr = "cpa > 20"
over = "10m"
group_by = ["channel"]
notify = ["hook"]
"#;

/// Writes the rules file as editors do (a new file renamed over the old), and gives it a
/// modification time of its own: two writes within the file system's time granularity
/// would otherwise look like one.
fn write_rules(path: &Path, text: &str, mtime_seconds: u64) {
    let fresh = path.with_extension("tmp");
    std::fs::write(&fresh, text).unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_seconds);
    std::fs::File::options()
        .write(true)
        .open(&fresh)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

fn rule_names(rules: &Value) -> Vec<String> {
    rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `GET /v1/rules` until `done` holds (at most 5 s: the server polls every 100 ms).
fn wait_rules(
    http: &reqwest::blocking::Client,
    server: &Server,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rules = get_json(http, &server.url("/v1/rules"));
        if done(&rules) {
            return rules;
        }
        assert!(Instant::now() < deadline, "{what}: not within 5 s: {rules}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_rules_file_reloads_on_change_keeps_the_old_rules_on_error_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.toml");
    write_rules(&rules_path, RULE_A, 1_000_000);
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[alerts]
rules_file = "{}"

[[alerts.destinations]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/never-called-in-this-test"
"#,
            rules_path.display()
        ),
    )
    .unwrap();
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let http = client();

    let rules = get_json(&http, &server.url("/v1/rules"));
    assert_eq!(rule_names(&rules), ["rule_a"], "{rules}");
    assert_eq!(rules["rules"][0]["expr"], "conversions > 100");
    assert_eq!(rules["rules_file"], rules_path.display().to_string());
    assert_eq!(rules["reload_error"], Value::Null);

    // A change: B replaces A.
    write_rules(&rules_path, RULE_B, 1_000_010);
    let rules = wait_rules(&http, &server, "rule_b in force", |r| {
        rule_names(r) == ["rule_b"]
    });
    assert_eq!(rules["rules"][0]["expr"], "cpa > 20");
    assert_eq!(
        rules["rules"][0]["group_by"],
        serde_json::json!(["channel"])
    );
    assert_eq!(rules["reload_error"], Value::Null);
    let loaded_at = rules["loaded_at"].clone();

    // Files that do not check: B stays in force, and the error names the rule and the key.
    for (n, (broken, key)) in [
        (
            RULE_B.replace("rule_b", "rule_c") + "severty = \"critical\"\n",
            "severty",
        ),
        (
            RULE_B
                .replace("rule_b", "rule_c")
                .replace("over = \"10m\"", "over = \"10x\""),
            "over",
        ),
        (
            RULE_B
                .replace("rule_b", "rule_c")
                .replace("cpa > 20", "cpaa > 20"),
            "cpaa",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        write_rules(&rules_path, &broken, 1_000_020 + n as u64);
        let rules = wait_rules(&http, &server, "the reload error", |r| {
            r["reload_error"].as_str().is_some_and(|e| e.contains(key))
        });
        let error = rules["reload_error"].as_str().unwrap();
        assert!(
            error.contains("rule_c"),
            "the error names the key ({key}) but not the rule: {error}"
        );
        assert_eq!(
            rule_names(&rules),
            ["rule_b"],
            "the old rules stay: {rules}"
        );
        assert_eq!(rules["loaded_at"], loaded_at);
    }

    // Fixed, but with the broken file's modification time: only SIGHUP notices.
    write_rules(&rules_path, &RULE_B.replace("rule_b", "rule_c"), 1_000_022);
    std::thread::sleep(Duration::from_millis(500));
    let rules = get_json(&http, &server.url("/v1/rules"));
    assert_eq!(rule_names(&rules), ["rule_b"], "{rules}");
    assert!(rules["reload_error"].is_string(), "{rules}");
    let hup = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let rules = wait_rules(&http, &server, "rule_c after SIGHUP", |r| {
        rule_names(r) == ["rule_c"]
    });
    assert_eq!(rules["reload_error"], Value::Null, "{rules}");
    assert_ne!(rules["loaded_at"], loaded_at);
    server.stop();
}

/// A rule removed from the rules file while its alert fires: the receivers heard it fire
/// and never heard it end (the dispatcher dropped the rule's groups with what they held).
/// Now the destination gets it resolved, saying the rule was removed.
#[test]
fn a_rule_removed_while_firing_sends_its_alert_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.toml");
    let firing_rule = r#"
[[alerts.rules]]
name = "sales"
expr = "conversions > 0"
over = "1m"
group_by = ["channel"]
notify = ["inbox"]
"#;
    write_rules(
        &rules_path,
        &(RULE_A.replace("hook", "inbox") + firing_rule),
        1_000_000,
    );
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[alerts]
rules_file = "{}"
group_wait = "0s"
group_interval = "0s"

[[alerts.destinations]]
name = "inbox"
kind = "inbox"
"#,
            rules_path.display()
        ),
    )
    .unwrap();
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let http = client();
    // A purchase on social in one minute, then an event 65 s later: the watermark passes
    // the minute's end, and the rule fires for social.
    let minute = (support::now_ms() / 60_000 - 5) * 60_000;
    let events = [
        serde_json::json!({"udid": "u1", "type": "page_view", "ts": minute + 1_000, "channel": "social"}),
        serde_json::json!({"udid": "u1", "type": "purchase", "ts": minute + 2_000, "value": 50.0, "order_id": "o1"}),
        serde_json::json!({"udid": "u2", "type": "page_view", "ts": minute + 65_000, "channel": "email"}),
    ];
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let response = http
        .post(server.url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let notices = |http: &reqwest::blocking::Client| -> Vec<(String, String)> {
        let inbox = get_json(http, &server.url("/v1/inbox?limit=100"));
        let mut out = Vec::new();
        for entry in inbox["inbox"].as_array().unwrap().iter().rev() {
            for n in entry["notification"]["notices"].as_array().unwrap() {
                out.push((
                    n["status"].as_str().unwrap().to_owned(),
                    n["summary"].as_str().unwrap().to_owned(),
                ));
            }
        }
        out
    };
    let wait_for = |what: &str, count: usize| -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = notices(&http);
            if seen.len() >= count {
                return seen;
            }
            assert!(Instant::now() < deadline, "{what}: {seen:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let fired = wait_for("the rule fires", 1);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].0, "firing", "{fired:?}");

    // The rule goes; rule_a stays.
    write_rules(&rules_path, &RULE_A.replace("hook", "inbox"), 1_000_010);
    let seen = wait_for("the resolution", 2);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].0, "resolved", "{seen:?}");
    assert!(
        seen[1].1.contains("the rule was removed") && seen[1].1.contains("social"),
        "{seen:?}"
    );
    server.stop();
}
