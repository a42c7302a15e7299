//! Time for limits, quotas and the failed-authentication throttle, in one injectable value.
//!
//! Buckets need monotonic time (a wall-clock step must never refill or drain them), while
//! `X-RateLimit-Reset` and the UTC-midnight quota reset need wall-clock time. [`LimitClock`]
//! carries both from one [`TimeSource`], so a test can move them together with
//! [`ManualClock`] instead of sleeping, and production runs on [`LimitClock::system`] with no
//! switch anywhere in the request path.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock, Reference};
use governor::nanos::Nanos;

/// Where a [`LimitClock`] reads the time.
pub trait TimeSource: Send + Sync {
    /// Monotonic time elapsed since the source was created; never goes backwards.
    fn elapsed(&self) -> Duration;

    /// Wall-clock time since the unix epoch (UTC, no leap seconds).
    fn since_epoch(&self) -> Duration;
}

/// The clock every limiter runs on; cheap to clone, all clones read the same source.
///
/// It is a governor [`Clock`] whose instants are nanoseconds since the source's origin.
#[derive(Clone)]
pub struct LimitClock(Arc<dyn TimeSource>);

impl fmt::Debug for LimitClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitClock").finish_non_exhaustive()
    }
}

impl LimitClock {
    /// The production clock: governor's default monotonic clock and the system wall clock.
    pub fn system() -> Self {
        Self(Arc::new(SystemSource::new()))
    }

    /// A clock reading `source`, e.g. a [`ManualClock`] in tests.
    pub fn from_source(source: Arc<dyn TimeSource>) -> Self {
        Self(source)
    }

    /// Wall-clock time since the unix epoch.
    pub fn since_epoch(&self) -> Duration {
        self.0.since_epoch()
    }
}

impl Clock for LimitClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.elapsed())
    }
}

/// Governor's default clock for monotonic time and [`SystemTime`] for the wall clock.
struct SystemSource {
    clock: DefaultClock,
    origin: <DefaultClock as Clock>::Instant,
}

impl SystemSource {
    fn new() -> Self {
        let clock = DefaultClock::default();
        let origin = clock.now();
        Self { clock, origin }
    }
}

impl TimeSource for SystemSource {
    fn elapsed(&self) -> Duration {
        self.clock.now().duration_since(self.origin).into()
    }

    fn since_epoch(&self) -> Duration {
        // A system clock set before 1970 reads as the epoch; day arithmetic stays defined.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock that only moves when told to: monotonic and wall time advance together.
///
/// For tests of refill, `Retry-After`, `X-RateLimit-Reset` and the midnight quota reset
/// without sleeping. Nothing in the serving path constructs one.
#[derive(Debug)]
pub struct ManualClock {
    elapsed_nanos: AtomicU64,
    epoch_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock whose wall time starts at `unix_seconds`.
    pub fn starting_at(unix_seconds: u64) -> Arc<Self> {
        Arc::new(Self {
            elapsed_nanos: AtomicU64::new(0),
            epoch_nanos: AtomicU64::new(unix_seconds.saturating_mul(1_000_000_000)),
        })
    }

    /// Moves both monotonic and wall time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_nanos.fetch_add(nanos, Ordering::AcqRel);
        self.epoch_nanos.fetch_add(nanos, Ordering::AcqRel);
    }

    /// A [`LimitClock`] reading this clock.
    pub fn limit_clock(self: &Arc<Self>) -> LimitClock {
        LimitClock::from_source(self.clone())
    }
}

impl TimeSource for ManualClock {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_nanos.load(Ordering::Acquire))
    }

    fn since_epoch(&self) -> Duration {
        Duration::from_nanos(self.epoch_nanos.load(Ordering::Acquire))
    }
}

/// Whole seconds in `duration`, rounded up, so an advertised time is never too early.
pub fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_times_together() {
        let manual = ManualClock::starting_at(1_000);
        let clock = manual.limit_clock();
        let before = clock.now();
        manual.advance(Duration::from_millis(1_500));
        assert_eq!(
            Duration::from(clock.now().duration_since(before)),
            Duration::from_millis(1_500)
        );
        assert_eq!(clock.since_epoch(), Duration::from_millis(1_001_500));
    }

    #[test]
    fn system_clock_is_monotonic_and_near_the_wall_clock() {
        let clock = LimitClock::system();
        let first = clock.now();
        assert!(clock.now() >= first);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let ours = clock.since_epoch();
        assert!(ours.abs_diff(wall) < Duration::from_secs(5));
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2_001)), 3);
    }
}
