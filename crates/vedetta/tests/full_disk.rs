//! A full disk, for real: the data directory lives on a small tmpfs the test mounts (the
//! tests run as root; a failed mount fails the test, it never skips). A ballast file leaves
//! a few MiB free; events are posted until the disk is full and then some, the ballast is
//! deleted, and posting goes on. The same server process must come through it all:
//!
//! - the log answers 507 with `Retry-After` while the disk is full and never acknowledges
//!   what it did not write: every acknowledged event is counted, exactly once;
//! - the processor's failed commits are redone from the snapshot and the log: the KPIs equal
//!   a `vedetta replay` of the same log;
//! - intake and processing resume by themselves once space is back (no restart).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Server, client, get_json, wait_processed};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let output = Command::new("mount")
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
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const ENV: &[(&str, &str)] = &[
    ("VEDETTA_PIPELINE__SNAPSHOT_INTERVAL_SECONDS", "1"),
    ("VEDETTA_INGEST__MAX_EVENTS_PER_REQUEST", "10000"),
];

/// One request's worth of distinct page views, all within the last minutes.
fn batch(first: u64, count: u64, now_ms: i64) -> String {
    (first..first + count)
        .map(|n| {
            format!(
                r#"{{"udid":"user-{n}","type":"page_view","ts":{},"event_id":"e-{n}","channel":"social","campaign":"c{}","page":"/p/{n}?padding={}"}}"#,
                now_ms - (n % 600) as i64 * 1000,
                n % 50,
                "x".repeat(200),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn kpis(client: &reqwest::blocking::Client, server: &Server) -> Vec<serde_json::Value> {
    ["1m", "1d"]
        .iter()
        .map(|g| {
            get_json(
                client,
                &server.url(&format!(
                    "/v1/kpis?granularity={g}&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z\
                     &group_by=channel,campaign,device,region"
                )),
            )
        })
        .collect()
}

/// Fills a tmpfs to the last byte (what the ballast cannot take, nothing can).
fn fill(disk: &Tmpfs, name: &str) -> PathBuf {
    use std::io::Write;
    let path = disk.0.join(name);
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
    // Single bytes for the last partial chunk.
    while let Ok(1) = file.write(&[0]) {}
    path
}

fn wait_for(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_disk_refuses_what_it_cannot_store_and_recovers_by_itself() {
    // The log and the KPI store each on a small disk of its own (the store's file through a
    // symbolic link), so that each runs out of space when the test says, not by a race.
    let dir = tempfile::tempdir().unwrap();
    let log_disk = Tmpfs::mount(&dir.path().join("log-disk"), "48m");
    let store_disk = Tmpfs::mount(&dir.path().join("store-disk"), "48m");
    let data = log_disk.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(store_disk.0.join("kpis.redb"), data.join("kpis.redb")).unwrap();
    let server = Server::start(&data, ENV);
    let pid = server.pid();
    let http = client();
    let now = support::now_ms();
    let status = || get_json(&http, &server.url("/v1/status"));

    let (mut acknowledged, mut next, mut full_answers, mut other_failures) = (0u64, 0u64, 0, 0);
    let mut post = |next: &mut u64| -> u16 {
        let body = batch(*next, 500, now);
        let response = http
            .post(server.url("/v1/events"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let answer: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
        match status {
            200 => {
                assert_eq!(answer["rejected"], serde_json::json!([]), "{answer}");
                acknowledged += answer["accepted"].as_u64().unwrap();
                *next += 500;
            }
            507 => {
                assert!(retry_after.is_some(), "507 without Retry-After");
                full_answers += 1;
            }
            503 => {
                assert!(retry_after.is_some(), "503 without Retry-After");
                other_failures += 1;
            }
            other => panic!("unexpected answer {other}: {answer}"),
        }
        status
    };

    // 1. Normal traffic.
    for _ in 0..6 {
        assert_eq!(post(&mut next), 200);
    }
    wait_processed(&http, &server);

    // 2. The store's disk fills: intake goes on, the processor fails and says so.
    let store_ballast = fill(&store_disk, "ballast");
    // redb keeps free pages inside its file: the processor fails once they are used up.
    let deadline = Instant::now() + Duration::from_secs(120);
    while status()["processor_storage_full_failures"]
        .as_u64()
        .unwrap()
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the processor never reported the full disk"
        );
        assert_eq!(
            post(&mut next),
            200,
            "intake must not depend on the KPI store"
        );
    }

    // 3. The log's disk fills: requests are refused with 507, none half-stored.
    let log_ballast = fill(&log_disk, "ballast");
    let mut refused = 0;
    wait_for("intake refuses on the full disk", 120, || {
        if post(&mut next) != 200 {
            refused += 1;
        }
        refused >= 20
    });
    assert_eq!(
        http.get(server.url("/healthz")).send().unwrap().status(),
        200,
        "healthz while both disks are full"
    );
    let during = status();

    // 4. Space comes back: intake and processing resume by themselves.
    std::fs::remove_file(&log_ballast).unwrap();
    std::fs::remove_file(&store_ballast).unwrap();
    let mut resumed = 0;
    wait_for("intake resumes after space was freed", 60, || {
        if post(&mut next) == 200 {
            resumed += 1;
        }
        resumed >= 10
    });
    wait_processed(&http, &server);
    wait_for("the processor error clears", 60, || {
        status()["processor_error"].is_null()
    });
    let status = wait_processed(&http, &server);
    assert_eq!(server.pid(), pid, "the server was restarted");

    // The paths this test is about were taken.
    assert!(full_answers > 0, "no 507 was answered: {during}");
    assert!(
        status["log_storage_full_failures"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(status["log_reopens"].as_u64().unwrap() > 0, "{status}");
    assert!(
        status["processor_commit_failures"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(
        status["processor_recoveries"].as_u64().unwrap() > 0,
        "{status}"
    );

    // Nothing acknowledged was lost, nothing refused was stored.
    assert_eq!(status["log_end_offset"].as_u64().unwrap(), acknowledged);
    let live = kpis(&http, &server);
    let counted = live[1]["totals"]["events"]["page_view"].as_u64().unwrap();
    assert_eq!(counted, acknowledged, "page views in /v1/kpis");
    server.stop();

    // The KPIs equal a replay of the same log, off the small disk.
    let server = support::start_replayed_copy(&data, &dir.path().join("copy"), ENV);
    wait_processed(&http, &server);
    let replayed = kpis(&http, &server);
    server.stop();
    for (i, (a, b)) in live.iter().zip(&replayed).enumerate() {
        assert_eq!(a["rows"], b["rows"], "query {i} differs from a replay");
        assert_eq!(a["totals"], b["totals"], "query {i} totals differ");
    }
    eprintln!(
        "full disk: {acknowledged} events acknowledged, {full_answers} requests answered 507, \
         {other_failures} 503; {} processor commit failures, {} recoveries, {} log reopens; \
         KPIs equal a replay",
        status["processor_commit_failures"], status["processor_recoveries"], status["log_reopens"]
    );
}

/// `watch.redb` (the alert store, the outbox, the inbox and the trigger store share it)
/// comes back from a full disk by itself: redb latches the first failed write until the
/// file is reopened, and the stores reopen it. Store-level: the same small tmpfs, filled for
/// real, under one open handle shared the way the server shares it.
#[test]
fn watch_redb_recovers_from_a_full_disk_without_a_restart() {
    use vedetta_core::watch::dispatch::Silence;
    use vedetta_core::watch::notification::Notification;
    use vedetta_store::WatchStore;
    use vedetta_store::inbox::Inbox;
    use vedetta_store::outbox::{self, Outbox};
    use vedetta_store::trigger_store::TriggerStore;

    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("watch-disk"), "8m");
    let (store, mut state) = WatchStore::open(&disk.0.join("watch.redb")).unwrap();
    let db = store.database().clone();
    let outbox = Outbox::new(db.clone()).unwrap();
    let inbox = Inbox::new(db.clone()).unwrap();
    let triggers = TriggerStore::new(db).unwrap();
    let silence = |n: usize| Silence {
        id: format!("s-{n}"),
        matchers: Vec::new(),
        starts_ms: 0,
        ends_ms: i64::MAX,
        created_by: "test".into(),
        comment: "x".repeat(64 << 10),
    };
    let note = |id: &str| {
        let mut n = Notification::example();
        n.id = id.into();
        n
    };
    let enqueue: Box<vedetta_store::watch_store::Enqueue<'static>> = Box::new(|txn, n| {
        outbox::enqueue(txn, n, 1_000)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    assert!(store.add_silence(&silence(0), 1, usize::MAX).unwrap());

    // The disk fills; redb uses its free pages first, then a write fails.
    let ballast = fill(&disk, "ballast");
    let mut written = 1;
    let failure = loop {
        assert!(written < 1_000, "no write failed on the full disk");
        match store.add_silence(&silence(written), 1, usize::MAX) {
            Ok(added) => assert!(added),
            Err(error) => break error,
        }
        written += 1;
    };
    assert!(
        failure.is_storage_full() && failure.is_retryable(),
        "{failure}"
    );
    // While the disk stays full, every store answers a retryable error (or succeeds, on
    // free pages), never a permanent one.
    let during = outbox.enqueue(&note("during"), 1_000);
    assert!(
        during.as_ref().map_or_else(|e| e.is_retryable(), |_| true),
        "{during:?}"
    );

    // Space comes back: the next operations of every store succeed, with no new handle.
    std::fs::remove_file(&ballast).unwrap();
    assert!(store.add_silence(&silence(written), 1, usize::MAX).unwrap());
    state.evaluated_through_ms = Some(60_000);
    store
        .commit(&state, &[], &[note("after")], &*enqueue)
        .unwrap();
    outbox.enqueue(&note("after-2"), 2_000).unwrap();
    inbox.put(&note("after"), 2_000).unwrap();
    triggers.commit_route(7, &[], &[]).unwrap();
    assert!(
        store.database().reopens() >= 1,
        "the file was never reopened"
    );

    // What was committed after the recovery is in the file.
    assert_eq!(store.state().unwrap().evaluated_through_ms, Some(60_000));
    let ids: Vec<String> = store
        .silences()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert!(ids.contains(&format!("s-{written}")), "{ids:?}");
    let queued: Vec<String> = outbox
        .queued(&note("x").destination, 100)
        .unwrap()
        .into_iter()
        .filter_map(|e| e.notification.ok().map(|n| n.id))
        .collect();
    assert!(
        queued.contains(&"after".to_string()) && queued.contains(&"after-2".to_string()),
        "{queued:?}"
    );
    assert_eq!(inbox.list(10).unwrap()[0].1.id, "after");
    assert_eq!(triggers.resume().unwrap().routed, Some(7));
    eprintln!(
        "watch.redb full disk: {written} silences written before the failure ({failure}); \
         {} reopens",
        store.database().reopens()
    );
}

/// Through the server: `/v1/silences` answers 507 with `Retry-After` while the disk under
/// `watch.redb` is full, and creates silences again once space is freed, in the same
/// process.
#[test]
fn silences_answer_507_on_a_full_disk_and_work_again_after() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("watch-disk"), "8m");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(disk.0.join("watch.redb"), data.join("watch.redb")).unwrap();
    let server = Server::start(&data, &[]);
    let pid = server.pid();
    let http = client();
    let post = |n: usize| {
        let body = serde_json::json!({
            "matchers": [{"name": "rule", "value": format!("rule_{n}")}],
            "duration": "2h",
            "comment": format!("{n:0>1000}"),
        });
        let response = http
            .post(server.url("/v1/silences"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let body: String = response.text().unwrap();
        (status, retry_after, body)
    };
    assert_eq!(post(0).0, 201);

    let ballast = fill(&disk, "ballast");
    let (mut n, mut full_answers, mut busy_answers) = (1, 0, 0);
    while full_answers == 0 {
        assert!(n < 500, "no 507 after {n} silences on the full disk");
        let (status, retry_after, body) = post(n);
        match status {
            201 => {}
            507 => {
                assert!(retry_after, "507 without Retry-After: {body}");
                full_answers += 1;
            }
            503 => {
                assert!(retry_after, "503 without Retry-After: {body}");
                busy_answers += 1;
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
        n += 1;
    }

    std::fs::remove_file(&ballast).unwrap();
    let mut created: Option<String> = None;
    wait_for(
        "silences are created again after space was freed",
        30,
        || {
            let (status, _, body) = post(n);
            n += 1;
            if status == 201 {
                created = Some(body);
            }
            status == 201
        },
    );
    let id = serde_json::from_str::<serde_json::Value>(&created.unwrap()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let alerts = get_json(&http, &server.url("/v1/alerts"));
    let listed = alerts["silences"].as_array().unwrap();
    assert!(listed.iter().any(|s| s["id"] == id.as_str()), "{alerts}");
    assert_eq!(server.pid(), pid, "the server was restarted");
    server.stop();
    eprintln!(
        "silences on a full disk: {full_answers} answered 507, {busy_answers} 503, \
         {} requests in all",
        n
    );
}

/// A snapshot file written on a full disk (the thread that encoded a snapshot off the
/// processor's thread writes it) fails as a full disk and leaves nothing behind: its
/// partial file kept the disk full, and only a snapshot commit, which needs that space,
/// would have removed it. Once space is back the next one is written and committed.
/// Store-level, on a small tmpfs filled for real.
#[test]
fn a_snapshot_file_on_a_full_disk_leaves_the_space_it_took() {
    use vedetta_store::{Commit, KpiStore};

    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("snapshot-disk"), "8m");
    let path = disk.0.join("kpis.redb");
    let store = KpiStore::open(&path).unwrap();
    let ballast = fill(&disk, "ballast");
    // Room for a little, not for the snapshot.
    let ballast_len = std::fs::metadata(&ballast).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ballast)
        .unwrap()
        .set_len(ballast_len - (1 << 20))
        .unwrap();
    let snapshot = vec![7u8; 3 << 20];
    let error = store.write_snapshot_file(40, &snapshot).unwrap_err();
    assert!(error.is_storage_full(), "{error}");
    let left: Vec<String> = std::fs::read_dir(&disk.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("kpis.redb."))
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "a partial snapshot file was left"
    );

    std::fs::remove_file(&ballast).unwrap();
    let file = store.write_snapshot_file(40, &snapshot).unwrap();
    store
        .commit(&Commit {
            processed_offset: 41,
            snapshot_file: Some(file),
            durable: true,
            ..Commit::default()
        })
        .unwrap();
    assert_eq!(
        store.progress().unwrap().snapshot,
        Some((40, snapshot)),
        "the snapshot written once space was back"
    );
}
