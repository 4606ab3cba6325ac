//! Where a rollout stands, read back from an InferenceService's status: what `ferry apply
//! --wait` and `ferry rollout status` wait on.

use super::{LATEST_REVISION_READY, is_failure};

/// Where a rollout stands, read from an InferenceService's status (`ferry apply --wait`,
/// `ferry rollout status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutProgress {
    /// The latest revision is ready and no replica of another one is left.
    pub done: bool,
    /// The latest revision cannot become ready without a change: `Reason: message`.
    pub failed: Option<String>,
    pub message: String,
}

/// The progress of `isvc`'s rollout, from its status.
pub fn rollout_progress(isvc: &ferry_api::InferenceService) -> RolloutProgress {
    let generation = isvc.metadata.generation.unwrap_or(0);
    let status = isvc.status.clone().unwrap_or_default();
    if status.observed_generation.unwrap_or(0) < generation {
        return RolloutProgress {
            done: false,
            failed: None,
            message: format!("waiting for generation {generation} to be observed"),
        };
    }
    let latest = status.latest_revision.clone().unwrap_or_default();
    let desired = isvc.spec.predictor.replicas();
    let ready = status
        .revisions
        .iter()
        .find(|r| r.name == latest)
        .map_or(0, |r| r.ready_replicas);
    // An experiment's variants run beside the latest revision: they are not left over.
    let variants: Vec<String> = isvc
        .variants()
        .into_iter()
        .map(|v| v.3)
        .chain(isvc.shadow().map(|s| s.2))
        .collect();
    let old: u32 = status
        .revisions
        .iter()
        .filter(|r| r.name != latest && !variants.contains(&r.name))
        .map(|r| r.replicas)
        .sum();
    let latest_condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == LATEST_REVISION_READY);
    if let Some(c) = latest_condition
        && c.status == "False"
        && is_failure(&c.reason)
    {
        let failure = format!("{}: {}", c.reason, c.message);
        return RolloutProgress {
            done: false,
            failed: Some(failure.clone()),
            message: failure,
        };
    }
    let done = ready >= desired && old == 0 && latest_condition.is_some_and(|c| c.status == "True");
    let message = if done {
        format!("rolled out {latest}: {ready}/{desired} replicas ready")
    } else if let Some(rollout) = status
        .rollout
        .as_ref()
        .filter(|r| r.canary_revision == latest)
    {
        format!(
            "{:?} {latest}: {}% of traffic, step {} of {} ({:?}): {}",
            rollout.strategy,
            rollout.weight,
            rollout.step,
            isvc.spec.rollout.as_ref().map_or(0, |r| r.steps.len()),
            rollout.phase,
            rollout.message
        )
    } else {
        format!("rolling out {latest}: {ready}/{desired} replicas ready, {old} old replicas left")
    };
    RolloutProgress {
        done,
        failed: None,
        message,
    }
}
