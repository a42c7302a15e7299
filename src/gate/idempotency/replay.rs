//! Which parts of an answer are kept, and how a kept answer is served again.
//!
//! A replay must look like the original answer, so status, body and the backend's own header
//! fields are kept. Fields that describe the connection or the moment rather than the answer
//! are not: hop-by-hop fields (the forwarder's own list), `Date`, `Content-Length` (recomputed
//! from the body), the rate-limit fields and `X-Request-Id` (each answer carries its own,
//! current values), and any `Idempotent-Replayed` the backend sent.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, DATE};
use http::{HeaderMap, Response, StatusCode};

use super::record::StoredResponse;
use crate::body::{full_body, ProxyBody};
use crate::forward::headers::strip_hop_by_hop;
use crate::request_id::REQUEST_ID_HEADER;

/// Marks an answer served from the cache (IETF Idempotency-Key draft, Stripe).
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The answer's header fields worth replaying, in order.
pub fn replayable_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut kept = headers.clone();
    strip_hop_by_hop(&mut kept);
    kept.iter()
        .filter(|(name, _)| is_replayable(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

fn is_replayable(name: &HeaderName) -> bool {
    let name = name.as_str();
    !(name == DATE.as_str()
        || name == CONTENT_LENGTH.as_str()
        || name == REQUEST_ID_HEADER
        || name == REPLAYED_HEADER.as_str()
        || name.starts_with("x-ratelimit-")
        || name.starts_with("ratelimit"))
}

/// A kept answer for `status`, `headers` and `body`.
pub fn stored(status: StatusCode, headers: &HeaderMap, body: Bytes) -> StoredResponse {
    StoredResponse {
        status,
        headers: replayable_headers(headers),
        body,
    }
}

/// Serves a kept answer again, marked `Idempotent-Replayed: true`.
pub fn response(stored: StoredResponse) -> Response<ProxyBody> {
    let length = stored.body.len();
    let mut response = Response::new(full_body(stored.body));
    *response.status_mut() = stored.status;
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        headers.append(name, value);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn only_answer_fields_are_kept_and_replays_are_marked() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("location", "/v1/patients/link/42"),
            ("set-cookie", "a=1"),
            ("date", "Mon, 01 Jan 2030 00:00:00 GMT"),
            ("content-length", "2"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-request-id", "9f1c1b4e-2d7a-4c3b-8e5f-0a1b2c3d4e5f"),
            ("x-ratelimit-remaining", "3"),
            ("ratelimit", "\"default\";r=3;t=1"),
            ("ratelimit-policy", "\"default\";q=600;w=60"),
            ("idempotent-replayed", "false"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        let kept = stored(StatusCode::CREATED, &headers, Bytes::from_static(b"{}"));
        let names: Vec<&str> = kept.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "location", "set-cookie", "set-cookie"]
        );

        let replay = response(kept);
        assert_eq!(replay.status(), StatusCode::CREATED);
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        assert_eq!(replay.headers()["content-length"], "2");
        assert_eq!(replay.headers().get_all("set-cookie").iter().count(), 2);
        let body = replay.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{}");
    }
}
