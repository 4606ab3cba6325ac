//! The CustomResourceDefinitions of Ferry's resources, as the operator installs them and as
//! `deploy/crds/` holds them (a test fails when the committed files drift from the types).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{ClusterServingRuntime, InferenceService, ServerPool, ServingRuntime};

/// Every CRD, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        InferenceService::crd(),
        ServingRuntime::crd(),
        ClusterServingRuntime::crd(),
        ServerPool::crd(),
    ]
}

/// File name of a CRD under `deploy/crds/`: `<group>_<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as YAML.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    serde_norway::to_string(crd).expect("a CRD serializes")
}

/// Every CRD as one multi-document YAML stream (`ferry crd`).
pub fn all_yaml() -> String {
    crds().iter().map(to_yaml).collect::<Vec<_>>().join("---\n")
}
