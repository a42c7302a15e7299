//! The one handle on persistent state: named trees of bytes, and an explicit flush.
//!
//! sled 0.34 is the engine today. Its own README calls it beta, so nothing outside this module
//! names a sled type: callers see [`Store`], [`Tree`] and [`StoreError`] only, and another
//! embedded engine (redb, for example) can replace sled behind the same few methods.
//!
//! Durability rule: a write is in the engine's log once `insert` returns, and on disk once
//! [`Store::flush`] returns. Callers flush wherever they promise durability (admin actions);
//! the engine also flushes on its own every 500 ms. Scans read from disk and can be slow: async
//! callers run them in `spawn_blocking`.

use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Name of the directory under the data directory that holds the engine's files.
pub const STATE_DIR: &str = "state";

/// Page cache size: state is small and the registries keep their own in-memory index, so a
/// low cache keeps the sidecar's memory flat.
const CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;

/// The engine's own background flush interval.
const FLUSH_EVERY_MS: u64 = 500;

/// How long [`Store::open`] waits for the engine's directory lock. A store dropped moments
/// ago in this process releases its lock only when the engine's background threads finish.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Pause between attempts to take the lock.
const LOCK_RETRY: Duration = Duration::from_millis(25);

/// Longest printable key shown in a [`StoreError::Corrupt`] hint.
const KEY_HINT_MAX: usize = 32;

/// An engine failure, kept opaque so the engine type stays out of the public API.
///
/// Its message is the engine's description of the fault (I/O error, corruption, bug); the
/// engine never puts stored values in its errors.
pub struct EngineError(sled::Error);

impl fmt::Debug for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            sled::Error::Io(err) => Some(err),
            _ => None,
        }
    }
}

/// Why persistent state could not be read or written.
///
/// No variant carries a stored value: a corrupt record is named by its tree and key only,
/// because values can hold hashes and operator-entered text that do not belong in logs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created or restricted to its owner.
    #[error("cannot prepare state directory {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process (or a store in this process that is still shutting down) holds the
    /// engine's lock on the directory.
    #[error(
        "the state store at {} is in use by another process; stop it, or make the change \
         through its admin socket",
        path.display()
    )]
    Locked {
        /// The state directory.
        path: PathBuf,
    },
    /// The engine could not open its files (unreadable, corrupt).
    #[error("cannot open the state store at {}: {source}", path.display())]
    Open {
        /// The state directory.
        path: PathBuf,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// A read, write or flush failed inside the engine.
    #[error("state store {op} failed on tree `{tree}`: {source}")]
    Engine {
        /// The tree, or `*` for the whole store.
        tree: &'static str,
        /// What was attempted (`get`, `insert`, `flush`, ...).
        op: &'static str,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// A stored value did not decode as the type its tree holds.
    #[error("corrupt value in tree `{tree}` under key {key_hint}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// The key, printable if it is short ASCII, else a hex prefix.
        key_hint: String,
    },
    /// A value could not be encoded (a bug in a type's serialization, never user input).
    #[error("cannot encode a value for tree `{tree}`")]
    Encode {
        /// The tree.
        tree: &'static str,
    },
    /// An earlier engine failure (a full or failing disk) took the store out of service;
    /// nothing is read or written until portcullis restarts.
    #[error(
        "the state store stopped after an engine failure (see the first error logged); \
         tree `{tree}` is not read or written until portcullis is restarted"
    )]
    Failed {
        /// The tree.
        tree: &'static str,
    },
}

/// Takes the store out of service at the first engine failure.
///
/// After an I/O error (a full disk, a failing device) the engine can block a later flush
/// for ever while it holds its internal lock, and then every read and write queues behind
/// it: requests would hang and shutdown would never end. Once the fuse has tripped nothing
/// enters the engine again: every operation fails at once (`503` to callers: fail closed),
/// and the engine is not dropped (its drop flushes) so the process can still exit.
#[derive(Clone, Default)]
struct Fuse(Arc<AtomicBool>);

impl Fuse {
    fn is_tripped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// `Err(Failed)` once tripped.
    fn check(&self, tree: &'static str) -> Result<(), StoreError> {
        if self.is_tripped() {
            Err(StoreError::Failed { tree })
        } else {
            Ok(())
        }
    }

    /// Converts an engine error, tripping the fuse.
    fn error(
        &self,
        tree: &'static str,
        op: &'static str,
    ) -> impl FnOnce(sled::Error) -> StoreError + '_ {
        move |source| {
            if !self.0.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    tree,
                    op,
                    error = %source,
                    "the state store failed; every later read and write is refused until \
                     portcullis is restarted (check the disk)"
                );
            }
            StoreError::Engine {
                tree,
                op,
                source: EngineError(source),
            }
        }
    }
}

impl StoreError {
    /// A corrupt-value error for `key` in `tree`, for callers that find a stored value
    /// inconsistent after decoding it (a record stored under the wrong key, for example).
    pub fn corrupt(tree: &'static str, key: &[u8]) -> Self {
        Self::Corrupt {
            tree,
            key_hint: key_hint(key),
        }
    }
}

/// The process's handle on the state store. Cloning is cheap and shares the engine.
///
/// Only one process may open a data directory at a time: the engine locks its files.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    fuse: Fuse,
}

impl Drop for Store {
    fn drop(&mut self) {
        // A failed engine is left behind rather than dropped: its drop would flush, and a
        // flush after a failure can block for ever.
        // The engine lives as long as its last handle: one handle forgotten keeps it.
        if self.fuse.is_tripped() {
            std::mem::forget(self.db.clone());
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the engine at `<data_dir>/state`.
    ///
    /// Missing directories are created with mode 0700 and the state directory itself is always
    /// restricted to 0700: it holds key hashes and BAA evidence.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(STATE_DIR);
        let dir_error = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Directory { path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(dir_error(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(dir_error(&path))?;
        let config = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .flush_every_ms(Some(FLUSH_EVERY_MS));
        let started = Instant::now();
        loop {
            match config.open() {
                Ok(db) => {
                    return Ok(Self {
                        db,
                        path,
                        fuse: Fuse::default(),
                    })
                }
                Err(err) if is_lock_conflict(&err) => {
                    if started.elapsed() >= LOCK_WAIT {
                        return Err(StoreError::Locked { path });
                    }
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        path,
                        source: EngineError(source),
                    })
                }
            }
        }
    }

    /// The directory holding the engine's files.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating if needed) the tree called `name`.
    ///
    /// Names are static so that every tree in the store is visible in the source.
    pub fn tree(&self, name: &'static str) -> Result<Tree, StoreError> {
        self.fuse.check(name)?;
        let inner = self
            .db
            .open_tree(name)
            .map_err(self.fuse.error(name, "open_tree"))?;
        Ok(Tree {
            inner,
            name,
            fuse: self.fuse.clone(),
        })
    }

    /// Whether an engine failure has taken the store out of service (see [`StoreError::Failed`]).
    pub fn has_failed(&self) -> bool {
        self.fuse.is_tripped()
    }

    /// Writes everything inserted so far, in every tree, to disk before returning.
    ///
    /// Call it before telling anyone a change is durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.fuse.check("*")?;
        self.db
            .flush()
            .map(drop)
            .map_err(self.fuse.error("*", "flush"))
    }
}

/// One named, ordered map from byte keys to byte values.
///
/// Keys sort as bytes, so big-endian integers iterate in numeric order. Keys appear in
/// corruption reports: never key a tree by a secret.
#[derive(Clone)]
pub struct Tree {
    inner: sled::Tree,
    name: &'static str,
    fuse: Fuse,
}

impl Drop for Tree {
    fn drop(&mut self) {
        // As for the store: a failed engine is left behind rather than dropped.
        if self.fuse.is_tripped() {
            std::mem::forget(self.inner.clone());
        }
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree").field("name", &self.name).finish()
    }
}

/// One stored entry as owned bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

/// What [`Tree::compare_and_swap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// The expected value was there and has been replaced.
    Done,
    /// Another value was there (carried here; `None`: no value); nothing was written.
    Conflict(Option<Vec<u8>>),
}

impl Tree {
    /// The tree's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.fuse.check(self.name)?;
        self.inner
            .get(key)
            .map(|value| value.map(|v| v.to_vec()))
            .map_err(self.fuse.error(self.name, "get"))
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.fuse.check(self.name)?;
        self.inner
            .insert(key, value)
            .map(drop)
            .map_err(self.fuse.error(self.name, "insert"))
    }

    /// Removes the value under `key`; returns whether there was one.
    pub fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.fuse.check(self.name)?;
        self.inner
            .remove(key)
            .map(|old| old.is_some())
            .map_err(self.fuse.error(self.name, "remove"))
    }

    /// Every entry in key order (reversible, for newest-first listings).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Result<Entry, StoreError>> + use<> {
        self.guarded(self.inner.iter())
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<Entry, StoreError>> + use<> {
        self.guarded(self.inner.scan_prefix(prefix))
    }

    /// The entries whose keys are at or after `start`, in key order; a resumable scan for
    /// sweeps that work in bounded batches.
    pub fn iter_from(
        &self,
        start: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<Entry, StoreError>> + use<> {
        self.guarded(self.inner.range(start..))
    }

    /// The entries whose keys are at or after `start` and before `end`, in key order
    /// (reversible, for newest-first pages that resume below a cursor). Empty when
    /// `end <= start`.
    pub fn range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<Entry, StoreError>> + use<> {
        let end = end.max(start).to_vec();
        self.guarded(self.inner.range(start.to_vec()..end))
    }

    /// Shows `visit` the entries at or after `start` and before `end`, in key order and
    /// borrowed, until it breaks; for hot scans that look at many entries and keep few, where
    /// copying each one out would cost more than the look.
    pub fn visit_range(
        &self,
        start: &[u8],
        end: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.fuse.check(self.name)?;
        if end <= start {
            return Ok(());
        }
        for item in self.inner.range(start..end) {
            self.fuse.check(self.name)?;
            let (key, value) = item.map_err(self.fuse.error(self.name, "iter"))?;
            if visit(&key, &value).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Stores every pair in one atomic batch: after a crash either all of them are in the
    /// tree or none, and many small writes cost one engine call.
    pub fn insert_batch<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), StoreError> {
        self.fuse.check(self.name)?;
        let mut batch = sled::Batch::default();
        for (key, value) in pairs {
            batch.insert(key, value);
        }
        self.inner
            .apply_batch(batch)
            .map_err(self.fuse.error(self.name, "apply_batch"))
    }

    /// Applies every write in one atomic batch, where `None` removes the key: records that
    /// move between indexes (a delivery changing state) never show half a move after a crash.
    pub fn write_batch(&self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        self.fuse.check(self.name)?;
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        self.inner
            .apply_batch(batch)
            .map_err(self.fuse.error(self.name, "apply_batch"))
    }

    /// Atomically replaces the value under `key` with `new` (`None` removes it), but only if
    /// the stored value is still `expected` (`None`: no value). Two writers racing on one key
    /// cannot both succeed, which a get-then-insert cannot promise.
    pub fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Swap, StoreError> {
        self.fuse.check(self.name)?;
        match self.inner.compare_and_swap(key, expected, new) {
            Ok(Ok(())) => Ok(Swap::Done),
            Ok(Err(conflict)) => Ok(Swap::Conflict(conflict.current.map(|v| v.to_vec()))),
            Err(source) => Err(self.fuse.error(self.name, "compare_and_swap")(source)),
        }
    }

    /// The entry with the greatest key (the newest, for big-endian sequence keys).
    pub fn last(&self) -> Result<Option<Entry>, StoreError> {
        self.fuse.check(self.name)?;
        self.inner
            .last()
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .map_err(self.fuse.error(self.name, "last"))
    }

    /// The number of entries (0 once the store has failed). This walks the tree: for
    /// tests, not for hot paths.
    pub fn len(&self) -> usize {
        if self.fuse.is_tripped() {
            return 0;
        }
        self.inner.len()
    }

    /// Whether the tree has no entries (or the store has failed).
    pub fn is_empty(&self) -> bool {
        self.fuse.is_tripped() || self.inner.is_empty()
    }

    /// `iter` as owned entries that stop at once when the store fails.
    fn guarded(&self, iter: sled::Iter) -> Guarded {
        Guarded {
            iter,
            name: self.name,
            fuse: self.fuse.clone(),
            done: false,
        }
    }

    /// The value under `key` decoded from JSON; a value that does not decode is
    /// [`StoreError::Corrupt`].
    pub fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.get(key)?
            .map(|bytes| decode_json(self.name, key, &bytes))
            .transpose()
    }

    /// Stores `value` as JSON under `key`.
    pub fn insert_json<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec(value).map_err(|_| StoreError::Encode { tree: self.name })?;
        self.insert(key, &bytes)
    }

    /// Every entry decoded from JSON, in key order.
    pub fn iter_json<T: DeserializeOwned>(
        &self,
    ) -> impl DoubleEndedIterator<Item = Result<(Vec<u8>, T), StoreError>> + use<T> {
        let name = self.name;
        self.iter().map(move |item| {
            let (key, value) = item?;
            let decoded = decode_json(name, &key, &value)?;
            Ok((key, decoded))
        })
    }
}

/// Decodes one stored JSON value, reporting only where the bad value is.
fn decode_json<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::corrupt(tree, key))
}

/// A short, terminal-safe rendering of a key for error messages.
fn key_hint(key: &[u8]) -> String {
    let printable = key.iter().all(|b| b.is_ascii_graphic());
    if printable && !key.is_empty() && key.len() <= KEY_HINT_MAX {
        // All bytes are ASCII graphic characters, so this is valid UTF-8.
        return format!("`{}`", String::from_utf8_lossy(key));
    }
    let shown = &key[..key.len().min(KEY_HINT_MAX / 2)];
    let mut hint = String::with_capacity(shown.len() * 2 + 16);
    hint.push_str("0x");
    for byte in shown {
        hint.push_str(&format!("{byte:02x}"));
    }
    if shown.len() < key.len() {
        hint.push_str(&format!("… ({} bytes)", key.len()));
    }
    hint
}

/// Whether opening failed only because the directory lock is taken. sled 0.34.7 (pinned
/// exactly) reports this as an `Other` I/O error with this fixed message prefix.
fn is_lock_conflict(err: &sled::Error) -> bool {
    matches!(err, sled::Error::Io(io) if io.kind() == io::ErrorKind::Other
        && io.to_string().starts_with("could not acquire lock"))
}

/// An engine iterator yielding owned entries. It checks the fuse before every step (a step
/// enters the engine) and trips it on an error; after an error it ends.
struct Guarded {
    iter: sled::Iter,
    name: &'static str,
    fuse: Fuse,
    done: bool,
}

impl Guarded {
    fn step(
        &mut self,
        next: impl FnOnce(&mut sled::Iter) -> Option<sled::Result<(sled::IVec, sled::IVec)>>,
    ) -> Option<Result<Entry, StoreError>> {
        if self.done {
            return None;
        }
        if let Err(failed) = self.fuse.check(self.name) {
            self.done = true;
            return Some(Err(failed));
        }
        match next(&mut self.iter)? {
            Ok((key, value)) => Some(Ok((key.to_vec(), value.to_vec()))),
            Err(source) => {
                self.done = true;
                Some(Err(self.fuse.error(self.name, "iter")(source)))
            }
        }
    }
}

impl Iterator for Guarded {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(Iterator::next)
    }
}

impl DoubleEndedIterator for Guarded {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(DoubleEndedIterator::next_back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn state_dir_is_private() {
        let (dir, store) = open();
        let mode = fs::metadata(dir.path().join(STATE_DIR))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(store.path(), dir.path().join(STATE_DIR));
    }

    #[test]
    fn missing_parents_are_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        Store::open(&data).unwrap();
        let mode = fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
    }

    #[test]
    fn insert_get_remove_and_ordered_iteration() {
        let (_dir, store) = open();
        let tree = store.tree("t").unwrap();
        assert!(tree.is_empty());
        for n in [3u64, 1, 2, 300] {
            tree.insert(&n.to_be_bytes(), &n.to_le_bytes()).unwrap();
        }
        assert_eq!(tree.len(), 4);
        assert_eq!(
            tree.get(&2u64.to_be_bytes()).unwrap(),
            Some(2u64.to_le_bytes().to_vec())
        );
        let keys: Vec<Vec<u8>> = tree.iter().map(|e| e.unwrap().0).collect();
        let expected: Vec<Vec<u8>> = [1u64, 2, 3, 300]
            .iter()
            .map(|n| n.to_be_bytes().to_vec())
            .collect();
        assert_eq!(keys, expected);
        let (last, _) = tree.last().unwrap().unwrap();
        assert_eq!(last, 300u64.to_be_bytes().to_vec());
        assert!(tree.remove(&300u64.to_be_bytes()).unwrap());
        assert!(!tree.remove(&300u64.to_be_bytes()).unwrap());
        assert_eq!(tree.get(&300u64.to_be_bytes()).unwrap(), None);
    }

    #[test]
    fn trees_are_separate_and_prefix_scans_stay_inside_the_prefix() {
        let (_dir, store) = open();
        let a = store.tree("a").unwrap();
        let b = store.tree("b").unwrap();
        a.insert(b"org1/x", b"1").unwrap();
        a.insert(b"org1/y", b"2").unwrap();
        a.insert(b"org2/x", b"3").unwrap();
        assert!(b.is_empty());
        let found: Vec<Vec<u8>> = a.scan_prefix(b"org1/").map(|e| e.unwrap().1).collect();
        assert_eq!(found, vec![b"1".to_vec(), b"2".to_vec()]);
    }

    #[test]
    fn json_round_trip_and_corrupt_value_names_only_the_key() {
        let (_dir, store) = open();
        let tree = store.tree("json").unwrap();
        tree.insert_json(b"k", &vec![1u32, 2]).unwrap();
        assert_eq!(tree.get_json::<Vec<u32>>(b"k").unwrap(), Some(vec![1, 2]));
        assert_eq!(tree.get_json::<Vec<u32>>(b"missing").unwrap(), None);

        tree.insert(b"bad", b"{not json secret-ish").unwrap();
        let err = tree.get_json::<Vec<u32>>(b"bad").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { tree: "json", .. }));
        assert!(message.contains("`bad`"));
        assert!(!message.contains("secret-ish"));
        assert!(tree.iter_json::<Vec<u32>>().any(|item| item.is_err()));
    }

    #[test]
    fn key_hints_are_terminal_safe() {
        assert_eq!(key_hint(b"0a1b2c3d"), "`0a1b2c3d`");
        assert_eq!(key_hint(&7u64.to_be_bytes()), "0x0000000000000007");
        let long = [b'\x1b'; 40];
        let hint = key_hint(&long);
        assert!(hint.starts_with("0x1b1b"));
        assert!(hint.ends_with("(40 bytes)"));
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_locked_out() {
        let (dir, _store) = open();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("admin socket"));
    }

    #[test]
    fn compare_and_swap_writes_only_over_the_expected_value() {
        let (_dir, store) = open();
        let tree = store.tree("cas").unwrap();
        assert_eq!(
            tree.compare_and_swap(b"k", None, Some(b"1")).unwrap(),
            Swap::Done
        );
        assert_eq!(
            tree.compare_and_swap(b"k", None, Some(b"2")).unwrap(),
            Swap::Conflict(Some(b"1".to_vec()))
        );
        assert_eq!(
            tree.compare_and_swap(b"k", Some(b"1"), Some(b"2")).unwrap(),
            Swap::Done
        );
        assert_eq!(
            tree.compare_and_swap(b"k", Some(b"1"), None).unwrap(),
            Swap::Conflict(Some(b"2".to_vec()))
        );
        assert_eq!(
            tree.compare_and_swap(b"k", Some(b"2"), None).unwrap(),
            Swap::Done
        );
        assert_eq!(
            tree.compare_and_swap(b"k", Some(b"2"), None).unwrap(),
            Swap::Conflict(None)
        );
    }

    #[test]
    fn iter_from_starts_at_the_given_key() {
        let (_dir, store) = open();
        let tree = store.tree("range").unwrap();
        for key in [b"a", b"b", b"c"] {
            tree.insert(key, b"").unwrap();
        }
        let keys: Vec<Vec<u8>> = tree.iter_from(b"b").map(|e| e.unwrap().0).collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
        let keys: Vec<Vec<u8>> = tree.iter_from(b"bb").map(|e| e.unwrap().0).collect();
        assert_eq!(keys, vec![b"c".to_vec()]);
    }

    #[test]
    fn flushed_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.tree("t").unwrap().insert(b"k", b"v").unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.tree("t").unwrap().get(b"k").unwrap(),
            Some(b"v".to_vec())
        );
    }
}
