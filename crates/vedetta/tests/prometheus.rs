//! A real Prometheus (Debian's `prometheus`, started here) scrapes a real Vedetta fed with
//! generated traffic, and a PromQL query returns the conversions `/v1/kpis` reports.
//!
//! Needs the `prometheus` binary (`scripts/test.sh` installs Debian's package); without it
//! the test fails and says so — it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Server, client, get_json, now_ms, post_ndjson, recent_traffic, wait_processed};
use vedetta_synth::SynthConfig;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The start of today in Europe/Rome, epoch ms: the window of the `vedetta_kpi_*` gauges.
fn rome_today_start(now: i64) -> i64 {
    let zone = jiff::tz::TimeZone::get("Europe/Rome").unwrap();
    jiff::Timestamp::from_millisecond(now)
        .unwrap()
        .to_zoned_datetime(zone.clone())
        .date()
        .to_zoned_datetime(zone)
        .unwrap()
        .timestamp()
        .as_millisecond()
}

#[test]
fn prometheus_scrapes_metrics_and_promql_returns_the_conversions() {
    let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let version = Command::new(&binary).arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "cannot run `{binary}`: install Debian's prometheus (scripts/test.sh does) or set PROMETHEUS"
    );

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = client();

    // Ten minutes of generated traffic, plus purchases of now so that today has conversions
    // whatever the hour.
    let now = now_ms();
    let (mut body, _) = recent_traffic(
        SynthConfig {
            seed: 42,
            start_ms: now - 10 * 60_000,
            sessions_per_minute: 300.0,
            users: 40_000,
            ..SynthConfig::default()
        },
        now,
    );
    for i in 0..7 {
        body.extend_from_slice(
            format!(
                "{{\"udid\":\"prom-{i}\",\"type\":\"purchase\",\"ts\":{},\"value\":19.9,\"channel\":\"email\"}}\n",
                now - 2_000
            )
            .as_bytes(),
        );
    }
    post_ndjson(&http, &server, "/v1/events", &body);
    wait_processed(&http, &server);
    let today = rome_today_start(now);
    let kpis = get_json(
        &http,
        &server.url(&format!(
            "/v1/kpis?granularity=1d&from={today}&to={}",
            today + 1
        )),
    );
    let expected = kpis["totals"]["conversions"].as_i64().unwrap();
    assert!(expected >= 7, "{kpis}");

    // Prometheus, scraping every second.
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vedetta\n    \
             metrics_path: /metrics\n    static_configs:\n      - targets: ['{}']\n",
            server.address
        ),
    )
    .unwrap();
    let mut prometheus = Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=sum(vedetta_kpi_conversions)");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    let found = loop {
        if let Ok(response) = http.get(&query).send()
            && let Ok(text) = response.text()
        {
            last = text;
            let value: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
            if let Some(result) = value["data"]["result"][0]["value"][1].as_str() {
                break result.parse::<f64>().ok();
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    server.stop();
    let found = found.unwrap_or_else(|| panic!("Prometheus never returned a value: {last}"));
    assert_eq!(
        found as i64, expected,
        "PromQL sum(vedetta_kpi_conversions)"
    );
    eprintln!("Prometheus scraped /metrics: sum(vedetta_kpi_conversions) = {found} = /v1/kpis");
}
