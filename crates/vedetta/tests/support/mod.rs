//! Shared helpers of the integration tests: start the real binary, talk to it over HTTP.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod push_receiver;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_vedetta");
pub const KEY: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A running `vedetta serve`.
pub struct Server {
    pub child: Child,
    pub address: String,
}

impl Server {
    /// Starts the server on a free loopback port with the given data directory and extra
    /// environment, and waits until it listens.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_with(data_dir, None, env)
    }

    /// [`Server::start`] with a configuration file (`--config`): what cannot be given as
    /// environment, such as `[[alerts.destinations]]`.
    pub fn start_with_config_file(data_dir: &Path, config: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_with(data_dir, Some(config), env)
    }

    /// [`Server::start`] with more arguments to `serve` (`--demo`, `--rate 0`).
    pub fn start_with_args(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with_all(data_dir, None, args, env)
    }

    fn start_with(data_dir: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> Server {
        Server::start_with_all(data_dir, config, &[], env)
    }

    fn start_with_all(
        data_dir: &Path,
        config: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut command = Command::new(BIN);
        command.arg("serve").args(args);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("VEDETTA_PRIVACY__PSEUDONYM_KEY", KEY)
            .env("VEDETTA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start vedetta serve");
        let stderr = child.stderr.take().unwrap();
        let (address_tx, address_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("address=").nth(1) {
                    let _ =
                        address_tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                if line.contains("ERROR") || line.starts_with("error:") {
                    eprintln!("server: {line}");
                }
            }
        });
        let address = address_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the server opened its data and started listening");
        Server { child, address }
    }

    /// The server's process id (a restart would change it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the server with its data in `dir/data` and a GeoIP database of the generator's
    /// regions (`dir/regions.mmdb`), so that regions resolve from IPs as in production.
    pub fn start_with_regions(dir: &Path) -> Server {
        Server::start_with_regions_and(dir, &[])
    }

    /// [`Server::start_with_regions`] with more environment (configuration) on top.
    pub fn start_with_regions_and(dir: &Path, env: &[(&str, &str)]) -> Server {
        let mmdb = dir.join("regions.mmdb");
        std::fs::write(&mmdb, vedetta_synth::geoip::catalog_region_mmdb()).unwrap();
        let mmdb_path = mmdb.display().to_string();
        let mut all = vec![("VEDETTA_PIPELINE__GEOIP_DATABASE", mmdb_path.as_str())];
        all.extend_from_slice(env);
        Server::start(&dir.join("data"), &all)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    /// A test that fails midway must not leave its server running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    /// SIGTERM and wait for the ordered shutdown.
    pub fn stop(self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let mut server = self;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if server.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server.kill();
    }
}

/// Copies the log of `data` (and its pseudonym key) into a fresh `copy` directory, rebuilds
/// every KPI there with `vedetta replay`, and starts a server on the copy: the same log,
/// processed once without interruption, to compare a run's KPIs with.
pub fn start_replayed_copy(data: &Path, copy: &Path, env: &[(&str, &str)]) -> Server {
    std::fs::create_dir_all(copy).unwrap();
    for file in ["log.redb", "pseudonym.key"] {
        let from = data.join(file);
        if from.exists() {
            std::fs::copy(&from, copy.join(file)).unwrap();
        }
    }
    let replay = Command::new(BIN)
        .args(["replay", "--data-dir"])
        .arg(copy)
        .env("VEDETTA_PRIVACY__PSEUDONYM_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    Server::start(copy, env)
}

/// A blocking HTTP client for tests.
pub fn client() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub fn get_json(client: &reqwest::blocking::Client, url: &str) -> serde_json::Value {
    let response = client.get(url).send().unwrap();
    let status = response.status();
    let text = response.text().unwrap();
    assert!(status.is_success(), "GET {url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// Waits until the processor has consumed the whole log.
pub fn wait_processed(client: &reqwest::blocking::Client, server: &Server) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = get_json(client, &server.url("/v1/status"));
        if status["log_end_offset"] == status["processed_offset"]
            && status["log_pending_records"] == 0
        {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "processing did not catch up: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[allow(clippy::disallowed_methods)] // test clients stamp events with the wall clock
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A number from the environment (to replay a failure: more rounds, another seed), else
/// the default. These knobs must not start with `VEDETTA_`: the server takes every such
/// variable as configuration and refuses unknown keys.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator for random test choices.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Generated traffic whose arrivals fall between `start_ms` and a second before `now`, as
/// NDJSON: (events, spend).
pub fn recent_traffic(config: vedetta_synth::SynthConfig, now: i64) -> (Vec<u8>, Vec<u8>) {
    use vedetta_synth::{Generator, SynthRecord, to_ndjson_line};
    let (mut events, mut costs) = (Vec::new(), Vec::new());
    for arrival in Generator::new(config)
        .unwrap()
        .take_while(|a| a.arrival_ms < now - 1_000)
    {
        match arrival.record {
            SynthRecord::Event(_) => to_ndjson_line(&arrival.record, &mut events),
            SynthRecord::Spend(_) => to_ndjson_line(&arrival.record, &mut costs),
        }
    }
    (events, costs)
}

/// Posts an NDJSON body to `path` in requests of 5,000 lines; every one must be accepted.
pub fn post_ndjson(client: &reqwest::blocking::Client, server: &Server, path: &str, body: &[u8]) {
    let lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for chunk in lines.chunks(5_000) {
        let response = client
            .post(server.url(path))
            .header("content-type", "application/x-ndjson")
            .body(chunk.join(&b'\n'))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "POST {path}");
    }
}

/// Posts `body` as NDJSON to `path` in one request; it must be answered 200 with nothing
/// rejected.
pub fn post_all_accepted(
    client: &reqwest::blocking::Client,
    server: &Server,
    path: &str,
    body: &[serde_json::Value],
) {
    let ndjson: String = body.iter().map(|v| format!("{v}\n")).collect();
    let response = client
        .post(server.url(path))
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .unwrap();
    let status = response.status();
    let text = response.text().unwrap();
    assert_eq!(status, 200, "POST {path}: {text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["rejected"], serde_json::json!([]), "{answer}");
}

/// HMAC-SHA-256 of `body` under `secret` computed by Python's standard library, not by the
/// code under test: `encoding` is `hex` or `base64` (as webhook senders write it).
pub fn python_hmac_sha256(secret: &str, body: &[u8], encoding: &str) -> String {
    use std::io::Write;
    let encode = match encoding {
        "hex" => "d.hex()",
        "base64" => "base64.b64encode(d).decode()",
        other => panic!("unknown encoding {other}"),
    };
    let script = format!(
        "import base64,hashlib,hmac,sys; \
         d = hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha256).digest(); \
         print({encode})"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script, secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed to compute the HMAC independently");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}
