//! Request rate limits per client address and per signed-in staff member
//! (GCRA, from `governor`), answered with HTTP 429, `Retry-After` and a
//! GraphQL error coded `LIMIT_EXCEEDED`.
//!
//! `governor` is used directly rather than through `tower_governor`'s
//! layer: the staff member is only known after sign-in (inside the GraphQL
//! request), so that limiter cannot be a layer anyway, and one keyed
//! limiter type serves both. An address limit also needs the peer address
//! (`ConnectInfo`); a router served without it is not limited by address.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Rate;

/// Checks between two sweeps of keys idle long enough to be full again.
const SWEEP_EVERY: u64 = 4096;

/// One keyed limiter, or none when its rate is 0.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    pub fn new(rate: Rate) -> Self {
        let limiter = NonZeroU32::new(rate.per_second).map(|per_second| {
            let burst = NonZeroU32::new(rate.burst).unwrap_or(per_second).max(per_second);
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        Self { limiter, checks: AtomicU64::new(0) }
    }

    /// `Ok` when `key` may make one more request now; otherwise how long
    /// until it may.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        // Keys at full allowance carry no information: drop them now and
        // then, so that many one-off addresses do not pile up.
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    u64::try_from(wait.as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_and_other_keys_are_not_affected() {
        let limit = KeyedLimit::<i64>::new(Rate { per_second: 1, burst: 3 });
        for _ in 0..3 {
            assert_eq!(limit.check(&1), Ok(()));
        }
        let wait = limit.check(&1).expect_err("fourth request refused");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(limit.check(&2), Ok(()));
    }

    #[test]
    fn a_rate_of_zero_is_off() {
        let limit = KeyedLimit::<i64>::new(Rate::OFF);
        for _ in 0..10_000 {
            assert_eq!(limit.check(&1), Ok(()));
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    /// The cost of one check on the hot path (run with `--ignored
    /// --nocapture` on a release build for a figure).
    #[test]
    #[ignore = "a timing, not a test"]
    fn time_one_check() {
        let limit = KeyedLimit::<i64>::new(Rate { per_second: u32::MAX / 4, burst: u32::MAX / 4 });
        let n = 2_000_000;
        let start = std::time::Instant::now();
        for i in 0..n {
            let _ = limit.check(&(i % 1000));
        }
        let per = start.elapsed() / n as u32;
        println!("one keyed check: {per:?}");
    }
}
