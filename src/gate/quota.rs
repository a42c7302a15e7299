//! Daily quotas: how many admitted requests a key may make per UTC day, key-wide or per route
//! class, counted so that a restart does not hand out a fresh day.
//!
//! Deciding is in memory and lock-free: each (key, class) counter packs the UTC day and the
//! count into one atomic word, and a request is admitted by one compare-and-swap that checks
//! the limit, rolls the day over at midnight and increments together. Concurrent requests can
//! therefore never take more than the quota.
//!
//! Persistence: every counted request writes its counter to the `quotas` tree before the
//! request goes on (a sled insert, no fsync). sled writes its log to disk every 500 ms and the
//! listener flushes on shutdown, so a clean restart loses nothing, and a crash or power loss
//! forgets at most the requests counted in the last half second before it (the quota can be
//! exceeded by that many after such a crash). Rows are keyed by day
//! (`<day>/<key id>/<class>`), so the next day starts from zero without any write, and rows of
//! past days are deleted by housekeeping.
//!
//! A counter that cannot be read or written is logged and the request is decided from
//! memory: a storage fault weakens the restart guarantee, it does not lock partners out.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::keys::KeyId;
use crate::store::{Store, StoreError, Tree};

/// The tree holding one JSON count per (day, key, class).
pub const QUOTAS_TREE: &str = "quotas";

/// Seconds in a UTC day (unix time has no leap seconds).
const SECONDS_PER_DAY: u64 = 86_400;

/// Stands for "every route" in a stored row; never a valid class name.
const KEY_WIDE: &str = "*";

/// The UTC day number (days since 1970-01-01) of a wall-clock time.
pub fn day_of(since_epoch: Duration) -> u32 {
    u32::try_from(since_epoch.as_secs() / SECONDS_PER_DAY).unwrap_or(u32::MAX)
}

/// Time from `since_epoch` until the next UTC midnight, when quotas reset.
pub fn until_midnight(since_epoch: Duration) -> Duration {
    let next = Duration::from_secs((since_epoch.as_secs() / SECONDS_PER_DAY + 1) * SECONDS_PER_DAY);
    next.saturating_sub(since_epoch)
}

/// Which budget a counter belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuotaScope {
    /// The key spending it.
    pub key: KeyId,
    /// The route class, or `None` for the key-wide quota.
    pub class: Option<Arc<str>>,
}

impl QuotaScope {
    fn storage_key(&self, day: u32) -> String {
        let class = self.class.as_deref().unwrap_or(KEY_WIDE);
        format!("{day:08}/{}/{class}", self.key)
    }
}

/// One budget's day and count, packed so both change in one atomic step.
fn pack(day: u32, count: u32) -> u64 {
    (u64::from(day) << 32) | u64::from(count)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// The count that applies on `today` to a counter holding `word`.
fn count_on(word: u64, today: u32) -> u32 {
    match unpack(word) {
        // A past day is over: zero. A future day means the wall clock stepped back; keep
        // counting on the later day rather than handing out a second budget.
        (day, _) if day < today => 0,
        (_, count) => count,
    }
}

struct Counter {
    word: AtomicU64,
    /// The word last written to the store; the mutex also orders writes of one counter.
    persisted: Mutex<u64>,
    /// Used since the last housekeeping pass.
    touched: AtomicBool,
}

impl Counter {
    fn new(word: u64) -> Self {
        Self {
            word: AtomicU64::new(word),
            persisted: Mutex::new(word),
            touched: AtomicBool::new(true),
        }
    }

    fn is_persisted(&self) -> bool {
        *self
            .persisted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            == self.word.load(Ordering::Acquire)
    }
}

/// Every daily counter in use, backed by the `quotas` tree.
pub struct Quotas {
    tree: Tree,
    counters: RwLock<HashMap<QuotaScope, Arc<Counter>>>,
}

impl fmt::Debug for Quotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quotas")
            .field("in_memory", &self.in_memory())
            .finish_non_exhaustive()
    }
}

impl Quotas {
    /// Opens the `quotas` tree; counters are read lazily, on first use.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            tree: store.tree(QUOTAS_TREE)?,
            counters: RwLock::new(HashMap::new()),
        })
    }

    /// Requests counted against `scope` on day `today`.
    pub fn used(&self, scope: &QuotaScope, today: u32) -> u32 {
        count_on(
            self.counter(scope, today).word.load(Ordering::Acquire),
            today,
        )
    }

    /// Counts one request against `scope` if fewer than `limit` were counted on `today`;
    /// returns whether it was counted. The count is in the store when this returns.
    pub fn take(&self, scope: &QuotaScope, limit: u32, today: u32) -> bool {
        let counter = self.counter(scope, today);
        let taken = counter
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let count = count_on(word, today);
                let day = unpack(word).0.max(today);
                (count < limit).then(|| pack(day, count + 1))
            })
            .is_ok();
        if taken {
            self.persist(scope, &counter);
        }
        taken
    }

    /// Gives back one request counted on `today` by [`Quotas::take`], when a later check
    /// refused the request after all.
    pub fn give_back(&self, scope: &QuotaScope, today: u32) {
        let counter = self.counter(scope, today);
        let returned = counter
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (day, count) = unpack(word);
                (day == today && count > 0).then(|| pack(day, count - 1))
            })
            .is_ok();
        if returned {
            self.persist(scope, &counter);
        }
    }

    /// The counter for `scope`, read from the store on first use.
    ///
    /// Callers hold the returned `Arc` only for the duration of one decision; housekeeping
    /// relies on that to tell idle counters from busy ones.
    fn counter(&self, scope: &QuotaScope, today: u32) -> Arc<Counter> {
        {
            let counters = self.counters.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(counter) = counters.get(scope) {
                counter.touched.store(true, Ordering::Relaxed);
                return counter.clone();
            }
        }
        // Read the store under the write lock: a counter dropped by housekeeping meanwhile
        // must be read back with its last count, never from an older read.
        let mut counters = self
            .counters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        counters
            .entry(scope.clone())
            .or_insert_with(|| Arc::new(Counter::new(pack(today, self.stored(scope, today)))))
            .clone()
    }

    fn stored(&self, scope: &QuotaScope, day: u32) -> u32 {
        match self.tree.get_json::<u32>(scope.storage_key(day).as_bytes()) {
            Ok(count) => count.unwrap_or(0),
            Err(error) => {
                tracing::error!(
                    %error,
                    key_id = %scope.key,
                    "cannot read a daily quota counter; counting from zero"
                );
                0
            }
        }
    }

    /// Writes the counter's current value unless it is already stored.
    ///
    /// Writers of one counter take turns, and each writes the value current when it gets its
    /// turn, so the stored count ends equal to the counter whatever order requests finish in.
    fn persist(&self, scope: &QuotaScope, counter: &Counter) {
        let mut persisted = counter
            .persisted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let word = counter.word.load(Ordering::Acquire);
        if word == *persisted {
            return;
        }
        let (day, count) = unpack(word);
        match self
            .tree
            .insert_json(scope.storage_key(day).as_bytes(), &count)
        {
            Ok(()) => *persisted = word,
            Err(error) => {
                tracing::error!(%error, key_id = %scope.key, "cannot store a daily quota counter");
            }
        }
    }

    /// Forgets counters unused since the previous pass; they are in the store and are read
    /// back on next use. Counters a request holds, or whose last write failed, stay.
    pub fn shed_idle(&self) {
        let mut counters = self
            .counters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        counters.retain(|_, counter| {
            Arc::strong_count(counter) > 1
                || counter.touched.swap(false, Ordering::Relaxed)
                || !counter.is_persisted()
        });
        counters.shrink_to_fit();
    }

    /// Deletes stored rows of days before `today`; returns how many. Walks the tree: run it
    /// off the async runtime.
    pub fn prune(&self, today: u32) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in self.tree.iter() {
            let (key, _) = entry?;
            let day = key
                .get(..8)
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .and_then(|digits| digits.parse::<u32>().ok());
            if day.is_some_and(|day| day < today) && self.tree.remove(&key)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Counters currently held in memory.
    pub fn in_memory(&self) -> usize {
        self.counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(class: Option<&str>) -> QuotaScope {
        QuotaScope {
            key: "0a1b2c3d".parse().unwrap(),
            class: class.map(Arc::from),
        }
    }

    fn open() -> (tempfile::TempDir, Store, Quotas) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let quotas = Quotas::open(&store).unwrap();
        (dir, store, quotas)
    }

    #[test]
    fn days_and_midnight() {
        let noon = Duration::from_secs(20_000 * SECONDS_PER_DAY + 43_200);
        assert_eq!(day_of(noon), 20_000);
        assert_eq!(until_midnight(noon), Duration::from_secs(43_200));
        let just_before = Duration::from_secs(20_001 * SECONDS_PER_DAY) - Duration::from_millis(1);
        assert_eq!(day_of(just_before), 20_000);
        assert_eq!(until_midnight(just_before), Duration::from_millis(1));
        assert_eq!(
            until_midnight(Duration::from_secs(20_001 * SECONDS_PER_DAY)),
            Duration::from_secs(SECONDS_PER_DAY)
        );
    }

    #[test]
    fn a_quota_admits_exactly_its_limit_per_scope_and_day() {
        let (_dir, _store, quotas) = open();
        let (class, wide) = (scope(Some("writes")), scope(None));
        assert_eq!((0..5).filter(|_| quotas.take(&class, 3, 10)).count(), 3);
        assert_eq!(quotas.used(&class, 10), 3);
        assert_eq!(quotas.used(&wide, 10), 0);
        assert!(quotas.take(&wide, 1, 10));
        // The next day starts from zero.
        assert_eq!(quotas.used(&class, 11), 0);
        assert!(quotas.take(&class, 3, 11));
        assert_eq!(quotas.used(&class, 11), 1);
    }

    #[test]
    fn a_backwards_clock_does_not_open_a_second_budget() {
        let (_dir, _store, quotas) = open();
        let class = scope(Some("writes"));
        assert!(quotas.take(&class, 1, 11));
        assert!(!quotas.take(&class, 1, 10));
        assert_eq!(quotas.used(&class, 10), 1);
    }

    #[test]
    fn giving_back_undoes_one_take() {
        let (_dir, _store, quotas) = open();
        let class = scope(Some("writes"));
        assert!(quotas.take(&class, 1, 10));
        quotas.give_back(&class, 10);
        assert!(quotas.take(&class, 1, 10));
        quotas.give_back(&class, 9);
        assert_eq!(
            quotas.used(&class, 10),
            1,
            "a give-back for another day is ignored"
        );
    }

    #[test]
    fn counts_survive_reopening_and_idle_counters_are_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let class = scope(Some("writes"));
        {
            let store = Store::open(dir.path()).unwrap();
            let quotas = Quotas::open(&store).unwrap();
            assert!(quotas.take(&class, 5, 10));
            assert!(quotas.take(&class, 5, 10));
            quotas.shed_idle();
            assert_eq!(quotas.in_memory(), 1, "used since the last pass");
            quotas.shed_idle();
            assert_eq!(quotas.in_memory(), 0);
            assert_eq!(quotas.used(&class, 10), 2, "read back from the store");
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let quotas = Quotas::open(&store).unwrap();
        assert_eq!(quotas.used(&class, 10), 2);
        assert_eq!(quotas.used(&class, 11), 0);
    }

    #[test]
    fn past_days_are_pruned() {
        let (_dir, store, quotas) = open();
        let class = scope(Some("writes"));
        assert!(quotas.take(&class, 5, 9));
        assert!(quotas.take(&class, 5, 10));
        assert_eq!(quotas.prune(10).unwrap(), 1);
        let tree = store.tree(QUOTAS_TREE).unwrap();
        let keys: Vec<_> = tree.iter().map(|e| e.unwrap().0).collect();
        assert_eq!(keys, [b"00000010/0a1b2c3d/writes".to_vec()]);
    }

    #[test]
    fn concurrent_takes_never_exceed_the_limit() {
        let (_dir, _store, quotas) = open();
        let quotas = Arc::new(quotas);
        let class = scope(Some("writes"));
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let quotas = &quotas;
                    let class = &class;
                    s.spawn(move || (0..50).filter(|_| quotas.take(class, 100, 10)).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 100);
        assert_eq!(quotas.used(&class, 10), 100);
        let stored: u32 = quotas
            .tree
            .get_json(class.storage_key(10).as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(stored, 100, "the store ends equal to the counter");
    }
}
