//! Validation of `[audit]`, with the defaults in one place ([`AuditConfig::default`]).

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::super::raw::RawAudit;
use super::super::{AuditConfig, AuthConfig, StorageConfig};
use super::Validator;
use crate::audit::{ClientIpMode, WhenFull};

/// Longest commit interval: records wait at most this long before they are on disk.
const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(10);

/// Longest a request may be held waiting for room in the queue.
const MAX_BLOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Allowed queue capacities (records, each a few hundred bytes in memory).
const QUEUE_RANGE: RangeInclusive<u64> = 1..=1_000_000;

/// Allowed file sizes before rotation.
const ROTATE_RANGE: RangeInclusive<u64> = 4096..=(1 << 40);

/// The audit directory's name under `storage.data_dir`.
const DEFAULT_DIR: &str = "audit";

impl Default for AuditConfig {
    /// The documented defaults, with the directory under the default data directory.
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("/var/lib/portcullis").join(DEFAULT_DIR),
            client_ip: ClientIpMode::default(),
            commit_interval: Duration::from_millis(50),
            queue_capacity: 65_536,
            when_full: WhenFull::default(),
            block_timeout: Duration::from_secs(2),
            rotate_bytes: 64 * 1024 * 1024,
            rotate_daily: true,
            hmac_key_file: None,
            query_path: Some("/v1/audit/events".to_owned()),
            query_scope: "audit:read".to_owned(),
        }
    }
}

impl Validator<'_> {
    pub(super) fn audit(
        &mut self,
        raw: RawAudit,
        storage: &StorageConfig,
        auth: &AuthConfig,
    ) -> AuditConfig {
        let defaults = AuditConfig::default();
        let enabled = raw.enabled.as_ref().is_none_or(|value| *value.get_ref());
        let dir = match &raw.dir {
            None => storage.data_dir.join(DEFAULT_DIR),
            Some(dir) if dir.get_ref().trim().is_empty() => {
                self.report("audit.dir", &dir.span(), "must not be empty");
                storage.data_dir.join(DEFAULT_DIR)
            }
            Some(dir) => self.resolve(dir.get_ref()),
        };
        let client_ip = match &raw.client_ip {
            None => defaults.client_ip,
            Some(value) => match value.get_ref().as_str() {
                "full" => ClientIpMode::Full,
                "truncated" => ClientIpMode::Truncated,
                "off" => ClientIpMode::Off,
                _ => {
                    self.report(
                        "audit.client_ip",
                        &value.span(),
                        "must be \"full\", \"truncated\" (IPv4 /24, IPv6 /48) or \"off\"",
                    );
                    defaults.client_ip
                }
            },
        };
        let when_full = match &raw.when_full {
            None => defaults.when_full,
            Some(value) => match value.get_ref().as_str() {
                "block" => WhenFull::Block,
                "shed" => WhenFull::Shed,
                _ => {
                    self.report(
                        "audit.when_full",
                        &value.span(),
                        "must be \"block\" (wait, then 503 audit.unavailable) or \"shed\" \
                         (serve without a record, counted)",
                    );
                    defaults.when_full
                }
            },
        };
        let commit_interval = self.duration_in(
            "audit.commit_interval",
            &raw.commit_interval,
            defaults.commit_interval,
            Duration::ZERO..=MAX_COMMIT_INTERVAL,
        );
        let block_timeout = self.duration_in(
            "audit.block_timeout",
            &raw.block_timeout,
            defaults.block_timeout,
            Duration::ZERO..=MAX_BLOCK_TIMEOUT,
        );
        let query_path = self.builtin_path("audit.query_path", &raw.query_path, "/v1/audit/events");
        if let (Some(path), Some(value)) = (&query_path, &raw.query_path) {
            let taken = [&auth.whoami_path, &auth.health_path]
                .into_iter()
                .any(|other| other.as_deref() == Some(path.as_str()));
            if taken {
                self.report(
                    "audit.query_path",
                    &value.span(),
                    "is already the path of another built-in endpoint (auth.whoami_path or \
                     auth.health_path)",
                );
            }
        }
        let query_scope = match &raw.query_scope {
            None => defaults.query_scope,
            Some(scope) if crate::keys::record::is_scope(scope.get_ref()) => {
                scope.get_ref().clone()
            }
            Some(scope) => {
                self.report(
                    "audit.query_scope",
                    &scope.span(),
                    "must be 1-64 characters of A-Z a-z 0-9 . _ : - (the characters a key's \
                     scopes may hold)",
                );
                defaults.query_scope
            }
        };
        AuditConfig {
            enabled,
            dir,
            client_ip,
            commit_interval,
            queue_capacity: self.count(
                "audit.queue_capacity",
                &raw.queue_capacity,
                defaults.queue_capacity as u64,
                QUEUE_RANGE,
            ) as usize,
            when_full,
            block_timeout,
            rotate_bytes: self.count(
                "audit.rotate_bytes",
                &raw.rotate_bytes,
                defaults.rotate_bytes,
                ROTATE_RANGE,
            ),
            rotate_daily: raw
                .rotate_daily
                .as_ref()
                .is_none_or(|value| *value.get_ref()),
            hmac_key_file: raw
                .hmac_key_file
                .as_ref()
                .map(|path| self.resolve(path.get_ref())),
            query_path: query_path.filter(|_| enabled),
            query_scope,
        }
    }
}
