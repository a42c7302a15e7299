//! The in-memory index of every key, written through to the `keys` tree.
//!
//! Requests are answered from memory only: the map from id to record sits behind a
//! read-mostly lock, and each record behind its own atomically swapped pointer, so a
//! verification takes one uncontended read lock and no disk access. Changes (admin actions and
//! the once-a-minute `last_used_at` write) are serialized by one writer mutex, written to the
//! store first and published in memory only once stored, so memory never claims more than disk.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use super::error::KeyError;
use super::format::{format_key, parse_key, Env, KeyId, Namespace, ID_LEN, SECRET_LEN};
use super::pepper::{KeyHasher, Pepper};
use super::record::{KeyChanges, KeyRecord, KeyStatus, MintRequest, PreviousSecret, RevokeReason};
use super::secret::Secret;
use crate::store::{Store, StoreError, Tree};

/// The tree holding one JSON [`KeyRecord`] per key, under the id's 8-character text.
pub const KEYS_TREE: &str = "keys";

/// `last_used_at` is persisted at most this often per key.
pub const LAST_USED_RESOLUTION_SECS: u64 = 60;

/// Attempts at drawing an unused random id before giving up.
const ID_ATTEMPTS: usize = 32;

/// A key just minted or rotated: the only place its full text ever exists.
///
/// Show `key` to the administrator once and drop it. `Debug` redacts it.
#[derive(Debug)]
pub struct MintedKey {
    /// The full key text (`<namespace>_<env>_<id>_<secret>`).
    pub key: Secret,
    /// The stored record.
    pub record: Arc<KeyRecord>,
}

/// One key in the index.
pub(super) struct Slot {
    /// The current record; replaced whole on every change.
    pub(super) record: ArcSwap<KeyRecord>,
    /// The `last_used_at` most recently written (or being written) to the store, 0 if never.
    persisted_use: AtomicU64,
}

impl Slot {
    fn new(record: KeyRecord) -> Self {
        Self {
            persisted_use: AtomicU64::new(record.last_used_at.unwrap_or(0)),
            record: ArcSwap::from_pointee(record),
        }
    }
}

/// The record behind [`KeyRegistry::placeholder`]: active, unexpiring, all-zero hash.
fn placeholder_record(namespace: &Namespace) -> KeyRecord {
    KeyRecord {
        id: KeyId::from_u32(0),
        org: String::new(),
        env: Env::Test,
        scopes: BTreeSet::new(),
        label: None,
        created_at: 0,
        expires_at: None,
        status: KeyStatus::Active,
        last_used_at: None,
        allow_cidrs: Vec::new(),
        hash: [0u8; 32],
        previous: None,
        rate: None,
        namespace: namespace.as_str().to_owned(),
    }
}

/// Every API key of the deployment, in memory, backed by the store.
///
/// Share it as `Arc<KeyRegistry>`. All methods take `&self`; reads never block on each other.
/// Methods that write to the store are synchronous and, for admin actions, flush to disk:
/// call them from blocking contexts (`spawn_blocking`) in async code.
pub struct KeyRegistry {
    pub(super) namespace: Namespace,
    pub(super) hasher: KeyHasher,
    store: Store,
    tree: Tree,
    index: RwLock<HashMap<KeyId, Arc<Slot>>>,
    /// Stands in for a missing key during verification, so an unknown id costs the same
    /// pointer loads as a known one. Its hash is all zeros; a match on it is discarded.
    pub(super) placeholder: Arc<Slot>,
    writer: Mutex<()>,
}

impl std::fmt::Debug for KeyRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRegistry")
            .field("namespace", &self.namespace)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl KeyRegistry {
    /// Loads every stored key into memory.
    ///
    /// `namespace` is this deployment's key namespace; keys stored under another namespace
    /// (after a configuration change) are loaded and listed but never verify, and a warning
    /// counts them.
    pub fn load(store: &Store, pepper: Pepper, namespace: &str) -> Result<Self, KeyError> {
        let namespace = Namespace::new(namespace).map_err(KeyError::Namespace)?;
        let tree = store.tree(KEYS_TREE)?;
        let mut index = HashMap::new();
        let mut foreign = 0usize;
        for item in tree.iter_json::<KeyRecord>() {
            let (stored_under, record) = item?;
            if stored_under.as_slice() != record.id.storage_key().as_slice() {
                return Err(StoreError::corrupt(KEYS_TREE, &stored_under).into());
            }
            if record.namespace != namespace.as_str() {
                foreign += 1;
            }
            index.insert(record.id, Arc::new(Slot::new(record)));
        }
        if foreign > 0 {
            tracing::warn!(
                keys = foreign,
                namespace = namespace.as_str(),
                "stored API keys minted under another namespace will not verify"
            );
        }
        tracing::debug!(keys = index.len(), "API keys loaded");
        let placeholder = Arc::new(Slot::new(placeholder_record(&namespace)));
        Ok(Self {
            namespace,
            hasher: pepper.hasher(),
            store: store.clone(),
            tree,
            index: RwLock::new(index),
            placeholder,
            writer: Mutex::new(()),
        })
    }

    /// This deployment's key namespace.
    pub fn namespace(&self) -> &str {
        self.namespace.as_str()
    }

    /// The number of keys (any status).
    pub fn len(&self) -> usize {
        self.read_index().len()
    }

    /// Whether there are no keys at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mints a key: a fresh unique id and secret, stored (hash only) and flushed.
    ///
    /// The full key exists only in the returned value. If the final flush fails the key is
    /// stored but not yet durable and its text is never returned, so nobody can use it.
    pub fn mint(&self, request: MintRequest, now: u64) -> Result<MintedKey, KeyError> {
        let allow_cidrs = request.validate(now)?;
        let minted = {
            let _writer = self.lock_writer();
            self.mint_locked(request, allow_cidrs, now)?
        };
        self.store.flush()?;
        Ok(minted)
    }

    /// Mints several keys with a single flush at the end.
    ///
    /// Bulk provisioning (moving a legacy key table behind Portcullis, load tests) would
    /// otherwise pay one disk sync per key. Every request is validated before any key is
    /// minted, so a bad request leaves nothing behind.
    pub fn mint_batch(
        &self,
        requests: Vec<MintRequest>,
        now: u64,
    ) -> Result<Vec<MintedKey>, KeyError> {
        let validated = requests
            .into_iter()
            .map(|request| request.validate(now).map(|cidrs| (request, cidrs)))
            .collect::<Result<Vec<_>, _>>()?;
        let minted = {
            let _writer = self.lock_writer();
            validated
                .into_iter()
                .map(|(request, allow_cidrs)| self.mint_locked(request, allow_cidrs, now))
                .collect::<Result<Vec<_>, _>>()?
        };
        self.store.flush()?;
        Ok(minted)
    }

    /// Creates, stores and indexes one validated key. Call with the writer lock held.
    fn mint_locked(
        &self,
        request: MintRequest,
        allow_cidrs: Vec<IpNet>,
        now: u64,
    ) -> Result<MintedKey, KeyError> {
        let id = self.unused_id()?;
        let secret = Secret::generate()?;
        let record = KeyRecord {
            id,
            org: request.org,
            env: request.env,
            scopes: request.scopes,
            label: request.label,
            created_at: now,
            expires_at: request.expires_at,
            status: KeyStatus::Active,
            last_used_at: None,
            allow_cidrs,
            hash: self.hasher.hash(secret.expose_secret().as_bytes()),
            previous: None,
            rate: request.rate,
            namespace: self.namespace.as_str().to_owned(),
        };
        self.tree.insert_json(&id.storage_key(), &record)?;
        let slot = Arc::new(Slot::new(record));
        let record = slot.record.load_full();
        self.write_index().insert(id, slot);
        let key = format_key(self.namespace.as_str(), record.env, id, &secret);
        Ok(MintedKey { key, record })
    }

    /// Gives key `id` a new secret. The old secret keeps working until `now + grace` (never,
    /// if `grace` is zero); a second rotation inside the grace period ends the first old
    /// secret at once. Revoked keys cannot be rotated.
    pub fn rotate(&self, id: KeyId, grace: Duration, now: u64) -> Result<MintedKey, KeyError> {
        let grace_secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let minted = {
            let _writer = self.lock_writer();
            let slot = self.slot(id).ok_or(KeyError::NotFound(id))?;
            let current = slot.record.load_full();
            if current.is_revoked() {
                return Err(KeyError::Revoked(id));
            }
            let secret = Secret::generate()?;
            let mut next = KeyRecord::clone(&current);
            next.hash = self.hasher.hash(secret.expose_secret().as_bytes());
            next.previous = (grace_secs > 0).then(|| PreviousSecret {
                hash: current.hash,
                valid_until: now.saturating_add(grace_secs),
            });
            let record = self.publish(&slot, next)?;
            let key = format_key(&record.namespace, record.env, id, &secret);
            MintedKey { key, record }
        };
        self.store.flush()?;
        Ok(minted)
    }

    /// Revokes key `id` now and for good. Revoking a revoked key is
    /// [`KeyError::AlreadyRevoked`], so the first revocation's time and reason stay on record.
    pub fn revoke(
        &self,
        id: KeyId,
        reason: RevokeReason,
        now: u64,
    ) -> Result<Arc<KeyRecord>, KeyError> {
        let record = {
            let _writer = self.lock_writer();
            let slot = self.slot(id).ok_or(KeyError::NotFound(id))?;
            let current = slot.record.load_full();
            if current.is_revoked() {
                return Err(KeyError::AlreadyRevoked(id));
            }
            let mut next = KeyRecord::clone(&current);
            next.status = KeyStatus::Revoked { at: now, reason };
            self.publish(&slot, next)?
        };
        self.store.flush()?;
        Ok(record)
    }

    /// Changes scopes, label, expiry, allowlist or rate override of an active key; takes
    /// effect on the next request.
    pub fn update(
        &self,
        id: KeyId,
        changes: &KeyChanges,
        now: u64,
    ) -> Result<Arc<KeyRecord>, KeyError> {
        let record = {
            let _writer = self.lock_writer();
            let slot = self.slot(id).ok_or(KeyError::NotFound(id))?;
            let current = slot.record.load_full();
            if current.is_revoked() {
                return Err(KeyError::Revoked(id));
            }
            let next = changes.apply(&current, now)?;
            self.publish(&slot, next)?
        };
        self.store.flush()?;
        Ok(record)
    }

    /// The record of key `id`.
    pub fn get(&self, id: KeyId) -> Option<Arc<KeyRecord>> {
        self.slot(id).map(|slot| slot.record.load_full())
    }

    /// Every key, or only `org`'s, sorted by organization, creation time and id.
    pub fn list(&self, org: Option<&str>) -> Vec<Arc<KeyRecord>> {
        let mut records: Vec<Arc<KeyRecord>> = self
            .read_index()
            .values()
            .map(|slot| slot.record.load_full())
            .filter(|record| org.is_none_or(|org| record.org == org))
            .collect();
        records.sort_by(|a, b| (&a.org, a.created_at, a.id).cmp(&(&b.org, b.created_at, b.id)));
        records
    }

    /// Notes that key `id` was just used.
    ///
    /// Cheap on the request path: an atomic check decides whether this key's `last_used_at`
    /// moved by at least a minute since it was last written; only then is the record
    /// rewritten (memory and store, without a flush). Concurrent callers for the same key do
    /// at most one write between them. A failed write is returned for the caller to log; the
    /// next use retries it.
    pub fn touch(&self, id: KeyId, now: u64) -> Result<(), KeyError> {
        let Some(slot) = self.slot(id) else {
            return Ok(());
        };
        let persisted = slot.persisted_use.load(Ordering::Acquire);
        if now < persisted.saturating_add(LAST_USED_RESOLUTION_SECS) {
            return Ok(());
        }
        if slot
            .persisted_use
            .compare_exchange(persisted, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another request is writing this key's use right now.
            return Ok(());
        }
        let _writer = self.lock_writer();
        let current = slot.record.load_full();
        if current.last_used_at.is_some_and(|at| at >= now) {
            return Ok(());
        }
        let mut next = KeyRecord::clone(&current);
        next.last_used_at = Some(now);
        if let Err(err) = self.publish(&slot, next) {
            // Let a later use try again.
            let _ = slot.persisted_use.compare_exchange(
                now,
                persisted,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return Err(err.into());
        }
        Ok(())
    }

    /// Whether `text` is shaped like a key of this deployment (either env), whether or not
    /// such a key exists. Used to refuse keys pasted into URLs.
    pub fn looks_like_key(&self, text: &str) -> bool {
        parse_key(text).is_ok_and(|parsed| parsed.namespace() == self.namespace.as_str())
    }

    /// Whether a key of this deployment's shape appears anywhere inside `text` (a query
    /// value like `token%3D...` decoded to `token=pcl_live_...`, or a key glued to other
    /// characters).
    pub fn contains_key(&self, text: &str) -> bool {
        let len = self.namespace.as_str().len() + "_test_".len() + ID_LEN + 1 + SECRET_LEN;
        text.match_indices(self.namespace.as_str()).any(|(at, _)| {
            text.get(at..at + len)
                .is_some_and(|c| self.looks_like_key(c))
        })
    }

    /// The slot of key `id`, if it exists.
    pub(super) fn slot(&self, id: KeyId) -> Option<Arc<Slot>> {
        self.read_index().get(&id).cloned()
    }

    /// Stores `next` and then makes it the current record. Call with the writer lock held.
    fn publish(&self, slot: &Slot, next: KeyRecord) -> Result<Arc<KeyRecord>, StoreError> {
        self.tree.insert_json(&next.id.storage_key(), &next)?;
        let next = Arc::new(next);
        slot.record.store(Arc::clone(&next));
        Ok(next)
    }

    /// A random id no key has. Call with the writer lock held.
    fn unused_id(&self) -> Result<KeyId, KeyError> {
        for _ in 0..ID_ATTEMPTS {
            let id = KeyId::random()?;
            if !self.read_index().contains_key(&id) {
                return Ok(id);
            }
        }
        Err(KeyError::IdSpaceExhausted)
    }

    // The index only ever gains entries and each insert is a single call, so a panic elsewhere
    // cannot leave it half-updated: a poisoned lock is safe to keep using.
    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, HashMap<KeyId, Arc<Slot>>> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<KeyId, Arc<Slot>>> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
