//! Revisions: immutable snapshots of a predictor, named from a hash of its content.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{PredictorSpec, ServingRuntimeSpec};

/// One immutable revision of an InferenceService's predictor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// `<service>-<6 hex digits of the predictor's hash>`.
    pub name: String,
    /// The model's name in the inference protocol.
    pub model_name: String,
    pub predictor: PredictorSpec,
}

/// The revision name for `predictor` of the service `service`: equal predictors give equal names,
/// any change to what a replica runs (model, runtime, resources, startup budget) gives a new one.
/// Scaling fields (`minReplicas`, `maxReplicas`, `scaleMetric`, `scaleTarget`, `autoscaling`) and the traffic
/// split (`canaryTrafficPercent`) are left out, as a Deployment's `replicas` is left
/// out of its pod-template hash: scaling never restarts replicas.
pub fn revision_name(service: &str, predictor: &PredictorSpec) -> String {
    revision_name_with_runtime(service, predictor, None)
}

/// The revision name for `predictor` served by the ServingRuntime `runtime` (cluster mode): the
/// runtime's spec is part of what a replica runs, so editing the runtime (its image, say) rolls
/// every InferenceService on it out as a new revision. Without a runtime (Ferry's own server)
/// the name is [`revision_name`]'s.
pub fn revision_name_with_runtime(
    service: &str,
    predictor: &PredictorSpec,
    runtime: Option<&ServingRuntimeSpec>,
) -> String {
    let template = PredictorSpec {
        min_replicas: None,
        max_replicas: None,
        scale_metric: None,
        scale_target: None,
        autoscaling: None,
        canary_traffic_percent: None,
        ..predictor.clone()
    };
    // Struct fields serialize in declaration order and maps are BTreeMaps: the JSON is canonical.
    let mut canonical = serde_json::to_vec(&template).expect("a predictor always serializes");
    if let Some(runtime) = runtime {
        canonical.push(b'\n');
        canonical.extend(serde_json::to_vec(runtime).expect("a runtime always serializes"));
    }
    let digest = Sha256::digest(&canonical);
    let hex: String = digest[..3].iter().map(|b| format!("{b:02x}")).collect();
    format!("{service}-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelSpec;

    fn predictor(uri: &str, replicas: u32) -> PredictorSpec {
        PredictorSpec {
            model: ModelSpec {
                format: "onnx".into(),
                uri: uri.into(),
                name: None,
                runtime_version: None,
                secret_name: None,
                format_version: None,
            },
            runtime: None,
            pool: None,
            min_replicas: Some(replicas),
            max_replicas: None,
            resources: None,
            startup_timeout_seconds: None,
            scale_metric: None,
            scale_target: None,
            autoscaling: None,
            canary_traffic_percent: None,
            node_selector: Default::default(),
            tolerations: Vec::new(),
            gpu_products: Vec::new(),
        }
    }

    #[test]
    fn same_content_same_name_any_change_new_name() {
        let a = revision_name("iris", &predictor("/m/v1.onnx", 2));
        assert_eq!(a, revision_name("iris", &predictor("/m/v1.onnx", 2)));
        assert!(
            a.starts_with("iris-") && a.len() == "iris-".len() + 6,
            "{a}"
        );
        assert_ne!(a, revision_name("iris", &predictor("/m/v2.onnx", 2)));
        assert_eq!(
            a,
            revision_name("iris", &predictor("/m/v1.onnx", 3)),
            "scaling is no new revision"
        );
        assert_ne!(a, revision_name("iris2", &predictor("/m/v1.onnx", 2)));
    }

    #[test]
    fn a_runtime_is_part_of_the_revision() {
        let p = predictor("/m/v1.onnx", 2);
        let runtime = |image: &str| ServingRuntimeSpec {
            supported_model_formats: vec![],
            protocol_versions: vec![],
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "server".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            http_port: None,
            grpc_port: None,
            disabled: None,
            annotations: Default::default(),
            volumes: vec![],
            image_pull_secrets: vec![],
        };
        assert_eq!(
            revision_name("iris", &p),
            revision_name_with_runtime("iris", &p, None)
        );
        let triton = revision_name_with_runtime("iris", &p, Some(&runtime("triton:24.01")));
        assert_ne!(triton, revision_name("iris", &p));
        assert_eq!(
            triton,
            revision_name_with_runtime("iris", &p, Some(&runtime("triton:24.01")))
        );
        assert_ne!(
            triton,
            revision_name_with_runtime("iris", &p, Some(&runtime("triton:24.02"))),
            "a new runtime image is a new revision"
        );
    }
}
