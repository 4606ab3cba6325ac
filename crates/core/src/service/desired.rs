//! The service plan of a progressive rollout: which revision is stable, the state machine's
//! decision, and the replica counts it wants turned into starts, stops and count changes.

use std::collections::BTreeMap;

use ferry_api::{
    CanaryStep, InferenceService, RolloutControls, RolloutPhase, RolloutSpec, RolloutStrategy,
};
use k8s_openapi::jiff::Timestamp;

use super::counts::count_change;
use super::{Observation, RevisionChange, Signals};
use crate::ReplicaView;
use crate::progressive::{self, RolloutDecision, RolloutInputs};
use crate::reason::{PlannedEvent, Reason};
use crate::rollout::Target;
use crate::status::{self, StatusInputs};

/// The stable revision of a progressive rollout to `latest`: the one the persisted state
/// names, else the one a finished rollout left serving, else the other revision with the most
/// ready replicas. `None` when there is none (a first rollout, or `latest` is stable again):
/// then a rolling update does the rest.
fn stable_revision(history: &[String], observed: &Observation<'_>) -> Option<String> {
    let latest = observed.latest;
    let exists = |revision: &str| observed.scale.contains_key(revision);
    let previous = observed.previous_status.and_then(|s| s.rollout.as_ref());
    // Back to the stable revision (`ferry rollout undo`): it is running, nothing to roll out
    // progressively; the rolling plan switches to it at once.
    if previous.is_some_and(|p| p.stable_revision == latest) {
        return None;
    }
    let named = match previous {
        // A blue-green switch keeps its old revision warm for a while after it succeeded.
        Some(p) if p.canary_revision == latest => (p.phase != RolloutPhase::Succeeded
            || p.strategy == RolloutStrategy::BlueGreen)
            .then(|| p.stable_revision.clone()),
        Some(p) if p.phase == RolloutPhase::Succeeded => Some(p.canary_revision.clone()),
        Some(p) => Some(p.stable_revision.clone()),
        None => None,
    };
    if let Some(name) = named.filter(|n| n != latest && exists(n)) {
        return Some(name);
    }
    if previous.is_some_and(|p| p.canary_revision == latest && p.phase == RolloutPhase::Succeeded) {
        return None;
    }
    let ready = |revision: &str| {
        observed
            .replicas
            .iter()
            .filter(|r| r.revision == revision && !r.terminating && r.ready())
            .count()
    };
    let position = |revision: &str| history.iter().position(|h| h == revision);
    observed
        .scale
        .keys()
        .filter(|r| *r != latest && ready(r) > 0)
        .max_by_key(|r| (ready(r), std::cmp::Reverse(position(r))))
        .cloned()
}

/// The rollout the spec asks for, when progressive: `spec.rollout`; KServe's manual canary
/// (`canaryTrafficPercent`) as one step held until promoted; and, when neither any more while a
/// rollout of the latest revision is on (the percentage removed, the strategy set to
/// rolling), a promotion: no step left, straight to 100 %.
fn effective_rollout(isvc: &InferenceService, observed: &Observation<'_>) -> Option<RolloutSpec> {
    let spec = isvc.spec.rollout.clone().unwrap_or_default();
    if let Some(percent) = isvc.spec.predictor.canary_traffic_percent {
        return Some(RolloutSpec {
            strategy: Some(RolloutStrategy::Canary),
            steps: vec![CanaryStep {
                weight: percent.min(100),
                pause: Some(ferry_api::UNTIL_PROMOTED.to_string()),
            }],
            ..spec
        });
    }
    if progressive::is_progressive(Some(&spec)) {
        return Some(spec);
    }
    let previous = observed.previous_status?.rollout.as_ref()?;
    let active = !previous.phase.is_finished();
    (active && previous.canary_revision == observed.latest).then(|| RolloutSpec {
        strategy: Some(RolloutStrategy::Canary),
        steps: Vec::new(),
        ..spec
    })
}

/// The state machine's decision, when the spec rolls out progressively and there is a stable
/// revision to roll out from.
pub(super) fn progressive_decision(
    isvc: &InferenceService,
    history: &[String],
    observed: &Observation<'_>,
    signals: &Signals,
    total: u32,
    now: Timestamp,
) -> Option<RolloutDecision> {
    if observed.runtime_problem.is_some() {
        return None;
    }
    let spec = &effective_rollout(isvc, observed)?;
    let stable = stable_revision(history, observed)?;
    let latest = observed.latest;
    let mut ready = BTreeMap::new();
    for replica in observed
        .replicas
        .iter()
        .filter(|r| !r.terminating && r.ready())
    {
        *ready.entry(replica.revision.clone()).or_insert(0) += 1;
    }
    let probe = Target::with_replicas(latest, &isvc.spec, 1);
    let inputs = StatusInputs {
        generation: observed.generation,
        target: &probe,
        replicas: observed.replicas,
        traffic_percent: &BTreeMap::new(),
        startup_timeout_seconds: u64::from(isvc.spec.predictor.startup_timeout_seconds()),
        url: String::new(),
        revision_order: history,
        creation_failure: observed.creation_failure.clone(),
        ingress: None,
        autoscaler: None,
        runtime_problem: None,
        rollout: None,
        wakes_on_request: false,
    };
    let condition = status::latest_revision_condition(&inputs);
    let canary_failure = (!condition.ok && condition.reason.is_failure())
        .then_some((condition.reason, condition.message));
    let annotations = isvc.metadata.annotations.clone().unwrap_or_default();
    let surge = Target::with_replicas(latest, &isvc.spec, total).max_surge;
    Some(progressive::decide(&RolloutInputs {
        spec,
        total,
        surge,
        previous: observed.previous_status.and_then(|s| s.rollout.as_ref()),
        latest,
        stable: &stable,
        ready: &ready,
        window: signals.window.as_ref(),
        controls: RolloutControls::read(&annotations, latest),
        canary_failure,
        now,
    }))
}

/// Replicas to start per revision, replicas to stop, counts after, and what changed.
pub(super) type Scaled = (
    BTreeMap<String, u32>,
    Vec<String>,
    BTreeMap<String, u32>,
    Vec<RevisionChange>,
);

/// Starts, stops, counts and changes that bring every revision to `desired` (a revision not
/// named wants none and retires once it has none left; the latest keeps its objects).
pub(super) fn scale_to(
    latest: &str,
    desired: &BTreeMap<String, u32>,
    observed: &Observation<'_>,
) -> Scaled {
    let mut revisions: Vec<&String> = observed.scale.keys().chain(desired.keys()).collect();
    revisions.sort();
    revisions.dedup();
    let mut start = BTreeMap::new();
    let mut stop = Vec::new();
    let mut scale = BTreeMap::new();
    let mut changes = Vec::new();
    for revision in revisions {
        let want = desired.get(revision).copied().unwrap_or(0);
        let mut live: Vec<&ReplicaView> = observed
            .replicas
            .iter()
            .filter(|r| &r.revision == revision && !r.terminating)
            .collect();
        let count = live.len() as u32;
        if count < want {
            start.insert(revision.clone(), want - count);
        } else if count > want {
            // Unready ones go first.
            live.sort_by_key(|r| r.ready());
            stop.extend(
                live.iter()
                    .take((count - want) as usize)
                    .map(|r| r.id.clone()),
            );
        }
        let before = observed.scale.get(revision).copied();
        if revision != latest && want == 0 {
            if before.is_some() {
                changes.push(RevisionChange {
                    revision: revision.clone(),
                    before,
                    after: 0,
                    retire: true,
                    event: PlannedEvent::new(
                        Reason::RevisionRetired,
                        format!(
                            "revision {revision}: no traffic and no replica left; its objects go"
                        ),
                    ),
                });
            }
            continue;
        }
        scale.insert(revision.clone(), want);
        if before != Some(want) && (before.is_some() || want > 0) {
            changes.push(count_change(revision, before, want));
        }
    }
    (start, stop, scale, changes)
}
