//! Which endpoint of the internal listener a request names.
//!
//! One plain match on method and path: adding an endpoint is adding two arms (the handler,
//! and the `405` for the path's other methods). Handlers take the state and the request and
//! return a complete answer; refusals are [`InternalProblem`]s.

use std::sync::Arc;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::problem::InternalProblem;
use crate::body::{full_body, ProxyBody};
use crate::metrics;
use crate::request_id::{RequestId, REQUEST_ID_HEADER};
use crate::state::State;
use crate::webhooks;

/// The Prometheus scrape endpoint.
pub const METRICS_PATH: &str = "/metrics";

/// Answers one request on the internal listener. Never fails: every refusal is a problem
/// document, and every answer carries an `X-Request-Id`.
pub async fn handle(state: &Arc<State>, request: Request<Incoming>) -> Response<ProxyBody> {
    let request_id = RequestId::generate();
    let method = request.method().clone();
    let answer = match (&method, request.uri().path()) {
        (&Method::GET, METRICS_PATH) => metrics(state, request).await,
        (_, METRICS_PATH) => Err(InternalProblem::method_not_allowed("GET")),
        (&Method::POST, webhooks::ingest::EVENTS_PATH) => {
            webhooks::ingest::handle(state, request).await
        }
        (_, webhooks::ingest::EVENTS_PATH) => Err(InternalProblem::method_not_allowed("POST")),
        _ => Err(InternalProblem::not_found()),
    };
    let mut response = match answer {
        Ok(response) => response,
        Err(problem) => {
            // The code, not the path: paths are not logged anywhere.
            tracing::info!(
                request_id = %request_id,
                method = %method,
                code = problem.code(),
                "internal request refused"
            );
            problem.into_response(request_id.as_str())
        }
    };
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER, request_id.header_value());
    response
}

/// `GET /metrics`: every family in the Prometheus text format.
async fn metrics(
    state: &Arc<State>,
    _request: Request<Incoming>,
) -> Result<Response<ProxyBody>, InternalProblem> {
    state
        .metrics
        .set_audit_queue_depth(state.audit.queue_depth());
    let text = state.metrics.render().map_err(|_| {
        InternalProblem::new(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal.metrics_unavailable",
            "Metrics unavailable",
            "the metrics could not be rendered",
        )
    })?;
    let mut response = Response::new(full_body(text));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
