//! Validation of `[idempotency]`, kept beside the rest of the validator so its defaults and
//! limits are read in one place.

use std::time::Duration;

use http::Method;

use super::super::raw::RawIdempotency;
use super::super::{IdempotencyConfig, StorageConfig, UpstreamConfig};
use super::Validator;
use crate::gate::idempotency::Durability;

/// Methods that require a key when the policy names none: every write.
const DEFAULT_METHODS: [Method; 4] = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

/// Bodies and answers on idempotent routes are held in memory; this bounds what a policy may
/// ask for.
const MAX_BUFFERED_BYTES: u64 = 64 * 1024 * 1024;

/// The lease when neither it nor `upstream.response_timeout` is known.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// Default for both body limits.
const DEFAULT_BUFFERED_BYTES: u64 = 1024 * 1024;

impl Validator<'_> {
    pub(super) fn idempotency(
        &mut self,
        raw: RawIdempotency,
        storage: &StorageConfig,
        upstream: Option<&UpstreamConfig>,
    ) -> IdempotencyConfig {
        let retention = self.duration(
            "idempotency.retention",
            &raw.retention,
            Duration::from_secs(24 * 3600),
        );
        let lease = self.lease(&raw, retention, upstream.map(|u| u.response_timeout));
        let durability = match &raw.durability {
            None => Durability::default(),
            Some(value) => match value.get_ref().as_str() {
                "fsync" => Durability::Fsync,
                "batched" => Durability::Batched,
                _ => {
                    self.report(
                        "idempotency.durability",
                        &value.span(),
                        "must be \"fsync\" (records on disk before forwarding) or \"batched\" \
                         (written by the store's periodic flush)",
                    );
                    Durability::default()
                }
            },
        };
        IdempotencyConfig {
            methods: self.idempotency_methods(&raw),
            retention,
            lease,
            max_body_bytes: self.count(
                "idempotency.max_body_bytes",
                &raw.max_body_bytes,
                DEFAULT_BUFFERED_BYTES,
                1..=MAX_BUFFERED_BYTES,
            ),
            max_response_bytes: self.count(
                "idempotency.max_response_bytes",
                &raw.max_response_bytes,
                DEFAULT_BUFFERED_BYTES,
                0..=MAX_BUFFERED_BYTES,
            ),
            key_file: match &raw.key_file {
                None => storage.data_dir.join("idempotency.key"),
                Some(path) => self.resolve(path.get_ref()),
            },
            durability,
            store_failures: raw
                .store_failures
                .as_ref()
                .is_some_and(|value| *value.get_ref()),
            sweep_interval: self.duration(
                "idempotency.sweep_interval",
                &raw.sweep_interval,
                Duration::from_secs(60),
            ),
            sweep_batch: self.count(
                "idempotency.sweep_batch",
                &raw.sweep_batch,
                1000,
                1..=1_000_000,
            ) as usize,
        }
    }

    /// The lease must outlast the wait for the backend, or a retry could be forwarded while
    /// the backend still works on the first request; by default it is twice that wait.
    fn lease(
        &mut self,
        raw: &RawIdempotency,
        retention: Duration,
        response_timeout: Option<Duration>,
    ) -> Duration {
        let default = response_timeout.map_or(DEFAULT_LEASE, |t| t.saturating_mul(2));
        let lease = self.duration("idempotency.lease", &raw.lease, default);
        if let (Some(value), Some(timeout)) = (&raw.lease, response_timeout) {
            if lease <= timeout {
                self.report(
                    "idempotency.lease",
                    &value.span(),
                    format!(
                        "must be longer than upstream.response_timeout ({}), or a retry could be \
                         forwarded while the backend still works on the first request",
                        humantime::format_duration(timeout)
                    ),
                );
            }
        }
        if lease >= retention {
            let (key, span) = match (&raw.lease, &raw.retention) {
                (Some(value), _) => ("idempotency.lease", value.span()),
                (None, Some(value)) => ("idempotency.retention", value.span()),
                (None, None) => return lease,
            };
            self.report(
                key,
                &span,
                "the lease must be shorter than idempotency.retention",
            );
        }
        lease
    }

    fn idempotency_methods(&mut self, raw: &RawIdempotency) -> Vec<Method> {
        let Some(value) = &raw.methods else {
            return DEFAULT_METHODS.to_vec();
        };
        let mut methods = Vec::new();
        for text in value.get_ref() {
            let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
            match Method::from_bytes(text.as_bytes()) {
                Ok(method) if valid && method != Method::CONNECT && method != Method::TRACE => {
                    if !methods.contains(&method) {
                        methods.push(method);
                    }
                }
                _ => self.report(
                    "idempotency.methods",
                    &value.span(),
                    format!(
                        "\"{text}\" is not an upper-case HTTP method such as POST, PUT, PATCH or \
                         DELETE"
                    ),
                ),
            }
        }
        methods
    }
}
