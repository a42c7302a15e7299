//! The built-in subscription endpoints, under `webhooks.subscriptions_path` (default
//! `/v1/webhooks`):
//!
//! | request | answer |
//! |---|---|
//! | `POST {path}` `{"url": "https://…", "events": ["type", …]}` + `Idempotency-Key` | `201` the subscription and its `secret` |
//! | `GET {path}?limit=&cursor=` | `200` `{"subscriptions": […], "page": {"limit", "next_cursor"}}` |
//! | `GET {path}/{id}` | `200` the subscription (never its secret) |
//! | `DELETE {path}/{id}` | `204` |
//! | `POST {path}/{id}/rotate-secret` | `200` the subscription and its new `secret` |
//!
//! The caller's key must hold `webhooks.scope` (default `manage_webhooks`); everything is
//! scoped to the key's organization. Another organization's id, a malformed id, and any other
//! path or method under the subscriptions path are `404 route.unknown`, exactly like a path that
//! does not exist, so answers reveal nothing about other tenants.
//!
//! A create needs an `Idempotency-Key` and follows the idempotency gate of policy routes (the
//! same cache): a retry with the same key and body gets the first answer again, secret
//! included, marked `Idempotent-Replayed: true`; the same key with another body is `422`.
//! The body takes `url` and `events` only: free text (a description, a name) could hold
//! patient data and is refused. Subscriptions per organization are capped
//! (`webhooks.max_subscriptions_per_org`, `409 webhook.limit_reached` past it).
//!
//! A rotation gives the subscription a new secret, shown once; the previous one keeps signing
//! beside it for `webhooks.rotation_grace`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::destination::{self, DestinationError};
use super::subscriptions::{CreateError, Cursor, Subscription, SubscriptionId};
use super::AUDIT_EVENT_TYPE;
use crate::audit::time::format_iso8601;
use crate::audit::RouteName;
use crate::body::{full_body, LimitTrip, LimitedBody, ProxyBody};
use crate::config::{Config, RouteConfig, ScopeRequirement, WebhooksConfig};
use crate::gate::authn::Authenticated;
use crate::gate::idempotency::Admission;
use crate::gate::route::PathTemplate;
use crate::problem::{Problem, ProblemCode, PROBLEM_CONTENT_TYPE};
use crate::state::State;

/// The last path segment of the rotation endpoint.
const ROTATE_SEGMENT: &str = "rotate-secret";

/// Subscriptions per page when the caller names no `limit`.
const DEFAULT_PAGE: usize = 50;

/// Most subscriptions per page.
const MAX_PAGE: usize = 100;

/// Most event types one subscription may name.
const MAX_EVENTS: usize = 64;

/// The policy name the idempotency cache files creates under (part of each fingerprint).
const CREATE_ROUTE_NAME: &str = "@webhooks.create";

/// Which subscription endpoint a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST {path}`.
    Create,
    /// `GET {path}`.
    List,
    /// `GET {path}/{id}`.
    Get(SubscriptionId),
    /// `DELETE {path}/{id}`.
    Delete(SubscriptionId),
    /// `POST {path}/{id}/rotate-secret`.
    Rotate(SubscriptionId),
    /// Anything else under the path: a malformed id, another method, another sub-path.
    NotFound,
}

impl Endpoint {
    /// The name the audit record gives the request.
    pub fn route_name(&self) -> RouteName {
        match self {
            Self::Create => RouteName::WEBHOOKS_CREATE,
            Self::List => RouteName::WEBHOOKS_LIST,
            Self::Get(_) => RouteName::WEBHOOKS_GET,
            Self::Delete(_) => RouteName::WEBHOOKS_DELETE,
            Self::Rotate(_) => RouteName::WEBHOOKS_ROTATE_SECRET,
            Self::NotFound => RouteName::WEBHOOKS_OTHER,
        }
    }

    /// The same name as a static label, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Create => "@webhooks.create",
            Self::List => "@webhooks.list",
            Self::Get(_) => "@webhooks.get",
            Self::Delete(_) => "@webhooks.delete",
            Self::Rotate(_) => "@webhooks.rotate_secret",
            Self::NotFound => "@webhooks",
        }
    }
}

/// The subscription endpoint `method path` asks for, if the path is the subscriptions path or
/// below it (and webhooks are enabled).
pub fn endpoint(method: &Method, path: &str, config: &WebhooksConfig) -> Option<Endpoint> {
    let base = config.subscriptions_path.as_deref()?;
    if path == base {
        return Some(match *method {
            Method::POST => Endpoint::Create,
            Method::GET => Endpoint::List,
            _ => Endpoint::NotFound,
        });
    }
    let rest = path.strip_prefix(base)?.strip_prefix('/')?;
    let (id, tail) = match rest.split_once('/') {
        Some((id, tail)) => (id, Some(tail)),
        None => (rest, None),
    };
    let Ok(id) = id.parse::<SubscriptionId>() else {
        return Some(Endpoint::NotFound);
    };
    Some(match (method, tail) {
        (&Method::GET, None) => Endpoint::Get(id),
        (&Method::DELETE, None) => Endpoint::Delete(id),
        (&Method::POST, Some(ROTATE_SEGMENT)) => Endpoint::Rotate(id),
        _ => Endpoint::NotFound,
    })
}

/// An endpoint's answer, and whether it was replayed from the idempotency cache.
#[derive(Debug)]
pub struct Answered {
    /// The answer.
    pub response: Response<ProxyBody>,
    /// Served from the idempotency cache.
    pub replayed: bool,
}

impl From<Response<ProxyBody>> for Answered {
    fn from(response: Response<ProxyBody>) -> Self {
        Self {
            response,
            replayed: false,
        }
    }
}

/// Answers a subscription endpoint for an authenticated caller.
pub async fn answer(
    endpoint: Endpoint,
    request: Request<Incoming>,
    caller: &Authenticated,
    state: &State,
    config: &Config,
    request_id: &str,
) -> Result<Answered, Problem> {
    let settings = &config.webhooks;
    if !caller.key.scopes.contains(&settings.scope) {
        return Err(Problem::new(ProblemCode::PermDenied).with_detail(format!(
            "webhook subscriptions require the scope `{}`, which the API key does not have",
            settings.scope
        )));
    }
    let org = caller.org.id.clone();
    match endpoint {
        Endpoint::NotFound => Err(not_found()),
        Endpoint::Create => create(request, caller, state, config, request_id).await,
        Endpoint::List => {
            let (limit, cursor) = list_query(request.uri().query())?;
            if cursor.as_ref().is_some_and(|cursor| cursor.org() != org) {
                return Err(not_found());
            }
            let store = state.subscriptions.clone();
            let page = blocking(move || store.list(&org, cursor.as_ref(), limit)).await?;
            let items: Vec<Value> = page.subscriptions.iter().map(view).collect();
            let body = json!({
                "subscriptions": items,
                "page": {
                    "limit": limit,
                    "next_cursor": page.next_cursor.map(|cursor| cursor.encode()),
                },
            });
            Ok(json_response(StatusCode::OK, &body).into())
        }
        Endpoint::Get(id) => {
            no_query(request.uri().query())?;
            let store = state.subscriptions.clone();
            match blocking(move || store.get(&org, &id)).await? {
                Some(found) => Ok(json_response(StatusCode::OK, &view(&found)).into()),
                None => Err(not_found()),
            }
        }
        Endpoint::Delete(id) => {
            no_query(request.uri().query())?;
            let store = state.subscriptions.clone();
            if blocking(move || store.delete(&org, &id)).await? {
                let mut response = Response::new(full_body(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
                    .headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                Ok(response.into())
            } else {
                Err(not_found())
            }
        }
        Endpoint::Rotate(id) => {
            no_query(request.uri().query())?;
            let store = state.subscriptions.clone();
            let grace = settings.rotation_grace;
            let now = now();
            match blocking(move || store.rotate(&org, &id, now, grace)).await? {
                Some(rotated) => {
                    let mut body = view(&rotated.subscription);
                    insert_secret(&mut body, rotated.secret.expose());
                    Ok(json_response(StatusCode::OK, &body).into())
                }
                None => Err(not_found()),
            }
        }
    }
}

/// `POST {path}`: through the idempotency cache, then validated and stored.
async fn create(
    request: Request<Incoming>,
    caller: &Authenticated,
    state: &State,
    config: &Config,
    request_id: &str,
) -> Result<Answered, Problem> {
    let route = create_route(config)?;
    let trip = LimitTrip::default();
    let limit = config.server.max_body_bytes;
    let request = request.map(|body| LimitedBody::new(body, limit, trip.clone()).boxed());
    let (request, lease) = match state
        .idempotency
        .admit(request, &route, caller, config)
        .await?
    {
        Admission::Forward { request, lease } => (request, lease),
        Admission::Replay(response) => {
            return Ok(Answered {
                response,
                replayed: true,
            })
        }
    };
    // The gate read the body whole (the route requires a key), so this does not wait.
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|_| {
            Problem::new(ProblemCode::BodyIncomplete)
                .with_detail("the request body ended before it was complete")
        })?;
    let outcome = create_from_body(&body, caller, state, &config.webhooks).await;
    let response = match outcome {
        Ok(response) => response,
        Err(problem) if problem.status().is_server_error() => {
            // Not kept: the claim is released so a retry is tried again.
            if let Some(lease) = lease {
                let (status, document) = (problem.status(), problem.to_json(request_id));
                drop(lease.settle_local(problem_bytes(status, document)).await);
            }
            return Err(problem);
        }
        Err(problem) => problem_bytes(problem.status(), problem.to_json(request_id)),
    };
    match lease {
        Some(lease) => Ok(lease.settle_local(response).await.into()),
        None => Ok(response.map(full_body).into()),
    }
}

/// The policy-route shape the idempotency cache needs for creates: key always required.
fn create_route(config: &Config) -> Result<RouteConfig, Problem> {
    let path = config
        .webhooks
        .subscriptions_path
        .as_deref()
        .and_then(|path| PathTemplate::parse(path).ok())
        .ok_or_else(not_found)?;
    Ok(RouteConfig {
        name: CREATE_ROUTE_NAME.to_owned(),
        method: Method::POST,
        path,
        scope: ScopeRequirement::Scope(config.webhooks.scope.clone()),
        limit: None,
        idempotency: Some(true),
    })
}

/// Validates a create body and stores the subscription; the `201` answer as bytes, so the
/// idempotency cache can keep it.
async fn create_from_body(
    body: &[u8],
    caller: &Authenticated,
    state: &State,
    settings: &WebhooksConfig,
) -> Result<Response<Bytes>, Problem> {
    let (url, events) = parse_create(body)?;
    let url =
        destination::check_url(&url, settings.allow_private_destinations).map_err(invalid_url)?;
    for event in &events {
        if event != AUDIT_EVENT_TYPE && !settings.event_types.contains(event) {
            return Err(unknown_event(settings));
        }
    }
    let store = state.subscriptions.clone();
    let org = caller.org.id.clone();
    let limit = settings.max_subscriptions_per_org;
    let now = now();
    let created = tokio::task::spawn_blocking(move || store.create(&org, &url, events, now, limit))
        .await
        .map_err(|_| unavailable())?;
    match created {
        Ok(created) => {
            let mut body = view(&created.subscription);
            insert_secret(&mut body, created.secret.expose());
            Ok(json_bytes(StatusCode::CREATED, &body))
        }
        Err(CreateError::LimitReached { limit }) => Err(Problem::new(
            ProblemCode::WebhookLimitReached,
        )
        .with_detail(format!(
            "the organization already has {limit} webhook subscriptions, the most allowed; \
                 delete one first"
        ))),
        Err(CreateError::Store(error)) => {
            tracing::error!(%error, "cannot store a webhook subscription");
            Err(unavailable())
        }
    }
}

/// Reads `{"url": "...", "events": [...]}` and nothing else. Details never repeat the body.
fn parse_create(body: &[u8]) -> Result<(String, BTreeSet<String>), Problem> {
    let invalid = |detail: &'static str| Problem::new(ProblemCode::InvalidBody).with_detail(detail);
    let object: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => {
            return Err(invalid(
                "the body must be a JSON object with url and events",
            ))
        }
        Err(_) => return Err(invalid("the body is not valid JSON")),
    };
    if object.keys().any(|key| key != "url" && key != "events") {
        return Err(invalid(
            "the body takes only url and events; free-text members such as a description are \
             not accepted",
        ));
    }
    let url = match object.get("url") {
        Some(Value::String(url)) => url.clone(),
        Some(_) => return Err(invalid("url must be a string")),
        None => return Err(invalid("url is required")),
    };
    let events = match object.get("events") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("events must be an array of event type names")),
        None => return Err(invalid("events is required")),
    };
    if events.is_empty() {
        return Err(invalid("events must name at least one event type"));
    }
    if events.len() > MAX_EVENTS {
        return Err(invalid("events may name at most 64 event types"));
    }
    let mut names = BTreeSet::new();
    for item in events {
        let Value::String(name) = item else {
            return Err(invalid("events must be an array of event type names"));
        };
        names.insert(name.clone());
    }
    Ok((url, names))
}

/// `limit` and `cursor` of a list request.
fn list_query(query: Option<&str>) -> Result<(usize, Option<Cursor>), Problem> {
    let invalid =
        |detail: &'static str| Problem::new(ProblemCode::InvalidQuery).with_detail(detail);
    let mut limit = None;
    let mut cursor = None;
    for pair in query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" if limit.is_none() => {
                let parsed = (!value.is_empty() && value.len() <= 3)
                    .then(|| value.parse::<usize>().ok())
                    .flatten()
                    .filter(|n| (1..=MAX_PAGE).contains(n));
                limit = Some(
                    parsed
                        .ok_or_else(|| invalid("`limit` must be a whole number from 1 to 100"))?,
                );
            }
            "cursor" if cursor.is_none() => {
                cursor = Some(Cursor::decode(value).ok_or_else(|| {
                    invalid("`cursor` must be a next_cursor value returned by this API, unchanged")
                })?);
            }
            "limit" | "cursor" => return Err(invalid("a query parameter is given twice")),
            _ => {
                return Err(invalid(
                    "unknown query parameter; this endpoint takes limit and cursor",
                ))
            }
        }
    }
    Ok((limit.unwrap_or(DEFAULT_PAGE), cursor))
}

fn no_query(query: Option<&str>) -> Result<(), Problem> {
    if query.is_some_and(|query| !query.is_empty()) {
        return Err(Problem::new(ProblemCode::InvalidQuery)
            .with_detail("this endpoint takes no query parameters"));
    }
    Ok(())
}

/// A subscription as partners see it: never a secret.
fn view(subscription: &Subscription) -> Value {
    let mut body = json!({
        "id": subscription.id.as_str(),
        "url": subscription.url.to_string(),
        "events": subscription.events,
        "status": subscription.status.as_str(),
        "created_at": iso8601(subscription.created_at),
    });
    if let Some(reason) = subscription.disabled_reason {
        body["disabled_reason"] = Value::from(reason.as_str());
    }
    if let Some(end) = subscription.previous_secret_live_until(now()) {
        body["previous_secret_expires_at"] = Value::from(iso8601(end));
    }
    body
}

fn insert_secret(body: &mut Value, secret: &str) {
    body["secret"] = Value::from(secret);
}

fn iso8601(unix_seconds: i64) -> String {
    let secs = u64::try_from(unix_seconds).unwrap_or(0);
    format_iso8601(secs.saturating_mul(1_000_000))
}

fn now() -> i64 {
    i64::try_from(crate::state::unix_now()).unwrap_or(i64::MAX)
}

/// The `422` for a refused URL: which rule, never the URL (nor its host).
fn invalid_url(error: DestinationError) -> Problem {
    let detail = match error {
        DestinationError::Invalid => "url must be an absolute https URL",
        DestinationError::TooLong => "url is too long",
        DestinationError::NotHttps => "url must use https",
        DestinationError::Userinfo => "url must not carry a user name or password",
        DestinationError::NoHost => "url must name a host (and a non-zero port if any)",
        DestinationError::Fragment => "url must not have a fragment",
        DestinationError::ForbiddenAddress(ip) => forbidden_kind(ip),
        DestinationError::LocalName => "url's host is a name for this machine",
    };
    Problem::new(ProblemCode::WebhookInvalidUrl).with_detail(detail)
}

/// Which rule a forbidden address breaks, named without the address itself.
fn forbidden_kind(ip: IpAddr) -> &'static str {
    const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
    const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    match ip {
        IpAddr::V4(v4) if v4 == METADATA_V4 => "url's host is a cloud metadata address",
        IpAddr::V6(v6) if v6 == METADATA_V6 => "url's host is a cloud metadata address",
        _ if ip.is_loopback() => "url's host is a loopback address",
        IpAddr::V4(v4) if v4.is_private() => "url's host is a private network address",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => {
            "url's host is a private network address"
        }
        IpAddr::V4(v4) if v4.is_link_local() => "url's host is a link-local address",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
            "url's host is a link-local address"
        }
        _ => "url's host is a reserved or otherwise non-public address",
    }
}

fn unknown_event(settings: &WebhooksConfig) -> Problem {
    let offered: Vec<&str> = settings
        .event_types
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(AUDIT_EVENT_TYPE))
        .collect();
    Problem::new(ProblemCode::WebhookUnknownEvent).with_detail(format!(
        "events names a type this API does not offer; the types are: {}",
        offered.join(", ")
    ))
}

fn not_found() -> Problem {
    Problem::new(ProblemCode::RouteUnknown).with_detail("no route of this API matches the request")
}

fn unavailable() -> Problem {
    Problem::new(ProblemCode::WebhookUnavailable)
        .with_detail("webhook subscriptions cannot be read or written right now; retry shortly")
        .with_retry_after(std::time::Duration::from_secs(1))
}

/// Runs a store call off the async workers; a store failure is logged and answered `503`.
async fn blocking<T, F>(call: F) -> Result<T, Problem>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, super::WebhookStoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            tracing::error!(%error, "webhook subscription store failed");
            Err(unavailable())
        }
        Err(_) => Err(unavailable()),
    }
}

fn json_bytes(status: StatusCode, body: &Value) -> Response<Bytes> {
    // Serializing a `Value` cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Bytes::from(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    json_bytes(status, body).map(full_body)
}

fn problem_bytes(status: StatusCode, document: Vec<u8>) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(document));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: Option<&str>) -> WebhooksConfig {
        WebhooksConfig {
            enabled: true,
            subscriptions_path: path.map(str::to_owned),
            ..WebhooksConfig::default()
        }
    }

    #[test]
    fn endpoints_under_the_path() {
        let on = config(Some("/v1/webhooks"));
        let id = "sub_0123456789abcdef0123";
        let parsed: SubscriptionId = id.parse().unwrap();
        assert_eq!(
            endpoint(&Method::POST, "/v1/webhooks", &on),
            Some(Endpoint::Create)
        );
        assert_eq!(
            endpoint(&Method::GET, "/v1/webhooks", &on),
            Some(Endpoint::List)
        );
        assert_eq!(
            endpoint(&Method::PUT, "/v1/webhooks", &on),
            Some(Endpoint::NotFound)
        );
        assert_eq!(
            endpoint(&Method::GET, &format!("/v1/webhooks/{id}"), &on),
            Some(Endpoint::Get(parsed.clone()))
        );
        assert_eq!(
            endpoint(&Method::DELETE, &format!("/v1/webhooks/{id}"), &on),
            Some(Endpoint::Delete(parsed.clone()))
        );
        assert_eq!(
            endpoint(
                &Method::POST,
                &format!("/v1/webhooks/{id}/rotate-secret"),
                &on
            ),
            Some(Endpoint::Rotate(parsed))
        );
        assert_eq!(
            endpoint(
                &Method::GET,
                &format!("/v1/webhooks/{id}/rotate-secret"),
                &on
            ),
            Some(Endpoint::NotFound)
        );
        assert_eq!(
            endpoint(&Method::GET, "/v1/webhooks/sub_XYZ", &on),
            Some(Endpoint::NotFound)
        );
        assert_eq!(endpoint(&Method::GET, "/v1/webhooksx", &on), None);
        assert_eq!(endpoint(&Method::GET, "/v1/webhooks", &config(None)), None);
    }

    #[test]
    fn create_bodies() {
        let (url, events) =
            parse_create(br#"{"url":"https://a.example/h","events":["b","a","a"]}"#).unwrap();
        assert_eq!(url, "https://a.example/h");
        assert_eq!(events.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"url":"https://a.example"}"#,
            br#"{"events":["a"]}"#,
            br#"{"url":1,"events":["a"]}"#,
            br#"{"url":"https://a.example","events":"a"}"#,
            br#"{"url":"https://a.example","events":[]}"#,
            br#"{"url":"https://a.example","events":[1]}"#,
            br#"{"url":"https://a.example","events":["a"],"description":"x"}"#,
        ] {
            let problem = parse_create(bad).unwrap_err();
            assert_eq!(problem.code(), ProblemCode::InvalidBody, "{bad:?}");
            assert_eq!(problem.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn url_refusals_name_the_rule_and_never_the_address() {
        let cases = [
            ("192.168.1.9", "private"),
            ("172.20.0.1", "private"),
            ("127.0.0.2", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "metadata"),
            ("fd00:ec2::254", "metadata"),
            ("169.254.1.1", "link-local"),
            ("fe80::1", "link-local"),
            ("fc00::1", "private"),
            ("100.64.0.1", "non-public"),
            ("224.0.0.1", "non-public"),
        ];
        for (ip, rule) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            let problem = invalid_url(DestinationError::ForbiddenAddress(ip));
            assert_eq!(problem.code(), ProblemCode::WebhookInvalidUrl);
            assert_eq!(problem.status(), StatusCode::UNPROCESSABLE_ENTITY);
            let document = String::from_utf8(problem.to_json("r")).unwrap();
            assert!(document.contains(rule), "{ip}: {document}");
            assert!(!document.contains(&ip.to_string()), "{document}");
        }
    }

    #[test]
    fn store_failures_are_503_with_retry_after() {
        let response = unavailable().into_response("r");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE)
        );
    }

    #[test]
    fn list_queries() {
        assert_eq!(list_query(None).unwrap().0, DEFAULT_PAGE);
        assert_eq!(list_query(Some("limit=7")).unwrap().0, 7);
        for bad in [
            "limit=0",
            "limit=101",
            "limit=x",
            "limit=1&limit=2",
            "cursor=zz",
            "q=1",
        ] {
            assert_eq!(
                list_query(Some(bad)).unwrap_err().code(),
                ProblemCode::InvalidQuery,
                "{bad}"
            );
        }
    }
}
