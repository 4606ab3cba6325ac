//! Unit tests of the rendered objects, field by field.

use std::collections::BTreeMap;

use ferry_api::{InferenceService, ServingRuntime};
use serde_json::{Value, json};

use crate::*;

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
        model_cache_host_path: None,
        server_env: Vec::new(),
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
    let term = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        [0]["matchExpressions"][0];
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
    assert!(plain.autoscaler.is_none() && plain.ingress.is_none() && plain.http_route.is_none());
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
    let r = serde_json::to_value(routed.http_route.unwrap()).unwrap();
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
            "/mnt/models/model.onnx",
            "--cache-dir",
            "/var/cache/ferry/models"
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
    assert!(env.contains(&json!({"name": "FERRY_MODEL_PATH", "value": "/mnt/models/model.onnx"})));
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["ferry.dev/grpc-port"], "8500",
        "no gRPC: the REST port"
    );
    let s = serde_json::to_value(&objects.service).unwrap();
    assert_eq!(s["spec"]["ports"].as_array().unwrap().len(), 1);
}

#[test]
fn a_node_model_cache_is_one_host_path_every_pod_shares() {
    let mut isvc = isvc("");
    isvc.spec.predictor.model.uri = "oci://registry.example/models/iris:v1".into();
    let shared = RenderOptions {
        model_cache_host_path: Some("/var/lib/ferry/model-cache".into()),
        ..options()
    };
    for (options, expected) in [
        (
            options(),
            json!({"name": "ferry-model-cache", "emptyDir": {}}),
        ),
        (
            shared,
            json!({"name": "ferry-model-cache", "hostPath": {"path": "/var/lib/ferry/model-cache", "type": "DirectoryOrCreate"}}),
        ),
    ] {
        let objects = render(&isvc, "iris-abc123", 1, &options, None);
        let d = serde_json::to_value(&objects.deployment).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"][1], expected);
        let args = pod["containers"][0]["args"].as_array().unwrap();
        let at = args.iter().position(|a| a == "--model-cache").unwrap();
        assert_eq!(args[at + 1], crate::storage::CACHE_DIR);
        assert!(
            args.iter()
                .any(|a| a == "iris=oci://registry.example/models/iris:v1")
        );
    }
}

#[test]
fn servers_get_the_operators_trace_settings_in_their_environment() {
    let traced = RenderOptions {
        server_env: vec![(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            "http://127.0.0.1:4317".into(),
        )],
        ..options()
    };
    let objects = render(&isvc(""), "iris-abc123", 1, &traced, None);
    let d = serde_json::to_value(&objects.deployment).unwrap();
    let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env[0]["name"], "POD_IP");
    assert_eq!(
        env[1],
        json!({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://127.0.0.1:4317"})
    );
    let plain = render(&isvc(""), "iris-abc123", 1, &options(), None);
    let d = serde_json::to_value(&plain.deployment).unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "no settings, no variables"
    );
}

#[test]
fn a_server_pool_renders_a_deployment_of_empty_servers_with_its_gpu_slices() {
    let pool: ferry_api::ServerPool = serde_norway::from_str(
        "apiVersion: ferry.dev/v1alpha1\nkind: ServerPool\nmetadata: {name: small, namespace: ml, uid: u-1}\nspec:\n  replicas: 3\n  memoryBudget: 1Gi\n  resources: {limits: {cpu: \"2\", memory: 2Gi, nvidia.com/mig-1g.10gb: \"1\"}}\n  nodeSelector: {nvidia.com/mig.strategy: mixed}\n  tolerations: [{key: gpu, operator: Exists, effect: NoSchedule}]\n",
    )
    .unwrap();
    let d = serde_json::to_value(pool::render(&pool, &options())).unwrap();
    assert_eq!(d["metadata"]["name"], "small-server");
    assert_eq!(d["metadata"]["ownerReferences"][0]["kind"], "ServerPool");
    assert_eq!(d["spec"]["replicas"], 3);
    let template = &d["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["ferry.dev/serverpool"],
        "small"
    );
    assert_eq!(
        template["metadata"]["labels"]["app.kubernetes.io/component"],
        "pool-server"
    );
    let pod = &template["spec"];
    assert_eq!(pod["nodeSelector"]["nvidia.com/mig.strategy"], "mixed");
    assert_eq!(pod["tolerations"][0]["key"], "gpu");
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // No model of its own: a budget, threads from the CPU limit, the pod IP.
    assert_eq!(&args[..3], ["server", "--memory-budget", "1073741824"]);
    assert!(
        args.windows(2).any(|w| w == ["--compute-threads", "2"]),
        "{args:?}"
    );
    assert!(args.contains(&"$(POD_IP):8080"), "{args:?}");
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--model=") || *a == "--model")
    );
    assert_eq!(c["resources"]["limits"]["nvidia.com/mig-1g.10gb"], "1");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/v2/health/ready");
}
