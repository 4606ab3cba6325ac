//! Fixtures for other crates' unit tests (feature `testing`): manifests parsed and validated
//! as cluster mode takes them.

use crate::{InferenceService, ServingRuntime, parse_cluster_manifests};

/// The one InferenceService in `yaml` (namespace `default` unless it names one).
pub fn isvc(yaml: &str) -> InferenceService {
    parse_cluster_manifests(yaml, "default")
        .expect("the fixture is valid")
        .services
        .remove(0)
        .isvc
}

/// The one ServingRuntime in `yaml`.
pub fn runtime(yaml: &str) -> ServingRuntime {
    parse_cluster_manifests(yaml, "default")
        .expect("the fixture is valid")
        .runtimes
        .remove(0)
}
