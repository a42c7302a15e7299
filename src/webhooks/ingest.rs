//! `POST /events` on the internal listener: the backend says "this happened".
//!
//! The backend authenticates with `Authorization: Bearer <token>`, the token being the
//! contents of `webhooks.ingest_token_file` (read on each request, so replacing the file
//! rotates it; compared in constant time). The body is `{"org": "...", "type": "...",
//! "data": {...}}`, at most `webhooks.max_event_bytes`. The organization must exist and the
//! type must be one of `webhooks.event_types` (`audit.event` is produced by Portcullis alone
//! and cannot be posted).
//!
//! The event and one pending delivery per matching active subscription are written in one
//! batch and flushed before the answer, `202 {"id": "evt_…", "deliveries": N}`: an event
//! that was acknowledged survives a crash. `data` is never logged, never put in a problem
//! detail and is sealed at rest (see [`super::outbox`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::outbox::NewEvent;
use super::AUDIT_EVENT_TYPE;
use crate::body::{full_body, BoxError, ProxyBody};
use crate::internal::InternalProblem;
use crate::problem::ProblemCode;
use crate::state::State;

/// The ingest path on the internal listener.
pub const EVENTS_PATH: &str = "/events";

/// How long the backend may take to send a body once the headers are in.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a refused-for-now event's `Retry-After` says: long enough for an operator's disk
/// alert to matter, short enough that a backend's retry loop does not stall.
const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 5;

/// Shortest token accepted in the token file; a shorter one refuses every request.
const MIN_TOKEN_LEN: usize = 16;

/// An event as posted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Posted {
    org: String,
    #[serde(rename = "type")]
    event_type: String,
    data: serde_json::Value,
}

/// Answers `POST /events`.
pub async fn handle<B>(
    state: &Arc<State>,
    request: Request<B>,
) -> Result<Response<ProxyBody>, InternalProblem>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let policy = state.policies.current();
    let config = &policy.config.webhooks;
    if !config.enabled {
        return Err(InternalProblem::not_found());
    }
    authorize(request.headers(), config.ingest_token_file.as_deref()).await?;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    let max = config.max_event_bytes;
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large(max));
    }
    let body = read(request.into_body(), max).await?;
    let posted: Posted = serde_json::from_slice(&body).map_err(|_| {
        problem(
            ProblemCode::WebhookInvalidEvent,
            "the body must be a JSON object with exactly the members org, type and data",
        )
    })?;
    if !posted.data.is_object() {
        return Err(problem(
            ProblemCode::WebhookInvalidEvent,
            "`data` must be a JSON object",
        ));
    }
    if state.orgs.get(&posted.org).is_none() {
        return Err(problem(
            ProblemCode::WebhookUnknownOrg,
            "no organization has this id",
        ));
    }
    if posted.event_type == AUDIT_EVENT_TYPE || !config.event_types.contains(&posted.event_type) {
        return Err(problem(
            ProblemCode::WebhookUnknownEvent,
            "the event type is not one of webhooks.event_types",
        ));
    }
    let data = serde_json::to_vec(&posted.data).map_err(|_| unavailable())?;
    let now = state.deliveries.now_ms();
    let writer = state.clone();
    let accepted = tokio::task::spawn_blocking(move || {
        let subscriptions = writer
            .subscriptions
            .matching(&posted.org, &posted.event_type)
            .map_err(|error| error.to_string())?;
        let ids: Vec<String> = subscriptions.iter().map(ToString::to_string).collect();
        let event = NewEvent {
            org: &posted.org,
            event_type: &posted.event_type,
            data: &data,
        };
        writer
            .deliveries
            .outbox()
            .accept(&event, &ids, now)
            .map_err(|error| error.to_string())
    })
    .await
    .map_err(|_| unavailable())?;
    let (id, deliveries) = accepted.map_err(|error| {
        tracing::error!(%error, "cannot write an event to the webhook outbox");
        unavailable()
    })?;
    if !deliveries.is_empty() {
        state.deliveries.wake();
    }
    let body = format!("{{\"id\":\"{id}\",\"deliveries\":{}}}", deliveries.len());
    let mut response = Response::new(full_body(body));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Checks the bearer token against the token file, in constant time.
async fn authorize(
    headers: &http::HeaderMap,
    token_file: Option<&std::path::Path>,
) -> Result<(), InternalProblem> {
    let Some(presented) = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(crate::gate::authn::bearer_token)
    else {
        return Err(problem(
            ProblemCode::AuthMissing,
            "send the ingest token as Authorization: Bearer <token>",
        ));
    };
    let expected = match token_file {
        Some(path) => tokio::fs::read_to_string(path).await.ok(),
        None => None,
    };
    let Some(expected) = expected
        .as_deref()
        .map(str::trim)
        .filter(|token| token.len() >= MIN_TOKEN_LEN)
    else {
        tracing::error!(
            "the webhook ingest token file is missing, unreadable or too short; \
             every event is refused"
        );
        return Err(problem(
            ProblemCode::AuthInvalid,
            "the ingest token is not valid",
        ));
    };
    // Hashing first makes the comparison independent of the lengths too.
    let same: bool = Sha256::digest(presented.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into();
    if same {
        Ok(())
    } else {
        Err(problem(
            ProblemCode::AuthInvalid,
            "the ingest token is not valid",
        ))
    }
}

/// Reads the whole body, refusing more than `max` bytes or a sender slower than
/// [`BODY_READ_TIMEOUT`].
async fn read<B>(body: B, max: usize) -> Result<Bytes, InternalProblem>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, max).collect())
        .await
        .map_err(|_| {
            problem(
                ProblemCode::BodyIncomplete,
                "the event body did not arrive in time",
            )
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large(max)),
        Err(_) => Err(problem(
            ProblemCode::BodyIncomplete,
            "the event body could not be read",
        )),
    }
}

fn too_large(max: usize) -> InternalProblem {
    problem(
        ProblemCode::RequestTooLarge,
        format!("an event may be at most {max} bytes (webhooks.max_event_bytes)"),
    )
}

fn unavailable() -> InternalProblem {
    problem(
        ProblemCode::WebhookUnavailable,
        "the event could not be stored; retry shortly",
    )
    .with_retry_after(UNAVAILABLE_RETRY_AFTER_SECS)
}

/// A problem with one of the shared codes, on the internal listener.
fn problem(
    code: ProblemCode,
    detail: impl Into<std::borrow::Cow<'static, str>>,
) -> InternalProblem {
    InternalProblem::new(code.status(), code.as_str(), code.title(), detail)
}
