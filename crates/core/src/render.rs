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

use ferry_api::{InferenceService, IngressKind, LABEL_REVISION, LABEL_SERVICE, ScaleMetric};
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

/// Render revision `revision` of `isvc` with `replicas` replicas.
pub fn render(
    isvc: &InferenceService,
    revision: &str,
    replicas: u32,
    options: &RenderOptions,
) -> RevisionObjects {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let namespace = isvc.namespace_or_default();
    let predictor = &isvc.spec.predictor;
    let model = isvc.model_name();
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
    let period = 2;
    let startup_failures = (predictor.startup_timeout_seconds() / period).max(1);
    let mut pod_spec = json!({
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
            "startupProbe": {
                "httpGet": {"path": format!("/v2/models/{model}/ready"), "port": "http"},
                "periodSeconds": period, "failureThreshold": startup_failures
            },
            "readinessProbe": {
                "httpGet": {"path": format!("/v2/models/{model}/ready"), "port": "http"},
                "periodSeconds": 1, "failureThreshold": 2
            },
            "livenessProbe": {
                "httpGet": {"path": "/v2/health/live", "port": "http"},
                "periodSeconds": 5, "failureThreshold": 3
            },
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
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec}
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
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
            ]
        }
    }))
    .expect("the rendered Service matches its type");
    RevisionObjects {
        deployment,
        service,
    }
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
                        "rules": [{"backendRefs": [{"name": name, "port": ROUTER_PORT}]}]
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
        ferry_api::parse_manifests(&text, "default")
            .unwrap()
            .remove(0)
            .isvc
    }

    fn options() -> RenderOptions {
        RenderOptions {
            image: "ghcr.io/ferry-dev/ferry:0.1.0".into(),
            node_selector: BTreeMap::new(),
        }
    }

    #[test]
    fn a_revision_renders_a_deployment_and_a_service_with_ferrys_labels() {
        let objects = render(&isvc(""), "iris-abc123", 2, &options());
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
        assert!(routed.ingress.is_none());
    }

    #[test]
    fn gpus_and_cpu_limits_reach_the_container() {
        let objects = render(
            &isvc("    resources:\n      limits: {cpu: \"3\", nvidia.com/gpu: \"1\"}\n"),
            "iris-abc123",
            1,
            &options(),
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
}
