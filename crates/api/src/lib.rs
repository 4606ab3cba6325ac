//! Ferry's API, shared by local mode and cluster mode.
//!
//! - [`InferenceService`] (`ferry.dev/v1alpha1`): the resource users write, derived with kube-rs so
//!   the operator and `ferry up` use the very same types (and the CRD schema comes from them).
//! - [`manifest`]: multi-document YAML/JSON in, validated `InferenceService`s out. Every problem
//!   is reported with its field path and nothing is accepted when any check fails.
//! - [`kserve`]: `serving.kserve.io/v1beta1` manifests converted to ours; unsupported fields are
//!   rejected by name.
//! - [`ServerPool`]: shared model servers that pooled InferenceServices are placed on.
//! - [`revision`]: immutable revisions named from a content hash of the predictor.

mod autoscaling;
pub mod crd;
pub mod diff;
mod experiment;
pub mod kserve;
pub mod kserve_runtime;
pub mod manifest;
mod model_uri;
pub mod namespace;
mod pool;
mod progressive;
pub mod quantity;
pub mod quota;
pub mod repository;
pub mod revision;
mod schema_check;
mod servingruntime;
mod tenancy;
#[cfg(feature = "testing")]
pub mod testing;
mod types;
pub mod validate;

pub use autoscaling::*;
pub use experiment::*;
pub use k8s_openapi;
pub use manifest::{
    ClusterManifests, DocumentErrors, Manifest, ParseError, parse_cluster_manifests,
    parse_local_manifests, parse_manifests,
};
pub use model_uri::{ModelUri, OciReference};
pub use pool::*;
pub use progressive::*;
pub use revision::{Revision, revision_name, revision_name_with_runtime};
pub use servingruntime::*;
pub use tenancy::{
    API_KEY_PREFIX, API_KEY_SECRET_TYPE, ApiKeyRecord, LABEL_API_KEY, RateLimitSpec, api_key_hash,
    api_key_id,
};
pub use types::*;
pub use validate::{FieldError, ValidationErrors};

/// API group of Ferry's resources.
pub const GROUP: &str = "ferry.dev";
/// `apiVersion` of the InferenceService.
pub const API_VERSION: &str = "ferry.dev/v1alpha1";
/// Label naming the InferenceService that owns a replica / object.
pub const LABEL_SERVICE: &str = "ferry.dev/inferenceservice";

/// Who changed an InferenceService and how (`alice: ferry apply -f iris.yaml`), as
/// `ferry apply --kubeconfig` writes it (kubectl's `kubernetes.io/change-cause` in Ferry's
/// name); the operator names it in the `SpecChanged` Event of each new generation.
pub const ANNOTATION_CHANGE_CAUSE: &str = "ferry.dev/change-cause";
/// Label naming the revision of a replica / object.
pub const LABEL_REVISION: &str = "ferry.dev/revision";
/// Label on a ServerPool's Deployment and pods: the pool's name.
pub const LABEL_POOL: &str = "ferry.dev/serverpool";
/// `app.kubernetes.io/component` of a pool server's pods (a predictor's are `predictor`).
pub const COMPONENT_POOL_SERVER: &str = "pool-server";
/// Response header naming the revision that answered.
pub const HEADER_REVISION: &str = "ferry-revision";
/// Request header selecting the namespace at the router.
pub const HEADER_NAMESPACE: &str = "ferry-namespace";
