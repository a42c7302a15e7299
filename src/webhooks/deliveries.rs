//! The running delivery machinery's shared handle (`State::deliveries`): the outbox, the
//! clock every due time is read from, the worker's wake-up bell and the set of deliveries
//! being attempted right now.
//!
//! Ingest, the status endpoint, the admin socket and the audit stream all reach the outbox
//! through here, and ring [`Deliveries::wake`] after adding work so the worker does not wait
//! for its next poll.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::delivery::DeliveryId;
use super::outbox::Outbox;
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

/// The shared handle. Cheap to clone.
#[derive(Clone)]
pub struct Deliveries {
    outbox: Outbox,
    clock: LimitClock,
    wake: Arc<Notify>,
    in_flight: Arc<Mutex<HashSet<DeliveryId>>>,
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
        })
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
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
