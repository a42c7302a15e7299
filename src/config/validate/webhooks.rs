//! Validation of `[webhooks]`, with the defaults in one place ([`WebhooksConfig::default`]).

use crate::webhooks::cli::{DEFAULT_SPLIT_HEADERS, DEFAULT_STRIPE_HEADER};
use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::super::raw::{Opt, RawWebhooks};
use super::super::{AuditConfig, AuthConfig, WebhooksConfig};
use super::Validator;
use crate::webhooks::sign::Scheme;
use crate::webhooks::AUDIT_EVENT_TYPE;

/// Shortest wait a retry schedule may hold: receivers must not be hammered.
const MIN_RETRY_STEP: Duration = Duration::from_secs(1);

/// Longest wait a retry schedule may hold.
const MAX_RETRY_STEP: Duration = Duration::from_secs(24 * 3600);

/// Most steps a retry schedule may hold.
const MAX_RETRY_STEPS: usize = 50;

/// Longest one delivery attempt may take.
const MAX_DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest a rotated-out secret may keep signing.
const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Allowed retention of delivery records and of dead deliveries.
const RETENTION_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(3600)..=Duration::from_secs(3650 * 24 * 3600);

/// Longest event type name: they become metric labels and audit fields.
const MAX_EVENT_TYPE_LEN: usize = 64;

/// Allowed per-subscription concurrency.
const CONCURRENCY_RANGE: RangeInclusive<u64> = 1..=1024;

/// Allowed global in-flight bound.
const IN_FLIGHT_RANGE: RangeInclusive<u64> = 1..=100_000;

/// Allowed event sizes: every event is kept in the outbox until delivered.
const EVENT_BYTES_RANGE: RangeInclusive<u64> = 1024..=16 * 1024 * 1024;

/// Allowed subscriptions per organization.
const SUBSCRIPTIONS_RANGE: RangeInclusive<u64> = 1..=100_000;

/// Header names a scheme may not use: the transport and the body's framing own them.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "user-agent",
    "authorization",
    "te",
];

impl Default for WebhooksConfig {
    /// The documented defaults (disabled).
    fn default() -> Self {
        Self {
            enabled: false,
            scheme: Scheme::Standard,
            event_types: BTreeSet::new(),
            ingest_token_file: None,
            retry_schedule: [1, 2, 4, 8, 16]
                .into_iter()
                .map(|minutes| Duration::from_secs(minutes * 60))
                .collect(),
            retry_jitter: 0.1,
            delivery_timeout: Duration::from_secs(15),
            endpoint_concurrency: 4,
            max_in_flight: 256,
            allow_private_destinations: false,
            ca_file: None,
            rotation_grace: Duration::from_secs(24 * 3600),
            subscriptions_path: Some("/v1/webhooks".to_owned()),
            deliveries_path: Some("/v1/webhook-deliveries".to_owned()),
            scope: "manage_webhooks".to_owned(),
            max_event_bytes: 256 * 1024,
            max_subscriptions_per_org: 100,
            retention: Duration::from_secs(30 * 24 * 3600),
            dead_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Event type names: lower-case, dotted, safe as a metric label and an audit field.
pub(crate) fn is_event_type(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_EVENT_TYPE_LEN
        && text.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

impl Validator<'_> {
    pub(super) fn webhooks(
        &mut self,
        raw: RawWebhooks,
        auth: &AuthConfig,
        audit: &AuditConfig,
    ) -> WebhooksConfig {
        let defaults = WebhooksConfig::default();
        let enabled = raw.enabled.as_ref().is_some_and(|value| *value.get_ref());
        let scheme = self.webhook_scheme(&raw);
        let event_types = self.event_types(&raw.event_types);
        let ingest_token_file = match &raw.ingest_token_file {
            Some(path) => Some(self.private_file("webhooks.ingest_token_file", path)),
            None if enabled => {
                let span = raw.enabled.as_ref().map_or(0..0, Spanned::span);
                self.report(
                    "webhooks.ingest_token_file",
                    &span,
                    "is required when webhooks are enabled: name a file (mode 0600) holding the \
                     bearer token the backend presents to POST /events",
                );
                None
            }
            None => None,
        };
        let retry_schedule = self.retry_schedule(&raw.retry_schedule, defaults.retry_schedule);
        let retry_jitter = match &raw.retry_jitter {
            None => defaults.retry_jitter,
            Some(value) if (0.0..=1.0).contains(value.get_ref()) => *value.get_ref(),
            Some(value) => {
                self.report(
                    "webhooks.retry_jitter",
                    &value.span(),
                    "must be a fraction between 0.0 and 1.0 (0.1 varies each wait by up to 10%)",
                );
                defaults.retry_jitter
            }
        };
        let delivery_timeout = self.duration_in(
            "webhooks.delivery_timeout",
            &raw.delivery_timeout,
            defaults.delivery_timeout,
            Duration::ZERO..=MAX_DELIVERY_TIMEOUT,
        );
        let rotation_grace = self.duration_in(
            "webhooks.rotation_grace",
            &raw.rotation_grace,
            defaults.rotation_grace,
            Duration::ZERO..=MAX_ROTATION_GRACE,
        );
        let (subscriptions_path, deliveries_path) = self.webhook_paths(&raw, auth, audit);
        let scope = match &raw.scope {
            None => defaults.scope,
            Some(scope) if crate::keys::record::is_scope(scope.get_ref()) => {
                scope.get_ref().clone()
            }
            Some(scope) => {
                self.report(
                    "webhooks.scope",
                    &scope.span(),
                    "must be 1-64 characters of A-Z a-z 0-9 . _ : - (the characters a key's \
                     scopes may hold)",
                );
                defaults.scope
            }
        };
        WebhooksConfig {
            enabled,
            scheme,
            event_types,
            ingest_token_file,
            retry_schedule,
            retry_jitter,
            delivery_timeout,
            endpoint_concurrency: self.count(
                "webhooks.endpoint_concurrency",
                &raw.endpoint_concurrency,
                defaults.endpoint_concurrency as u64,
                CONCURRENCY_RANGE,
            ) as usize,
            max_in_flight: self.count(
                "webhooks.max_in_flight",
                &raw.max_in_flight,
                defaults.max_in_flight as u64,
                IN_FLIGHT_RANGE,
            ) as usize,
            allow_private_destinations: raw
                .allow_private_destinations
                .as_ref()
                .is_some_and(|value| *value.get_ref()),
            ca_file: raw
                .ca_file
                .as_ref()
                .map(|path| self.readable_file("webhooks.ca_file", path)),
            rotation_grace,
            subscriptions_path: subscriptions_path.filter(|_| enabled),
            deliveries_path: deliveries_path.filter(|_| enabled),
            scope,
            max_event_bytes: self.count(
                "webhooks.max_event_bytes",
                &raw.max_event_bytes,
                defaults.max_event_bytes as u64,
                EVENT_BYTES_RANGE,
            ) as usize,
            max_subscriptions_per_org: self.count(
                "webhooks.max_subscriptions_per_org",
                &raw.max_subscriptions_per_org,
                defaults.max_subscriptions_per_org as u64,
                SUBSCRIPTIONS_RANGE,
            ) as usize,
            retention: self.duration_in(
                "webhooks.retention",
                &raw.retention,
                defaults.retention,
                RETENTION_RANGE,
            ),
            dead_retention: self.duration_in(
                "webhooks.dead_retention",
                &raw.dead_retention,
                defaults.dead_retention,
                RETENTION_RANGE,
            ),
        }
    }

    fn webhook_scheme(&mut self, raw: &RawWebhooks) -> Scheme {
        let name = raw
            .scheme
            .as_ref()
            .map_or("standard", |value| value.get_ref().as_str());
        let stray = |raw: &RawWebhooks, keep: &[&str]| {
            [
                ("stripe_header", &raw.stripe_header),
                ("split_id_header", &raw.split_id_header),
                ("split_timestamp_header", &raw.split_timestamp_header),
                ("split_signature_header", &raw.split_signature_header),
            ]
            .into_iter()
            .filter(|(key, value)| value.is_some() && !keep.contains(key))
            .filter_map(|(key, value)| value.as_ref().map(|v| (key, v.span())))
            .collect::<Vec<_>>()
        };
        let (scheme, unused) = match name {
            "standard" => (Scheme::Standard, stray(raw, &[])),
            "stripe" => {
                let header = self.scheme_header(
                    "webhooks.stripe_header",
                    &raw.stripe_header,
                    DEFAULT_STRIPE_HEADER,
                );
                (Scheme::Stripe { header }, stray(raw, &["stripe_header"]))
            }
            "split" => {
                let id_header = self.scheme_header(
                    "webhooks.split_id_header",
                    &raw.split_id_header,
                    DEFAULT_SPLIT_HEADERS[0],
                );
                let timestamp_header = self.scheme_header(
                    "webhooks.split_timestamp_header",
                    &raw.split_timestamp_header,
                    DEFAULT_SPLIT_HEADERS[1],
                );
                let signature_header = self.scheme_header(
                    "webhooks.split_signature_header",
                    &raw.split_signature_header,
                    DEFAULT_SPLIT_HEADERS[2],
                );
                let distinct = id_header != timestamp_header
                    && id_header != signature_header
                    && timestamp_header != signature_header;
                if !distinct {
                    let span = raw
                        .split_signature_header
                        .as_ref()
                        .or(raw.split_timestamp_header.as_ref())
                        .or(raw.split_id_header.as_ref())
                        .map_or(0..0, Spanned::span);
                    self.report(
                        "webhooks.split_signature_header",
                        &span,
                        "the three split headers must have different names",
                    );
                }
                let scheme = Scheme::Split {
                    id_header,
                    timestamp_header,
                    signature_header,
                };
                let keep = [
                    "split_id_header",
                    "split_timestamp_header",
                    "split_signature_header",
                ];
                (scheme, stray(raw, &keep))
            }
            _ => {
                let span = raw.scheme.as_ref().map_or(0..0, Spanned::span);
                self.report(
                    "webhooks.scheme",
                    &span,
                    "must be \"standard\" (Standard Webhooks), \"stripe\" (t=...,v1=... in \
                     stripe_header) or \"split\" (three split_*_header headers)",
                );
                (Scheme::Standard, Vec::new())
            }
        };
        for (key, span) in unused {
            self.report(
                format!("webhooks.{key}"),
                &span,
                format!("has no effect with scheme \"{name}\"; remove it or change the scheme"),
            );
        }
        scheme
    }

    fn scheme_header(
        &mut self,
        key: &str,
        value: &Opt<String>,
        default: &'static str,
    ) -> HeaderName {
        let fallback = HeaderName::from_static(default);
        let Some(value) = value else { return fallback };
        match HeaderName::from_bytes(value.get_ref().as_bytes()) {
            Ok(name) if RESERVED_HEADERS.contains(&name.as_str()) => {
                self.report(
                    key,
                    &value.span(),
                    format!("\"{name}\" is set by the transport; choose another header name"),
                );
                fallback
            }
            Ok(name) if name.as_str().starts_with("webhook-") => {
                self.report(
                    key,
                    &value.span(),
                    "webhook-* names belong to the standard scheme; choose another header name",
                );
                fallback
            }
            Ok(name) => name,
            Err(_) => {
                self.report(
                    key,
                    &value.span(),
                    "is not a valid HTTP header name (letters, digits and - such as \
                     \"X-Klinivo-Signature\")",
                );
                fallback
            }
        }
    }

    fn event_types(&mut self, value: &Opt<Vec<String>>) -> BTreeSet<String> {
        let Some(value) = value else {
            return BTreeSet::new();
        };
        let mut types = BTreeSet::new();
        for text in value.get_ref() {
            if text == AUDIT_EVENT_TYPE {
                self.report(
                    "webhooks.event_types",
                    &value.span(),
                    format!(
                        "\"{AUDIT_EVENT_TYPE}\" is reserved for the audit stream; it is always \
                         available and the backend may not post it"
                    ),
                );
            } else if !is_event_type(text) {
                self.report(
                    "webhooks.event_types",
                    &value.span(),
                    format!(
                        "\"{}\" is not an event type: 1-{MAX_EVENT_TYPE_LEN} characters of \
                         a-z 0-9 . _ - such as \"appointment.scheduled\"",
                        text.escape_debug()
                    ),
                );
            } else if !types.insert(text.clone()) {
                self.report(
                    "webhooks.event_types",
                    &value.span(),
                    format!("\"{text}\" is listed twice"),
                );
            }
        }
        types
    }

    fn retry_schedule(
        &mut self,
        value: &Opt<Vec<String>>,
        default: Vec<Duration>,
    ) -> Vec<Duration> {
        let Some(value) = value else { return default };
        let key = "webhooks.retry_schedule";
        if value.get_ref().is_empty() {
            self.report(
                key,
                &value.span(),
                "must hold at least one wait, e.g. [\"1m\", \"2m\", \"4m\"]",
            );
            return default;
        }
        if value.get_ref().len() > MAX_RETRY_STEPS {
            self.report(
                key,
                &value.span(),
                format!("must hold at most {MAX_RETRY_STEPS} waits"),
            );
            return default;
        }
        let mut schedule = Vec::with_capacity(value.get_ref().len());
        for text in value.get_ref() {
            match humantime::parse_duration(text) {
                Ok(step) if (MIN_RETRY_STEP..=MAX_RETRY_STEP).contains(&step) => {
                    schedule.push(step);
                }
                Ok(_) => self.report(
                    key,
                    &value.span(),
                    format!("\"{text}\": each wait must be between 1s and 24h"),
                ),
                Err(error) => self.report(
                    key,
                    &value.span(),
                    format!(
                        "\"{}\" is not a duration ({error}); write e.g. \"30s\", \"5m\"",
                        text.escape_debug()
                    ),
                ),
            }
        }
        if schedule.len() == value.get_ref().len() {
            schedule
        } else {
            default
        }
    }

    fn webhook_paths(
        &mut self,
        raw: &RawWebhooks,
        auth: &AuthConfig,
        audit: &AuditConfig,
    ) -> (Option<String>, Option<String>) {
        let subscriptions = self.builtin_path(
            "webhooks.subscriptions_path",
            &raw.subscriptions_path,
            "/v1/webhooks",
        );
        let deliveries = self.builtin_path(
            "webhooks.deliveries_path",
            &raw.deliveries_path,
            "/v1/webhook-deliveries",
        );
        let others = [
            ("auth.whoami_path", &auth.whoami_path),
            ("auth.health_path", &auth.health_path),
            ("audit.query_path", &audit.query_path),
        ];
        for (key, path, value) in [
            (
                "webhooks.subscriptions_path",
                &subscriptions,
                &raw.subscriptions_path,
            ),
            (
                "webhooks.deliveries_path",
                &deliveries,
                &raw.deliveries_path,
            ),
        ] {
            let Some(path) = path else { continue };
            // Subscription ids live below the subscriptions path, so a path under it is taken too.
            let clash = others
                .iter()
                .find(|(_, other)| other.as_deref().is_some_and(|o| overlaps(o, path)));
            if let Some((other, _)) = clash {
                let span = value.as_ref().map_or(0..0, Spanned::span);
                self.report(
                    key,
                    &span,
                    format!("is already taken by another built-in endpoint ({other})"),
                );
            }
        }
        if let (Some(s), Some(d)) = (&subscriptions, &deliveries) {
            if overlaps(s, d) {
                let span = raw
                    .deliveries_path
                    .as_ref()
                    .or(raw.subscriptions_path.as_ref())
                    .map_or(0..0, Spanned::span);
                self.report(
                    "webhooks.deliveries_path",
                    &span,
                    "must differ from webhooks.subscriptions_path and lie outside it",
                );
            }
        }
        (subscriptions, deliveries)
    }

    /// A file holding a secret: readable, a regular file, and private to its owner.
    fn private_file(&mut self, key: &str, value: &Spanned<String>) -> PathBuf {
        let path = self.resolve(value.get_ref());
        match std::fs::File::open(&path).and_then(|f| f.metadata()) {
            Ok(meta) if !meta.is_file() => self.report(
                key,
                &value.span(),
                format!("{} is not a regular file", path.display()),
            ),
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => self.report(
                key,
                &value.span(),
                format!(
                    "{path} is accessible by group or others (mode {mode:03o}); run `chmod 600 \
                     {path}`",
                    path = path.display(),
                    mode = meta.permissions().mode() & 0o777
                ),
            ),
            Ok(meta) if meta.len() == 0 => {
                self.report(key, &value.span(), format!("{} is empty", path.display()))
            }
            Ok(_) => {}
            Err(error) => self.report(
                key,
                &value.span(),
                format!("cannot read {}: {error}", path.display()),
            ),
        }
        path
    }
}

/// Whether two built-in paths would answer the same request: equal, or one below the other
/// (the subscription endpoints also answer `{path}/{id}`).
fn overlaps(a: &str, b: &str) -> bool {
    let below = |outer: &str, inner: &str| {
        inner
            .strip_prefix(outer.trim_end_matches('/'))
            .is_some_and(|rest| rest.starts_with('/'))
    };
    a == b || below(a, b) || below(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_between_an_hour_and_ten_years() {
        assert_eq!(
            WebhooksConfig::default().dead_retention,
            Duration::from_secs(30 * 24 * 3600)
        );
        assert!(RETENTION_RANGE.contains(&WebhooksConfig::default().retention));
        assert!(!RETENTION_RANGE.contains(&Duration::from_secs(3599)));
        assert!(!RETENTION_RANGE.contains(&Duration::from_secs(3651 * 24 * 3600)));
    }

    #[test]
    fn event_type_names() {
        assert!(is_event_type("appointment.scheduled"));
        assert!(is_event_type("soap_note.created"));
        assert!(is_event_type("a-b.c_1"));
        assert!(!is_event_type(""));
        assert!(!is_event_type("Appointment.created"));
        assert!(!is_event_type("a b"));
        assert!(!is_event_type(&"a".repeat(65)));
        assert!(is_event_type(&"a".repeat(64)));
    }

    #[test]
    fn overlapping_paths() {
        assert!(overlaps("/v1/webhooks", "/v1/webhooks"));
        assert!(overlaps("/v1/webhooks", "/v1/webhooks/x"));
        assert!(overlaps("/v1/webhooks/x", "/v1/webhooks"));
        assert!(!overlaps("/v1/webhooks", "/v1/webhooks-deliveries"));
        assert!(!overlaps("/v1/webhooks", "/v1/webhook-deliveries"));
    }
}
