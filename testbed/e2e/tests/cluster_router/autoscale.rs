//! Ferry's autoscaler on the cluster (engine `ferry`: no HPA object, the operator owns the
//! Deployment's replicas), on the numbers it collects from the router pod: a concurrency
//! spike through the router scales out; a revision at zero answers a cold request through
//! the router; a GPU-asking revision whose pod cannot schedule keeps its Pending pod while a
//! request waits, and the request gets 503 + Retry-After at the timeout.

use super::*;
use ferry_testbed_e2e::{apply_in, condition, isvc_json};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;

fn autoscaled(model: &str, predictor: &str) -> String {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let path = models.canonicalize().unwrap_or(models).join(model);
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: iris}}\nspec:\n  predictor:\n    model: {{format: onnx, uri: {}}}\n{predictor}",
        path.display()
    )
}

/// The CRDs, the operator and the router installed, and a new namespace.
async fn bed(prefix: &str) -> Option<(kube::Client, String, TempNamespace)> {
    let client = admin_client().await?;
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, prefix).await.unwrap();
    Some((client, router_ip, ns))
}

/// Wait until the router pod answers for iris in `ns`.
async fn routed(router_ip: &str, ns: &str) {
    let http = reqwest::Client::new();
    eventually("the router routes", Duration::from_secs(30), || {
        let (http, router_ip, ns) = (http.clone(), router_ip.to_string(), ns.to_string());
        async move {
            let (status, ..) = infer_via_router(&http, &router_ip, &ns, "iris").await?;
            (status == 200).then_some(())
        }
    })
    .await;
}

/// The Deployments' `spec.replicas`, summed, and the predictor pods (name, phase).
async fn scale(client: &kube::Client, ns: &str) -> (i32, Vec<(String, String)>) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let replicas = deployments
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|d| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
                .sum()
        })
        .unwrap_or(-1);
    let pods = pods
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| {
                    let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                    (
                        p.metadata.name.clone().unwrap_or_default(),
                        phase.unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (replicas, pods)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spike_through_the_cluster_router_scales_the_deployment_with_ferrys_engine() {
    let Some((client, router_ip, ns)) = bed("autoscale").await else {
        return;
    };
    apply_in(
        &ns.name,
        &autoscaled(
            "iris-slow.onnx",
            "    minReplicas: 1\n    maxReplicas: 4\n    scaleMetric: concurrency\n    scaleTarget: 2\n    autoscaling: {stableWindowSeconds: 6, panicWindowSeconds: 2, scaleDownDelaySeconds: 4}\n",
        ),
    );
    eventually("ready", Duration::from_secs(90), || {
        let ns = ns.name.clone();
        async move { latest_ready(&ns) }
    })
    .await;
    routed(&router_ip, &ns.name).await;
    assert_eq!(scale(&client, &ns.name).await.0, 1);

    let spike = Instant::now();
    let load = RouterLoad::start_with(&router_ip, &ns.name, 12);
    let mut asked = None;
    let mut most = 0;
    while spike.elapsed() < Duration::from_secs(15) {
        let (replicas, _) = scale(&client, &ns.name).await;
        most = most.max(replicas);
        if replicas > 1 && asked.is_none() {
            asked = Some(spike.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let samples = load.finish().await;
    let asked = asked.expect("the Deployment never scaled out");
    eprintln!("cluster spike: Deployment scaled out {asked:?} after the spike, {most} at most");
    // Well within the 6 s stable window; 3 s failed CI at 3.08 s on a loaded 2-core machine.
    assert!(
        asked <= Duration::from_secs(5),
        "scaled out only after {asked:?}"
    );
    assert!((3..=4).contains(&most), "{most}");
    let failed: Vec<_> = samples.iter().filter(|s| s.1 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(3)]
    );
    // Ferry's engine owns the replicas: no HPA object.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        hpas.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let isvc = isvc_json(&ns.name, "iris");
    let autoscaling = &isvc["status"]["autoscaling"];
    assert_eq!(autoscaling["engine"], "ferry", "{autoscaling}");
    assert_eq!(autoscaling["metric"], "concurrency", "{autoscaling}");

    // Back to one once the load is gone.
    eventually("back to 1", Duration::from_secs(60), || {
        let (client, ns) = (client.clone(), ns.name.clone());
        async move { (scale(&client, &ns).await.0 == 1).then_some(()) }
    })
    .await;
    let events = String::from_utf8_lossy(
        &kubectl(&["get", "events", "-n", &ns.name, "-o", "json"], None).stdout,
    )
    .into_owned();
    assert!(
        events.contains("ScaledUp") && events.contains("autoscaler:"),
        "{events}"
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revision_at_zero_answers_a_cold_request_through_the_cluster_router() {
    let Some((client, router_ip, ns)) = bed("zero").await else {
        return;
    };
    apply_in(
        &ns.name,
        &autoscaled(
            "iris-v1.onnx",
            "    minReplicas: 0\n    maxReplicas: 2\n    scaleMetric: concurrency\n    autoscaling: {stableWindowSeconds: 4, scaleDownDelaySeconds: 2, scaleToZeroGraceSeconds: 4, coldStartBuffer: {timeoutSeconds: 60}}\n",
        ),
    );
    eventually("scaled to zero", Duration::from_secs(90), || {
        let (client, ns) = (client.clone(), ns.name.clone());
        async move {
            let (replicas, pods) = scale(&client, &ns).await;
            let isvc = isvc_json(&ns, "iris");
            let zero = isvc["status"]["autoscaling"]["scaledToZero"] == true;
            (replicas == 0 && pods.is_empty() && zero).then_some(())
        }
    })
    .await;
    let isvc = isvc_json(&ns.name, "iris");
    let (status, reason, _) = condition(&isvc, "Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "ScaledToZero"));

    let http = reqwest::Client::new();
    let sent = Instant::now();
    let (status, revision, body) = infer_via_router(&http, &router_ip, &ns.name, "iris")
        .await
        .expect("an answer");
    let latency = sent.elapsed();
    eprintln!("cluster cold request answered in {latency:?}");
    assert_eq!(status, 200, "{body}");
    assert!(revision.starts_with("iris-"), "{revision}");
    let label = body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap()["data"][0]
        .clone();
    assert_eq!(label, 0, "{body}");
    assert_eq!(scale(&client, &ns.name).await.0, 1);
    // The router stamped its demand on the InferenceService: that woke the operator.
    let isvc = isvc_json(&ns.name, "iris");
    assert!(
        isvc["metadata"]["annotations"]["ferry.dev/demand"].is_string(),
        "{isvc}"
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gpu_revision_at_zero_keeps_its_pending_pod_while_a_request_waits_then_503() {
    let Some((client, router_ip, ns)) = bed("zero-gpu").await else {
        return;
    };
    apply_in(
        &ns.name,
        &autoscaled(
            "iris-v1.onnx",
            "    minReplicas: 0\n    maxReplicas: 1\n    scaleMetric: concurrency\n    resources: {limits: {nvidia.com/gpu: \"1\"}}\n    autoscaling: {stableWindowSeconds: 2, panicWindowSeconds: 1, scaleDownDelaySeconds: 1, scaleToZeroGraceSeconds: 2, coldStartBuffer: {timeoutSeconds: 10}}\n",
        ),
    );
    eventually("at zero", Duration::from_secs(60), || {
        let (client, ns) = (client.clone(), ns.name.clone());
        async move {
            let (replicas, pods) = scale(&client, &ns).await;
            let zero = isvc_json(&ns, "iris")["status"]["autoscaling"]["scaledToZero"] == true;
            (replicas == 0 && pods.is_empty() && zero).then_some(())
        }
    })
    .await;

    // A request waits; its replica is created and stays Pending (no node has a free GPU).
    let http = reqwest::Client::new();
    let request = {
        let (http, router_ip, ns) = (http.clone(), router_ip.clone(), ns.name.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let response = http
                .post(format!("http://{router_ip}:8080/v2/models/iris/infer"))
                .header("ferry-namespace", &ns)
                .json(&ferry_testbed_e2e::iris_body())
                .send()
                .await
                .unwrap();
            let retry = response.headers().get("retry-after").cloned();
            (
                sent.elapsed(),
                response.status().as_u16(),
                retry,
                response.text().await.unwrap_or_default(),
            )
        })
    };
    let pending = eventually("a Pending pod", Duration::from_secs(8), || {
        let (client, ns) = (client.clone(), ns.name.clone());
        async move {
            let (_, pods) = scale(&client, &ns).await;
            pods.into_iter()
                .find(|(_, phase)| phase == "Pending")
                .map(|(name, _)| name)
        }
    })
    .await;
    // Past the grace (2 s) while the request waits: the same pod is still there, and the
    // status names what it waits for.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (replicas, pods) = scale(&client, &ns.name).await;
    assert_eq!(replicas, 1);
    assert!(
        pods.iter().any(|(name, _)| *name == pending),
        "{pods:?} lost {pending}"
    );
    let isvc = isvc_json(&ns.name, "iris");
    let (_, reason, message) = condition(&isvc, "LatestRevisionReady");
    assert_eq!(reason, "Unschedulable", "{message}");
    assert!(message.contains("nvidia.com/gpu"), "{message}");
    assert!(
        isvc["status"]["autoscaling"]["heldRequests"].as_u64() >= Some(1),
        "{isvc}"
    );

    let (waited, status, retry, body) = request.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.unwrap(), "5");
    assert!(body.contains("no replica ready after 10s"), "{body}");
    assert!(waited >= Duration::from_secs(9), "{waited:?}");
    // Nothing waits any more: back to zero after the grace.
    eventually("back to zero", Duration::from_secs(30), || {
        let (client, ns) = (client.clone(), ns.name.clone());
        async move { (scale(&client, &ns).await.0 == 0).then_some(()) }
    })
    .await;
    ns.delete().await;
}

/// `kubectl get --raw PATH` as JSON (`Null` when it fails).
fn raw(path: &str) -> Value {
    serde_json::from_slice(&kubectl(&["get", "--raw", path], None).stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_hpa_on_ferrys_external_metric_scales_through_the_real_hpa_controller() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    apply_deploy("external-metrics.yaml");
    let router_ip = install_router(&client).await;
    // The aggregation layer reaches an operator pod and finds the API there.
    eventually(
        "the APIService is Available",
        Duration::from_secs(90),
        || async {
            let service =
                raw("/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.external.metrics.k8s.io");
            let available = service["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True");
            available.then_some(())
        },
    )
    .await;
    let ns = TempNamespace::create(&client, "hpa-external")
        .await
        .unwrap();
    apply_in(
        &ns.name,
        &autoscaled(
            "iris-slow.onnx",
            "    minReplicas: 1\n    maxReplicas: 4\n    scaleMetric: concurrency\n    scaleTarget: 2\n    autoscaling: {engine: hpa}\n",
        ),
    );
    eventually("ready", Duration::from_secs(90), || {
        let ns = ns.name.clone();
        async move { latest_ready(&ns) }
    })
    .await;
    // The HPA the operator made reads Ferry's External metric.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let hpa = eventually("the HPA", Duration::from_secs(30), || {
        let hpas = hpas.clone();
        async move { hpas.get_opt("iris").await.ok().flatten() }
    })
    .await;
    let metric = &hpa.spec.as_ref().unwrap().metrics.as_ref().unwrap()[0];
    assert_eq!(metric.type_, "External");
    assert_eq!(
        metric.external.as_ref().unwrap().metric.name,
        "ferry_concurrency"
    );
    routed(&router_ip, &ns.name).await;

    let spike = Instant::now();
    let load = RouterLoad::start_with(&router_ip, &ns.name, 12);
    // Through the apiserver, as the HPA controller reads it.
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/ferry_concurrency?labelSelector=ferry.dev%2Finferenceservice%3Diris",
        ns.name
    );
    let value = eventually("the metric reads the load", Duration::from_secs(30), || {
        let path = path.clone();
        async move {
            let list = raw(&path);
            let value = list["items"][0]["value"].as_str()?.to_string();
            let milli: f64 = value.trim_end_matches('m').parse().ok()?;
            let units = if value.ends_with('m') {
                milli / 1000.0
            } else {
                milli
            };
            (units >= 6.0).then_some(units)
        }
    })
    .await;
    let scaled = eventually(
        "the HPA scales the Deployment",
        Duration::from_secs(90),
        || {
            let (client, ns) = (client.clone(), ns.name.clone());
            async move { (scale(&client, &ns).await.0 > 1).then(|| spike.elapsed()) }
        },
    )
    .await;
    let samples = load.finish().await;
    eprintln!(
        "HPA on ferry_concurrency ({value:.1} in flight): scaled out {scaled:?} after the spike"
    );
    let failed = samples.iter().filter(|s| s.1 != 200).count();
    assert_eq!(failed, 0, "{failed} of {} failed", samples.len());
    let hpa = hpas.get("iris").await.unwrap();
    let status = hpa.status.unwrap();
    assert!(status.desired_replicas > 1, "{status:?}");
    ns.delete().await;
}

/// KEDA's real CRDs, from the `kedacore/keda` Go module (its config/crd/bases).
fn keda_crd(file: &str) -> std::path::PathBuf {
    let out = std::process::Command::new("go")
        .args([
            "mod",
            "download",
            "-json",
            "github.com/kedacore/keda/v2@v2.17.0",
        ])
        .output()
        .expect("go runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let module: Value = serde_json::from_slice(&out.stdout).unwrap();
    std::path::Path::new(module["Dir"].as_str().unwrap())
        .join("config/crd/bases")
        .join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_keda_says_when_keda_is_missing_and_emits_a_scaled_object_its_crd_accepts() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let crd = keda_crd("keda.sh_scaledobjects.yaml");
    let _ = kubectl(
        &[
            "delete",
            "crd",
            "scaledobjects.keda.sh",
            "--ignore-not-found",
            "--wait=true",
        ],
        None,
    );
    let ns = TempNamespace::create(&client, "keda").await.unwrap();
    let manifest = autoscaled(
        "iris-v1.onnx",
        "    minReplicas: 1\n    maxReplicas: 5\n    scaleMetric: rps\n    scaleTarget: 20\n    autoscaling: {engine: keda, scaleDownDelaySeconds: 45}\n",
    );
    apply_in(&ns.name, &manifest);
    // No KEDA: the condition says so, the revision serves at its minimum.
    eventually("KEDAMissing", Duration::from_secs(60), || {
        let ns = ns.name.clone();
        async move {
            let (status, reason, message) = condition(&isvc_json(&ns, "iris"), "AutoscalerReady");
            (status == "False" && reason == "KEDAMissing").then_some(message)
        }
    })
    .await;
    eventually("ready without KEDA", Duration::from_secs(90), || {
        let ns = ns.name.clone();
        async move { latest_ready(&ns) }
    })
    .await;

    // KEDA's real CRD: the ScaledObject `ferry render` prints passes the apiserver's strict
    // server-side dry-run against it, and the operator applies the same object.
    let installed = kubectl(
        &["apply", "--server-side", "-f", crd.to_str().unwrap()],
        None,
    );
    assert!(
        installed.status.success(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let _ = kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "crd/scaledobjects.keda.sh",
            "--timeout=60s",
        ],
        None,
    );
    let ferry = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../run/bin/ferry");
    let dir = std::env::temp_dir().join(format!("keda-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("isvc.yaml");
    std::fs::write(&file, &manifest).unwrap();
    let rendered = std::process::Command::new(ferry)
        .args(["render", "-f", file.to_str().unwrap(), "-n", &ns.name])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let text = String::from_utf8_lossy(&rendered.stdout).into_owned();
    let scaled: String = text
        .split("\n---\n")
        .find(|doc| doc.contains("kind: ScaledObject"))
        .unwrap_or_else(|| panic!("no ScaledObject in\n{text}"))
        .to_string();
    assert!(
        scaled.contains("metrics-api") && scaled.contains("ferry-operator-metrics"),
        "{scaled}"
    );
    let dry = kubectl(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            &ns.name,
            "-f",
            "-",
        ],
        Some(&scaled),
    );
    assert!(
        dry.status.success(),
        "{}\n{scaled}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let applied = eventually(
        "the operator applies the ScaledObject",
        Duration::from_secs(90),
        || {
            let ns = ns.name.clone();
            async move {
                let out = kubectl(
                    &[
                        "get",
                        "scaledobjects.keda.sh",
                        "iris",
                        "-n",
                        &ns,
                        "-o",
                        "json",
                    ],
                    None,
                );
                out.status
                    .success()
                    .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
            }
        },
    )
    .await;
    assert_eq!(
        applied["spec"]["scaleTargetRef"]["name"],
        isvc_json(&ns.name, "iris")["status"]["latestRevision"]
    );
    assert_eq!(applied["spec"]["cooldownPeriod"], 45);
    assert_eq!(
        applied["spec"]["triggers"][0]["metadata"]["targetValue"],
        "20"
    );
    let (status, reason, _) = condition(&isvc_json(&ns.name, "iris"), "AutoscalerReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ScaledObjectCreated")
    );
    // KEDA owns the scaling: Ferry makes no HPA of its own.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        hpas.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The value KEDA's trigger reads, from an operator pod's probes port.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ferry-system");
    let operator = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=ferry-operator"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find_map(|p| p.status?.pod_ip)
        .unwrap();
    let value: Value = reqwest::get(format!(
        "http://{operator}:8081/ferry/v1/metrics/{}/iris/rps",
        ns.name
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(value["value"].is_number(), "{value}");
    let _ = std::fs::remove_dir_all(&dir);
    ns.delete().await;
}
