//! Endpoints Portcullis answers itself: liveness and "who am I".
//!
//! `whoami` is the connection test integration platforms run when a partner saves a key:
//! it shows the organization, the key's public prefix and environment, and every scope the
//! policy knows mapped to whether this key holds it, so a wrapper can shape its UI.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::body::{full_body, ProxyBody};
use crate::gate::authn::Authenticated;
use crate::policy::Policy;
use crate::state::State;

/// `200 {"status":"ok"}` while the process serves; `503 {"status":"unavailable"}` with a
/// fixed `reason` while it cannot do its job safely: the state store has failed (every
/// request needing it is refused) or the audit trail cannot be written (records wait in
/// memory, and requests will be refused once the queue is full). A load balancer or monitor
/// then takes the instance out before partners meet the refusals.
pub fn health(state: &State) -> Response<ProxyBody> {
    let body: &[u8] = if state.store.has_failed() {
        br#"{"status":"unavailable","reason":"state store"}"#
    } else if state.audit.is_failing() {
        br#"{"status":"unavailable","reason":"audit trail"}"#
    } else {
        return json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec());
    };
    json(StatusCode::SERVICE_UNAVAILABLE, body.to_vec())
}

#[derive(Serialize)]
struct WhoAmI<'a> {
    organization: Organization<'a>,
    key: Key<'a>,
    env: &'static str,
    scopes: BTreeMap<&'a str, bool>,
}

#[derive(Serialize)]
struct Organization<'a> {
    id: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct Key<'a> {
    id: String,
    prefix: String,
    label: Option<&'a str>,
    created_at: String,
    expires_at: Option<String>,
}

/// The caller's identity and permissions.
pub fn whoami(caller: &Authenticated, policy: &Policy) -> Response<ProxyBody> {
    let key = &caller.key;
    let scopes = policy
        .scopes()
        .iter()
        .map(|scope| (scope.as_str(), key.scopes.contains(scope)))
        .collect();
    let document = WhoAmI {
        organization: Organization {
            id: &caller.org.id,
            name: &caller.org.name,
        },
        key: Key {
            id: key.id.to_string(),
            prefix: key.display_prefix(),
            label: key.label.as_deref(),
            created_at: rfc3339(key.created_at),
            expires_at: key.expires_at.map(rfc3339),
        },
        env: key.env.as_str(),
        scopes,
    };
    match serde_json::to_vec(&document) {
        Ok(body) => json(StatusCode::OK, body),
        Err(_) => json(StatusCode::INTERNAL_SERVER_ERROR, b"{}".to_vec()),
    }
}

/// Unix seconds as ISO-8601 UTC (`2026-11-23T08:00:00Z`).
pub fn rfc3339(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
