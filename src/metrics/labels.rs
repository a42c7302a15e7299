//! The label sets of Portcullis's metric families.
//!
//! Every label value is a policy name, a problem code, a status code, an organization id or
//! one of the small enums below: never anything a request carried (paths, queries and bodies
//! hold patient data, and free strings would let a client grow the series count without
//! bound).

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::problem::ProblemCode;

/// Writes an enum's fixed name as a label value.
macro_rules! label_value_by_name {
    ($type:ty) => {
        impl EncodeLabelValue for $type {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

/// The refusal code of an answer: a problem code, or empty for the backend's own answers and
/// built-in endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeLabel(pub Option<ProblemCode>);

impl CodeLabel {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        self.0.map_or("", ProblemCode::as_str)
    }
}
label_value_by_name!(CodeLabel);

/// `portcullis_requests_total`: one series per route, status and code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// The policy route's name, a built-in's `@` name, or `@none` before a route matched.
    pub route: Arc<str>,
    /// The status code sent.
    pub status: u16,
    /// The problem code, empty when the request was not refused.
    pub code: CodeLabel,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// A key's or a route class's rate limit (`rate.limited`).
    RateLimited,
    /// A daily quota (`quota.exceeded`).
    QuotaExceeded,
    /// The failed-authentication budget of an address or key id (`auth.throttled`).
    AuthThrottled,
}

impl LimitKind {
    /// The limit behind a refusal code, if it is one of the limits.
    pub fn of(code: ProblemCode) -> Option<Self> {
        match code {
            ProblemCode::RateLimited => Some(Self::RateLimited),
            ProblemCode::QuotaExceeded => Some(Self::QuotaExceeded),
            ProblemCode::AuthThrottled => Some(Self::AuthThrottled),
            _ => None,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::QuotaExceeded => "quota_exceeded",
            Self::AuthThrottled => "auth_throttled",
        }
    }
}
label_value_by_name!(LimitKind);

/// `portcullis_limit_refusals_total`: by limit and organization.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabels {
    /// Which limit.
    pub kind: LimitKind,
    /// The caller's organization id; empty before authentication (`auth_throttled`).
    pub org: Arc<str>,
}

/// What the idempotency cache did with a write that carried an `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdempotencyOutcome {
    /// A stored answer was replayed.
    Hit,
    /// The key was new: the request was forwarded and its answer recorded.
    Miss,
    /// The key was in use by a request still in flight, or reused for a different request
    /// (`idempotency.in_progress`, `idempotency.mismatch`).
    Conflict,
}

impl IdempotencyOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Conflict => "conflict",
        }
    }
}
label_value_by_name!(IdempotencyOutcome);

/// `portcullis_idempotency_requests_total`: by outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct IdempotencyLabels {
    /// What happened.
    pub outcome: IdempotencyOutcome,
}

/// How one webhook delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryOutcome {
    /// The receiver accepted it (2xx).
    Delivered,
    /// The attempt failed and another one is scheduled.
    Retrying,
    /// The last attempt failed: the delivery moved to the dead-letter queue.
    DeadLettered,
}

impl DeliveryOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::DeadLettered => "dead_lettered",
        }
    }
}
label_value_by_name!(DeliveryOutcome);

/// `portcullis_webhook_deliveries_total`: by outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// How the attempt ended.
    pub outcome: DeliveryOutcome,
}

/// Why a connection to the TLS port did not become a TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFailure {
    /// No first byte, PROXY header or finished handshake within `tls_handshake_timeout`.
    Timeout,
    /// The peer closed the connection before sending anything.
    Closed,
    /// Plaintext HTTP sent to the TLS port (answered with `400 request.plain_http`).
    PlainHttp,
    /// The first byte was neither TLS nor HTTP.
    NotTls,
    /// A trusted load balancer's PROXY protocol header was malformed.
    ProxyHeader,
    /// No protocol version, cipher suite or ALPN protocol in common.
    Incompatible,
    /// The client sent an alert, typically because it does not trust the certificate.
    AlertReceived,
    /// Any other handshake error (malformed messages, I/O errors).
    Error,
}

impl TlsFailure {
    /// Every reason, for exporting each series at zero.
    pub const ALL: [Self; 8] = [
        Self::Timeout,
        Self::Closed,
        Self::PlainHttp,
        Self::NotTls,
        Self::ProxyHeader,
        Self::Incompatible,
        Self::AlertReceived,
        Self::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::PlainHttp => "plain_http",
            Self::NotTls => "not_tls",
            Self::ProxyHeader => "proxy_header",
            Self::Incompatible => "incompatible",
            Self::AlertReceived => "alert_received",
            Self::Error => "error",
        }
    }

    /// Classifies a failed handshake by the rustls error inside the I/O error.
    pub fn of_handshake(error: &std::io::Error) -> Self {
        let rustls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol) => {
                Self::Incompatible
            }
            Some(rustls::Error::AlertReceived(_)) => Self::AlertReceived,
            _ if error.kind() == std::io::ErrorKind::UnexpectedEof => Self::Closed,
            _ => Self::Error,
        }
    }
}
label_value_by_name!(TlsFailure);

/// `portcullis_tls_handshake_failures_total`: by reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TlsFailureLabels {
    /// Why.
    pub reason: TlsFailure,
}

/// How a configuration reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// The new configuration is in service.
    Success,
    /// The new configuration was refused; the old one keeps serving.
    Failure,
}

impl ReloadResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}
label_value_by_name!(ReloadResult);

/// `portcullis_config_reloads_total`: by result.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    /// How it ended.
    pub result: ReloadResult,
}
