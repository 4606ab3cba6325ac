//! Progressive delivery in the spec and the status: canary steps with automatic analysis,
//! blue-green, the rollout's persisted state (`status.rollout`) and the annotations that
//! control a rollout in progress (the same in both modes).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One canary step: the new revision's share of traffic, held for a while.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percent of traffic to the new revision, 1–100, increasing step by step.
    pub weight: u32,
    /// How long to hold this weight: a duration (`30s`, `5m`) or `untilPromoted`. Absent: go
    /// on as soon as an analysis passed (or at once without analysis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
}

/// How long a step holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    None,
    For(Duration),
    UntilPromoted,
}

/// The value `pause` takes to wait for `ferry rollout promote`.
pub const UNTIL_PROMOTED: &str = "untilPromoted";

impl CanaryStep {
    /// The step's pause, or why it does not parse.
    pub fn pause(&self) -> Result<Pause, String> {
        match self.pause.as_deref() {
            None => Ok(Pause::None),
            Some(UNTIL_PROMOTED) => Ok(Pause::UntilPromoted),
            Some(text) => parse_duration(text).map(Pause::For),
        }
    }
}

/// A duration such as `30s`, `5m`, `1h30m` or `500ms` (positive).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed: k8s_openapi::jiff::SignedDuration = text.trim().parse().map_err(|_| {
        format!("Invalid value: {text:?}: not a duration (examples: 30s, 5m, 1h30m)")
    })?;
    if parsed.is_negative() || parsed.is_zero() {
        return Err(format!("Invalid value: {text:?}: must be positive"));
    }
    Duration::try_from(parsed).map_err(|e| format!("Invalid value: {text:?}: {e}"))
}

/// Automatic analysis of the new revision, on the router's own numbers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// How often the numbers are judged (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Fewer requests to the new revision in an interval make it inconclusive, not a pass
    /// (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Most 5xx answers, connection failures and timeouts of the new revision, in percent of
    /// its requests (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_percent: Option<f64>,
    /// Highest p99 latency of the new revision, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_latency_ms: Option<f64>,
    /// Highest p99 latency of the new revision relative to the stable one's in the same
    /// interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_latency_ratio: Option<f64>,
    /// Consecutive failing intervals that roll the new revision back (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
}

impl AnalysisSpec {
    pub fn interval(&self) -> Duration {
        self.interval
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(10))
    }
    pub fn min_requests(&self) -> u64 {
        self.min_requests.unwrap_or(20)
    }
    pub fn max_error_percent(&self) -> f64 {
        self.max_error_percent.unwrap_or(1.0)
    }
    pub fn failure_limit(&self) -> u32 {
        self.failure_limit.unwrap_or(2).max(1)
    }
}

/// Blue-green: the new revision at full size beside the old one, switched at once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenSpec {
    /// Switch this long after the new revision is ready (and its analysis passed); absent:
    /// wait for `ferry rollout promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote_seconds: Option<u32>,
    /// The old revision stays at full size this long after the switch, for an instant undo
    /// (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_seconds: Option<u32>,
}

/// Where a progressive rollout stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// Moving traffic step by step (or waiting for capacity to move it).
    Progressing,
    /// Held by `ferry rollout pause` (analysis still runs and may roll back).
    Paused,
    /// Waiting at a step for `ferry rollout promote`.
    WaitingForPromotion,
    /// The new revision takes all traffic.
    Succeeded,
    /// Rolled back: the stable revision takes all traffic, by analysis or by `abort`.
    Aborted,
}

impl RolloutPhase {
    /// Whether the rollout is over: the new revision took all traffic, or it was rolled back.
    pub fn is_finished(self) -> bool {
        matches!(self, RolloutPhase::Succeeded | RolloutPhase::Aborted)
    }
}

/// One analysis verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    Passed,
    Failed,
    Inconclusive,
}

/// The last analysis, with the numbers that decided it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// RFC 3339: when it was judged.
    pub time: String,
    pub verdict: Verdict,
    /// Requests to the new revision in the interval.
    pub requests: u64,
    /// Its errors in percent of them.
    pub error_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_latency_ms: Option<f64>,
    /// The stable revision's p99 in the same interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_p99_latency_ms: Option<f64>,
    pub message: String,
}

/// The state of a progressive rollout, persisted in the status first so that a restarted
/// executor resumes at the same step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub strategy: crate::RolloutStrategy,
    pub phase: RolloutPhase,
    /// The revision that served before; it takes the traffic back on abort.
    pub stable_revision: String,
    /// The revision being rolled out (the spec's latest).
    pub canary_revision: String,
    /// Index of the current step in `spec.rollout.steps`; equal to their count after the last.
    pub step: u32,
    /// Percent of traffic the new revision has now.
    pub weight: u32,
    /// RFC 3339: when the current weight took effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started: Option<String>,
    /// Analyses passed since then.
    #[serde(default)]
    pub passed_in_step: u32,
    /// Failing analyses in a row.
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisStatus>,
    #[serde(default)]
    pub message: String,
    /// Why the phase last became `Succeeded` or `Aborted` (an event reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What every rollout-control annotation's key starts with.
pub const ROLLOUT_ANNOTATION_PREFIX: &str = "ferry.dev/rollout-";
/// Annotation that pauses the rollout of the revision it names (`kubectl annotate ...
/// ferry.dev/rollout-pause=<revision>`); removing it resumes.
pub const ANNOTATION_PAUSE: &str = "ferry.dev/rollout-pause";
/// Annotation that aborts (rolls back) the rollout of the revision it names.
pub const ANNOTATION_ABORT: &str = "ferry.dev/rollout-abort";
/// Annotation that promotes the revision it names: `<revision>` skips every pause and goes to
/// 100 %; `<revision>@<step>` lets steps up to index `<step>` go past their pause.
pub const ANNOTATION_PROMOTE: &str = "ferry.dev/rollout-promote";

/// What the rollout-control annotations ask of the rollout of one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RolloutControls {
    pub paused: bool,
    pub aborted: bool,
    /// Steps up to this index may go past their pause; `u32::MAX`: everything (full promote).
    pub promoted_through: Option<u32>,
}

impl RolloutControls {
    /// The controls `annotations` set for `revision` (annotations naming another revision are
    /// left over from an older rollout and ignored).
    pub fn read(
        annotations: &std::collections::BTreeMap<String, String>,
        revision: &str,
    ) -> RolloutControls {
        let names = |key: &str| annotations.get(key).is_some_and(|v| v == revision);
        let promoted_through =
            annotations
                .get(ANNOTATION_PROMOTE)
                .and_then(|value| match value.split_once('@') {
                    Some((rev, step)) if rev == revision => step.parse().ok(),
                    None if value == revision => Some(u32::MAX),
                    _ => None,
                });
        RolloutControls {
            paused: names(ANNOTATION_PAUSE),
            aborted: names(ANNOTATION_ABORT),
            promoted_through,
        }
    }
}

/// Problems of KServe's `canaryTrafficPercent`, each with its field path.
pub(crate) fn check_canary_percent(
    isvc: &crate::InferenceService,
    errors: &mut Vec<crate::FieldError>,
) {
    let Some(percent) = isvc.spec.predictor.canary_traffic_percent else {
        return;
    };
    if percent > 100 {
        errors.push(crate::FieldError::new(
            "spec.predictor.canaryTrafficPercent",
            format!("Invalid value: {percent}: must be between 0 and 100"),
        ));
    }
    if isvc
        .spec
        .rollout
        .as_ref()
        .is_some_and(|r| r.strategy() != crate::RolloutStrategy::Rolling)
    {
        errors.push(crate::FieldError::new(
            "spec.predictor.canaryTrafficPercent",
            "Forbidden: a manual canary percentage and spec.rollout.strategy canary or blueGreen do not go together",
        ));
    }
}

/// Problems of a rollout's progressive settings, each with its field path.
pub(crate) fn check(rollout: &crate::RolloutSpec, errors: &mut Vec<crate::FieldError>) {
    use crate::{FieldError, RolloutStrategy};
    let strategy = rollout.strategy();
    let mut previous = 0;
    for (i, step) in rollout.steps.iter().enumerate() {
        let path = format!("spec.rollout.steps[{i}]");
        if !(1..=100).contains(&step.weight) {
            errors.push(FieldError::new(
                &format!("{path}.weight"),
                format!("Invalid value: {}: must be between 1 and 100", step.weight),
            ));
        } else if step.weight <= previous {
            errors.push(FieldError::new(
                &format!("{path}.weight"),
                format!(
                    "Invalid value: {}: must be greater than the previous step's {previous}",
                    step.weight
                ),
            ));
        }
        previous = previous.max(step.weight);
        if let Err(message) = step.pause() {
            errors.push(FieldError::new(
                &format!("{path}.pause"),
                format!("{message}; or {UNTIL_PROMOTED:?}"),
            ));
        }
    }
    if !rollout.steps.is_empty() && strategy != RolloutStrategy::Canary {
        errors.push(FieldError::new(
            "spec.rollout.steps",
            "Forbidden: steps need strategy: canary",
        ));
    }
    if rollout.blue_green.is_some() && strategy != RolloutStrategy::BlueGreen {
        errors.push(FieldError::new(
            "spec.rollout.blueGreen",
            "Forbidden: blueGreen settings need strategy: blueGreen",
        ));
    }
    if rollout.analysis.is_some() && strategy == RolloutStrategy::Rolling {
        errors.push(FieldError::new(
            "spec.rollout.analysis",
            "Forbidden: analysis needs strategy: canary or blueGreen",
        ));
    }
    if let Some(analysis) = &rollout.analysis {
        if let Some(text) = &analysis.interval
            && let Err(message) = parse_duration(text)
        {
            errors.push(FieldError::new("spec.rollout.analysis.interval", message));
        }
        let mut non_negative = |value: Option<f64>, field: &str, max: f64| {
            if let Some(v) = value
                && !(v.is_finite() && v >= 0.0 && v <= max)
            {
                errors.push(FieldError::new(
                    &format!("spec.rollout.analysis.{field}"),
                    format!("Invalid value: {v}: must be between 0 and {max}"),
                ));
            }
        };
        non_negative(analysis.max_error_percent, "maxErrorPercent", 100.0);
        non_negative(analysis.max_p99_latency_ms, "maxP99LatencyMs", 1e9);
        non_negative(analysis.max_p99_latency_ratio, "maxP99LatencyRatio", 1e6);
        if analysis.failure_limit == Some(0) {
            errors.push(FieldError::new(
                "spec.rollout.analysis.failureLimit",
                "Invalid value: 0: must be at least 1",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_friendly_form_and_must_be_positive() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_duration("0s").unwrap_err().contains("positive"));
    }

    #[test]
    fn controls_only_count_for_the_revision_they_name() {
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(ANNOTATION_PAUSE.to_string(), "iris-aaaaaa".to_string());
        annotations.insert(ANNOTATION_PROMOTE.to_string(), "iris-bbbbbb@1".to_string());
        let a = RolloutControls::read(&annotations, "iris-aaaaaa");
        assert!(a.paused && !a.aborted && a.promoted_through.is_none());
        let b = RolloutControls::read(&annotations, "iris-bbbbbb");
        assert_eq!(b.promoted_through, Some(1));
        assert!(!b.paused);
        annotations.insert(ANNOTATION_PROMOTE.to_string(), "iris-bbbbbb".to_string());
        let full = RolloutControls::read(&annotations, "iris-bbbbbb");
        assert_eq!(full.promoted_through, Some(u32::MAX));
    }
}
