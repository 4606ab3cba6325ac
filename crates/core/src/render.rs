//! The Kubernetes objects of one revision, rendered from the spec alone: what the operator
//! applies and what `ferry render` prints for GitOps review (one function for both).
//!
//! Per revision: a Deployment running `ferry server` (readiness = OIP model-ready, liveness,
//! a startup probe sized by `startupTimeoutSeconds`, resources incl. `nvidia.com/gpu`, non-root,
//! read-only root filesystem, bound to the pod IP) and a Service. Labels on everything:
//! `app.kubernetes.io/managed-by=ferry`, `ferry.dev/inferenceservice`, `ferry.dev/revision`,
//! `app.kubernetes.io/component=predictor`.
//!
//! Per service ([`render_service`]): the stable Service `<name>` (the status URL), and when the
//! spec asks, a HorizontalPodAutoscaler on the latest revision, an Ingress or an HTTPRoute.

use std::collections::BTreeMap;

use ferry_api::{
    InferenceService, IngressKind, LABEL_REVISION, LABEL_SERVICE, ScaleMetric, ServingRuntime,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{Value, json};

/// Ports of Ferry's model server in a pod.
pub const HTTP_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 9000;
/// The shared router's Service (`deploy/router.yaml`): each InferenceService's stable Service
/// is a DNS alias of it.
pub const ROUTER_SERVICE_HOST: &str = "ferry-router.ferry-system.svc.cluster.local";
/// The router Service's port; REST and gRPC (h2c) share it.
pub const ROUTER_PORT: u16 = 80;

/// Choices the spec does not make.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The `ferry` image.
    pub image: String,
    /// Extra node selector for every pod (the test bed pins pods to its process node).
    pub node_selector: BTreeMap<String, String>,
}

/// The objects of one revision.
#[derive(Debug, Clone)]
pub struct RevisionObjects {
    pub deployment: Deployment,
    pub service: Service,
}

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

/// Annotations on a predictor pod that serves on other ports than Ferry's server (a
/// ServingRuntime's): the router reads them with [`pod_ports`].
pub const ANNOTATION_HTTP_PORT: &str = "ferry.dev/http-port";
pub const ANNOTATION_GRPC_PORT: &str = "ferry.dev/grpc-port";

/// Where the init step puts a model fetched from a URL for a ServingRuntime (KServe's place).
pub const MODEL_DIR: &str = "/mnt/models";

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

/// Render revision `revision` of `isvc` with `replicas` replicas, served by Ferry's own server
/// or, when given, by a ServingRuntime ([`crate::runtime::resolve`] chooses).
pub fn render(
    isvc: &InferenceService,
    revision: &str,
    replicas: u32,
    options: &RenderOptions,
    runtime: Option<&ServingRuntime>,
) -> RevisionObjects {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let namespace = isvc.namespace_or_default();
    let predictor = &isvc.spec.predictor;
    let labels = labels(&name, revision);
    let selector = BTreeMap::from([
        (LABEL_SERVICE.to_string(), name.clone()),
        (LABEL_REVISION.to_string(), revision.to_string()),
    ]);
    let owner = owner_references(isvc);
    let mut metadata = json!({"name": revision, "namespace": namespace, "labels": labels});
    if let Some(owner) = &owner {
        metadata["ownerReferences"] = owner.clone();
    }
    let resources = predictor.resources.clone().unwrap_or_default();
    let mut container_resources = json!({});
    if !resources.requests.is_empty() {
        container_resources["requests"] = json!(resources.requests);
    }
    if !resources.limits.is_empty() {
        container_resources["limits"] = json!(resources.limits);
    }
    let (mut pod_spec, runtime_ports) = match runtime {
        Some(runtime) => runtime_pod(isvc, runtime, options, container_resources),
        None => (ferry_pod(isvc, options, container_resources), None),
    };
    let mut node_selector = options.node_selector.clone();
    node_selector.extend(predictor.node_selector.clone());
    if !node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(node_selector);
    }
    if !predictor.tolerations.is_empty() {
        pod_spec["tolerations"] = json!(predictor.tolerations);
    }
    if !predictor.gpu_products.is_empty() {
        pod_spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{
                "key": GPU_PRODUCT_LABEL, "operator": "In", "values": predictor.gpu_products
            }]}]
        }}});
    }
    let mut template_metadata = json!({"labels": labels});
    // The revision Service's ports: the server's named ones, or a runtime's numbers.
    let service_ports = match runtime_ports {
        None => json!([
            {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
            {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
        ]),
        Some((http, grpc)) => {
            template_metadata["annotations"] = json!({
                ANNOTATION_HTTP_PORT: http.to_string(),
                // A runtime without gRPC: gRPC calls reach its REST port and fail there.
                ANNOTATION_GRPC_PORT: grpc.unwrap_or(http).to_string(),
            });
            let mut ports =
                vec![json!({"name": "http", "port": http, "targetPort": http, "protocol": "TCP"})];
            if let Some(grpc) = grpc {
                ports.push(json!({"name": "grpc", "port": grpc, "targetPort": grpc, "protocol": "TCP", "appProtocol": "grpc"}));
            }
            json!(ports)
        }
    };
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": template_metadata, "spec": pod_spec}
        }
    }))
    .expect("the rendered Deployment matches its type");
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            // Headless: the router addresses pods directly and DNS names the revision's pods, so
            // a revision needs no virtual IP (allocating one made creating a Service take the
            // apiserver seconds under load).
            "clusterIP": "None",
            "selector": selector,
            "ports": service_ports
        }
    }))
    .expect("the rendered Service matches its type");
    RevisionObjects {
        deployment,
        service,
    }
}

/// The startup, readiness and liveness probes of a serving container: `ready` and `live` are
/// the checks (an `httpGet` or `tcpSocket`), the startup probe's budget is the predictor's
/// `startupTimeoutSeconds`. One set of timings for Ferry's server and ServingRuntimes.
fn probes(isvc: &InferenceService, ready: Value, live: Value) -> [(&'static str, Value); 3] {
    let period = 2;
    let startup_failures = (isvc.spec.predictor.startup_timeout_seconds() / period).max(1);
    let with = |mut probe: Value, period: u32, failures: u32| {
        probe["periodSeconds"] = json!(period);
        probe["failureThreshold"] = json!(failures);
        probe
    };
    [
        (
            "startupProbe",
            with(ready.clone(), period, startup_failures),
        ),
        ("readinessProbe", with(ready, 1, 2)),
        ("livenessProbe", with(live, 5, 3)),
    ]
}

/// The pod of Ferry's own server.
fn ferry_pod(
    isvc: &InferenceService,
    options: &RenderOptions,
    container_resources: Value,
) -> Value {
    let predictor = &isvc.spec.predictor;
    let model = isvc.model_name();
    let mut args = server_args(&model, &predictor.model.uri, predictor.compute_threads());
    args.extend([
        // A model that cannot load is a crash the kubelet restarts with back-off, its log tail
        // the termination message (FallbackToLogsOnError): the status can quote why.
        "--exit-on-load-failure".to_string(),
        "--http-addr".to_string(),
        format!("$(POD_IP):{HTTP_PORT}"),
        "--grpc-addr".to_string(),
        format!("$(POD_IP):{GRPC_PORT}"),
    ]);
    let mut pod = json!({
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
        "containers": [{
            "name": "server",
            "image": image(&options.image, predictor.model.runtime_version.as_deref()),
            "args": args,
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [
                {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}
            ],
            "resources": container_resources,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}
            },
            // The one writable place: models named by http(s) URLs are fetched there at start.
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]
        }],
        "volumes": [{"name": "tmp", "emptyDir": {}}]
    });
    let container = &mut pod["containers"][0];
    for (field, probe) in probes(
        isvc,
        json!({"httpGet": {"path": format!("/v2/models/{model}/ready"), "port": "http"}}),
        json!({"httpGet": {"path": "/v2/health/live", "port": "http"}}),
    ) {
        container[field] = probe;
    }
    pod
}

/// The pod of a ServingRuntime: its containers, the first one serving the model. What Ferry adds
/// to that container, each only where the runtime left it out (probes, ports, security context)
/// or always (the model's environment, the predictor's resources when it asks for any):
/// - `FERRY_MODEL_NAME`, `FERRY_MODEL_URI`, `FERRY_MODEL_PATH` (the file, local path or where
///   the init step put a downloaded one), `FERRY_MODEL_DIR` and `POD_IP`, first in `env`, so the
///   runtime's own `env`, `command` and `args` may use them as `$(FERRY_MODEL_PATH)`;
/// - ports named `http` and `grpc`, and the pod annotations the router reads them from;
/// - probes by protocol: OIP v2 model-ready / live, or for v1-only runtimes
///   `/v1/models/<name>` and a TCP check;
/// - for `http(s)://` models, an init container running `ferry fetch` into an emptyDir at
///   [`MODEL_DIR`] (non-root, read-only root filesystem), mounted read-only for the runtime.
fn runtime_pod(
    isvc: &InferenceService,
    runtime: &ServingRuntime,
    options: &RenderOptions,
    container_resources: Value,
) -> (Value, Option<(u16, Option<u16>)>) {
    let predictor = &isvc.spec.predictor;
    let model = isvc.model_name();
    let spec = &runtime.spec;
    let uri = predictor.model.uri.as_str();
    let fetched = uri.starts_with("http://") || uri.starts_with("https://");
    let model_path = if fetched {
        let file = uri
            .split(['?', '#'])
            .next()
            .and_then(|u| u.rsplit('/').next())
            .filter(|f| !f.is_empty() && !f.contains(':'))
            .unwrap_or("model");
        format!("{MODEL_DIR}/{file}")
    } else {
        ferry_api::local_model_path(uri).unwrap_or(uri).to_string()
    };
    let model_dir = std::path::Path::new(&model_path)
        .parent()
        .map(|dir| dir.display().to_string())
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| ".".to_string());
    let mut containers = serde_json::to_value(&spec.containers).expect("containers serialize");
    let first = &mut containers[0];
    if let (Some(version), Some(current)) = (
        predictor.model.runtime_version.as_deref(),
        first["image"].as_str(),
    ) {
        first["image"] = json!(image(current, Some(version)));
    }
    let ours = [
        ("FERRY_MODEL_NAME", model.clone()),
        ("FERRY_MODEL_URI", uri.to_string()),
        ("FERRY_MODEL_PATH", model_path.clone()),
        ("FERRY_MODEL_DIR", model_dir),
    ];
    let mut env =
        vec![json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})];
    env.extend(ours.iter().map(|(k, v)| json!({"name": k, "value": v})));
    for var in first["env"].as_array().cloned().unwrap_or_default() {
        let name = var["name"].as_str().unwrap_or_default();
        if name != "POD_IP" && !ours.iter().any(|(k, _)| *k == name) {
            env.push(var);
        }
    }
    first["env"] = json!(env);
    if container_resources
        .as_object()
        .is_some_and(|r| !r.is_empty())
    {
        first["resources"] = container_resources;
    }
    let named_port = |first: &Value, name: &str| {
        first["ports"].as_array().and_then(|ports| {
            ports
                .iter()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .map(|p| p as u16)
        })
    };
    let http_port = spec
        .http_port
        .or_else(|| named_port(first, "http"))
        .unwrap_or(HTTP_PORT);
    let grpc_port = spec.grpc_port.or_else(|| named_port(first, "grpc"));
    let mut ports = first["ports"].as_array().cloned().unwrap_or_default();
    for (name, port) in [("http", Some(http_port)), ("grpc", grpc_port)] {
        let Some(port) = port else { continue };
        if !ports.iter().any(|p| p["containerPort"] == port) {
            ports.push(json!({"name": name, "containerPort": port, "protocol": "TCP"}));
        }
    }
    first["ports"] = json!(ports);
    let v2 = spec.protocol_versions.is_empty() || spec.protocol_versions.iter().any(|p| p == "v2");
    let (ready, live) = if v2 {
        (
            json!({"httpGet": {"path": format!("/v2/models/{model}/ready"), "port": http_port}}),
            json!({"httpGet": {"path": "/v2/health/live", "port": http_port}}),
        )
    } else {
        (
            json!({"httpGet": {"path": format!("/v1/models/{model}"), "port": http_port}}),
            json!({"tcpSocket": {"port": http_port}}),
        )
    };
    for (field, probe) in probes(isvc, ready, live) {
        if first.get(field).is_none_or(Value::is_null) {
            first[field] = probe;
        }
    }
    if first
        .get("terminationMessagePolicy")
        .is_none_or(Value::is_null)
    {
        first["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    }
    if first.get("securityContext").is_none_or(Value::is_null) {
        first["securityContext"] = json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}
        });
    }
    let mut pod = json!({"terminationGracePeriodSeconds": 30});
    if fetched {
        let mut mounts = first["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        mounts.push(json!({"name": "ferry-model", "mountPath": MODEL_DIR, "readOnly": true}));
        first["volumeMounts"] = json!(mounts);
        pod["initContainers"] = json!([{
            "name": "fetch-model",
            "image": options.image,
            "args": ["fetch", uri, model_path],
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}
            },
            "volumeMounts": [{"name": "ferry-model", "mountPath": MODEL_DIR}]
        }]);
        pod["volumes"] = json!([{"name": "ferry-model", "emptyDir": {}}]);
        pod["securityContext"] = json!({"fsGroup": 65532});
    }
    pod["containers"] = containers;
    (pod, Some((http_port, grpc_port)))
}

/// Every object as one YAML-ready JSON list (Deployment, then Service).
pub fn to_values(objects: &RevisionObjects) -> Vec<Value> {
    vec![
        serde_json::to_value(&objects.deployment).expect("serializes"),
        serde_json::to_value(&objects.service).expect("serializes"),
    ]
}

/// The `ferry server` arguments that serve the model at `uri` as `model` with
/// `compute_threads`: one rule for local replicas and rendered pods (each adds its listeners).
/// Files are passed as paths; `http(s)://` URIs as they are (the server fetches them at start).
pub fn server_args(model: &str, uri: &str, compute_threads: Option<u32>) -> Vec<String> {
    let mut args = vec![
        "server".to_string(),
        "--model".to_string(),
        format!(
            "{model}={}",
            ferry_api::local_model_path(uri).unwrap_or(uri)
        ),
    ];
    if let Some(threads) = compute_threads {
        args.extend(["--compute-threads".to_string(), threads.to_string()]);
    }
    args
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

/// The node label that names a node's GPU model (NVIDIA GPU feature discovery).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// API version of the Gateway API's HTTPRoute (a CRD: present only where it is installed).
pub const HTTP_ROUTE_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// The objects of a service as a whole, across its revisions.
#[derive(Debug, Clone)]
pub struct ServiceObjects {
    /// `<name>`: the stable in-cluster address (the status URL), every ready predictor pod of
    /// any revision behind it.
    pub service: Service,
    /// When `scaleMetric` is set: scales the latest revision's Deployment.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    /// When `spec.ingress` asks for an Ingress.
    pub ingress: Option<Ingress>,
    /// When `spec.ingress` asks for an HTTPRoute (no typed struct: the Gateway API is a CRD).
    pub http_route: Option<Value>,
}

/// Render the service-wide objects of `isvc` whose latest revision is `latest`.
pub fn render_service(isvc: &InferenceService, latest: &str) -> ServiceObjects {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let namespace = isvc.namespace_or_default();
    let predictor = &isvc.spec.predictor;
    let mut labels = labels(&name, latest);
    labels.remove(LABEL_REVISION);
    let mut metadata = json!({"name": name, "namespace": namespace, "labels": labels});
    if let Some(owner) = owner_references(isvc) {
        metadata["ownerReferences"] = owner;
    }
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        // The stable name (the status URL, Ingress and HTTPRoute backends) is an alias of the
        // shared router, as KServe's top-level Service is of its gateway: traffic to it is split
        // by revision, drained and labelled by the router, never sent to pods around it. No
        // selector, so no Endpoints to maintain, and no cluster IP to allocate.
        "spec": {
            "type": "ExternalName",
            "externalName": ROUTER_SERVICE_HOST,
            "ports": [{"name": "http", "port": ROUTER_PORT, "protocol": "TCP"}]
        }
    }))
    .expect("the rendered Service matches its type");
    let autoscaler = predictor.scale_metric.map(|metric| {
        let resource = match metric {
            ScaleMetric::Cpu => "cpu",
            ScaleMetric::Memory => "memory",
        };
        let min = predictor.replicas();
        serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata,
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": latest},
                "minReplicas": min,
                "maxReplicas": predictor.max_replicas.unwrap_or(min).max(min),
                "metrics": [{"type": "Resource", "resource": {
                    "name": resource,
                    "target": {"type": "Utilization", "averageUtilization": predictor.scale_target()}
                }}]
            }
        }))
        .expect("the rendered HorizontalPodAutoscaler matches its type")
    });
    let (mut ingress, mut http_route) = (None, None);
    if let Some(spec) = &isvc.spec.ingress {
        match spec.kind.unwrap_or(IngressKind::Ingress) {
            IngressKind::Ingress => {
                let mut ingress_spec = json!({"rules": [{"host": spec.host, "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": name, "port": {"name": "http"}}}
                }]}}]});
                if let Some(class) = &spec.class_name {
                    ingress_spec["ingressClassName"] = json!(class);
                }
                ingress = Some(
                    serde_json::from_value(json!({
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "Ingress",
                        "metadata": metadata,
                        "spec": ingress_spec
                    }))
                    .expect("the rendered Ingress matches its type"),
                );
            }
            IngressKind::HttpRoute => {
                let gateway = spec.gateway.clone().unwrap_or_default();
                let parent = match gateway.split_once('/') {
                    Some((ns, gw)) => json!({"namespace": ns, "name": gw}),
                    None => json!({"name": gateway}),
                };
                http_route = Some(json!({
                    "apiVersion": HTTP_ROUTE_API_VERSION,
                    "kind": "HTTPRoute",
                    "metadata": metadata,
                    "spec": {
                        "parentRefs": [parent],
                        "hostnames": [spec.host],
                        // The namespace travels as a header too: the router finds it also
                        // behind a gateway that rewrites the Host.
                        "rules": [{
                            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                                "set": [{"name": ferry_api::HEADER_NAMESPACE, "value": namespace}]
                            }}],
                            "backendRefs": [{"name": name, "port": ROUTER_PORT}]
                        }]
                    }
                }));
            }
        }
    }
    ServiceObjects {
        service,
        autoscaler,
        ingress,
        http_route,
    }
}

/// The objects of [`render_service`] as JSON, in apply order.
pub fn service_values(objects: &ServiceObjects) -> Vec<Value> {
    let mut values = vec![serde_json::to_value(&objects.service).expect("serializes")];
    if let Some(hpa) = &objects.autoscaler {
        values.push(serde_json::to_value(hpa).expect("serializes"));
    }
    if let Some(ingress) = &objects.ingress {
        values.push(serde_json::to_value(ingress).expect("serializes"));
    }
    values.extend(objects.http_route.clone());
    values
}

fn owner_references(isvc: &InferenceService) -> Option<Value> {
    isvc.metadata.uid.as_ref().map(|uid| {
        json!([{
            "apiVersion": ferry_api::API_VERSION,
            "kind": "InferenceService",
            "name": isvc.metadata.name.clone().unwrap_or_default(),
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true
        }])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isvc(extra: &str) -> InferenceService {
        let text = format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: iris, namespace: ml}}\nspec:\n  predictor:\n    model: {{format: onnx, uri: file:///models/iris.onnx}}\n    minReplicas: 2\n{extra}"
        );
        crate::testing::isvc(&text)
    }

    fn options() -> RenderOptions {
        RenderOptions {
            image: "ghcr.io/ferry-dev/ferry:0.1.0".into(),
            node_selector: BTreeMap::new(),
        }
    }

    #[test]
    fn a_revision_renders_a_deployment_and_a_service_with_ferrys_labels() {
        let objects = render(&isvc(""), "iris-abc123", 2, &options(), None);
        let d = serde_json::to_value(&objects.deployment).unwrap();
        assert_eq!(d["metadata"]["name"], "iris-abc123");
        assert_eq!(d["metadata"]["namespace"], "ml");
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "ferry"
        );
        assert_eq!(d["metadata"]["labels"]["ferry.dev/revision"], "iris-abc123");
        assert_eq!(d["spec"]["replicas"], 2);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["args"][2], "iris=/models/iris.onnx");
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"],
            "/v2/models/iris/ready"
        );
        assert_eq!(
            c["startupProbe"]["failureThreshold"], 150,
            "300 s budget / 2 s period"
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert!(
            d["metadata"].get("ownerReferences").is_none(),
            "no uid, no owner (ferry render)"
        );
        let s = serde_json::to_value(&objects.service).unwrap();
        assert_eq!(s["spec"]["selector"]["ferry.dev/revision"], "iris-abc123");
    }

    #[test]
    fn placement_reaches_the_pod_spec() {
        let objects = render(
            &isvc(concat!(
                "    resources: {limits: {nvidia.com/gpu: \"2\"}}\n",
                "    nodeSelector: {pool: gpu}\n",
                "    tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]\n",
                "    gpuProducts: [NVIDIA-A100-SXM4-80GB, NVIDIA-H100-80GB-HBM3]\n",
            )),
            "iris-abc123",
            1,
            &RenderOptions {
                node_selector: BTreeMap::from([("zone".to_string(), "a".to_string())]),
                ..options()
            },
            None,
        );
        let d = serde_json::to_value(&objects.deployment).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"], json!({"pool": "gpu", "zone": "a"}));
        assert_eq!(pod["tolerations"][0]["key"], "kwok.x-k8s.io/node");
        assert_eq!(pod["tolerations"][0]["operator"], "Exists");
        let term = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0];
        assert_eq!(term["key"], "nvidia.com/gpu.product");
        assert_eq!(term["operator"], "In");
        assert_eq!(term["values"][1], "NVIDIA-H100-80GB-HBM3");
    }

    #[test]
    fn runtime_version_replaces_the_tag() {
        assert_eq!(
            image("ghcr.io/ferry-dev/ferry:0.1.0", None),
            "ghcr.io/ferry-dev/ferry:0.1.0"
        );
        assert_eq!(
            image("ghcr.io/ferry-dev/ferry:0.1.0", Some("0.2.0")),
            "ghcr.io/ferry-dev/ferry:0.2.0"
        );
        assert_eq!(
            image("localhost:5000/ferry", Some("dev")),
            "localhost:5000/ferry:dev"
        );
        assert_eq!(image("ferry@sha256:abc", Some("1")), "ferry:1");
    }

    #[test]
    fn the_router_alias_names_the_router_that_deploy_installs() {
        let deploy = include_str!("../../../deploy/router.yaml");
        let service = &deploy[deploy.find("\nkind: Service\n").expect("a router Service")..];
        let (name, rest) = ROUTER_SERVICE_HOST.split_once('.').unwrap();
        let namespace = rest.split('.').next().unwrap();
        assert!(service.contains(&format!("  name: {name}\n")), "{service}");
        assert!(service.contains(&format!("  namespace: {namespace}\n")));
        assert!(service.contains(&format!("port: {ROUTER_PORT},")));
    }

    #[test]
    fn service_wide_objects_follow_the_spec() {
        let plain = render_service(&isvc(""), "iris-abc123");
        assert!(
            plain.autoscaler.is_none() && plain.ingress.is_none() && plain.http_route.is_none()
        );
        let s = serde_json::to_value(&plain.service).unwrap();
        assert_eq!(s["metadata"]["name"], "iris");
        assert_eq!(s["spec"]["type"], "ExternalName");
        assert_eq!(s["spec"]["externalName"], ROUTER_SERVICE_HOST);
        assert!(s["spec"].get("selector").is_none(), "{s}");
        assert_eq!(s["spec"]["ports"][0]["port"], ROUTER_PORT);
        assert!(s["metadata"]["labels"].get("ferry.dev/revision").is_none());

        let scaled = render_service(
            &isvc(concat!(
                "    maxReplicas: 5\n    scaleMetric: cpu\n    scaleTarget: 60\n",
                "    resources: {requests: {cpu: 500m}}\n",
                "  ingress: {host: iris.example.com, className: nginx}\n",
            )),
            "iris-abc123",
        );
        let h = serde_json::to_value(scaled.autoscaler.unwrap()).unwrap();
        assert_eq!(h["spec"]["scaleTargetRef"]["name"], "iris-abc123");
        assert_eq!(h["spec"]["minReplicas"], 2);
        assert_eq!(h["spec"]["maxReplicas"], 5);
        assert_eq!(h["spec"]["metrics"][0]["resource"]["name"], "cpu");
        assert_eq!(
            h["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            60
        );
        let i = serde_json::to_value(scaled.ingress.unwrap()).unwrap();
        assert_eq!(i["spec"]["ingressClassName"], "nginx");
        assert_eq!(i["spec"]["rules"][0]["host"], "iris.example.com");
        assert_eq!(
            i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
            "iris"
        );

        let routed = render_service(
            &isvc("  ingress: {kind: HTTPRoute, host: iris.example.com, gateway: infra/public}\n"),
            "iris-abc123",
        );
        let r = routed.http_route.unwrap();
        assert_eq!(r["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(
            r["spec"]["parentRefs"][0],
            json!({"namespace": "infra", "name": "public"})
        );
        assert_eq!(r["spec"]["rules"][0]["backendRefs"][0]["name"], "iris");
        assert_eq!(
            r["spec"]["rules"][0]["filters"][0]["requestHeaderModifier"]["set"][0],
            json!({"name": "ferry-namespace", "value": "ml"})
        );
        assert!(routed.ingress.is_none());
    }

    #[test]
    fn gpus_and_cpu_limits_reach_the_container() {
        let objects = render(
            &isvc("    resources:\n      limits: {cpu: \"3\", nvidia.com/gpu: \"1\"}\n"),
            "iris-abc123",
            1,
            &options(),
            None,
        );
        let d = serde_json::to_value(&objects.deployment).unwrap();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.windows(2).any(|w| w == ["--compute-threads", "3"]),
            "{args:?}"
        );
    }

    fn runtime(extra: &str) -> ServingRuntime {
        let text = format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: ServingRuntime\nmetadata: {{name: triton, namespace: ml}}\nspec:\n  supportedModelFormats: [{{name: onnx}}]\n{extra}"
        );
        crate::testing::runtime(&text)
    }

    #[test]
    fn a_runtime_renders_its_containers_with_the_model_in_their_environment() {
        let triton = runtime(concat!(
            "  grpcPort: 8001\n",
            "  containers:\n",
            "  - name: triton\n",
            "    image: nvcr.io/nvidia/tritonserver:24.01-py3\n",
            "    args: [tritonserver, \"--model-repository=$(FERRY_MODEL_DIR)\"]\n",
            "    env: [{name: FERRY_MODEL_PATH, value: overridden}, {name: LOG, value: \"1\"}]\n",
            "    ports: [{name: rest, containerPort: 8000}]\n",
            "    resources: {limits: {cpu: \"1\"}}\n",
            "  - {name: sidecar, image: example/sidecar:1}\n",
        ));
        let isvc = isvc(concat!(
            "    runtime: triton\n",
            "    resources: {limits: {nvidia.com/gpu: \"1\"}}\n",
        ));
        let objects = render(&isvc, "iris-abc123", 2, &options(), Some(&triton));
        let d = serde_json::to_value(&objects.deployment).unwrap();
        let template = &d["spec"]["template"];
        let c = &template["spec"]["containers"][0];
        assert_eq!(c["name"], "triton");
        assert_eq!(c["image"], "nvcr.io/nvidia/tritonserver:24.01-py3");
        assert_eq!(c["args"][1], "--model-repository=$(FERRY_MODEL_DIR)");
        let env: BTreeMap<&str, &Value> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), &e["value"]))
            .collect();
        assert_eq!(env["FERRY_MODEL_NAME"], "iris");
        assert_eq!(env["FERRY_MODEL_PATH"], "/models/iris.onnx", "ours win");
        assert_eq!(env["FERRY_MODEL_DIR"], "/models");
        assert_eq!(env["FERRY_MODEL_URI"], "file:///models/iris.onnx");
        assert_eq!(env["LOG"], "1");
        assert_eq!(c["env"][0]["name"], "POD_IP", "ours come first, for $(VAR)");
        assert_eq!(
            c["resources"],
            json!({"limits": {"nvidia.com/gpu": "1"}}),
            "the predictor's resources replace the runtime's"
        );
        // No httpPort: the container's port named http, else 8080; grpcPort given.
        let ports: Vec<(String, u64)> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("rest".into(), 8000),
                ("http".into(), 8080),
                ("grpc".into(), 8001)
            ]
        );
        assert_eq!(
            template["metadata"]["annotations"]["ferry.dev/http-port"],
            "8080"
        );
        assert_eq!(
            template["metadata"]["annotations"]["ferry.dev/grpc-port"],
            "8001"
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"],
            json!({"path": "/v2/models/iris/ready", "port": 8080})
        );
        assert_eq!(c["startupProbe"]["failureThreshold"], 150);
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/v2/health/live");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(template["spec"]["containers"][1]["name"], "sidecar");
        assert!(
            template["spec"].get("initContainers").is_none(),
            "a file needs no fetch"
        );
        let s = serde_json::to_value(&objects.service).unwrap();
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(s["spec"]["ports"][1]["targetPort"], 8001);
        // Pods of Ferry's own server carry no port annotations: their ports are the defaults.
        let ferry = render(&isvc, "iris-abc123", 2, &options(), None);
        let d = serde_json::to_value(&ferry.deployment).unwrap();
        assert!(
            d["spec"]["template"]["metadata"]
                .get("annotations")
                .is_none()
        );
        let (http, grpc) = pod_ports(&BTreeMap::new());
        assert_eq!((http, grpc), (HTTP_PORT, GRPC_PORT));
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(template["metadata"]["annotations"].clone()).unwrap();
        assert_eq!(pod_ports(&annotations), (8080, 8001));
    }

    #[test]
    fn a_runtime_model_from_a_url_is_fetched_by_an_init_step() {
        let mlserver = runtime(concat!(
            "  protocolVersions: [v1]\n",
            "  httpPort: 8500\n",
            "  containers:\n",
            "  - name: server\n",
            "    image: example/mlserver:1.0\n",
            "    readinessProbe: {tcpSocket: {port: 8500}}\n",
            "    securityContext: {runAsUser: 1000}\n",
        ));
        let mut isvc = isvc("    runtime: triton\n");
        isvc.spec.predictor.model.uri = "https://models.example/iris/model.onnx?v=2".into();
        isvc.spec.predictor.model.runtime_version = Some("1.1".into());
        let objects = render(&isvc, "iris-abc123", 1, &options(), Some(&mlserver));
        let d = serde_json::to_value(&objects.deployment).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(
            c["image"], "example/mlserver:1.1",
            "runtimeVersion sets the tag"
        );
        let init = &pod["initContainers"][0];
        assert_eq!(init["image"], "ghcr.io/ferry-dev/ferry:0.1.0");
        assert_eq!(
            init["args"],
            json!([
                "fetch",
                "https://models.example/iris/model.onnx?v=2",
                "/mnt/models/model.onnx"
            ])
        );
        assert_eq!(init["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(init["volumeMounts"][0]["mountPath"], MODEL_DIR);
        assert_eq!(
            c["volumeMounts"][0],
            json!({"name": "ferry-model", "mountPath": MODEL_DIR, "readOnly": true})
        );
        assert_eq!(pod["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(
            c["readinessProbe"],
            json!({"tcpSocket": {"port": 8500}}),
            "the runtime's own probe stays"
        );
        assert_eq!(
            c["startupProbe"]["httpGet"],
            json!({"path": "/v1/models/iris", "port": 8500}),
            "v1 only: KServe's v1 model endpoint"
        );
        assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], 8500);
        assert_eq!(c["securityContext"], json!({"runAsUser": 1000}));
        let env = c["env"].as_array().unwrap();
        assert!(
            env.contains(&json!({"name": "FERRY_MODEL_PATH", "value": "/mnt/models/model.onnx"}))
        );
        assert_eq!(
            d["spec"]["template"]["metadata"]["annotations"]["ferry.dev/grpc-port"], "8500",
            "no gRPC: the REST port"
        );
        let s = serde_json::to_value(&objects.service).unwrap();
        assert_eq!(s["spec"]["ports"].as_array().unwrap().len(), 1);
    }
}
