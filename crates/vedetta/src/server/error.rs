//! API errors: each maps to one HTTP status.
//!
//! Bad input gets the truth (a 4xx whose message says what to fix). An internal failure
//! gets a generic 500 and the detail goes to the log, not to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// What the request names does not exist (a silence id).
    #[error("{0}")]
    NotFound(String),
    /// The credentials are known but not for this request (a site key used from an origin
    /// the site does not list).
    #[error("{0}")]
    Forbidden(String),
    /// Over a per-client rate; the client should retry after the given seconds.
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u32 },
    /// The request is fine but the state does not allow it now (too many silences).
    #[error("{0}")]
    Conflict(String),
    /// The request body stalled, or arrived slower than the configured minimum rate.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A query string over the length a query endpoint reads.
    #[error("{0}")]
    UriTooLong(String),
    /// Over a backpressure bound; the client should retry after the given seconds.
    #[error("{message}")]
    Busy { message: String, retry_after_s: u32 },
    /// The disk under the log is full: nothing was stored; retry after the given seconds
    /// (space must be freed first). HTTP 507, with `Retry-After`.
    #[error("{message}")]
    InsufficientStorage { message: String, retry_after_s: u32 },
    /// Something broke inside; the detail is logged, the client sees a generic message.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A KPI store failure: a full disk or a reopen in progress is temporary (503 with
    /// `Retry-After`, the processor is recovering); anything else is an internal error.
    #[allow(clippy::needless_pass_by_value)] // an adapter for `map_err`
    pub fn from_store(error: vedetta_store::StoreError) -> ApiError {
        Self::from_storage("KPI store", error.is_temporary(), &error)
    }

    /// An event log failure read by a handler (the quarantine): the same rule as
    /// [`ApiError::from_store`].
    #[allow(clippy::needless_pass_by_value)] // an adapter for `map_err`
    pub fn from_log(error: vedetta_store::LogError) -> ApiError {
        Self::from_storage("event log", error.is_temporary(), &error)
    }

    /// An alert store (`watch.redb`) failure: a full disk is 507 with `Retry-After`
    /// (nothing was changed); a storage failure being recovered from is 503, as for the
    /// KPI store; anything else is an internal error.
    #[allow(clippy::needless_pass_by_value)] // an adapter for `map_err`
    pub fn from_watch_store(error: vedetta_store::WatchStoreError) -> ApiError {
        Self::from_watch(
            "alert store",
            error.is_storage_full(),
            error.is_retryable(),
            &error,
        )
    }

    /// An outbox failure (it lives in `watch.redb`): the same rule as
    /// [`ApiError::from_watch_store`].
    #[allow(clippy::needless_pass_by_value)] // an adapter for `map_err`
    pub fn from_outbox(error: vedetta_store::outbox::OutboxError) -> ApiError {
        Self::from_watch(
            "outbox",
            error.is_storage_full(),
            error.is_retryable(),
            &error,
        )
    }

    fn from_watch(
        what: &str,
        storage_full: bool,
        temporary: bool,
        error: &dyn std::fmt::Display,
    ) -> ApiError {
        if storage_full {
            tracing::warn!(%error, "a request met a full disk under the {what}");
            ApiError::InsufficientStorage {
                message: format!("the {what}'s disk is full; nothing was changed, retry later"),
                retry_after_s: 30,
            }
        } else {
            Self::from_storage(what, temporary, error)
        }
    }

    fn from_storage(what: &str, temporary: bool, error: &dyn std::fmt::Display) -> ApiError {
        if temporary {
            STORAGE_WARNINGS.warn(what, error, std::time::Instant::now());
            ApiError::Busy {
                message: format!("the {what} is recovering from a storage failure; retry shortly"),
                retry_after_s: 2,
            }
        } else {
            ApiError::Internal(error.to_string())
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage { .. } => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<vedetta_core::intake::gzip::GzipError> for ApiError {
    fn from(error: vedetta_core::intake::gzip::GzipError) -> Self {
        if error.is_too_large() {
            ApiError::PayloadTooLarge(error.to_string())
        } else {
            ApiError::BadRequest(error.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error answering a request");
        }
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        match &self {
            ApiError::Busy { retry_after_s, .. }
            | ApiError::RateLimited { retry_after_s, .. }
            | ApiError::InsufficientStorage { retry_after_s, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            ApiError::Unauthorized => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"vedetta\""),
                );
            }
            // The rest of the body is not read: the connection cannot carry another request.
            ApiError::RequestTimeout(_) => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// How often a request's temporary storage failure is logged at most: a store that is down
/// fails every request, and a dashboard's live view retries every 0.7 s, so a warning per
/// request flooded the log for as long as the outage lasted.
const STORAGE_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

static STORAGE_WARNINGS: StorageWarnings = StorageWarnings::new();

/// Logs requests' temporary storage failures at most once per [`STORAGE_WARNING_EVERY`],
/// with the number of those not logged since the last.
#[derive(Debug)]
struct StorageWarnings {
    /// When the last warning was logged, and the failures met since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl StorageWarnings {
    const fn new() -> Self {
        Self {
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    fn warn(&self, what: &str, error: &dyn std::fmt::Display, now: std::time::Instant) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, unlogged) = &mut *state;
        if last.is_some_and(|at| now.saturating_duration_since(at) < STORAGE_WARNING_EVERY) {
            *unlogged += 1;
            return;
        }
        tracing::warn!(
            %error,
            not_logged_since_the_last = *unlogged,
            "a request met a storage failure of the {what}"
        );
        *last = Some(now);
        *unlogged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vedetta_store::outbox::OutboxError;

    #[test]
    fn temporary_storage_failures_are_logged_once_per_interval_with_the_count_between() {
        let log = crate::server::test_support::logged(|| {
            let warnings = StorageWarnings::new();
            let start = std::time::Instant::now();
            for i in 0..100 {
                // A live view's retries during an outage: every 0.7 s, for 70 s.
                let now = start + std::time::Duration::from_millis(700 * i);
                warnings.warn("KPI store", &"the database is reopening", now);
            }
        });
        let lines: Vec<&str> = log.lines().collect();
        // At 0 s, then at the first retry 10 s or more after each logged one.
        assert_eq!(lines.len(), 7, "{log}");
        assert!(lines.iter().all(|l| l.contains("WARN")), "{log}");
        assert!(lines[0].contains("not_logged_since_the_last=0"), "{log}");
        assert!(lines[1].contains("not_logged_since_the_last=14"), "{log}");
    }

    #[test]
    fn a_full_disk_under_watch_redb_is_507_and_a_reopen_in_progress_503() {
        let full = ApiError::from_outbox(OutboxError::Io(std::io::Error::from_raw_os_error(28)));
        assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert!(
            full.into_response()
                .headers()
                .contains_key(header::RETRY_AFTER)
        );
        let eio = ApiError::from_outbox(OutboxError::Io(std::io::Error::from_raw_os_error(5)));
        assert_eq!(eio.status(), StatusCode::SERVICE_UNAVAILABLE);
        let reopening = ApiError::from_watch_store(vedetta_store::WatchStoreError::Unavailable(
            vedetta_store::reopen::Unavailable,
        ));
        assert_eq!(reopening.status(), StatusCode::SERVICE_UNAVAILABLE);
        let corrupt =
            ApiError::from_watch_store(vedetta_store::WatchStoreError::Corrupt("x".into()));
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
