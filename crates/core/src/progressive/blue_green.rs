//! Blue-green: the new revision comes up at full size beside the old one without traffic
//! (reachable by `ferry-revision` for a preview, which the analysis judges), then all traffic
//! switches at once — after `autoPromoteSeconds`, or on `ferry rollout promote` — and the old
//! revision stays at full size for `scaleDownDelaySeconds`, so that an undo is instant.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::{RolloutPhase, RolloutStatus};

use super::{RolloutDecision, RolloutInputs, elapsed};
use crate::reason::{PlannedEvent, Reason};

/// The rest of a blue-green decision, after controls and analysis.
pub(super) fn finish(
    inputs: &RolloutInputs<'_>,
    mut state: RolloutStatus,
    mut events: Vec<PlannedEvent>,
    analysed: bool,
    now: &str,
    total: u32,
    ready: &dyn Fn(&str) -> u32,
) -> RolloutDecision {
    let spec = inputs.spec;
    let settings = spec.blue_green.clone().unwrap_or_default();
    let (latest, stable) = (inputs.latest, inputs.stable);
    let delay = Duration::from_secs(u64::from(settings.scale_down_delay_seconds.unwrap_or(600)));
    if !state.phase.is_finished() {
        if ready(latest) < total {
            state.phase = RolloutPhase::Progressing;
            state.step_started = None;
            state.message = format!(
                "{latest} coming up: {} of {total} replicas ready, no traffic yet",
                ready(latest)
            );
        } else {
            // Ready at full size: the wait for the switch counts from now.
            let since = state
                .step_started
                .get_or_insert_with(|| now.to_string())
                .clone();
            let held = elapsed(Some(&since), inputs.now);
            let promoted = inputs.controls.promoted_through.is_some();
            let passed = spec.analysis.is_none() || state.passed_in_step > 0 || promoted;
            let due = match settings.auto_promote_seconds {
                _ if promoted => true,
                Some(seconds) => held >= Duration::from_secs(u64::from(seconds)),
                None => false,
            };
            if inputs.controls.paused {
                state.phase = RolloutPhase::Paused;
                state.message = format!("{latest} ready; paused before the switch");
            } else if due && passed {
                state.phase = RolloutPhase::Succeeded;
                state.weight = 100;
                state.step = 1;
                state.step_started = Some(now.to_string());
                state.reason = Some(Reason::RolloutPromoted.as_str().to_string());
                state.message = format!(
                    "{latest} takes all traffic; {stable} stays warm for {}s (ferry rollout undo switches back)",
                    delay.as_secs()
                );
                events.push(PlannedEvent::new(
                    Reason::RolloutPromoted,
                    format!("switched all traffic from {stable} to {latest}"),
                ));
            } else if settings.auto_promote_seconds.is_none() && !promoted {
                state.phase = RolloutPhase::WaitingForPromotion;
                state.message =
                    format!("{latest} ready at full size; waiting for ferry rollout promote");
            } else {
                state.phase = RolloutPhase::Progressing;
                state.message = if due {
                    format!("{latest} ready; waiting for a passing analysis of its preview traffic")
                } else {
                    format!(
                        "{latest} ready; switching after {}s",
                        settings.auto_promote_seconds.unwrap_or(0)
                    )
                };
            }
        }
    }
    let (weight, latest_replicas, stable_replicas) = match state.phase {
        RolloutPhase::Aborted => (0, 0, total),
        RolloutPhase::Succeeded => {
            let warm = elapsed(state.step_started.as_deref(), inputs.now) < delay;
            (100, total, if warm { total } else { 0 })
        }
        _ => (0, total, total),
    };
    state.weight = weight;
    let mut weights = BTreeMap::new();
    weights.insert(if weight == 100 { latest } else { stable }.to_string(), 100);
    RolloutDecision {
        status: state,
        replicas: BTreeMap::from([
            (latest.to_string(), latest_replicas),
            (stable.to_string(), stable_replicas),
        ]),
        weights,
        events,
        analysed,
    }
}
