//! The `ServerPool` resource (`ferry.dev/v1alpha1`): shared `ferry server` replicas that
//! InferenceServices naming it in `spec.predictor.pool` are placed on, by their measured
//! footprints, instead of replicas of their own. A server keeps its resident models within its
//! memory budget; registered models beyond it (up to the overcommit) load on demand and the
//! least recently used are evicted.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{FieldError, is_dns_label};
use crate::{Condition, Resources, quantity};

/// Overcommit when the spec names none: registered models may take twice the budget.
pub const DEFAULT_OVERCOMMIT_PERCENT: u32 = 100;
/// The most a pool may overcommit (ten times the budget).
pub const MAX_OVERCOMMIT_PERCENT: u32 = 1000;
/// What a server keeps for itself when the budget is derived from the memory limit.
pub const HEADROOM_PERCENT: u64 = 25;

/// Shared model servers.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "ServerPool",
    plural = "serverpools",
    shortname = "pool",
    namespaced,
    status = "ServerPoolStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Servers","type":"integer","description":"Ready servers","jsonPath":".status.readyServers"}"#,
    printcolumn = r#"{"name":"Models","type":"integer","description":"Models placed","jsonPath":".status.registeredModels"}"#,
    printcolumn = r#"{"name":"Resident","type":"integer","jsonPath":".status.residentModels"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","description":"Bytes of resident models","jsonPath":".status.memoryUsedBytes"}"#,
    printcolumn = r#"{"name":"Budget","type":"integer","description":"Bytes the servers may keep resident","jsonPath":".status.memoryBudgetBytes"}"#,
    printcolumn = r#"{"name":"Evictions","type":"integer","priority":1,"jsonPath":".status.evictions"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServerPoolSpec {
    /// Pool servers (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Compute resources per server: cpu, memory, and `nvidia.com/gpu` (whole GPUs),
    /// `nvidia.com/gpu.shared` (time-sliced) or `nvidia.com/mig-<profile>` (MIG slices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Host memory a server may keep resident models in (a quantity). Default: the memory
    /// limit less a headroom of a quarter; required without a memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<String>,
    /// GPU memory a server may keep resident models in, per GPU (a quantity). Not enforced
    /// yet: servers account host memory only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_budget: Option<String>,
    /// Registered models may exceed the budget by this percent (default 100); which of them
    /// are resident at a moment is each server's LRU's business.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overcommit_percent: Option<u32>,
    /// Node labels a server's node must carry (cluster mode).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the servers tolerate (a Pod's `tolerations`; cluster mode), e.g. a GPU node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
}

impl ServerPoolSpec {
    /// Servers wanted.
    pub fn replicas(&self) -> u32 {
        self.replicas.unwrap_or(1)
    }

    /// Overcommit in percent.
    pub fn overcommit_percent(&self) -> u32 {
        self.overcommit_percent
            .unwrap_or(DEFAULT_OVERCOMMIT_PERCENT)
    }

    /// A server's memory budget in bytes: `memoryBudget`, else the memory limit less the
    /// headroom. `None` when neither is set (refused by [`validate_pool`]).
    pub fn memory_budget_bytes(&self) -> Option<u64> {
        if let Some(budget) = &self.memory_budget {
            return quantity::parse(budget).map(|b| b as u64);
        }
        let limit = self.resources.as_ref()?.limits.get("memory")?;
        let limit = quantity::parse(limit)? as u64;
        Some(limit - limit * HEADROOM_PERCENT / 100)
    }
}

/// Observed state of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Servers answering their readiness probe.
    pub ready_servers: u32,
    /// Models with at least one copy placed.
    pub registered_models: u32,
    /// Copies resident (loaded) on the servers now.
    pub resident_models: u32,
    /// Bytes of resident models, all servers.
    pub memory_used_bytes: u64,
    /// Bytes the servers may keep resident, all servers.
    pub memory_budget_bytes: u64,
    /// Models evicted to make room, all servers, since they started.
    pub evictions: u64,
    /// Each server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<PoolServerStatus>,
    /// Each model placed or asked for: where, and its footprint predicted vs measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<PooledModelStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One pool server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolServerStatus {
    pub name: String,
    pub ready: bool,
    /// Models registered on it (placed).
    pub registered_models: u32,
    /// Models resident on it now.
    pub resident_models: u32,
    pub memory_used_bytes: u64,
    pub memory_budget_bytes: u64,
    pub evictions: u64,
    /// Its restarts when it was observed: a server that has restarted since lost its copies
    /// (the router sends it nothing until the pool registers them again).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One pooled model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PooledModelStatus {
    /// The InferenceService.
    pub service: String,
    /// The model's name in the inference protocol.
    pub model: String,
    /// Servers its copies are placed on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// The footprint the planner used before the model was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_bytes: Option<u64>,
    /// The footprint a server measured after load and warm-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_bytes: Option<u64>,
    /// Why it has fewer copies than it asks for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The reason its service's Ready condition gives while it is not placed
    /// (`ModelTooLarge`, `NotPlaced`, `PoolServersStarting`); empty while it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub condition: String,
}

/// Resources a pool server may ask for.
fn known_pool_resource(name: &str) -> bool {
    matches!(
        name,
        "cpu" | "memory" | "nvidia.com/gpu" | "nvidia.com/gpu.shared"
    ) || name
        .strip_prefix("nvidia.com/mig-")
        .is_some_and(|profile| !profile.is_empty())
}

/// Every problem of `pool`; empty when it is valid.
pub fn validate_pool(pool: &ServerPool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match pool.metadata.name.as_deref() {
        None | Some("") => errors.push(FieldError::new("metadata.name", "Required value")),
        Some(name) if !is_dns_label(name, 63) => errors.push(FieldError::new(
            "metadata.name",
            format!("Invalid value: {name:?}: must be a DNS label"),
        )),
        Some(_) => {}
    }
    let spec = &pool.spec;
    if spec.replicas == Some(0) || spec.replicas.is_some_and(|r| r > 1000) {
        errors.push(FieldError::new(
            "spec.replicas",
            format!(
                "Invalid value: {}: must be between 1 and 1000",
                spec.replicas.unwrap_or(0)
            ),
        ));
    }
    if let Some(percent) = spec.overcommit_percent
        && percent > MAX_OVERCOMMIT_PERCENT
    {
        errors.push(FieldError::new(
            "spec.overcommitPercent",
            format!("Invalid value: {percent}: must be at most {MAX_OVERCOMMIT_PERCENT}"),
        ));
    }
    for (field, value) in [
        ("memoryBudget", &spec.memory_budget),
        ("gpuMemoryBudget", &spec.gpu_memory_budget),
    ] {
        if let Some(value) = value
            && !quantity::parse(value).is_some_and(|v| v >= 1.0)
        {
            errors.push(FieldError::new(
                &format!("spec.{field}"),
                format!("Invalid value: {value:?}: must be a quantity of bytes such as 512Mi, 3Gi"),
            ));
        }
    }
    let memory_limit = spec.resources.as_ref().and_then(|r| r.limits.get("memory"));
    if spec.memory_budget.is_none() && memory_limit.is_none() {
        errors.push(FieldError::new(
            "spec.memoryBudget",
            "Required value: a memory budget, or resources.limits.memory to derive it from",
        ));
    }
    if let (Some(budget), Some(limit)) = (
        spec.memory_budget.as_deref().and_then(quantity::parse),
        memory_limit.and_then(|l| quantity::parse(l)),
    ) && budget > limit
    {
        errors.push(FieldError::new(
            "spec.memoryBudget",
            format!(
                "Invalid value: {:?}: must not exceed the memory limit {:?}",
                spec.memory_budget.as_deref().unwrap_or_default(),
                memory_limit.map(String::as_str).unwrap_or_default()
            ),
        ));
    }
    for (section, list) in spec
        .resources
        .iter()
        .flat_map(|r| [("requests", &r.requests), ("limits", &r.limits)])
    {
        for (name, value) in list {
            let path = format!("spec.resources.{section}.{name}");
            if !known_pool_resource(name) {
                errors.push(FieldError::new(
                    &path,
                    format!("Unsupported value: {name:?}: supported resources: cpu, memory, nvidia.com/gpu, nvidia.com/gpu.shared, nvidia.com/mig-<profile>"),
                ));
            } else if !quantity::parse(value).is_some_and(|v| v > 0.0) {
                errors.push(FieldError::new(
                    &path,
                    format!("Invalid value: {value:?}: must be a positive quantity"),
                ));
            } else if name.starts_with("nvidia.com/")
                && quantity::parse(value).is_some_and(|v| v.fract() != 0.0)
            {
                errors.push(FieldError::new(
                    &path,
                    format!("Invalid value: {value:?}: must be a whole number of devices"),
                ));
            }
        }
    }
    errors
}

/// What an InferenceService placed on a pool (`spec.predictor.pool`) may not ask for: a runtime
/// of its own, autoscaling (its copies are `minReplicas`), per-replica resources (the pool's),
/// and, for now, traffic split between revisions (a new model replaces the old one on the pool
/// once placed).
pub fn check_pooled(isvc: &crate::InferenceService, errors: &mut Vec<FieldError>) {
    let predictor = &isvc.spec.predictor;
    let Some(pool) = predictor.pool.as_deref() else {
        return;
    };
    if !is_dns_label(pool, 63) {
        errors.push(FieldError::new(
            "spec.predictor.pool",
            format!("Invalid value: {pool:?}: the name of a ServerPool of the namespace"),
        ));
    }
    let conflicts = [
        (
            "spec.predictor.runtime",
            predictor
                .runtime
                .as_deref()
                .is_some_and(|r| r != crate::validate::BUILTIN_RUNTIME),
        ),
        (
            "spec.predictor.maxReplicas",
            predictor
                .max_replicas
                .is_some_and(|m| m != predictor.replicas()),
        ),
        (
            "spec.predictor.scaleMetric",
            predictor.scale_metric.is_some(),
        ),
        (
            "spec.predictor.autoscaling",
            predictor.autoscaling.is_some(),
        ),
        ("spec.predictor.resources", predictor.resources.is_some()),
        (
            "spec.predictor.canaryTrafficPercent",
            predictor.canary_traffic_percent.is_some(),
        ),
        ("spec.experiment", isvc.spec.experiment.is_some()),
        ("spec.shadow", isvc.spec.shadow.is_some()),
        (
            "spec.rollout.strategy",
            isvc.spec.rollout.as_ref().is_some_and(|r| {
                r.strategy
                    .is_some_and(|s| s != crate::RolloutStrategy::Rolling)
            }),
        ),
    ];
    for (path, conflicting) in conflicts {
        if conflicting {
            errors.push(FieldError::new(
                path,
                format!("Forbidden: not with spec.predictor.pool ({pool}): a pooled model runs on the pool's servers, minReplicas copies of it"),
            ));
        }
    }
    if predictor.min_replicas == Some(0) {
        errors.push(FieldError::new(
            "spec.predictor.minReplicas",
            "Invalid value: 0: a pooled model has at least one copy (an idle one costs nothing once evicted)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(spec: ServerPoolSpec) -> ServerPool {
        let mut pool = ServerPool::new("small", spec);
        pool.metadata.namespace = Some("team-a".into());
        pool
    }

    #[test]
    fn the_budget_is_given_or_derived_from_the_memory_limit() {
        let given = ServerPoolSpec {
            memory_budget: Some("3Gi".into()),
            ..Default::default()
        };
        assert_eq!(given.memory_budget_bytes(), Some(3 << 30));
        assert!(validate_pool(&pool(given)).is_empty());
        let derived = ServerPoolSpec {
            resources: Some(Resources {
                limits: [("memory".to_string(), "4Gi".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(derived.memory_budget_bytes(), Some(3 << 30));
        assert!(validate_pool(&pool(derived)).is_empty());
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = ServerPoolSpec {
            replicas: Some(0),
            memory_budget: Some("lots".into()),
            overcommit_percent: Some(5000),
            resources: Some(Resources {
                limits: [
                    ("nvidia.com/mig-1g.18gb".to_string(), "1".to_string()),
                    ("nvidia.com/gpu.shared".to_string(), "0.5".to_string()),
                    ("disk".to_string(), "1".to_string()),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let paths: Vec<String> = validate_pool(&pool(bad))
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "spec.replicas",
                "spec.overcommitPercent",
                "spec.memoryBudget",
                "spec.resources.limits.disk",
                "spec.resources.limits.nvidia.com/gpu.shared",
            ]
        );
        let unbounded = ServerPoolSpec::default();
        let errors = validate_pool(&pool(unbounded));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.starts_with("Required value"),
            "{errors:?}"
        );
    }
}
