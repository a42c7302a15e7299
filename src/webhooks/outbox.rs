//! The durable outbox: accepted events, their deliveries, and the indexes the worker, the
//! status endpoint and the admin socket read, all in one store tree.
//!
//! One tree, so that every change is one atomic batch: an event and all its deliveries appear
//! together, and a delivery changing state moves between indexes without a crash ever leaving
//! half a move. Keys start with a one-byte kind:
//!
//! | key | value | for |
//! |---|---|---|
//! | `e` event id | header length, header JSON, nonce, sealed data | the attempt body |
//! | `d` delivery id | [`DeliveryRecord`] JSON | the record |
//! | `q` due ms (BE) delivery id | subscription id | due pending deliveries, oldest first |
//! | `a` org 0x00 created ms (BE) delivery id | empty | a tenant's deliveries, newest first |
//! | `s` org 0x00 status 0x00 created ms (BE) delivery id | empty | the same, by status |
//! | `g` status 0x00 created ms (BE) delivery id | org | every tenant's, by status (DLQ) |
//! | `m` name | bytes | small state such as the audit stream's high-water mark |
//!
//! Organization ids never contain `0x00`, so one tenant's keys can never be read as
//! another's. The worker finds work through `q` only, never by scanning records, and the
//! subscription id beside each entry lets it pass over a saturated endpoint's backlog without
//! reading those records (an entry written empty by an earlier version reads as "unknown").
//!
//! **Data at rest.** The event's `data` is PHI by nature: it is sealed with
//! XChaCha20-Poly1305 under the idempotency key file (the shared sealing code), bound to the
//! event id and organization, and kept only while a delivery may still need it: it is
//! deleted once every delivery of the event is `delivered` or `failed`. A `dead` delivery
//! keeps it, so it can be redelivered from the dead-letter queue.
//!
//! **Durability.** [`Outbox::accept`] flushes before it returns: an event that got a `202`
//! survives a crash. Concurrent accepts share flushes (group commit): each waits for the
//! next flush that starts after its write, and one of them runs it for all. State changes after an attempt are written (in the engine's log) before
//! the next attempt but not flushed one by one; a crash can lose the last ~500 ms of them,
//! which at worst repeats an attempt (at-least-once, never lost).

use std::ops::ControlFlow;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::gate::idempotency::seal::{SealKeys, NONCE_LEN};
use crate::store::{Store, StoreError, Tree};

use super::delivery::{
    DeliveryId, DeliveryRecord, DeliveryStatus, EventHeader, EventId, FailureKind,
};

/// The tree holding the outbox.
pub const OUTBOX_TREE: &str = "webhook_outbox";

/// Associated-data label of sealed event data, so the same key can seal nothing else into it.
const SEAL_LABEL: &[u8] = b"portcullis/webhooks/event/v1";

/// Key of the audit stream's high-water mark.
const AUDIT_MARK: &[u8] = b"maudit_seq";

/// A write of one batch: `None` removes the key.
type Write = (Vec<u8>, Option<Vec<u8>>);

/// Why the outbox could not do something.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No randomness for ids or nonces.
    #[error(transparent)]
    Random(#[from] crate::keys::secret::RandomError),
    /// The data could not be sealed.
    #[error(transparent)]
    Seal(#[from] crate::gate::idempotency::seal::SealError),
}

/// An entry of the due index, borrowed from the store: enough for the worker to decide
/// whether the delivery can start before it reads the record.
#[derive(Debug, Clone, Copy)]
pub struct Due<'a> {
    key: &'a [u8],
    /// The subscription it goes to, when the entry names it.
    pub subscription_id: Option<&'a str>,
}

impl Due<'_> {
    /// The delivery.
    pub fn id(&self) -> Result<DeliveryId, StoreError> {
        id_from_key(self.key)
    }
}

/// A new event, validated, on its way into the outbox.
#[derive(Debug)]
pub struct NewEvent<'a> {
    /// The organization.
    pub org: &'a str,
    /// The event type.
    pub event_type: &'a str,
    /// The `data` member as compact JSON.
    pub data: &'a [u8],
}

/// An event read back for an attempt.
#[derive(Debug)]
pub struct StoredEvent {
    /// Its id, org, type and deliveries.
    pub header: EventHeader,
    /// Its data, or `None` if it does not open under the current key (replaced, altered).
    pub data: Option<Vec<u8>>,
}

/// Where a listing continues: strictly older than this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The last shown delivery's creation time.
    pub created_ms: u64,
    /// The last shown delivery's id.
    pub id: DeliveryId,
}

/// The outbox. Cheap to clone; clones share the tree and the write lock.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    tree: Tree,
    keys: Arc<SealKeys>,
    /// Serializes read-modify-write of delivery records (the worker, 410 handling and
    /// redelivery may touch the same record); held for microseconds, never across I/O
    /// other than the store's.
    lock: Arc<Mutex<()>>,
    /// Lets concurrent accepts share one flush.
    flusher: Arc<GroupFlush>,
}

/// Group commit for [`Outbox::accept`]: a caller whose write is already in the engine's log
/// waits for the next flush that starts after it, and one caller runs that flush for
/// everyone waiting, so eight concurrent ingests cost about one disk sync rather than eight.
#[derive(Debug, Default)]
struct GroupFlush {
    state: Mutex<FlushState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    /// Flush requests so far (each caller takes the next number).
    requested: u64,
    /// Every request up to this number is on disk.
    flushed: u64,
    /// A flush is running.
    running: bool,
}

impl GroupFlush {
    /// Returns once everything written before the call is on disk.
    fn flush(&self, store: &Store) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.requested += 1;
        let mine = state.requested;
        loop {
            if state.flushed >= mine {
                return Ok(());
            }
            if state.running {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Lead a flush covering every request made so far.
            state.running = true;
            let covers = state.requested;
            drop(state);
            let result = store.flush();
            state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.running = false;
            if result.is_ok() {
                state.flushed = state.flushed.max(covers);
            }
            self.done.notify_all();
            // On failure the waiters lead their own attempt and see their own error.
            result?;
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens the outbox tree in `store`; event data is sealed under `keys`.
    pub fn open(store: &Store, keys: SealKeys) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.clone(),
            tree: store.tree(OUTBOX_TREE)?,
            keys: Arc::new(keys),
            lock: Arc::new(Mutex::new(())),
            flusher: Arc::new(GroupFlush::default()),
        })
    }

    /// Writes `event` and one pending delivery, due at once, per subscription in
    /// `subscriptions`, in one batch, and flushes before returning.
    pub fn accept(
        &self,
        event: &NewEvent<'_>,
        subscriptions: &[String],
        now_ms: u64,
    ) -> Result<(EventId, Vec<DeliveryId>), OutboxError> {
        if subscriptions.is_empty() {
            // Nobody listens: the event is acknowledged and nothing needs to be kept.
            return Ok((EventId::generate()?, Vec::new()));
        }
        let accepted = self.accept_unflushed(event, subscriptions, now_ms, None)?;
        self.flusher.flush(&self.store)?;
        Ok(accepted)
    }

    fn seal_event(&self, header: &EventHeader, data: &[u8]) -> Result<Vec<u8>, OutboxError> {
        let header_json =
            serde_json::to_vec(header).map_err(|_| StoreError::Encode { tree: OUTBOX_TREE })?;
        let sealed = self
            .keys
            .sealer()
            .seal(&aad(&header.id, &header.org), data)?;
        let header_len = u32::try_from(header_json.len())
            .map_err(|_| StoreError::Encode { tree: OUTBOX_TREE })?;
        let mut value =
            Vec::with_capacity(4 + header_json.len() + NONCE_LEN + sealed.ciphertext.len());
        value.extend_from_slice(&header_len.to_be_bytes());
        value.extend_from_slice(&header_json);
        value.extend_from_slice(&sealed.nonce);
        value.extend_from_slice(&sealed.ciphertext);
        Ok(value)
    }

    /// The event `id` with its data opened, if it is still kept.
    pub fn event(&self, id: &EventId) -> Result<Option<StoredEvent>, StoreError> {
        let key = event_key(id);
        let Some(value) = self.tree.get(&key)? else {
            return Ok(None);
        };
        let corrupt = || StoreError::corrupt(OUTBOX_TREE, &key);
        let len_bytes: [u8; 4] = value
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let header_end =
            4 + usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| corrupt())?;
        let header: EventHeader =
            serde_json::from_slice(value.get(4..header_end).ok_or_else(corrupt)?)
                .map_err(|_| corrupt())?;
        let nonce: [u8; NONCE_LEN] = value
            .get(header_end..header_end + NONCE_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let ciphertext = &value[header_end + NONCE_LEN..];
        let data = self
            .keys
            .sealer()
            .open(&aad(&header.id, &header.org), &nonce, ciphertext)
            .ok();
        Ok(Some(StoredEvent { header, data }))
    }

    /// The delivery `id`, if it exists.
    pub fn delivery(&self, id: &DeliveryId) -> Result<Option<DeliveryRecord>, StoreError> {
        self.tree.get_json(&delivery_key(id))
    }

    /// Shows `visit` the pending deliveries due at or before `now_ms`, oldest first, at most
    /// `budget` of them, until it breaks; returns how many it saw. Nothing is copied out:
    /// the worker looks at many entries per round and starts few.
    pub fn visit_due(
        &self,
        now_ms: u64,
        budget: usize,
        mut visit: impl FnMut(Due<'_>) -> ControlFlow<()>,
    ) -> Result<usize, StoreError> {
        let end = due_key(now_ms.saturating_add(1), None);
        let mut seen = 0usize;
        self.tree.visit_range(b"q", &end, |key, value| {
            if seen == budget {
                return ControlFlow::Break(());
            }
            seen += 1;
            visit(Due {
                key,
                subscription_id: std::str::from_utf8(value).ok().filter(|s| !s.is_empty()),
            })
        })?;
        Ok(seen)
    }

    /// The ids [`Outbox::visit_due`] would show, copied out.
    #[cfg(test)]
    fn due(&self, now_ms: u64, budget: usize) -> Vec<(DeliveryId, Option<String>)> {
        let mut found = Vec::new();
        self.visit_due(now_ms, budget, |due| {
            found.push((due.id().unwrap(), due.subscription_id.map(str::to_owned)));
            ControlFlow::Continue(())
        })
        .unwrap();
        found
    }

    /// When the earliest pending delivery is due (unix ms), if any is pending.
    pub fn next_due(&self) -> Result<Option<u64>, StoreError> {
        match self.tree.range(b"q", b"r").next() {
            None => Ok(None),
            Some(entry) => {
                let (key, _) = entry?;
                let due: [u8; 8] = key
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| StoreError::corrupt(OUTBOX_TREE, &key))?;
                Ok(Some(u64::from_be_bytes(due)))
            }
        }
    }

    /// Applies `change` to the delivery `id` (when it returns `true`), moving its index
    /// entries and dropping its event's data once no delivery needs it. Returns the record
    /// as it now is (`None`: no such delivery).
    pub fn update(
        &self,
        id: &DeliveryId,
        change: impl FnOnce(&mut DeliveryRecord) -> bool,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(old) = self.delivery(id)? else {
            return Ok(None);
        };
        let mut new = old.clone();
        if !change(&mut new) || new == old {
            return Ok(Some(old));
        }
        let mut writes: Vec<Write> = Vec::with_capacity(8);
        index_writes(&old, false, &mut writes);
        index_writes(&new, true, &mut writes);
        drop_unchanged(&mut writes);
        writes.push((delivery_key(id), Some(encode(&new)?)));
        if old.status.needs_data() && !new.status.needs_data() {
            self.release_event(&new, &mut writes)?;
        }
        // Only the entries that differ are written: a retry moves the `q` entry alone.
        self.tree.write_batch(&writes)?;
        Ok(Some(new))
    }

    /// Adds the removal of `record`'s event to `writes` if no other delivery of it needs
    /// its data any more.
    fn release_event(
        &self,
        record: &DeliveryRecord,
        writes: &mut Vec<Write>,
    ) -> Result<(), StoreError> {
        let Some(value) = self.tree.get(&event_key(&record.event_id))? else {
            return Ok(());
        };
        let header = decode_header(&value)
            .ok_or_else(|| StoreError::corrupt(OUTBOX_TREE, &event_key(&record.event_id)))?;
        for other in header
            .deliveries
            .iter()
            .filter(|other| **other != record.id)
        {
            if let Some(other) = self.delivery(other)? {
                if other.status.needs_data() {
                    return Ok(());
                }
            }
        }
        writes.push((event_key(&record.event_id), None));
        Ok(())
    }

    /// Deliveries newest first: of `org` (every organization when `None`, which needs a
    /// `status`), of `status` (every status when `None`), older than `after`.
    pub fn list(
        &self,
        org: Option<&str>,
        status: Option<DeliveryStatus>,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let prefix = match (org, status) {
            (Some(org), None) => org_prefix(org),
            (Some(org), Some(status)) => org_status_prefix(org, status),
            (None, Some(status)) => status_prefix(status),
            (None, None) => return Ok(Vec::new()),
        };
        let mut end = prefix.clone();
        match after {
            Some(position) => {
                end.extend_from_slice(&position.created_ms.to_be_bytes());
                end.extend_from_slice(position.id.as_str().as_bytes());
            }
            None => end.push(0xff),
        }
        let mut records = Vec::with_capacity(limit.min(1024));
        for entry in self.tree.range(&prefix, &end).rev() {
            if records.len() >= limit {
                break;
            }
            let (key, _) = entry?;
            let id = id_from_key(&key)?;
            // The record is the truth; an index entry without one is skipped.
            if let Some(record) = self.delivery(&id)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Dead deliveries back to pending, due at `now_ms`, attempts reset: the given ones, or
    /// with `None` every dead one (of `org` when given). Returns those that moved.
    pub fn redeliver(
        &self,
        ids: Option<&[DeliveryId]>,
        org: Option<&str>,
        now_ms: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let ids: Vec<DeliveryId> = match ids {
            Some(ids) => ids.to_vec(),
            None => self
                .list(org, Some(DeliveryStatus::Dead), None, usize::MAX)?
                .into_iter()
                .map(|record| record.id)
                .collect(),
        };
        let mut moved = Vec::new();
        for id in ids {
            let mut changed = false;
            let updated = self.update(&id, |record| {
                if record.status != DeliveryStatus::Dead || org.is_some_and(|org| record.org != org)
                {
                    return false;
                }
                record.status = DeliveryStatus::Pending;
                record.attempts = 0;
                record.next_attempt_ms = Some(now_ms);
                record.updated_ms = now_ms;
                changed = true;
                true
            })?;
            if let Some(record) = updated.filter(|_| changed) {
                moved.push(record);
            }
        }
        if !moved.is_empty() {
            self.store.flush()?;
        }
        Ok(moved)
    }

    /// Ends up to `batch` dead deliveries of events accepted before `cutoff_ms` as `failed`
    /// (`expired`), which deletes their events' sealed data once no other delivery needs
    /// it. Returns how many it ended. The global dead index is ordered by acceptance time,
    /// so a sweep reads only what it ends.
    pub fn expire_dead(
        &self,
        cutoff_ms: u64,
        now_ms: u64,
        batch: usize,
    ) -> Result<usize, StoreError> {
        let expired = self.older_than(DeliveryStatus::Dead, cutoff_ms, batch)?;
        let mut ended = 0;
        for id in expired {
            let mut changed = false;
            self.update(&id, |record| {
                if record.status != DeliveryStatus::Dead {
                    return false;
                }
                record.status = DeliveryStatus::Failed;
                record.next_attempt_ms = None;
                record.last_error = Some(FailureKind::Expired);
                record.updated_ms = now_ms;
                changed = true;
                true
            })?;
            ended += usize::from(changed);
        }
        Ok(ended)
    }

    /// Deletes up to `batch` delivered and failed delivery records of events accepted before
    /// `cutoff_ms`, with their index entries. Returns how many. (Their events' data is
    /// already gone: it goes when the last delivery that needs it ends.)
    pub fn remove_finished(&self, cutoff_ms: u64, batch: usize) -> Result<usize, StoreError> {
        let mut removed = 0;
        for status in [DeliveryStatus::Delivered, DeliveryStatus::Failed] {
            for id in self.older_than(status, cutoff_ms, batch - removed)? {
                let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(record) = self.delivery(&id)? else {
                    continue;
                };
                if record.status != status {
                    continue;
                }
                let mut writes: Vec<Write> = Vec::with_capacity(4);
                let mut key = org_prefix(&record.org);
                push_position(&mut key, &record);
                writes.push((key, None));
                index_writes(&record, false, &mut writes);
                writes.push((delivery_key(&id), None));
                self.tree.write_batch(&writes)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Up to `limit` deliveries in `status` of events accepted before `cutoff_ms`, oldest
    /// first, from the global status index.
    fn older_than(
        &self,
        status: DeliveryStatus,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let start = status_prefix(status);
        let mut end = start.clone();
        end.extend_from_slice(&cutoff_ms.to_be_bytes());
        let mut found = Vec::new();
        self.tree.visit_range(&start, &end, |key, _| {
            if found.len() == limit {
                return ControlFlow::Break(());
            }
            found.push(key.to_vec());
            ControlFlow::Continue(())
        })?;
        found.iter().map(|key| id_from_key(key)).collect()
    }

    /// Ends every pending delivery of `subscription` in `org` as failed (`kind`), except
    /// `skip` (deliveries being attempted right now, which end on their own). Returns how many.
    pub fn fail_pending_of(
        &self,
        org: &str,
        subscription: &str,
        kind: FailureKind,
        now_ms: u64,
        skip: &dyn Fn(&DeliveryId) -> bool,
    ) -> Result<usize, StoreError> {
        let pending = self.list(Some(org), Some(DeliveryStatus::Pending), None, usize::MAX)?;
        let mut failed = 0;
        for record in pending
            .into_iter()
            .filter(|r| r.subscription_id == subscription && !skip(&r.id))
        {
            let mut changed = false;
            self.update(&record.id, |record| {
                if record.status != DeliveryStatus::Pending {
                    return false;
                }
                record.status = DeliveryStatus::Failed;
                record.next_attempt_ms = None;
                record.last_error = Some(kind);
                record.updated_ms = now_ms;
                changed = true;
                true
            })?;
            failed += usize::from(changed);
        }
        Ok(failed)
    }

    /// The last audit sequence number the audit stream has dealt with (`None`: the stream
    /// has never run on this store).
    pub fn audit_mark(&self) -> Result<Option<u64>, StoreError> {
        match self.tree.get(AUDIT_MARK)? {
            None => Ok(None),
            Some(bytes) => bytes
                .try_into()
                .map(|bytes| Some(u64::from_be_bytes(bytes)))
                .map_err(|_| StoreError::corrupt(OUTBOX_TREE, AUDIT_MARK)),
        }
    }

    /// Moves the audit stream's high-water mark to `seq` (records no subscriber wanted).
    pub fn set_audit_mark(&self, seq: u64) -> Result<(), StoreError> {
        self.tree.insert(AUDIT_MARK, &seq.to_be_bytes())
    }

    /// Accepts an audit record's event and moves the high-water mark to `seq` in the same
    /// batch, so a restart neither repeats nor skips it. Not flushed: audit events are
    /// re-derived from the (durable) audit trail after a crash.
    pub fn accept_audit(
        &self,
        event: &NewEvent<'_>,
        subscriptions: &[String],
        seq: u64,
        now_ms: u64,
    ) -> Result<(), OutboxError> {
        if subscriptions.is_empty() {
            self.set_audit_mark(seq)?;
            return Ok(());
        }
        self.accept_unflushed(event, subscriptions, now_ms, Some(seq))?;
        Ok(())
    }

    fn accept_unflushed(
        &self,
        event: &NewEvent<'_>,
        subscriptions: &[String],
        now_ms: u64,
        mark: Option<u64>,
    ) -> Result<(EventId, Vec<DeliveryId>), OutboxError> {
        let id = EventId::generate()?;
        let mut deliveries = Vec::with_capacity(subscriptions.len());
        for _ in subscriptions {
            deliveries.push(DeliveryId::generate()?);
        }
        let header = EventHeader {
            id: id.clone(),
            org: event.org.to_owned(),
            event_type: event.event_type.to_owned(),
            created_ms: now_ms,
            deliveries: deliveries.clone(),
        };
        let mut writes: Vec<Write> =
            vec![(event_key(&id), Some(self.seal_event(&header, event.data)?))];
        for (delivery, subscription) in deliveries.iter().zip(subscriptions) {
            let record = new_record(delivery, &id, event, subscription, now_ms);
            let mut key = org_prefix(&record.org);
            push_position(&mut key, &record);
            writes.push((key, Some(Vec::new())));
            index_writes(&record, true, &mut writes);
            writes.push((delivery_key(delivery), Some(encode(&record)?)));
        }
        if let Some(seq) = mark {
            writes.push((AUDIT_MARK.to_vec(), Some(seq.to_be_bytes().to_vec())));
        }
        self.tree.write_batch(&writes)?;
        Ok((id, deliveries))
    }

    /// Counts of deliveries by status over every tenant (walks the global index: for
    /// tests and operators, not for hot paths).
    pub fn count(&self, status: DeliveryStatus) -> usize {
        self.tree.scan_prefix(&status_prefix(status)).count()
    }
}

fn new_record(
    delivery: &DeliveryId,
    event_id: &EventId,
    event: &NewEvent<'_>,
    subscription: &str,
    now_ms: u64,
) -> DeliveryRecord {
    DeliveryRecord {
        id: delivery.clone(),
        event_id: event_id.clone(),
        event_type: event.event_type.to_owned(),
        org: event.org.to_owned(),
        subscription_id: subscription.to_owned(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        created_ms: now_ms,
        next_attempt_ms: Some(now_ms),
        last_status_code: None,
        last_latency_ms: None,
        last_error: None,
        updated_ms: now_ms,
    }
}

fn aad(id: &EventId, org: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEAL_LABEL.len() + 2 + id.as_str().len() + org.len());
    aad.extend_from_slice(SEAL_LABEL);
    aad.push(0);
    aad.extend_from_slice(id.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(org.as_bytes());
    aad
}

fn decode_header(value: &[u8]) -> Option<EventHeader> {
    let len_bytes: [u8; 4] = value.get(..4)?.try_into().ok()?;
    let end = 4 + usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    serde_json::from_slice(value.get(4..end)?).ok()
}

fn encode(record: &DeliveryRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|_| StoreError::Encode { tree: OUTBOX_TREE })
}

/// The index entries of `record` that move with its status and due time: inserted when
/// `insert`, else removed. (Its `a` entry never changes; [`Outbox::accept`] writes it once.)
fn index_writes(record: &DeliveryRecord, insert: bool, writes: &mut Vec<Write>) {
    let value = |bytes: Vec<u8>| insert.then_some(bytes);
    let mut key = org_status_prefix(&record.org, record.status);
    push_position(&mut key, record);
    writes.push((key, value(Vec::new())));
    let mut key = status_prefix(record.status);
    push_position(&mut key, record);
    writes.push((key, value(record.org.as_bytes().to_vec())));
    if record.status == DeliveryStatus::Pending {
        if let Some(due) = record.next_attempt_ms {
            writes.push((
                due_key(due, Some(&record.id)),
                value(record.subscription_id.as_bytes().to_vec()),
            ));
        }
    }
}

/// Drops each removal whose key the same batch inserts again, with that insert: an index
/// entry's value follows from its key and the record's fixed fields (org, subscription), so
/// the entry is already there as it would be written.
fn drop_unchanged(writes: &mut Vec<Write>) {
    let mut i = 0;
    while i < writes.len() {
        let twin = (writes[i].1.is_none())
            .then(|| {
                writes
                    .iter()
                    .position(|(key, value)| value.is_some() && *key == writes[i].0)
            })
            .flatten();
        match twin {
            Some(j) => {
                let (first, second) = if i < j { (i, j) } else { (j, i) };
                writes.remove(second);
                writes.remove(first);
                i = first;
            }
            None => i += 1,
        }
    }
}

fn push_position(key: &mut Vec<u8>, record: &DeliveryRecord) {
    key.extend_from_slice(&record.created_ms.to_be_bytes());
    key.extend_from_slice(record.id.as_str().as_bytes());
}

fn event_key(id: &EventId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.as_str().len());
    key.push(b'e');
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

fn delivery_key(id: &DeliveryId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.as_str().len());
    key.push(b'd');
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

fn due_key(due_ms: u64, id: Option<&DeliveryId>) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + 24);
    key.push(b'q');
    key.extend_from_slice(&due_ms.to_be_bytes());
    if let Some(id) = id {
        key.extend_from_slice(id.as_str().as_bytes());
    }
    key
}

fn org_prefix(org: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + org.len() + 32);
    key.push(b'a');
    key.extend_from_slice(org.as_bytes());
    key.push(0);
    key
}

fn org_status_prefix(org: &str, status: DeliveryStatus) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + org.len() + 10 + 32);
    key.push(b's');
    key.extend_from_slice(org.as_bytes());
    key.push(0);
    key.extend_from_slice(status.as_str().as_bytes());
    key.push(0);
    key
}

fn status_prefix(status: DeliveryStatus) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + 10 + 32);
    key.push(b'g');
    key.extend_from_slice(status.as_str().as_bytes());
    key.push(0);
    key
}

/// The delivery id at the end of an index key (every index key ends with one).
fn id_from_key(key: &[u8]) -> Result<DeliveryId, StoreError> {
    const ID_LEN: usize = 24;
    key.len()
        .checked_sub(ID_LEN)
        .and_then(|start| std::str::from_utf8(&key[start..]).ok())
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| StoreError::corrupt(OUTBOX_TREE, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due_ids(outbox: &Outbox, now_ms: u64, budget: usize) -> Vec<DeliveryId> {
        outbox
            .due(now_ms, budget)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn open() -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let outbox = Outbox::open(&store, SealKeys::from_master(&[7; 32])).unwrap();
        (dir, outbox)
    }

    fn event<'a>(org: &'a str, data: &'a [u8]) -> NewEvent<'a> {
        NewEvent {
            org,
            event_type: "note.signed",
            data,
        }
    }

    fn subs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("sub_{i:020x}")).collect()
    }

    #[test]
    fn accepted_events_are_sealed_due_now_and_listed_per_tenant() {
        let (_dir, outbox) = open();
        let data = br#"{"patient":"Jane Roe"}"#;
        let (id, deliveries) = outbox
            .accept(&event("acme", data), &subs(2), 1_000)
            .unwrap();
        assert_eq!(deliveries.len(), 2);
        let raw = outbox.tree.get(&event_key(&id)).unwrap().unwrap();
        assert!(!raw.windows(8).any(|w| w == b"Jane Roe"), "data is sealed");
        let stored = outbox.event(&id).unwrap().unwrap();
        assert_eq!(stored.data.as_deref(), Some(&data[..]));
        assert_eq!(stored.header.deliveries, deliveries);
        assert_eq!(due_ids(&outbox, 999, 100), Vec::<DeliveryId>::new());
        let mut due = due_ids(&outbox, 1_000, 100);
        due.sort();
        let mut expected = deliveries.clone();
        expected.sort();
        assert_eq!(due, expected);
        assert_eq!(outbox.next_due().unwrap(), Some(1_000));
        assert_eq!(outbox.list(Some("acme"), None, None, 10).unwrap().len(), 2);
        assert!(outbox.list(Some("acm"), None, None, 10).unwrap().is_empty());
        assert!(outbox
            .list(Some("acme-2"), None, None, 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            outbox
                .list(Some("acme"), Some(DeliveryStatus::Pending), None, 10)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn concurrent_accepts_share_flushes_and_all_land() {
        let (_dir, outbox) = open();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let outbox = outbox.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        outbox.accept(&event("acme", b"{}"), &subs(1), 1).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(outbox.count(DeliveryStatus::Pending), 200);
        let state = outbox.flusher.state.lock().unwrap();
        assert_eq!(state.requested, 200);
        assert_eq!(state.flushed, 200);
        assert!(!state.running);
    }

    #[test]
    fn no_subscriptions_store_nothing() {
        let (_dir, outbox) = open();
        let (_, deliveries) = outbox.accept(&event("acme", b"{}"), &[], 1).unwrap();
        assert!(deliveries.is_empty());
        assert!(outbox.tree.is_empty());
    }

    #[test]
    fn updates_move_indexes_and_data_goes_when_no_delivery_needs_it() {
        let (_dir, outbox) = open();
        let (event_id, deliveries) = outbox.accept(&event("acme", b"{}"), &subs(2), 10).unwrap();
        let retry = |r: &mut DeliveryRecord| {
            r.attempts += 1;
            r.next_attempt_ms = Some(70_000);
            true
        };
        outbox.update(&deliveries[0], retry).unwrap().unwrap();
        assert_eq!(due_ids(&outbox, 69_999, 10), vec![deliveries[1].clone()]);
        assert_eq!(due_ids(&outbox, 70_000, 10).len(), 2);

        let finish = |status| {
            move |r: &mut DeliveryRecord| {
                r.status = status;
                r.next_attempt_ms = None;
                true
            }
        };
        outbox
            .update(&deliveries[0], finish(DeliveryStatus::Dead))
            .unwrap();
        outbox
            .update(&deliveries[1], finish(DeliveryStatus::Delivered))
            .unwrap();
        assert!(due_ids(&outbox, u64::MAX - 1, 10).is_empty());
        // The dead delivery keeps the data for a redelivery...
        assert!(outbox.event(&event_id).unwrap().is_some());
        assert_eq!(outbox.count(DeliveryStatus::Dead), 1);
        let moved = outbox.redeliver(None, Some("acme"), 99).unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].attempts, 0);
        assert_eq!(due_ids(&outbox, 99, 10), vec![deliveries[0].clone()]);
        // ...and once it is delivered, the data is gone.
        outbox
            .update(&deliveries[0], finish(DeliveryStatus::Delivered))
            .unwrap();
        assert!(outbox.event(&event_id).unwrap().is_none());
        assert_eq!(outbox.count(DeliveryStatus::Delivered), 2);
        assert_eq!(outbox.count(DeliveryStatus::Pending), 0);
    }

    #[test]
    fn due_entries_name_their_subscription_and_a_retry_rewrites_only_what_moved() {
        let (_dir, outbox) = open();
        let subs = subs(2);
        let (_, deliveries) = outbox.accept(&event("acme", b"{}"), &subs, 10).unwrap();
        let due = outbox.due(10, 10);
        let named: Vec<Option<&str>> = due.iter().map(|(_, sub)| sub.as_deref()).collect();
        assert!(named.contains(&Some(subs[0].as_str())));
        assert!(named.contains(&Some(subs[1].as_str())));
        let before = outbox.tree.len();
        let mut writes: Vec<Write> = Vec::new();
        let old = outbox.delivery(&deliveries[0]).unwrap().unwrap();
        let mut new = old.clone();
        new.attempts = 1;
        new.next_attempt_ms = Some(70_000);
        index_writes(&old, false, &mut writes);
        index_writes(&new, true, &mut writes);
        drop_unchanged(&mut writes);
        assert_eq!(
            writes.len(),
            2,
            "the old due entry out, the new one in: {writes:?}"
        );
        assert!(writes.iter().all(|(key, _)| key.first() == Some(&b'q')));
        outbox
            .update(&deliveries[0], |r| {
                *r = new.clone();
                true
            })
            .unwrap();
        assert_eq!(outbox.tree.len(), before, "no index entry lost or doubled");
        assert_eq!(due_ids(&outbox, 69_999, 10), vec![deliveries[1].clone()]);
    }

    #[test]
    fn an_empty_due_entry_from_an_earlier_version_reads_as_unknown() {
        let (_dir, outbox) = open();
        let (_, deliveries) = outbox.accept(&event("acme", b"{}"), &subs(1), 10).unwrap();
        outbox
            .tree
            .insert(&due_key(10, Some(&deliveries[0])), &[])
            .unwrap();
        assert_eq!(outbox.due(10, 10), vec![(deliveries[0].clone(), None)]);
    }

    #[test]
    fn retention_ends_old_dead_deliveries_then_removes_old_finished_records() {
        let (_dir, outbox) = open();
        let finish = |status| {
            move |r: &mut DeliveryRecord| {
                r.status = status;
                r.next_attempt_ms = None;
                true
            }
        };
        let (old_event, old) = outbox.accept(&event("acme", b"{}"), &subs(2), 10).unwrap();
        outbox
            .update(&old[0], finish(DeliveryStatus::Dead))
            .unwrap();
        outbox
            .update(&old[1], finish(DeliveryStatus::Delivered))
            .unwrap();
        let (_, young) = outbox.accept(&event("acme", b"{}"), &subs(1), 50).unwrap();
        outbox
            .update(&young[0], finish(DeliveryStatus::Dead))
            .unwrap();
        let (_, pending) = outbox.accept(&event("acme", b"{}"), &subs(1), 1).unwrap();

        // Accepted at 10: not before a cutoff of 10.
        assert_eq!(outbox.expire_dead(10, 99, 100).unwrap(), 0);
        assert_eq!(outbox.expire_dead(11, 99, 100).unwrap(), 1);
        let expired = outbox.delivery(&old[0]).unwrap().unwrap();
        assert_eq!(expired.status, DeliveryStatus::Failed);
        assert_eq!(expired.last_error, Some(FailureKind::Expired));
        assert_eq!(expired.updated_ms, 99);
        assert!(
            outbox.event(&old_event).unwrap().is_none(),
            "no delivery needs the data any more"
        );
        assert_eq!(outbox.count(DeliveryStatus::Dead), 1, "the young one waits");

        // Records go oldest first, a batch at a time; pending and dead ones stay.
        assert_eq!(outbox.remove_finished(11, 1).unwrap(), 1);
        assert_eq!(outbox.remove_finished(11, 100).unwrap(), 1);
        assert_eq!(outbox.remove_finished(11, 100).unwrap(), 0);
        assert!(outbox.delivery(&old[0]).unwrap().is_none());
        assert!(outbox.delivery(&old[1]).unwrap().is_none());
        let left: Vec<DeliveryId> = outbox
            .list(Some("acme"), None, None, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, [young[0].clone(), pending[0].clone()]);
        assert_eq!(due_ids(&outbox, 1_000, 10), [pending[0].clone()]);
        // No index entry of a removed record is left behind.
        let stale = outbox
            .tree
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, _)| {
                key.ends_with(old[0].as_str().as_bytes())
                    || key.ends_with(old[1].as_str().as_bytes())
            })
            .count();
        assert_eq!(stale, 0);
    }

    #[test]
    fn listings_are_newest_first_and_resume_after_a_position() {
        let (_dir, outbox) = open();
        for t in 0..5u64 {
            outbox.accept(&event("acme", b"{}"), &subs(1), t).unwrap();
        }
        let first = outbox.list(Some("acme"), None, None, 2).unwrap();
        assert_eq!(
            first.iter().map(|r| r.created_ms).collect::<Vec<_>>(),
            [4, 3]
        );
        let last = first.last().unwrap();
        let position = Position {
            created_ms: last.created_ms,
            id: last.id.clone(),
        };
        let next = outbox
            .list(Some("acme"), None, Some(&position), 10)
            .unwrap();
        assert_eq!(
            next.iter().map(|r| r.created_ms).collect::<Vec<_>>(),
            [2, 1, 0]
        );
    }

    #[test]
    fn failing_a_subscriptions_pending_deliveries_skips_those_in_flight() {
        let (_dir, outbox) = open();
        let subs = subs(1);
        let (_, a) = outbox.accept(&event("acme", b"{}"), &subs, 1).unwrap();
        let (_, b) = outbox.accept(&event("acme", b"{}"), &subs, 2).unwrap();
        let busy = a[0].clone();
        let failed = outbox
            .fail_pending_of("acme", &subs[0], FailureKind::Gone, 3, &|id| *id == busy)
            .unwrap();
        assert_eq!(failed, 1);
        let record = outbox.delivery(&b[0]).unwrap().unwrap();
        assert_eq!(record.status, DeliveryStatus::Failed);
        assert_eq!(record.last_error, Some(FailureKind::Gone));
        assert_eq!(due_ids(&outbox, 10, 10), vec![a[0].clone()]);
    }

    #[test]
    fn the_audit_mark_moves_with_its_event() {
        let (_dir, outbox) = open();
        assert_eq!(outbox.audit_mark().unwrap(), None);
        outbox
            .accept_audit(&event("acme", b"{}"), &subs(1), 41, 5)
            .unwrap();
        assert_eq!(outbox.audit_mark().unwrap(), Some(41));
        outbox
            .accept_audit(&event("acme", b"{}"), &[], 42, 5)
            .unwrap();
        assert_eq!(outbox.audit_mark().unwrap(), Some(42));
        assert_eq!(outbox.count(DeliveryStatus::Pending), 1);
    }

    #[test]
    fn data_sealed_under_another_key_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = Outbox::open(&store, SealKeys::from_master(&[1; 32])).unwrap();
        let (id, _) = first.accept(&event("acme", b"{}"), &subs(1), 1).unwrap();
        let second = Outbox::open(&store, SealKeys::from_master(&[2; 32])).unwrap();
        assert_eq!(second.event(&id).unwrap().unwrap().data, None);
    }
}
