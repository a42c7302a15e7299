//! The records themselves: a state machine over one store tree, moved only by atomic
//! compare-and-swap.
//!
//! ```text
//!   absent / expired / unreadable ──claim──▶ pending (lease) ──complete──▶ stored | too large
//!                                                 │  ▲
//!                                  release (5xx,  │  │ lease ran out: the next
//!                                  no answer)     ▼  │ request claims it again
//!                                               absent
//! ```
//!
//! Every transition is a compare-and-swap against the exact bytes last read or written, so of
//! any number of racing requests exactly one claims a key, and a request whose lease was
//! taken over can neither overwrite nor remove its successor's record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::fingerprint::{Fingerprint, RecordScope};
use super::record::{self, Header, Payload, RecordError, StoredResponse};
use super::seal::{SealError, SealKeys};
use crate::gate::ratelimit::LimitClock;
use crate::store::{Store, StoreError, Swap, Tree};

/// The tree holding the records.
pub const TREE: &str = "idempotency";

/// How often [`Cache::begin`] re-reads after losing a race before answering "in progress".
const MAX_ATTEMPTS: usize = 8;

/// Why the cache could not do its part; the request is refused rather than forwarded
/// without protection.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record could not be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The blocking task that writes to the store did not finish.
    #[error("the idempotency store task did not finish")]
    Task,
}

/// The settings one request runs under, taken from the policy when it arrives.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    /// How long a record counts after the first request.
    pub retention: Duration,
    /// How long a forwarded request may take before a retry may claim its key.
    pub lease: Duration,
}

/// What the cache decided for one request.
#[derive(Debug)]
pub enum Begin {
    /// This request holds the key now and is to be forwarded.
    Claimed(Claim),
    /// Another request with the same key and fingerprint is being processed.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
    /// The answer to replay.
    Replay(StoredResponse),
    /// The answer was too large to keep.
    NotReplayable,
}

/// Proof that this request holds a key: the record it wrote, which later transitions expect
/// to find unchanged.
#[derive(Debug)]
pub struct Claim {
    scope: RecordScope,
    header: Header,
    written: Vec<u8>,
    /// What the claim replaced, for the log.
    pub replaced: Replaced,
}

/// What was under a key when a request claimed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// Nothing: the key's first use.
    Nothing,
    /// A record past its retention.
    Expired,
    /// A record that failed to open (counted in [`Cache::open_failures`]).
    Unreadable,
    /// A pending record whose lease ended without an answer: its request crashed or was
    /// lost, so this retry is forwarded again.
    LeaseEnded,
}

/// The store-backed cache.
#[derive(Debug)]
pub struct Cache {
    store: Store,
    tree: Tree,
    keys: SealKeys,
    clock: LimitClock,
    open_failures: AtomicU64,
}

impl Cache {
    /// The cache over `store`, sealing with `keys`, telling time by `clock`.
    pub fn open(store: &Store, keys: SealKeys, clock: LimitClock) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.clone(),
            tree: store.tree(TREE)?,
            keys,
            clock,
            open_failures: AtomicU64::new(0),
        })
    }

    /// The keys records are sealed and addressed with.
    pub fn keys(&self) -> &SealKeys {
        &self.keys
    }

    /// The tree, for the sweep.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Unix milliseconds now, by the injected clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.since_epoch().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records that failed to open since start (wrong key file, tampering, corruption).
    pub fn open_failures(&self) -> u64 {
        self.open_failures.load(Ordering::Relaxed)
    }

    /// Decides what to do with a request for `scope` with `fingerprint`.
    pub fn begin(
        &self,
        scope: &RecordScope,
        fingerprint: &Fingerprint,
        terms: &Terms,
    ) -> Result<Begin, CacheError> {
        let mut current = self.tree.get(scope.as_bytes())?;
        for _ in 0..MAX_ATTEMPTS {
            let now = self.now_ms();
            let replaced = match &current {
                None => Replaced::Nothing,
                Some(bytes) => match self.read(scope, bytes, now) {
                    Found::Expired => Replaced::Expired,
                    Found::Unreadable => Replaced::Unreadable,
                    Found::Live(header, payload) => {
                        if !header.fingerprint.matches(fingerprint) {
                            return Ok(Begin::Mismatch);
                        }
                        match payload {
                            Payload::Stored(response) => return Ok(Begin::Replay(response)),
                            Payload::TooLarge { .. } => return Ok(Begin::NotReplayable),
                            Payload::Pending if header.lease_until_ms > now => {
                                return Ok(Begin::InProgress)
                            }
                            Payload::Pending => Replaced::LeaseEnded,
                        }
                    }
                },
            };
            let header = Header {
                created_ms: now,
                expires_ms: now.saturating_add(millis(terms.retention)),
                lease_until_ms: now.saturating_add(millis(terms.lease)),
                fingerprint: *fingerprint,
            };
            let written = record::encode(self.keys.sealer(), scope, &header, &Payload::Pending)?;
            match self.swap(scope, current.as_deref(), Some(&written))? {
                Swap::Done => {
                    return Ok(Begin::Claimed(Claim {
                        scope: scope.clone(),
                        header,
                        written,
                        replaced,
                    }))
                }
                Swap::Conflict(found) => current = found,
            }
        }
        Ok(Begin::InProgress)
    }

    /// Records the answer to a claimed request. Returns false when the claim was lost (its
    /// lease ran out and another request took the key), in which case nothing is written.
    pub fn complete(&self, claim: &Claim, payload: &Payload) -> Result<bool, CacheError> {
        let header = Header {
            lease_until_ms: 0,
            ..claim.header
        };
        let bytes = record::encode(self.keys.sealer(), &claim.scope, &header, payload)?;
        let swapped = self.swap(&claim.scope, Some(&claim.written), Some(&bytes))?;
        Ok(swapped == Swap::Done)
    }

    /// Removes a claimed record so the client's retry is forwarded. Returns false when the
    /// claim was lost.
    pub fn release(&self, claim: &Claim) -> Result<bool, CacheError> {
        let swapped = self.swap(&claim.scope, Some(&claim.written), None)?;
        Ok(swapped == Swap::Done)
    }

    /// Writes everything to disk; blocking.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }

    fn swap(
        &self,
        scope: &RecordScope,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Swap, StoreError> {
        self.tree.compare_and_swap(scope.as_bytes(), expected, new)
    }

    fn read(&self, scope: &RecordScope, bytes: &[u8], now: u64) -> Found {
        if record::expires_ms(bytes).is_some_and(|expires| expires <= now) {
            return Found::Expired;
        }
        match record::decode(self.keys.sealer(), scope, bytes) {
            Ok((header, payload)) => Found::Live(header, payload),
            Err(error) => {
                self.open_failures.fetch_add(1, Ordering::Relaxed);
                let reason = match error {
                    RecordError::Layout => "layout",
                    RecordError::Unauthentic => "authentication",
                    RecordError::Payload => "payload",
                };
                tracing::warn!(
                    reason,
                    "an idempotency record failed to open and is treated as absent"
                );
                Found::Unreadable
            }
        }
    }
}

/// A stored record as read.
enum Found {
    /// Past its retention: the key is free.
    Expired,
    /// Failed to open: the key is free.
    Unreadable,
    /// A record that counts.
    Live(Header, Payload),
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http::StatusCode;

    use super::super::fingerprint::DIGEST_LEN;
    use super::super::key;
    use super::*;
    use crate::gate::ratelimit::ManualClock;

    const TERMS: Terms = Terms {
        retention: Duration::from_secs(24 * 3600),
        lease: Duration::from_secs(30),
    };

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        cache: Cache,
        scope: RecordScope,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let clock = ManualClock::starting_at(1_900_000_000);
        let cache =
            Cache::open(&store, SealKeys::from_master(&[5; 32]), clock.limit_clock()).unwrap();
        let scope = cache
            .keys()
            .digester()
            .scope("org", "0a0a0a0a", &key::parse(b"k-1").unwrap());
        Fixture {
            _dir: dir,
            clock,
            cache,
            scope,
        }
    }

    fn fp(byte: u8) -> Fingerprint {
        Fingerprint::from_bytes([byte; DIGEST_LEN])
    }

    fn claimed(begin: Begin) -> Claim {
        match begin {
            Begin::Claimed(claim) => claim,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    fn answer() -> Payload {
        Payload::Stored(StoredResponse {
            status: StatusCode::CREATED,
            headers: Vec::new(),
            body: Bytes::from_static(b"done"),
        })
    }

    #[test]
    fn claim_then_in_progress_then_replay() {
        let f = fixture();
        let claim = claimed(f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap());
        assert_eq!(claim.replaced, Replaced::Nothing);
        assert!(matches!(
            f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap(),
            Begin::InProgress
        ));
        assert!(matches!(
            f.cache.begin(&f.scope, &fp(2), &TERMS).unwrap(),
            Begin::Mismatch
        ));
        assert!(f.cache.complete(&claim, &answer()).unwrap());
        match f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap() {
            Begin::Replay(response) => assert_eq!(&response.body[..], b"done"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            f.cache.begin(&f.scope, &fp(2), &TERMS).unwrap(),
            Begin::Mismatch
        ));
    }

    #[test]
    fn release_frees_the_key() {
        let f = fixture();
        let claim = claimed(f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap());
        assert!(f.cache.release(&claim).unwrap());
        assert!(f.cache.tree().is_empty());
        // A different request may now use the key.
        claimed(f.cache.begin(&f.scope, &fp(2), &TERMS).unwrap());
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_the_loser_cannot_write() {
        let f = fixture();
        let first = claimed(f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap());
        f.clock.advance(Duration::from_secs(29));
        assert!(matches!(
            f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap(),
            Begin::InProgress
        ));
        f.clock.advance(Duration::from_secs(1));
        let second = claimed(f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap());
        assert_eq!(second.replaced, Replaced::LeaseEnded);
        assert!(!f.cache.complete(&first, &answer()).unwrap());
        assert!(!f.cache.release(&first).unwrap());
        assert!(matches!(
            f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap(),
            Begin::InProgress
        ));
        assert!(f.cache.complete(&second, &answer()).unwrap());
    }

    #[test]
    fn expired_records_behave_as_new() {
        let f = fixture();
        let claim = claimed(f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap());
        f.cache.complete(&claim, &answer()).unwrap();
        f.clock.advance(TERMS.retention);
        let fresh = claimed(f.cache.begin(&f.scope, &fp(2), &TERMS).unwrap());
        assert_eq!(fresh.replaced, Replaced::Expired);
        assert_eq!(f.cache.open_failures(), 0);
    }

    #[test]
    fn unreadable_records_are_absent_and_counted() {
        let f = fixture();
        let claim = claimed(f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap());
        f.cache.complete(&claim, &answer()).unwrap();
        let mut bytes = f.cache.tree().get(f.scope.as_bytes()).unwrap().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        f.cache.tree().insert(f.scope.as_bytes(), &bytes).unwrap();
        let claim = claimed(f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap());
        assert_eq!(claim.replaced, Replaced::Unreadable);
        assert_eq!(f.cache.open_failures(), 1);
    }

    #[test]
    fn too_large_answers_are_not_replayable() {
        let f = fixture();
        let claim = claimed(f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap());
        let payload = Payload::TooLarge {
            status: StatusCode::OK,
        };
        f.cache.complete(&claim, &payload).unwrap();
        assert!(matches!(
            f.cache.begin(&f.scope, &fp(1), &TERMS).unwrap(),
            Begin::NotReplayable
        ));
    }

    #[test]
    fn racing_claims_have_one_winner() {
        let f = fixture();
        let cache = Arc::new(f.cache);
        let scope = f.scope.clone();
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let cache = cache.clone();
                let scope = scope.clone();
                std::thread::spawn(move || {
                    matches!(
                        cache.begin(&scope, &fp(1), &TERMS).unwrap(),
                        Begin::Claimed(_)
                    )
                })
            })
            .collect();
        let winners = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(winners, 1);
    }
}
