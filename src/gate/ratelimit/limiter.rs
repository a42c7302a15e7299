//! Keyed token buckets on governor: one [`Limiter`] per limit shape, many keys in each.
//!
//! This is the machinery shared by the per-key request limits and the failed-authentication
//! throttle. A [`Limiter`] answers "may this key spend one unit now?" with the numbers a
//! client is told ([`Outcome`]): what is left, when to retry, when the bucket is full again.
//! Decisions are governor's GCRA with a compare-and-swap per key, so concurrent callers can
//! never spend more than the bucket holds.
//!
//! A [`LimiterSet`] keeps one limiter per [`Rate`]. Keying buckets by shape is what lets limits
//! change on reload without touching anyone else: a key whose limit is unchanged keeps
//! meeting the same limiter and keeps its remaining capacity, while a key whose limit changed
//! starts a fresh bucket in the limiter of its new shape.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// A sustained rate per minute with a burst allowance: the shape of a request limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    per_minute: NonZeroU32,
    burst: NonZeroU32,
}

/// A `NonZeroU32` from a literal, for constants.
const fn nonzero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

impl Rate {
    /// The per-key limit when the policy names none: 600 requests a minute, 50 at once.
    pub const DEFAULT: Rate = Rate {
        per_minute: nonzero(600),
        burst: nonzero(50),
    };

    /// `per_minute` requests a minute, refilling smoothly, at most `burst` at once; `None` if
    /// either is zero.
    pub fn new(per_minute: u32, burst: u32) -> Option<Self> {
        Some(Self {
            per_minute: NonZeroU32::new(per_minute)?,
            burst: NonZeroU32::new(burst)?,
        })
    }

    /// Sustained requests per minute (what `X-RateLimit-Limit` shows).
    pub fn per_minute(self) -> u32 {
        self.per_minute.get()
    }

    /// Most requests allowed back to back.
    pub fn burst(self) -> u32 {
        self.burst.get()
    }

    /// The governor quota: one unit back every `60 s / per_minute`, `burst` units deep.
    pub fn quota(self) -> Quota {
        Quota::per_minute(self.per_minute).allow_burst(self.burst)
    }
}

/// The answer to one spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The unit was spent.
    Admitted {
        /// Units that could still be spent right now, after this one.
        remaining: u32,
        /// Time until the bucket is full again; an upper bound within one refill interval,
        /// so a client waiting this long is never early.
        full_in: Duration,
    },
    /// Nothing was spent: the bucket is empty.
    Refused {
        /// Time until one unit is back (exact).
        retry_in: Duration,
        /// Time until the bucket is full again.
        full_in: Duration,
    },
}

impl Outcome {
    /// Whether the unit was spent.
    pub fn is_admitted(&self) -> bool {
        matches!(self, Self::Admitted { .. })
    }

    /// Units left after the decision (zero when refused).
    pub fn remaining(&self) -> u32 {
        match self {
            Self::Admitted { remaining, .. } => *remaining,
            Self::Refused { .. } => 0,
        }
    }

    /// Time until the bucket is full again.
    pub fn full_in(&self) -> Duration {
        match self {
            Self::Admitted { full_in, .. } | Self::Refused { full_in, .. } => *full_in,
        }
    }
}

type Governor<K, C> = RateLimiter<K, DefaultKeyedStateStore<K>, C, StateInformationMiddleware>;

/// One bucket per key, all of the same shape, on an injectable clock.
pub struct Limiter<K: Hash + Eq + Clone, C: Clock> {
    inner: Governor<K, C>,
    refill: Duration,
    burst: u32,
}

impl<K: Hash + Eq + Clone, C: Clock> fmt::Debug for Limiter<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("refill", &self.refill)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, C: Clock> Limiter<K, C> {
    /// An empty limiter: every key starts with a full bucket.
    pub fn new(quota: Quota, clock: C) -> Self {
        Self {
            inner: Governor::new(quota, DefaultKeyedStateStore::default(), clock),
            refill: quota.replenish_interval(),
            burst: quota.burst_size().get(),
        }
    }

    /// The clock's current reading.
    pub fn now(&self) -> C::Instant {
        self.inner.clock().now()
    }

    /// How long one spent unit takes to come back.
    pub fn refill(&self) -> Duration {
        self.refill
    }

    /// Spends one unit of `key`'s bucket if it has one.
    pub fn check(&self, key: &K) -> Outcome {
        match self.inner.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Outcome::Admitted {
                    remaining,
                    full_in: self.refill_time(self.burst.saturating_sub(remaining)),
                }
            }
            Err(not_until) => {
                let retry_in = not_until.wait_time_from(self.now());
                Outcome::Refused {
                    retry_in,
                    full_in: retry_in + self.refill_time(self.burst.saturating_sub(1)),
                }
            }
        }
    }

    fn refill_time(&self, units: u32) -> Duration {
        self.refill.saturating_mul(units)
    }

    /// Forgets keys whose bucket is full again (they are indistinguishable from new keys), so
    /// memory follows active keys, not every key ever seen.
    pub fn shed(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// One [`Limiter`] per [`Rate`] in use, created on first use and dropped once idle.
pub struct LimiterSet<K: Hash + Eq + Clone, C: Clock + Clone> {
    clock: C,
    limiters: RwLock<HashMap<Rate, Limiter<K, C>>>,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> fmt::Debug for LimiterSet<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimiterSet")
            .field("shapes", &self.shapes())
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> LimiterSet<K, C> {
    /// An empty set on `clock`.
    pub fn new(clock: C) -> Self {
        Self {
            clock,
            limiters: RwLock::new(HashMap::new()),
        }
    }

    /// Spends one unit of `key`'s bucket under `rate`.
    ///
    /// The check runs under the set's read lock, so [`LimiterSet::shed`] can never drop a
    /// limiter between a lookup and a spend (which would forget that spend).
    pub fn check(&self, rate: Rate, key: &K) -> Outcome {
        {
            let limiters = self.limiters.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(limiter) = limiters.get(&rate) {
                return limiter.check(key);
            }
        }
        let mut limiters = self
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        limiters
            .entry(rate)
            .or_insert_with(|| Limiter::new(rate.quota(), self.clock.clone()))
            .check(key)
    }

    /// Sheds full buckets in every limiter and drops limiters left with no key, e.g. those of
    /// a limit that a reload removed.
    pub fn shed(&self) {
        {
            let limiters = self.limiters.read().unwrap_or_else(PoisonError::into_inner);
            for limiter in limiters.values() {
                limiter.shed();
            }
        }
        let mut limiters = self
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        limiters.retain(|_, limiter| !limiter.is_empty());
        limiters.shrink_to_fit();
    }

    /// Number of distinct limit shapes with a live limiter.
    pub fn shapes(&self) -> usize {
        self.limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Buckets remembered across all shapes.
    pub fn buckets(&self) -> usize {
        self.limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(Limiter::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn rate(per_minute: u32, burst: u32) -> Rate {
        Rate::new(per_minute, burst).unwrap()
    }

    #[test]
    fn zero_rates_are_not_rates() {
        assert!(Rate::new(0, 1).is_none());
        assert!(Rate::new(1, 0).is_none());
        let r = rate(600, 50);
        assert_eq!((r.per_minute(), r.burst()), (600, 50));
        assert_eq!(r.quota().replenish_interval(), Duration::from_millis(100));
        assert_eq!(r.quota().burst_size().get(), 50);
    }

    #[test]
    fn a_burst_is_admitted_exactly_then_refused_with_exact_waits() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::<u32, _>::new(rate(60, 3).quota(), clock.clone());
        let outcomes: Vec<_> = (0..4).map(|_| limiter.check(&7)).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Admitted {
                    remaining: 2,
                    full_in: Duration::from_secs(1)
                },
                Outcome::Admitted {
                    remaining: 1,
                    full_in: Duration::from_secs(2)
                },
                Outcome::Admitted {
                    remaining: 0,
                    full_in: Duration::from_secs(3)
                },
                Outcome::Refused {
                    retry_in: Duration::from_secs(1),
                    full_in: Duration::from_secs(3)
                },
            ]
        );
        clock.advance(Duration::from_millis(400));
        assert_eq!(
            limiter.check(&7),
            Outcome::Refused {
                retry_in: Duration::from_millis(600),
                full_in: Duration::from_millis(2_600)
            }
        );
        clock.advance(Duration::from_millis(600));
        assert!(limiter.check(&7).is_admitted());
    }

    #[test]
    fn full_in_is_never_early() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::<u32, _>::new(rate(60, 5).quota(), clock.clone());
        for _ in 0..3 {
            limiter.check(&1);
        }
        clock.advance(Duration::from_millis(300));
        let full_in = limiter.check(&1).full_in();
        clock.advance(full_in);
        // A full bucket admits `burst` requests in a row.
        assert!((0..5).all(|_| limiter.check(&1).is_admitted()));
    }

    #[test]
    fn keys_have_separate_buckets_and_full_ones_are_shed() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::<u32, _>::new(rate(60, 1).quota(), clock.clone());
        assert!(limiter.check(&1).is_admitted());
        assert!(!limiter.check(&1).is_admitted());
        assert!(limiter.check(&2).is_admitted());
        assert_eq!(limiter.len(), 2);
        limiter.shed();
        assert_eq!(limiter.len(), 2, "buckets still refilling are kept");
        // Full at 1 s; shed once full for a whole refill interval.
        clock.advance(Duration::from_secs(2));
        limiter.shed();
        assert!(limiter.is_empty());
    }

    #[test]
    fn a_set_keeps_state_per_shape_and_drops_idle_shapes() {
        let clock = FakeRelativeClock::default();
        let set = LimiterSet::<u32, _>::new(clock.clone());
        // Refills: narrow every second (full at 2 s), slow every 10 s (full at 20 s).
        let (narrow, slow) = (rate(60, 2), rate(6, 5));
        assert_eq!(set.check(narrow, &1).remaining(), 1);
        assert_eq!(set.check(slow, &1).remaining(), 4);
        assert_eq!(set.check(narrow, &1).remaining(), 0);
        assert_eq!(set.check(slow, &1).remaining(), 3);
        assert_eq!((set.shapes(), set.buckets()), (2, 2));
        clock.advance(Duration::from_secs(3));
        set.shed();
        assert_eq!(
            set.shapes(),
            1,
            "the narrow bucket is full again; its limiter goes"
        );
        assert_eq!(
            set.check(slow, &1).remaining(),
            2,
            "the other shape kept its state"
        );
        clock.advance(Duration::from_secs(40));
        set.shed();
        assert_eq!((set.shapes(), set.buckets()), (0, 0));
    }
}
