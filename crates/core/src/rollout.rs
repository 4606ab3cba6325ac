//! Rolling update decisions: the Deployment controller's surge / unavailability arithmetic over
//! replicas of many revisions, computed from one snapshot (level-triggered: calling it again
//! with the new observation gives the next step, whatever happened in between).

use serde::{Deserialize, Serialize};

use crate::ReplicaView;

/// What the spec asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub revision: String,
    pub replicas: u32,
    /// Replicas allowed above `replicas` while updating.
    pub max_surge: u32,
    /// Replicas allowed below `replicas` (ready) while updating.
    pub max_unavailable: u32,
}

/// Replicas the latest revision should have: `minReplicas`, or, when the predictor autoscales
/// (`scaleMetric`), what the autoscaler last chose (`current`), kept within min..=max.
pub fn desired_replicas(predictor: &ferry_api::PredictorSpec, current: Option<u32>) -> u32 {
    let min = predictor.replicas();
    if predictor.scale_metric.is_none() {
        return min;
    }
    let max = predictor.max_replicas.unwrap_or(min).max(min);
    current.unwrap_or(min).clamp(min, max)
}

impl Target {
    /// Resolve a spec's rollout bounds like a Deployment: surge rounds up, unavailability rounds
    /// down, defaults 25% / 0, and never both zero (then surge becomes 1).
    pub fn from_spec(revision: &str, spec: &ferry_api::InferenceServiceSpec) -> Target {
        Target::with_replicas(revision, spec, spec.predictor.replicas())
    }

    /// As [`Target::from_spec`], for `replicas` chosen elsewhere (an autoscaler: see
    /// [`desired_replicas`]).
    pub fn with_replicas(
        revision: &str,
        spec: &ferry_api::InferenceServiceSpec,
        replicas: u32,
    ) -> Target {
        let rollout = spec.rollout.clone().unwrap_or_default();
        let surge = rollout
            .max_surge
            .unwrap_or(ferry_api::IntOrPercent::Percent("25%".into()))
            .resolve(replicas, true)
            .unwrap_or(1);
        let unavailable = rollout
            .max_unavailable
            .unwrap_or(ferry_api::IntOrPercent::Int(0))
            .resolve(replicas, false)
            .unwrap_or(0)
            .min(replicas);
        let surge = if surge == 0 && unavailable == 0 {
            1
        } else {
            surge
        };
        Target {
            revision: revision.to_string(),
            replicas,
            max_surge: surge,
            max_unavailable: unavailable,
        }
    }
}

/// The next step: start `start` replicas of the target revision, stop the listed replicas
/// (drain first: out of the route table, in-flight requests finish, then SIGTERM).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Step {
    pub start: u32,
    pub stop: Vec<String>,
}

impl Step {
    pub fn is_empty(&self) -> bool {
        self.start == 0 && self.stop.is_empty()
    }
}

/// Decide the next step from the replicas observed now.
pub fn plan(target: &Target, replicas: &[ReplicaView]) -> Step {
    let active: Vec<&ReplicaView> = replicas.iter().filter(|r| !r.terminating).collect();
    let (new, old): (Vec<&ReplicaView>, Vec<&ReplicaView>) =
        active.iter().partition(|r| r.revision == target.revision);
    let count = |list: &[&ReplicaView], ready: bool| {
        list.iter().filter(|r| r.ready() == ready).count() as u32
    };
    let new_ready = count(&new, true);
    let new_unready = count(&new, false);
    let old_ready = count(&old, true);
    let total = active.len() as u32;
    let min_available = target.replicas.saturating_sub(target.max_unavailable);

    let mut stop = Vec::new();
    // Too many of the target revision (scaled down): unready ones go first.
    let new_count = new.len() as u32;
    if new_count > target.replicas {
        let mut extra = sorted_unready_first(&new);
        extra.truncate((new_count - target.replicas) as usize);
        stop.extend(extra.into_iter().map(|r| r.id.clone()));
    }
    let new_kept = new_count.min(target.replicas);

    // Old revisions: remove what keeps `min_available` ready replicas, counting new replicas
    // that are not ready yet as unavailable (they may never become ready).
    if !old.is_empty() {
        let mut budget = i64::from(total) - i64::from(min_available) - i64::from(new_unready);
        let mut ready_spare =
            i64::from(new_ready.min(target.replicas) + old_ready) - i64::from(min_available);
        for replica in sorted_unready_first(&old) {
            if budget <= 0 {
                break;
            }
            if replica.ready() {
                if ready_spare <= 0 {
                    break;
                }
                ready_spare -= 1;
            }
            budget -= 1;
            stop.push(replica.id.clone());
        }
        // Everything of the target revision is ready: the old ones have no purpose left.
        if new_ready >= target.replicas {
            for replica in &old {
                if !stop.contains(&replica.id) {
                    stop.push(replica.id.clone());
                }
            }
        }
    }

    let remaining = total - stop.len() as u32;
    let max_total = target.replicas + target.max_surge;
    let start = target
        .replicas
        .saturating_sub(new_kept)
        .min(max_total.saturating_sub(remaining));
    Step { start, stop }
}

/// Whether the rollout to `target` is complete: exactly the desired replicas, all of the
/// target revision and ready, nothing else left.
pub fn complete(target: &Target, replicas: &[ReplicaView]) -> bool {
    let active: Vec<&ReplicaView> = replicas.iter().filter(|r| !r.terminating).collect();
    active.len() as u32 == target.replicas
        && active
            .iter()
            .all(|r| r.revision == target.revision && r.ready())
}

fn sorted_unready_first<'a>(list: &[&'a ReplicaView]) -> Vec<&'a ReplicaView> {
    let mut sorted: Vec<&ReplicaView> = list.to_vec();
    sorted.sort_by_key(|r| r.ready());
    sorted
}

#[cfg(test)]
mod tests;
