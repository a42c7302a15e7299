//! The request pipeline: every request that reaches the listener goes through [`handle`].
//!
//! The order is fixed and visible here: limits, route, forward. Every answer, from a gate or
//! from the backend, leaves with an `X-Request-Id`, and every refusal is rendered as one
//! RFC 9457 problem document in one place.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{LimitTrip, LimitedBody, ProxyBody};
use crate::forward::{Destination, Outbound};
use crate::gate::limits;
use crate::policy::{Policy, PolicyHandle};
use crate::problem::{Problem, ProblemCode};
use crate::request_id::{RequestId, REQUEST_ID_HEADER};

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
}

/// Answers one request. Never fails: every error becomes a problem document.
pub async fn handle(
    request: Request<Incoming>,
    conn: Arc<ConnInfo>,
    policies: PolicyHandle,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let policy = policies.current();
    let request_id = RequestId::from_headers(request.headers());
    let method = request.method().clone();

    let (route, outcome) = process(request, &conn, &policy, &request_id).await;
    let mut response = match outcome {
        Ok(response) => response,
        Err(problem) => {
            tracing::info!(
                request_id = %request_id,
                method = %method,
                route = route.unwrap_or("-"),
                code = problem.code().as_str(),
                "request refused"
            );
            problem.into_response(request_id.as_str())
        }
    };
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER, request_id.header_value());
    tracing::debug!(
        request_id = %request_id,
        method = %method,
        route = route.unwrap_or("-"),
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        "request answered"
    );
    Ok(response)
}

/// The gates in order. Returns the matched route's name (never the raw path) for logging.
async fn process<'p>(
    request: Request<Incoming>,
    conn: &ConnInfo,
    policy: &'p Policy,
    request_id: &RequestId,
) -> (Option<&'p str>, Result<Response<ProxyBody>, Problem>) {
    let server = &policy.config.server;
    if let Err(problem) = limits::check_headers(request.headers(), server) {
        return (None, Err(problem));
    }
    let route = match policy.route(request.method(), request.uri().path()) {
        Ok(Some(route)) => route,
        Ok(None) => {
            let problem = Problem::new(ProblemCode::RouteUnknown)
                .with_detail("no route of this API matches the request");
            return (None, Err(problem));
        }
        Err(invalid) => {
            let problem = Problem::new(ProblemCode::InvalidPath).with_detail(invalid.to_string());
            return (None, Err(problem));
        }
    };
    let name = Some(route.name.as_str());
    if let Err(problem) = limits::check_declared_length(request.headers(), server.max_body_bytes) {
        return (name, Err(problem));
    }

    let trip = LimitTrip::default();
    let limit = server.max_body_bytes;
    let request = request.map(|body| LimitedBody::new(body, limit, trip.clone()).boxed());
    let outbound = Outbound {
        request_id,
        client_ip: conn.peer.ip(),
        destination: Destination::Production,
    };
    let forwarded = policy.forwarder.forward(request, &outbound, &trip).await;
    (name, forwarded)
}
