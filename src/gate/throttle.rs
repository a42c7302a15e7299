//! Failed-authentication throttling, so secrets cannot be brute-forced.
//!
//! Every failed authentication spends a token from two buckets of the keyed limiter that
//! request limits use too ([`crate::gate::ratelimit::Limiter`]): one per client address and
//! one per presented key id. A source whose bucket is empty is refused with
//! `429 auth.throttled` *before* its next credential is even looked at, until the bucket
//! has refilled, so guessing gets no answer at all while throttled. Successful requests spend
//! nothing: a tenant's traffic never counts against it here.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use governor::Quota;

use crate::gate::ratelimit::{LimitClock, Limiter, Outcome};
use crate::problem::{Problem, ProblemCode};

/// Most blocked sources remembered per kind; beyond it the oldest blocks are forgotten early
/// (they are still rate limited by the bucket).
const MAX_BLOCKED: usize = 100_000;

/// One kind of failure source (addresses, or key ids): a bucket of failures per source, on
/// the same keyed limiter as request limits.
///
/// Checking must not spend (a source is refused *before* its credential is looked at), and
/// governor has no read-only check, so the failure that empties a bucket records until when
/// the source is blocked; the block lasts exactly until the bucket can pay for one more.
struct Budget<K: Hash + Eq + Clone> {
    limiter: Limiter<K, LimitClock>,
    blocked: Mutex<HashMap<K, Nanos>>,
}

impl<K: Hash + Eq + Clone> Budget<K> {
    fn new(failures: u32, window: Duration, clock: LimitClock) -> Self {
        let failures = NonZeroU32::new(failures).unwrap_or(NonZeroU32::MIN);
        let period = window / failures.get();
        let quota = Quota::with_period(period.max(Duration::from_micros(1)))
            .unwrap_or_else(|| Quota::per_minute(failures))
            .allow_burst(failures);
        Self {
            limiter: Limiter::new(quota, clock),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    fn blocked_for(&self, key: &K, now: Nanos) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        blocked
            .get(key)
            .map(|until| Duration::from(until.duration_since(now)))
            .filter(|left| !left.is_zero())
    }

    /// Spends one failure; the failure that empties the budget starts the block, so a budget
    /// of N allows exactly N failures before refusals begin.
    fn fail(&self, key: &K, now: Nanos) {
        let exhausted = match self.limiter.check(key) {
            Outcome::Admitted { remaining, .. } => remaining == 0,
            Outcome::Refused { .. } => true,
        };
        if !exhausted {
            return;
        }
        let wait = self.limiter.refill();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        if blocked.len() >= MAX_BLOCKED {
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(key.clone(), now + Nanos::from(wait));
    }

    fn shed(&self, now: Nanos) {
        self.limiter.shed();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
    }
}

/// The failed-authentication throttle shared by every connection.
pub struct AuthThrottle {
    clock: LimitClock,
    per_ip: Budget<IpAddr>,
    per_key: Budget<String>,
}

impl std::fmt::Debug for AuthThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthThrottle").finish_non_exhaustive()
    }
}

impl AuthThrottle {
    /// `per_ip` and `per_key` failures are allowed per `window`, refilling smoothly, timed
    /// by `clock`.
    pub fn new(per_ip: u32, per_key: u32, window: Duration, clock: LimitClock) -> Self {
        Self {
            per_ip: Budget::new(per_ip, window, clock.clone()),
            per_key: Budget::new(per_key, window, clock.clone()),
            clock,
        }
    }

    /// Refuses a source that used up its failure budget. `key_id` is the id part of the
    /// presented credential, when it had one.
    pub fn check(&self, ip: IpAddr, key_id: Option<&str>) -> Result<(), Problem> {
        let now = self.clock.now();
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
        let now = self.clock.now();
        self.per_ip.fail(&ip, now);
        if let Some(id) = key_id {
            self.per_key.fail(&id.to_owned(), now);
        }
    }

    /// Forgets idle sources so memory stays bounded; called on a timer.
    pub fn shed_idle(&self) {
        let now = self.clock.now();
        self.per_ip.shed(now);
        self.per_key.shed(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::ratelimit::ManualClock;

    fn throttle(per_ip: u32, per_key: u32) -> (std::sync::Arc<ManualClock>, AuthThrottle) {
        let clock = ManualClock::starting_at(1_700_000_000);
        let throttle = AuthThrottle::new(
            per_ip,
            per_key,
            Duration::from_secs(60),
            clock.limit_clock(),
        );
        (clock, throttle)
    }

    #[test]
    fn a_source_is_blocked_after_its_budget_and_others_are_not() {
        let (_clock, throttle) = throttle(3, 100);
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
        let (_clock, throttle) = throttle(100, 2);
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

    #[test]
    fn exactly_n_failures_then_a_block_that_lifts_when_one_failure_is_back() {
        let (clock, throttle) = throttle(3, 100);
        let source: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            assert!(throttle.check(source, None).is_ok());
            throttle.record_failure(source, None);
        }
        let refusal = throttle.check(source, None).unwrap_err();
        let response = refusal.into_response("id");
        // One failure comes back every 20 s (3 per minute).
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "20");
        clock.advance(Duration::from_secs(19));
        assert!(throttle.check(source, None).is_err());
        clock.advance(Duration::from_secs(1));
        assert!(throttle.check(source, None).is_ok());
        // One failure was earned back: the next one blocks again.
        throttle.record_failure(source, None);
        assert!(throttle.check(source, None).is_err());
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let (clock, throttle) = throttle(1, 100);
        let source: IpAddr = "192.0.2.8".parse().unwrap();
        throttle.record_failure(source, Some("0a1b2c3d"));
        assert!(throttle.check(source, None).is_err());
        clock.advance(Duration::from_secs(180));
        throttle.shed_idle();
        assert_eq!(throttle.per_ip.limiter.len(), 0);
        assert!(throttle.per_ip.blocked.lock().unwrap().is_empty());
        assert!(throttle.check(source, Some("0a1b2c3d")).is_ok());
    }
}
