//! The long-lived parts of a running sidecar, shared by every connection and the admin socket.
//!
//! The policy is swapped on reload; everything here outlives policies: the store, the key and
//! organization registries, the admin action log, the failed-authentication throttle, the
//! request limits and quotas (so a reload never refills anyone's buckets), the idempotency
//! cache and the audit trail's writer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::admin_log::AdminLog;
use crate::audit::{Audit, AuditError};
use crate::gate::idempotency::{Idempotency, IdempotencyError};
use crate::gate::ratelimit::{LimitClock, RateLimits};
use crate::gate::throttle::AuthThrottle;
use crate::keys::{KeyError, KeyRegistry, Pepper, PepperError};
use crate::metrics::Metrics;
use crate::orgs::{OrgError, OrgRegistry};
use crate::policy::{Policy, PolicyHandle};
use crate::store::{Store, StoreError};
use crate::webhooks::deliveries::{Deliveries, DeliveriesError};
use crate::webhooks::subscriptions::Subscriptions;

/// How often idle throttle entries, full rate-limit buckets and idle quota counters are shed.
/// Short, so memory follows the keys active in the last few seconds rather than the last
/// minute.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// Why the sidecar's state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The sled store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pepper file is missing and cannot be created, or is unsafe.
    #[error(transparent)]
    Pepper(#[from] PepperError),
    /// The key registry could not be loaded.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The organization registry could not be loaded.
    #[error(transparent)]
    Orgs(#[from] OrgError),
    /// The idempotency key file or record tree could not be opened.
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    /// The audit directory, its HMAC key or its index could not be opened or repaired.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The webhook outbox or its sealing key could not be opened.
    #[error(transparent)]
    Deliveries(#[from] DeliveriesError),
}

/// Everything a request or an admin command may consult besides the policy.
pub struct State {
    /// The running policy.
    pub policies: PolicyHandle,
    /// The one sled handle.
    pub store: Store,
    /// API keys.
    pub keys: KeyRegistry,
    /// Organizations, HIPAA mode and BAA evidence.
    pub orgs: OrgRegistry,
    /// Every administrative change.
    pub admin_log: AdminLog,
    /// Failed-authentication budgets.
    pub throttle: AuthThrottle,
    /// Per-key request limits and daily quotas.
    pub limits: RateLimits,
    /// Cached answers of writes sent with an `Idempotency-Key`.
    pub idempotency: Idempotency,
    /// Webhook subscriptions and their sealed signing secrets.
    pub subscriptions: Subscriptions,
    /// The Prometheus registry every part of the sidecar counts into.
    pub metrics: Metrics,
    /// The webhook outbox and the delivery worker's shared handle.
    pub deliveries: Deliveries,
    /// The audit trail: every request and admin action. Declared last so that dropping the
    /// state writes and syncs every queued record after everything else is gone.
    pub audit: Audit,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl State {
    /// Opens the store in the policy's data directory and loads the registries.
    pub fn open(policy: Policy) -> Result<Arc<Self>, StateError> {
        Self::open_with_clock(policy, LimitClock::system())
    }

    /// [`State::open`] with limits, quotas and the throttle timed by `clock`, so tests can
    /// move time (refills, `Retry-After`, midnight) instead of waiting for it.
    pub fn open_with_clock(policy: Policy, clock: LimitClock) -> Result<Arc<Self>, StateError> {
        let config = &policy.config;
        let store = Store::open(&config.storage.data_dir)?;
        let pepper = Pepper::load_or_create(&config.auth.pepper_file)?;
        let keys = KeyRegistry::load(&store, pepper, &config.auth.namespace)?;
        let orgs = OrgRegistry::load(&store)?;
        let metrics = Metrics::new();
        let audit = Audit::open_observed(&store, &config.audit, metrics.audit_fsync_observer())?;
        let admin_log = AdminLog::open(&store)?.with_audit(audit.link());
        let auth = &config.auth;
        let throttle = AuthThrottle::new(
            auth.max_failures_per_ip,
            auth.max_failures_per_key,
            auth.failure_window,
            clock.clone(),
        );
        let idempotency = Idempotency::open(&store, &config.idempotency, clock.clone())?;
        let subscription_keys =
            crate::gate::idempotency::seal::SealKeys::load_or_create(&config.idempotency.key_file)
                .map_err(IdempotencyError::from)?;
        let subscriptions = Subscriptions::open(&store, subscription_keys)?;
        let deliveries = Deliveries::open(&store, &config.idempotency.key_file, clock.clone())?;
        let limits = RateLimits::open(&store, clock)?;
        Ok(Arc::new(Self {
            policies: PolicyHandle::new(policy),
            store,
            keys,
            orgs,
            admin_log,
            throttle,
            limits,
            idempotency,
            subscriptions,
            metrics,
            deliveries,
            audit,
        }))
    }

    /// Runs periodic housekeeping, the webhook delivery worker and the audit stream until the
    /// returned task is aborted (which stops all three).
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let state = Arc::downgrade(self);
        let webhooks = crate::webhooks::worker::start(self);
        tokio::spawn(async move {
            let _webhooks = webhooks;
            let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(state) = state.upgrade() else { return };
                // Sweeping maps of many keys takes a while: keep it off the async workers.
                let housekeeping = tokio::task::spawn_blocking(move || state.housekeeping());
                if let Err(error) = housekeeping.await {
                    tracing::warn!(%error, "housekeeping task failed");
                }
            }
        })
    }

    /// One round of housekeeping: sheds idle throttle entries, full buckets and idle quota
    /// counters, sweeps a batch of expired idempotency records and of webhook deliveries past
    /// their retention when due, and once a day deletes past days' quota rows. Blocking.
    fn housekeeping(&self) {
        self.throttle.shed_idle();
        self.limits.shed_idle();
        let policy = self.policies.current();
        self.idempotency.sweep_if_due(&policy.config.idempotency);
        self.deliveries.sweep_if_due(&policy.config.webhooks);
        if self.limits.prune_due() {
            if let Err(error) = self.limits.prune_quotas() {
                tracing::warn!(%error, "cannot prune past days' quota counters");
            }
        }
    }
}

/// Wall-clock time in unix seconds, the unit every stored timestamp uses.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
