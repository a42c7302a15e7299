//! RFC 9457 problem documents: the one shape every refusal takes.
//!
//! Partners code against the stable `code` field, so the table of codes lives here and nowhere
//! else, and every error answer is rendered by [`Problem::into_response`]. A problem's `detail`
//! is written by Portcullis from policy names and fixed text only: it never repeats anything a
//! request carried (paths, queries and bodies hold patient data).

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::body::{full_body, ProxyBody};

/// Media type of every problem document (RFC 9457 §3).
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Prefix of the `type` URI; a URN because the problem identity matters, not a web page.
const TYPE_PREFIX: &str = "urn:portcullis:problem:";

/// Every refusal Portcullis can give, with its status and stable code.
///
/// Adding a variant is a public API change for partners: codes are never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemCode {
    /// A key-like value or key parameter was put in the query string.
    KeyInUrl,
    /// Plaintext HTTP arrived on the TLS port.
    PlainHttp,
    /// The request path could be read two ways (dot segments, encoded slashes, bad escapes).
    InvalidPath,
    /// No credential was presented.
    AuthMissing,
    /// The credential is malformed, unknown or wrong (deliberately indistinguishable).
    AuthInvalid,
    /// The key was revoked.
    AuthRevoked,
    /// The key passed its expiry.
    AuthExpired,
    /// The key lacks the scope the route requires.
    PermDenied,
    /// A live key whose organization lacks HIPAA mode or signed BAA evidence.
    EnvGated,
    /// The client address is outside the key's CIDR allowlist.
    IpDenied,
    /// No policy route matches (also used for other tenants' resources).
    RouteUnknown,
    /// A write without the required `Idempotency-Key`.
    IdempotencyMissing,
    /// The same `Idempotency-Key` is still being processed.
    IdempotencyInProgress,
    /// The same `Idempotency-Key` was used for a different request.
    IdempotencyMismatch,
    /// The request with this `Idempotency-Key` was processed, but its answer was too large to
    /// keep, so it cannot be replayed (retrying would never succeed).
    IdempotencyNotReplayable,
    /// The idempotency store cannot record the request, so the write is refused rather than
    /// forwarded without protection against duplicates.
    IdempotencyUnavailable,
    /// The request body ended abnormally (the client stopped sending or broke the framing).
    BodyIncomplete,
    /// The request body exceeds the configured limit.
    RequestTooLarge,
    /// The request header section exceeds the configured limits.
    HeadersTooLarge,
    /// The per-key rate limit refused the request.
    RateLimited,
    /// The daily quota is spent.
    QuotaExceeded,
    /// Too many failed authentication attempts.
    AuthThrottled,
    /// The backend refused or reset the connection.
    UpstreamUnavailable,
    /// The backend did not answer in time.
    UpstreamTimeout,
    /// The audit trail cannot take the request's record (its queue stayed full, e.g. the
    /// disk is full), so the request is refused rather than served unrecorded.
    AuditUnavailable,
    /// A query parameter of a built-in endpoint is malformed or unknown.
    InvalidQuery,
    /// A posted webhook event names an organization Portcullis does not know.
    WebhookUnknownOrg,
    /// A posted webhook event has a type the policy does not list.
    WebhookUnknownEvent,
    /// A posted webhook event is not `{"org", "type", "data"}` JSON.
    WebhookInvalidEvent,
    /// The webhook outbox cannot take the event right now (the store failed).
    WebhookUnavailable,
    /// A subscription's receiver URL breaks a destination rule (not https, a private or
    /// metadata address, credentials in the URL, ...).
    WebhookInvalidUrl,
    /// The organization already holds `webhooks.max_subscriptions_per_org` subscriptions.
    WebhookLimitReached,
    /// A JSON request body of a built-in endpoint is not JSON or not the expected shape.
    InvalidBody,
}

impl ProblemCode {
    /// The stable machine-readable code partners branch on.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyInUrl => "request.key_in_url",
            Self::PlainHttp => "request.plain_http",
            Self::InvalidPath => "request.invalid_path",
            Self::AuthMissing => "auth.missing",
            Self::AuthInvalid => "auth.invalid",
            Self::AuthRevoked => "auth.revoked",
            Self::AuthExpired => "auth.expired",
            Self::PermDenied => "perm.denied",
            Self::EnvGated => "env.gated",
            Self::IpDenied => "ip.denied",
            Self::RouteUnknown => "route.unknown",
            Self::IdempotencyMissing => "idempotency.missing",
            Self::IdempotencyInProgress => "idempotency.in_progress",
            Self::IdempotencyMismatch => "idempotency.mismatch",
            Self::IdempotencyNotReplayable => "idempotency.not_replayable",
            Self::IdempotencyUnavailable => "idempotency.unavailable",
            Self::BodyIncomplete => "request.body_incomplete",
            Self::RequestTooLarge => "request.too_large",
            Self::HeadersTooLarge => "request.headers_too_large",
            Self::RateLimited => "rate.limited",
            Self::QuotaExceeded => "quota.exceeded",
            Self::AuthThrottled => "auth.throttled",
            Self::UpstreamUnavailable => "upstream.unavailable",
            Self::UpstreamTimeout => "upstream.timeout",
            Self::AuditUnavailable => "audit.unavailable",
            Self::InvalidQuery => "request.invalid_query",
            Self::WebhookUnknownOrg => "webhook.unknown_org",
            Self::WebhookUnknownEvent => "webhook.unknown_event",
            Self::WebhookInvalidEvent => "webhook.invalid_event",
            Self::WebhookUnavailable => "webhook.unavailable",
            Self::WebhookInvalidUrl => "webhook.invalid_url",
            Self::WebhookLimitReached => "webhook.limit_reached",
            Self::InvalidBody => "request.invalid_body",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::KeyInUrl
            | Self::PlainHttp
            | Self::InvalidPath
            | Self::IdempotencyMissing
            | Self::BodyIncomplete
            | Self::InvalidQuery => StatusCode::BAD_REQUEST,
            Self::AuthMissing | Self::AuthInvalid | Self::AuthRevoked | Self::AuthExpired => {
                StatusCode::UNAUTHORIZED
            }
            Self::PermDenied | Self::EnvGated | Self::IpDenied => StatusCode::FORBIDDEN,
            Self::RouteUnknown => StatusCode::NOT_FOUND,
            Self::IdempotencyInProgress | Self::IdempotencyNotReplayable => StatusCode::CONFLICT,
            Self::IdempotencyUnavailable | Self::AuditUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::WebhookUnknownOrg | Self::WebhookUnknownEvent => StatusCode::UNPROCESSABLE_ENTITY,
            Self::WebhookInvalidEvent => StatusCode::BAD_REQUEST,
            Self::WebhookUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::WebhookInvalidUrl => StatusCode::UNPROCESSABLE_ENTITY,
            Self::WebhookLimitReached => StatusCode::CONFLICT,
            Self::InvalidBody => StatusCode::BAD_REQUEST,
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RateLimited | Self::QuotaExceeded | Self::AuthThrottled => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A short human summary that never changes between occurrences (RFC 9457 `title`).
    pub fn title(self) -> &'static str {
        match self {
            Self::KeyInUrl => "API key in URL",
            Self::PlainHttp => "Plain HTTP sent to the TLS port",
            Self::InvalidPath => "Ambiguous request path",
            Self::AuthMissing => "Missing credentials",
            Self::AuthInvalid => "Invalid API key",
            Self::AuthRevoked => "API key revoked",
            Self::AuthExpired => "API key expired",
            Self::PermDenied => "Permission denied",
            Self::EnvGated => "Production access not enabled",
            Self::IpDenied => "Client address not allowed",
            Self::RouteUnknown => "Not found",
            Self::IdempotencyMissing => "Idempotency-Key required",
            Self::IdempotencyInProgress => "Request with this Idempotency-Key in progress",
            Self::IdempotencyMismatch => "Idempotency-Key reused for a different request",
            Self::IdempotencyNotReplayable => "Answer for this Idempotency-Key cannot be replayed",
            Self::IdempotencyUnavailable => "Idempotency store unavailable",
            Self::BodyIncomplete => "Request body incomplete",
            Self::RequestTooLarge => "Request body too large",
            Self::HeadersTooLarge => "Request headers too large",
            Self::RateLimited => "Rate limit exceeded",
            Self::QuotaExceeded => "Daily quota exceeded",
            Self::AuthThrottled => "Too many failed authentication attempts",
            Self::UpstreamUnavailable => "Backend unavailable",
            Self::UpstreamTimeout => "Backend timed out",
            Self::AuditUnavailable => "Audit trail unavailable",
            Self::InvalidQuery => "Invalid query parameter",
            Self::WebhookUnknownOrg => "Unknown organization",
            Self::WebhookUnknownEvent => "Unknown event type",
            Self::WebhookInvalidEvent => "Invalid event",
            Self::WebhookUnavailable => "Webhook outbox unavailable",
            Self::WebhookInvalidUrl => "Webhook URL not allowed",
            Self::WebhookLimitReached => "Webhook subscription limit reached",
            Self::InvalidBody => "Invalid request body",
        }
    }
}

/// One refusal on its way to the client.
///
/// Built by a gate, rendered once at the edge of the pipeline so that the format, headers and
/// request id are identical for every code.
#[derive(Debug, Clone)]
pub struct Problem {
    code: ProblemCode,
    detail: Cow<'static, str>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem with the code's fixed title repeated as its detail.
    pub fn new(code: ProblemCode) -> Self {
        Self {
            code,
            detail: Cow::Borrowed(code.title()),
            headers: Vec::new(),
        }
    }

    /// Replaces the detail; callers pass fixed text or policy names, never request data.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = detail.into();
        self
    }

    /// Adds a header to the answer (e.g. `WWW-Authenticate`, `X-RateLimit-*`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds `Retry-After` in whole seconds, rounded up so a client never retries too early.
    pub fn with_retry_after(self, wait: Duration) -> Self {
        let mut secs = wait.as_secs();
        if wait.subsec_nanos() > 0 {
            secs += 1;
        }
        self.with_header(RETRY_AFTER, HeaderValue::from(secs.max(1)))
    }

    /// Adds the `WWW-Authenticate: Bearer` challenge that RFC 6750 asks of every 401.
    pub fn with_bearer_challenge(self) -> Self {
        self.with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// The stable code.
    pub fn code(&self) -> ProblemCode {
        self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The JSON document, with `instance` set to the request id so support can find the record.
    pub fn to_json(&self, request_id: &str) -> Vec<u8> {
        render_document(
            self.code.as_str(),
            self.code.title(),
            self.status(),
            &self.detail,
            request_id,
        )
    }

    /// Renders the answer. The caller adds `X-Request-Id`, as it does for every answer.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let body = self.to_json(request_id);
        let mut response = Response::new(full_body(Bytes::from(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

/// Serializes one RFC 9457 document. Shared by the partner-facing problems here and the admin
/// socket's own codes, so both speak exactly the same format.
pub fn render_document(
    code: &str,
    title: &str,
    status: StatusCode,
    detail: &str,
    request_id: &str,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Document<'a> {
        #[serde(rename = "type")]
        kind: String,
        title: &'a str,
        status: u16,
        detail: &'a str,
        instance: String,
        code: &'a str,
    }
    let document = Document {
        kind: format!("{TYPE_PREFIX}{code}"),
        title,
        status: status.as_u16(),
        detail,
        instance: format!("urn:request:{request_id}"),
        code,
    };
    // Serializing a struct of strings and integers cannot fail; fall back to a minimal
    // document rather than panicking if it ever did.
    serde_json::to_vec(&document).unwrap_or_else(|_| b"{}".to_vec())
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.code.as_str(), self.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_every_rfc9457_member_and_the_code() {
        let problem =
            Problem::new(ProblemCode::PermDenied).with_detail("scope `notes:read` required");
        let json: serde_json::Value = serde_json::from_slice(&problem.to_json("abc")).unwrap();
        assert_eq!(json["type"], "urn:portcullis:problem:perm.denied");
        assert_eq!(json["title"], "Permission denied");
        assert_eq!(json["status"], 403);
        assert_eq!(json["detail"], "scope `notes:read` required");
        assert_eq!(json["instance"], "urn:request:abc");
        assert_eq!(json["code"], "perm.denied");
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let retry_after = |d| {
            let response = Problem::new(ProblemCode::RateLimited)
                .with_retry_after(d)
                .into_response("id");
            response.headers()[RETRY_AFTER].to_str().unwrap().to_owned()
        };
        assert_eq!(retry_after(Duration::from_millis(1200)), "2");
        assert_eq!(retry_after(Duration::from_secs(3)), "3");
        assert_eq!(retry_after(Duration::ZERO), "1");
    }

    #[test]
    fn response_carries_problem_media_type_and_status() {
        let response = Problem::new(ProblemCode::UpstreamTimeout).into_response("id");
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
    }
}
