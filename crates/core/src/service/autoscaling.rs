//! The autoscaler in the service plan: what Ferry's autoscaler is asked with (the ready and
//! current size of the predictor, the router's load of its revisions), and what its decision
//! becomes in the status and the events.

use std::collections::BTreeMap;

use ferry_api::InferenceService;
use k8s_openapi::jiff::Timestamp;

use super::Observation;
use crate::reason::{PlannedEvent, Reason};

/// What Ferry's autoscaler is asked with for `isvc`: the ready replicas of the predictor's
/// revisions (an experiment's and a shadow's left out), and the size it is at — its last
/// decision, else what the latest revision is set to. Both executors call this.
pub fn autoscale_inputs(isvc: &InferenceService, observed: &Observation<'_>) -> (u32, u32) {
    let companions = companion_revisions(isvc);
    let ready = observed
        .replicas
        .iter()
        .filter(|r| !r.terminating && r.ready() && !companions.contains(&r.revision))
        .count() as u32;
    let current = observed
        .previous_status
        .and_then(|s| s.autoscaling.as_ref())
        .map(|a| a.desired_replicas)
        .or_else(|| observed.scale.get(observed.latest).copied())
        .unwrap_or_else(|| isvc.spec.predictor.replicas());
    (ready, current)
}

/// The router's load of the predictor's revisions (`loads` per revision; an experiment's and
/// a shadow's revisions left out) plus `held` requests: what the autoscaler observes. A
/// router's demand annotation ([`ferry_api::ANNOTATION_DEMAND`]) of the last few seconds is
/// one held request at least, before the collected numbers show it.
pub fn predictor_load(
    isvc: &InferenceService,
    loads: &BTreeMap<String, crate::autoscale::Load>,
    held: u64,
    now: Timestamp,
) -> crate::autoscale::Load {
    let companions = companion_revisions(isvc);
    let demanded = isvc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ferry_api::ANNOTATION_DEMAND))
        .and_then(|at| at.parse::<Timestamp>().ok())
        .is_some_and(|at| now.duration_since(at).as_secs_f64() < DEMAND_FRESH_SECONDS);
    let mut load = crate::autoscale::Load {
        held: if demanded { held.max(1) } else { held },
        ..Default::default()
    };
    for (_, one) in loads.iter().filter(|(r, _)| !companions.contains(r)) {
        load.merge(one);
    }
    load
}

/// Observe the router's load of `isvc` (`loads` per revision, `held` requests) and decide its
/// size with `autoscalers`, when Ferry's engine scales it: the one call both executors make.
pub fn autoscale<K: std::hash::Hash + Eq + Clone>(
    autoscalers: &mut crate::autoscale::Autoscalers<K>,
    key: &K,
    isvc: &InferenceService,
    observed: &Observation<'_>,
    loads: &BTreeMap<String, crate::autoscale::Load>,
    held: u64,
    now: Timestamp,
) -> Option<crate::autoscale::Decision> {
    if !isvc.spec.predictor.ferry_autoscaled() {
        return None;
    }
    let load = predictor_load(isvc, loads, held, now);
    let (ready, size) = autoscale_inputs(isvc, observed);
    autoscalers.decide(key, &isvc.spec.predictor, load, ready, size, now)
}

/// How long a router's demand annotation counts as a held request.
const DEMAND_FRESH_SECONDS: f64 = 3.0;

fn companion_revisions(isvc: &InferenceService) -> Vec<String> {
    isvc.variants()
        .into_iter()
        .map(|v| v.3)
        .chain(isvc.shadow().map(|s| s.2))
        .collect()
}

/// `status.autoscaling` for a predictor with a `scaleMetric`.
pub(super) fn autoscaling_status(
    predictor: &ferry_api::PredictorSpec,
    decision: Option<&crate::autoscale::Decision>,
    wanted: u32,
    ready: u32,
) -> ferry_api::AutoscalingStatus {
    let metric = predictor.scale_metric.map_or("", |m| m.as_str());
    let engine = predictor.autoscaling_engine();
    let unavailable = matches!(
        predictor.scale_metric,
        Some(ferry_api::ScaleMetric::GpuUtilization)
    ) && engine == ferry_api::AutoscalingEngine::Ferry;
    ferry_api::AutoscalingStatus {
        engine: ferry_api::engine_name(engine).to_string(),
        metric: metric.to_string(),
        desired_replicas: wanted,
        actual_replicas: ready,
        value: decision
            .and_then(|d| d.value)
            .map(|v| (v * 100.0).round() / 100.0),
        target: predictor.scale_target(),
        panic: decision.is_some_and(|d| d.panic),
        scaled_to_zero: decision.is_some_and(|d| d.scaled_to_zero),
        held_requests: decision.map_or(0, |d| d.held.min(u64::from(u32::MAX)) as u32),
        message: if unavailable {
            Some("gpuUtilization is unavailable here (no NVML GPU): holding the last size".into())
        } else {
            decision.map(|d| d.message.clone())
        },
    }
}

/// The events the autoscaler's state changes are worth: panic on / off, scaled to zero, a
/// cold start beginning.
pub(super) fn autoscaling_events(
    previous: Option<&ferry_api::AutoscalingStatus>,
    now: &ferry_api::AutoscalingStatus,
) -> Vec<PlannedEvent> {
    let was = previous.cloned().unwrap_or_default();
    let message = now.message.clone().unwrap_or_default();
    let mut events = Vec::new();
    if now.panic != was.panic {
        let note = if now.panic {
            format!("panic on: {message}")
        } else {
            "panic off: the burst is over, scaling on the stable window again".to_string()
        };
        events.push(PlannedEvent::new(Reason::PanicMode, note));
    }
    if now.scaled_to_zero && !was.scaled_to_zero {
        events.push(PlannedEvent::new(Reason::ScaledToZero, message.clone()));
    }
    if now.held_requests > 0 && was.held_requests == 0 {
        events.push(PlannedEvent::new(
            Reason::ColdStart,
            format!(
                "cold start: {} requests held while a replica starts",
                now.held_requests
            ),
        ));
    }
    events
}
