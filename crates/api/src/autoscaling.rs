//! Autoscaling: what a predictor scales on (`scaleMetric`, `scaleTarget`), the engine that
//! scales it (`autoscaling.engine`: Ferry's own on the router's numbers, a Kubernetes HPA, or a
//! KEDA ScaledObject), its windows and delays, the cold-start buffer a revision at zero holds
//! requests in, and what the status shows of the last decision.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

/// Set by a cluster's router on an InferenceService (an RFC 3339 time) when it holds a
/// request for it with no replica ready: the operator's watch wakes it at once.
pub const ANNOTATION_DEMAND: &str = "ferry.dev/demand";

/// What a predictor scales on, per replica.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ScaleMetric {
    /// Average CPU utilisation, in percent of the CPU request.
    Cpu,
    /// Average memory utilisation, in percent of the memory request.
    Memory,
    /// Requests in flight at the router (held ones included) per replica.
    Concurrency,
    /// Requests per second arriving at the router per replica.
    Rps,
    /// Requests waiting at the router for a replica (held in the cold-start buffer, or
    /// beyond the replicas' in-flight target) per replica.
    QueueDepth,
    /// GPU utilisation in percent (NVML), where the replicas have a GPU.
    GpuUtilization,
}

impl ScaleMetric {
    /// Measured by Ferry's router (the Ferry engine's metrics; an HPA reads them as an
    /// External metric).
    pub fn from_router(self) -> bool {
        matches!(
            self,
            ScaleMetric::Concurrency | ScaleMetric::Rps | ScaleMetric::QueueDepth
        )
    }

    /// Utilisation of a resource request, in percent.
    pub fn is_resource(self) -> bool {
        matches!(self, ScaleMetric::Cpu | ScaleMetric::Memory)
    }

    /// `scaleTarget` when the spec sets none.
    pub fn default_target(self) -> u32 {
        match self {
            ScaleMetric::Cpu | ScaleMetric::Memory | ScaleMetric::GpuUtilization => 80,
            ScaleMetric::Concurrency => 4,
            ScaleMetric::Rps => 50,
            ScaleMetric::QueueDepth => 4,
        }
    }

    /// As the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleMetric::Cpu => "cpu",
            ScaleMetric::Memory => "memory",
            ScaleMetric::Concurrency => "concurrency",
            ScaleMetric::Rps => "rps",
            ScaleMetric::QueueDepth => "queueDepth",
            ScaleMetric::GpuUtilization => "gpuUtilization",
        }
    }
}

/// Who scales the predictor.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AutoscalingEngine {
    /// Ferry itself, on the router's numbers (both modes; in a cluster the operator owns the
    /// Deployment's `replicas`). The default for concurrency, rps and queueDepth.
    Ferry,
    /// A Kubernetes HorizontalPodAutoscaler (autoscaling/v2): cpu and memory as Resource
    /// metrics, Ferry's router metrics as External metrics Ferry serves. The default for cpu
    /// and memory. Cluster mode only.
    Hpa,
    /// A KEDA ScaledObject on Ferry's metrics endpoint. Cluster mode only.
    Keda,
}

/// Requests a revision at zero replicas holds while one starts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ColdStartBuffer {
    /// Requests held at most per router (default 256); beyond: 503 with Retry-After.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u32>,
    /// Seconds a held request waits for a ready replica at most (default 120); then 503 with
    /// Retry-After.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

impl ColdStartBuffer {
    pub fn requests(&self) -> u32 {
        self.requests.unwrap_or(256)
    }

    pub fn timeout_seconds(&self) -> u32 {
        self.timeout_seconds.unwrap_or(120)
    }
}

/// How the autoscaler reacts; every field optional, the defaults work untuned.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<AutoscalingEngine>,
    /// The window the metric is averaged over for the steady decision (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_window_seconds: Option<u32>,
    /// The short window that detects a burst (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_window_seconds: Option<u32>,
    /// Panic when the short window asks for this percent of the ready replicas or more
    /// (default 200): scale up at once, never down while panicking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold_percent: Option<u32>,
    /// A lower size is only taken once it was asked for this long (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_seconds: Option<u32>,
    /// With `minReplicas: 0`: seconds without a request before the last replica goes
    /// (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero_grace_seconds: Option<u32>,
    /// At most this many times the ready replicas per decision (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_scale_up_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_buffer: Option<ColdStartBuffer>,
}

impl AutoscalingSpec {
    pub fn stable_window_seconds(&self) -> u32 {
        self.stable_window_seconds.unwrap_or(30)
    }
    pub fn panic_window_seconds(&self) -> u32 {
        self.panic_window_seconds.unwrap_or(3)
    }
    pub fn panic_threshold_percent(&self) -> u32 {
        self.panic_threshold_percent.unwrap_or(200)
    }
    pub fn scale_down_delay_seconds(&self) -> u32 {
        self.scale_down_delay_seconds.unwrap_or(30)
    }
    pub fn scale_to_zero_grace_seconds(&self) -> u32 {
        self.scale_to_zero_grace_seconds.unwrap_or(60)
    }
    pub fn max_scale_up_rate(&self) -> u32 {
        self.max_scale_up_rate.unwrap_or(10)
    }
    pub fn cold_start_buffer(&self) -> ColdStartBuffer {
        self.cold_start_buffer.clone().unwrap_or_default()
    }
}

/// The autoscaler's last decision, as the status shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// `ferry`, `hpa` or `keda`.
    pub engine: String,
    /// The metric it scales on (`concurrency`, ...).
    pub metric: String,
    /// Replicas it asks for.
    pub desired_replicas: u32,
    /// Ready replicas of the predictor now.
    pub actual_replicas: u32,
    /// The metric's value that decided, over the whole service (the stable window's, or the
    /// panic window's while panicking); in the metric's unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The target per replica.
    pub target: u32,
    /// Bursting: scaled on the short window, never down.
    #[serde(default)]
    pub panic: bool,
    /// All replicas went after the grace without requests.
    #[serde(default)]
    pub scaled_to_zero: bool,
    /// Requests held in the routers' cold-start buffers now.
    #[serde(default)]
    pub held_requests: u32,
    /// Why it decided so, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The problems of `scaleMetric`, `scaleTarget`, `minReplicas` 0 and `autoscaling`.
pub(crate) fn check(predictor: &crate::PredictorSpec, errors: &mut Vec<FieldError>) {
    let metric = predictor.scale_metric;
    if let Some(target) = predictor.scale_target {
        let percent = metric.is_none_or(|m| !m.from_router());
        if percent && !(1..=100).contains(&target) {
            errors.push(FieldError::new(
                "spec.predictor.scaleTarget",
                format!("Invalid value: {target}: must be a percentage between 1 and 100"),
            ));
        } else if !percent && target == 0 {
            errors.push(FieldError::new(
                "spec.predictor.scaleTarget",
                "Invalid value: 0: must be at least 1 per replica",
            ));
        }
    }
    let Some(metric) = metric else {
        if predictor.scale_target.is_some() {
            errors.push(FieldError::new(
                "spec.predictor.scaleMetric",
                "Required value: scaleTarget needs a scaleMetric",
            ));
        }
        if predictor.min_replicas == Some(0) {
            errors.push(FieldError::new(
                "spec.predictor.minReplicas",
                "Invalid value: 0: scale to zero needs a scaleMetric the router measures (concurrency, rps or queueDepth)",
            ));
        }
        if predictor.autoscaling.is_some() {
            errors.push(FieldError::new(
                "spec.predictor.autoscaling",
                "Forbidden: autoscaling needs a scaleMetric",
            ));
        }
        return;
    };
    if predictor.max_replicas.is_none() {
        errors.push(FieldError::new(
            "spec.predictor.maxReplicas",
            "Required value: scaleMetric needs an upper bound for the autoscaler",
        ));
    }
    if predictor.max_replicas == Some(0) {
        errors.push(FieldError::new(
            "spec.predictor.maxReplicas",
            "Invalid value: 0: must be at least 1",
        ));
    }
    if metric.is_resource() {
        let resource = metric.as_str();
        let requested = predictor
            .resources
            .as_ref()
            .is_some_and(|r| r.requests.contains_key(resource) || r.limits.contains_key(resource));
        if !requested {
            errors.push(FieldError::new(
                &format!("spec.predictor.resources.requests.{resource}"),
                format!(
                    "Required value: scaleMetric {resource} scales on utilisation of the {resource} request"
                ),
            ));
        }
    }
    let engine = predictor.autoscaling_engine();
    match (engine, metric) {
        (AutoscalingEngine::Ferry, m) if m.is_resource() => errors.push(FieldError::new(
            "spec.predictor.autoscaling.engine",
            format!(
                "Unsupported value: \"ferry\": scaleMetric {} is scaled by a HorizontalPodAutoscaler (engine hpa)",
                m.as_str()
            ),
        )),
        (AutoscalingEngine::Keda, m) if !m.from_router() => errors.push(FieldError::new(
            "spec.predictor.autoscaling.engine",
            format!(
                "Unsupported value: \"keda\": KEDA scales on the router's concurrency, rps or queueDepth here, not {} (engine hpa scales cpu and memory)",
                m.as_str()
            ),
        )),
        _ => {}
    }
    if predictor.min_replicas == Some(0)
        && !(metric.from_router() && engine == AutoscalingEngine::Ferry)
    {
        errors.push(FieldError::new(
            "spec.predictor.minReplicas",
            format!(
                "Invalid value: 0: scale to zero needs engine ferry on concurrency, rps or queueDepth (here: engine {}, scaleMetric {})",
                engine_name(engine),
                metric.as_str()
            ),
        ));
    }
    let Some(spec) = &predictor.autoscaling else {
        return;
    };
    let bounded = [
        ("stableWindowSeconds", spec.stable_window_seconds, 1, 3_600),
        ("panicWindowSeconds", spec.panic_window_seconds, 1, 600),
        (
            "panicThresholdPercent",
            spec.panic_threshold_percent,
            110,
            10_000,
        ),
        (
            "scaleDownDelaySeconds",
            spec.scale_down_delay_seconds,
            0,
            3_600,
        ),
        (
            "scaleToZeroGraceSeconds",
            spec.scale_to_zero_grace_seconds,
            1,
            86_400,
        ),
        ("maxScaleUpRate", spec.max_scale_up_rate, 2, 1_000),
    ];
    for (field, value, low, high) in bounded {
        if let Some(value) = value
            && !(low..=high).contains(&value)
        {
            errors.push(FieldError::new(
                &format!("spec.predictor.autoscaling.{field}"),
                format!("Invalid value: {value}: must be between {low} and {high}"),
            ));
        }
    }
    if spec.panic_window_seconds() > spec.stable_window_seconds() {
        errors.push(FieldError::new(
            "spec.predictor.autoscaling.panicWindowSeconds",
            format!(
                "Invalid value: {}: must not be longer than stableWindowSeconds ({})",
                spec.panic_window_seconds(),
                spec.stable_window_seconds()
            ),
        ));
    }
    if let Some(buffer) = &spec.cold_start_buffer {
        if buffer.requests == Some(0) || buffer.requests.is_some_and(|n| n > 100_000) {
            errors.push(FieldError::new(
                "spec.predictor.autoscaling.coldStartBuffer.requests",
                format!(
                    "Invalid value: {}: must be between 1 and 100000",
                    buffer.requests()
                ),
            ));
        }
        if !(1..=3_600).contains(&buffer.timeout_seconds()) {
            errors.push(FieldError::new(
                "spec.predictor.autoscaling.coldStartBuffer.timeoutSeconds",
                format!(
                    "Invalid value: {}: must be between 1 and 3600",
                    buffer.timeout_seconds()
                ),
            ));
        }
    }
}

/// As the spec spells it.
pub fn engine_name(engine: AutoscalingEngine) -> &'static str {
    match engine {
        AutoscalingEngine::Ferry => "ferry",
        AutoscalingEngine::Hpa => "hpa",
        AutoscalingEngine::Keda => "keda",
    }
}
