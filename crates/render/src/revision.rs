//! The objects of one revision: a Deployment and a headless Service.
//!
//! Ferry's own server runs `ferry server` (readiness = OIP model-ready, liveness, a startup
//! probe sized by `startupTimeoutSeconds`, resources incl. `nvidia.com/gpu`, non-root,
//! read-only root filesystem, bound to the pod IP); a ServingRuntime's pod is built by
//! [`crate::runtime_pod`]. Placement (node selector, tolerations, GPU products) is the same
//! for both.

use std::collections::BTreeMap;

use ferry_api::{InferenceService, LABEL_REVISION, LABEL_SERVICE, ServingRuntime};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::{
    ANNOTATION_GRPC_PORT, ANNOTATION_HTTP_PORT, GPU_PRODUCT_LABEL, GRPC_PORT, HTTP_PORT,
    RenderOptions, Result,
};

/// The objects of one revision.
#[derive(Debug, Clone)]
pub struct RevisionObjects {
    pub deployment: Deployment,
    pub service: Service,
}

impl RevisionObjects {
    /// Both objects as JSON (keys sorted), Deployment first.
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>> {
        Ok(vec![
            serde_json::to_value(&self.deployment)?,
            serde_json::to_value(&self.service)?,
        ])
    }
}

/// Render revision `revision` of `isvc` with `replicas` replicas, served by Ferry's own server
/// or, when given, by a ServingRuntime (`ferry_core::runtime::resolve` chooses).
pub fn render(
    isvc: &InferenceService,
    revision: &str,
    replicas: u32,
    options: &RenderOptions,
    runtime: Option<&ServingRuntime>,
) -> RevisionObjects {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let labels = crate::labels(&name, revision);
    let selector = BTreeMap::from([
        (LABEL_SERVICE.to_string(), name.clone()),
        (LABEL_REVISION.to_string(), revision.to_string()),
    ]);
    let metadata = crate::metadata(isvc, revision, labels.clone());
    let resources = container_resources(isvc);
    let (mut pod, runtime_ports) = match runtime {
        Some(runtime) => crate::runtime_pod::pod(isvc, runtime, options, resources),
        None => (ferry_pod(isvc, options, resources), None),
    };
    place(isvc, options, &mut pod);
    let mut template_metadata = ObjectMeta {
        labels: Some(labels),
        ..ObjectMeta::default()
    };
    // The revision Service's ports: the server's named ones, or a runtime's numbers.
    let service_ports = match runtime_ports {
        None => vec![
            service_port("http", HTTP_PORT, IntOrString::String("http".into())),
            ServicePort {
                app_protocol: Some("grpc".into()),
                ..service_port("grpc", GRPC_PORT, IntOrString::String("grpc".into()))
            },
        ],
        Some((http, grpc)) => {
            // The runtime's own pod annotations (KServe's prometheus.kserve.io/*), then the
            // router's.
            let mut annotations = runtime
                .map(|r| r.spec.annotations.clone())
                .unwrap_or_default();
            annotations.extend([
                (ANNOTATION_HTTP_PORT.to_string(), http.to_string()),
                // A runtime without gRPC: gRPC calls reach its REST port and fail there.
                (
                    ANNOTATION_GRPC_PORT.to_string(),
                    grpc.unwrap_or(http).to_string(),
                ),
            ]);
            template_metadata.annotations = Some(annotations);
            let mut ports = vec![service_port("http", http, IntOrString::Int(http.into()))];
            if let Some(grpc) = grpc {
                ports.push(ServicePort {
                    app_protocol: Some("grpc".into()),
                    ..service_port("grpc", grpc, IntOrString::Int(grpc.into()))
                });
            }
            ports
        }
    };
    let deployment = Deployment {
        metadata: metadata.clone(),
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(template_metadata),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    };
    let service = Service {
        metadata,
        spec: Some(ServiceSpec {
            // Headless: the router addresses pods directly and DNS names the revision's pods,
            // so a revision needs no virtual IP (allocating one made creating a Service take
            // the apiserver seconds under load).
            cluster_ip: Some("None".into()),
            selector: Some(selector),
            ports: Some(service_ports),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    RevisionObjects {
        deployment,
        service,
    }
}

fn service_port(name: &str, port: u16, target: IntOrString) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: port.into(),
        target_port: Some(target),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The predictor's requests and limits (empty when it asks for none).
fn container_resources(isvc: &InferenceService) -> ResourceRequirements {
    let resources = isvc.spec.predictor.resources.clone().unwrap_or_default();
    let quantities = |map: BTreeMap<String, String>| {
        (!map.is_empty()).then(|| {
            map.into_iter()
                .map(|(k, v)| (k, Quantity(v)))
                .collect::<BTreeMap<_, _>>()
        })
    };
    ResourceRequirements {
        requests: quantities(resources.requests),
        limits: quantities(resources.limits),
        ..ResourceRequirements::default()
    }
}

/// Placement, for Ferry's server and runtimes alike: node selector (the options' and the
/// predictor's), tolerations, and a required node affinity on the GPU products asked for.
fn place(isvc: &InferenceService, options: &RenderOptions, pod: &mut PodSpec) {
    let predictor = &isvc.spec.predictor;
    let mut node_selector = options.node_selector.clone();
    node_selector.extend(predictor.node_selector.clone());
    if !node_selector.is_empty() {
        pod.node_selector = Some(node_selector);
    }
    if !predictor.tolerations.is_empty() {
        pod.tolerations = Some(predictor.tolerations.clone());
    }
    if !predictor.gpu_products.is_empty() {
        pod.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: GPU_PRODUCT_LABEL.into(),
                            operator: "In".into(),
                            values: Some(predictor.gpu_products.clone()),
                        }]),
                        ..NodeSelectorTerm::default()
                    }],
                }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        });
    }
}

/// The startup, readiness and liveness probes of a serving container, from the `ready` and
/// `live` checks; the startup probe's budget is the predictor's `startupTimeoutSeconds`. One
/// set of timings for Ferry's server and ServingRuntimes.
pub(crate) struct Probes {
    pub startup: Probe,
    pub readiness: Probe,
    pub liveness: Probe,
}

impl Probes {
    pub(crate) fn new(isvc: &InferenceService, ready: Probe, live: Probe) -> Probes {
        let period = 2;
        let startup_failures = (isvc.spec.predictor.startup_timeout_seconds() / period).max(1);
        let with = |probe: Probe, period: u32, failures: u32| Probe {
            period_seconds: Some(period as i32),
            failure_threshold: Some(failures as i32),
            ..probe
        };
        Probes {
            startup: with(ready.clone(), period, startup_failures),
            readiness: with(ready, 1, 2),
            liveness: with(live, 5, 3),
        }
    }
}

/// An HTTP GET check of `path` on `port`.
pub(crate) fn http_get(path: String, port: IntOrString) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path),
            port,
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    }
}

/// `POD_IP` from the downward API: servers bind to the pod IP.
/// A server container's environment: its pod's IP, and the options' extra variables.
pub(crate) fn server_env(options: &RenderOptions) -> Vec<EnvVar> {
    std::iter::once(pod_ip_env())
        .chain(options.server_env.iter().map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            ..EnvVar::default()
        }))
        .collect()
}

pub(crate) fn pod_ip_env() -> EnvVar {
    EnvVar {
        name: "POD_IP".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Drop every capability, no privilege escalation.
pub(crate) fn no_capabilities() -> Option<Capabilities> {
    Some(Capabilities {
        drop: Some(vec!["ALL".into()]),
        ..Capabilities::default()
    })
}

/// The user (and group) Ferry's containers run as: not root.
pub(crate) const NON_ROOT_ID: i64 = 65532;

/// The pod security of a pod running Ferry's server (a revision's, a pool's): non-root,
/// seccomp RuntimeDefault.
pub(crate) fn server_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        fs_group: Some(NON_ROOT_ID),
        seccomp_profile: crate::isolation::runtime_default_seccomp(),
        ..PodSecurityContext::default()
    }
}

/// The security of Ferry's server container: read-only root, no privilege, no capabilities.
pub(crate) fn server_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: no_capabilities(),
        ..SecurityContext::default()
    }
}

/// Ferry's server's named ports: `http` and `grpc`.
pub(crate) fn server_ports() -> Vec<ContainerPort> {
    let port = |name: &str, number: u16| ContainerPort {
        name: Some(name.into()),
        container_port: number.into(),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    vec![port("http", HTTP_PORT), port("grpc", GRPC_PORT)]
}

/// The pod of Ferry's own server.
fn ferry_pod(
    isvc: &InferenceService,
    options: &RenderOptions,
    resources: ResourceRequirements,
) -> PodSpec {
    let predictor = &isvc.spec.predictor;
    let model = isvc.model_name();
    let access = crate::storage::ModelAccess::of(isvc, options);
    let mut args =
        ferry_core::runtime::server_args(&model, &access.path, predictor.compute_threads());
    if access.remote {
        args.extend([
            "--model-cache".to_string(),
            crate::storage::CACHE_DIR.to_string(),
        ]);
    }
    args.extend([
        // A model that cannot load is a crash the kubelet restarts with back-off, its log tail
        // the termination message (FallbackToLogsOnError): the status can quote why.
        "--exit-on-load-failure".to_string(),
        "--http-addr".to_string(),
        format!("$(POD_IP):{HTTP_PORT}"),
        "--grpc-addr".to_string(),
        format!("$(POD_IP):{GRPC_PORT}"),
    ]);
    let probes = Probes::new(
        isvc,
        http_get(
            format!("/v2/models/{model}/ready"),
            IntOrString::String("http".into()),
        ),
        http_get("/v2/health/live".into(), IntOrString::String("http".into())),
    );
    PodSpec {
        termination_grace_period_seconds: Some(30),
        // Ferry's server never calls the Kubernetes API: no token in the pod.
        automount_service_account_token: Some(false),
        security_context: Some(server_pod_security()),
        containers: vec![Container {
            name: "server".into(),
            image: Some(crate::image(
                &options.image,
                predictor.model.runtime_version.as_deref(),
            )),
            args: Some(args),
            env: Some(server_env(options)),
            ports: Some(server_ports()),
            resources: Some(resources),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            security_context: Some(server_container_security()),
            env_from: (!access.env_from.is_empty()).then(|| access.env_from.clone()),
            // Writable: /tmp, and the model cache a remote model is fetched into at start.
            volume_mounts: Some(
                std::iter::once(VolumeMount {
                    name: "tmp".into(),
                    mount_path: "/tmp".into(),
                    ..VolumeMount::default()
                })
                .chain(access.mounts.iter().cloned())
                .collect(),
            ),
            startup_probe: Some(probes.startup),
            readiness_probe: Some(probes.readiness),
            liveness_probe: Some(probes.liveness),
            ..Container::default()
        }],
        volumes: Some(
            std::iter::once(Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            })
            .chain(access.volumes)
            .collect(),
        ),
        ..PodSpec::default()
    }
}
