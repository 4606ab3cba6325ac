//! A/B experiments in the plan: the variants' revisions run beside the predictor's (the
//! control), sized by their weight; traffic is split by weight, the control's share spread
//! over its own revisions as a rolling update spreads it; the figures per variant (requests,
//! errors, p99, rewards with a 95 % interval) come from the router's numbers.

use std::collections::BTreeMap;

use ferry_api::{CONTROL_VARIANT, ExperimentStatus, InferenceService, VariantStatus};
use serde::{Deserialize, Serialize};

use crate::analysis::{RevisionMetrics, ServiceMetrics};
use crate::progressive::replicas_for;

/// Rewards of one variant: count, sum and sum of squares (they add up across routers).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardStats {
    pub count: u64,
    pub sum: f64,
    pub sum_squares: f64,
}

impl RewardStats {
    pub fn add(&mut self, reward: f64) {
        self.count += 1;
        self.sum += reward;
        self.sum_squares += reward * reward;
    }

    pub fn merge(&mut self, other: &RewardStats) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_squares += other.sum_squares;
    }

    /// What came since `baseline` (all of `self` when its count went down: a restart).
    pub fn since(&self, baseline: &RewardStats) -> RewardStats {
        if self.count < baseline.count {
            return *self;
        }
        RewardStats {
            count: self.count - baseline.count,
            sum: self.sum - baseline.sum,
            sum_squares: self.sum_squares - baseline.sum_squares,
        }
    }

    /// The mean and its 95 % interval (normal approximation; the interval needs two rewards).
    pub fn mean_interval(&self) -> Option<(f64, f64, f64)> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        if self.count < 2 {
            return Some((mean, mean, mean));
        }
        let variance = ((self.sum_squares - n * mean * mean) / (n - 1.0)).max(0.0);
        let half = 1.96 * (variance / n).sqrt();
        Some((mean, mean - half, mean + half))
    }
}

/// Rewards per variant name.
pub type Rewards = BTreeMap<String, RewardStats>;

/// A variant's (or the shadow's) revision and what the plan gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Companion {
    pub variant: String,
    pub revision: String,
    pub weight: u32,
    pub replicas: u32,
    /// The shadow: no traffic of its own, copies of live requests.
    pub shadow: bool,
}

/// A shadow's counters (they add up across routers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShadowCounts {
    pub live: u64,
    pub mirrored: u64,
    pub agreed: u64,
    pub disagreed: u64,
    pub failed: u64,
    pub dropped: u64,
}

impl ShadowCounts {
    pub fn merge(&mut self, other: &ShadowCounts) {
        self.live += other.live;
        self.mirrored += other.mirrored;
        self.agreed += other.agreed;
        self.disagreed += other.disagreed;
        self.failed += other.failed;
        self.dropped += other.dropped;
    }

    /// What came since `baseline` (all of `self` after a restart).
    pub fn since(&self, baseline: &ShadowCounts) -> ShadowCounts {
        if self.live < baseline.live || self.mirrored < baseline.mirrored {
            return *self;
        }
        ShadowCounts {
            live: self.live - baseline.live,
            mirrored: self.mirrored - baseline.mirrored,
            agreed: self.agreed.saturating_sub(baseline.agreed),
            disagreed: self.disagreed.saturating_sub(baseline.disagreed),
            failed: self.failed.saturating_sub(baseline.failed),
            dropped: self.dropped.saturating_sub(baseline.dropped),
        }
    }
}

/// The shadow's figures for the status.
pub fn shadow_status(
    revision: &str,
    percent: u32,
    counts: &ShadowCounts,
) -> ferry_api::ShadowStatus {
    let compared = counts.agreed + counts.disagreed;
    ferry_api::ShadowStatus {
        revision: revision.to_string(),
        percent,
        live: counts.live,
        mirrored: counts.mirrored,
        agreed: counts.agreed,
        disagreed: counts.disagreed,
        agreement_percent: (compared > 0)
            .then(|| (counts.agreed as f64 * 1e4 / compared as f64).round() / 100.0),
        failed: counts.failed,
        dropped: counts.dropped,
    }
}

/// The experiment's variant revisions of `isvc` with a fleet of `total` replicas: each sized
/// by its weight (rounded up, at least one).
pub fn companions(isvc: &InferenceService, total: u32) -> Vec<Companion> {
    let mut out: Vec<Companion> = isvc
        .variants()
        .into_iter()
        .map(|(variant, weight, _, revision)| Companion {
            variant,
            revision,
            weight,
            replicas: replicas_for(total.max(1), weight).max(1),
            shadow: false,
        })
        .collect();
    if let Some((percent, _, revision)) = isvc.shadow() {
        out.push(Companion {
            variant: String::new(),
            revision,
            weight: 0,
            replicas: replicas_for(total.max(1), percent).max(1),
            shadow: true,
        });
    }
    out
}

/// Traffic weights with an experiment: each variant its weight, the control's share spread
/// over the control's revisions in proportion to `control` (the rolling update's weights), in
/// units of 1/100 percent.
pub fn weights(companions: &[Companion], control: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
    let share = 100u32.saturating_sub(companions.iter().map(|c| c.weight).sum());
    let total: u32 = control.values().sum();
    let mut out: BTreeMap<String, u32> = control
        .iter()
        .map(|(revision, weight)| {
            let scaled = (u64::from(share) * 100 * u64::from(*weight))
                .checked_div(u64::from(total))
                .unwrap_or(0);
            (revision.clone(), scaled as u32)
        })
        .collect();
    for companion in companions {
        out.insert(companion.revision.clone(), companion.weight * 100);
    }
    out.retain(|_, w| *w > 0);
    out
}

/// The variant name of each revision that takes traffic: the companions' own, `control` for
/// the rest.
pub fn variant_names(
    companions: &[Companion],
    weights: &BTreeMap<String, u32>,
) -> BTreeMap<String, String> {
    weights
        .keys()
        .map(|revision| {
            let name = companions
                .iter()
                .find(|c| &c.revision == revision)
                .map_or(CONTROL_VARIANT.to_string(), |c| c.variant.clone());
            (revision.clone(), name)
        })
        .collect()
}

/// The figures per variant from the router's totals (`numbers` per revision, `rewards` per
/// variant): the control adds up its revisions.
pub fn figures(
    companions: &[Companion],
    names: &BTreeMap<String, String>,
    numbers: &ServiceMetrics,
    rewards: &Rewards,
) -> ExperimentStatus {
    let share = 100u32.saturating_sub(companions.iter().map(|c| c.weight).sum());
    let mut rows: Vec<(String, String, u32)> = vec![(
        CONTROL_VARIANT.to_string(),
        names
            .iter()
            .filter(|(_, n)| n.as_str() == CONTROL_VARIANT)
            .map(|(r, _)| r.clone())
            .collect::<Vec<_>>()
            .join(","),
        share,
    )];
    rows.extend(
        companions
            .iter()
            .filter(|c| !c.shadow)
            .map(|c| (c.variant.clone(), c.revision.clone(), c.weight)),
    );
    let variants = rows
        .into_iter()
        .map(|(name, revisions, weight)| {
            let mut sum = RevisionMetrics::default();
            for revision in revisions.split(',') {
                if let Some(m) = numbers.get(revision) {
                    sum.merge(m);
                }
            }
            let reward = rewards.get(&name).copied().unwrap_or_default();
            let interval = reward.mean_interval();
            let round = |x: f64| (x * 1e4).round() / 1e4;
            VariantStatus {
                name,
                revision: revisions,
                weight,
                requests: sum.requests,
                errors: sum.errors,
                error_percent: round(sum.error_percent()),
                p99_latency_ms: sum.quantile_ms(0.99).map(round),
                feedback: reward.count,
                mean_reward: interval.map(|i| round(i.0)),
                reward_low: interval.map(|i| round(i.1)),
                reward_high: interval.map(|i| round(i.2)),
            }
        })
        .collect();
    ExperimentStatus { variants }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_share_spreads_over_its_revisions_and_variants_keep_theirs() {
        let companions = vec![Companion {
            variant: "mlp".into(),
            revision: "iris-m".into(),
            weight: 30,
            replicas: 1,
            shadow: false,
        }];
        let control = BTreeMap::from([("iris-a".to_string(), 1), ("iris-b".to_string(), 3)]);
        let w = weights(&companions, &control);
        assert_eq!(w["iris-m"], 3000);
        assert_eq!(w["iris-a"] + w["iris-b"], 7000);
        assert_eq!(w["iris-a"] * 3, w["iris-b"]);
        let names = variant_names(&companions, &w);
        assert_eq!(names["iris-a"], "control");
        assert_eq!(names["iris-m"], "mlp");
    }

    #[test]
    fn rewards_give_a_mean_with_its_interval_and_add_up() {
        let mut a = RewardStats::default();
        for r in [1.0, 0.0, 1.0, 1.0] {
            a.add(r);
        }
        let (mean, low, high) = a.mean_interval().unwrap();
        assert!((mean - 0.75).abs() < 1e-9);
        assert!(low < mean && mean < high && high - low > 0.5);
        let mut b = RewardStats::default();
        b.add(0.5);
        a.merge(&b);
        assert_eq!(a.count, 5);
        assert_eq!(a.since(&b).count, 4);
    }
}
