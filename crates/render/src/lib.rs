//! Ferry's Kubernetes objects, built from typed k8s-openapi structs (a field typo is a compile
//! error, not a panic at run time): what the operator applies and what `ferry render` prints
//! for GitOps review, from one set of functions.
//!
//! - [`revision`]: per revision, a Deployment and a headless Service; the pod runs Ferry's own
//!   server ([`revision::render`]) or a ServingRuntime's containers ([`runtime_pod`]).
//! - [`service`]: per InferenceService, the stable Service `<name>` (an alias of the shared
//!   router), and when the spec asks, a HorizontalPodAutoscaler on the latest revision, an
//!   Ingress or a Gateway API HTTPRoute.
//! - [`isolation`]: the NetworkPolicy that lets only Ferry's namespace reach a service's pods,
//!   and the pod security fields every predictor pod carries.
//! - [`pool`]: per ServerPool, the Deployment of its `ferry server` pods.
//! - [`documents`]: `ferry render`'s YAML for a set of manifests.
//!
//! Labels on everything: `app.kubernetes.io/managed-by=ferry`, `ferry.dev/inferenceservice`,
//! `ferry.dev/revision`, `app.kubernetes.io/component=predictor`.

use std::collections::BTreeMap;

use ferry_api::{InferenceService, LABEL_REVISION, LABEL_SERVICE};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub mod isolation;
pub mod keda;
pub mod pool;
pub mod revision;
pub mod runtime_pod;
pub mod service;
pub mod storage;

pub use revision::{RevisionObjects, render};
pub use service::{HttpRoute, ServiceObjects, external_metric_name, render_service};

/// Ports of Ferry's model server in a pod.
pub const HTTP_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 9000;
/// The shared router's Service (`deploy/router.yaml`): each InferenceService's stable Service
/// is a DNS alias of it.
pub const ROUTER_SERVICE_HOST: &str = "ferry-router.ferry-system.svc.cluster.local";
/// The router Service's port; REST and gRPC (h2c) share it.
pub const ROUTER_PORT: u16 = 80;
/// Annotations on a predictor pod that serves on other ports than Ferry's server (a
/// ServingRuntime's): the router reads them with [`pod_ports`].
pub const ANNOTATION_HTTP_PORT: &str = "ferry.dev/http-port";
pub const ANNOTATION_GRPC_PORT: &str = "ferry.dev/grpc-port";
/// Where the init step puts a model fetched from a URL for a ServingRuntime (KServe's place).
pub const MODEL_DIR: &str = "/mnt/models";
/// The node label that names a node's GPU model (NVIDIA GPU feature discovery).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// API version of the Gateway API's HTTPRoute (a CRD: present only where it is installed).
pub const HTTP_ROUTE_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// Choices the spec does not make.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The `ferry` image.
    pub image: String,
    /// Extra node selector for every pod (the test bed pins pods to its process node).
    pub node_selector: BTreeMap<String, String>,
    /// The node directory every pod on a node shares as its model cache (opt-in; default: an
    /// emptyDir per pod). It must be writable by UID 65532.
    pub model_cache_host_path: Option<String>,
    /// Environment every server pod gets besides its own: the OpenTelemetry settings
    /// ([`TRACE_ENV`]) the operator runs with, so the servers export their spans where the
    /// operator and the router export theirs.
    pub server_env: Vec<(String, String)>,
}

/// The OpenTelemetry variables the operator hands on to the servers it runs.
pub const TRACE_ENV: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// Why manifests cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No server can run an InferenceService's model.
    #[error("InferenceService {namespace}/{name}: {reason}: {message}")]
    Runtime {
        namespace: String,
        name: String,
        reason: ferry_core::reason::Reason,
        message: String,
    },
    #[error("cannot write YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("cannot serialize an object: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Labels shared by every object of a revision.
pub fn labels(service: &str, revision: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "ferry".to_string(),
        ),
        ("app.kubernetes.io/name".to_string(), service.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "predictor".to_string(),
        ),
        (LABEL_SERVICE.to_string(), service.to_string()),
        (LABEL_REVISION.to_string(), revision.to_string()),
    ])
}

/// The REST and gRPC ports of a predictor pod, from its annotations (default: Ferry's server's).
pub fn pod_ports(annotations: &BTreeMap<String, String>) -> (u16, u16) {
    let port = |key: &str, default: u16| {
        annotations
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        port(ANNOTATION_HTTP_PORT, HTTP_PORT),
        port(ANNOTATION_GRPC_PORT, GRPC_PORT),
    )
}

/// `image` with its tag replaced by `version` (`spec.predictor.model.runtimeVersion`).
pub fn image(image: &str, version: Option<&str>) -> String {
    let Some(version) = version else {
        return image.to_string();
    };
    let repository = image.split('@').next().unwrap_or(image);
    let slash = repository.rfind('/').map_or(0, |i| i + 1);
    let repository = match repository[slash..].rfind(':') {
        Some(colon) => &repository[..slash + colon],
        None => repository,
    };
    format!("{repository}:{version}")
}

/// The metadata of an object of `isvc` named `name`: its namespace, `labels`, and when the
/// InferenceService has a uid (in a cluster), an owner reference to it, so deletion cascades.
fn metadata(isvc: &InferenceService, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(isvc.namespace_or_default()),
        labels: Some(labels),
        owner_references: isvc.metadata.uid.as_ref().map(|uid| {
            vec![OwnerReference {
                api_version: ferry_api::API_VERSION.to_string(),
                kind: "InferenceService".to_string(),
                name: isvc.metadata.name.clone().unwrap_or_default(),
                uid: uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        }),
        ..ObjectMeta::default()
    }
}

/// `ferry render`: every object of every InferenceService in `manifests` (ServingRuntimes come
/// from the same manifests, as the operator finds them in the namespace), as YAML documents
/// separated by `---`, keys sorted; each revision with its predictor's `minReplicas` (a pooled
/// service has none: its pool's Deployment is rendered instead).
pub fn documents(
    manifests: &ferry_api::ClusterManifests,
    options: &RenderOptions,
) -> Result<String> {
    // KServe's runtime documents first, as the ferry.dev ones to apply in their place.
    let mut documents = Vec::new();
    for converted in &manifests.converted {
        documents.push(serde_norway::to_string(converted)?);
    }
    let runtimes = manifests.all_runtimes();
    for manifest in &manifests.services {
        let isvc = &manifest.isvc;
        let runtime =
            ferry_core::runtime::resolve(isvc, &runtimes).map_err(|p| Error::Runtime {
                namespace: isvc.namespace_or_default(),
                name: isvc.metadata.name.clone().unwrap_or_default(),
                reason: p.reason,
                message: p.message,
            })?;
        let revision = ferry_core::runtime::revision(isvc, runtime);
        if isvc.spec.predictor.pool.is_some() {
            // Placed on its pool's servers: no replicas of its own.
            for value in render_service(isvc, &revision).to_values()? {
                documents.push(serde_norway::to_string(&value)?);
            }
            continue;
        }
        let objects = render(
            isvc,
            &revision,
            isvc.spec.predictor.replicas(),
            options,
            runtime,
        );
        let service = render_service(isvc, &revision);
        for value in objects.to_values()?.into_iter().chain(service.to_values()?) {
            documents.push(serde_norway::to_string(&value)?);
        }
    }
    for server_pool in &manifests.pools {
        let deployment = pool::render(server_pool, options);
        documents.push(serde_norway::to_string(&serde_json::to_value(
            &deployment,
        )?)?);
    }
    Ok(documents.join("---\n"))
}

#[cfg(test)]
pub(crate) use ferry_api::testing;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
