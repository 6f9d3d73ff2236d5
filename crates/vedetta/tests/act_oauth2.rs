//! OAuth2 with rotating refresh tokens against a fake authorisation server that enforces
//! the contract (`fakes::oauth2`): every refresh rotates the refresh token and an old one
//! is `invalid_grant`; tokens expire; the receiver answers 401 to a stale token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fakes;

use fakes::oauth2::{FakeAuth, serve};
use std::sync::Arc;
use std::time::Duration;
use vedetta::watch::destination::{DeliveryError, Destination};
use vedetta::watch::destinations::DestinationConfig;
use vedetta::watch::destinations::webhook::Webhook;
use vedetta::watch::oauth2::TokenVault;
use vedetta_core::watch::notification::Notification;

fn note(id: &str) -> Notification {
    let mut n = Notification::example();
    n.id = id.into();
    n.destination = "crm-push".into();
    n
}

/// The destination exactly as the issue writes it, pointed at the fake.
fn config(base: &str, refresh_token: &str) -> vedetta::watch::destinations::WebhookConfig {
    let text = format!(
        r#"
        name = "crm-push"
        kind = "webhook"
        url = "{base}/vedetta/push"
        oauth2 = {{ token_url = "{base}/oauth/token", client_id = "vedetta", client_secret = "s3cret", refresh_token = "{refresh_token}" }}
        "#
    );
    match toml::from_str::<DestinationConfig>(&text).unwrap() {
        DestinationConfig::Webhook(c) => c,
        other => panic!("not a webhook: {other:?}"),
    }
}

fn vault(dir: &std::path::Path) -> Arc<TokenVault> {
    let crypto = Arc::new(vedetta::crypto::load(None, &[], dir).unwrap());
    Arc::new(TokenVault::open(dir, crypto).unwrap())
}

/// Asks the fake's token endpoint directly with `refresh_token`.
async fn raw_refresh(base: &str, refresh_token: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::Client::new()
        .post(format!("{base}/oauth/token"))
        .basic_auth("vedetta", Some("s3cret"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_persist_and_survive_a_restart() {
    let auth = FakeAuth::new("vedetta", "s3cret", Some("rt-initial"));
    let base = serve(auth.router()).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(dir.path());
    let cfg = config(&base, "rt-initial");

    let hook = Webhook::with_vault(&cfg, Some(vault.clone())).unwrap();
    hook.deliver(&note("n1")).await.unwrap();
    hook.deliver(&note("n2")).await.unwrap();
    // One refresh: the access token is cached; the refresh token rotated once.
    assert_eq!(auth.state.lock().unwrap().issued, 1);
    assert_eq!(auth.current_refresh().as_deref(), Some("rt-1"));
    // The file holds the new token, sealed: neither token is readable in it.
    let file = std::fs::read(vault.path("crm-push")).unwrap();
    assert!(!file.windows(4).any(|w| w == b"rt-1"));
    assert!(!file.windows(10).any(|w| w == b"rt-initial"));

    // The old refresh token is dead at the endpoint.
    let (status, body) = raw_refresh(&base, "rt-initial").await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid_grant"), "{body}");

    // A restart (a new client over the same vault, the configuration still naming the
    // initial token) uses the persisted token: no lockout.
    let restarted = Webhook::with_vault(&cfg, Some(vault.clone())).unwrap();
    restarted.deliver(&note("n3")).await.unwrap();
    assert_eq!(auth.current_refresh().as_deref(), Some("rt-2"));

    // Without the vault the configured, rotated-away token is refused: this is the
    // lockout the vault prevents, and the error says what to do.
    let amnesiac = Webhook::new(&cfg).unwrap();
    match amnesiac.deliver(&note("n4")).await {
        Err(DeliveryError::Retry { reason, .. }) => {
            assert!(reason.contains("invalid_grant"), "{reason}");
            assert!(reason.contains("oauth2.refresh_token"), "{reason}");
            assert!(!reason.contains("rt-"), "no token in errors: {reason}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }

    // Re-authorised: a new configured refresh token replaces the persisted one.
    auth.state.lock().unwrap().current_refresh = Some("rt-reauth".into());
    let reauthorised = Webhook::with_vault(&config(&base, "rt-reauth"), Some(vault)).unwrap();
    reauthorised.deliver(&note("n5")).await.unwrap();
    let state = auth.state.lock().unwrap();
    let keys: Vec<&str> = state.received.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["n1", "n2", "n3", "n5"]);
    assert_eq!(state.duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_before_expiry_and_once_after_a_401() {
    let auth = FakeAuth::new("vedetta", "s3cret", Some("rt-initial"));
    *auth.lifetime.lock().unwrap() = Duration::from_secs(2);
    let base = serve(auth.router()).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::with_vault(&config(&base, "rt-initial"), Some(vault(dir.path()))).unwrap();

    hook.deliver(&note("a")).await.unwrap();
    // 2 s tokens are refreshed 0.2 s before they expire: no call carries a stale one.
    tokio::time::sleep(Duration::from_millis(1_850)).await;
    hook.deliver(&note("b")).await.unwrap();
    {
        let state = auth.state.lock().unwrap();
        assert_eq!(state.issued, 2, "refreshed before expiry");
        assert_eq!(state.push_statuses, [200, 200], "no 401 on the way");
    }

    // Revoked early: the 401 refreshes once and the call is retried in the same attempt.
    auth.revoke_access();
    hook.deliver(&note("c")).await.unwrap();
    {
        let state = auth.state.lock().unwrap();
        assert_eq!(state.issued, 3);
        assert_eq!(state.push_statuses, [200, 200, 401, 200]);
    }

    // A receiver that refuses even a fresh token: refreshed once, never looped.
    let refreshes_before = auth.state.lock().unwrap().issued;
    *auth.lifetime.lock().unwrap() = Duration::ZERO;
    match hook.deliver(&note("d")).await {
        Err(DeliveryError::Retry { reason, .. }) => assert!(reason.contains("401"), "{reason}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    assert_eq!(auth.state.lock().unwrap().issued, refreshes_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_never_spend_one_refresh_token_twice() {
    let auth = FakeAuth::new("vedetta", "s3cret", Some("rt-initial"));
    let base = serve(auth.router()).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(
        Webhook::with_vault(&config(&base, "rt-initial"), Some(vault(dir.path()))).unwrap(),
    );
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let hook = hook.clone();
            tokio::spawn(async move { hook.deliver(&note(&format!("c{i}"))).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    {
        let state = auth.state.lock().unwrap();
        assert_eq!(state.issued, 1, "one refresh for 16 concurrent calls");
        assert!(state.token_statuses.iter().all(|&s| s == 200));
        assert_eq!(state.received.len(), 16);
    }
    // Revoked: 16 concurrent 401s cost one refresh, not sixteen.
    auth.revoke_access();
    let calls: Vec<_> = (16..32)
        .map(|i| {
            let hook = hook.clone();
            tokio::spawn(async move { hook.deliver(&note(&format!("c{i}"))).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let state = auth.state.lock().unwrap();
    assert_eq!(state.issued, 2, "one refresh for 16 concurrent 401s");
    assert!(state.token_statuses.iter().all(|&s| s == 200));
    assert_eq!(state.received.len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_without_a_refresh_token_and_a_wrong_secret_is_a_retry() {
    let auth = FakeAuth::new("vedetta", "s3cret", None);
    let base = serve(auth.router()).await;
    let text = format!(
        "name = \"cc\"\nkind = \"webhook\"\nurl = \"{base}/vedetta/push\"\n\
         oauth2 = {{ token_url = \"{base}/oauth/token\", client_id = \"vedetta\", client_secret = \"s3cret\" }}\n"
    );
    let hook = vedetta::watch::destinations::build(&toml::from_str(&text).unwrap()).unwrap();
    hook.deliver(&note("x")).await.unwrap();
    assert_eq!(auth.state.lock().unwrap().refresh_issued.len(), 0);

    let wrong = text.replace("\"s3cret\"", "\"nope\"");
    let hook = vedetta::watch::destinations::build(&toml::from_str(&wrong).unwrap()).unwrap();
    match hook.deliver(&note("y")).await {
        Err(DeliveryError::Retry { reason, .. }) => {
            assert!(reason.contains("invalid_client"), "{reason}");
            assert!(!reason.contains("nope"), "no secret in errors: {reason}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    // The secret is not in Debug output either.
    assert!(
        !format!("{:?}", toml::from_str::<DestinationConfig>(&wrong).unwrap()).contains("nope")
    );
}

/// A token endpoint that rotates the refresh token (`rt-1` → `rt-2` → …) and records the
/// refresh token each request presents; its first answer is `first` with the new refresh
/// token spliced in, later ones are well-formed.
fn odd_token_endpoint(first: &'static str) -> (axum::Router, Arc<std::sync::Mutex<Vec<String>>>) {
    let presented = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = presented.clone();
    let router = axum::Router::new().route(
        "/oauth/token",
        axum::routing::post(move |body: String| {
            let seen = seen.clone();
            async move {
                let token = body
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("refresh_token="))
                    .unwrap_or("")
                    .to_owned();
                let mut seen = seen.lock().unwrap();
                seen.push(token);
                let next = format!("rt-{}", seen.len() + 1);
                let answer = if seen.len() == 1 {
                    first.replace("NEXT", &next)
                } else {
                    format!(
                        r#"{{"access_token":"a{}","expires_in":3600,"refresh_token":"{next}"}}"#,
                        seen.len()
                    )
                };
                ([("content-type", "application/json")], answer)
            }
        }),
    );
    (router, presented)
}

/// The token endpoint rotated the refresh token (the old one is dead there) but something
/// else in its answer is odd: `expires_in` as a string (as Azure AD v1 writes it) or out
/// of a double's range (`1e400`, which serde_json refuses as a number), or an empty access
/// token. Before the fix the whole answer was dropped, the new refresh token
/// with it, and the next refresh presented the dead one: locked out for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_is_kept_even_when_the_rest_of_the_answer_is_odd() {
    for first in [
        r#"{"access_token":"a1","expires_in":"3600","refresh_token":"NEXT"}"#,
        r#"{"access_token":"","expires_in":3600,"refresh_token":"NEXT"}"#,
        r#"{"access_token":"a1","expires_in":-5,"refresh_token":"NEXT"}"#,
        // Out of a double's range: not a number serde_json takes.
        r#"{"access_token":"a1","expires_in":1e400,"refresh_token":"NEXT"}"#,
        r#"{"access_token":"a1","expires_in":-1e400,"refresh_token":"NEXT"}"#,
    ] {
        let (router, presented) = odd_token_endpoint(first);
        let base = serve(router).await;
        let config: vedetta::watch::oauth2::OAuth2Config = toml::from_str(&format!(
            "token_url = \"{base}/oauth/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             refresh_token = \"rt-1\"\n"
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client =
            vedetta::watch::oauth2::OAuth2Client::new("odd", config, Some(vault(dir.path())));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        // The first answer may or may not give a usable access token; either way the next
        // refresh must present the rotated refresh token.
        let _ = client.token(&http, true).await;
        client.token(&http, true).await.unwrap();
        assert_eq!(
            *presented.lock().unwrap(),
            ["rt-1", "rt-2"],
            "answer {first}"
        );
    }
}

/// A token endpoint whose error echoes what it was sent (the refresh token, the client
/// secret): the excerpt of its answer went into the retry's reason, hence into logs, the
/// outbox's last error and `/v1/triggers`. Secrets are scrubbed from it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_echoing_the_secrets_does_not_put_them_in_errors() {
    let router = axum::Router::new().route(
        "/oauth/token",
        axum::routing::post(|| async {
            (
                axum::http::StatusCode::BAD_REQUEST,
                r#"{"error":"invalid_grant","error_description":"refresh token rt-Secret-42 is unknown for client secret cs-Hidden-7"}"#,
            )
        }),
    );
    let base = serve(router).await;
    let config: vedetta::watch::oauth2::OAuth2Config = toml::from_str(&format!(
        "token_url = \"{base}/oauth/token\"\nclient_id = \"c\"\nclient_secret = \"cs-Hidden-7\"\n\
         refresh_token = \"rt-Secret-42\"\nclient_auth = \"post\"\n"
    ))
    .unwrap();
    let client = vedetta::watch::oauth2::OAuth2Client::new("echo", config, None);
    let _ = rustls::crypto::ring::default_provider().install_default();
    match client.token(&reqwest::Client::new(), false).await {
        Err(DeliveryError::Retry { reason, .. }) => {
            assert!(reason.contains("invalid_grant"), "{reason}");
            assert!(
                !reason.contains("rt-Secret-42") && !reason.contains("cs-Hidden-7"),
                "{reason}"
            );
        }
        other => panic!("expected a retry, got {other:?}"),
    }
}

/// A protected receiver whose refusal echoes the bearer token it was shown: the excerpt of
/// its answer went into the refusal, hence into logs and the dead-letter list. The access
/// token (and the other OAuth2 secrets) are scrubbed from it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_echoing_the_access_token_does_not_put_it_in_errors() {
    let router = axum::Router::new()
        .route(
            "/oauth/token",
            axum::routing::post(|| async {
                (
                    [("content-type", "application/json")],
                    r#"{"access_token":"at-Leaky-99","expires_in":3600}"#,
                )
            }),
        )
        .route(
            "/vedetta/push",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::FORBIDDEN,
                    "token at-Leaky-99 lacks the scope push",
                )
            }),
        );
    let base = serve(router).await;
    let text = format!(
        "name = \"leaky\"\nkind = \"webhook\"\nurl = \"{base}/vedetta/push\"\n\
         oauth2 = {{ token_url = \"{base}/oauth/token\", client_id = \"c\", client_secret = \"s3cret\" }}\n"
    );
    let hook = vedetta::watch::destinations::build(&toml::from_str(&text).unwrap()).unwrap();
    match hook.deliver(&note("leak")).await {
        Err(DeliveryError::Refused { reason }) => {
            assert!(reason.contains("403"), "{reason}");
            assert!(!reason.contains("at-Leaky-99"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
