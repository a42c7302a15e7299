//! Failed-authentication throttling, so secrets cannot be brute-forced.
//!
//! Every failed authentication spends a token from two governor buckets: one per client
//! address and one per presented key id. A source whose bucket is empty is refused with
//! `429 auth.throttled` *before* its next credential is even looked at, until the bucket
//! has refilled, so guessing gets no answer at all while throttled. Successful requests spend
//! nothing: a tenant's traffic never counts against it here.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::problem::{Problem, ProblemCode};

/// Most blocked sources remembered per kind; beyond it the oldest blocks are forgotten early
/// (they are still rate limited by the bucket).
const MAX_BLOCKED: usize = 100_000;

/// One kind of failure source (addresses, or key ids).
struct Budget<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>,
    /// How long one spent failure takes to come back.
    refill: Duration,
    blocked: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> Budget<K> {
    fn new(failures: u32, window: Duration) -> Self {
        let failures = NonZeroU32::new(failures).unwrap_or(NonZeroU32::MIN);
        let period = window / failures.get();
        let quota = Quota::with_period(period.max(Duration::from_micros(1)))
            .unwrap_or_else(|| Quota::per_minute(failures))
            .allow_burst(failures);
        Self {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            refill: quota.replenish_interval(),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    fn blocked_for(&self, key: &K, now: Instant) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked
            .get(key)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Spends one failure; the failure that empties the budget starts the block, so a budget
    /// of N allows exactly N failures before refusals begin.
    fn fail(&self, key: &K, now: Instant) {
        let exhausted = match self.limiter.check_key(key) {
            Ok(snapshot) => snapshot.remaining_burst_capacity() == 0,
            Err(_) => true,
        };
        if exhausted {
            let wait = self.refill;
            let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            if blocked.len() >= MAX_BLOCKED {
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(key.clone(), now + wait);
        }
    }

    fn shed(&self, now: Instant) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
    }
}

/// The failed-authentication throttle shared by every connection.
pub struct AuthThrottle {
    per_ip: Budget<IpAddr>,
    per_key: Budget<String>,
}

impl std::fmt::Debug for AuthThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthThrottle").finish_non_exhaustive()
    }
}

impl AuthThrottle {
    /// `per_ip` and `per_key` failures are allowed per `window`, refilling smoothly.
    pub fn new(per_ip: u32, per_key: u32, window: Duration) -> Self {
        Self {
            per_ip: Budget::new(per_ip, window),
            per_key: Budget::new(per_key, window),
        }
    }

    /// Refuses a source that used up its failure budget. `key_id` is the id part of the
    /// presented credential, when it had one.
    pub fn check(&self, ip: IpAddr, key_id: Option<&str>) -> Result<(), Problem> {
        let now = Instant::now();
        let wait = self
            .per_ip
            .blocked_for(&ip, now)
            .into_iter()
            .chain(key_id.and_then(|id| self.per_key.blocked_for(&id.to_owned(), now)))
            .max();
        match wait {
            Some(wait) => Err(Problem::new(ProblemCode::AuthThrottled)
                .with_detail("too many failed authentication attempts; wait before retrying")
                .with_retry_after(wait)),
            None => Ok(()),
        }
    }

    /// Spends one failure from the address's and the key id's budgets.
    pub fn record_failure(&self, ip: IpAddr, key_id: Option<&str>) {
        let now = Instant::now();
        self.per_ip.fail(&ip, now);
        if let Some(id) = key_id {
            self.per_key.fail(&id.to_owned(), now);
        }
    }

    /// Forgets idle sources so memory stays bounded; called on a timer.
    pub fn shed_idle(&self) {
        let now = Instant::now();
        self.per_ip.shed(now);
        self.per_key.shed(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_blocked_after_its_budget_and_others_are_not() {
        let throttle = AuthThrottle::new(3, 100, Duration::from_secs(60));
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        let bystander: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(throttle.check(attacker, None).is_ok());
            throttle.record_failure(attacker, None);
        }
        throttle.record_failure(attacker, None);
        let refusal = throttle.check(attacker, None).unwrap_err();
        assert_eq!(refusal.code(), ProblemCode::AuthThrottled);
        assert!(throttle.check(bystander, None).is_ok());
    }

    #[test]
    fn a_key_id_is_blocked_across_addresses() {
        let throttle = AuthThrottle::new(100, 2, Duration::from_secs(60));
        for i in 0..3u8 {
            throttle.record_failure(IpAddr::from([198, 51, 100, i]), Some("0a1b2c3d"));
        }
        assert!(throttle
            .check(IpAddr::from([198, 51, 100, 9]), Some("0a1b2c3d"))
            .is_err());
        assert!(throttle
            .check(IpAddr::from([198, 51, 100, 9]), Some("ffffffff"))
            .is_ok());
    }
}
