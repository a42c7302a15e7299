//! The one writer of the audit files: a dedicated thread that numbers, chains, writes and
//! syncs records in groups, then indexes and publishes them.
//!
//! Requests never wait on the disk: they hand an [`Event`] over an in-memory channel and go
//! on. The writer collects everything that arrives during one commit interval (default
//! 50 ms), writes it with one `write`, makes it durable with one `fdatasync`, and only then
//! indexes it, publishes it and releases the queue slots the records held. So the number of
//! records waiting (and the memory they use) is bounded by the queue capacity, and a full
//! disk fills the queue instead of memory.
//!
//! A crash loses what had not been synced: records still in the channel or in the batch being
//! written, i.e. at most one commit interval's worth plus the write in progress. What was
//! synced is whole; a line torn by the crash is cut at the next start (see `recover`).
//!
//! On a write error (disk full, I/O error) the partial write is cut off again, the batch is
//! kept, and the write is retried with a growing pause; new records keep queueing until the
//! queue is full, and then requests are refused with `503 audit.unavailable` (or shed).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, oneshot, OwnedSemaphorePermit};

use super::chain::{self, ChainKey, Digest};
use super::files;
use super::index::{AuditIndex, NewBlock, Position, MAX_BLOCK_RECORDS};
use super::record::{encode_body, Event, Ident};
use super::time;
use crate::metrics::FsyncObserver;

/// A batch that grows past this many bytes is written at once, before its interval ends.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// First pause before retrying a failed write; doubled up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Longest pause between retries of a failed write.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What travels from requests and admin actions to the writer.
pub(super) enum Message {
    /// A record, with the queue slot it holds until it is durable (admin and system records
    /// hold none: they are rare and must never be refused).
    Record {
        /// The record.
        event: Event,
        /// Released when the record is on disk.
        slot: Option<OwnedSemaphorePermit>,
    },
    /// Write and sync everything received so far now, then answer whether that worked.
    Flush(oneshot::Sender<bool>),
    /// Write everything received so far and stop.
    Shutdown,
}

/// A record the writer made durable: the seam through which the audit stream is published
/// (the webhooks delivery worker subscribes; SIEMs receive exactly these lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedRecord {
    /// Its sequence number.
    pub seq: u64,
    /// The organization it belongs to, if any.
    pub org: Option<String>,
    /// The line as written to the file (without the newline).
    pub line: Bytes,
}

/// Where the chain stands: where recovery left it, then after every record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// The hash of the last record (the next record's `prev`).
    pub prev: Digest,
    /// The last record's timestamp; later records never go below it, so `ts` only grows.
    pub last_ts: u64,
}

/// The file records are appended to.
pub(super) struct CurrentFile {
    /// The open file (append mode).
    pub file: File,
    /// Its name in the audit directory.
    pub name: Arc<str>,
    /// Its bytes that are durable; a failed write is cut back to this length.
    pub len: u64,
    /// The UTC day of its first record, once it has one.
    pub day: Option<u64>,
}

/// The writer's fixed settings.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// The audit directory.
    pub dir: PathBuf,
    /// How long records are collected before one write and sync.
    pub interval: Duration,
    /// A file is not grown past this size (a single larger record still gets a file).
    pub rotate_bytes: u64,
    /// Start a new file when the UTC day changes.
    pub rotate_daily: bool,
    /// Times each write-and-sync for the metrics.
    pub fsync: FsyncObserver,
}

/// A numbered, chained record waiting to be written.
struct Chained {
    seq: u64,
    ts: u64,
    org: Option<Ident>,
    /// The length of its line, newline included; the lines of all pending records follow
    /// one another in the writer's batch buffer, in order.
    len: usize,
    /// Where the line was written (file, offset), once it was.
    written_at: Option<(Arc<str>, u64)>,
    _slot: Option<OwnedSemaphorePermit>,
}

/// The writer's state; owned by its thread.
pub(super) struct Writer {
    settings: Settings,
    key: ChainKey,
    head: ChainHead,
    file: Option<CurrentFile>,
    pending: Vec<Chained>,
    /// The lines of the pending records, one after the other: encoded and sealed in place,
    /// written with one `write` per file, so no record needs an allocation of its own.
    batch: Vec<u8>,
    index: AuditIndex,
    /// Cleared after an index write fails: the index head then stays where it was, and the
    /// next start completes the index from the files.
    index_complete: bool,
    publisher: broadcast::Sender<Arc<CommittedRecord>>,
    status: Arc<WriterStatus>,
}

/// What admission and health checks read of the writer thread.
#[derive(Debug, Default)]
pub struct WriterStatus {
    /// The thread has ended (shutdown, or it failed): nothing more will be written.
    pub stopped: AtomicBool,
    /// The last commit failed (a full or failing disk) and the writer is retrying: records
    /// wait in the queue, not on disk.
    pub failing: AtomicBool,
}

impl Writer {
    /// A writer continuing the chain at `head`, appending to `file` if recovery kept one.
    pub fn new(
        settings: Settings,
        key: ChainKey,
        head: ChainHead,
        file: Option<CurrentFile>,
        index: AuditIndex,
        publisher: broadcast::Sender<Arc<CommittedRecord>>,
        status: Arc<WriterStatus>,
    ) -> Self {
        Self {
            settings,
            key,
            head,
            file,
            pending: Vec::new(),
            batch: Vec::new(),
            index,
            index_complete: true,
            publisher,
            status,
        }
    }

    /// Serves the channel until a shutdown message or until every sender is gone.
    pub fn run(mut self, messages: Receiver<Message>) {
        // However the thread ends (even by a panic), admission learns that it has.
        let _stopped = StopFlag(self.status.clone());
        let mut waiters: Vec<oneshot::Sender<bool>> = Vec::new();
        let mut next_commit = Instant::now();
        let mut retry_pause = FIRST_RETRY_PAUSE;
        let mut failing = false;
        loop {
            let idle = self.pending.is_empty() && waiters.is_empty();
            let message = if idle {
                match messages.recv() {
                    Ok(message) => Some(message),
                    Err(_) => break,
                }
            } else {
                match next_commit.checked_duration_since(Instant::now()) {
                    None => None,
                    Some(wait) => {
                        // Sleep through the rest of the interval rather than waking for each
                        // record: a sender then never pays for waking this thread, which is
                        // most of what a record would cost a request. Flushes and shutdown
                        // unpark the thread (`Shared::send`), so they are not delayed.
                        std::thread::park_timeout(wait);
                        match messages.try_recv() {
                            Ok(message) => Some(message),
                            Err(TryRecvError::Empty) => continue,
                            Err(TryRecvError::Disconnected) => break,
                        }
                    }
                }
            };
            // Take everything already queued before looking at the clock again: under load
            // the channel holds many records, and one clock read per batch is enough.
            let message = match message {
                Some(Message::Record { event, slot }) => {
                    self.append(event, slot);
                    match self.append_queued(&messages) {
                        Some(other) => Some(other),
                        None if self.batch.len() < MAX_BATCH_BYTES => continue,
                        None => None,
                    }
                }
                other => other,
            };
            match message {
                Some(Message::Record { event, slot }) => {
                    self.append(event, slot);
                    if self.batch.len() < MAX_BATCH_BYTES {
                        continue;
                    }
                }
                Some(Message::Flush(ack)) => {
                    waiters.push(ack);
                    if !failing {
                        next_commit = Instant::now();
                    }
                    continue;
                }
                Some(Message::Shutdown) => {
                    while let Ok(message) = messages.try_recv() {
                        match message {
                            Message::Record { event, slot } => self.append(event, slot),
                            Message::Flush(ack) => waiters.push(ack),
                            Message::Shutdown => {}
                        }
                    }
                    break;
                }
                None => {}
            }
            let started = Instant::now();
            match self.commit() {
                Ok(()) => {
                    if failing {
                        tracing::warn!("audit writes succeed again");
                    }
                    failing = false;
                    self.status.failing.store(false, Ordering::SeqCst);
                    retry_pause = FIRST_RETRY_PAUSE;
                    for waiter in waiters.drain(..) {
                        let _ = waiter.send(true);
                    }
                    next_commit = started + self.settings.interval;
                }
                Err(error) => {
                    if !failing {
                        tracing::error!(
                            %error,
                            waiting = self.pending.len(),
                            "cannot write the audit trail; retrying (requests will be refused \
                             once the audit queue is full)"
                        );
                    }
                    failing = true;
                    self.status.failing.store(true, Ordering::SeqCst);
                    for waiter in waiters.drain(..) {
                        let _ = waiter.send(false);
                    }
                    next_commit = Instant::now() + retry_pause;
                    retry_pause = (retry_pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        }
        self.status.stopped.store(true, Ordering::SeqCst);
        let outcome = self.commit();
        if let Err(error) = &outcome {
            tracing::error!(
                %error,
                lost = self.pending.len(),
                "audit writer stopped with records it could not write"
            );
        }
        for waiter in waiters {
            let _ = waiter.send(outcome.is_ok());
        }
    }

    /// Appends the records already queued, up to a full batch; returns the first other
    /// message met (a flush or a shutdown), which the caller handles.
    fn append_queued(&mut self, messages: &Receiver<Message>) -> Option<Message> {
        while self.batch.len() < MAX_BATCH_BYTES {
            match messages.try_recv() {
                Ok(Message::Record { event, slot }) => self.append(event, slot),
                Ok(other) => return Some(other),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
            }
        }
        None
    }

    /// Numbers, timestamps and chains one record into the pending batch.
    fn append(&mut self, mut event: Event, slot: Option<OwnedSemaphorePermit>) {
        event.ts = event.ts.max(self.head.last_ts);
        let seq = self.head.next_seq;
        let start = self.batch.len();
        encode_body(seq, &event, &mut self.batch);
        let hash = chain::seal_from(&self.key, &self.head.prev, &mut self.batch, start);
        self.head = ChainHead {
            next_seq: seq.saturating_add(1),
            prev: hash,
            last_ts: event.ts,
        };
        self.pending.push(Chained {
            seq,
            ts: event.ts,
            org: event.body.into_org(),
            len: self.batch.len() - start,
            written_at: None,
            _slot: slot,
        });
    }

    /// Writes and syncs the pending batch, rotating files as needed, then indexes and
    /// publishes what became durable. What could not be written stays pending.
    fn commit(&mut self) -> io::Result<()> {
        let mut durable = 0;
        let result = self.write_pending(&mut durable);
        if durable > 0 {
            let written: Vec<Chained> = self.pending.drain(..durable).collect();
            let bytes: usize = written.iter().map(|record| record.len).sum();
            let mut batch = std::mem::take(&mut self.batch);
            self.after_durable(&written, &batch[..bytes]);
            batch.drain(..bytes);
            self.batch = batch;
        }
        result
    }

    fn write_pending(&mut self, durable: &mut usize) -> io::Result<()> {
        // Where the first record not yet durable starts in the batch buffer.
        let mut base = 0;
        while *durable < self.pending.len() {
            let (first_seq, first_ts, first_len) = {
                let first = &self.pending[*durable];
                (first.seq, first.ts, first.len)
            };
            if self.must_rotate(first_ts, first_len) {
                self.rotate(first_seq, first_ts)?;
            }
            let Some(current) = self.file.as_mut() else {
                return Err(io::Error::other("no audit file is open"));
            };
            let day = time::utc_day(first_ts);
            let mut end = *durable;
            let mut size = 0u64;
            while let Some(record) = self.pending.get(end) {
                let len = record.len as u64;
                // `must_rotate` made sure the file's day is the first record's day.
                let crosses_day = self.settings.rotate_daily && time::utc_day(record.ts) != day;
                let too_big = current.len + size + len > self.settings.rotate_bytes;
                if end > *durable && (crosses_day || too_big) {
                    break;
                }
                size += len;
                end += 1;
            }
            // `size` is the length of lines held in memory, so it fits in `usize`.
            let bytes = &self.batch[base..base + size as usize];
            let started = Instant::now();
            let written = current
                .file
                .write_all(bytes)
                .and_then(|()| current.file.sync_data());
            self.settings.fsync.observe(started.elapsed());
            if let Err(error) = written {
                // Cut off whatever part of the batch reached the file, so the retry does not
                // leave a torn line in the middle of it.
                if let Err(cut) = current.file.set_len(current.len) {
                    tracing::error!(error = %cut, "cannot cut a failed audit write back");
                }
                return Err(error);
            }
            let mut offset = current.len;
            for record in &mut self.pending[*durable..end] {
                record.written_at = Some((current.name.clone(), offset));
                offset += record.len as u64;
            }
            base += size as usize;
            current.len += size;
            current.day.get_or_insert(day);
            *durable = end;
        }
        Ok(())
    }

    fn must_rotate(&self, ts: u64, len: usize) -> bool {
        let Some(current) = &self.file else {
            return true;
        };
        if current.len == 0 {
            return false;
        }
        let too_big = current.len + len as u64 > self.settings.rotate_bytes;
        let new_day =
            self.settings.rotate_daily && current.day.is_some_and(|d| d != time::utc_day(ts));
        too_big || new_day
    }

    /// Starts a new file whose first record is `first_seq`. The previous file is complete
    /// and synced; the new one's first record links to its last.
    fn rotate(&mut self, first_seq: u64, ts: u64) -> io::Result<()> {
        let name = files::file_name(first_seq, ts);
        let path = self.settings.dir.join(&name);
        let file = files::open_append(&path)?;
        files::sync_dir(&self.settings.dir)?;
        let len = file.metadata()?.len();
        tracing::info!(file = %path.display(), first_seq, "audit file started");
        self.file = Some(CurrentFile {
            file,
            name: Arc::from(name),
            len,
            day: None,
        });
        Ok(())
    }

    /// `lines` are the written records' lines, one after the other.
    fn after_durable(&mut self, written: &[Chained], lines: &[u8]) {
        if self.index_complete {
            let groups = group_for_index(written);
            let blocks = groups.iter().flat_map(|(org, file, positions)| {
                positions
                    .chunks(MAX_BLOCK_RECORDS)
                    .map(|records| NewBlock { org, file, records })
            });
            let head = written.last().map(|record| record.seq);
            if let Err(error) = self.index.insert(blocks, head) {
                tracing::error!(
                    %error,
                    "cannot index audit records; queries miss records until the next start, \
                     which completes the index from the files"
                );
                self.index_complete = false;
            }
        }
        if self.publisher.receiver_count() > 0 {
            let mut start = 0;
            for record in written {
                let line = &lines[start..start + record.len];
                start += record.len;
                let committed = CommittedRecord {
                    seq: record.seq,
                    org: record.org.as_ref().map(|org| org.as_str().to_owned()),
                    line: Bytes::copy_from_slice(line_without_newline(line)),
                };
                let _ = self.publisher.send(Arc::new(committed));
            }
        }
    }
}

/// Marks the writer stopped when dropped, so requests are refused rather than served with
/// records nobody will write.
struct StopFlag(Arc<WriterStatus>);

impl Drop for StopFlag {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
    }
}

fn line_without_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// The written records of each organization in each file, in sequence order.
fn group_for_index(written: &[Chained]) -> Vec<(&str, &str, Vec<Position>)> {
    let mut groups: Vec<(&str, &str, Vec<Position>)> = Vec::new();
    let mut slots: HashMap<(&str, &str), usize> = HashMap::new();
    for record in written {
        let (Some(org), Some((file, offset))) = (&record.org, &record.written_at) else {
            continue;
        };
        let position = Position {
            seq: record.seq,
            ts: record.ts,
            offset: *offset,
            // The line without its newline.
            len: u32::try_from(record.len.saturating_sub(1)).unwrap_or(u32::MAX),
        };
        let (org, file) = (org.as_str(), &**file);
        match slots.get(&(org, file)) {
            Some(&slot) => groups[slot].2.push(position),
            None => {
                slots.insert((org, file), groups.len());
                groups.push((org, file, vec![position]));
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::admin_log::AdminActionKind;
    use crate::audit::chain::GENESIS;
    use crate::audit::record::{Actor, AdminEvent, EventBody};
    use crate::audit::verify;
    use crate::store::Store;

    const DAY: u64 = 86_400 * 1_000_000;

    fn event(ts: u64, org: &str) -> Event {
        Event {
            ts,
            body: EventBody::Admin(AdminEvent {
                action: AdminActionKind::KeyUpdated,
                actor: Actor::new("uid:0").unwrap(),
                target: Ident::new("0a1b2c3d").unwrap(),
                org: Ident::new(org),
            }),
        }
    }

    fn writer(dir: &Path, store: &Store, rotate_bytes: u64) -> Writer {
        let settings = Settings {
            dir: dir.to_owned(),
            interval: Duration::from_millis(1),
            rotate_bytes,
            rotate_daily: true,
            fsync: FsyncObserver::default(),
        };
        let head = ChainHead {
            next_seq: 1,
            prev: GENESIS,
            last_ts: 0,
        };
        let (publisher, _) = broadcast::channel(16);
        Writer::new(
            settings,
            ChainKey::plain(),
            head,
            None,
            AuditIndex::open(store, dir).unwrap(),
            publisher,
            Arc::new(WriterStatus::default()),
        )
    }

    fn names(dir: &Path) -> Vec<String> {
        files::list(dir).unwrap().iter().map(|f| f.name()).collect()
    }

    #[test]
    fn files_rotate_at_midnight_utc_and_by_size_with_one_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("data")).unwrap();
        let dir = tmp.path().join("audit");
        files::prepare_dir(&dir).unwrap();
        let mut writer = writer(&dir, &store, 1000);
        // 2026-11-23 23:59:59.9 and then the next day.
        let late = 1_795_478_399_900_000;
        writer.append(event(late, "acme"), None);
        writer.append(event(late + 50_000, "acme"), None);
        writer.append(event(late + 200_000, "acme"), None);
        writer.commit().unwrap();
        assert_eq!(
            names(&dir),
            vec![
                "audit-00000000000000000001-20261123.jsonl",
                "audit-00000000000000000003-20261124.jsonl",
            ]
        );
        // Size: each record is ~300 bytes, so a 1000-byte file holds three.
        for n in 0..5 {
            writer.append(event(late + DAY / 2 + n, "acme"), None);
        }
        writer.commit().unwrap();
        let listed = files::list(&dir).unwrap();
        assert_eq!(listed.len(), 3);
        for file in &listed {
            assert!(std::fs::metadata(&file.path).unwrap().len() <= 1000);
        }
        let verified = verify::verify(std::slice::from_ref(&dir), &ChainKey::plain()).unwrap();
        assert_eq!((verified.records, verified.files), (8, 3));
        assert!(verified.from_genesis);
        // Everything durable was indexed, newest first per organization.
        let index = AuditIndex::open(&store, &dir).unwrap();
        assert_eq!(index.head().unwrap(), 8);
        let mut reader = index.reader();
        let seqs: Vec<u64> = index
            .newest_first("acme", None)
            .map(|located| reader.read(&located.unwrap()).unwrap().seq)
            .collect();
        assert_eq!(seqs, (1..=8).rev().collect::<Vec<u64>>());
    }

    #[test]
    fn timestamps_never_go_backwards_in_the_trail() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("data")).unwrap();
        let dir = tmp.path().join("audit");
        files::prepare_dir(&dir).unwrap();
        let mut writer = writer(&dir, &store, 1 << 20);
        writer.append(event(5_000_000, "acme"), None);
        writer.append(event(4_000_000, "acme"), None);
        assert_eq!(writer.pending[1].ts, 5_000_000);
    }

    #[test]
    fn a_failed_write_keeps_the_batch_and_a_retry_writes_it_without_gaps() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("data")).unwrap();
        let dir = tmp.path().join("audit");
        files::prepare_dir(&dir).unwrap();
        let ts = 1_795_420_800_000_000;
        let full = dir.join(files::file_name(1, ts));
        std::os::unix::fs::symlink("/dev/full", &full).unwrap();
        let mut writer = writer(&dir, &store, 1 << 20);
        writer.append(event(ts, "acme"), None);
        writer.append(event(ts, "acme"), None);
        let error = writer.commit().unwrap_err();
        assert_eq!(error.raw_os_error(), Some(28), "ENOSPC: {error}");
        assert_eq!(writer.pending.len(), 2);
        writer.append(event(ts, "acme"), None);
        // Space again: the writer moves to a fresh file and writes all three, in order.
        std::fs::remove_file(&full).unwrap();
        writer.file = None;
        writer.commit().unwrap();
        assert!(writer.pending.is_empty());
        let verified = verify::verify(std::slice::from_ref(&dir), &ChainKey::plain()).unwrap();
        assert_eq!((verified.first_seq, verified.last_seq), (Some(1), Some(3)));
    }

    #[test]
    fn the_thread_commits_on_flush_and_on_shutdown() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("data")).unwrap();
        let dir = tmp.path().join("audit");
        files::prepare_dir(&dir).unwrap();
        let writer = writer(&dir, &store, 1 << 20);
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || writer.run(receiver));
        sender
            .send(Message::Record {
                event: event(1, "acme"),
                slot: None,
            })
            .unwrap();
        let (ack, done) = oneshot::channel();
        sender.send(Message::Flush(ack)).unwrap();
        assert_eq!(done.blocking_recv(), Ok(true));
        assert_eq!(
            verify::verify(std::slice::from_ref(&dir), &ChainKey::plain())
                .unwrap()
                .records,
            1
        );
        sender
            .send(Message::Record {
                event: event(2, "acme"),
                slot: None,
            })
            .unwrap();
        sender.send(Message::Shutdown).unwrap();
        thread.join().unwrap();
        assert_eq!(
            verify::verify(&[dir], &ChainKey::plain()).unwrap().records,
            2
        );
    }
}
