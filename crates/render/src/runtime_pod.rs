//! The pod of a ServingRuntime: its containers, the first one serving the model. What Ferry
//! adds to that container, each only where the runtime left it out (probes, ports, security
//! context) or always (the model's environment, the predictor's resources when it asks for any):
//! - `FERRY_MODEL_NAME`, `FERRY_MODEL_URI`, `FERRY_MODEL_PATH` (the file, local path or where
//!   the init step put a downloaded one), `FERRY_MODEL_DIR` and `POD_IP`, first in `env`, so
//!   the runtime's own `env`, `command` and `args` may use them as `$(FERRY_MODEL_PATH)`;
//! - ports named `http` and `grpc`, and the pod annotations the router reads them from;
//! - probes by protocol: OIP v2 model-ready / live, or for v1-only runtimes
//!   `/v1/models/<name>` and a TCP check;
//! - for remote models (`s3://`, `gs://`, `http(s)://`, `oci://`), an init container running
//!   `ferry fetch` through the model cache ([`crate::storage`]) into an emptyDir at
//!   [`MODEL_DIR`] (non-root, read-only root filesystem), mounted read-only for the runtime;
//!   for `pvc://`, the claim mounted read-only.

use ferry_api::{InferenceService, ServingRuntime};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SecurityContext, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::revision::{NON_ROOT_ID, Probes, http_get, no_capabilities, pod_ip_env};
use crate::{HTTP_PORT, MODEL_DIR, RenderOptions};

/// The runtime's pod for `isvc`'s model, and its REST and gRPC ports.
pub(crate) fn pod(
    isvc: &InferenceService,
    runtime: &ServingRuntime,
    options: &RenderOptions,
    resources: ResourceRequirements,
) -> (PodSpec, Option<(u16, Option<u16>)>) {
    let predictor = &isvc.spec.predictor;
    let model = isvc.model_name();
    let spec = &runtime.spec;
    let uri = predictor.model.uri.as_str();
    let access = crate::storage::ModelAccess::of(isvc, options);
    let fetched = access.remote;
    let model_path = if fetched {
        let file = ferry_api::ModelUri::parse(uri)
            .ok()
            .and_then(|u| u.file_name().map(str::to_string))
            .unwrap_or_else(|| "model".into());
        format!("{MODEL_DIR}/{file}")
    } else {
        access.path.clone()
    };
    let model_dir = std::path::Path::new(&model_path)
        .parent()
        .map(|dir| dir.display().to_string())
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| ".".to_string());
    let mut pod = PodSpec {
        termination_grace_period_seconds: Some(30),
        ..PodSpec::default()
    };
    let mut containers = spec.containers.clone();
    // KServe's placeholders ({{.Labels.modelClass}}, ...) from the InferenceService.
    for container in &mut containers {
        let fill = |text: &mut String| *text = ferry_api::kserve_runtime::fill(text, isvc);
        container.args.iter_mut().flatten().for_each(fill);
        container.command.iter_mut().flatten().for_each(fill);
        for var in container.env.iter_mut().flatten() {
            var.value.iter_mut().for_each(fill);
        }
    }
    if !spec.volumes.is_empty() {
        pod.volumes = Some(spec.volumes.clone());
    }
    if !spec.image_pull_secrets.is_empty() {
        pod.image_pull_secrets = Some(spec.image_pull_secrets.clone());
    }
    let Some(first) = containers.first_mut() else {
        // Validation refuses a runtime without containers; nothing to serve with.
        return (pod, None);
    };
    if let (Some(version), Some(current)) = (
        predictor.model.runtime_version.as_deref(),
        first.image.as_deref(),
    ) {
        first.image = Some(crate::image(current, Some(version)));
    }
    let ours = [
        ("FERRY_MODEL_NAME", model.clone()),
        ("FERRY_MODEL_URI", uri.to_string()),
        ("FERRY_MODEL_PATH", model_path.clone()),
        ("FERRY_MODEL_DIR", model_dir),
    ];
    let mut env = vec![pod_ip_env()];
    env.extend(ours.iter().map(|(name, value)| EnvVar {
        name: name.to_string(),
        value: Some(value.clone()),
        ..EnvVar::default()
    }));
    for var in first.env.take().unwrap_or_default() {
        if var.name != "POD_IP" && !ours.iter().any(|(name, _)| *name == var.name) {
            env.push(var);
        }
    }
    first.env = Some(env);
    if resources.requests.is_some() || resources.limits.is_some() {
        first.resources = Some(resources);
    }
    let named_port = |first: &Container, name: &str| {
        first
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
    };
    let http_port = spec
        .http_port
        .or_else(|| named_port(first, "http"))
        .unwrap_or(HTTP_PORT);
    let grpc_port = spec.grpc_port.or_else(|| named_port(first, "grpc"));
    let mut ports = first.ports.take().unwrap_or_default();
    for (name, port) in [("http", Some(http_port)), ("grpc", grpc_port)] {
        let Some(port) = port else { continue };
        if !ports.iter().any(|p| p.container_port == i32::from(port)) {
            ports.push(ContainerPort {
                name: Some(name.into()),
                container_port: port.into(),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            });
        }
    }
    first.ports = Some(ports);
    let v2 = spec.protocol_versions.is_empty() || spec.protocol_versions.iter().any(|p| p == "v2");
    let port = IntOrString::Int(http_port.into());
    let (ready, live) = if v2 {
        (
            http_get(format!("/v2/models/{model}/ready"), port.clone()),
            http_get("/v2/health/live".into(), port),
        )
    } else {
        (
            http_get(format!("/v1/models/{model}"), port.clone()),
            Probe {
                tcp_socket: Some(TCPSocketAction {
                    port,
                    ..TCPSocketAction::default()
                }),
                ..Probe::default()
            },
        )
    };
    let probes = Probes::new(isvc, ready, live);
    first.startup_probe.get_or_insert(probes.startup);
    first.readiness_probe.get_or_insert(probes.readiness);
    first.liveness_probe.get_or_insert(probes.liveness);
    first
        .termination_message_policy
        .get_or_insert_with(|| "FallbackToLogsOnError".into());
    first
        .security_context
        .get_or_insert_with(|| SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: no_capabilities(),
            ..SecurityContext::default()
        });
    if !fetched && !access.mounts.is_empty() {
        // pvc://: the claim, read-only, where FERRY_MODEL_PATH points.
        first
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(access.mounts.iter().cloned());
        pod.volumes
            .get_or_insert_with(Vec::new)
            .extend(access.volumes.iter().cloned());
    }
    if fetched {
        first
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "ferry-model".into(),
                mount_path: MODEL_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        pod.init_containers = Some(vec![Container {
            name: "fetch-model".into(),
            image: Some(options.image.clone()),
            args: Some(vec![
                "fetch".into(),
                uri.to_string(),
                model_path,
                "--cache-dir".into(),
                crate::storage::CACHE_DIR.into(),
            ]),
            env_from: (!access.env_from.is_empty()).then(|| access.env_from.clone()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(NON_ROOT_ID),
                run_as_group: Some(NON_ROOT_ID),
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: no_capabilities(),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(
                std::iter::once(VolumeMount {
                    name: "ferry-model".into(),
                    mount_path: MODEL_DIR.into(),
                    ..VolumeMount::default()
                })
                .chain(access.mounts.iter().cloned())
                .collect(),
            ),
            ..Container::default()
        }]);
        pod.volumes.get_or_insert_with(Vec::new).extend(
            std::iter::once(Volume {
                name: "ferry-model".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            })
            .chain(access.volumes.iter().cloned()),
        );
        pod.security_context
            .get_or_insert_with(PodSecurityContext::default)
            .fs_group = Some(NON_ROOT_ID);
    }
    // The runtime's own seccomp choice stands; where it makes none: RuntimeDefault. No
    // ServiceAccount token: a ServingRuntime (KServe's form too) names no ServiceAccount.
    let security = pod
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if security.seccomp_profile.is_none() {
        security.seccomp_profile = crate::isolation::runtime_default_seccomp();
    }
    pod.automount_service_account_token.get_or_insert(false);
    pod.containers = containers;
    (pod, Some((http_port, grpc_port)))
}
