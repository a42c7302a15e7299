//! The audit trail: one PHI-free, hash-chained JSON line per request and per admin action,
//! queryable per tenant.
//!
//! The parts, each in its own module:
//! - [`record`]: the record type (enums, numbers and ids only) and its canonical encoding;
//! - [`chain`]: `hash = SHA-256(prev || record)`, or HMAC-SHA256 under a key file;
//! - [`writer`]: the single writer thread, group commit (`write` + `fdatasync` per batch),
//!   rotation by size or day, indexing and publishing of durable records;
//! - `recover`: at start, cutting a line torn by a crash (and recording that), and
//!   completing the index from the files;
//! - [`index`]: the per-organization index in the state store (blocks of positions into the
//!   files, one store write per organization per batch);
//! - [`query`] and [`api`]: the tenant-scoped, keyset-paginated query endpoint;
//! - [`verify`], [`export`] and [`cli`]: checking every link, exporting one organization's
//!   lines, and the `portcullis audit` commands that do both;
//! - [`ticket`]: a request's record while the request is being answered;
//! - [`files`] and [`time`]: file naming and listing, and the timestamps' one text form.
//!
//! **Durability.** Records are on disk within one commit interval (default 50 ms) of the
//! answer; a crash loses at most the records not yet synced, never the chain (a torn last line
//! is cut at the next start, and the cut is recorded). Records become visible to queries once
//! they are durable.
//!
//! **Admission.** A request reserves a slot in the writer's queue before any gate runs, so
//! its record can be handed over without waiting however it ends. When the queue is full the
//! policy's `when_full` applies: `block` waits up to `block_timeout` for a slot and then
//! refuses the request with `503 audit.unavailable` (so no request is answered, or forwarded,
//! without its record), `shed` serves the request without a record and counts it.
//!
//! **Publishing.** Every durable record is offered on a broadcast channel
//! ([`Audit::subscribe`]); the webhook delivery worker turns it into `audit.event` deliveries.

pub mod api;
pub mod chain;
pub mod cli;
pub mod error;
pub mod export;
pub mod files;
pub mod index;
pub mod query;
pub mod record;
mod recover;
pub mod ticket;
pub mod time;
pub mod verify;
pub mod writer;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http::Method;
use tokio::sync::{broadcast, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

pub use error::AuditError;
pub use index::{AuditIndex, AUDIT_INDEX_TREE};
pub use record::{ClientIpMode, HttpMethod, RouteName};
pub use ticket::RequestAudit;
pub use writer::CommittedRecord;

use self::chain::ChainKey;
use self::record::{Actor, AdminEvent, Event, EventBody, Ident};
use self::ticket::Sink;
use self::writer::{Message, Settings, Writer, WriterStatus};
use crate::admin_log::AdminActionKind;
use crate::config::AuditConfig;
use crate::metrics::FsyncObserver;
use crate::problem::{Problem, ProblemCode};
use crate::request_id::RequestId;
use crate::store::Store;

/// Durable records a slow subscriber may fall behind by before it misses some (it is told
/// how many it missed).
const PUBLISH_CAPACITY: usize = 16_384;

/// Warnings about a full queue are logged at most this often.
const WARNING_INTERVAL_MICROS: u64 = 1_000_000;

/// What a request does when the writer's queue is full (`audit.when_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait up to `audit.block_timeout` for room, then refuse with `503 audit.unavailable`.
    #[default]
    Block,
    /// Serve the request without a record and count it ([`Audit::shed_count`]).
    Shed,
}

/// The running audit trail: admission of requests, the link admin actions use, the index
/// queries read, and the writer thread's lifetime.
///
/// Dropping it writes and syncs everything queued and stops the writer.
pub struct Audit {
    shared: Option<Arc<Shared>>,
    index: Option<AuditIndex>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// What requests, admin actions and the writer share.
struct Shared {
    sender: Sender<Message>,
    /// The writer thread, unparked for messages that must not wait out a commit interval.
    writer: std::thread::Thread,
    slots: Arc<Semaphore>,
    /// The queue's size, for [`Audit::queue_depth`].
    capacity: usize,
    status: Arc<WriterStatus>,
    shed: AtomicU64,
    last_warning: AtomicU64,
    publisher: broadcast::Sender<Arc<CommittedRecord>>,
}

impl Shared {
    fn sender(&self) -> Sender<Message> {
        self.sender.clone()
    }

    fn send(&self, message: Message) -> Result<(), AuditError> {
        if self.status.stopped.load(Ordering::SeqCst) {
            return Err(AuditError::Stopped);
        }
        self.sender()
            .send(message)
            .map_err(|_| AuditError::Stopped)?;
        self.writer.unpark();
        Ok(())
    }

    /// Logs `message` unless a warning was logged less than a second ago.
    fn warn_now(&self) -> bool {
        let now = time::now_micros();
        let last = self.last_warning.load(Ordering::Relaxed);
        now.saturating_sub(last) >= WARNING_INTERVAL_MICROS
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Audit {
    /// Recovers the audit directory (cutting a torn last line and recording the repair),
    /// completes the index, and starts the writer thread. A disabled configuration gives
    /// [`Audit::disabled`].
    pub fn open(store: &Store, config: &AuditConfig) -> Result<Self, AuditError> {
        Self::open_observed(store, config, FsyncObserver::default())
    }

    /// [`Audit::open`] with every batch write and sync timed into `fsync`.
    pub fn open_observed(
        store: &Store,
        config: &AuditConfig,
        fsync: FsyncObserver,
    ) -> Result<Self, AuditError> {
        if !config.enabled {
            tracing::warn!("the audit trail is disabled (audit.enabled = false)");
            return Ok(Self::disabled());
        }
        let index = AuditIndex::open(store, &config.dir)?;
        let key = match &config.hmac_key_file {
            Some(path) => ChainKey::load_or_create(path)?,
            None => ChainKey::plain(),
        };
        let recovered = recover::recover(&config.dir, &index)?;
        let (sender, receiver) = mpsc::channel();
        if let Some(repair) = recovered.repair {
            let event = Event {
                ts: time::now_micros(),
                body: EventBody::System(repair),
            };
            // The receiver is alive (it is in scope), so this cannot fail.
            let _ = sender.send(Message::Record { event, slot: None });
        }
        let status = Arc::new(WriterStatus::default());
        let (publisher, _) = broadcast::channel(PUBLISH_CAPACITY);
        let settings = Settings {
            dir: config.dir.clone(),
            interval: config.commit_interval,
            rotate_bytes: config.rotate_bytes,
            rotate_daily: config.rotate_daily,
            fsync,
        };
        let writer = Writer::new(
            settings,
            key,
            recovered.head,
            recovered.file,
            index.clone(),
            publisher.clone(),
            status.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(AuditError::Spawn)?;
        let shared = Shared {
            sender,
            writer: thread.thread().clone(),
            slots: Arc::new(Semaphore::new(config.queue_capacity)),
            capacity: config.queue_capacity,
            status,
            shed: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            publisher,
        };
        Ok(Self {
            shared: Some(Arc::new(shared)),
            index: Some(index),
            writer: Mutex::new(Some(thread)),
        })
    }

    /// No audit trail: requests get records that go nowhere and the query endpoint is off.
    pub fn disabled() -> Self {
        Self {
            shared: None,
            index: None,
            writer: Mutex::new(None),
        }
    }

    /// Records holding a queue slot: reserved by requests in flight or waiting to be written
    /// and synced. Zero when the trail is disabled.
    pub fn queue_depth(&self) -> usize {
        self.shared.as_ref().map_or(0, |shared| {
            shared
                .capacity
                .saturating_sub(shared.slots.available_permits())
        })
    }

    /// Whether the trail cannot be written right now: the writer is retrying a failed commit
    /// (a full or failing disk) or has stopped. Requests are still admitted while the queue
    /// has room, but their records are not on disk; health checks report it.
    pub fn is_failing(&self) -> bool {
        self.shared.as_ref().is_some_and(|shared| {
            shared.status.failing.load(Ordering::SeqCst)
                || shared.status.stopped.load(Ordering::SeqCst)
        })
    }

    /// Whether records are being written.
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// The per-organization index, when the trail is enabled.
    pub fn index(&self) -> Option<&AuditIndex> {
        self.index.as_ref()
    }

    /// Reserves a request's record before any gate runs.
    ///
    /// `Err` is the `503 audit.unavailable` to answer with: the queue stayed full for
    /// `block_timeout` (the disk is full or too slow), or the writer has stopped.
    pub async fn admit(
        &self,
        request_id: &RequestId,
        method: &Method,
        peer: IpAddr,
        config: &AuditConfig,
        started: Instant,
    ) -> Result<RequestAudit, Problem> {
        self.admit_as(request_id, HttpMethod::of(method), peer, config, started)
            .await
    }

    async fn admit_as(
        &self,
        request_id: &RequestId,
        method: HttpMethod,
        peer: IpAddr,
        config: &AuditConfig,
        started: Instant,
    ) -> Result<RequestAudit, Problem> {
        let Some(shared) = &self.shared else {
            return Ok(RequestAudit::new(
                None,
                started,
                request_id,
                method,
                peer,
                config.client_ip,
            ));
        };
        if shared.status.stopped.load(Ordering::SeqCst) {
            return Err(unavailable("the audit writer has stopped"));
        }
        let slot = match self.reserve(shared, config).await {
            Reserved::Slot(slot) => Some(slot),
            Reserved::Shed => None,
            Reserved::Unavailable(reason) => return Err(unavailable(reason)),
        };
        let sink = slot.map(|slot| Sink {
            sender: shared.sender(),
            slot: Some(slot),
        });
        Ok(RequestAudit::new(
            sink,
            started,
            request_id,
            method,
            peer,
            config.client_ip,
        ))
    }

    async fn reserve(&self, shared: &Shared, config: &AuditConfig) -> Reserved {
        match shared.slots.clone().try_acquire_owned() {
            Ok(slot) => return Reserved::Slot(slot),
            Err(TryAcquireError::Closed) => {
                return Reserved::Unavailable("the audit writer has stopped")
            }
            Err(TryAcquireError::NoPermits) => {}
        }
        match config.when_full {
            WhenFull::Shed => {
                let shed = shared.shed.fetch_add(1, Ordering::Relaxed) + 1;
                if shared.warn_now() {
                    tracing::warn!(
                        shed,
                        "audit queue full: requests are served without audit records \
                         (audit.when_full = \"shed\")"
                    );
                }
                Reserved::Shed
            }
            WhenFull::Block => {
                let waited = tokio::time::timeout(
                    config.block_timeout,
                    shared.slots.clone().acquire_owned(),
                )
                .await;
                match waited {
                    Ok(Ok(slot)) => Reserved::Slot(slot),
                    Ok(Err(_)) => Reserved::Unavailable("the audit writer has stopped"),
                    Err(_) => {
                        if shared.warn_now() {
                            tracing::warn!(
                                waited_ms = u64::try_from(config.block_timeout.as_millis())
                                    .unwrap_or(u64::MAX),
                                "audit queue full: refusing requests with 503 audit.unavailable"
                            );
                        }
                        Reserved::Unavailable("the audit trail cannot keep up; retry shortly")
                    }
                }
            }
        }
    }

    /// Records a request refused before the pipeline could run (plain HTTP on the TLS port);
    /// call it before sending the answer. Waits for a queue slot like any request; if none
    /// comes, the refusal is answered unrecorded and a warning logged (the client speaks
    /// plaintext, so a `503` would not help it). An unreadable method is recorded as `OTHER`.
    pub async fn record_refusal(
        &self,
        request_id: &RequestId,
        method: Option<&Method>,
        peer: IpAddr,
        config: &AuditConfig,
        started: Instant,
        code: ProblemCode,
    ) {
        let method = method.map_or(HttpMethod::Other, HttpMethod::of);
        match self
            .admit_as(request_id, method, peer, config, started)
            .await
        {
            Ok(mut record) => record.finish(code.status(), Some(code)),
            Err(_) => tracing::warn!(
                code = code.as_str(),
                "audit queue full: a refused request was not recorded"
            ),
        }
    }

    /// The handle admin actions are recorded through; `None` when the trail is disabled.
    pub fn link(&self) -> Option<AuditLink> {
        self.shared.as_ref().map(|shared| AuditLink {
            shared: shared.clone(),
        })
    }

    /// Writes and syncs everything queued so far; returns once it is on disk.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let (ack, done) = oneshot::channel();
        shared.send(Message::Flush(ack))?;
        match done.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuditError::NotDurable),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// A stream of every record once it is durable (the `audit.event` webhook source).
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Arc<CommittedRecord>>> {
        self.shared
            .as_ref()
            .map(|shared| shared.publisher.subscribe())
    }

    /// Requests served without a record because the queue was full (`when_full = "shed"`).
    pub fn shed_count(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |shared| shared.shed.load(Ordering::Relaxed))
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else { return };
        let _ = shared.send(Message::Shutdown);
        let thread = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the audit writer thread panicked");
            }
        }
    }
}

enum Reserved {
    Slot(OwnedSemaphorePermit),
    Shed,
    Unavailable(&'static str),
}

fn unavailable(detail: &'static str) -> Problem {
    Problem::new(ProblemCode::AuditUnavailable)
        .with_detail(detail)
        .with_retry_after(Duration::from_secs(1))
}

/// How the admin log records each action in the audit trail as well.
#[derive(Clone)]
pub struct AuditLink {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLink").finish_non_exhaustive()
    }
}

impl AuditLink {
    /// Queues the record of an admin action. Never waits: admin actions are rare and are
    /// never refused for a full queue.
    pub fn admin(
        &self,
        action: AdminActionKind,
        actor: &str,
        target: &str,
        org: Option<&str>,
    ) -> Result<(), AuditError> {
        let (Some(actor), Some(target)) = (Actor::new(actor), Ident::new(target)) else {
            return Err(AuditError::InvalidEvent);
        };
        let org = match org {
            Some(org) => Some(Ident::new(org).ok_or(AuditError::InvalidEvent)?),
            None => None,
        };
        let event = Event {
            ts: time::now_micros(),
            body: EventBody::Admin(AdminEvent {
                action,
                actor,
                target,
                org,
            }),
        };
        self.shared.send(Message::Record { event, slot: None })
    }
}
