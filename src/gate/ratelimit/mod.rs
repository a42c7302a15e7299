//! Request limits and daily quotas for authenticated keys, and the headers that report them.
//!
//! Two steps of the pipeline come here, both after authentication, so failed authentication
//! never spends a tenant's limit or quota:
//!
//! 1. [`RateLimits::admit_key`], right after the key verified: every request a key makes,
//!    whatever it turns out to be (a 404, a 403, whoami), spends one unit of the key's own
//!    limit, which is the key's override if it has one, else the policy default.
//! 2. [`RateLimits::admit_route`], once the route and scope are known and just before
//!    forwarding: the route class's limit, if the route names one, then the daily quotas
//!    (key-wide and the class's), which count only requests that get this far.
//!
//! Each step returns a [`Verdict`] that records the tightest [`RateStatus`] seen so far; the
//! proxy puts that status on the answer, success or error, so partners always see the limit
//! that binds them. A request refused by a later step has still spent from the limits
//! checked before it (governor cannot give a unit back): it was a request the key made.

pub mod clock;
pub mod headers;
pub mod limiter;

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{LimitClass, RateLimitConfig};
use crate::gate::quota::{self, QuotaScope, Quotas};
use crate::keys::{KeyId, KeyRecord};
use crate::problem::{Problem, ProblemCode};
use crate::store::{Store, StoreError};

pub use clock::{LimitClock, ManualClock, TimeSource};
pub use headers::{HeaderStyle, RateStatus};
pub use limiter::{Limiter, LimiterSet, Outcome, Rate};

/// A key's share of a route class's limit. (A key's own bucket is keyed by its id alone:
/// every active key has one, so it is kept as small as it can be.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClassBucket {
    key: KeyId,
    class: Arc<str>,
}

/// What a limit step decided, and the status to show for it.
#[derive(Debug)]
#[must_use = "a verdict must be recorded, or its refusal is lost"]
pub struct Verdict {
    status: Option<RateStatus>,
    refusal: Option<Problem>,
}

impl Verdict {
    fn admitted(status: Option<RateStatus>) -> Self {
        Self {
            status,
            refusal: None,
        }
    }

    fn refused(status: Option<RateStatus>, problem: Problem) -> Self {
        Self {
            status,
            refusal: Some(problem),
        }
    }

    /// Folds this step's status into `shown` (the refusing limit answers; otherwise the
    /// tighter of the two) and returns the refusal, if any.
    pub fn record(self, shown: &mut Option<RateStatus>) -> Result<(), Problem> {
        if let Some(status) = self.status {
            let replace = self.refusal.is_some()
                || shown
                    .as_ref()
                    .is_none_or(|current| current.is_looser_than(&status));
            if replace {
                *shown = Some(status);
            }
        }
        match self.refusal {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }
}

/// The limits and quotas of every key, shared by all connections; outlives policy reloads.
///
/// Limits are read from the policy on each request and buckets are keyed by limit shape (see
/// [`limiter`]), so a reload that changes one limit leaves every other bucket as it was.
pub struct RateLimits {
    clock: LimitClock,
    key_buckets: LimiterSet<KeyId, LimitClock>,
    class_buckets: LimiterSet<ClassBucket, LimitClock>,
    quotas: Quotas,
    /// The UTC day whose stale quota rows were last pruned.
    pruned_day: AtomicU32,
}

impl fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimits")
            .field("key_buckets", &self.key_buckets)
            .field("class_buckets", &self.class_buckets)
            .field("quotas", &self.quotas)
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Opens the quota counters in `store`; buckets start empty (full) on every start.
    pub fn open(store: &Store, clock: LimitClock) -> Result<Self, StoreError> {
        Ok(Self {
            key_buckets: LimiterSet::new(clock.clone()),
            class_buckets: LimiterSet::new(clock.clone()),
            quotas: Quotas::open(store)?,
            clock,
            pruned_day: AtomicU32::new(0),
        })
    }

    /// The clock limits and quotas run on.
    pub fn clock(&self) -> &LimitClock {
        &self.clock
    }

    /// Spends one request of the key's own limit: its override, else the policy default.
    pub fn admit_key(&self, key: &KeyRecord, config: &RateLimitConfig) -> Verdict {
        let rate = key
            .rate
            .and_then(|r| Rate::new(r.per_minute, r.burst))
            .unwrap_or(config.default);
        let outcome = self.key_buckets.check(rate, &key.id);
        self.verdict(rate, None, outcome)
    }

    /// Applies the route class's limit and the daily quotas to a request about to be
    /// forwarded. Quotas are counted only when every limit admitted the request.
    pub fn admit_route(
        &self,
        key: &KeyRecord,
        class: Option<&LimitClass>,
        config: &RateLimitConfig,
    ) -> Verdict {
        let now = self.clock.since_epoch();
        let today = quota::day_of(now);
        let key_wide = config.daily_quota.map(|limit| {
            let scope = QuotaScope {
                key: key.id,
                class: None,
            };
            (scope, limit)
        });
        let per_class = class.and_then(|class| {
            let scope = QuotaScope {
                key: key.id,
                class: Some(class.name.clone()),
            };
            Some((scope, class.daily_quota?))
        });
        let budgets: Vec<_> = key_wide.into_iter().chain(per_class).collect();

        // A spent quota is refused before the class limit is touched: a key waiting for
        // midnight does not also drain its buckets.
        if let Some((scope, _)) = budgets
            .iter()
            .find(|(scope, limit)| self.quotas.used(scope, today) >= *limit)
        {
            return Verdict::refused(None, quota_exceeded(scope, now));
        }

        let mut status = None;
        if let Some((class, rate)) = class.and_then(|c| c.rate.map(|rate| (c, rate))) {
            let bucket = ClassBucket {
                key: key.id,
                class: class.name.clone(),
            };
            let outcome = self.class_buckets.check(rate, &bucket);
            let verdict = self.verdict(rate, Some(&class.name), outcome);
            if verdict.refusal.is_some() {
                return verdict;
            }
            status = verdict.status;
        }

        for (index, (scope, limit)) in budgets.iter().enumerate() {
            if !self.quotas.take(scope, *limit, today) {
                for (taken, _) in &budgets[..index] {
                    self.quotas.give_back(taken, today);
                }
                return Verdict::refused(status, quota_exceeded(scope, now));
            }
        }
        Verdict::admitted(status)
    }

    /// The verdict and status for one spend from a key's own limit (`class: None`) or a
    /// class's.
    fn verdict(&self, rate: Rate, class: Option<&Arc<str>>, outcome: Outcome) -> Verdict {
        let status = RateStatus {
            class: class.cloned(),
            per_minute: rate.per_minute(),
            remaining: outcome.remaining(),
            full_in: outcome.full_in(),
            decided_at: self.clock.since_epoch(),
        };
        match outcome {
            Outcome::Admitted { .. } => Verdict::admitted(Some(status)),
            Outcome::Refused { retry_in, .. } => {
                let detail: Cow<'static, str> = match class {
                    None => Cow::Borrowed(
                        "this API key is sending requests too fast; retry after the number of \
                         seconds in Retry-After",
                    ),
                    Some(class) => Cow::Owned(format!(
                        "this API key is sending `{class}` requests too fast; retry after the \
                         number of seconds in Retry-After"
                    )),
                };
                let problem = Problem::new(ProblemCode::RateLimited)
                    .with_detail(detail)
                    .with_retry_after(retry_in);
                Verdict::refused(Some(status), problem)
            }
        }
    }

    /// Forgets full buckets and idle quota counters so memory follows active keys; called
    /// on a timer.
    pub fn shed_idle(&self) {
        self.key_buckets.shed();
        self.class_buckets.shed();
        self.quotas.shed_idle();
    }

    /// Whether stored quota rows of past days may be waiting to be pruned (once per day).
    pub fn prune_due(&self) -> bool {
        let today = quota::day_of(self.clock.since_epoch());
        self.pruned_day.load(Ordering::Relaxed) < today
    }

    /// Deletes stored quota rows of past days. Walks the store: run it off the async runtime.
    pub fn prune_quotas(&self) -> Result<usize, StoreError> {
        let today = quota::day_of(self.clock.since_epoch());
        let removed = self.quotas.prune(today)?;
        self.pruned_day.fetch_max(today, Ordering::Relaxed);
        Ok(removed)
    }

    /// Buckets currently held in memory (for tests and metrics).
    pub fn buckets_in_memory(&self) -> usize {
        self.key_buckets.buckets() + self.class_buckets.buckets()
    }

    /// Quota counters currently held in memory (for tests and metrics).
    pub fn quota_counters_in_memory(&self) -> usize {
        self.quotas.in_memory()
    }
}

fn quota_exceeded(scope: &QuotaScope, now: Duration) -> Problem {
    let detail: Cow<'static, str> = match &scope.class {
        None => Cow::Borrowed("this API key has used its daily quota; it resets at midnight UTC"),
        Some(class) => Cow::Owned(format!(
            "this API key has used its daily quota of `{class}` requests; it resets at \
             midnight UTC"
        )),
    };
    Problem::new(ProblemCode::QuotaExceeded)
        .with_detail(detail)
        .with_retry_after(quota::until_midnight(now))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::keys::{Env, KeyStatus, RateOverride};

    const NOON: u64 = 1_893_456_000 + 12 * 3600;

    fn record(id: &str, rate: Option<RateOverride>) -> KeyRecord {
        KeyRecord {
            id: id.parse().unwrap(),
            org: "acme".to_owned(),
            env: Env::Test,
            scopes: BTreeSet::new(),
            label: None,
            created_at: 0,
            expires_at: None,
            status: KeyStatus::Active,
            last_used_at: None,
            allow_cidrs: Vec::new(),
            hash: [0; 32],
            previous: None,
            rate,
            namespace: "pcl".to_owned(),
        }
    }

    fn config(daily_quota: Option<u32>) -> RateLimitConfig {
        RateLimitConfig {
            default: Rate::new(60, 5).unwrap(),
            daily_quota,
            headers: HeaderStyle::Both,
            classes: BTreeMap::new(),
        }
    }

    fn class(rate: Option<Rate>, daily_quota: Option<u32>) -> LimitClass {
        LimitClass {
            name: Arc::from("writes"),
            rate,
            daily_quota,
        }
    }

    fn open() -> (tempfile::TempDir, Arc<ManualClock>, RateLimits) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let clock = ManualClock::starting_at(NOON);
        let limits = RateLimits::open(&store, clock.limit_clock()).unwrap();
        (dir, clock, limits)
    }

    fn status(class: Option<&str>, remaining: u32) -> RateStatus {
        RateStatus {
            class: class.map(Arc::from),
            per_minute: 60,
            remaining,
            full_in: Duration::from_secs(1),
            decided_at: Duration::from_secs(NOON),
        }
    }

    #[test]
    fn a_verdict_shows_the_tighter_status_or_the_refusing_one() {
        let mut shown = None;
        Verdict::admitted(Some(status(None, 4)))
            .record(&mut shown)
            .unwrap();
        Verdict::admitted(Some(status(Some("writes"), 9)))
            .record(&mut shown)
            .unwrap();
        assert_eq!(
            shown,
            Some(status(None, 4)),
            "the key's own limit is tighter"
        );
        Verdict::admitted(None).record(&mut shown).unwrap();
        assert_eq!(shown, Some(status(None, 4)));
        let problem = Problem::new(ProblemCode::RateLimited);
        let refused = Verdict::refused(Some(status(Some("writes"), 0)), problem);
        assert!(refused.record(&mut shown).is_err());
        assert_eq!(shown, Some(status(Some("writes"), 0)));
    }

    #[test]
    fn the_key_override_replaces_the_default() {
        let (_dir, _clock, limits) = open();
        let config = config(None);
        let mut shown = None;
        let key = record(
            "0a1b2c3d",
            Some(RateOverride {
                per_minute: 120,
                burst: 2,
            }),
        );
        limits.admit_key(&key, &config).record(&mut shown).unwrap();
        let status = shown.take().unwrap();
        assert_eq!((status.per_minute, status.remaining), (120, 1));
        let plain = record("0a1b2c3e", None);
        limits
            .admit_key(&plain, &config)
            .record(&mut shown)
            .unwrap();
        let status = shown.unwrap();
        assert_eq!((status.per_minute, status.remaining), (60, 4));
    }

    #[test]
    fn a_class_refusal_spends_no_quota() {
        let (_dir, clock, limits) = open();
        let config = config(Some(100));
        let writes = class(Rate::new(60, 1), Some(100));
        let key = record("0a1b2c3d", None);
        let mut shown = None;
        limits
            .admit_route(&key, Some(&writes), &config)
            .record(&mut shown)
            .unwrap();
        let refusal = limits
            .admit_route(&key, Some(&writes), &config)
            .record(&mut shown)
            .unwrap_err();
        assert_eq!(refusal.code(), ProblemCode::RateLimited);
        let today = quota::day_of(clock.limit_clock().since_epoch());
        let class_scope = QuotaScope {
            key: key.id,
            class: Some(Arc::from("writes")),
        };
        let key_scope = QuotaScope {
            key: key.id,
            class: None,
        };
        assert_eq!(limits.quotas.used(&class_scope, today), 1);
        assert_eq!(limits.quotas.used(&key_scope, today), 1);
    }

    #[test]
    fn racing_quotas_count_only_admitted_requests() {
        let (_dir, clock, limits) = open();
        let config = config(Some(1_000));
        let writes = class(None, Some(10));
        let key = record("0a1b2c3d", None);
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        (0..20)
                            .filter(|_| {
                                let mut shown = None;
                                limits
                                    .admit_route(&key, Some(&writes), &config)
                                    .record(&mut shown)
                                    .is_ok()
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 10);
        let today = quota::day_of(clock.limit_clock().since_epoch());
        let key_scope = QuotaScope {
            key: key.id,
            class: None,
        };
        assert_eq!(
            limits.quotas.used(&key_scope, today),
            10,
            "a key-wide unit taken for a request the class quota refused is given back"
        );
    }
}
