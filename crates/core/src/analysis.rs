//! The router's numbers per revision in a form that adds up across router replicas (counters
//! and latency bucket counts, never precomputed quantiles), windows of them, and the analysis
//! verdict a canary is judged by.

use std::collections::BTreeMap;

use ferry_api::{AnalysisSpec, AnalysisStatus, Verdict};
use serde::{Deserialize, Serialize};

/// Where a router serves its per-revision numbers as JSON (the operator collects them there).
pub const NUMBERS_PATH: &str = "/ferry/v1/revision-metrics";

/// Latency buckets: upper bounds 50 µs · √2ⁱ for i in 0..BUCKETS (the last about 37 s), then
/// one for everything slower. √2 apart, so a p99 is known within about 20 %.
pub const BUCKETS: usize = 40;
const FIRST_BOUND_SECONDS: f64 = 50e-6;

/// The upper bound of bucket `i`, in seconds (`f64::INFINITY` for the last).
pub fn bucket_bound(i: usize) -> f64 {
    if i >= BUCKETS {
        f64::INFINITY
    } else {
        FIRST_BOUND_SECONDS * std::f64::consts::SQRT_2.powi(i as i32)
    }
}

/// The bucket a latency of `seconds` falls in.
pub fn bucket_of(seconds: f64) -> usize {
    if seconds <= FIRST_BOUND_SECONDS {
        return 0;
    }
    let index = (2.0 * (seconds / FIRST_BOUND_SECONDS).log2()).ceil();
    (index as usize).min(BUCKETS)
}

/// What the router saw of one revision (cumulative since it started, or over a window).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RevisionMetrics {
    /// Attempts that reached (or tried to reach) a replica of the revision.
    pub requests: u64,
    /// 5xx answers, connection failures and timeouts among them.
    pub errors: u64,
    /// Of the errors, the attempts that got no answer at all (refused, reset, timed out).
    #[serde(default)]
    pub unreachable: u64,
    /// Latency of the answered attempts, by bucket (`BUCKETS + 1` counts).
    pub latency: Vec<u64>,
}

impl RevisionMetrics {
    /// Add `other` (another router replica's numbers).
    pub fn merge(&mut self, other: &RevisionMetrics) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.unreachable += other.unreachable;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine += theirs;
        }
    }

    /// What happened since `baseline`; when a counter went down (the router restarted), all
    /// of `self` is new.
    pub fn since(&self, baseline: &RevisionMetrics) -> RevisionMetrics {
        let reset = self.requests < baseline.requests
            || self.errors < baseline.errors
            || self.unreachable < baseline.unreachable
            || self
                .latency
                .iter()
                .zip(&baseline.latency)
                .any(|(now, then)| now < then);
        if reset {
            return self.clone();
        }
        RevisionMetrics {
            requests: self.requests - baseline.requests,
            errors: self.errors - baseline.errors,
            unreachable: self.unreachable - baseline.unreachable,
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, now)| now - baseline.latency.get(i).copied().unwrap_or(0))
                .collect(),
        }
    }

    /// Errors in percent of requests (0 without requests).
    pub fn error_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 * 100.0 / self.requests as f64
        }
    }

    /// The `q` quantile of the latency in milliseconds, interpolated within its bucket; `None`
    /// without answered requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0);
        let mut seen = 0u64;
        for (i, count) in self.latency.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let upper = bucket_bound(i);
                let lower = if i == 0 { 0.0 } else { bucket_bound(i - 1) };
                if upper.is_infinite() {
                    return Some(lower * 1e3);
                }
                let within = (rank - seen as f64) / *count as f64;
                return Some((lower + (upper - lower) * within) * 1e3);
            }
            seen += count;
        }
        None
    }
}

/// The router's numbers for every revision of one service, by revision name.
pub type ServiceMetrics = BTreeMap<String, RevisionMetrics>;

/// Merge `other` into `into` (one router replica's numbers into the sum).
pub fn merge(into: &mut ServiceMetrics, other: &ServiceMetrics) {
    for (revision, metrics) in other {
        into.entry(revision.clone()).or_default().merge(metrics);
    }
}

/// What happened in each revision since `baseline`.
pub fn since(now: &ServiceMetrics, baseline: &ServiceMetrics) -> ServiceMetrics {
    now.iter()
        .map(|(revision, metrics)| {
            let delta = match baseline.get(revision) {
                Some(before) => metrics.since(before),
                None => metrics.clone(),
            };
            (revision.clone(), delta)
        })
        .collect()
}

/// The router's numbers over a window that started at `started` and ends now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub started: k8s_openapi::jiff::Timestamp,
    pub revisions: ServiceMetrics,
}

/// An executor's analysis windows, per service: when each began and the router's totals then.
/// Kept in memory (after a restart a window begins at the first look); the rollout's state
/// itself is persisted in the status.
#[derive(Debug, Default)]
pub struct Windows<K> {
    began: std::collections::HashMap<K, (k8s_openapi::jiff::Timestamp, ServiceMetrics)>,
}

impl<K: std::hash::Hash + Eq + Clone> Windows<K> {
    /// The numbers of `key` since its window began (beginning one now at the first look),
    /// `current` being the router's totals.
    pub fn window(
        &mut self,
        key: &K,
        current: &ServiceMetrics,
        now: k8s_openapi::jiff::Timestamp,
    ) -> Window {
        let (started, baseline) = self
            .began
            .entry(key.clone())
            .or_insert_with(|| (now, current.clone()));
        Window {
            started: *started,
            revisions: since(current, baseline),
        }
    }

    /// An analysis was judged: the next window of `key` begins now.
    pub fn restart(&mut self, key: K, current: ServiceMetrics, now: k8s_openapi::jiff::Timestamp) {
        self.began.insert(key, (now, current));
    }
}

/// Judge the new revision's numbers over one interval (`stable`'s, of the same interval, for
/// the latency ratio).
pub fn judge(
    spec: &AnalysisSpec,
    canary: &RevisionMetrics,
    stable: Option<&RevisionMetrics>,
    now: &str,
) -> AnalysisStatus {
    let p99 = canary.quantile_ms(0.99);
    let stable_p99 = stable.and_then(|s| s.quantile_ms(0.99));
    let error_percent = canary.error_percent();
    let mut failures = Vec::new();
    let verdict = if canary.requests < spec.min_requests() {
        Verdict::Inconclusive
    } else {
        if error_percent > spec.max_error_percent() {
            failures.push(format!(
                "error rate {error_percent:.1}% > maxErrorPercent {}",
                spec.max_error_percent()
            ));
        }
        if let (Some(limit), Some(p99)) = (spec.max_p99_latency_ms, p99)
            && p99 > limit
        {
            failures.push(format!("p99 {p99:.1} ms > maxP99LatencyMs {limit}"));
        }
        if let (Some(limit), Some(p99), Some(stable)) =
            (spec.max_p99_latency_ratio, p99, stable_p99)
            && stable > 0.0
            && p99 / stable > limit
        {
            failures.push(format!(
                "p99 {p99:.1} ms is {:.1}× stable's {stable:.1} ms > maxP99LatencyRatio {limit}",
                p99 / stable
            ));
        }
        if failures.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed
        }
    };
    let figures = format!(
        "{} requests, {error_percent:.1}% errors ({} 5xx, {} unanswered), p99 {}",
        canary.requests,
        canary.errors - canary.unreachable,
        canary.unreachable,
        p99.map_or("-".to_string(), |p| format!("{p:.1} ms"))
    );
    let message = match verdict {
        Verdict::Inconclusive => format!(
            "inconclusive: {} requests < minRequests {} ({figures})",
            canary.requests,
            spec.min_requests()
        ),
        Verdict::Passed => format!("passed: {figures}"),
        Verdict::Failed => format!("failed: {} ({figures})", failures.join("; ")),
    };
    AnalysisStatus {
        time: now.to_string(),
        verdict,
        requests: canary.requests,
        error_percent: (error_percent * 100.0).round() / 100.0,
        p99_latency_ms: p99.map(|p| (p * 1000.0).round() / 1000.0),
        stable_p99_latency_ms: stable_p99.map(|p| (p * 1000.0).round() / 1000.0),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_latencies(ms: &[f64], errors: u64) -> RevisionMetrics {
        let mut m = RevisionMetrics {
            requests: ms.len() as u64 + errors,
            errors,
            unreachable: 0,
            latency: vec![0; BUCKETS + 1],
        };
        for l in ms {
            m.latency[bucket_of(l / 1e3)] += 1;
        }
        m
    }

    #[test]
    fn buckets_bound_what_falls_in_them() {
        for seconds in [1e-6, 50e-6, 1e-4, 1e-3, 0.0123, 0.25, 3.0, 100.0] {
            let i = bucket_of(seconds);
            assert!(seconds <= bucket_bound(i), "{seconds} in {i}");
            if i > 0 {
                assert!(seconds > bucket_bound(i - 1), "{seconds} above {}", i - 1);
            }
        }
    }

    #[test]
    fn a_p99_is_within_its_bucket_width() {
        let mut ms: Vec<f64> = vec![2.0; 990];
        ms.extend(vec![40.0; 10]);
        let m = with_latencies(&ms, 0);
        let p99 = m.quantile_ms(0.99).unwrap();
        assert!((2.0 / 1.42..=2.0 * 1.42).contains(&p99), "{p99}");
        let p999 = m.quantile_ms(0.999).unwrap();
        assert!((40.0 / 1.42..=40.0 * 1.42).contains(&p999), "{p999}");
    }

    #[test]
    fn windows_subtract_and_survive_a_router_restart() {
        let before = with_latencies(&[1.0, 1.0], 1);
        let after = with_latencies(&[1.0, 1.0, 1.0, 5.0], 2);
        let delta = after.since(&before);
        assert_eq!((delta.requests, delta.errors), (3, 1));
        assert_eq!(delta.latency.iter().sum::<u64>(), 2);
        // The router restarted: its counters began again below the baseline.
        let restarted = with_latencies(&[1.0], 0);
        assert_eq!(restarted.since(&before), restarted);
    }

    #[test]
    fn merged_numbers_are_the_sum_of_the_parts() {
        let mut a = ServiceMetrics::new();
        a.insert("r".into(), with_latencies(&[1.0, 2.0], 1));
        let mut b = ServiceMetrics::new();
        b.insert("r".into(), with_latencies(&[3.0], 0));
        b.insert("s".into(), with_latencies(&[3.0], 0));
        merge(&mut a, &b);
        assert_eq!(a["r"].requests, 4);
        assert_eq!(a["r"].latency.iter().sum::<u64>(), 3);
        assert_eq!(a["s"].requests, 1);
    }

    #[test]
    fn the_verdict_names_the_rule_that_failed() {
        let spec = AnalysisSpec {
            min_requests: Some(10),
            max_error_percent: Some(1.0),
            max_p99_latency_ms: Some(50.0),
            max_p99_latency_ratio: Some(2.0),
            ..AnalysisSpec::default()
        };
        let stable = with_latencies(&[2.0; 100], 0);
        let few = judge(&spec, &with_latencies(&[2.0; 5], 0), Some(&stable), "t");
        assert_eq!(few.verdict, Verdict::Inconclusive);
        let good = judge(&spec, &with_latencies(&[2.0; 50], 0), Some(&stable), "t");
        assert_eq!(good.verdict, Verdict::Passed, "{}", good.message);
        let errors = judge(&spec, &with_latencies(&[2.0; 50], 5), Some(&stable), "t");
        assert_eq!(errors.verdict, Verdict::Failed);
        assert!(
            errors.message.contains("maxErrorPercent"),
            "{}",
            errors.message
        );
        let slow = judge(&spec, &with_latencies(&[12.0; 50], 0), Some(&stable), "t");
        assert_eq!(slow.verdict, Verdict::Failed);
        assert!(
            slow.message.contains("maxP99LatencyRatio"),
            "{}",
            slow.message
        );
        assert!(
            !slow.message.contains("maxP99LatencyMs"),
            "{}",
            slow.message
        );
        let very_slow = judge(&spec, &with_latencies(&[80.0; 50], 0), None, "t");
        assert!(
            very_slow.message.contains("maxP99LatencyMs"),
            "{}",
            very_slow.message
        );
    }
}
