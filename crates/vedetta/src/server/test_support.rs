//! What the router tests share: a server built over a temporary data directory and called
//! as a value, without a socket (the way axum's testing example does it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{AppState, build};
use crate::config::{Overrides, load_from};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

/// A built server: its router, its state, and the directory that holds its data.
pub(super) struct TestServer {
    pub router: Router,
    pub state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

/// A server with default settings.
pub(super) fn server() -> TestServer {
    server_with(&[])
}

/// A server with settings given as `VEDETTA_*` environment variables.
pub(super) fn server_with(env: &[(&str, &str)]) -> TestServer {
    server_with_file("", env)
}

/// A server with a configuration file of this text (and environment variables).
pub(super) fn server_with_file(config_text: &str, env: &[(&str, &str)]) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vedetta.toml");
    std::fs::write(&file, config_text).unwrap();
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("VEDETTA_DATA_DIR".into(), dir.path().display().to_string()));
    let config = load_from(Some(&file), &env, &Overrides::default()).unwrap();
    let (router, state) = build(config).unwrap();
    TestServer {
        router,
        state,
        _dir: dir,
    }
}

impl TestServer {
    /// The status, the headers and the body (JSON when it is JSON, else its text). A
    /// stream's body is not read: only its status and headers matter to these tests.
    pub async fn call(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        if headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "text/event-stream")
        {
            return (status, headers, Value::Null);
        }
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, headers, value)
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (status, _, value) = self
            .call(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        (status, value)
    }

    /// Posts a body to `/v1/events`.
    pub async fn post(&self, content_type: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        let request = Request::post("/v1/events")
            .header(header::CONTENT_TYPE, content_type)
            .body(body.into())
            .unwrap();
        let (status, _, value) = self.call(request).await;
        (status, value)
    }

    pub async fn status(&self) -> Value {
        self.get("/v1/status").await.1
    }

    /// Waits until the processor has committed everything in the log.
    pub async fn processed(&self) {
        for _ in 0..1000 {
            let status = self.status().await;
            if status["processed_offset"] == status["log_end_offset"] {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the processor did not catch up: {}", self.status().await);
    }
}

/// Log lines written while `during` runs.
pub(crate) fn logged(during: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, during);
    String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
}
