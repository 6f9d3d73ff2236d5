//! `GET /v1/tracker.js`: the browser tracker (`assets/tracker/tracker.js`), compiled into
//! the binary.
//!
//! Public (a page loads it with a plain script tag, no key), cacheable: a strong `ETag`
//! from its content, `Cache-Control: public, max-age=3600`, so a browser revalidates once
//! an hour and gets a 304 until the binary changes. Served gzip-compressed to clients that
//! accept it (about 2 KB; the bound is 3 KB).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::OnceLock;

pub const TRACKER_JS: &str = include_str!("../../assets/tracker/tracker.js");

struct Compiled {
    etag: HeaderValue,
    gzip: Vec<u8>,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let digest = Sha256::digest(TRACKER_JS.as_bytes());
        let etag = format!("\"{}\"", vedetta_core::privacy::encode_hex(&digest[..12]));
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing to a Vec cannot fail.
        let gzip = encoder
            .write_all(TRACKER_JS.as_bytes())
            .and_then(|()| encoder.finish())
            .unwrap_or_default();
        Compiled {
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
            gzip,
        }
    })
}

/// The compressed size, for the size test and the docs.
pub fn gzip_len() -> usize {
    compiled().gzip.len()
}

pub async fn get_tracker(headers: HeaderMap) -> Response {
    let compiled = compiled();
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|tag| {
                tag.trim() == "*" || tag.trim().trim_start_matches("W/") == compiled.etag
            })
        });
    let gzip = !compiled.gzip.is_empty()
        && headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',').any(|coding| {
                    let mut parts = coding.split(';');
                    let name = parts.next().unwrap_or("").trim();
                    let refused = parts.any(|p| {
                        p.trim()
                            .strip_prefix("q=")
                            .and_then(|q| q.trim().parse::<f32>().ok())
                            == Some(0.0)
                    });
                    name.eq_ignore_ascii_case("gzip") && !refused
                })
            });
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gzip {
        let mut response = compiled.gzip.clone().into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response
    } else {
        TRACKER_JS.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(header::ETAG, compiled.etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Pages of other origins load it with a script tag.
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    response
}
