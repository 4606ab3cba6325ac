//! Manifest parsing and validation: every mistake reported with its field path, nothing accepted
//! from a set with any mistake; KServe manifests converted or refused by field name.

use ferry_api::{parse_manifests, revision_name};

const VALID: &str = r#"
apiVersion: ferry.dev/v1alpha1
kind: InferenceService
metadata:
  name: iris
spec:
  predictor:
    model:
      format: onnx
      uri: file:///models/iris-v1.onnx
    minReplicas: 2
    resources:
      requests: {cpu: 500m, memory: 256Mi}
      limits: {cpu: "1", memory: 1Gi}
  rollout:
    strategy: rolling
    maxSurge: 1
    maxUnavailable: "0%"
"#;

fn paths(text: &str) -> Vec<String> {
    let err = parse_manifests(text, "default").expect_err("must be refused");
    err.0
        .iter()
        .flat_map(|d| d.errors.iter().map(|e| e.path.clone()))
        .collect()
}

#[test]
fn a_valid_manifest_parses_with_defaults() {
    let manifests = parse_manifests(VALID, "team-a").unwrap();
    assert_eq!(manifests.len(), 1);
    let isvc = &manifests[0].isvc;
    assert_eq!(isvc.namespace_or_default(), "team-a");
    assert_eq!(isvc.spec.predictor.replicas(), 2);
    assert_eq!(isvc.model_name(), "iris");
    assert!(revision_name("iris", &isvc.spec.predictor).starts_with("iris-"));
}

#[test]
fn every_mistake_is_reported_with_its_path() {
    let text = r#"
apiVersion: ferry.dev/v1alpha1
kind: InferenceService
metadata:
  name: Iris_Model
  namespace: "bad ns"
  owner: me
spec:
  predictorr: {}
  predictor:
    model:
      format: pytorch
      uri: ftp://bucket/model
      name: "bad name"
    runtime: triton
    minReplicas: 3
    maxReplicas: 2
    startupTimeoutSeconds: 0
    resources:
      requests: {cpu: lots, nvidia.com/gpu: "1.5", tpu: "1", memory: 2Gi}
      limits: {memory: 1Gi}
  rollout:
    strategy: recreate
    maxSurge: 0
    maxUnavailable: "0%"
"#;
    let mut found = paths(text);
    found.sort();
    let mut expected = vec!["metadata.owner", "spec.predictorr", "spec.rollout.strategy"];
    expected.sort();
    assert_eq!(found, expected, "structural errors come first, all of them");

    // Structure fixed, the semantic problems all show up at once.
    let text = text
        .replace("  owner: me\n", "")
        .replace("  predictorr: {}\n", "")
        .replace("strategy: recreate", "strategy: rolling");
    let mut found = paths(&text);
    found.sort();
    let mut expected = vec![
        "metadata.name",
        "metadata.namespace",
        "spec.predictor.model.format",
        "spec.predictor.model.uri",
        "spec.predictor.model.name",
        "spec.predictor.runtime",
        "spec.predictor.maxReplicas",
        "spec.predictor.startupTimeoutSeconds",
        "spec.predictor.resources.requests.cpu",
        "spec.predictor.resources.requests.nvidia.com/gpu",
        "spec.predictor.resources.requests.tpu",
        "spec.predictor.resources.requests.memory",
        "spec.rollout.maxUnavailable",
    ];
    expected.sort();
    assert_eq!(found, expected);
}

#[test]
fn every_rollout_mistake_is_reported_with_its_path_and_nothing_applies() {
    let text = r#"
apiVersion: ferry.dev/v1alpha1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    model: {format: onnx, uri: models/iris-v1.onnx}
  rollout:
    strategy: canary
    steps:
      - {weight: 50, pause: 30s}
      - {weight: 20, pause: soon}
      - {weight: 120}
    analysis: {interval: 0s, maxErrorPercent: 150, failureLimit: 0}
    blueGreen: {autoPromoteSeconds: 10}
"#;
    let mut found = paths(text);
    found.sort();
    assert_eq!(
        found,
        vec![
            "spec.rollout.analysis.failureLimit",
            "spec.rollout.analysis.interval",
            "spec.rollout.analysis.maxErrorPercent",
            "spec.rollout.blueGreen",
            "spec.rollout.steps[1].pause",
            "spec.rollout.steps[1].weight",
            "spec.rollout.steps[2].weight",
        ]
    );
    let err = parse_manifests(text, "default").unwrap_err().to_string();
    assert!(err.contains("greater than the previous step's 50"), "{err}");
    assert!(err.contains("untilPromoted"), "{err}");
    let good = r#"
apiVersion: ferry.dev/v1alpha1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    model: {format: onnx, uri: models/iris-v1.onnx}
  rollout:
    strategy: canary
    steps: [{weight: 10, pause: 30s}, {weight: 50, pause: untilPromoted}]
    analysis: {interval: 10s, minRequests: 20, maxErrorPercent: 1, maxP99LatencyMs: 250, maxP99LatencyRatio: 2.0, failureLimit: 2}
    autoRollback: true
    retryOnStable: true
"#;
    let parsed = parse_manifests(good, "default").expect("a valid canary");
    let rollout = parsed[0].isvc.spec.rollout.clone().unwrap();
    assert_eq!(
        rollout.steps[1].pause(),
        Ok(ferry_api::Pause::UntilPromoted)
    );
}

#[test]
fn wrong_types_and_missing_fields_name_their_path() {
    let text = r#"
apiVersion: ferry.dev/v1alpha1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    model: {uri: 42}
    minReplicas: "two"
  rollout: {maxSurge: true}
"#;
    let mut found = paths(text);
    found.sort();
    assert_eq!(
        found,
        vec![
            "spec.predictor.minReplicas",
            "spec.predictor.model.format",
            "spec.predictor.model.uri",
            "spec.rollout.maxSurge"
        ]
    );
    let err = parse_manifests(text, "default").unwrap_err().to_string();
    assert!(
        err.contains("spec.predictor.model.format: Required value"),
        "{err}"
    );
    assert!(err.contains("must be of type string"), "{err}");
}

#[test]
fn one_bad_document_refuses_the_whole_set() {
    let text = format!("{VALID}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n");
    let err = parse_manifests(&text, "default").unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].document, 2);
    assert_eq!(err.0[0].errors[0].path, "kind");
}

#[test]
fn invalid_yaml_is_refused() {
    let err = parse_manifests("apiVersion: [unclosed\n", "default").unwrap_err();
    assert!(err.to_string().contains("invalid YAML"), "{err}");
}

#[test]
fn kserve_manifests_convert() {
    let text = r#"
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris, namespace: ml}
spec:
  predictor:
    minReplicas: 2
    maxReplicas: 3
    canaryTrafficPercent: 10
    model:
      modelFormat: {name: onnx}
      protocolVersion: v2
      storageUri: file:///models/iris-v1.onnx
      resources:
        requests: {cpu: 1, memory: 1Gi}
"#;
    let manifests = parse_manifests(text, "default").unwrap();
    let isvc = &manifests[0].isvc;
    assert_eq!(manifests[0].source, ferry_api::manifest::Source::KServe);
    assert_eq!(isvc.namespace_or_default(), "ml");
    assert_eq!(isvc.spec.predictor.model.uri, "file:///models/iris-v1.onnx");
    assert_eq!(isvc.spec.predictor.model.format, "onnx");
    assert_eq!(isvc.spec.predictor.max_replicas, Some(3));
    assert_eq!(isvc.spec.predictor.canary_traffic_percent, Some(10));
    let requests = &isvc.spec.predictor.resources.as_ref().unwrap().requests;
    assert_eq!(requests["cpu"], "1");
}

#[test]
fn kserve_unsupported_fields_are_refused_by_name() {
    let text = r#"
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris}
spec:
  transformer: {}
  predictor:
    containerConcurrency: 4
    model:
      modelFormat: {name: sklearn}
      storageUri: ftp://bucket/model
"#;
    let mut found = paths(text);
    found.sort();
    assert_eq!(
        found,
        vec!["spec.predictor.containerConcurrency", "spec.transformer"]
    );
    let fixed = text
        .replace("  transformer: {}\n", "")
        .replace("    containerConcurrency: 4\n", "");
    let mut found = paths(&fixed);
    found.sort();
    assert_eq!(
        found,
        vec![
            "spec.predictor.model.modelFormat.name",
            "spec.predictor.model.storageUri"
        ],
        "semantic errors name the KServe fields"
    );
}

#[test]
fn placement_scaling_and_ingress_mistakes_name_their_fields() {
    let text = VALID
        .replace(
            "    minReplicas: 2\n",
            concat!(
                "    minReplicas: 2\n",
                "    scaleMetric: memory\n",
                "    scaleTarget: 150\n",
                "    gpuProducts: [\"-bad-\"]\n",
                "    nodeSelector: {pool: \"no spaces\"}\n",
            ),
        )
        .replace(
            "      requests: {cpu: 500m, memory: 256Mi}\n      limits: {cpu: \"1\", memory: 1Gi}\n",
            "      requests: {cpu: 500m}\n",
        )
        + "  ingress: {host: \"Not A Host\", className: nginx, gateway: public}\n";
    let mut found = paths(&text);
    found.sort();
    assert_eq!(
        found,
        vec![
            "spec.ingress.gateway",
            "spec.ingress.host",
            "spec.predictor.gpuProducts",
            "spec.predictor.gpuProducts[0]",
            "spec.predictor.maxReplicas",
            "spec.predictor.nodeSelector.pool",
            "spec.predictor.resources.requests.memory",
            "spec.predictor.scaleTarget",
        ]
    );
    // The same fields, right, parse; scaling fields do not change the revision.
    let good = VALID.replace(
        "    minReplicas: 2\n",
        concat!(
            "    minReplicas: 2\n",
            "    maxReplicas: 4\n",
            "    scaleMetric: cpu\n",
            "    nodeSelector: {pool: gpu}\n",
            "    tolerations: [{key: dedicated, operator: Equal, value: ml, effect: NoSchedule}]\n",
        ),
    ) + "  ingress: {kind: HTTPRoute, host: iris.example.com, gateway: infra/public}\n";
    let isvc = parse_manifests(&good, "default").unwrap().remove(0).isvc;
    assert_eq!(
        isvc.spec.predictor.tolerations[0].value.as_deref(),
        Some("ml")
    );
    let mut unscaled = isvc.spec.predictor.clone();
    unscaled.scale_metric = None;
    unscaled.max_replicas = None;
    assert_eq!(
        revision_name("iris", &isvc.spec.predictor),
        revision_name("iris", &unscaled)
    );
    let mut moved = isvc.spec.predictor.clone();
    moved.node_selector.clear();
    assert_ne!(
        revision_name("iris", &isvc.spec.predictor),
        revision_name("iris", &moved),
        "placement is part of the pod template"
    );
}

#[test]
fn kserve_placement_and_scaling_convert() {
    let text = r#"
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 3
    scaleMetric: cpu
    scaleTarget: 70
    nodeSelector: {pool: cpu}
    tolerations: [{key: dedicated, operator: Exists}]
    model:
      modelFormat: {name: onnx}
      storageUri: file:///models/iris-v1.onnx
      resources: {requests: {cpu: 1}}
"#;
    let isvc = parse_manifests(text, "default").unwrap().remove(0).isvc;
    assert_eq!(
        isvc.spec.predictor.scale_metric,
        Some(ferry_api::ScaleMetric::Cpu)
    );
    assert_eq!(isvc.spec.predictor.scale_target, Some(70));
    assert_eq!(isvc.spec.predictor.node_selector["pool"], "cpu");
    assert_eq!(
        isvc.spec.predictor.tolerations[0].key.as_deref(),
        Some("dedicated")
    );
    // KServe's Knative metrics convert to Ferry's own autoscaler, scale to zero included.
    let rps = text
        .replace("scaleMetric: cpu", "scaleMetric: rps")
        .replace("minReplicas: 1", "minReplicas: 0");
    let isvc = parse_manifests(&rps, "default").unwrap().remove(0).isvc;
    let predictor = &isvc.spec.predictor;
    assert_eq!(predictor.scale_metric, Some(ferry_api::ScaleMetric::Rps));
    assert_eq!(predictor.min_replicas, Some(0));
    assert!(predictor.ferry_autoscaled());
    let concurrency = text.replace("scaleMetric: cpu", "scaleMetric: concurrency");
    let isvc = parse_manifests(&concurrency, "default")
        .unwrap()
        .remove(0)
        .isvc;
    assert_eq!(
        isvc.spec.predictor.autoscaling_engine(),
        ferry_api::AutoscalingEngine::Ferry
    );
    let unknown = text.replace("scaleMetric: cpu", "scaleMetric: latency");
    assert_eq!(paths(&unknown), vec!["spec.predictor.scaleMetric"]);
    // Zero on a CPU HPA cannot wake on a request.
    let zero_cpu = text.replace("minReplicas: 1", "minReplicas: 0");
    assert_eq!(paths(&zero_cpu), vec!["spec.predictor.minReplicas"]);
}

#[test]
fn autoscaling_settings_are_checked_by_field() {
    let base = r#"
apiVersion: ferry.dev/v1alpha1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 6
    scaleMetric: concurrency
    scaleTarget: 2
    autoscaling: AUTOSCALING
    model: {format: onnx, uri: /models/iris-v1.onnx}
"#;
    let with = |autoscaling: &str| base.replace("AUTOSCALING", autoscaling);
    let isvc = parse_manifests(
        &with(
            "{stableWindowSeconds: 6, scaleDownDelaySeconds: 5, coldStartBuffer: {requests: 64}}",
        ),
        "default",
    )
    .unwrap()
    .remove(0)
    .isvc;
    let spec = isvc.spec.predictor.autoscaling();
    assert_eq!(
        (spec.stable_window_seconds(), spec.panic_window_seconds()),
        (6, 3)
    );
    assert_eq!(spec.cold_start_buffer().requests(), 64);
    assert_eq!(spec.cold_start_buffer().timeout_seconds(), 120);
    assert_eq!(
        paths(&with("{stableWindowSeconds: 2, panicWindowSeconds: 5}")),
        vec!["spec.predictor.autoscaling.panicWindowSeconds"]
    );
    assert_eq!(
        paths(&with("{maxScaleUpRate: 1, coldStartBuffer: {requests: 0}}")),
        vec![
            "spec.predictor.autoscaling.maxScaleUpRate",
            "spec.predictor.autoscaling.coldStartBuffer.requests"
        ]
    );
    // Scale to zero needs Ferry's engine: an HPA cannot wake on a request.
    assert_eq!(
        paths(&with("{engine: hpa}")),
        vec!["spec.predictor.minReplicas"]
    );
    let cpu = with("{engine: ferry}")
        .replace("scaleMetric: concurrency", "scaleMetric: cpu")
        .replace("minReplicas: 0", "minReplicas: 1")
        .replace("scaleTarget: 2", "scaleTarget: 50")
        .replace("model:", "resources: {requests: {cpu: \"1\"}}\n    model:");
    assert_eq!(paths(&cpu), vec!["spec.predictor.autoscaling.engine"]);
}

#[test]
fn cluster_manifests_take_serving_runtimes_and_the_formats_they_serve() {
    let text = r#"
apiVersion: ferry.dev/v1alpha1
kind: ServingRuntime
metadata: {name: triton, namespace: ml}
spec:
  supportedModelFormats: [{name: tensorrt}, {name: onnx}]
  protocolVersions: [v2]
  grpcPort: 8001
  containers: [{name: triton, image: nvcr.io/nvidia/tritonserver:24.01-py3}]
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: resnet, namespace: ml}
spec:
  predictor:
    model:
      modelFormat: {name: tensorrt}
      runtime: triton
      storageUri: https://models.example/resnet.plan
"#;
    let parsed = ferry_api::parse_cluster_manifests(text, "default").unwrap();
    assert_eq!(parsed.runtimes.len(), 1);
    assert_eq!(parsed.runtimes[0].spec.grpc_port, Some(8001));
    let predictor = &parsed.services[0].isvc.spec.predictor;
    assert_eq!(predictor.runtime.as_deref(), Some("triton"));
    assert_eq!(predictor.model.format, "tensorrt");

    // Local mode has no ServingRuntimes: the same InferenceService is refused by its fields (the
    // KServe ones), the runtime document by its kind.
    let err = parse_manifests(text, "default").unwrap_err();
    let all: Vec<String> = err
        .0
        .iter()
        .flat_map(|d| d.errors.iter().map(|e| e.to_string()))
        .collect();
    assert!(all.iter().any(|e| e.starts_with("kind: ")), "{all:?}");
    assert!(
        all.iter()
            .any(|e| e.starts_with("spec.predictor.model.runtime: ") && e.contains("cluster mode")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|e| e.starts_with("spec.predictor.model.modelFormat.name: ")),
        "{all:?}"
    );

    // A runtime's own mistakes, each by its field.
    let bad = r#"
apiVersion: ferry.dev/v1alpha1
kind: ServingRuntime
metadata: {name: ferry}
spec:
  supportedModelFormats: [{name: Bad Format}]
  protocolVersions: [v3]
  httpPort: 0
  containers: [{name: server}]
"#;
    let err = ferry_api::parse_cluster_manifests(bad, "default").unwrap_err();
    let mut found: Vec<String> = err.0[0].errors.iter().map(|e| e.path.clone()).collect();
    found.sort();
    assert_eq!(
        found,
        [
            "metadata.name",
            "spec.containers[0].image",
            "spec.httpPort",
            "spec.protocolVersions[0]",
            "spec.supportedModelFormats[0].name"
        ]
    );
    let none = "apiVersion: ferry.dev/v1alpha1\nkind: ServingRuntime\nmetadata: {name: x}\nspec: {supportedModelFormats: [], containers: []}\n";
    let err = ferry_api::parse_cluster_manifests(none, "default").unwrap_err();
    assert_eq!(err.0[0].errors[0].path, "spec.containers");
}
