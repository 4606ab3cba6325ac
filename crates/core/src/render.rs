//! The Kubernetes objects of one revision, rendered from the spec alone: what the operator
//! applies and what `ferry render` prints for GitOps review (one function for both).
//!
//! Per revision: a Deployment running `ferry server` (readiness = OIP model-ready, liveness,
//! a startup probe sized by `startupTimeoutSeconds`, resources incl. `nvidia.com/gpu`, non-root,
//! read-only root filesystem, bound to the pod IP) and a Service. Labels on everything:
//! `app.kubernetes.io/managed-by=ferry`, `ferry.dev/inferenceservice`, `ferry.dev/revision`,
//! `app.kubernetes.io/component=predictor`.

use std::collections::BTreeMap;

use ferry_api::{InferenceService, LABEL_REVISION, LABEL_SERVICE};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

/// Ports of Ferry's model server in a pod.
pub const HTTP_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 9000;

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
    let owner = isvc.metadata.uid.as_ref().map(|uid| {
        json!([{
            "apiVersion": ferry_api::API_VERSION,
            "kind": "InferenceService",
            "name": name,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true
        }])
    });
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
    let mut args = vec![
        "server".to_string(),
        "--model".to_string(),
        format!(
            "{model}={}",
            predictor.model.local_path().unwrap_or(&predictor.model.uri)
        ),
        "--http-addr".to_string(),
        format!("$(POD_IP):{HTTP_PORT}"),
        "--grpc-addr".to_string(),
        format!("$(POD_IP):{GRPC_PORT}"),
    ];
    if let Some(threads) = predictor.compute_threads() {
        args.extend(["--compute-threads".to_string(), threads.to_string()]);
    }
    let period = 2;
    let startup_failures = (predictor.startup_timeout_seconds() / period).max(1);
    let mut pod_spec = json!({
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
        "containers": [{
            "name": "server",
            "image": options.image,
            "args": args,
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [
                {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}
            ],
            "resources": container_resources,
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
            }
        }]
    });
    if !options.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(options.node_selector);
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
