//! What happens after an attempt: the pure decision the worker writes down.
//!
//! Kept apart from the worker so every rule (2xx, 410, `Retry-After`, the schedule, jitter,
//! the dead-letter queue) is a plain function with plain tests.

use std::time::Duration;

use super::delivery::FailureKind;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered with this status (any status).
    Answered {
        /// The status.
        status: u16,
        /// Its `Retry-After`, when it sent one that could be read.
        retry_after: Option<Duration>,
    },
    /// No answer: the attempt failed before or while waiting for one.
    NoAnswer(FailureKind),
}

/// What to write down for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered.
    Delivered,
    /// The receiver said the endpoint is gone (410): disable the subscription and end its
    /// pending deliveries.
    Gone,
    /// Try again at this time (unix ms).
    Retry {
        /// When.
        at_ms: u64,
        /// Why this attempt failed.
        error: FailureKind,
    },
    /// No attempts left: the dead-letter queue.
    Dead {
        /// Why the last attempt failed.
        error: FailureKind,
    },
}

/// Decides what follows attempt number `attempts` (1 for the first) that ended in
/// `outcome` at `now_ms`.
///
/// After failure `n` the wait is `schedule[n - 1]`, varied by up to `jitter` (a fraction)
/// either way using `random` (uniform in `[0, 1)`); when the receiver sent `Retry-After` with
/// a 429 or 503, that wait is used instead, capped at the schedule's longest wait. There is
/// no wait after the last entry of the schedule: the delivery is dead.
pub fn next(
    attempts: u32,
    outcome: Outcome,
    schedule: &[Duration],
    jitter: f64,
    random: f64,
    now_ms: u64,
) -> Next {
    let (error, retry_after) = match outcome {
        Outcome::Answered { status, .. } if (200..300).contains(&status) => return Next::Delivered,
        Outcome::Answered { status: 410, .. } => return Next::Gone,
        Outcome::Answered {
            status: 429 | 503,
            retry_after,
        } => (FailureKind::Status, retry_after),
        Outcome::Answered { .. } => (FailureKind::Status, None),
        Outcome::NoAnswer(kind) => (kind, None),
    };
    let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    let Some(base) = schedule.get(index) else {
        return Next::Dead { error };
    };
    let wait = match retry_after {
        Some(asked) => asked.min(schedule.iter().copied().max().unwrap_or(*base)),
        None => jittered(*base, jitter, random),
    };
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    Next::Retry {
        at_ms: now_ms.saturating_add(wait_ms),
        error,
    }
}

/// `base` varied by up to `jitter` of itself either way.
fn jittered(base: Duration, jitter: f64, random: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    let random = random.clamp(0.0, 1.0);
    let factor = 1.0 + jitter * (2.0 * random - 1.0);
    base.mul_f64(factor.max(0.0))
}

/// A uniform random number in `[0, 1)` from the OS CSPRNG (0.5, no jitter, if it fails).
pub fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        // 53 bits: every value is exactly representable.
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|m| Duration::from_secs(m * 60)).collect()
    }

    fn answered(status: u16) -> Outcome {
        Outcome::Answered {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn success_and_gone_end_at_once() {
        let schedule = minutes(&[1, 2]);
        for status in [200, 202, 204, 299] {
            assert_eq!(
                next(1, answered(status), &schedule, 0.1, 0.3, 0),
                Next::Delivered
            );
        }
        assert_eq!(
            next(3, answered(200), &schedule, 0.1, 0.3, 0),
            Next::Delivered
        );
        assert_eq!(next(1, answered(410), &schedule, 0.1, 0.3, 0), Next::Gone);
    }

    #[test]
    fn failures_follow_the_schedule_and_then_die() {
        let schedule = minutes(&[1, 2, 4, 8, 16]);
        let mut expected = vec![60_000u64, 120_000, 240_000, 480_000, 960_000].into_iter();
        for attempt in 1..=5 {
            let outcome = if attempt % 2 == 0 {
                answered(500)
            } else {
                Outcome::NoAnswer(FailureKind::Timeout)
            };
            match next(attempt, outcome, &schedule, 0.0, 0.9, 1_000) {
                Next::Retry { at_ms, .. } => assert_eq!(at_ms, 1_000 + expected.next().unwrap()),
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        assert_eq!(
            next(6, answered(404), &schedule, 0.0, 0.9, 1_000),
            Next::Dead {
                error: FailureKind::Status
            }
        );
        assert_eq!(
            next(1, Outcome::NoAnswer(FailureKind::Tls), &[], 0.1, 0.5, 0),
            Next::Dead {
                error: FailureKind::Tls
            }
        );
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let schedule = minutes(&[10]);
        let at = |random| match next(1, answered(500), &schedule, 0.1, random, 0) {
            Next::Retry { at_ms, .. } => at_ms,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(0.0), 540_000);
        assert_eq!(at(0.5), 600_000);
        assert!(at(0.999_999) <= 660_000 && at(0.999_999) > 659_000);
        for _ in 0..1000 {
            let random = unit_random();
            assert!((0.0..1.0).contains(&random));
            assert!((540_000..=660_000).contains(&at(random)));
        }
    }

    #[test]
    fn retry_after_is_honoured_for_429_and_503_up_to_the_longest_wait() {
        let schedule = minutes(&[1, 2, 4]);
        let with = |status, secs| Outcome::Answered {
            status,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            next(1, with(429, 150), &schedule, 0.1, 0.0, 0),
            Next::Retry {
                at_ms: 150_000,
                error: FailureKind::Status
            }
        );
        assert_eq!(
            next(2, with(503, 3_600), &schedule, 0.1, 0.0, 0),
            Next::Retry {
                at_ms: 240_000,
                error: FailureKind::Status
            }
        );
        // Other statuses do not get to choose the wait.
        assert_eq!(
            next(1, with(500, 5), &schedule, 0.0, 0.0, 0),
            Next::Retry {
                at_ms: 60_000,
                error: FailureKind::Status
            }
        );
        // Retry-After does not add attempts.
        assert_eq!(
            next(4, with(429, 1), &schedule, 0.0, 0.0, 0),
            Next::Dead {
                error: FailureKind::Status
            }
        );
    }
}
