//! Rate limits: one token bucket per limited thing (a service, an API key), kept as GCRA
//! (the generic cell rate algorithm: one atomic "theoretical arrival time" per bucket, so a
//! check is one load and one compare-and-swap, shared by every router thread without a lock).
//! Buckets outlive route-table changes as long as their limit stays the same.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use ferry_core::routes::Limit;

/// One bucket.
#[derive(Debug)]
pub struct Limiter {
    pub limit: Limit,
    /// Nanoseconds (since [`now`]'s origin) at which the bucket is full again.
    tat: AtomicU64,
}

/// A request the bucket let through, with what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub remaining: u32,
}

/// A request the bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Nanoseconds until one request would be let through.
    pub wait_nanos: u64,
    /// Nanoseconds until the bucket is full.
    pub reset_nanos: u64,
}

impl Limiter {
    pub fn new(limit: Limit) -> Self {
        Limiter {
            limit,
            tat: AtomicU64::new(0),
        }
    }

    /// Take one token at `now` (nanoseconds), or say how long until there is one.
    pub fn check(&self, now: u64) -> Result<Admitted, Refused> {
        let interval = self.limit.interval_nanos.max(1);
        let tolerance = interval.saturating_mul(u64::from(self.limit.burst.max(1) - 1));
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            let ahead = start - now;
            if ahead > tolerance {
                return Err(Refused {
                    wait_nanos: ahead - tolerance,
                    reset_nanos: ahead,
                });
            }
            let next = start.saturating_add(interval);
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let remaining = (tolerance - ahead) / interval;
                    return Ok(Admitted {
                        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                    });
                }
                Err(current) => tat = current,
            }
        }
    }
}

/// Nanoseconds on the router's monotonic clock.
pub fn now() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Buckets by what they limit (`service/NS/NAME`, `key/ID`), kept across table changes.
#[derive(Clone, Default)]
pub struct Limiters {
    buckets: Arc<Mutex<HashMap<String, Arc<Limiter>>>>,
}

impl Limiters {
    /// The bucket for `name` with `limit`: the known one while its limit is unchanged.
    pub(crate) fn get(
        &self,
        seen: &mut HashMap<String, Arc<Limiter>>,
        name: String,
        limit: &Limit,
    ) -> Arc<Limiter> {
        let buckets = self.buckets.lock().expect("limiters poisoned");
        let bucket = match buckets.get(&name) {
            Some(known) if known.limit == *limit => known.clone(),
            _ => Arc::new(Limiter::new(limit.clone())),
        };
        seen.insert(name, bucket.clone());
        bucket
    }

    /// Keep only the buckets the latest table uses.
    pub(crate) fn retain(&self, seen: HashMap<String, Arc<Limiter>>) {
        *self.buckets.lock().expect("limiters poisoned") = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> Limiter {
        Limiter::new(Limit::of(
            &ferry_api::RateLimitSpec {
                requests_per_second: per_second,
                burst: Some(burst),
            },
            1,
        ))
    }

    #[test]
    fn a_burst_passes_at_once_then_the_sustained_rate() {
        let bucket = limiter(10.0, 3);
        let t0 = 1_000_000_000;
        assert_eq!(bucket.check(t0), Ok(Admitted { remaining: 2 }));
        assert_eq!(bucket.check(t0), Ok(Admitted { remaining: 1 }));
        assert_eq!(bucket.check(t0), Ok(Admitted { remaining: 0 }));
        let refused = bucket.check(t0).unwrap_err();
        assert_eq!(refused.wait_nanos, 100_000_000, "one token every 100 ms");
        assert_eq!(refused.reset_nanos, 300_000_000);
        assert!(bucket.check(t0 + 99_000_000).is_err());
        assert!(bucket.check(t0 + 100_000_000).is_ok());
        // Idle for long: full again, not more than full.
        let later = t0 + 60_000_000_000;
        for _ in 0..3 {
            assert!(bucket.check(later).is_ok());
        }
        assert!(bucket.check(later).is_err());
    }

    #[test]
    fn over_ten_seconds_the_accepted_rate_is_the_limit() {
        let bucket = limiter(50.0, 10);
        // 200 requests per second for 10 s, evenly spaced.
        let accepted = (0..2_000u64)
            .filter(|i| bucket.check(1 + i * 5_000_000).is_ok())
            .count();
        assert!((500..=511).contains(&accepted), "{accepted}");
    }

    #[test]
    fn threads_share_one_bucket_exactly() {
        let bucket = Arc::new(limiter(1.0, 100));
        let now = now() + 1;
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let bucket = bucket.clone();
                std::thread::spawn(move || (0..100).filter(|_| bucket.check(now).is_ok()).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 100);
    }
}
