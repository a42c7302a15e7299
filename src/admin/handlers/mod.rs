//! The admin endpoints: one function per method and path, all answering JSON.
//!
//! Every request is refused unless its peer may administer this instance, then routed, then
//! handled. Handlers that change state run the registry call (which flushes to disk) on the
//! blocking pool, and record the change in the admin log with the peer's uid as the actor
//! before they answer.

mod actions;
mod keys;
mod orgs;
mod reload;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::problem::{AdminCode, AdminProblem};
use super::router::{self, Route};
use crate::body::{full_body, BoxError, ProxyBody};
use crate::reload::Reloader;
use crate::request_id::{RequestId, REQUEST_ID_HEADER};
use crate::state::State;

/// The largest request body the admin API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a client may take to send its body once the headers are in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is acting: the uid of the peer process, as the kernel reported it for the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The peer's user id (`SO_PEERCRED`).
    pub uid: u32,
    /// Whether that uid may administer this instance.
    pub allowed: bool,
}

impl Peer {
    /// The actor recorded in the admin log and as BAA `recorded_by`: `uid:<n>`.
    pub fn actor(&self) -> String {
        format!("uid:{}", self.uid)
    }
}

/// Answers one admin request. `reloader` is `None` when the instance has no policy file to
/// reload (the demo).
pub async fn handle<B>(
    request: Request<B>,
    state: Arc<State>,
    reloader: Option<Arc<Reloader>>,
    peer: Peer,
) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let request_id = RequestId::generate();
    let method = request.method().clone();
    let mut response = match dispatch(request, state, reloader, peer).await {
        Ok(response) => response,
        Err(problem) => {
            tracing::debug!(%method, code = problem.code().as_str(), "admin request refused");
            problem.into_response(request_id.as_str())
        }
    };
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER, request_id.header_value());
    response
}

async fn dispatch<B>(
    request: Request<B>,
    state: Arc<State>,
    reloader: Option<Arc<Reloader>>,
    peer: Peer,
) -> Result<Response<ProxyBody>, AdminProblem>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if !peer.allowed {
        tracing::warn!(
            uid = peer.uid,
            "admin request from a uid that does not own the socket refused"
        );
        return Err(AdminProblem::new(
            AdminCode::Forbidden,
            "only the user running portcullis (or root) may use its admin socket",
        ));
    }
    let route = router::route(request.uri().path())?;
    let query = request.uri().query().map(str::to_owned);
    let query = query.as_deref();
    let method = request.method().clone();
    let body = request.into_body();
    let ctx = Context {
        state,
        reloader,
        peer,
    };
    match (&method, route) {
        (&Method::GET, Route::Keys) => keys::list(&ctx, query),
        (&Method::POST, Route::Keys) => keys::create(ctx, read_json(body).await?).await,
        (&Method::GET, Route::Key(id)) => {
            no_query(query)?;
            keys::show(&ctx, id)
        }
        (&Method::PATCH, Route::Key(id)) => keys::update(ctx, id, read_json(body).await?).await,
        (&Method::POST, Route::KeyRotate(id)) => {
            keys::rotate(ctx, id, read_json_or_empty(body).await?).await
        }
        (&Method::POST, Route::KeyRevoke(id)) => {
            keys::revoke(ctx, id, read_json_or_empty(body).await?).await
        }
        (&Method::GET, Route::Orgs) => {
            no_query(query)?;
            orgs::list(&ctx)
        }
        (&Method::POST, Route::Orgs) => orgs::create(ctx, read_json(body).await?).await,
        (&Method::GET, Route::Org(id)) => {
            no_query(query)?;
            orgs::show(&ctx, &id)
        }
        (&Method::PATCH, Route::Org(id)) => orgs::update(ctx, id, read_json(body).await?).await,
        (&Method::POST, Route::OrgBaa(id)) => {
            orgs::record_baa(ctx, id, read_json(body).await?).await
        }
        (&Method::GET, Route::AdminActions) => actions::list(ctx, query).await,
        (&Method::GET, Route::WebhookDlq) => webhooks::list(ctx, query).await,
        (&Method::POST, Route::WebhookRedeliver) => {
            no_query(query)?;
            webhooks::redeliver(ctx, read_json(body).await?).await
        }
        (&Method::POST, Route::Reload) => {
            no_query(query)?;
            let _: crate::admin::protocol::ReloadRequest = read_json_or_empty(body).await?;
            reload::reload(&ctx).await
        }
        (_, route) => Err(AdminProblem::method_not_allowed(route.allowed_methods())),
    }
}

/// What every handler needs.
pub(super) struct Context {
    state: Arc<State>,
    reloader: Option<Arc<Reloader>>,
    peer: Peer,
}

fn no_query(query: Option<&str>) -> Result<(), AdminProblem> {
    router::query(query, &[]).map(drop)
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`] or a sender slower than
/// [`BODY_READ_TIMEOUT`].
async fn read_body<B>(body: B) -> Result<Bytes, AdminProblem>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        AdminProblem::new(
            AdminCode::TooLarge,
            format!("the admin API accepts bodies of at most {MAX_BODY_BYTES} bytes"),
        )
    };
    if body
        .size_hint()
        .exact()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await
    .map_err(|_| {
        AdminProblem::new(
            AdminCode::Timeout,
            "the request body did not arrive in time",
        )
    })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large()),
        Err(_) => Err(AdminProblem::new(
            AdminCode::Malformed,
            "the request body could not be read",
        )),
    }
}

/// Reads a JSON body into `T`.
async fn read_json<T, B>(body: B) -> Result<T, AdminProblem>
where
    T: DeserializeOwned,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    parse_json(&read_body(body).await?)
}

/// Reads a JSON body into `T`, taking an empty body as `{}`.
async fn read_json_or_empty<T, B>(body: B) -> Result<T, AdminProblem>
where
    T: DeserializeOwned,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let bytes = read_body(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        parse_json(b"{}")
    } else {
        parse_json(&bytes)
    }
}

/// Parses JSON, explaining what was wrong in serde's words (which name fields and positions)
/// with anything unprintable removed, since the caller's terminal shows it.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminProblem> {
    serde_json::from_slice(bytes).map_err(|error| {
        let message: String = error
            .to_string()
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        AdminProblem::new(
            AdminCode::Malformed,
            format!("the request body is not valid: {message}"),
        )
    })
}

/// A JSON answer.
fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Response<ProxyBody>, AdminProblem> {
    let body = serde_json::to_vec(value).map_err(|error| {
        tracing::error!(%error, "cannot encode an admin answer");
        AdminProblem::internal()
    })?;
    let length = body.len();
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

/// Runs a registry change (which writes and flushes the store) off the async workers.
async fn blocking<T, F>(work: F) -> Result<T, AdminProblem>
where
    F: FnOnce() -> Result<T, AdminProblem> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| {
            tracing::error!(%error, "an admin operation panicked or was cancelled");
            Err(AdminProblem::internal())
        })
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    #[tokio::test]
    async fn bodies_are_capped_and_parsed() {
        let ok: serde_json::Value = read_json(Full::new(Bytes::from_static(b"{\"a\":1}")))
            .await
            .unwrap();
        assert_eq!(ok["a"], 1);

        let big = Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]);
        let problem = read_json::<serde_json::Value, _>(Full::new(big))
            .await
            .unwrap_err();
        assert_eq!(problem.code(), AdminCode::TooLarge);

        let exact = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_BODY_BYTES - 8));
        assert_eq!(exact.len(), MAX_BODY_BYTES);
        assert!(
            read_json::<serde_json::Value, _>(Full::new(Bytes::from(exact)))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn malformed_json_is_400_with_a_clean_message() {
        let problem = read_json::<crate::admin::protocol::CreateOrgRequest, _>(Full::new(
            Bytes::from_static(b"{\"id\":\"acme\",\"nmae\":\"\x1b[2J\"}"),
        ))
        .await
        .unwrap_err();
        assert_eq!(problem.code(), AdminCode::Malformed);
        assert!(problem.detail().contains("nmae"), "{}", problem.detail());
        assert!(!problem.detail().chars().any(char::is_control));
    }

    #[tokio::test]
    async fn empty_bodies_count_as_empty_objects_where_allowed() {
        let rotate: crate::admin::protocol::RotateKeyRequest =
            read_json_or_empty(Full::new(Bytes::new())).await.unwrap();
        assert_eq!(rotate.grace_seconds, None);
        assert!(
            read_json::<crate::admin::protocol::RotateKeyRequest, _>(Full::new(Bytes::new()))
                .await
                .is_err()
        );
    }

    #[test]
    fn actor_is_the_uid() {
        let peer = Peer {
            uid: 1000,
            allowed: true,
        };
        assert_eq!(peer.actor(), "uid:1000");
    }
}
