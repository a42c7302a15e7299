//! Idempotency-Key: a partner's retry of a write never performs the write twice.
//!
//! Integration platforms retry on timeouts and dropped connections. On routes that require an
//! `Idempotency-Key` (by default every POST, PUT, PATCH and DELETE; a route may opt out or in)
//! the first request with a key is recorded before it is forwarded, and every later request
//! with the same key from the same API key gets the recorded answer, marked
//! `Idempotent-Replayed: true`, without reaching the backend. Semantics follow the IETF
//! Idempotency-Key draft and Stripe, which partners already know.
//!
//! The parts, each in its own module:
//! - [`key`] parses the header (bare or structured-field string, 1–255 visible ASCII);
//! - [`fingerprint`] derives the record's scope (org, key id, keyed hash of the key) and the
//!   request's fingerprint (method, route, path, query, body);
//! - [`seal`] and [`record`] seal each record with XChaCha20-Poly1305 under the key file,
//!   bound to its scope; only the fingerprint and timestamps are in clear;
//! - `cache` moves records between pending, stored and absent by compare-and-swap, so of many
//!   simultaneous duplicates exactly one is forwarded;
//! - `admit` is the gate, `lease` forwards the claimed request to completion and records its
//!   answer, `replay` decides which header fields are kept, `sweep` removes expired records in
//!   bounded batches.
//!
//! **Durability and crashes.** With `durability = "fsync"` (the default) the pending record is
//! on disk before the request is forwarded, and the recorded answer is on disk before the
//! client sees it. A crash between forwarding and recording leaves the pending record: retries
//! get `409 idempotency.in_progress` until its lease ends, and then the next retry is
//! forwarded again, because whether the backend acted cannot be known. With `"batched"` the
//! store's periodic flush (every 500 ms) writes records, so a crash can also forget records of
//! the last half second, and a retry of one of those requests is forwarded again.
//!
//! **Leases.** A claimed request must get its answer within the lease (longer than
//! `upstream.response_timeout`, twice it by default); past it the request answers `504` and the
//! key is free, so a lease never ends while its request is still being waited for. The forward
//! runs in its own task, so a client that hangs up does not cancel it: the answer is still
//! recorded and the client's retry gets it.

mod admit;
mod cache;
mod capture;
pub mod fingerprint;
pub mod key;
mod lease;
pub mod record;
mod replay;
pub mod seal;
mod sweep;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use admit::{requires_key, Admission};
pub use cache::{CacheError, TREE};
pub use key::{IdempotencyKey, KeyHeaderError, IDEMPOTENCY_KEY, MAX_KEY_LEN};
pub use lease::Lease;
pub use replay::REPLAYED_HEADER;
pub use sweep::SweepReport;

use self::cache::Cache;
use self::seal::SealKeys;
use self::sweep::Sweeper;
use crate::config::IdempotencyConfig;
use crate::gate::ratelimit::LimitClock;
use crate::keys::secret_file::SecretFileError;
use crate::store::{Store, StoreError};

/// When a pending record is considered written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Flushed to disk before the request is forwarded, and the answer before it is sent.
    #[default]
    Fsync,
    /// Written by the store's periodic flush; faster, but a crash can forget the last
    /// half second of records.
    Batched,
}

/// Why the idempotency cache could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The key file is missing and cannot be created, or is unsafe.
    #[error(transparent)]
    KeyFile(#[from] SecretFileError),
    /// The record tree could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The idempotency cache: shared by every request, outliving policy reloads.
///
/// Cheap to clone. The key file is read once at start; the other settings are taken from the
/// running policy for each request, so a reload changes them for the next request.
#[derive(Debug, Clone)]
pub struct Idempotency {
    cache: Arc<Cache>,
    sweeper: Arc<Sweeper>,
    last_sweep_ms: Arc<AtomicU64>,
}

impl Idempotency {
    /// Opens the record tree in `store` and the key file named by `config` (created 0600 if
    /// missing). `clock` tells time for leases, expiry and the sweep, so tests can move it.
    pub fn open(
        store: &Store,
        config: &IdempotencyConfig,
        clock: LimitClock,
    ) -> Result<Self, IdempotencyError> {
        let keys = SealKeys::load_or_create(&config.key_file)?;
        Ok(Self {
            cache: Arc::new(Cache::open(store, keys, clock)?),
            sweeper: Arc::new(Sweeper::default()),
            last_sweep_ms: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Records that failed to open since start (a replaced key file, tampering, corruption);
    /// each was treated as absent. For the metrics endpoint.
    pub fn open_failures(&self) -> u64 {
        self.cache.open_failures()
    }

    /// Removes expired records among the next `batch` and reports what it did. Blocking.
    pub fn sweep(&self, batch: usize) -> Result<SweepReport, StoreError> {
        self.sweeper
            .pass(self.cache.tree(), self.cache.now_ms(), batch)
    }

    /// Runs one sweep pass if `config.sweep_interval` has passed since the last one, and
    /// logs what it did. Blocking: called from the state's housekeeping, which runs off the
    /// async workers.
    pub fn sweep_if_due(&self, config: &IdempotencyConfig) {
        let now = self.cache.now_ms();
        let interval = u64::try_from(config.sweep_interval.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < interval {
            return;
        }
        self.last_sweep_ms.store(now, Ordering::Relaxed);
        match self.sweep(config.sweep_batch) {
            Ok(report) if report.removed > 0 => tracing::debug!(
                examined = report.examined,
                removed = report.removed,
                "expired idempotency records removed"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot sweep expired idempotency records"),
        }
    }
}
