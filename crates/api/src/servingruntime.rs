//! The `ServingRuntime` resource (`ferry.dev/v1alpha1`): a bring-your-own model server (Triton,
//! vLLM, MLServer, ...) that InferenceServices name in `spec.predictor.runtime`.

use k8s_openapi::api::core::v1::Container;
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
}

/// One model format a runtime serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupportedModelFormat {
    /// Format name, as in `spec.predictor.model.format` (`onnx`, `pytorch`, `tensorrt`, ...).
    pub name: String,
    /// Format version, when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}
