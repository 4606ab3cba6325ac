//! Revisions: immutable snapshots of a predictor, named from a hash of its content.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::PredictorSpec;

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
/// Scaling fields (`minReplicas`, `maxReplicas`, `scaleMetric`, `scaleTarget`) are left out, as a Deployment's `replicas` is left
/// out of its pod-template hash: scaling never restarts replicas.
pub fn revision_name(service: &str, predictor: &PredictorSpec) -> String {
    let template = PredictorSpec {
        min_replicas: None,
        max_replicas: None,
        scale_metric: None,
        scale_target: None,
        ..predictor.clone()
    };
    // Struct fields serialize in declaration order and maps are BTreeMaps: the JSON is canonical.
    let canonical = serde_json::to_vec(&template).expect("a predictor always serializes");
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
            },
            runtime: None,
            min_replicas: Some(replicas),
            max_replicas: None,
            resources: None,
            startup_timeout_seconds: None,
            scale_metric: None,
            scale_target: None,
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
}
