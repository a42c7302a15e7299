//! The audit stream: every durable audit record of organization X becomes an `audit.event`
//! for X's subscriptions that chose that type, so a SIEM can follow its own audit trail.
//!
//! The event's `data` is the record's JSON line, which is PHI-free by construction (the
//! record type has no free-text field a request can fill). Records without an organization
//! (system records) are not streamed, and an organization only ever receives its own.
//!
//! **Where it stands.** The stream keeps a high-water mark, the last audit `seq` it dealt
//! with, in the outbox. A record that produced deliveries moves the mark in the same atomic
//! batch as its event; records nobody wanted move it lazily (at most every second). After a
//! restart, or when the live channel overflowed, the stream reads the records above the mark
//! back through the audit index, so it neither drops nor repeats records. On the very first
//! start the mark is set to the trail's current head: subscriptions receive records from the
//! moment they exist, not the trail's whole history.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::outbox::NewEvent;
use super::AUDIT_EVENT_TYPE;
use crate::audit::CommittedRecord;
use crate::state::State;

/// Records handled in one blocking batch at most.
const BATCH: usize = 1024;

/// How often a mark moved only in memory is written.
const MARK_EVERY: Duration = Duration::from_secs(1);

/// One record to stream: its seq, organization and line.
struct Item {
    seq: u64,
    org: Option<String>,
    line: Vec<u8>,
}

/// Starts the stream (nothing when the audit trail is disabled).
pub fn spawn(state: &Arc<State>) -> JoinHandle<()> {
    let receiver = state.audit.subscribe();
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        if let Some(receiver) = receiver {
            run(weak, receiver).await;
        }
    })
}

/// The mark as known in memory and as last written.
struct Mark {
    seq: u64,
    written: u64,
    written_at: Instant,
}

async fn run(
    weak: Weak<State>,
    mut receiver: tokio::sync::broadcast::Receiver<Arc<CommittedRecord>>,
) {
    let Some(mut mark) = blocking(&weak, start_mark).await.flatten() else {
        return;
    };
    // Whatever was written while the stream was down (or before it subscribed).
    mark = match blocking_with(&weak, mark, catch_up).await {
        Some(mark) => mark,
        None => return,
    };
    loop {
        let first = match receiver.recv().await {
            Ok(record) => record,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "the audit stream fell behind; reading back from the index"
                );
                match blocking_with(&weak, mark, catch_up).await {
                    Some(caught_up) => {
                        mark = caught_up;
                        continue;
                    }
                    None => return,
                }
            }
            Err(RecvError::Closed) => return,
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let items: Vec<Item> = batch
            .iter()
            .map(|record| Item {
                seq: record.seq,
                org: record.org.clone(),
                line: record.line.to_vec(),
            })
            .collect();
        mark = match blocking_with(&weak, mark, move |state, mark| stream(state, mark, &items))
            .await
        {
            Some(mark) => mark,
            None => return,
        };
    }
}

/// Runs `work` with the state on the blocking pool; `None` once the state is gone.
async fn blocking<T: Send + 'static>(
    weak: &Weak<State>,
    work: impl FnOnce(&State) -> T + Send + 'static,
) -> Option<T> {
    let state = weak.upgrade()?;
    tokio::task::spawn_blocking(move || work(&state)).await.ok()
}

async fn blocking_with(
    weak: &Weak<State>,
    mark: Mark,
    work: impl FnOnce(&State, Mark) -> Mark + Send + 'static,
) -> Option<Mark> {
    blocking(weak, move |state| work(state, mark)).await
}

/// The stored mark, or on the first start the trail's head (stored at once).
fn start_mark(state: &State) -> Option<Mark> {
    let outbox = state.deliveries.outbox();
    let seq = match outbox.audit_mark() {
        Ok(Some(seq)) => seq,
        Ok(None) => {
            let head = state
                .audit
                .index()
                .map_or(Ok(0), |index| index.head())
                .unwrap_or(0);
            if let Err(error) = outbox.set_audit_mark(head) {
                tracing::error!(%error, "cannot store the audit stream's mark");
            }
            head
        }
        Err(error) => {
            tracing::error!(%error, "cannot read the audit stream's mark; the stream is off");
            return None;
        }
    };
    Some(Mark {
        seq,
        written: seq,
        written_at: Instant::now(),
    })
}

/// Streams every indexed record above the mark of the organizations that have an
/// `audit.event` subscription, in sequence order.
fn catch_up(state: &State, mark: Mark) -> Mark {
    let Some(index) = state.audit.index() else {
        return mark;
    };
    let mut items = Vec::new();
    for org in state.orgs.list() {
        match state.subscriptions.matching(&org.id, AUDIT_EVENT_TYPE) {
            Ok(found) if !found.is_empty() => {}
            Ok(_) => continue,
            Err(error) => {
                tracing::error!(%error, "cannot read webhook subscriptions");
                return mark;
            }
        }
        let mut reader = index.reader();
        let mut found = Vec::new();
        for located in index.newest_first(&org.id, None) {
            let located = match located {
                Ok(located) => located,
                Err(error) => {
                    tracing::error!(%error, "cannot read the audit index");
                    return mark;
                }
            };
            if located.position.seq <= mark.seq {
                break;
            }
            if let Some(entry) = reader.read(&located) {
                found.push(Item {
                    seq: entry.seq,
                    org: Some(org.id.clone()),
                    line: entry.line,
                });
            }
        }
        items.extend(found);
    }
    items.sort_by_key(|item| item.seq);
    stream(state, mark, &items)
}

/// Turns `items` (in sequence order) into events; returns the moved mark. Stops at the first
/// record that cannot be written, so it is tried again later rather than skipped.
fn stream(state: &State, mut mark: Mark, items: &[Item]) -> Mark {
    let policy = state.policies.current();
    let enabled = policy.config.webhooks.enabled;
    let outbox = state.deliveries.outbox();
    let mut woke = false;
    for item in items {
        if item.seq <= mark.seq {
            continue;
        }
        let subscriptions = match (&item.org, enabled) {
            (Some(org), true) => match state.subscriptions.matching(org, AUDIT_EVENT_TYPE) {
                Ok(found) => found,
                Err(error) => {
                    tracing::error!(%error, "cannot read webhook subscriptions");
                    return mark;
                }
            },
            _ => Vec::new(),
        };
        if subscriptions.is_empty() {
            mark.seq = item.seq;
            continue;
        }
        let (Some(org), Ok(line)) = (&item.org, std::str::from_utf8(&item.line)) else {
            mark.seq = item.seq;
            continue;
        };
        let ids: Vec<String> = subscriptions.iter().map(ToString::to_string).collect();
        let event = NewEvent {
            org,
            event_type: AUDIT_EVENT_TYPE,
            data: line.as_bytes(),
        };
        match outbox.accept_audit(&event, &ids, item.seq, state.deliveries.now_ms()) {
            Ok(()) => {
                mark.seq = item.seq;
                mark.written = item.seq;
                mark.written_at = Instant::now();
                woke = true;
            }
            Err(error) => {
                tracing::error!(%error, "cannot write an audit event to the webhook outbox");
                return mark;
            }
        }
    }
    if mark.seq != mark.written && mark.written_at.elapsed() >= MARK_EVERY {
        match outbox.set_audit_mark(mark.seq) {
            Ok(()) => {
                mark.written = mark.seq;
                mark.written_at = Instant::now();
            }
            Err(error) => tracing::warn!(%error, "cannot store the audit stream's mark"),
        }
    }
    if woke {
        state.deliveries.wake();
    }
    mark
}
