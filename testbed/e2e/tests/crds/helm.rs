//! The Helm chart, by the real helm (`testbed/run/helm`, built by testbed/build.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_testbed_e2e::{
    TempNamespace, admin_client, apply_in, condition, eventually, install_crds, iris_manifest,
    isvc_json, operator_leader, ready_pod_ip,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::serde::Deserialize;
use kube::Api;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart() -> String {
    repo().join("deploy/helm/ferry").display().to_string()
}

/// The test bed's helm; `None` (the test skips) where the test bed is not built, unless the
/// run requires the test bed.
fn helm() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../run/helm");
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("FERRY_REQUIRE_TESTBED").is_none(),
        "{} is missing: testbed/up.sh links it (testbed/build.sh builds helm)",
        path.display()
    );
    None
}

fn run_helm(helm: &Path, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(helm);
    command.args(args);
    if let Some(kubeconfig) = std::env::var_os("FERRY_TESTBED_KUBECONFIG") {
        command.arg("--kubeconfig").arg(kubeconfig);
    }
    // helm's own state (repositories, cache) stays out of the user's home.
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm runs")
}

/// Objects of YAML `text` by (kind, namespace, name).
fn objects(text: &str) -> BTreeMap<(String, String, String), Value> {
    let mut out = BTreeMap::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document).expect("YAML");
        if value.is_null() {
            continue;
        }
        let key = (
            value["kind"].as_str().unwrap_or_default().to_string(),
            value["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        // deploy/operator.yaml and router.yaml both carry the Namespace: the same object.
        if let Some(earlier) = out.insert(key.clone(), value.clone()) {
            assert_eq!(earlier, value, "{key:?} twice, differently");
        }
    }
    out
}

fn deploy(files: &[&str]) -> BTreeMap<(String, String, String), Value> {
    let mut text = String::new();
    let crds = repo().join("deploy/crds");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&crds)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.extend(files.iter().map(|f| repo().join("deploy").join(f)));
    for path in paths {
        text.push_str(&std::fs::read_to_string(&path).unwrap());
        text.push_str("\n---\n");
    }
    let mut objects = objects(&text);
    // The release namespace is helm's to create (--create-namespace), not the chart's.
    objects.retain(|(kind, _, _), _| kind != "Namespace");
    objects
}

fn template(helm: &Path, extra: &[&str]) -> std::process::Output {
    let chart = chart();
    let mut args = vec![
        "template",
        "ferry",
        chart.as_str(),
        "--namespace",
        "ferry-system",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    run_helm(helm, &args)
}

fn rendered(helm: &Path, extra: &[&str]) -> BTreeMap<(String, String, String), Value> {
    let out = template(helm, extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    objects(&String::from_utf8_lossy(&out.stdout))
}

fn differences(
    chart: &BTreeMap<(String, String, String), Value>,
    deploy: &BTreeMap<(String, String, String), Value>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in deploy {
        match chart.get(key) {
            None => out.push(format!("{key:?}: in deploy/, not rendered by the chart")),
            Some(rendered) if rendered != value => out.push(format!(
                "{key:?} differs:\n{}",
                ferry_api::diff::unified(
                    &ferry_api::diff::authored_yaml(value),
                    &ferry_api::diff::authored_yaml(rendered),
                    "deploy",
                    "chart"
                )
                .unwrap_or_else(|| "(only in fields a review drops)".into())
            )),
            Some(_) => {}
        }
    }
    out.extend(
        chart
            .keys()
            .filter(|k| !deploy.contains_key(*k))
            .map(|k| format!("{k:?}: rendered by the chart, not in deploy/")),
    );
    out
}

#[test]
fn the_chart_with_default_values_renders_exactly_deploys_manifests() {
    let Some(helm) = helm() else {
        return;
    };
    let lint = run_helm(
        &helm,
        &["lint", &chart(), "--namespace", "ferry-system", "--strict"],
    );
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );

    let drift = differences(
        &rendered(&helm, &[]),
        &deploy(&["operator.yaml", "router.yaml"]),
    );
    assert!(
        drift.is_empty(),
        "the chart drifted from deploy/:\n{}",
        drift.join("\n")
    );
    let drift = differences(
        &rendered(&helm, &["--set", "operator.externalMetrics=true"]),
        &deploy(&["operator.yaml", "router.yaml", "external-metrics.yaml"]),
    );
    assert!(
        drift.is_empty(),
        "externalMetrics drifted from deploy/:\n{}",
        drift.join("\n")
    );

    let chart_yaml: Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("deploy/helm/ferry/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart_yaml["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_charts_values_change_what_they_say() {
    let Some(helm) = helm() else {
        return;
    };
    let objects = rendered(
        &helm,
        &[
            "--set",
            "image.repository=registry.example/ferry",
            "--set",
            "image.tag=9.9.9",
            "--set",
            "image.pullPolicy=Always",
            "--set",
            "operator.replicas=3",
            "--set",
            "router.replicas=4",
            "--set",
            "router.tls.secretName=router-tls",
            "--set",
            "operator.resources.requests.cpu=250m",
            "--set",
            "router.resources.limits.memory=1Gi",
            "--set",
            "nodeSelector.pool=system",
            "--set",
            "operator.logLevel=debug",
            "--set",
            "tracing.otlpEndpoint=http://otel-collector.observability:4317",
            "--set",
            "tracing.sampler=parentbased_traceidratio",
            "--set-string",
            "tracing.samplerArg=0.25",
            "--set-json",
            r#"tolerations=[{"key":"dedicated","operator":"Exists","effect":"NoSchedule"}]"#,
        ],
    );
    let deployment = |name: &str| {
        objects[&(
            "Deployment".to_string(),
            "ferry-system".to_string(),
            name.to_string(),
        )]
            .clone()
    };
    let operator = deployment("ferry-operator");
    let router = deployment("ferry-router");
    assert_eq!(operator["spec"]["replicas"], 3);
    assert_eq!(router["spec"]["replicas"], 4);
    for d in [&operator, &router] {
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["image"],
            "registry.example/ferry:9.9.9"
        );
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["nodeSelector"]["pool"], "system");
        assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    }
    // Traces: the operator (which hands them on to the servers) and the router export.
    for d in [&operator, &router] {
        let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone();
        let value = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .map(|e| e["value"].clone())
        };
        assert_eq!(
            value("OTEL_EXPORTER_OTLP_ENDPOINT"),
            Some("http://otel-collector.observability:4317".into()),
            "{env:?}"
        );
        assert_eq!(
            value("OTEL_TRACES_SAMPLER"),
            Some("parentbased_traceidratio".into())
        );
        assert_eq!(value("OTEL_TRACES_SAMPLER_ARG"), Some("0.25".into()));
    }
    let op = &operator["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(op["resources"]["requests"]["cpu"], "250m");
    assert!(
        op["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "FERRY_LOG" && e["value"] == "debug"),
        "{op}"
    );
    let container = &router["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["limits"]["memory"], "1Gi");
    let env = container["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "FERRY_ROUTER_REPLICAS" && e["value"] == "4"),
        "{env:?}"
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "router",
            "--addr",
            "$(POD_IP):8443",
            "--plain-addr",
            "$(POD_IP):8080",
            "--tls-cert",
            "/etc/ferry/tls/tls.crt",
            "--tls-key",
            "/etc/ferry/tls/tls.key"
        ]
    );
    assert_eq!(
        router["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "router-tls"
    );
    let service = &objects[&(
        "Service".to_string(),
        "ferry-system".to_string(),
        "ferry-router".to_string(),
    )];
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == 443 && p["targetPort"] == "https"),
        "{service}"
    );

    let elsewhere = run_helm(&helm, &["template", "ferry", &chart(), "--namespace", "ml"]);
    assert!(!elsewhere.status.success());
    let message = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(
        message.contains("ferry-system") && message.contains("\"ml\""),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_ferry_and_what_it_installs_serves() {
    let Some(client) = admin_client().await else {
        return;
    };
    let Some(helm) = helm() else {
        return;
    };
    install_crds(&client).await.unwrap();
    // Other tests install deploy/'s manifests with kubectl; the chart renders the same objects,
    // so helm takes them over without changing a pod (the drift test proves they are equal).
    let installed = run_helm(
        &helm,
        &[
            "upgrade",
            "--install",
            "ferry",
            &chart(),
            "--namespace",
            "ferry-system",
            "--create-namespace",
            "--take-ownership",
            "--wait",
            "--timeout",
            "180s",
        ],
    );
    assert!(
        installed.status.success(),
        "{}{}",
        String::from_utf8_lossy(&installed.stdout),
        String::from_utf8_lossy(&installed.stderr)
    );
    let status = run_helm(
        &helm,
        &[
            "status",
            "ferry",
            "--namespace",
            "ferry-system",
            "-o",
            "json",
        ],
    );
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["info"]["status"], "deployed", "{status}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "ferry-system");
    for name in ["ferry-operator", "ferry-router"] {
        let d = deployments.get(name).await.unwrap();
        let labels = d.metadata.labels.clone().unwrap_or_default();
        let annotations = d.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("Helm"),
            "{name}"
        );
        assert_eq!(
            annotations
                .get("meta.helm.sh/release-name")
                .map(String::as_str),
            Some("ferry"),
            "{name}"
        );
    }
    // What it installed works: an operator leads, a router is ready, a service becomes Ready.
    operator_leader(&client).await;
    ready_pod_ip(
        &client,
        "ferry-system",
        "app.kubernetes.io/name=ferry-router",
    )
    .await;
    let ns = TempNamespace::create(&client, "helm").await.unwrap();
    apply_in(
        &ns.name,
        &iris_manifest("iris-v1.onnx").replace("minReplicas: 2", "minReplicas: 1"),
    );
    eventually(
        "the InferenceService is Ready",
        Duration::from_secs(90),
        || {
            let ns = ns.name.clone();
            async move { (condition(&isvc_json(&ns, "iris"), "Ready").0 == "True").then_some(()) }
        },
    )
    .await;
    ns.delete().await;
}
