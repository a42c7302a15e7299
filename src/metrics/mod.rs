//! Prometheus metrics: one registry per running sidecar, served on the internal listener.
//!
//! Every family is created once, here, with a typed label set ([`labels`]); the request path
//! only looks up an existing series (route and organization names are interned, so counting
//! a request allocates nothing once its series exists). Label values are policy route names,
//! problem codes, status codes, organization ids and small enums: never a path, a query or
//! anything else a request carried. The families and their meaning are listed in
//! `docs/operations.md`.

pub mod labels;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::problem::ProblemCode;
pub use labels::{
    CodeLabel, DeliveryOutcome, IdempotencyOutcome, LimitKind, ReloadResult, TlsFailure,
};
use labels::{
    DeliveryLabels, IdempotencyLabels, LimitLabels, ReloadLabels, RequestLabels, TlsFailureLabels,
};

/// The media type of the text `/metrics` answers with (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The route label of a request that was answered before any route matched.
pub const NO_ROUTE: &str = "@none";

/// Bucket bounds (seconds) of the request and upstream latency histograms: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket bounds (seconds) of the audit fsync histogram: 0.1 ms to 1 s.
const FSYNC_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Most distinct route and organization names kept as label values; past it new names share
/// one `@other` series, so a policy or org table gone wild cannot exhaust memory.
const MAX_NAMES: usize = 10_000;

/// The label value names beyond [`MAX_NAMES`] fall back to.
const OTHER_NAME: &str = "@other";

/// Every metric a running sidecar exports.
pub struct Metrics {
    registry: Registry,
    names: Names,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histogram,
    upstream_duration: Histogram,
    limit_refusals: Family<LimitLabels, Counter>,
    idempotency: Family<IdempotencyLabels, Counter>,
    audit_queue_depth: Gauge,
    audit_fsync: Histogram,
    webhook_deliveries: Family<DeliveryLabels, Counter>,
    webhook_dlq_size: Gauge,
    tls_handshakes: Counter,
    tls_failures: Family<TlsFailureLabels, Counter>,
    open_connections: Gauge,
    reloads: Family<ReloadLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family, with the enum-labelled series at zero so that
    /// dashboards and alerts see them before the first event.
    pub fn new() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            names: Names::default(),
            requests: Family::default(),
            request_duration: Histogram::new(LATENCY_BUCKETS),
            upstream_duration: Histogram::new(LATENCY_BUCKETS),
            limit_refusals: Family::default(),
            idempotency: Family::default(),
            audit_queue_depth: Gauge::default(),
            audit_fsync: Histogram::new(FSYNC_BUCKETS),
            webhook_deliveries: Family::default(),
            webhook_dlq_size: Gauge::default(),
            tls_handshakes: Counter::default(),
            tls_failures: Family::default(),
            open_connections: Gauge::default(),
            reloads: Family::default(),
        };
        metrics.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "portcullis_requests",
            "Requests answered on the TLS listener, by policy route, status and problem code",
            self.requests.clone(),
        );
        r.register(
            "portcullis_request_duration_seconds",
            "Time from a request's arrival to its answer's head",
            self.request_duration.clone(),
        );
        r.register(
            "portcullis_upstream_duration_seconds",
            "Time from forwarding a request to the backend's answer head (or its failure)",
            self.upstream_duration.clone(),
        );
        r.register(
            "portcullis_limit_refusals",
            "Requests refused by a rate limit, a daily quota or the failed-authentication budget",
            self.limit_refusals.clone(),
        );
        r.register(
            "portcullis_idempotency_requests",
            "Writes with an Idempotency-Key, by what the cache did: hit (replayed), miss (forwarded), conflict",
            self.idempotency.clone(),
        );
        r.register(
            "portcullis_audit_queue_depth",
            "Audit records reserved or waiting to be written and synced",
            self.audit_queue_depth.clone(),
        );
        r.register(
            "portcullis_audit_fsync_duration_seconds",
            "Time of one audit batch write and fdatasync",
            self.audit_fsync.clone(),
        );
        r.register(
            "portcullis_webhook_deliveries",
            "Webhook delivery attempts, by outcome",
            self.webhook_deliveries.clone(),
        );
        r.register(
            "portcullis_webhook_dlq_size",
            "Webhook deliveries in the dead-letter queue",
            self.webhook_dlq_size.clone(),
        );
        r.register(
            "portcullis_tls_handshakes",
            "TLS handshakes completed on the TLS listener",
            self.tls_handshakes.clone(),
        );
        r.register(
            "portcullis_tls_handshake_failures",
            "Connections to the TLS listener that did not become a TLS session, by reason",
            self.tls_failures.clone(),
        );
        r.register(
            "portcullis_open_connections",
            "Client connections open on the TLS listener",
            self.open_connections.clone(),
        );
        r.register(
            "portcullis_config_reloads",
            "Configuration reloads, by result",
            self.reloads.clone(),
        );
        for outcome in [
            IdempotencyOutcome::Hit,
            IdempotencyOutcome::Miss,
            IdempotencyOutcome::Conflict,
        ] {
            let _ = self
                .idempotency
                .get_or_create(&IdempotencyLabels { outcome });
        }
        for outcome in [
            DeliveryOutcome::Delivered,
            DeliveryOutcome::Retrying,
            DeliveryOutcome::DeadLettered,
        ] {
            let _ = self
                .webhook_deliveries
                .get_or_create(&DeliveryLabels { outcome });
        }
        for reason in TlsFailure::ALL {
            let _ = self
                .tls_failures
                .get_or_create(&TlsFailureLabels { reason });
        }
        for result in [ReloadResult::Success, ReloadResult::Failure] {
            let _ = self.reloads.get_or_create(&ReloadLabels { result });
        }
        self
    }

    /// Counts one answered request and its latency. `route` is a policy route name, a
    /// built-in's `@` name or [`NO_ROUTE`].
    pub fn request(&self, route: &str, status: u16, code: Option<ProblemCode>, elapsed: Duration) {
        let labels = RequestLabels {
            route: self.names.get(route),
            status,
            code: CodeLabel(code),
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    /// Observes one exchange with the backend, successful or not.
    pub fn upstream(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a refusal by a limit; `org` is `None` before authentication.
    pub fn limit_refused(&self, kind: LimitKind, org: Option<&str>) {
        let labels = LimitLabels {
            kind,
            org: self.names.get(org.unwrap_or("")),
        };
        self.limit_refusals.get_or_create(&labels).inc();
    }

    /// Counts what the idempotency cache did with one write.
    pub fn idempotency(&self, outcome: IdempotencyOutcome) {
        self.idempotency
            .get_or_create(&IdempotencyLabels { outcome })
            .inc();
    }

    /// Sets the number of audit records reserved or waiting for the writer.
    pub fn set_audit_queue_depth(&self, depth: usize) {
        self.audit_queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// The handle the audit writer thread times its syncs with.
    pub fn audit_fsync_observer(&self) -> FsyncObserver {
        FsyncObserver(Some(self.audit_fsync.clone()))
    }

    /// Counts one webhook delivery attempt.
    pub fn webhook_delivery(&self, outcome: DeliveryOutcome) {
        self.webhook_deliveries
            .get_or_create(&DeliveryLabels { outcome })
            .inc();
    }

    /// Sets the number of deliveries in the dead-letter queue.
    pub fn set_dlq_size(&self, size: u64) {
        self.webhook_dlq_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// Counts one completed TLS handshake.
    pub fn tls_handshake(&self) {
        self.tls_handshakes.inc();
    }

    /// Counts one connection that did not become a TLS session.
    pub fn tls_failure(&self, reason: TlsFailure) {
        self.tls_failures
            .get_or_create(&TlsFailureLabels { reason })
            .inc();
    }

    /// Counts a client connection as open until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.open_connections.inc();
        OpenConnection(self.open_connections.clone())
    }

    /// Counts one configuration reload.
    pub fn reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Every family in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(8 * 1024);
        prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// One open client connection; dropping it takes it off `portcullis_open_connections`.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Times audit syncs into `portcullis_audit_fsync_duration_seconds`; the default observes
/// nothing (an audit trail opened without metrics).
#[derive(Debug, Clone, Default)]
pub struct FsyncObserver(Option<Histogram>);

impl FsyncObserver {
    /// Records one write-and-sync.
    pub fn observe(&self, elapsed: Duration) {
        if let Some(histogram) = &self.0 {
            histogram.observe(elapsed.as_secs_f64());
        }
    }
}

/// Interned label values: a name's `Arc` is made once, so looking up its series afterwards
/// allocates nothing.
#[derive(Debug, Default)]
struct Names(RwLock<HashSet<Arc<str>>>);

impl Names {
    fn get(&self, name: &str) -> Arc<str> {
        if let Ok(names) = self.0.read() {
            if let Some(found) = names.get(name) {
                return found.clone();
            }
        }
        let Ok(mut names) = self.0.write() else {
            // A poisoned lock only means another thread panicked mid-insert; count under the
            // shared name rather than fail.
            return Arc::from(OTHER_NAME);
        };
        if let Some(found) = names.get(name) {
            return found.clone();
        }
        let name: Arc<str> = if names.len() < MAX_NAMES {
            Arc::from(name)
        } else {
            match names.get(OTHER_NAME) {
                Some(other) => return other.clone(),
                None => Arc::from(OTHER_NAME),
            }
        };
        names.insert(name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_interned_and_capped() {
        let names = Names::default();
        let a = names.get("notes.read");
        let b = names.get("notes.read");
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..MAX_NAMES + 5 {
            names.get(&format!("route-{i}"));
        }
        assert_eq!(&*names.get("one-more"), OTHER_NAME);
        assert!(names.0.read().unwrap().len() <= MAX_NAMES + 1);
    }

    #[test]
    fn render_lists_every_family_in_prometheus_text() {
        let metrics = Metrics::new();
        metrics.request("notes.read", 200, None, Duration::from_millis(3));
        metrics.request(
            NO_ROUTE,
            401,
            Some(ProblemCode::AuthInvalid),
            Duration::ZERO,
        );
        metrics.limit_refused(LimitKind::RateLimited, Some("acme"));
        let text = metrics.render().unwrap();
        for family in [
            "portcullis_requests_total",
            "portcullis_request_duration_seconds",
            "portcullis_upstream_duration_seconds",
            "portcullis_limit_refusals_total",
            "portcullis_idempotency_requests_total",
            "portcullis_audit_queue_depth",
            "portcullis_audit_fsync_duration_seconds",
            "portcullis_webhook_deliveries_total",
            "portcullis_webhook_dlq_size",
            "portcullis_tls_handshakes_total",
            "portcullis_tls_handshake_failures_total",
            "portcullis_open_connections",
            "portcullis_config_reloads_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} in\n{text}"
            );
        }
        assert!(text.contains(
            r#"portcullis_requests_total{route="@none",status="401",code="auth.invalid"} 1"#
        ));
        assert!(
            text.contains(r#"portcullis_limit_refusals_total{kind="rate_limited",org="acme"} 1"#)
        );
    }

    #[test]
    fn the_connection_gauge_follows_its_guards() {
        let metrics = Metrics::new();
        let first = metrics.connection_opened();
        let second = metrics.connection_opened();
        assert_eq!(metrics.open_connections.get(), 2);
        drop(first);
        drop(second);
        assert_eq!(metrics.open_connections.get(), 0);
    }
}
