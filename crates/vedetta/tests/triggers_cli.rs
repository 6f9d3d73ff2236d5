//! Trigger configuration: `vedetta triggers check` refuses malformed files naming the
//! trigger and the key; a running server reloads its `triggers_file` on change, keeps the
//! old triggers in force when the new file does not check (and says why at
//! `GET /v1/triggers`), and reloads on SIGHUP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};
use support::{BIN, KEY, Server, client, get_json};

const CONFIG: &str = r#"
[[alerts.destinations]]
name = "crm-push"
kind = "webhook"
format = "seed"
url = "http://127.0.0.1:9/push"

[[alerts.destinations]]
name = "slack"
kind = "slack"
url = "https://hooks.slack.com/services/T/B/x"
"#;

const CART: &str = r#"
[[triggers]]
name = "carrello"
kind = "abandoned_cart"
after = "30m"
notify = ["crm-push"]
"#;

const FEED: &str = r#"
[[triggers]]
name = "feed"
kind = "conversion_feed"
notify = ["crm-push"]
"#;

fn vedetta(args: &[&str], dir: &Path) -> (bool, String) {
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
fn check_refuses_malformed_trigger_files_naming_the_trigger_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vedetta.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let file = dir.path().join("triggers.toml");
    let config_arg = config.to_str().unwrap();
    let file_arg = file.to_str().unwrap();
    std::fs::write(&file, CART).unwrap();
    let (ok, out) = vedetta(
        &["triggers", "check", file_arg, "--config", config_arg],
        dir.path(),
    );
    assert!(ok, "{out}");
    assert!(out.contains("ok (1 triggers)"), "{out}");
    let cases = [
        (CART.replace("after = \"30m\"", "after = \"30x\""), "trigger \"carrello\": after:"),
        (CART.replace("crm-push", "slack"), "trigger \"carrello\": notify: \"slack\" does not take pushes"),
        (CART.replace("crm-push", "nowhere"), "trigger \"carrello\": notify: \"nowhere\" is not a configured destination"),
        (CART.replace("abandoned_cart", "abandoned"), "trigger \"carrello\": kind:"),
        (format!("{CART}{CART}"), "trigger \"carrello\": name: another trigger has this name"),
        (CART.replace("after = \"30m\"", "after = \"30m\"\nthreshold = 20"), "trigger \"carrello\": threshold: is not a key"),
        (
            "[[triggers]]\nname = \"cpa\"\nkind = \"segment_cpa\"\nthreshold = 20\nover = \"10m\"\ngroup_by = [\"region\"]\nnotify = [\"crm-push\"]\n".into(),
            "trigger \"cpa\": group_by:",
        ),
        (CART.replace("after =", "aftr ="), "unknown field `aftr`"),
    ];
    for (text, expected) in cases {
        std::fs::write(&file, &text).unwrap();
        let (ok, out) = vedetta(
            &["triggers", "check", file_arg, "--config", config_arg],
            dir.path(),
        );
        assert!(!ok, "accepted:\n{text}");
        assert!(
            out.contains(expected),
            "expected {expected:?} for\n{text}\ngot: {out}"
        );
        assert!(out.contains("triggers.toml"), "names the file: {out}");
    }
}

/// Writes the file as editors do, with a modification time of its own.
fn write_file(path: &Path, text: &str, mtime_seconds: u64) {
    let fresh = path.with_extension("tmp");
    std::fs::write(&fresh, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&fresh)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_seconds))
        .unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

fn wait_triggers(
    http: &reqwest::blocking::Client,
    server: &Server,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = get_json(http, &server.url("/v1/triggers"));
        if done(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: not within 5 s: {t}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn names(t: &Value) -> Vec<String> {
    t["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_triggers_file_reloads_keeps_the_old_triggers_on_error_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("triggers.toml");
    write_file(&file, CART, 1_000_000);
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        format!("triggers_file = {:?}\n{CONFIG}", file.display().to_string()),
    )
    .unwrap();
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let http = client();
    let t = get_json(&http, &server.url("/v1/triggers"));
    assert_eq!(names(&t), ["carrello"]);
    assert_eq!(t["triggers"][0]["after"], "30m");
    assert_eq!(t["reload_error"], Value::Null);

    // A bad file: the old triggers stay, the error names the trigger and the key.
    write_file(
        &file,
        &CART.replace("after = \"30m\"", "after = \"-\""),
        1_000_100,
    );
    let t = wait_triggers(&http, &server, "the reload error", |t| {
        !t["reload_error"].is_null()
    });
    assert_eq!(names(&t), ["carrello"], "{t}");
    let error = t["reload_error"].as_str().unwrap();
    assert!(error.contains("trigger \"carrello\": after:"), "{error}");

    // A good file on change.
    write_file(&file, FEED, 1_000_200);
    let t = wait_triggers(&http, &server, "the new triggers", |t| names(t) == ["feed"]);
    assert_eq!(t["reload_error"], Value::Null);

    // Same modification time, new content: only SIGHUP reloads it.
    write_file(&file, &format!("{FEED}{}", CART), 1_000_200);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        names(&get_json(&http, &server.url("/v1/triggers"))),
        ["feed"]
    );
    let pid = server.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_triggers(&http, &server, "the SIGHUP reload", |t| {
        names(t) == ["feed", "carrello"]
    });
    server.stop();
}

/// `vedetta bench processor` runs each pass in a process of its own (this binary started
/// again on the appends it wrote) and reports both kinds: the stage held users only in the
/// pass with triggers.
#[test]
fn bench_processor_runs_each_pass_in_a_fresh_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        format!(
            "{CONFIG}\n[[triggers]]\nname = \"cpa\"\nkind = \"segment_cpa\"\ngroup_by = \
             [\"channel\"]\nthreshold = 1\nover = \"10m\"\nmin_conversions = 1\nnotify = \
             [\"crm-push\"]\n{FEED}"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let traffic = dir.path().join("traffic");
    let traffic = traffic.to_str().unwrap();
    // The passes' directories go here: a pass's process ends without stopping its
    // processor, and must leave none behind.
    let temporary = dir.path().join("tmp");
    std::fs::create_dir(&temporary).unwrap();
    let bench = |seconds: &str, rounds: &str| {
        let args = [
            "bench",
            "processor",
            "--config",
            config,
            "--rate",
            "400",
            "--warmup",
            "60",
            "--fill",
            "3",
            "--seconds",
            seconds,
            "--batch",
            "50",
            "--rounds",
            rounds,
            "--json",
            "--traffic-file",
            traffic,
        ];
        Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env("VEDETTA_PRIVACY__PSEUDONYM_KEY", KEY)
            .env("TMPDIR", &temporary)
            .output()
            .unwrap()
    };
    let output = bench("2", "1");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("generating"), "{stderr}");
    let figures: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(figures["triggers"], 2, "{figures}");
    for key in ["processor_thread_s_alone", "processor_thread_s_with"] {
        let passes = figures[key].as_array().unwrap();
        assert_eq!(passes.len(), 1, "{figures}");
        assert!(passes[0].as_f64().unwrap() > 0.0, "{figures}");
    }
    // Each pass's process reported its own figures (the pass with triggers held users).
    assert!(stderr.contains("round 0, no triggers"), "{stderr}");
    assert!(stderr.contains("users held by the stage"), "{stderr}");

    // The traffic kept is read back, not generated again: the same records; the second
    // round runs the pass with triggers first.
    let again = bench("2", "2");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("reading from") && !stderr.contains("generating"));
    let second: Value = serde_json::from_slice(&again.stdout).unwrap();
    // Each round's ratio of its two passes, and their median.
    let by_round = second["processor_thread_added_percent_by_round"]
        .as_array()
        .unwrap();
    assert_eq!(by_round.len(), 2, "{second}");
    let (a, b) = (by_round[0].as_f64().unwrap(), by_round[1].as_f64().unwrap());
    let median = second["processor_thread_added_percent_median"]
        .as_f64()
        .unwrap();
    assert!((median - (a + b) / 2.0).abs() < 1e-9, "{second}");
    assert_eq!(
        std::fs::read_dir(&temporary).unwrap().count(),
        0,
        "a pass left its directory"
    );
    assert_eq!(
        (&second["records"], &second["fill_records"]),
        (&figures["records"], &figures["fill_records"])
    );
    let at = |what: &str| {
        stderr
            .find(what)
            .unwrap_or_else(|| panic!("{what}: {stderr}"))
    };
    assert!(
        at("round 0, no triggers") < at("round 0, 2 triggers"),
        "{stderr}"
    );
    assert!(
        at("round 1, 2 triggers") < at("round 1, no triggers"),
        "{stderr}"
    );
    // Other traffic flags than the file's are refused, not run on the wrong traffic.
    let other = bench("3", "1");
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("holds other traffic"), "{stderr}");
}
