//! A ServerPool's Deployment: `replicas` pods of `ferry server --memory-budget` with no model of
//! their own (the operator registers the pool's models through each pod's repository API),
//! ready when the server is (`/v2/health/ready`: models loaded on demand do not count), with the
//! pool's resources (cpu, memory, `nvidia.com/gpu`, `nvidia.com/gpu.shared`,
//! `nvidia.com/mig-<profile>`), node selector and tolerations, and a model cache for models
//! fetched from a store. Labels: `app.kubernetes.io/managed-by=ferry`,
//! `app.kubernetes.io/component=pool-server`, `ferry.dev/serverpool=<pool>`.

use std::collections::BTreeMap;

use ferry_api::{COMPONENT_POOL_SERVER, LABEL_POOL, ServerPool};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PodSpec, PodTemplateSpec, ResourceRequirements, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::revision::{http_get, server_container_security, server_pod_security, server_ports};
use crate::{GRPC_PORT, HTTP_PORT, RenderOptions};

/// The name of `pool`'s Deployment.
pub fn deployment_name(pool: &str) -> String {
    format!("{pool}-server")
}

/// The labels of a pool's Deployment and pods.
pub fn labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "ferry".to_string(),
        ),
        ("app.kubernetes.io/name".to_string(), pool.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            COMPONENT_POOL_SERVER.to_string(),
        ),
        (LABEL_POOL.to_string(), pool.to_string()),
    ])
}

/// `pool`'s Deployment, owned by the pool.
pub fn render(pool: &ServerPool, options: &RenderOptions) -> Deployment {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let spec = &pool.spec;
    let labels = labels(&name);
    let selector = BTreeMap::from([(LABEL_POOL.to_string(), name.clone())]);
    let resources = spec.resources.clone().unwrap_or_default();
    let quantities = |map: BTreeMap<String, String>| {
        (!map.is_empty()).then(|| map.into_iter().map(|(k, v)| (k, Quantity(v))).collect())
    };
    let threads = resources
        .limits
        .get("cpu")
        .and_then(|cpu| ferry_api::quantity::parse(cpu))
        .map(|cpu| cpu.ceil().max(1.0) as u32);
    let mut args =
        ferry_core::runtime::pool_server_args(spec.memory_budget_bytes().unwrap_or(0), threads);
    args.extend([
        "--model-cache".to_string(),
        crate::storage::CACHE_DIR.to_string(),
        "--http-addr".to_string(),
        format!("$(POD_IP):{HTTP_PORT}"),
        "--grpc-addr".to_string(),
        format!("$(POD_IP):{GRPC_PORT}"),
    ]);
    let with = |probe: k8s_openapi::api::core::v1::Probe, period: i32, failures: i32| {
        k8s_openapi::api::core::v1::Probe {
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            ..probe
        }
    };
    let ready = http_get(
        "/v2/health/ready".into(),
        IntOrString::String("http".into()),
    );
    let live = http_get("/v2/health/live".into(), IntOrString::String("http".into()));
    let mut node_selector = options.node_selector.clone();
    node_selector.extend(spec.node_selector.clone());
    let pod = PodSpec {
        termination_grace_period_seconds: Some(30),
        automount_service_account_token: Some(false),
        security_context: Some(server_pod_security()),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        containers: vec![Container {
            name: "server".into(),
            image: Some(options.image.clone()),
            args: Some(args),
            env: Some(crate::revision::server_env(options)),
            ports: Some(server_ports()),
            resources: Some(ResourceRequirements {
                requests: quantities(resources.requests),
                limits: quantities(resources.limits),
                ..ResourceRequirements::default()
            }),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            security_context: Some(server_container_security()),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "tmp".into(),
                    mount_path: "/tmp".into(),
                    ..VolumeMount::default()
                },
                crate::storage::cache_mount(),
            ]),
            startup_probe: Some(with(ready.clone(), 1, 120)),
            readiness_probe: Some(with(ready, 1, 2)),
            liveness_probe: Some(with(live, 5, 3)),
            ..Container::default()
        }],
        volumes: Some(vec![
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            crate::storage::cache_volume(options),
        ]),
        ..PodSpec::default()
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(&name)),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(labels.clone()),
            owner_references: pool.metadata.uid.as_ref().map(|uid| {
                vec![OwnerReference {
                    api_version: ferry_api::API_VERSION.to_string(),
                    kind: "ServerPool".to_string(),
                    name: name.clone(),
                    uid: uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(spec.replicas()).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            // A server that goes takes its models' copies with it: one at a time, the new one
            // first.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}
