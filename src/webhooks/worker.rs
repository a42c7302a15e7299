//! The delivery worker: one supervisor task that finds due deliveries and runs each attempt
//! in its own task, within two bounds.
//!
//! - **Finding work.** Due deliveries come from the outbox's `(due time, delivery id)` index,
//!   oldest first: a short scan just past the deliveries in flight, and when that finds too
//!   little a deep one of up to [`SCAN_BUDGET`] entries, at most every [`DEEP_SCAN_EVERY`].
//!   No record is scanned to find work: each due entry names its subscription, so entries
//!   of a saturated endpoint are passed over unread, and a record is read (and checked to be
//!   still due) only when its delivery is about to start.
//! - **Bounds.** `webhooks.max_in_flight` attempts over all subscriptions, and
//!   `webhooks.endpoint_concurrency` per subscription. A subscription at its bound is skipped
//!   for the round (its deliveries stay due) and the scan goes on to the next delivery, so
//!   a slow endpoint holds only its own slots and never delays anyone else.
//! - **An attempt.** The event body `{id, type, created_at, org, data}` is rebuilt from the
//!   sealed outbox copy, signed with the subscription's current secrets (and any still in
//!   their rotation grace) under the configured scheme, and POSTed with the same event id on
//!   every attempt. 2xx is delivered; 410 disables the subscription and ends its pending
//!   deliveries as failed; 429 and 503 may name the wait (`Retry-After`, capped at the
//!   schedule's longest); anything else follows `webhooks.retry_schedule` with jitter, and
//!   after its last entry the delivery is dead (the dead-letter queue). A destination the
//!   SSRF rules refuse at connect time is a failed attempt like a timeout: it follows the
//!   schedule, so it cannot cause a retry storm.
//! - **Durability.** The outcome is written to the outbox before the delivery can be picked
//!   again; a delivery whose attempt was cut short (a crash, a shutdown) keeps its due entry
//!   and is attempted again: at-least-once.
//! - **Time.** Due times are read from the state's [`LimitClock`], so tests move a manual
//!   clock through the whole schedule and call [`Deliveries::wake`] instead of waiting.
//!
//! Nothing here logs or keeps a receiver's answer body, the event data or a secret: log lines
//! name delivery and subscription ids, statuses and fixed error kinds.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::deliveries::Deliveries;
use super::delivery::{DeliveryRecord, DeliveryStatus, EventHeader, FailureKind};
use super::destination::{DeliveryError, ReceiverClient};
use super::schedule::{self, Next, Outcome};
use super::sign;
use super::subscriptions::{DisableReason, SubscriptionId, SubscriptionStatus};
use crate::config::WebhooksConfig;
use crate::metrics::labels::DeliveryOutcome;
use crate::state::State;

/// Most due entries one round looks at.
pub const SCAN_BUDGET: usize = 4096;

/// Free slots one short scan looks for (twice over, as entries of saturated endpoints are
/// passed over), however many are free: rounds are frequent, so each stays short.
const QUICK_SLOTS: usize = 32;

/// Longest the supervisor sleeps between looks, so a moved clock or a missed wake-up costs
/// at most this long.
const MAX_IDLE: Duration = Duration::from_millis(500);

/// Pause after a failed read of the outbox, so a broken store does not spin.
const STORE_BACKOFF: Duration = Duration::from_secs(1);

/// Deep scans (past the head of the due index) run at most this often: they find work of
/// idle endpoints hidden behind a saturated endpoint's backlog, which can wait this long,
/// while every finished attempt would otherwise pay for one.
const DEEP_SCAN_EVERY: Duration = Duration::from_millis(100);

/// How often the dead-letter queue's size is counted for the metrics gauge.
const DLQ_GAUGE_EVERY: Duration = Duration::from_secs(10);

/// Starts the supervisor. It holds the state only weakly between rounds; aborting the
/// returned task also aborts every attempt in flight (their deliveries stay due).
pub fn spawn(state: &Arc<State>) -> JoinHandle<()> {
    let weak = Arc::downgrade(state);
    let deliveries = state.deliveries.clone();
    tokio::spawn(supervise(weak, deliveries))
}

/// Starts the delivery worker and the audit stream; both stop when the guard is dropped.
pub fn start(state: &Arc<State>) -> WebhookTasks {
    WebhookTasks(vec![spawn(state), super::audit_stream::spawn(state)])
}

/// The webhook background tasks, aborted when dropped (with the maintenance task that
/// holds them).
#[derive(Debug)]
pub struct WebhookTasks(Vec<JoinHandle<()>>);

impl Drop for WebhookTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// What the supervisor keeps between rounds.
struct Supervisor {
    deliveries: Deliveries,
    attempts: JoinSet<()>,
    global: Option<(usize, Arc<Semaphore>)>,
    per_subscription: HashMap<String, Arc<Semaphore>>,
    client: Option<(ClientSettings, ReceiverClient)>,
    dlq_counted: Option<Instant>,
    deep_scanned: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientSettings {
    allow_private: bool,
    ca_file: Option<std::path::PathBuf>,
    timeout: Duration,
}

async fn supervise(weak: Weak<State>, deliveries: Deliveries) {
    let bell = deliveries.bell();
    let mut supervisor = Supervisor {
        deliveries,
        attempts: JoinSet::new(),
        global: None,
        per_subscription: HashMap::new(),
        client: None,
        dlq_counted: None,
        deep_scanned: None,
    };
    loop {
        let wait = {
            let Some(state) = weak.upgrade() else { return };
            supervisor.round(&state)
        };
        tokio::select! {
            () = bell.notified() => {}
            () = tokio::time::sleep(wait) => {}
            Some(_) = supervisor.attempts.join_next(), if !supervisor.attempts.is_empty() => {}
        }
        while supervisor.attempts.try_join_next().is_some() {}
    }
}

impl Supervisor {
    /// Starts every due delivery the bounds allow; returns how long to wait before looking
    /// again (unless woken earlier).
    fn round(&mut self, state: &Arc<State>) -> Duration {
        let policy = state.policies.current();
        let config = &policy.config.webhooks;
        if !config.enabled {
            return MAX_IDLE;
        }
        let Some(client) = self.client(config) else {
            return STORE_BACKOFF;
        };
        self.count_dlq(state);
        let global = self.global(config.max_in_flight.max(1));
        let free = global.available_permits();
        if free == 0 {
            // Every slot is taken: a finishing attempt rings the bell.
            return MAX_IDLE;
        }
        let now = self.deliveries.now_ms();
        // In-flight deliveries sit at the head of the due index: a first, short scan looks
        // just past them; only if it finds too little does a second one go deep, so that a
        // backlog of one saturated endpoint cannot hide other endpoints' work. The short scan
        // stays short even with many free slots: every finished attempt starts a round, and
        // each entry the store's iterator steps over costs about a microsecond, so a long
        // head scan per attempt once took a fifth of the worker's CPU. Work it leaves behind
        // is found by the next round or the deep scan.
        let quick = (self.deliveries.in_flight() + 2 * free.min(QUICK_SLOTS) + QUICK_SLOTS)
            .min(SCAN_BUDGET);
        let head = match self.start_due(state, &client, &global, now, quick, true) {
            Ok(scan) => scan,
            Err(error) => {
                tracing::error!(%error, "cannot read the webhook outbox");
                return STORE_BACKOFF;
            }
        };
        let (mut scanned, mut started) = (head.scanned, head.started);
        let mut deep_wait = None;
        if !head.complete && quick < SCAN_BUDGET && started < free {
            if let Some(left) = self
                .deep_scanned
                .and_then(|at| DEEP_SCAN_EVERY.checked_sub(at.elapsed()))
                .filter(|left| !left.is_zero())
            {
                deep_wait = Some(left);
            } else {
                self.deep_scanned = Some(Instant::now());
                match self.start_due(state, &client, &global, now, SCAN_BUDGET, false) {
                    Ok(deep) => {
                        scanned = deep.scanned;
                        started += deep.started;
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot read the webhook outbox");
                        return STORE_BACKOFF;
                    }
                }
            }
        }
        self.shed_idle_semaphores();
        if scanned == SCAN_BUDGET && started > 0 {
            return Duration::ZERO;
        }
        if let Some(wait) = deep_wait {
            // Work past the short scan may be waiting: look deep again once allowed.
            return wait;
        }
        match self.deliveries.outbox().next_due() {
            Ok(Some(due)) if due > now => Duration::from_millis(due - now).min(MAX_IDLE),
            // Due work that could not start waits for a free slot (which rings the bell).
            Ok(_) => MAX_IDLE,
            Err(_) => STORE_BACKOFF,
        }
    }

    /// Starts attempts for the first `budget` due deliveries that the bounds allow. With
    /// `stop_when_saturated`, stops as soon as every subscription it knows is at its bound
    /// (work of one it has not seen yet is left to the deep scan).
    fn start_due(
        &mut self,
        state: &Arc<State>,
        client: &ReceiverClient,
        global: &Arc<Semaphore>,
        now: u64,
        budget: usize,
        stop_when_saturated: bool,
    ) -> Result<Scan, crate::store::StoreError> {
        let endpoint_concurrency = state
            .policies
            .current()
            .config
            .webhooks
            .endpoint_concurrency
            .max(1);
        let mut started = 0usize;
        let mut failure = None;
        let mut stopped = false;
        // Free slots of the subscriptions seen so far, counted once: slots that free up during
        // the scan ring the bell for another round.
        let mut known_free =
            (stop_when_saturated && !self.per_subscription.is_empty()).then(|| {
                self.per_subscription
                    .values()
                    .map(|local| local.available_permits())
                    .sum::<usize>()
            });
        let scanned = self.deliveries.outbox().visit_due(now, budget, |due| {
            if known_free == Some(0) {
                stopped = true;
                return ControlFlow::Break(());
            }
            // A saturated endpoint's backlog is passed over without reading its records.
            if due
                .subscription_id
                .and_then(|sub| self.per_subscription.get(sub))
                .is_some_and(|local| local.available_permits() == 0)
            {
                return ControlFlow::Continue(());
            }
            let id = match due.id() {
                Ok(id) => id,
                Err(error) => {
                    failure = Some(error);
                    return ControlFlow::Break(());
                }
            };
            if self.deliveries.is_in_flight(&id) {
                return ControlFlow::Continue(());
            }
            let Ok(global_permit) = global.clone().try_acquire_owned() else {
                stopped = true;
                return ControlFlow::Break(());
            };
            let record = match self.deliveries.outbox().delivery(&id) {
                // Read after the scan: an attempt that ended since has already moved it on.
                Ok(Some(record)) if record.is_due(now) => record,
                Ok(_) => return ControlFlow::Continue(()),
                Err(error) => {
                    tracing::error!(%error, "cannot read a webhook delivery");
                    return ControlFlow::Continue(());
                }
            };
            let local = match self.per_subscription.get(&record.subscription_id) {
                Some(local) => local.clone(),
                None => {
                    let local = Arc::new(Semaphore::new(endpoint_concurrency));
                    self.per_subscription
                        .insert(record.subscription_id.clone(), local.clone());
                    if let Some(free) = known_free.as_mut() {
                        *free += endpoint_concurrency;
                    }
                    local
                }
            };
            let Ok(local_permit) = local.try_acquire_owned() else {
                return ControlFlow::Continue(());
            };
            if let Some(free) = known_free.as_mut() {
                *free = free.saturating_sub(1);
            }
            if !self.deliveries.begin(&id) {
                return ControlFlow::Continue(());
            }
            let attempt = Attempt {
                state: state.clone(),
                client: client.clone(),
                record,
                _permits: (global_permit, local_permit),
            };
            self.attempts.spawn(attempt.run());
            started += 1;
            ControlFlow::Continue(())
        })?;
        if let Some(error) = failure {
            return Err(error);
        }
        Ok(Scan {
            scanned,
            started,
            complete: !stopped && scanned < budget,
        })
    }

    /// Sets the dead-letter queue gauge every [`DLQ_GAUGE_EVERY`] (a walk of the dead index,
    /// off the async workers).
    fn count_dlq(&mut self, state: &Arc<State>) {
        if self
            .dlq_counted
            .is_some_and(|at| at.elapsed() < DLQ_GAUGE_EVERY)
        {
            return;
        }
        self.dlq_counted = Some(Instant::now());
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            let dead = state.deliveries.outbox().count(DeliveryStatus::Dead);
            state.metrics.set_dlq_size(dead as u64);
        });
    }

    /// The receiver client for the current settings, rebuilt when they change.
    fn client(&mut self, config: &WebhooksConfig) -> Option<ReceiverClient> {
        let settings = ClientSettings {
            allow_private: config.allow_private_destinations,
            ca_file: config.ca_file.clone(),
            timeout: config.delivery_timeout,
        };
        if let Some((current, client)) = &self.client {
            if *current == settings {
                return Some(client.clone());
            }
        }
        match ReceiverClient::new(
            settings.allow_private,
            settings.ca_file.as_deref(),
            settings.timeout,
        ) {
            Ok(client) => {
                self.client = Some((settings, client.clone()));
                Some(client)
            }
            Err(error) => {
                tracing::error!(%error, "cannot build the webhook client; deliveries wait");
                None
            }
        }
    }

    /// The global bound, replaced (for new attempts) when the policy changes it.
    fn global(&mut self, max: usize) -> Arc<Semaphore> {
        match &self.global {
            Some((current, semaphore)) if *current == max => semaphore.clone(),
            _ => {
                let semaphore = Arc::new(Semaphore::new(max));
                self.global = Some((max, semaphore.clone()));
                self.per_subscription.clear();
                semaphore
            }
        }
    }

    /// Forgets per-subscription bounds nobody holds, so the map follows active endpoints.
    fn shed_idle_semaphores(&mut self) {
        if self.per_subscription.len() > 1024 {
            self.per_subscription
                .retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
        }
    }
}

/// What one pass over the due index did.
struct Scan {
    /// Entries looked at.
    scanned: usize,
    /// Attempts started.
    started: usize,
    /// Whether it saw every due entry (nothing due was left unlooked-at).
    complete: bool,
}

/// One attempt of one delivery.
struct Attempt {
    state: Arc<State>,
    client: ReceiverClient,
    record: DeliveryRecord,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl Attempt {
    async fn run(self) {
        let deliveries = self.state.deliveries.clone();
        let id = self.record.id.clone();
        if let Err(error) = self.attempt().await {
            tracing::error!(%error, delivery = %id, "cannot record a webhook attempt");
        }
        deliveries.end(&id);
    }

    async fn attempt(self) -> Result<(), crate::store::StoreError> {
        let state = &self.state;
        let policy = state.policies.current();
        let config = &policy.config.webhooks;
        let deliveries = &state.deliveries;
        let record = &self.record;

        let Ok(subscription_id) = record.subscription_id.parse::<SubscriptionId>() else {
            return self.end(FailureKind::SubscriptionInactive);
        };
        let subscription = match state.subscriptions.get_any(&subscription_id) {
            Ok(Some(subscription)) if subscription.status == SubscriptionStatus::Active => {
                subscription
            }
            Ok(_) => return self.end(FailureKind::SubscriptionInactive),
            Err(error) => {
                tracing::error!(%error, "cannot read a webhook subscription; retrying later");
                return self.finish(Outcome::NoAnswer(FailureKind::Other), None, None);
            }
        };
        let event = match deliveries.outbox().event(&record.event_id)? {
            Some(event) => event,
            None => return self.end(FailureKind::EventUnreadable),
        };
        let Some(data) = event.data else {
            tracing::warn!(
                delivery = %record.id,
                "a webhook event does not open under the current key; ending its delivery"
            );
            return self.end(FailureKind::EventUnreadable);
        };
        let body = payload(&event.header, &data);
        let now_secs = i64::try_from(deliveries.now_ms() / 1000).unwrap_or(i64::MAX);
        let secrets = subscription.signing_secrets(now_secs);
        let headers: Vec<(HeaderName, HeaderValue)> = sign::sign(
            &config.scheme,
            &secrets,
            record.event_id.as_str(),
            now_secs,
            &body,
        );
        let started = Instant::now();
        let answer = self.client.post(&subscription.url, headers, body).await;
        let latency = started.elapsed();
        match answer {
            Ok(answer) => self.finish(
                Outcome::Answered {
                    status: answer.status.as_u16(),
                    retry_after: answer.retry_after,
                },
                Some(answer.status.as_u16()),
                Some(answer.latency),
            ),
            Err(error) => {
                let kind = failure_kind(&error);
                tracing::debug!(
                    delivery = %record.id,
                    subscription = %record.subscription_id,
                    error = kind.as_str(),
                    "webhook attempt failed"
                );
                self.finish(Outcome::NoAnswer(kind), None, Some(latency))
            }
        }
    }

    /// Ends the delivery as failed without an attempt (nothing to send, or nobody to send
    /// it to).
    fn end(&self, kind: FailureKind) -> Result<(), crate::store::StoreError> {
        let now = self.state.deliveries.now_ms();
        self.state
            .deliveries
            .outbox()
            .update(&self.record.id, |record| {
                if record.status != DeliveryStatus::Pending {
                    return false;
                }
                record.status = DeliveryStatus::Failed;
                record.next_attempt_ms = None;
                record.last_error = Some(kind);
                record.updated_ms = now;
                true
            })?;
        Ok(())
    }

    /// Writes down what the attempt's outcome means for the delivery.
    fn finish(
        &self,
        outcome: Outcome,
        status: Option<u16>,
        latency: Option<Duration>,
    ) -> Result<(), crate::store::StoreError> {
        let state = &self.state;
        let policy = state.policies.current();
        let config = &policy.config.webhooks;
        let deliveries = &state.deliveries;
        let now = deliveries.now_ms();
        let attempts = self.record.attempts.saturating_add(1);
        let next = schedule::next(
            attempts,
            outcome,
            &config.retry_schedule,
            config.retry_jitter,
            schedule::unit_random(),
            now,
        );
        let latency_ms = latency.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX));
        deliveries.outbox().update(&self.record.id, |record| {
            if record.status != DeliveryStatus::Pending {
                return false;
            }
            record.attempts = attempts;
            record.last_status_code = status.or(record.last_status_code);
            record.last_latency_ms = latency_ms;
            record.updated_ms = now;
            match next {
                Next::Delivered => {
                    record.status = DeliveryStatus::Delivered;
                    record.next_attempt_ms = None;
                    record.last_error = None;
                }
                Next::Gone => {
                    record.status = DeliveryStatus::Failed;
                    record.next_attempt_ms = None;
                    record.last_error = Some(FailureKind::Gone);
                }
                Next::Retry { at_ms, error } => {
                    record.next_attempt_ms = Some(at_ms);
                    record.last_error = Some(error);
                }
                Next::Dead { error } => {
                    record.status = DeliveryStatus::Dead;
                    record.next_attempt_ms = None;
                    record.last_error = Some(error);
                }
            }
            true
        })?;
        let outcome = match next {
            Next::Delivered => Some(DeliveryOutcome::Delivered),
            Next::Retry { .. } => Some(DeliveryOutcome::Retrying),
            Next::Dead { .. } => Some(DeliveryOutcome::DeadLettered),
            Next::Gone => None,
        };
        if let Some(outcome) = outcome {
            state.metrics.webhook_delivery(outcome);
        }
        if next == Next::Gone {
            let state = self.state.clone();
            let record = self.record.clone();
            // Disabling flushes the store: keep it off the async workers.
            tokio::task::spawn_blocking(move || gone(&state, &record, now));
        }
        Ok(())
    }
}

/// The receiver answered 410: disable the subscription and end its other pending deliveries
/// (those being attempted right now end on their own). Blocking.
fn gone(state: &State, record: &DeliveryRecord, now: u64) {
    tracing::info!(
        subscription = %record.subscription_id,
        "receiver answered 410 Gone; disabling the subscription"
    );
    if let Ok(id) = record.subscription_id.parse::<SubscriptionId>() {
        if let Err(error) = state.subscriptions.disable(&id, DisableReason::Gone) {
            tracing::error!(%error, "cannot disable a gone webhook subscription");
        }
    }
    let deliveries = &state.deliveries;
    let ended = deliveries.outbox().fail_pending_of(
        &record.org,
        &record.subscription_id,
        FailureKind::Gone,
        now,
        &|id| deliveries.is_in_flight(id),
    );
    if let Err(error) = ended {
        tracing::error!(%error, "cannot end the deliveries of a gone webhook subscription");
    }
}

/// The fixed error kind of a failed attempt.
fn failure_kind(error: &DeliveryError) -> FailureKind {
    match error {
        DeliveryError::Forbidden(_) => FailureKind::DestinationRefused,
        DeliveryError::Dns(_) | DeliveryError::Connect(_) => FailureKind::Connect,
        DeliveryError::Tls(_) => FailureKind::Tls,
        DeliveryError::Timeout(_) => FailureKind::Timeout,
        DeliveryError::Other(_) => FailureKind::Other,
    }
}

/// The body every attempt of an event sends: `{id, type, created_at, org, data}`, with
/// `data` exactly as accepted (compact JSON).
pub fn payload(header: &EventHeader, data: &[u8]) -> Bytes {
    let created_at = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(header.created_ms),
    )
    .to_string();
    let mut body = Vec::with_capacity(128 + data.len());
    body.extend_from_slice(b"{\"id\":");
    push_json_string(&mut body, header.id.as_str());
    body.extend_from_slice(b",\"type\":");
    push_json_string(&mut body, &header.event_type);
    body.extend_from_slice(b",\"created_at\":");
    push_json_string(&mut body, &created_at);
    body.extend_from_slice(b",\"org\":");
    push_json_string(&mut body, &header.org);
    body.extend_from_slice(b",\"data\":");
    body.extend_from_slice(data);
    body.push(b'}');
    Bytes::from(body)
}

fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Serializing a string cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::delivery::EventId;

    #[test]
    fn the_payload_is_json_with_the_data_as_accepted() {
        let header = EventHeader {
            id: EventId::generate().unwrap(),
            org: "acme".to_owned(),
            event_type: "note.\"signed\"".to_owned(),
            created_ms: 1_764_316_800_123,
            deliveries: Vec::new(),
        };
        let body = payload(&header, br#"{"a":[1,2]}"#);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["id"], header.id.as_str());
        assert_eq!(value["type"], "note.\"signed\"");
        assert_eq!(value["org"], "acme");
        assert_eq!(value["created_at"], "2025-11-28T08:00:00.123Z");
        assert_eq!(value["data"]["a"][1], 2);
    }
}
