//! `ferry operator` on the real control plane: an InferenceService becomes a Deployment and a
//! Service per revision whose pods (process node) are scheduled by kube-scheduler and run by the
//! agent; the status turns Ready only after the model loaded; a model update rolls to a new
//! revision and removes the old one; deletion garbage-collects every child.
//! The operator itself is installed from deploy/operator.yaml and runs as a pod on the process
//! node with its own ServiceAccount bound to exactly the ClusterRole there.

use std::time::Duration;

use ferry_testbed_e2e::{
    TempNamespace, admin_client, eventually, install_crds, iris_manifest as manifest, kubectl,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

fn isvc(ns: &str) -> Value {
    let out = kubectl(&["get", "isvc", "iris", "-n", ns, "-o", "json"], None);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn condition(isvc: &Value, type_: &str) -> (String, String) {
    isvc["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inference_service_is_reconciled_rolled_and_garbage_collected() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    // The operator runs as a pod on the process node, with its ServiceAccount and exactly the
    // ClusterRole of deploy/operator.yaml (never the admin kubeconfig).
    let deploy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/operator.yaml"
    ))
    .unwrap();
    let applied = kubectl(&["apply", "--server-side", "-f", "-"], Some(&deploy));
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), "ferry-system");
    eventually("the operator pod runs", Duration::from_secs(60), || {
        let pods = operator_pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=ferry-operator"))
                .await
                .ok()?;
            list.items
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .then_some(())
        }
    })
    .await;
    let ns = TempNamespace::create(&client, "operator").await.unwrap();
    let applied = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&manifest("iris-v1.onnx")),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let first = eventually(
        "the InferenceService is Ready",
        Duration::from_secs(90),
        || {
            let ns = ns.name.clone();
            async move {
                let object = isvc(&ns);
                (condition(&object, "Ready").0 == "True"
                    && condition(&object, "LatestRevisionReady").0 == "True")
                    .then(|| {
                        object["status"]["latestRevision"]
                            .as_str()
                            .unwrap_or("")
                            .to_string()
                    })
            }
        },
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    // The operator's own endpoints, on its pod IP.
    let operator_ip = operator_pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=ferry-operator"))
        .await
        .unwrap()
        .items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .unwrap();
    let http = reqwest::Client::new();
    let healthz = http
        .get(format!("http://{operator_ip}:8081/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let metrics = http
        .get(format!("http://{operator_ip}:8081/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"ferry_operator_reconciles_total{result="ok"}"#),
        "{metrics}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let deployment = deployments.get(&first).await.unwrap();
    assert_eq!(
        deployment.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "ferry"
    );
    assert_eq!(
        deployment.metadata.owner_references.as_ref().unwrap()[0].kind,
        "InferenceService"
    );
    assert!(services.get(&first).await.is_ok());
    let http = reqwest::Client::new();
    let list = pods
        .list(&ListParams::default().labels(&format!("ferry.dev/revision={first}")))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 2);
    for pod in &list.items {
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let ready = http
            .get(format!("http://{ip}:8080/v2/models/iris/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "Ready only once the model is loaded");
    }

    // A new model: a new revision rolls out, the old one goes.
    let applied = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&manifest("iris-v2.onnx")),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // kill -9 of the operator in the middle of that rollout: its restart converges.
    let operator = operator_pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=ferry-operator"))
        .await
        .unwrap()
        .items
        .remove(0);
    let pid: i32 = operator
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].container_id.clone())
        .and_then(|id| id.strip_prefix("process://").and_then(|p| p.parse().ok()))
        .expect("the operator container names its process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let second = eventually(
        "the new revision is ready and the old one gone",
        Duration::from_secs(120),
        || {
            let ns = ns.name.clone();
            let deployments = deployments.clone();
            let first = first.clone();
            async move {
                let object = isvc(&ns);
                let latest = object["status"]["latestRevision"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let old_gone = deployments.get_opt(&first).await.ok()?.is_none();
                (latest != first
                    && condition(&object, "LatestRevisionReady").0 == "True"
                    && old_gone)
                    .then_some(latest)
            }
        },
    )
    .await;
    let operator_name = operator.metadata.name.clone().unwrap();
    let restarted = operator_pods.get(&operator_name).await.unwrap();
    let restarts = restarted.status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert!(restarts >= 1, "the operator was restarted after kill -9");
    let all = deployments
        .list(&ListParams::default().labels("ferry.dev/inferenceservice=iris"))
        .await
        .unwrap();
    assert_eq!(
        all.items.len(),
        1,
        "no duplicate Deployments after the operator restart"
    );
    eventually("only new pods remain", Duration::from_secs(60), || {
        let pods = pods.clone();
        let second = second.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("ferry.dev/inferenceservice=iris"))
                .await
                .ok()?;
            (list.items.len() == 2
                && list.items.iter().all(|p| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("ferry.dev/revision"))
                        == Some(&second)
                }))
            .then_some(())
        }
    })
    .await;

    // Status that names the real reason: 9 GPUs fit on no node; a quota forbids the pods.
    let big = manifest("iris-v1.onnx")
        .replace("name: iris}", "name: big}")
        .replace(
            "    minReplicas: 2\n",
            "    minReplicas: 1\n    resources: {limits: {nvidia.com/gpu: \"9\"}}\n",
        );
    let applied = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&big),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let message = eventually(
        "Unschedulable names nvidia.com/gpu",
        Duration::from_secs(60),
        || {
            let ns = ns.name.clone();
            async move {
                let out = kubectl(&["get", "isvc", "big", "-n", &ns, "-o", "json"], None);
                let object: Value = serde_json::from_slice(&out.stdout).ok()?;
                let c = object["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")?
                    .clone();
                (c["status"] == "False" && c["reason"] == "Unschedulable")
                    .then(|| c["message"].as_str().unwrap_or("").to_string())
            }
        },
    )
    .await;
    assert!(message.contains("nvidia.com/gpu"), "{message}");

    let quota_ns = TempNamespace::create(&client, "operator-quota")
        .await
        .unwrap();
    let quota = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: no-pods}\nspec: {hard: {pods: \"0\"}}\n";
    assert!(
        kubectl(&["apply", "-n", &quota_ns.name, "-f", "-"], Some(quota))
            .status
            .success()
    );
    let applied = kubectl(
        &["apply", "--server-side", "-n", &quota_ns.name, "-f", "-"],
        Some(&manifest("iris-v1.onnx")),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let message = eventually(
        "FailedCreate quotes the quota",
        Duration::from_secs(60),
        || {
            let ns = quota_ns.name.clone();
            async move {
                let object = isvc(&ns);
                let c = object["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "LatestRevisionReady")?
                    .clone();
                (c["reason"] == "FailedCreate")
                    .then(|| c["message"].as_str().unwrap_or("").to_string())
            }
        },
    )
    .await;
    assert!(message.contains("exceeded quota"), "{message}");
    quota_ns.delete().await;

    // Delete: owner references cascade.
    let deleted = kubectl(&["delete", "isvc", "iris", "big", "-n", &ns.name], None);
    assert!(deleted.status.success());
    eventually(
        "children garbage-collected",
        Duration::from_secs(60),
        || {
            let deployments = deployments.clone();
            let services = services.clone();
            async move {
                let d = deployments
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .len();
                let s = services
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .len();
                (d == 0 && s == 0).then_some(())
            }
        },
    )
    .await;
    ns.delete().await;
}
