//! The `ServingRuntime` resource (`ferry.dev/v1alpha1`): a bring-your-own model server (Triton,
//! vLLM, MLServer, ...) that InferenceServices name in `spec.predictor.runtime`, and its
//! cluster-wide twin `ClusterServingRuntime` (same spec, for every namespace). KServe's
//! `serving.kserve.io/v1alpha1` documents of both kinds convert to these
//! (`crate::kserve_runtime`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, LocalObjectReference, Volume};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A model server image and the model formats it serves.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "ServingRuntime",
    plural = "servingruntimes",
    shortname = "sr",
    namespaced,
    printcolumn = r#"{"name":"Formats","type":"string","jsonPath":".spec.supportedModelFormats[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServingRuntimeSpec {
    /// Model formats this runtime serves; an InferenceService whose format matches may name it.
    pub supported_model_formats: Vec<SupportedModelFormat>,
    /// Inference protocols the runtime speaks (`v2` is the Open Inference Protocol, `v1` KServe's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocol_versions: Vec<String>,
    /// The runtime's containers; the first one serves. The model's local path is passed in the
    /// environment variable `FERRY_MODEL_PATH`.
    pub containers: Vec<Container>,
    /// Port of the runtime's HTTP (REST) endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    /// Port of the runtime's gRPC endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_port: Option<u16>,
    /// A disabled runtime is never chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Annotations for the runtime's pods (KServe's `prometheus.kserve.io/port`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Volumes the runtime's containers mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Secrets to pull the runtime's images with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// A ServingRuntime every namespace may use (`ferry.dev/v1alpha1`, cluster-scoped). A
/// namespace's own ServingRuntime of a format is preferred to a cluster one, as in KServe.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "ClusterServingRuntime",
    plural = "clusterservingruntimes",
    shortname = "csr",
    printcolumn = r#"{"name":"Formats","type":"string","jsonPath":".spec.supportedModelFormats[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ClusterServingRuntimeSpec {
    #[serde(flatten)]
    pub runtime: ServingRuntimeSpec,
}

impl ClusterServingRuntime {
    /// As the resolver and the renderer see it: a ServingRuntime of no namespace.
    pub fn as_runtime(&self) -> ServingRuntime {
        let mut metadata = self.metadata.clone();
        metadata.namespace = None;
        ServingRuntime {
            metadata,
            spec: self.spec.runtime.clone(),
        }
    }
}

/// One model format a runtime serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupportedModelFormat {
    /// Format name, as in `spec.predictor.model.format` (`onnx`, `pytorch`, `tensorrt`, ...).
    pub name: String,
    /// Format version, when it matters: an InferenceService that gives its format's version
    /// only runs on a runtime listing that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether an InferenceService that names no runtime may be given this one for the format
    /// (default true for ferry.dev runtimes; KServe's documents say it themselves, default
    /// false there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_select: Option<bool>,
    /// Among runtimes that may be chosen for a format, the highest priority wins (then the
    /// name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}
