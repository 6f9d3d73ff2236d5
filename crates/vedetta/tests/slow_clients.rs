//! Slow and stuck clients against the real binary, over real sockets: stalled uploads must
//! not stop intake, connections over the cap get a 503, idle connections are closed, and a
//! SIGTERM with a stalled upload and an unread stream still stops within its deadline
//! without losing what was acknowledged.
//!
//! The timeouts are set small through `VEDETTA_*` variables so that each test takes
//! seconds; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{Server, client, get_json, now_ms, wait_processed};

/// Opens a raw connection to the server.
fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(&server.address).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads until the server closes the connection or `within` passes. Returns what was read
/// and whether the server closed (EOF or reset) in time.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, false);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (out, true),
            Err(e) => panic!("reading from the server: {e}"),
        }
    }
}

/// Sends `GET path` on a kept-alive connection and reads one whole response (head and a
/// `content-length` body). Returns the status line and the body.
fn get_on(stream: &mut TcpStream, path: &str) -> (String, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a content-length");
            if data.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).to_string();
                let status = head.lines().next().unwrap_or("").to_string();
                return (status, body);
            }
        }
        let n = stream.read(&mut buf).expect("a response in time");
        assert!(n > 0, "the server closed before answering {path}");
        data.extend_from_slice(&buf[..n]);
    }
}

fn event_line(udid: &str, kind: &str, extra: &str) -> String {
    format!(
        r#"{{"udid":"{udid}","type":"{kind}","ts":{}{extra}}}"#,
        now_ms()
    )
}

#[test]
fn stalled_uploads_do_not_stop_intake_and_are_cut_after_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // No cap is set: the default is derived from the open-file limit the server raised.
    // The body budget is two largest bodies: reserving what uploads declare, as intake once
    // did, two stalled ones would spend it and every other request would get a 503.
    let server = Server::start(
        dir.path(),
        &[
            ("VEDETTA_INGEST__BODY_TIMEOUT_SECONDS", "5"),
            ("VEDETTA_SERVER__HEADER_TIMEOUT_SECONDS", "5"),
            ("VEDETTA_INGEST__MAX_BODY_BYTES", "1024000"),
            ("VEDETTA_INGEST__MAX_INFLIGHT_BODY_BYTES", "2048000"),
        ],
    );
    let http = client();
    let opened = Instant::now();
    // 200 uploads that declare the largest body allowed and then send nothing more than a
    // few bytes.
    let mut stalled_bodies: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut stream = connect(&server);
            write!(
                stream,
                "POST /v1/events HTTP/1.1\r\nhost: test\r\ncontent-type: application/x-ndjson\r\n\
                 content-length: 1024000\r\n\r\n{{\"udid\":"
            )
            .unwrap();
            stream
        })
        .collect();
    // 20 more that stop in the middle of their request head.
    let mut stalled_heads: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = connect(&server);
            stream
                .write_all(b"POST /v1/events HTTP/1.1\r\nhost: test\r\n")
                .unwrap();
            stream
        })
        .collect();

    // Meanwhile normal intake goes on (batches of 50 events, a few KB each), and the
    // liveness probe answers.
    for i in 0..20 {
        let batch: String = (0..50)
            .map(|j| event_line(&format!("u{i}-{j}"), "page_view", "") + "\n")
            .collect();
        let response = http
            .post(server.url("/v1/events"))
            .header("content-type", "application/x-ndjson")
            .body(batch)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().unwrap());
        let health = http.get(server.url("/healthz")).send().unwrap();
        assert_eq!(health.status(), 200);
    }
    // The point of the test: intake went on while all of them were stalled.
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "normal intake took {:?}, past the body timeout: the stalls may have ended before it",
        opened.elapsed()
    );

    // After the body timeout each stalled upload gets a 408 and its connection is closed.
    for stream in &mut stalled_bodies {
        let (answer, closed) = read_until_closed(stream, Duration::from_secs(20));
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a stalled upload was answered {answer:?}"
        );
        assert!(closed, "a stalled upload's connection stayed open");
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(5),
        "cut before the body timeout"
    );
    // Heads that never finish are dropped after the header timeout.
    for stream in &mut stalled_heads {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(20));
        assert!(closed, "a stalled request head's connection stayed open");
    }
    let status = get_json(&http, &server.url("/v1/status"));
    assert_eq!(status["events_accepted"], 1000, "{status}");
    assert_eq!(status["requests_refused_by_status"]["408"], 200, "{status}");
    server.stop();
}

#[test]
fn a_trickling_body_is_cut_although_it_never_stalls() {
    let dir = tempfile::tempdir().unwrap();
    // A byte every 300 ms never waits the 2 s stall timeout, but is far below 1 KiB/s.
    let server = Server::start(
        dir.path(),
        &[
            ("VEDETTA_INGEST__BODY_TIMEOUT_SECONDS", "2"),
            ("VEDETTA_INGEST__MIN_BODY_RATE_BYTES_PER_SECOND", "1024"),
        ],
    );
    let mut upload = connect(&server);
    upload
        .write_all(
            b"POST /v1/events HTTP/1.1\r\nhost: test\r\ncontent-type: application/x-ndjson\r\n\
              content-length: 100000\r\n\r\n",
        )
        .unwrap();
    let started = Instant::now();
    let mut writer = upload.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..100 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let (answer, closed) = read_until_closed(&mut upload, Duration::from_secs(20));
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(closed, "the trickling upload's connection stayed open");
    assert!(
        took >= Duration::from_millis(1_900) && took < Duration::from_secs(10),
        "cut after {took:?}: expected soon after the 2 s grace"
    );
    let _ = upload.shutdown(std::net::Shutdown::Both);
    trickle.join().unwrap();
    server.stop();
}

#[test]
fn connections_over_the_cap_get_a_503_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("VEDETTA_SERVER__MAX_CONNECTIONS", "8"),
            ("VEDETTA_SERVER__HEADER_TIMEOUT_SECONDS", "60"),
        ],
    );
    // Eight connections that say nothing hold every slot.
    let holders: Vec<TcpStream> = (0..8).map(|_| connect(&server)).collect();
    let mut ninth = connect(&server);
    ninth
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    let (answer, closed) = read_until_closed(&mut ninth, Duration::from_secs(20));
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(
        answer.starts_with("http/1.1 503"),
        "over the cap: {answer:?}"
    );
    assert!(answer.contains("retry-after: 1"), "{answer:?}");
    assert!(answer.contains("too many open connections"), "{answer:?}");
    assert!(closed, "the refused connection was left open");

    // Once the holders go, the server answers again.
    drop(holders);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut stream = connect(&server);
        let _ =
            stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5));
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots were not given back: {:?}",
            String::from_utf8_lossy(&answer)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
}

#[test]
fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("VEDETTA_SERVER__HEADER_TIMEOUT_SECONDS", "1"),
            ("VEDETTA_SERVER__IDLE_TIMEOUT_SECONDS", "4"),
        ],
    );
    let mut kept = connect(&server);
    let (status, body) = get_on(&mut kept, "/healthz");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "ok\n");
    // Idle longer than the header timeout: a kept-alive connection between requests is
    // idle, not slow, and is still served.
    std::thread::sleep(Duration::from_millis(2_000));
    let (status, _) = get_on(&mut kept, "/healthz");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let idle_from = Instant::now();
    let (rest, closed) = read_until_closed(&mut kept, Duration::from_secs(20));
    let idle_for = idle_from.elapsed();
    assert!(closed, "an idle connection stayed open for 20 s");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        idle_for >= Duration::from_millis(3_500) && idle_for < Duration::from_secs(12),
        "closed after {idle_for:?} idle; the idle timeout is 4 s"
    );

    // A connection that never sends a request is dropped after the header timeout.
    let mut silent = connect(&server);
    let connected = Instant::now();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(20));
    assert!(closed, "a silent connection stayed open");
    let waited = connected.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(4),
        "silent connection closed after {waited:?}; the header timeout is 1 s"
    );
    server.stop();
}

#[test]
fn sigterm_with_a_stalled_upload_and_an_unread_stream_stops_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    // Every other timeout is long: only the shutdown deadline can end these clients.
    let env = [
        ("VEDETTA_SERVER__SHUTDOWN_DEADLINE_SECONDS", "2"),
        ("VEDETTA_SERVER__HEADER_TIMEOUT_SECONDS", "300"),
        ("VEDETTA_SERVER__IDLE_TIMEOUT_SECONDS", "300"),
        ("VEDETTA_INGEST__BODY_TIMEOUT_SECONDS", "300"),
    ];
    let server = Server::start(dir.path(), &env);
    let http = client();
    let response = http
        .post(server.url("/v1/events"))
        .header("content-type", "application/json")
        .body(event_line(
            "buyer",
            "purchase",
            r#","value":42.5,"currency":"EUR","campaign":"before-sigterm""#,
        ))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let acknowledged: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    let end_offset = acknowledged["end_offset"].as_u64().unwrap();

    let mut upload = connect(&server);
    write!(
        upload,
        "POST /v1/events HTTP/1.1\r\nhost: test\r\ncontent-type: application/x-ndjson\r\n\
         content-length: 100000\r\n\r\n{}\n{{\"udid\":",
        event_line("late", "lead", "")
    )
    .unwrap();
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /v1/stream?granularity=1m&last=60m HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    // The stream is subscribed (and never read from here on).
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(&http, &server.url("/v1/status"))["stream_clients"] != 1 {
        assert!(Instant::now() < deadline, "the stream never started");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut server = server;
    let signalled = Instant::now();
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "the server did not stop within 60 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    assert!(exit.success(), "{exit}");
    // The deadline (2 s) plus the writer's flush and the processor's snapshot.
    assert!(
        took < Duration::from_secs(10),
        "stopping took {took:?} with a 2 s deadline"
    );
    assert!(
        took >= Duration::from_millis(1_500),
        "stopped after {took:?}: the stalled upload was not waited for until the deadline"
    );
    let (_, closed) = read_until_closed(&mut upload, Duration::from_secs(5));
    assert!(
        closed,
        "the stalled upload's connection outlived the server"
    );
    drop(stream);
    drop(server);

    // What was acknowledged before the SIGTERM is in the log and in the KPIs.
    let server = Server::start(dir.path(), &env);
    let status = wait_processed(&http, &server);
    assert!(
        status["log_end_offset"].as_u64().unwrap() >= end_offset,
        "{status}"
    );
    let kpis = get_json(
        &http,
        &server.url(
            "/v1/kpis?granularity=1d&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z\
             &group_by=campaign",
        ),
    );
    let rows = kpis["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["campaign"] == "before-sigterm")
        .unwrap_or_else(|| panic!("the purchase is not in the KPIs: {kpis}"));
    assert_eq!(row["conversions"], 1, "{row}");
    assert_eq!(row["revenue"], 42.5, "{row}");
    server.stop();
}
