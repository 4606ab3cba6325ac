//! What the spec asks of the operator beyond replicas, on the real control plane with the
//! operator of deploy/operator.yaml: placement (nodeSelector, tolerations, GPU product by node
//! affinity) on the kwok nodes, an autoscaler, an Ingress, an HTTPRoute where the Gateway API
//! is missing (the condition says so), a model fetched from an http URL at start, and a model
//! that crashes its server (the condition quotes the exit), and a rolling update held to the
//! room a `pods` ResourceQuota leaves (one replica at a time, never a pod the quota refuses).

use std::time::Duration;

use ferry_testbed_e2e::{
    TempNamespace, admin_client, apply_in, condition, eventually, install_operator, isvc_json,
    kubectl,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::ListParams;

fn models() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .canonicalize()
        .unwrap()
}

/// An InferenceService on the (fake) kwok GPU nodes: its pods run at once there.
fn on_kwok(name: &str, predictor_extra: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  predictor:
    model: {{format: onnx, uri: {}}}
    minReplicas: 1
    nodeSelector: {{type: kwok}}
    tolerations: [{{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}}]
{predictor_extra}{spec_extra}",
        models().join("iris-v1.onnx").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_autoscaling_ingress_and_crashes_follow_the_spec() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_operator(&client).await;
    let ns = TempNamespace::create(&client, "operator-spec")
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    // Placement: an H100 asked by product lands on the H100 kwok node (the A100 one has free
    // GPUs too); it tolerates the kwok taint and selects kwok nodes.
    apply_in(
        &ns.name,
        &on_kwok(
            "h100",
            "    resources: {limits: {nvidia.com/gpu: \"1\"}}\n    gpuProducts: [NVIDIA-H100-80GB-HBM3]\n",
            "",
        ),
    );
    let node = eventually("the h100 pod is scheduled", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("ferry.dev/inferenceservice=h100"))
                .await
                .ok()?;
            list.items.first()?.spec.as_ref()?.node_name.clone()
        }
    })
    .await;
    assert_eq!(node, "kwok-gpu-h100-0");
    eventually("h100 is Ready", Duration::from_secs(60), || {
        let ns = ns.name.clone();
        async move { (condition(&isvc_json(&ns, "h100"), "Ready").0 == "True").then_some(()) }
    })
    .await;

    // Revision Services are headless (the router dials pods; no virtual IP to allocate). One
    // left with a cluster IP (as before they were headless), which the apiserver cannot take
    // away, is replaced; checked at the end, as the operator re-applies it only after its
    // 30 s memory of its own write.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let h100_revision = isvc_json(&ns.name, "h100")["status"]["latestRevision"]
        .as_str()
        .unwrap()
        .to_string();
    let headless = |s: &Service| s.spec.as_ref().and_then(|s| s.cluster_ip.clone());
    let first = services.get(&h100_revision).await.unwrap();
    assert_eq!(headless(&first).as_deref(), Some("None"));
    let mut old = first.clone();
    old.metadata = kube::api::ObjectMeta {
        name: first.metadata.name.clone(),
        labels: first.metadata.labels.clone(),
        ..Default::default()
    };
    let spec = old.spec.as_mut().unwrap();
    spec.cluster_ip = None;
    spec.cluster_ips = None;
    replace_service(&services, old).await;
    // The same for the stable Service: one from before it was an alias of the router (a
    // selector over the predictor pods and a cluster IP) becomes the alias.
    let stable = |s: &Service| {
        let spec = s.spec.as_ref()?;
        (spec.type_.as_deref() == Some("ExternalName")
            && spec.external_name.as_deref() == Some("ferry-router.ferry-system.svc.cluster.local")
            && spec.selector.is_none())
        .then_some(())
    };
    assert!(stable(&services.get("h100").await.unwrap()).is_some());
    let old_stable: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "h100", "labels": {"app.kubernetes.io/managed-by": "ferry", "ferry.dev/inferenceservice": "h100"}},
        "spec": {
            "selector": {"ferry.dev/inferenceservice": "h100"},
            "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]
        }
    }))
    .unwrap();
    replace_service(&services, old_stable).await;

    // An autoscaler and an Ingress when the spec asks.
    apply_in(
        &ns.name,
        &on_kwok(
            "scaled",
            "    maxReplicas: 4\n    scaleMetric: cpu\n    scaleTarget: 60\n    resources: {requests: {cpu: 100m}}\n",
            "  ingress: {host: scaled.example.com, className: nginx}\n",
        ),
    );
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let hpa = eventually("the autoscaler exists", Duration::from_secs(60), || {
        let hpas = hpas.clone();
        async move { hpas.get_opt("scaled").await.ok()? }
    })
    .await;
    let latest = eventually(
        "scaled has a latest revision",
        Duration::from_secs(30),
        || {
            let ns = ns.name.clone();
            async move {
                isvc_json(&ns, "scaled")["status"]["latestRevision"]
                    .as_str()
                    .map(String::from)
            }
        },
    )
    .await;
    let spec = hpa.spec.unwrap();
    assert_eq!(spec.scale_target_ref.name, latest);
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 4));
    let metric = &spec.metrics.unwrap()[0];
    assert_eq!(metric.resource.as_ref().unwrap().name, "cpu");
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns.name);
    let ingress = eventually("the Ingress exists", Duration::from_secs(60), || {
        let ingresses = ingresses.clone();
        async move { ingresses.get_opt("scaled").await.ok()? }
    })
    .await;
    let rule = &ingress.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("scaled.example.com"));
    let (status, reason, _) = eventually("IngressReady", Duration::from_secs(30), || {
        let ns = ns.name.clone();
        async move {
            let c = condition(&isvc_json(&ns, "scaled"), "IngressReady");
            (!c.0.is_empty()).then_some(c)
        }
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "IngressCreated")
    );

    // An HTTPRoute where the Gateway API is not installed: the condition says what is missing,
    // and the Ingress the spec no longer asks for goes.
    apply_in(
        &ns.name,
        &on_kwok(
            "scaled",
            "    maxReplicas: 4\n    scaleMetric: cpu\n    scaleTarget: 60\n    resources: {requests: {cpu: 100m}}\n",
            "  ingress: {kind: HTTPRoute, host: scaled.example.com, gateway: infra/public}\n",
        ),
    );
    let message = eventually(
        "IngressReady=False names the missing API",
        Duration::from_secs(60),
        || {
            let ns = ns.name.clone();
            async move {
                let (status, reason, message) =
                    condition(&isvc_json(&ns, "scaled"), "IngressReady");
                (status == "False" && reason == "GatewayAPIMissing").then_some(message)
            }
        },
    )
    .await;
    assert!(message.contains("gateway.networking.k8s.io"), "{message}");
    eventually("the Ingress is deleted", Duration::from_secs(30), || {
        let ingresses = ingresses.clone();
        async move {
            ingresses
                .get_opt("scaled")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;

    // A model named by an http URL is fetched by the server at start (into the pod's emptyDir
    // /tmp), from a real HTTP server on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut http_server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(models())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server runs");
    apply_in(
        &ns.name,
        &format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: fetched}}\nspec:\n  predictor:\n    model: {{format: onnx, uri: \"http://127.0.0.1:{port}/iris-v2.onnx\"}}\n"
        ),
    );
    eventually("the fetched model is Ready", Duration::from_secs(90), || {
        let ns = ns.name.clone();
        async move { (condition(&isvc_json(&ns, "fetched"), "Ready").0 == "True").then_some(()) }
    })
    .await;
    let ip = pods
        .list(&ListParams::default().labels("ferry.dev/inferenceservice=fetched"))
        .await
        .unwrap()
        .items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .unwrap();
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{ip}:8080/v2/models/fetched/infer"))
        .json(&serde_json::json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [6.3, 3.3, 6.0, 2.5]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer["outputs"].is_array(), "{answer}");
    let _ = http_server.kill();
    let _ = http_server.wait();

    // A model that cannot load crashes its server (on the process node): the condition quotes
    // the exit and the server's last words.
    let broken = format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: broken}}\nspec:\n  predictor:\n    model: {{format: onnx, uri: {}}}\n",
        models().join("broken.onnx").display()
    );
    apply_in(&ns.name, &broken);
    let (reason, message) = eventually(
        "LatestRevisionReady quotes the crash",
        Duration::from_secs(90),
        || {
            let ns = ns.name.clone();
            async move {
                let (status, reason, message) =
                    condition(&isvc_json(&ns, "broken"), "LatestRevisionReady");
                (status == "False" && reason == "CrashLoopBackOff").then_some((reason, message))
            }
        },
    )
    .await;
    assert!(message.contains("exit code 3"), "{reason}: {message}");
    assert!(message.contains("failed to load"), "{reason}: {message}");
    assert_eq!(
        condition(&isvc_json(&ns.name, "broken"), "Ready").0,
        "False"
    );

    let mut touch = 0;
    eventually(
        "the revision Service with a cluster IP is replaced by a headless one",
        Duration::from_secs(90),
        || {
            // Each try touches the InferenceService: a reconcile.
            touch += 1;
            let stamp = format!("ferry.dev/test-touch={touch}");
            kubectl(
                &[
                    "annotate",
                    "--overwrite",
                    "-n",
                    &ns.name,
                    "isvc",
                    "h100",
                    &stamp,
                ],
                None,
            );
            let (services, revision) = (services.clone(), h100_revision.clone());
            async move {
                let service = services.get(&revision).await.ok()?;
                (headless(&service).as_deref() == Some("None")).then_some(())?;
                stable(&services.get("h100").await.ok()?)
            }
        },
    )
    .await;
    ns.delete().await;
}

/// Delete the Service named like `old` and create `old` in its place (once the deletion is
/// through), as a Service an older operator left behind.
async fn replace_service(services: &Api<Service>, old: Service) {
    let name = old.metadata.name.clone().unwrap();
    services.delete(&name, &Default::default()).await.unwrap();
    eventually(
        &format!("the old-style Service {name} is created"),
        Duration::from_secs(30),
        || {
            let (services, old) = (services.clone(), old.clone());
            async move { services.create(&Default::default(), &old).await.ok() }
        },
    )
    .await;
}

/// The reasons a rolling update of two replicas records: the same set local mode records
/// (crates/cli/tests/cli/local.rs `ROLLING_UPDATE_REASONS`), both from `ferry_core::service::plan`.
const ROLLING_UPDATE_REASONS: [&str; 6] = [
    "RevisionCreated",
    "RevisionReady",
    "RevisionRetired",
    "ScaledDown",
    "ScaledUp",
    "Serving",
];

/// The reasons of the events regarding InferenceService `name`.
async fn event_reasons(
    events: &Api<k8s_openapi::api::events::v1::Event>,
    name: &str,
) -> std::collections::BTreeSet<String> {
    events
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_records_the_same_event_reasons_as_local_mode() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_operator(&client).await;
    let ns = TempNamespace::create(&client, "operator-events")
        .await
        .unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &ns.name);
    apply_in(&ns.name, &ferry_testbed_e2e::iris_manifest("iris-v1.onnx"));
    eventually("v1 is Ready", Duration::from_secs(90), || {
        let ns = ns.name.clone();
        async move {
            let object = isvc_json(&ns, "iris");
            (condition(&object, "LatestRevisionReady").0 == "True").then_some(())
        }
    })
    .await;
    apply_in(&ns.name, &ferry_testbed_e2e::iris_manifest("iris-v2.onnx"));
    let reasons = eventually("v1 retired and v2 ready", Duration::from_secs(120), || {
        let (events, ns) = (events.clone(), ns.name.clone());
        async move {
            let reasons = event_reasons(&events, "iris").await;
            let ready = condition(&isvc_json(&ns, "iris"), "LatestRevisionReady").0 == "True";
            (ready && reasons.contains("RevisionRetired") && reasons.contains("RevisionReady"))
                .then_some(reasons)
        }
    })
    .await;
    // Each generation's SpecChanged is the cluster's audit trail (local mode's is its
    // changes table and its Applied events): beside the plan's reasons, not one of them.
    assert!(reasons.contains("SpecChanged"), "{reasons:?}");
    assert_eq!(
        reasons
            .iter()
            .map(String::as_str)
            .filter(|r| *r != "SpecChanged")
            .collect::<Vec<_>>(),
        ROLLING_UPDATE_REASONS,
        "the same vocabulary as local mode's"
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_loading_past_its_startup_timeout_exceeds_the_progress_deadline() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_operator(&client).await;
    let ns = TempNamespace::create(&client, "operator-deadline")
        .await
        .unwrap();
    // The model's URL answers never: a listener whose connections are never accepted (the
    // kernel completes them), so the server stays loading it.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stalled.local_addr().unwrap().port();
    apply_in(
        &ns.name,
        &format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: stalled}}\nspec:\n  predictor:\n    model: {{format: onnx, uri: \"http://127.0.0.1:{port}/iris-v1.onnx\"}}\n    startupTimeoutSeconds: 6\n"
        ),
    );
    let message = eventually(
        "LatestRevisionReady says ProgressDeadlineExceeded",
        Duration::from_secs(90),
        || {
            let ns = ns.name.clone();
            async move {
                let (status, reason, message) =
                    condition(&isvc_json(&ns, "stalled"), "LatestRevisionReady");
                (status == "False" && reason == "ProgressDeadlineExceeded").then_some(message)
            }
        },
    )
    .await;
    assert!(message.contains("startupTimeoutSeconds 6"), "{message}");
    assert_eq!(
        condition(&isvc_json(&ns.name, "stalled"), "Ready").0,
        "False"
    );
    // A failure: a Warning event carries it.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &ns.name);
    eventually("a Warning event names it", Duration::from_secs(30), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("ProgressDeadlineExceeded")
                        && e.type_.as_deref() == Some("Warning")
                })
                .then_some(())
        }
    })
    .await;
    drop(stalled);
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_under_a_full_pods_quota_goes_one_replica_at_a_time() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_operator(&client).await;
    let ns = TempNamespace::create(&client, "operator-surge")
        .await
        .unwrap();
    let quota = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: pods}\nspec: {hard: {pods: \"3\"}}\n";
    apply_in(&ns.name, quota);
    // 2 replicas that may surge by 2: the quota leaves room for one more pod only.
    let manifest =
        |model: &str| ferry_testbed_e2e::iris_manifest(model).replace("maxSurge: 1", "maxSurge: 2");
    apply_in(&ns.name, &manifest("iris-v1.onnx"));
    let first = eventually("v1 is Ready", Duration::from_secs(90), || {
        let ns = ns.name.clone();
        async move {
            let object = isvc_json(&ns, "iris");
            (condition(&object, "LatestRevisionReady").0 == "True")
                .then(|| {
                    object["status"]["latestRevision"]
                        .as_str()
                        .map(String::from)
                })
                .flatten()
        }
    })
    .await;
    apply_in(&ns.name, &manifest("iris-v2.onnx"));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut most = 0;
    loop {
        let list = deployments.list(&ListParams::default()).await.unwrap();
        let set: i32 = list
            .items
            .iter()
            .filter_map(|d| d.spec.as_ref()?.replicas)
            .sum();
        most = most.max(set);
        let object = isvc_json(&ns.name, "iris");
        let latest = object["status"]["latestRevision"].as_str().unwrap_or("");
        if latest != first
            && condition(&object, "LatestRevisionReady").0 == "True"
            && list.items.len() == 1
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the update never finished: {}",
            ferry_testbed_e2e::dump(&ns.name)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most <= 3, "{most} replicas set at once under pods: 3");
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &ns.name);
    let list = events.list(&ListParams::default()).await.unwrap().items;
    let notes = |reason: &str| -> Vec<String> {
        list.iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note.clone())
            .collect()
    };
    // Never a pod asked of the API server that the quota refuses; the held step says why.
    assert!(
        notes("FailedCreate").is_empty(),
        "{:?}",
        notes("FailedCreate")
    );
    let held = notes("QuotaHeld");
    assert!(
        held.iter()
            .any(|n| n.contains("held by ResourceQuota pods: room for 1 more replica")),
        "{held:?}"
    );
    ns.delete().await;
}
