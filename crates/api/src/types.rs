//! The `InferenceService` resource (`ferry.dev/v1alpha1`).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of an InferenceService: which model to serve, how, and how to roll out changes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    plural = "inferenceservices",
    shortname = "isvc",
    namespaced,
    status = "InferenceServiceStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.latestRevision"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","description":"Ready replicas of the newest revision","jsonPath":".status.revisions[0].readyReplicas"}"#,
    printcolumn = r#"{"name":"Rollout","type":"string","priority":1,"jsonPath":".status.rollout.phase"}"#,
    printcolumn = r#"{"name":"Canary","type":"integer","priority":1,"description":"Percent of traffic to the revision being rolled out","jsonPath":".status.rollout.weight"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// The model server replicas: which model, how many, with what resources.
    pub predictor: PredictorSpec,
    /// How a change of the predictor reaches traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// An A/B experiment: variants with their own models beside the predictor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<crate::ExperimentSpec>,
    /// Mirror a share of live traffic to another model and compare its answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::ShadowSpec>,
    /// Expose the service outside the cluster through an Ingress or a Gateway API HTTPRoute
    /// (cluster mode; local mode serves every service on its router already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// Requests per second the router lets through to this service (a token bucket, shared by
    /// every client; beyond it 429 with `Retry-After`). Changing it makes no new revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::RateLimitSpec>,
}

/// An Ingress or an HTTPRoute for the service's stable Service (`<name>` in its namespace).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// `Ingress` (networking.k8s.io/v1, the default) or `HTTPRoute` (gateway.networking.k8s.io/v1,
    /// only when the Gateway API is installed; otherwise the IngressReady condition says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<IngressKind>,
    /// The host name clients use, e.g. `iris.example.com`.
    pub host: String,
    /// Ingress: its `ingressClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// HTTPRoute: the Gateway it attaches to (`name` or `namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// The kinds of external entry point.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum IngressKind {
    Ingress,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
}

/// The predictor: the model and the replicas that serve it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictorSpec {
    /// The model to serve.
    pub model: ModelSpec,
    /// Name of a ServingRuntime to run instead of Ferry's own model server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Name of a ServerPool of the namespace to place the model on instead of replicas of its
    /// own; `minReplicas` is then the number of copies, each on a different pool server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Replicas kept running (default 1); 0 with an autoscaler on the router's numbers:
    /// scale to zero, the next request held while a replica starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    /// Upper bound for autoscaling (default: minReplicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    /// Compute resources per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Seconds a new replica may take to load and warm up its model before the rollout is
    /// declared stuck (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_timeout_seconds: Option<u32>,
    /// Autoscale between minReplicas and maxReplicas on this metric: the router's
    /// concurrency, rps or queueDepth (Ferry's engine by default, both modes), or cpu / memory
    /// utilisation of the request (a HorizontalPodAutoscaler, cluster mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_metric: Option<crate::ScaleMetric>,
    /// KServe's manual canary: the latest revision takes this percent of the traffic and the
    /// previously rolled-out revision the rest; removing the field promotes the latest to
    /// 100 %, `0` keeps all traffic on the previous one. Not part of the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_traffic_percent: Option<u32>,
    /// Target per replica for `scaleMetric`: in-flight requests (concurrency, default 4),
    /// requests per second (rps, default 50), queued requests (queueDepth, default 4), or
    /// percent of the request (cpu, memory, gpuUtilization; default 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_target: Option<u32>,
    /// How the autoscaler reacts (engine, windows, delays, cold-start buffer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<crate::AutoscalingSpec>,
    /// Node labels a replica's node must carry (a Pod's `nodeSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the replicas tolerate (a Pod's `tolerations`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// GPU models a replica may run on: values of the `nvidia.com/gpu.product` node label (e.g.
    /// `NVIDIA-A100-SXM4-80GB`), any of them; a required node affinity in cluster mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_products: Vec<String>,
}

/// Where the model comes from and what it is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Model format; `onnx` is served by Ferry's own server.
    pub format: String,
    /// The format's version (KServe's `modelFormat.version`): a ServingRuntime chosen for the
    /// model must list it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_version: Option<String>,
    /// Where the model is: a plain path or `file:///abs/path`, `http(s)://...`, `s3://bucket/key`,
    /// `gs://bucket/key`, `pvc://claim/path` (cluster mode) or `oci://registry/repo:tag`. A key
    /// ending in `/` is a directory (model, tokenizer, config).
    pub uri: String,
    /// Cluster mode: a Secret of the namespace whose keys are given to the model's fetch as
    /// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, `GOOGLE_SERVICE_ACCOUNT`, ...). Local mode reads them from `ferry up`'s own
    /// environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The model's name in the inference protocol (default: the InferenceService's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pin the model server's version (cluster mode: the tag of the `ferry` image; default: the
    /// operator's own). Local mode always runs its own binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_version: Option<String>,
}

/// Requests and limits, keyed by resource name (`cpu`, `memory`, `nvidia.com/gpu`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

/// Rollout strategy and its bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// `rolling` (the default), `canary` or `blueGreen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RolloutStrategy>,
    /// Canary: the new revision's share of traffic, step by step; after the last step 100 %.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::CanaryStep>,
    /// Canary and blue-green: automatic analysis on the router's numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<crate::AnalysisSpec>,
    /// Roll back when the analysis fails `failureLimit` times in a row (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
    /// A request the new revision fails before answering (or answers 5xx) is retried once on
    /// the stable revision (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on_stable: Option<bool>,
    /// Blue-green settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<crate::BlueGreenSpec>,
    /// Replicas above the desired count during an update: a number or a percentage (default 25%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub max_surge: Option<IntOrPercent>,
    /// Replicas that may be unavailable during an update: a number or a percentage (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub max_unavailable: Option<IntOrPercent>,
}

/// Rollout strategies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RolloutStrategy {
    /// Replace replicas a few at a time, new ones ready before old ones go.
    Rolling,
    /// Move traffic to the new revision step by step (`steps`), judged by `analysis`.
    Canary,
    /// Bring the new revision up at full size beside the old one, then switch all traffic.
    BlueGreen,
}

impl RolloutSpec {
    /// The strategy, `rolling` when unset.
    pub fn strategy(&self) -> RolloutStrategy {
        self.strategy.unwrap_or(RolloutStrategy::Rolling)
    }
    pub fn auto_rollback(&self) -> bool {
        self.auto_rollback.unwrap_or(true)
    }
    pub fn retry_on_stable(&self) -> bool {
        self.retry_on_stable.unwrap_or(true)
    }
}

/// The structural schema Kubernetes wants for a count-or-percentage (as its own IntOrString).
fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}]
    })
}

/// A count or a percentage such as `"25%"`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(untagged)]
pub enum IntOrPercent {
    Int(u32),
    Percent(String),
}

impl IntOrPercent {
    /// Resolve against `total`; percentages round up (surge) or down (unavailable) as Kubernetes does.
    pub fn resolve(&self, total: u32, round_up: bool) -> Option<u32> {
        match self {
            IntOrPercent::Int(n) => Some(*n),
            IntOrPercent::Percent(text) => {
                let pct: u32 = text.strip_suffix('%')?.trim().parse().ok()?;
                let scaled = u64::from(total) * u64::from(pct);
                let value = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(value).ok()
            }
        }
    }
}

/// Observed state, derived from the replicas by the shared core.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where to send inference requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The revision the spec asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<String>,
    /// Revisions that still have replicas, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// A canary or blue-green rollout: its step, weights and last analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::RolloutStatus>,
    /// An experiment's figures per variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<crate::ExperimentStatus>,
    /// The shadow's figures: copies, agreement with the live answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::ShadowStatus>,
    /// The autoscaler's last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<crate::AutoscalingStatus>,
}

/// Replicas of one revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    pub name: String,
    pub replicas: u32,
    pub ready_replicas: u32,
    /// Share of traffic this revision receives, in percent.
    pub traffic_percent: u32,
}

/// A condition in the Kubernetes style: `Ready`, `RolloutProgressing`, ...
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

impl ModelSpec {
    /// See [`local_model_path`].
    pub fn local_path(&self) -> Option<&str> {
        local_model_path(&self.uri)
    }

    /// The size of the model's file, when it is a local file this process can see (what a
    /// pool's planner estimates from until the model is measured).
    pub fn local_file_bytes(&self) -> Option<u64> {
        std::fs::metadata(self.local_path()?).ok().map(|m| m.len())
    }

    /// What a server that reads the model is told: the local file, else the URI to fetch.
    pub fn reader_path(&self) -> &str {
        self.local_path().unwrap_or(&self.uri)
    }
}

/// The file a model URI names, for `file://` URIs and plain paths; `None` for every other scheme
/// (the model has to be fetched or mounted first).
pub fn local_model_path(uri: &str) -> Option<&str> {
    if let Some(path) = uri.strip_prefix("file://") {
        return Some(path);
    }
    (!uri.contains("://")).then_some(uri)
}

impl PredictorSpec {
    /// Whether a ServingRuntime serves this predictor rather than Ferry's own server: it names
    /// one, or names none and its format is one Ferry's server does not run. The one rule for
    /// local mode's refusal, the operator's runtime resolution and its runtime watch.
    pub fn needs_serving_runtime(&self) -> bool {
        match self.runtime.as_deref() {
            Some(name) => name != crate::validate::BUILTIN_RUNTIME,
            None => !crate::validate::SUPPORTED_FORMATS.contains(&self.model.format.as_str()),
        }
    }

    /// Inference threads of one replica: the CPU limit (else request) rounded up, at least 1;
    /// `None` when the spec sets no CPU (the server then uses every core). Local mode and the
    /// rendered Deployments both pass it as `--compute-threads`.
    pub fn compute_threads(&self) -> Option<u32> {
        let resources = self.resources.as_ref()?;
        let cpu = resources
            .limits
            .get("cpu")
            .or(resources.requests.get("cpu"))?;
        crate::quantity::parse(cpu).map(|cores| cores.ceil().max(1.0) as u32)
    }

    /// The target per replica of `scaleMetric` (its default when unset).
    pub fn scale_target(&self) -> u32 {
        self.scale_target.unwrap_or_else(|| {
            self.scale_metric
                .map_or(80, crate::ScaleMetric::default_target)
        })
    }

    /// Who scales the predictor: `autoscaling.engine`, else Ferry's engine for the router's
    /// metrics and an HPA for cpu / memory.
    pub fn autoscaling_engine(&self) -> crate::AutoscalingEngine {
        self.autoscaling
            .as_ref()
            .and_then(|a| a.engine)
            .unwrap_or(match self.scale_metric {
                Some(m) if m.is_resource() => crate::AutoscalingEngine::Hpa,
                _ => crate::AutoscalingEngine::Ferry,
            })
    }

    /// Ferry's own autoscaler sizes the predictor (engine `ferry` on a metric it measures).
    pub fn ferry_autoscaled(&self) -> bool {
        self.scale_metric.is_some_and(|m| !m.is_resource())
            && self.autoscaling_engine() == crate::AutoscalingEngine::Ferry
    }

    /// The autoscaling settings (defaults when the spec sets none).
    pub fn autoscaling(&self) -> crate::AutoscalingSpec {
        self.autoscaling.clone().unwrap_or_default()
    }

    /// Replicas kept running.
    pub fn replicas(&self) -> u32 {
        self.min_replicas.unwrap_or(1)
    }

    /// Seconds allowed for a new replica to become ready.
    pub fn startup_timeout_seconds(&self) -> u32 {
        self.startup_timeout_seconds.unwrap_or(300)
    }

    /// The model's name in the inference protocol: `model.name`, else the name of the
    /// InferenceService (`service`) it predicts for.
    pub fn model_name(&self, service: &str) -> String {
        self.model
            .name
            .clone()
            .unwrap_or_else(|| service.to_string())
    }
}

impl InferenceService {
    /// The experiment's variants as revisions: (variant name, weight, the predictor serving
    /// the variant's model, its revision name).
    pub fn variants(&self) -> Vec<(String, u32, PredictorSpec, String)> {
        let name = self.metadata.name.clone().unwrap_or_default();
        self.spec
            .experiment
            .iter()
            .flat_map(|e| e.variants.iter())
            .map(|v| {
                let predictor = PredictorSpec {
                    model: v.model.clone(),
                    ..self.spec.predictor.clone()
                };
                let revision = crate::revision_name(&name, &predictor);
                (v.name.clone(), v.weight, predictor, revision)
            })
            .collect()
    }

    /// The shadow as a revision: (percent, the predictor serving its model, its revision).
    pub fn shadow(&self) -> Option<(u32, PredictorSpec, String)> {
        let shadow = self.spec.shadow.as_ref()?;
        let name = self.metadata.name.clone().unwrap_or_default();
        let predictor = PredictorSpec {
            model: shadow.model.clone(),
            ..self.spec.predictor.clone()
        };
        let revision = crate::revision_name(&name, &predictor);
        Some((shadow.percent, predictor, revision))
    }

    /// The model's name in the inference protocol.
    pub fn model_name(&self) -> String {
        self.spec
            .predictor
            .model_name(self.metadata.name.as_deref().unwrap_or_default())
    }

    /// The external hosts clients reach the service by (its Ingress or HTTPRoute host).
    pub fn external_hosts(&self) -> Vec<String> {
        self.spec
            .ingress
            .iter()
            .map(|i| i.host.clone())
            .filter(|h| !h.is_empty())
            .collect()
    }

    /// Namespace, `default` when unset.
    pub fn namespace_or_default(&self) -> String {
        self.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string())
    }
}
