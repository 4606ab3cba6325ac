//! `ferry operator` on the real control plane: an InferenceService becomes a Deployment and a
//! Service per revision whose pods (process node) are scheduled by kube-scheduler and run by the
//! agent; the status turns Ready only after the model loaded; a model update rolls to a new
//! revision and removes the old one; deletion garbage-collects every child.
//! The operator itself is installed from deploy/operator.yaml and runs as a pod on the process
//! node with its own ServiceAccount bound to exactly the ClusterRole there.

use std::time::Duration;

use ferry_testbed_e2e::{
    TempNamespace, admin_client, apply_in, condition, eventually, install_operator,
    iris_manifest as manifest, isvc_json, kubectl, kubectl_table, operator_leader,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

fn isvc(ns: &str) -> Value {
    isvc_json(ns, "iris")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inference_service_is_reconciled_rolled_and_garbage_collected() {
    let Some(client) = admin_client().await else {
        return;
    };
    let _leader = ONE_KILL_AT_A_TIME.lock().await;
    // The operator runs as two pods on the process node (one leads through the Lease), with
    // its ServiceAccount and exactly the RBAC of deploy/operator.yaml (never the admin
    // kubeconfig).
    let leader = install_operator(&client).await;
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), "ferry-system");
    let ns = TempNamespace::create(&client, "operator").await.unwrap();
    apply_in(&ns.name, &manifest("iris-v1.onnx"));

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
    // kubectl's columns come from the CRD: URL, Ready, Revision, Replicas, Age.
    let table = kubectl_table(&["isvc", "iris", "-n", &ns.name]);
    assert_eq!(
        table[0],
        ["NAME", "URL", "READY", "REVISION", "REPLICAS", "AGE"],
        "{table:?}"
    );
    assert_eq!(table[1][2..5], ["True", first.as_str(), "2"], "{table:?}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    // The leader's own endpoints, on its pod IP.
    let operator_ip = leader.status.as_ref().unwrap().pod_ip.clone().unwrap();
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
    assert!(metrics.contains("ferry_operator_leader 1"), "{metrics}");
    // The standby replica is healthy but does not lead.
    let standby = operator_pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=ferry-operator"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.metadata.name != leader.metadata.name)
        .expect("two operator replicas");
    let standby_ip = eventually("the standby has an IP", Duration::from_secs(60), || {
        let pods = operator_pods.clone();
        let name = standby.metadata.name.clone().unwrap();
        async move { pods.get(&name).await.ok()?.status?.pod_ip }
    })
    .await;
    let standby_metrics = eventually("the standby answers", Duration::from_secs(60), || {
        let http = http.clone();
        let url = format!("http://{standby_ip}:8081/metrics");
        async move { http.get(&url).send().await.ok()?.text().await.ok() }
    })
    .await;
    assert!(
        standby_metrics.contains("ferry_operator_leader 0"),
        "{standby_metrics}"
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
    let stable = services
        .get("iris")
        .await
        .expect("the stable Service of the status URL");
    // An alias of the shared router: traffic to the status URL goes through it.
    let stable = stable.spec.unwrap();
    assert_eq!(stable.type_.as_deref(), Some("ExternalName"));
    assert_eq!(
        stable.external_name.as_deref(),
        Some("ferry-router.ferry-system.svc.cluster.local")
    );
    assert!(stable.selector.is_none());
    // Events name the decisions (published right after the status write).
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        "RevisionCreated and events for Ready and LatestRevisionReady",
        Duration::from_secs(60),
        || {
            let events = events.clone();
            async move {
                let regarding: Vec<Event> = events
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .filter(|e| {
                        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("iris")
                    })
                    .collect();
                let created = regarding
                    .iter()
                    .any(|e| e.reason.as_deref() == Some("RevisionCreated"));
                // Each transition is in an event, alone or with others of the same status write.
                let parts: Vec<&str> = regarding
                    .iter()
                    .filter_map(|e| e.note.as_deref())
                    .flat_map(|n| n.split("; "))
                    .collect();
                let said = |prefix: &str| parts.iter().any(|p| p.starts_with(prefix));
                (created && said("Ready=True:") && said("LatestRevisionReady=True:")).then_some(())
            }
        },
    )
    .await;

    // A reconcile of a settled InferenceService writes nothing: touch the spec's metadata (a
    // watch event, so a reconcile) and nothing the operator owns changes.
    let rv = |o: &kube::api::ObjectMeta| o.resource_version.clone().unwrap();
    // A Deployment's resourceVersion also moves with the status its controller writes: compare
    // what the operator writes (spec generation, its managed-fields entry).
    let ours = |d: Deployment| {
        let entry = d
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .find(|f| f.manager.as_deref() == Some("ferry-operator"))
            .map(|f| serde_json::to_string(&f).unwrap());
        (d.metadata.generation, entry)
    };
    let deployment_rv = ours(deployments.get(&first).await.unwrap());
    let service_rv = rv(&services.get(&first).await.unwrap().metadata);
    let stable_rv = rv(&services.get("iris").await.unwrap().metadata);
    let isvcs: Api<ferry_api::InferenceService> = Api::namespaced(client.clone(), &ns.name);
    let touched = isvcs
        .patch(
            "iris",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/touch": "1"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(ours(deployments.get(&first).await.unwrap()), deployment_rv);
    assert_eq!(
        rv(&services.get(&first).await.unwrap().metadata),
        service_rv
    );
    assert_eq!(rv(&services.get("iris").await.unwrap().metadata), stable_rv);
    assert_eq!(
        rv(&isvcs.get("iris").await.unwrap().metadata),
        rv(&touched.metadata),
        "no status write either"
    );
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
    apply_in(&ns.name, &manifest("iris-v2.onnx"));
    // kill -9 of the leading operator in the middle of that rollout: the rollout converges
    // (its restarted process or the standby takes the Lease).
    let operator_name = kill_leader(&client).await;
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

    // A server version whose image cannot be pulled: the new revision never becomes ready, the
    // status quotes the kubelet, and the ready revision keeps serving.
    apply_in(
        &ns.name,
        &manifest("iris-v2.onnx").replace(
            "    model: {format: onnx, uri: ",
            "    model: {format: onnx, runtimeVersion: 0.0.0-missing, uri: ",
        ),
    );
    let (reason, message) = eventually(
        "LatestRevisionReady names the image pull",
        Duration::from_secs(60),
        || {
            let ns = ns.name.clone();
            async move {
                let (_, reason, message) = condition(&isvc(&ns), "LatestRevisionReady");
                (reason == "ErrImagePull" || reason == "ImagePullBackOff")
                    .then_some((reason, message))
            }
        },
    )
    .await;
    assert!(
        message.contains("ferry:0.0.0-missing"),
        "{reason}: {message}"
    );
    assert_eq!(condition(&isvc(&ns.name), "Ready").0, "True");

    // Status that names the real reason: 9 GPUs fit on no node; a quota forbids the pods.
    let big = manifest("iris-v1.onnx")
        .replace("name: iris}", "name: big}")
        .replace(
            "    minReplicas: 2\n",
            "    minReplicas: 1\n    resources: {limits: {nvidia.com/gpu: \"9\"}}\n",
        );
    apply_in(&ns.name, &big);
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
    apply_in(&quota_ns.name, &manifest("iris-v1.onnx"));
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

/// The tests that kill the leading operator share it: one at a time, so that each asserts
/// on its own takeover (two kills seconds apart once left a new leader a view it acted on
/// before the second kill, and the canary test saw its step taken twice).
static ONE_KILL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// kill -9 of the process of the operator pod that leads.
async fn kill_leader(client: &kube::Client) -> String {
    let operator = operator_leader(client).await;
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
    operator.metadata.name.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_resumes_at_the_same_step_after_kill_9_of_the_leading_operator() {
    let Some(client) = admin_client().await else {
        return;
    };
    let _leader = ONE_KILL_AT_A_TIME.lock().await;
    install_operator(&client).await;
    let ns = TempNamespace::create(&client, "canary-leader")
        .await
        .unwrap();
    apply_in(&ns.name, &manifest("iris-v1.onnx"));
    eventually("v1 ready", Duration::from_secs(90), || {
        let ns = ns.name.clone();
        async move { (condition(&isvc(&ns), "LatestRevisionReady").0 == "True").then_some(()) }
    })
    .await;
    let canary = manifest("iris-v2.onnx").replace(
        "  rollout: {maxSurge: 1, maxUnavailable: 0}\n",
        "  rollout:\n    strategy: canary\n    steps: [{weight: 20, pause: 10s}, {weight: 60, pause: 1h}]\n",
    );
    apply_in(&ns.name, &canary);
    let rollout = |ns: &str| isvc(ns)["status"]["rollout"].clone();
    let before = eventually("the canary at 20 %", Duration::from_secs(90), || {
        let ns = ns.name.clone();
        async move {
            let state = rollout(&ns);
            (state["weight"] == 20).then_some(state)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill_leader(&client).await;
    // Whoever leads next (the restarted process or the standby) resumes the same step: its
    // pause counts from the step's recorded start, and no step is taken twice.
    let started: k8s_openapi::jiff::Timestamp =
        before["stepStarted"].as_str().unwrap().parse().unwrap();
    eventually("the canary at 60 %", Duration::from_secs(90), || {
        let ns = ns.name.clone();
        async move { (rollout(&ns)["weight"] == 60).then_some(()) }
    })
    .await;
    let held = k8s_openapi::jiff::Timestamp::now()
        .duration_since(started)
        .as_secs();
    let after = rollout(&ns.name);
    assert_eq!(after["step"], 1, "{after}");
    assert!(held >= 10, "20 % held {held} s: the pause is not cut short");
    let events = kubectl(
        &[
            "get",
            "events",
            "-n",
            &ns.name,
            "-o",
            "custom-columns=R:.reason,N:.message",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&events.stdout).into_owned();
    let shifted_to_20 = text
        .lines()
        .filter(|l| l.starts_with("TrafficShifted") && l.contains("→ 20%"))
        .count();
    assert_eq!(shifted_to_20, 1, "no step repeated:\n{text}");
    let started_again = text
        .lines()
        .filter(|l| l.starts_with("CanaryStarted"))
        .count();
    assert_eq!(
        started_again, 1,
        "the rollout was not started over:\n{text}"
    );
    eprintln!("canary across kill -9 of the leading operator: 20 % held {held} s, then 60 %");
}
