//! A KEDA `ScaledObject` (`keda.sh/v1alpha1`; a CRD, so k8s-openapi has no struct for it) for
//! `autoscaling.engine: keda`: KEDA's `metrics-api` trigger reads the service's value of one of
//! the router's metrics from the operator ([`OPERATOR_METRICS_URL`], the numbers every router
//! pod reports, summed), and KEDA's HPA divides it by `scaleTarget` per replica.

use std::collections::BTreeMap;

use ferry_api::{InferenceService, ScaleMetric};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// `apiVersion` of KEDA's ScaledObject.
pub const KEDA_API_VERSION: &str = "keda.sh/v1alpha1";

/// Where the operator serves one service's value of a router metric as JSON (`{"value": X}`):
/// its probes port, behind the Service `ferry-operator-metrics` of deploy/operator.yaml.
pub const OPERATOR_METRICS_URL: &str =
    "http://ferry-operator-metrics.ferry-system.svc:8081/ferry/v1/metrics";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ScaledObjectSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: ScaleTargetRef,
    pub polling_interval: i32,
    pub cooldown_period: i32,
    pub min_replica_count: i32,
    pub max_replica_count: i32,
    pub triggers: Vec<ScaleTrigger>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTrigger {
    #[serde(rename = "type")]
    pub type_: String,
    /// `AverageValue`: KEDA's HPA divides the value by the target per replica.
    pub metric_type: String,
    pub metadata: BTreeMap<String, String>,
}

/// The ScaledObject of `isvc`'s latest revision `latest`, when its predictor asks for KEDA on
/// one of the router's metrics.
pub fn scaled_object(
    isvc: &InferenceService,
    latest: &str,
    metadata: ObjectMeta,
) -> Option<ScaledObject> {
    let predictor = &isvc.spec.predictor;
    let metric = predictor.scale_metric.filter(|m| m.from_router())?;
    if predictor.autoscaling_engine() != ferry_api::AutoscalingEngine::Keda {
        return None;
    }
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let namespace = isvc.namespace_or_default();
    let settings = predictor.autoscaling();
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let min = predictor.replicas().max(1);
    let metric_name = match metric {
        ScaleMetric::Rps => "rps",
        ScaleMetric::QueueDepth => "queueDepth",
        _ => "concurrency",
    };
    Some(ScaledObject {
        api_version: KEDA_API_VERSION.into(),
        kind: "ScaledObject".into(),
        metadata,
        spec: ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: latest.to_string(),
            },
            polling_interval: 5,
            cooldown_period: count(settings.scale_down_delay_seconds()),
            min_replica_count: count(min),
            max_replica_count: count(predictor.max_replicas.unwrap_or(min).max(min)),
            triggers: vec![ScaleTrigger {
                type_: "metrics-api".into(),
                metric_type: "AverageValue".into(),
                metadata: BTreeMap::from([
                    ("format".to_string(), "json".to_string()),
                    (
                        "targetValue".to_string(),
                        predictor.scale_target().to_string(),
                    ),
                    (
                        "url".to_string(),
                        format!("{OPERATOR_METRICS_URL}/{namespace}/{name}/{metric_name}"),
                    ),
                    ("valueLocation".to_string(), "value".to_string()),
                ]),
            }],
        },
    })
}
