//! The request pipeline: every request that reaches the listener goes through [`handle`].
//!
//! The order is fixed and visible in `process`: limits, built-in health, keys in URLs,
//! client address, authentication, the key's rate limit, production gating, built-in whoami,
//! route, scope, body limit, the route class's rate limit and the daily quotas, the
//! idempotency key (replaying a cached answer, or recording the answer of the forward), forward.
//! Every answer, from a gate or from the backend, leaves with an `X-Request-Id`, every answer
//! to an authenticated key with its rate-limit headers, and every refusal is rendered as one
//! RFC 9457 problem document in one place. Every request reserves its audit record before the
//! first gate runs and hands it over with the answer (see [`crate::audit`]); with no room in
//! the audit trail the request is refused with `503 audit.unavailable` before anything else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::audit::{self, RequestAudit, RouteName};
use crate::body::{LimitTrip, LimitedBody, ProxyBody};
use crate::builtin;
use crate::forward::headers::Identity;
use crate::forward::{Destination, Outbound};
use crate::gate::idempotency::Admission;
use crate::gate::ratelimit::RateStatus;
use crate::gate::{authn, client_ip, gating, limits, scope};
use crate::keys::Env;
use crate::metrics::{IdempotencyOutcome, LimitKind, NO_ROUTE};
use crate::orgs::OrgRecord;
use crate::policy::Policy;
use crate::problem::{Problem, ProblemCode};
use crate::request_id::{RequestId, REQUEST_ID_HEADER};
use crate::state::State;
use crate::webhooks;

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer, or the client named by a trusted load balancer's PROXY header.
    pub peer: SocketAddr,
}

/// Answers one request. Never fails: every error becomes a problem document.
pub async fn handle(
    request: Request<Incoming>,
    conn: Arc<ConnInfo>,
    state: Arc<State>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let policy = state.policies.current();
    let request_id = RequestId::from_headers(request.headers());
    let method = request.method().clone();
    let admitted = state
        .audit
        .admit(
            &request_id,
            &method,
            conn.peer.ip(),
            &policy.config.audit,
            started,
        )
        .await;
    let record = match admitted {
        Ok(record) => record,
        Err(problem) => {
            tracing::debug!(request_id = %request_id, "request refused: no room in the audit trail");
            state.metrics.request(
                NO_ROUTE,
                problem.status().as_u16(),
                Some(problem.code()),
                started.elapsed(),
            );
            let mut response = problem.into_response(request_id.as_str());
            response
                .headers_mut()
                .insert(REQUEST_ID_HEADER, request_id.header_value());
            return Ok(response);
        }
    };

    let mut trace = Trace {
        audit: record,
        ..Trace::default()
    };
    let outcome = process(request, &conn, &state, &policy, &request_id, &mut trace).await;
    let mut refused = None;
    let mut response = match outcome {
        Ok(response) => response,
        Err(problem) => {
            refused = Some(problem.code());
            tracing::info!(
                request_id = %request_id,
                method = %trace.audit.method(),
                route = trace.route.unwrap_or("-"),
                key_id = trace.key_id.as_deref().unwrap_or("-"),
                code = problem.code().as_str(),
                "request refused"
            );
            problem.into_response(request_id.as_str())
        }
    };
    if let Some(status) = &trace.limit {
        status.apply(policy.config.ratelimit.headers, response.headers_mut());
    }
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER, request_id.header_value());
    trace.audit.finish(response.status(), refused);
    count(&state, &trace, response.status().as_u16(), refused, started);
    tracing::debug!(
        request_id = %request_id,
        method = %trace.audit.method(),
        route = trace.route.unwrap_or("-"),
        key_id = trace.key_id.as_deref().unwrap_or("-"),
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        "request answered"
    );
    Ok(response)
}

/// Counts an answered request into the metrics: its series, latency, and what a limit or the
/// idempotency cache did with it.
fn count(
    state: &State,
    trace: &Trace<'_>,
    status: u16,
    refused: Option<ProblemCode>,
    started: Instant,
) {
    let metrics = &state.metrics;
    metrics.request(
        trace.route.unwrap_or(NO_ROUTE),
        status,
        refused,
        started.elapsed(),
    );
    if let Some(kind) = refused.and_then(LimitKind::of) {
        let org = trace.org.as_ref().map(|org| org.id.as_str());
        metrics.limit_refused(kind, org);
    }
    let idempotency = match refused {
        Some(
            ProblemCode::IdempotencyInProgress
            | ProblemCode::IdempotencyMismatch
            | ProblemCode::IdempotencyNotReplayable,
        ) => Some(IdempotencyOutcome::Conflict),
        _ => trace.idempotency,
    };
    if let Some(outcome) = idempotency {
        metrics.idempotency(outcome);
    }
}

/// What the pipeline learned: policy names and public ids for logging, the rate-limit
/// status every answer to an authenticated key reports, and the request's audit record.
#[derive(Default)]
struct Trace<'p> {
    /// The policy route's name, or a built-in's `@` name.
    route: Option<&'p str>,
    /// The caller's organization, once authenticated (a metrics label).
    org: Option<Arc<OrgRecord>>,
    /// What the idempotency cache did, when the route uses it.
    idempotency: Option<IdempotencyOutcome>,
    key_id: Option<String>,
    limit: Option<RateStatus>,
    audit: RequestAudit,
}

/// The gates in order.
async fn process<'p>(
    request: Request<Incoming>,
    conn: &ConnInfo,
    state: &State,
    policy: &'p Policy,
    request_id: &RequestId,
    trace: &mut Trace<'p>,
) -> Result<Response<ProxyBody>, Problem> {
    let config = &policy.config;
    limits::check_headers(request.headers(), &config.server)?;
    let path = request.uri().path();
    if is_builtin(request.method(), path, config.auth.health_path.as_deref()) {
        trace.audit.builtin_route(RouteName::HEALTH);
        trace.route = Some("@health");
        return Ok(builtin::health(state));
    }

    let client_ip = client_ip::client_ip(
        conn.peer.ip(),
        request.headers(),
        &config.server.trusted_proxies,
    );
    trace.audit.client_ip(client_ip);
    authn::refuse_key_in_url(request.uri(), state, &config.auth, client_ip)?;
    let mut verified = None;
    let authenticated = authn::authenticate_noting(
        request.headers(),
        state,
        &config.auth,
        client_ip,
        &mut verified,
    );
    if let Some(key) = &verified {
        trace.audit.caller(key);
    }
    let caller = authenticated?;
    trace.key_id = Some(caller.key.id.to_string());
    trace.org = Some(caller.org.clone());
    state
        .limits
        .admit_key(&caller.key, &config.ratelimit)
        .record(&mut trace.limit)?;
    gating::check(&caller)?;
    if is_builtin(request.method(), path, config.auth.whoami_path.as_deref()) {
        trace.audit.builtin_route(RouteName::WHOAMI);
        trace.route = Some("@whoami");
        return Ok(builtin::whoami(&caller, policy));
    }
    if let Some(endpoint) = audit::api::endpoint(request.method(), path, &config.audit) {
        trace.audit.builtin_route(RouteName::AUDIT_EVENTS);
        trace.route = Some("@audit.events");
        let query = request.uri().query();
        return audit::api::answer(endpoint, query, &caller, &state.audit, &config.audit).await;
    }
    if config.webhooks.enabled
        && webhooks::deliveries_api::is_endpoint(
            request.method(),
            path,
            config.webhooks.deliveries_path.as_deref(),
        )
    {
        trace.audit.builtin_route(RouteName::WEBHOOK_DELIVERIES);
        trace.route = Some("@webhooks.deliveries");
        let query = request.uri().query();
        return webhooks::deliveries_api::answer(query, &caller, state).await;
    }
    if let Some(endpoint) =
        webhooks::subscriptions_api::endpoint(request.method(), path, &config.webhooks)
    {
        trace.audit.builtin_route(endpoint.route_name());
        trace.route = Some(endpoint.label());
        let answered = webhooks::subscriptions_api::answer(
            endpoint,
            request,
            &caller,
            state,
            config,
            request_id.as_str(),
        )
        .await?;
        if answered.replayed {
            trace.audit.replayed();
        }
        return Ok(answered.response);
    }

    let route = match policy.route(request.method(), path) {
        Ok(Some(route)) => route,
        Ok(None) => {
            return Err(Problem::new(ProblemCode::RouteUnknown)
                .with_detail("no route of this API matches the request"));
        }
        Err(invalid) => {
            return Err(Problem::new(ProblemCode::InvalidPath).with_detail(invalid.to_string()))
        }
    };
    trace.route = Some(route.name.as_str());
    trace.audit.policy_route(&route.name);
    scope::check(route, &caller.key)?;
    limits::check_declared_length(request.headers(), config.server.max_body_bytes)?;
    state
        .limits
        .admit_route(&caller.key, route.limit.as_deref(), &config.ratelimit)
        .record(&mut trace.limit)?;

    let trip = LimitTrip::default();
    let limit = config.server.max_body_bytes;
    let request = request.map(|body| LimitedBody::new(body, limit, trip.clone()).boxed());
    let (request, lease) = match state
        .idempotency
        .admit(request, route, &caller, config)
        .await?
    {
        Admission::Forward { request, lease } => (request, lease),
        Admission::Replay(response) => {
            trace.audit.replayed();
            trace.idempotency = Some(IdempotencyOutcome::Hit);
            return Ok(response);
        }
    };
    let key_id = caller.key.id.to_string();
    let scopes = caller
        .key
        .scopes
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",");
    let credential_headers: Vec<_> = authn::credential_header_names(&config.auth).collect();
    let outbound = Outbound {
        request_id,
        client_ip,
        destination: match caller.key.env {
            Env::Test => Destination::Sandbox,
            Env::Live => Destination::Production,
        },
        identity: Some(Identity {
            org: &caller.org.id,
            key_id: &key_id,
            env: caller.key.env.as_str(),
            scopes: &scopes,
        }),
        credential_headers: &credential_headers,
    };
    if lease.is_some() {
        trace.idempotency = Some(IdempotencyOutcome::Miss);
    }
    let upstream_started = Instant::now();
    let answer = match lease {
        Some(lease) => {
            lease
                .forward(&policy.forwarder, request, &outbound, &trip)
                .await
        }
        None => policy.forwarder.forward(request, &outbound, &trip).await,
    };
    state.metrics.upstream(upstream_started.elapsed());
    answer
}

fn is_builtin(method: &Method, path: &str, builtin: Option<&str>) -> bool {
    method == Method::GET && builtin == Some(path)
}
