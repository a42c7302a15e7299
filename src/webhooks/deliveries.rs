//! The running delivery machinery's shared handle (`State::deliveries`): the outbox, the
//! clock every due time is read from, the worker's wake-up bell and the set of deliveries
//! being attempted right now.
//!
//! Ingest, the status endpoint, the admin socket and the audit stream all reach the outbox
//! through here, and ring [`Deliveries::wake`] after adding work so the worker does not wait
//! for its next poll. Housekeeping applies the retention settings through
//! [`Deliveries::sweep_if_due`].

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::delivery::DeliveryId;
use super::outbox::Outbox;
use crate::config::WebhooksConfig;
use crate::gate::idempotency::seal::SealKeys;
use crate::gate::ratelimit::LimitClock;
use crate::keys::secret_file::SecretFileError;
use crate::store::{Store, StoreError};

/// Why the delivery machinery could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeliveriesError {
    /// The sealing key file could not be read or created.
    #[error(transparent)]
    KeyFile(#[from] SecretFileError),
    /// The outbox tree could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Retention sweeps run at most this often (of the deliveries' clock)...
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// ...and each ends or removes at most this many deliveries of each kind; a full batch makes
/// the next housekeeping round sweep again, so a backlog drains at housekeeping's pace.
const SWEEP_BATCH: usize = 2_000;

/// What one retention sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swept {
    /// Dead deliveries ended as failed (`expired`).
    pub expired: usize,
    /// Delivered and failed records deleted.
    pub removed: usize,
}

/// The shared handle. Cheap to clone.
#[derive(Clone)]
pub struct Deliveries {
    outbox: Outbox,
    clock: LimitClock,
    wake: Arc<Notify>,
    in_flight: Arc<Mutex<HashSet<DeliveryId>>>,
    /// When the last retention sweep ran (deliveries' clock, unix ms).
    last_sweep_ms: Arc<AtomicU64>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries").finish_non_exhaustive()
    }
}

impl Deliveries {
    /// Opens the outbox in `store`, sealing event data under the key file at `key_file`
    /// (the idempotency key file: one key file to protect, one sealing code path), with due
    /// times read from `clock`.
    pub fn open(
        store: &Store,
        key_file: &Path,
        clock: LimitClock,
    ) -> Result<Self, DeliveriesError> {
        let keys = SealKeys::load_or_create(key_file)?;
        Ok(Self {
            outbox: Outbox::open(store, keys)?,
            clock,
            wake: Arc::new(Notify::new()),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            last_sweep_ms: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Runs [`Deliveries::sweep`] when one is due; logs what it did. Blocking.
    pub fn sweep_if_due(&self, config: &WebhooksConfig) {
        let now = self.now_ms();
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        let every = u64::try_from(SWEEP_EVERY.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < every {
            return;
        }
        match self.sweep(config, now) {
            Ok(swept) => {
                if swept.expired > 0 || swept.removed > 0 {
                    tracing::info!(
                        expired = swept.expired,
                        removed = swept.removed,
                        "webhook deliveries past their retention ended or removed"
                    );
                }
                let full = swept.expired == SWEEP_BATCH || swept.removed == SWEEP_BATCH;
                if !full {
                    self.last_sweep_ms.store(now, Ordering::Relaxed);
                }
            }
            Err(error) => {
                self.last_sweep_ms.store(now, Ordering::Relaxed);
                tracing::warn!(%error, "cannot apply the webhook retention settings");
            }
        }
    }

    /// Applies the retention settings once, a batch of each, at `now_ms`: dead deliveries of
    /// events accepted more than `dead_retention` ago end as failed (`expired`, deleting the
    /// sealed data no delivery needs any more), then delivered and failed records of events
    /// accepted more than `retention` ago are deleted. Blocking.
    pub fn sweep(&self, config: &WebhooksConfig, now_ms: u64) -> Result<Swept, StoreError> {
        let cutoff = |keep: Duration| {
            now_ms.saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX))
        };
        let expired =
            self.outbox
                .expire_dead(cutoff(config.dead_retention), now_ms, SWEEP_BATCH)?;
        let removed = self
            .outbox
            .remove_finished(cutoff(config.retention), SWEEP_BATCH)?;
        Ok(Swept { expired, removed })
    }

    /// The time due times are compared with, in unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.since_epoch().as_millis()).unwrap_or(u64::MAX)
    }

    /// The clock.
    pub fn clock(&self) -> &LimitClock {
        &self.clock
    }

    /// Tells the worker to look for due deliveries now (new work, or a moved clock in tests).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(super) fn bell(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Whether `id` is being attempted right now.
    pub fn is_in_flight(&self, id: &DeliveryId) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    /// Marks `id` as being attempted; `false` if it already was.
    pub(super) fn begin(&self, id: &DeliveryId) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone())
    }

    /// Marks `id` as no longer being attempted and wakes the worker (a slot is free).
    pub(super) fn end(&self, id: &DeliveryId) {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        self.wake();
    }

    /// How many deliveries are being attempted right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
