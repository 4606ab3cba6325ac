//! InferenceService status, derived from what was observed (never stored twice): conditions
//! with reasons that name the real failure, revisions with their replicas and traffic.

use std::collections::BTreeMap;

use ferry_api::{Condition, InferenceServiceStatus, RevisionStatus};

use crate::reason::{ConditionState, PlannedEvent, Reason, is_failure};
use crate::rollout::{self, Target};
use crate::{ReplicaHealth, ReplicaView};

/// The conditions of `next` whose status or reason differ from `previous` (or that are new):
/// what a status change says beyond progress.
fn changed<'a>(
    previous: Option<&InferenceServiceStatus>,
    next: &'a InferenceServiceStatus,
) -> impl Iterator<Item = &'a Condition> {
    let before: Vec<(&str, &str, &str)> = previous
        .map(|p| {
            p.conditions
                .iter()
                .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
                .collect()
        })
        .unwrap_or_default();
    next.conditions.iter().filter(move |c| {
        !before.contains(&(c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
    })
}

/// Whether going from `previous` to `next` is progress alone (replica counts, messages): no
/// condition changed its status or reason. Progress may be written lazily; transitions not.
pub fn progress_only(
    previous: Option<&InferenceServiceStatus>,
    next: &InferenceServiceStatus,
) -> bool {
    // A progressive rollout's state is persisted before it is carried out: never lazily.
    // The autoscaler's size, panic and zero are decisions too; its numbers are progress.
    let decided = |s: &InferenceServiceStatus| {
        s.autoscaling.as_ref().map(|a| {
            (
                a.desired_replicas,
                a.panic,
                a.scaled_to_zero,
                a.held_requests > 0,
            )
        })
    };
    previous.is_some()
        && changed(previous, next).next().is_none()
        && previous.is_some_and(|p| p.rollout == next.rollout && decided(p) == decided(next))
}

/// One event for the conditions that turned True or to a failure between `previous` and
/// `next`; `None` when none did (progress, such as `RolloutInProgress`, is no event). Its
/// reason is the first such condition's, its note `Type=Status: message` of each, `; `-joined;
/// a warning when any names a failure.
/// `SpecChanged` for a generation `previous` has not observed: which generation, and its
/// change cause (the `ferry.dev/change-cause` annotation) when it has one.
pub fn spec_changed_event(
    isvc: &ferry_api::InferenceService,
    previous: Option<&InferenceServiceStatus>,
) -> Option<PlannedEvent> {
    let generation = isvc.metadata.generation?;
    if previous
        .and_then(|s| s.observed_generation)
        .is_some_and(|observed| observed >= generation)
    {
        return None;
    }
    let cause = isvc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ferry_api::ANNOTATION_CHANGE_CAUSE))
        .map_or_else(
            || "no change cause recorded (ferry apply --kubeconfig records one)".to_string(),
            |cause| format!("by {cause}"),
        );
    Some(PlannedEvent {
        action: Some(format!("ObserveGeneration{generation}")),
        ..PlannedEvent::new(
            Reason::SpecChanged,
            format!("generation {generation}: {cause}"),
        )
    })
}

pub fn transition_event(
    previous: Option<&InferenceServiceStatus>,
    next: &InferenceServiceStatus,
) -> Option<PlannedEvent> {
    let worth: Vec<&Condition> = changed(previous, next)
        .filter(|c| c.status == "True" || is_failure(&c.reason))
        .collect();
    let first = Reason::parse(&worth.first()?.reason)?;
    let mut event = PlannedEvent::new(
        first,
        worth
            .iter()
            .map(|c| format!("{}={}: {}", c.type_, c.status, c.message))
            .collect::<Vec<_>>()
            .join("; "),
    );
    if worth.iter().any(|c| is_failure(&c.reason)) {
        event.type_ = crate::reason::EventType::Warning;
    }
    Some(event)
}

/// Condition types Ferry sets.
pub const READY: &str = "Ready";
pub const LATEST_REVISION_READY: &str = "LatestRevisionReady";
/// Set only when the spec asks for an Ingress or an HTTPRoute.
pub const INGRESS_READY: &str = "IngressReady";
/// Set only when KEDA scales the predictor (`autoscaling.engine: keda`).
pub const AUTOSCALER_READY: &str = "AutoscalerReady";

/// Everything the status is derived from.
pub struct StatusInputs<'a> {
    pub generation: i64,
    pub target: &'a Target,
    pub replicas: &'a [ReplicaView],
    /// Share of traffic per revision, in percent, as the plan routes it.
    pub traffic_percent: &'a BTreeMap<String, u32>,
    pub startup_timeout_seconds: u64,
    pub url: String,
    /// Revision names, newest first, for ordering `status.revisions`.
    pub revision_order: &'a [String],
    /// Why replicas of the latest revision could not even be created (a cluster's ReplicaSet
    /// `FailedCreate`, e.g. a ResourceQuota), when that happened.
    pub creation_failure: Option<String>,
    /// The external entry point, when the spec asks for one, e.g. `GatewayAPIMissing` where
    /// the cluster does not serve HTTPRoutes.
    pub ingress: Option<ConditionState>,
    /// The AutoscalerReady condition, when an engine outside Ferry scales the predictor.
    pub autoscaler: Option<ConditionState>,
    /// Why no server can run the latest revision's model (cluster mode's ServingRuntimes): its
    /// replicas are not even rendered.
    pub runtime_problem: Option<crate::runtime::RuntimeProblem>,
    /// A progressive rollout's state (`status.rollout`): a rolled back one says so in
    /// LatestRevisionReady.
    pub rollout: Option<&'a ferry_api::RolloutStatus>,
    /// A request wakes the service when nothing is ready (`minReplicas: 0` under Ferry's
    /// autoscaler): no ready replica is then no failure.
    pub wakes_on_request: bool,
}

/// Why the latest revision is not ready (or that it is).
pub fn latest_revision_condition(inputs: &StatusInputs<'_>) -> ConditionState {
    let target = inputs.target;
    let latest: Vec<&ReplicaView> = inputs
        .replicas
        .iter()
        .filter(|r| r.revision == target.revision && !r.terminating)
        .collect();
    let ready = latest.iter().filter(|r| r.ready()).count() as u32;
    if let Some(problem) = &inputs.runtime_problem {
        return ConditionState::new(false, problem.reason, problem.message.clone());
    }
    let progress = || {
        format!(
            "{ready}/{} replicas of {} ready",
            target.replicas, target.revision
        )
    };
    if ready >= target.replicas {
        return ConditionState::new(true, Reason::RevisionReady, progress());
    }
    // A replica that could not fetch its model says so in its words (the server's load error,
    // a pod's termination message): the reason is named, the store's answer kept.
    for replica in &latest {
        let words = match &replica.health {
            ReplicaHealth::CrashLoop { last_exit, .. } => Some(last_exit),
            ReplicaHealth::ModelNotReady { reason, .. } => Some(reason),
            _ => None,
        };
        if let Some(failure) = words.and_then(|w| fetch_failure(w)) {
            return ConditionState::new(
                false,
                Reason::ModelFetchFailed,
                format!("replica {}: {failure}", replica.id),
            );
        }
    }
    for replica in &latest {
        if let ReplicaHealth::CrashLoop {
            restarts,
            last_exit,
        } = &replica.health
        {
            return ConditionState::new(
                false,
                Reason::CrashLoopBackOff,
                format!(
                    "replica {} restarted {restarts} times; last exit: {last_exit}",
                    replica.id
                ),
            );
        }
    }
    for replica in &latest {
        if let ReplicaHealth::ContainerFailed { reason, message } = &replica.health {
            return ConditionState::new(
                false,
                *reason,
                format!("replica {}: {message}", replica.id),
            );
        }
    }
    if let Some(message) = &inputs.creation_failure {
        return ConditionState::new(false, Reason::FailedCreate, message.clone());
    }
    for replica in &latest {
        if let ReplicaHealth::Unschedulable { message } = &replica.health {
            return ConditionState::new(
                false,
                Reason::Unschedulable,
                format!("replica {}: {message}", replica.id),
            );
        }
    }
    for replica in &latest {
        if let ReplicaHealth::ModelNotReady { reason, .. } = &replica.health {
            return ConditionState::new(
                false,
                Reason::ModelNotReady,
                format!("replica {}: {reason}", replica.id),
            );
        }
    }
    for replica in &latest {
        if let ReplicaHealth::Starting { for_seconds } = replica.health
            && for_seconds > inputs.startup_timeout_seconds
        {
            return ConditionState::new(
                false,
                Reason::ProgressDeadlineExceeded,
                format!(
                    "replica {} not ready after {for_seconds}s (startupTimeoutSeconds {})",
                    replica.id, inputs.startup_timeout_seconds
                ),
            );
        }
    }
    ConditionState::new(false, Reason::RolloutInProgress, progress())
}

/// Derive the status; `previous` keeps transition times of conditions whose status did not
/// change, `now` (RFC 3339) stamps the others.
pub fn derive(
    inputs: &StatusInputs<'_>,
    previous: Option<&InferenceServiceStatus>,
    now: &str,
) -> InferenceServiceStatus {
    let mut latest = latest_revision_condition(inputs);
    if let Some(rollout) = inputs.rollout
        && rollout.phase == ferry_api::RolloutPhase::Aborted
    {
        let reason = rollout
            .reason
            .as_deref()
            .and_then(Reason::parse)
            .unwrap_or(Reason::RolledBackAutomatically);
        latest = ConditionState::new(false, reason, rollout.message.clone());
    }
    let serving: Vec<String> = inputs
        .traffic_percent
        .iter()
        .filter(|(_, pct)| **pct > 0)
        .map(|(rev, pct)| format!("{rev} ({pct}%)"))
        .collect();
    let ready = if serving.is_empty() {
        if inputs.wakes_on_request && !latest.reason.is_failure() {
            if inputs.target.replicas == 0 {
                ConditionState::new(
                    true,
                    Reason::ScaledToZero,
                    "scaled to zero: the next request starts a replica and waits for it",
                )
            } else {
                ConditionState::new(
                    true,
                    Reason::ColdStart,
                    format!(
                        "cold start: {} starting, requests held until it is ready",
                        inputs.target.revision
                    ),
                )
            }
        } else if latest.ok {
            ConditionState::new(false, Reason::NoReadyReplicas, "no replica is ready")
        } else {
            ConditionState::new(false, latest.reason, latest.message.clone())
        }
    } else if latest.ok && rollout::complete(inputs.target, inputs.replicas) {
        ConditionState::new(
            true,
            Reason::Serving,
            format!("serving {}", serving.join(", ")),
        )
    } else if latest.ok {
        ConditionState::new(
            true,
            Reason::Serving,
            format!("serving {}; old replicas draining", serving.join(", ")),
        )
    } else {
        ConditionState::new(
            true,
            Reason::Serving,
            format!(
                "serving {}; latest revision {} not ready: {}",
                serving.join(", "),
                inputs.target.revision,
                latest.reason
            ),
        )
    };

    let mut per_revision: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for replica in inputs.replicas.iter().filter(|r| !r.terminating) {
        let entry = per_revision.entry(replica.revision.as_str()).or_default();
        entry.0 += 1;
        entry.1 += u32::from(replica.ready());
    }
    per_revision
        .entry(inputs.target.revision.as_str())
        .or_default();
    let position = |name: &str| {
        inputs
            .revision_order
            .iter()
            .position(|n| n == name)
            .unwrap_or(usize::MAX)
    };
    let mut revisions: Vec<RevisionStatus> = per_revision
        .into_iter()
        .map(|(name, (replicas, ready))| RevisionStatus {
            name: name.to_string(),
            replicas,
            ready_replicas: ready,
            traffic_percent: inputs.traffic_percent.get(name).copied().unwrap_or(0),
        })
        .collect();
    revisions.sort_by_key(|r| position(&r.name));

    let mut conditions = vec![
        condition(READY, &ready, previous, now),
        condition(LATEST_REVISION_READY, &latest, previous, now),
    ];
    if let Some(ingress) = &inputs.ingress {
        conditions.push(condition(INGRESS_READY, ingress, previous, now));
    }
    if let Some(autoscaler) = &inputs.autoscaler {
        conditions.push(condition(AUTOSCALER_READY, autoscaler, previous, now));
    }
    InferenceServiceStatus {
        observed_generation: Some(inputs.generation),
        url: Some(inputs.url.clone()),
        latest_revision: Some(inputs.target.revision.clone()),
        revisions,
        conditions,
        rollout: inputs.rollout.cloned(),
        experiment: None,
        shadow: None,
        autoscaling: None,
    }
}

mod fetch;
mod progress;
pub use fetch::fetch_failure;
pub use progress::{RolloutProgress, rollout_progress};

fn condition(
    type_: &str,
    state: &ConditionState,
    previous: Option<&InferenceServiceStatus>,
    now: &str,
) -> Condition {
    let status = if state.ok { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or_else(|| Some(now.to_string()));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: state.reason.as_str().to_string(),
        message: state.message.clone(),
        last_transition_time,
    }
}

#[cfg(test)]
mod tests;
