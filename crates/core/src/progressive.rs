//! The progressive-rollout state machine (canary steps, judged by the router's numbers, rolled
//! back on failure): from the spec, the persisted state, the ready replicas, the metric window,
//! the control annotations and `now`, one [`decide`] gives the next state, the replicas of the
//! stable and the new revision, the traffic weights and the events. Pure: both executors
//! persist its state (`status.rollout`) before carrying it out, so a restart resumes at the
//! same step.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::{
    Pause, RolloutControls, RolloutPhase, RolloutSpec, RolloutStatus, RolloutStrategy, Verdict,
};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::analysis::{self, Window};
use crate::reason::{EventType, PlannedEvent, Reason};

/// Everything one decision reads.
#[derive(Debug, Clone)]
pub struct RolloutInputs<'a> {
    pub spec: &'a RolloutSpec,
    /// Replicas the service should have (the stable revision's size before, the new one's after).
    pub total: u32,
    /// Replicas allowed above `total` while both revisions run (`maxSurge`, at least 1).
    pub surge: u32,
    /// The state as last persisted.
    pub previous: Option<&'a RolloutStatus>,
    /// The revision being rolled out (the spec's latest).
    pub latest: &'a str,
    /// The revision that serves until the new one has proved itself.
    pub stable: &'a str,
    /// Ready replicas per revision that are not leaving.
    pub ready: &'a BTreeMap<String, u32>,
    /// The router's numbers since the last analysis.
    pub window: Option<&'a Window>,
    pub controls: RolloutControls,
    /// Why the new revision cannot become ready (a failure reason and its message): with
    /// `autoRollback` the rollout is aborted at once.
    pub canary_failure: Option<(Reason, String)>,
    pub now: Timestamp,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDecision {
    /// The state to persist (in `status.rollout`) before anything is carried out.
    pub status: RolloutStatus,
    /// Replicas wanted per revision (the stable and the new one).
    pub replicas: BTreeMap<String, u32>,
    /// Traffic weight per revision, in percent.
    pub weights: BTreeMap<String, u32>,
    pub events: Vec<PlannedEvent>,
    /// An analysis was judged: the executor starts its next window now.
    pub analysed: bool,
}

/// Replicas of a revision that takes `weight` percent of `total`'s traffic: rounded up, at
/// least one while it takes any (or is about to).
pub fn replicas_for(total: u32, weight: u32) -> u32 {
    if weight == 0 {
        return 0;
    }
    (u64::from(total) * u64::from(weight))
        .div_ceil(100)
        .clamp(1, u64::from(total.max(1))) as u32
}

/// The weight step `step` asks for: its own, or 100 after the last.
fn step_weight(spec: &RolloutSpec, step: u32) -> u32 {
    spec.steps
        .get(step as usize)
        .map_or(100, |s| s.weight.min(100))
}

fn fresh(inputs: &RolloutInputs<'_>) -> RolloutStatus {
    RolloutStatus {
        strategy: inputs.spec.strategy(),
        phase: RolloutPhase::Progressing,
        stable_revision: inputs.stable.to_string(),
        canary_revision: inputs.latest.to_string(),
        step: 0,
        weight: 0,
        step_started: None,
        passed_in_step: 0,
        consecutive_failures: 0,
        last_analysis: None,
        message: String::new(),
        reason: None,
    }
}

pub(super) fn elapsed(since: Option<&str>, now: Timestamp) -> Duration {
    since
        .and_then(|s| s.parse::<Timestamp>().ok())
        .and_then(|t| Duration::try_from(now.duration_since(t)).ok())
        .unwrap_or_default()
}

/// The next step of a canary rollout from `inputs.stable` to `inputs.latest`.
pub fn decide(inputs: &RolloutInputs<'_>) -> RolloutDecision {
    let spec = inputs.spec;
    let now = crate::service::timestamp(inputs.now);
    let (latest, stable) = (inputs.latest, inputs.stable);
    let mut events = Vec::new();
    let mut state = match inputs.previous {
        Some(p) if p.canary_revision == latest && p.stable_revision == stable => p.clone(),
        other => {
            let mut note = format!("canary {latest} beside stable {stable}");
            if let Some(p) = other.filter(|p| p.canary_revision != latest && !p.phase.is_finished())
            {
                note.push_str(&format!("; replaces the rollout of {}", p.canary_revision));
            }
            let reason = if spec.strategy() == RolloutStrategy::BlueGreen {
                note = format!("{latest} (green) comes up at full size beside {stable} (blue)");
                Reason::BlueGreenStarted
            } else {
                Reason::CanaryStarted
            };
            events.push(PlannedEvent::new(reason, note));
            fresh(inputs)
        }
    };
    let ready = |revision: &str| inputs.ready.get(revision).copied().unwrap_or(0);
    let total = inputs.total.max(1);
    let mut analysed = false;
    let blue_green = spec.strategy() == RolloutStrategy::BlueGreen;

    let active = !state.phase.is_finished();
    if active && inputs.controls.aborted {
        abort(
            &mut state,
            &mut events,
            Reason::RolloutAborted,
            "aborted by ferry rollout abort".into(),
        );
    }
    if let Some((reason, message)) = &inputs.canary_failure
        && spec.auto_rollback()
        && !state.phase.is_finished()
    {
        abort(
            &mut state,
            &mut events,
            Reason::RolledBackAutomatically,
            format!(
                "{latest} cannot become ready ({}: {message})",
                reason.as_str()
            ),
        );
    }

    // Analysis: every interval while the new revision takes traffic.
    if let (Some(analysis), Some(window)) = (&spec.analysis, inputs.window)
        && !state.phase.is_finished()
        && (state.weight > 0 || blue_green && ready(latest) >= total)
        && elapsed(Some(&crate::service::timestamp(window.started)), inputs.now)
            >= analysis.interval()
    {
        analysed = true;
        let empty = analysis::RevisionMetrics::default();
        let canary = window.revisions.get(latest).unwrap_or(&empty);
        let result = analysis::judge(analysis, canary, window.revisions.get(stable), &now);
        match result.verdict {
            Verdict::Passed => {
                state.passed_in_step += 1;
                state.consecutive_failures = 0;
            }
            Verdict::Failed => {
                state.consecutive_failures += 1;
                let limit = analysis.failure_limit();
                events.push(PlannedEvent {
                    type_: EventType::Warning,
                    reason: Reason::AnalysisFailed,
                    note: format!(
                        "{latest} at {}%: {} ({} of {limit} in a row)",
                        state.weight, result.message, state.consecutive_failures
                    ),
                    action: None,
                });
                if state.consecutive_failures >= limit && spec.auto_rollback() {
                    let message = format!(
                        "{latest} failed {} analyses in a row: {}",
                        state.consecutive_failures, result.message
                    );
                    state.last_analysis = Some(result.clone());
                    abort(
                        &mut state,
                        &mut events,
                        Reason::RolledBackAutomatically,
                        message,
                    );
                }
            }
            Verdict::Inconclusive => {}
        }
        state.last_analysis = Some(result);
    }

    if blue_green {
        return blue_green::finish(inputs, state, events, analysed, &now, total, &ready);
    }
    if !state.phase.is_finished() {
        advance(inputs, &mut state, &mut events, &now, total, &ready);
    }

    let weight = match state.phase {
        RolloutPhase::Aborted => 0,
        RolloutPhase::Succeeded => 100,
        _ => state.weight,
    };
    state.weight = weight;
    let target = match state.phase {
        RolloutPhase::Aborted => 0,
        RolloutPhase::Succeeded => 100,
        _ => step_weight(spec, state.step),
    };
    let (low, high) = (weight.min(target), weight.max(target));
    // The stable revision keeps what its share needs (going back: what it is about to take);
    // the new one grows towards the next share within the surge (its weight then follows its
    // ready replicas), one replica at least while the rollout is on (a 0 % canary stays warm).
    let stable_replicas = replicas_for(total, 100 - low);
    let room = (total + inputs.surge.max(1)).saturating_sub(stable_replicas);
    let floor = u32::from(!matches!(state.phase, RolloutPhase::Aborted));
    let canary_replicas = replicas_for(total, high)
        .min(room)
        .max(replicas_for(total, weight))
        .max(floor);
    let mut replicas = BTreeMap::new();
    replicas.insert(latest.to_string(), canary_replicas);
    replicas.insert(stable.to_string(), stable_replicas);
    let mut weights = BTreeMap::new();
    if weight < 100 {
        weights.insert(stable.to_string(), 100 - weight);
    }
    if weight > 0 {
        weights.insert(latest.to_string(), weight);
    }
    RolloutDecision {
        status: state,
        replicas,
        weights,
        events,
        analysed,
    }
}

fn abort(
    state: &mut RolloutStatus,
    events: &mut Vec<PlannedEvent>,
    reason: Reason,
    message: String,
) {
    state.phase = RolloutPhase::Aborted;
    state.weight = 0;
    state.reason = Some(reason.as_str().to_string());
    state.message = format!("{message}; all traffic back on {}", state.stable_revision);
    events.push(PlannedEvent {
        type_: EventType::Warning,
        reason,
        note: state.message.clone(),
        action: None,
    });
}

/// Move to the next step when the current one is done, and the weight to the step's when the
/// new revision has the ready replicas for it.
fn advance(
    inputs: &RolloutInputs<'_>,
    state: &mut RolloutStatus,
    events: &mut Vec<PlannedEvent>,
    now: &str,
    total: u32,
    ready: &dyn Fn(&str) -> u32,
) {
    let spec = inputs.spec;
    let controls = inputs.controls;
    let latest = inputs.latest;
    let steps = spec.steps.len() as u32;
    if controls.paused != (state.phase == RolloutPhase::Paused) {
        let (reason, note) = if controls.paused {
            (
                Reason::RolloutPaused,
                format!("paused at {}% on {latest}", state.weight),
            )
        } else {
            (
                Reason::RolloutResumed,
                format!("resumed at {}% on {latest}", state.weight),
            )
        };
        events.push(PlannedEvent::new(reason, note));
    }
    // At most one step per decision past its pause, then the weight follows capacity.
    for _ in 0..=steps {
        if controls.paused {
            state.phase = RolloutPhase::Paused;
            state.message = format!("paused at {}%", state.weight);
            return;
        }
        let target = step_weight(spec, state.step);
        if state.weight > target {
            // The spec asks for less (a KServe canaryTrafficPercent lowered): traffic goes
            // back to the stable revision once it has the replicas for it.
            let needed = replicas_for(total, 100 - target);
            if ready(inputs.stable) < needed {
                state.message = format!(
                    "waiting for {needed} ready replicas of {} before {target}% on {latest}",
                    inputs.stable
                );
                return;
            }
            events.push(PlannedEvent::new(
                Reason::TrafficShifted,
                format!("{latest}: {}% → {target}% of traffic", state.weight),
            ));
            state.weight = target;
            state.step_started = Some(now.to_string());
            state.passed_in_step = 0;
        }
        if state.weight < target {
            let needed = replicas_for(total, target);
            if ready(latest) < needed {
                // Move as far as the ready replicas carry, never back.
                let carried = (ready(latest) * 100 / total).min(target);
                if carried > state.weight {
                    events.push(PlannedEvent::new(
                        Reason::TrafficShifted,
                        format!(
                            "{latest}: {}% → {carried}% of traffic on its way to {target}% ({} of {needed} replicas ready)",
                            state.weight,
                            ready(latest)
                        ),
                    ));
                    state.weight = carried;
                }
                state.phase = RolloutPhase::Progressing;
                state.message = format!(
                    "waiting for {needed} ready replicas of {latest} before {target}% ({} ready)",
                    ready(latest)
                );
                return;
            }
            let from = state.weight;
            state.weight = target;
            state.step_started = Some(now.to_string());
            state.passed_in_step = 0;
            if target >= 100 {
                state.phase = RolloutPhase::Succeeded;
                state.reason = Some(Reason::RolloutPromoted.as_str().to_string());
                state.message = format!("{latest} takes all traffic");
                events.push(PlannedEvent::new(
                    Reason::RolloutPromoted,
                    format!(
                        "{latest}: {from}% → 100% of traffic; {} retires",
                        inputs.stable
                    ),
                ));
                return;
            }
            events.push(PlannedEvent::new(
                Reason::TrafficShifted,
                format!(
                    "{latest}: {from}% → {target}% of traffic (step {} of {steps})",
                    state.step + 1
                ),
            ));
        }
        let promoted = controls
            .promoted_through
            .is_some_and(|through| through >= state.step);
        let step = spec.steps.get(state.step as usize);
        let pause = step
            .map(|s| s.pause().unwrap_or(Pause::None))
            .unwrap_or(Pause::None);
        let held = elapsed(state.step_started.as_deref(), inputs.now);
        let (pause_over, waiting) = match pause {
            _ if promoted => (true, String::new()),
            Pause::None => (true, String::new()),
            Pause::For(d) => (
                held >= d,
                format!(
                    "holding {}% for {}s ({}s so far)",
                    state.weight,
                    d.as_secs(),
                    held.as_secs()
                ),
            ),
            Pause::UntilPromoted => (false, format!("at {}% until promoted", state.weight)),
        };
        if !pause_over {
            state.phase = if pause == Pause::UntilPromoted {
                RolloutPhase::WaitingForPromotion
            } else {
                RolloutPhase::Progressing
            };
            state.message = waiting;
            return;
        }
        if spec.analysis.is_some() && state.passed_in_step == 0 && !promoted {
            state.phase = RolloutPhase::Progressing;
            state.message = format!(
                "at {}%: waiting for a passing analysis{}",
                state.weight,
                state
                    .last_analysis
                    .as_ref()
                    .map(|a| format!(" (last: {})", a.message))
                    .unwrap_or_default()
            );
            return;
        }
        state.step = (state.step + 1).min(steps);
    }
}

/// Whether `spec` rolls out progressively (canary or blue-green) rather than replica by replica.
pub fn is_progressive(spec: Option<&RolloutSpec>) -> bool {
    spec.is_some_and(|s| s.strategy() != RolloutStrategy::Rolling)
}

mod blue_green;
#[cfg(test)]
mod tests;

/// What `ferry rollout promote|abort|pause|resume` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Control {
    /// Past the current step's pause; `full`: straight to 100 %.
    Promote {
        full: bool,
    },
    Abort,
    Pause,
    Resume,
}

impl Control {
    /// The command's verb, as `ferry rollout VERB` names it.
    pub fn verb(self) -> &'static str {
        match self {
            Control::Promote { full: true } => "promote --full",
            Control::Promote { full: false } => "promote",
            Control::Abort => "abort",
            Control::Pause => "pause",
            Control::Resume => "resume",
        }
    }
}

/// The annotation changes (key, new value or `None` to remove) that carry `control` out on
/// `isvc`, in both modes; refused when no progressive rollout of its latest revision is in
/// progress.
pub fn control_annotations(
    control: Control,
    isvc: &ferry_api::InferenceService,
) -> Result<Vec<(&'static str, Option<String>)>, String> {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let status = isvc.status.as_ref();
    let rollout = status
        .and_then(|s| s.rollout.as_ref())
        .filter(|r| Some(&r.canary_revision) == status.and_then(|s| s.latest_revision.as_ref()));
    let Some(rollout) = rollout.filter(|r| !r.phase.is_finished()) else {
        return Err(format!(
            "InferenceService {name} has no canary or blue-green rollout in progress{}",
            rollout.map_or(String::new(), |r| format!(
                " (status.rollout.phase of {} is {:?})",
                r.canary_revision, r.phase
            ))
        ));
    };
    let revision = rollout.canary_revision.clone();
    Ok(match control {
        Control::Promote { full: true } => {
            vec![(ferry_api::ANNOTATION_PROMOTE, Some(revision))]
        }
        Control::Promote { full: false } => vec![(
            ferry_api::ANNOTATION_PROMOTE,
            Some(format!("{revision}@{}", rollout.step)),
        )],
        Control::Abort => vec![(ferry_api::ANNOTATION_ABORT, Some(revision))],
        Control::Pause => vec![(ferry_api::ANNOTATION_PAUSE, Some(revision))],
        Control::Resume => vec![(ferry_api::ANNOTATION_PAUSE, None)],
    })
}
