//! Pods on a process node are real processes: a Deployment of `ferry server` gets loopback pod
//! IPs, becomes Ready through its real readiness probe, answers OIP requests at its IPs, stops
//! on SIGTERM when deleted, restarts when killed, and rolls out new args.

use std::path::PathBuf;
use std::time::Duration;

use ferry_testbed_e2e::{TempNamespace, admin_client, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn deployment(model_file: &str) -> Value {
    let model = repo().join("models").join(model_file);
    json!({
        "metadata": {"name": "iris"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "iris"}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "iris"}},
                "spec": {
                    "nodeSelector": {"ferry.dev/process-node": "true"},
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "server",
                        "image": "ghcr.io/ferry-dev/ferry:latest",
                        "args": ["server", "--model", format!("iris={}", model.display()),
                                 "--http-addr", "$(POD_IP):8000", "--grpc-addr", "$(POD_IP):8001"],
                        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                        "ports": [{"name": "http", "containerPort": 8000}, {"name": "grpc", "containerPort": 8001}],
                        "readinessProbe": {"httpGet": {"path": "/v2/models/iris/ready", "port": "http"}, "periodSeconds": 1},
                        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": 8000}, "periodSeconds": 1, "failureThreshold": 3}
                    }]
                }
            }
        }
    })
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c[0].restart_count)
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| !s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

async fn infer(client: &reqwest::Client, ip: &str) -> Result<u16, String> {
    client
        .post(format!("http://{ip}:8000/v2/models/iris/infer"))
        .json(&json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

async fn ready_pods(pods: &Api<Pod>, want: usize) -> Option<Vec<Pod>> {
    let list = pods
        .list(&ListParams::default().labels("app=iris"))
        .await
        .ok()?;
    let ready: Vec<Pod> = list.items.into_iter().filter(ready).collect();
    (ready.len() == want).then_some(ready)
}

/// Create the iris Deployment (v1) in `namespace`.
async fn start_iris(client: &kube::Client, namespace: &str) -> (Api<Deployment>, Api<Pod>) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment("iris-v1.onnx")).unwrap(),
        )
        .await
        .unwrap();
    (deployments, Api::namespaced(client.clone(), namespace))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ferry_server_deployment_runs_as_processes_on_loopback_pod_ips() {
    let Some(client) = admin_client().await else {
        return;
    };
    let ns = TempNamespace::create(&client, "process-node")
        .await
        .unwrap();
    let (_, pods) = start_iris(&client, &ns.name).await;
    let running = eventually("2 Ready pods", Duration::from_secs(90), || {
        ready_pods(&pods, 2)
    })
    .await;
    let http = reqwest::Client::new();
    for pod in &running {
        let ip = pod_ip(pod);
        assert!(ip.starts_with("127.2."), "pod IP {ip}");
        // Ready only after the model loaded: the model-ready endpoint agrees with the API.
        let model_ready = http
            .get(format!("http://{ip}:8000/v2/models/iris/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(model_ready.status(), 200);
        assert_eq!(infer(&http, &ip).await, Ok(200));
    }

    // kill -9 of a process: the agent restarts it; restart count 1, Ready again.
    let victim = running[0].clone();
    let victim_name = victim.metadata.name.clone().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ferry_testbed_e2e::pod_pid(&victim)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restarted = eventually(
        "the killed container restarts and is Ready",
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            let name = victim_name.clone();
            async move {
                let pod = pods.get(&name).await.ok()?;
                (restarts(&pod) == 1 && ready(&pod)).then_some(pod)
            }
        },
    )
    .await;
    assert_eq!(infer(&http, &pod_ip(&restarted)).await, Ok(200));
    let last = restarted
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .last_state
        .clone()
        .unwrap();
    assert_eq!(last.terminated.unwrap().exit_code, 137);

    // Delete a pod: its process gets SIGTERM, exits, and the ReplicaSet replaces the pod.
    let doomed = ferry_testbed_e2e::pod_pid(&restarted);
    pods.delete(&victim_name, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted pod's process exits",
        Duration::from_secs(30),
        || async { (!alive(doomed)).then_some(()) },
    )
    .await;
    let log = std::fs::read_to_string(
        repo()
            .join("testbed/run/agent-logs")
            .join(format!("{}_{victim_name}_server.log", ns.name)),
    )
    .unwrap_or_default();
    assert!(
        log.contains("shutdown signal received"),
        "the server saw SIGTERM: {log}"
    );
    eventually("the pod object is gone", Duration::from_secs(30), || {
        let pods = pods.clone();
        let name = victim_name.clone();
        async move { pods.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    eventually("2 Ready pods again", Duration::from_secs(60), || {
        ready_pods(&pods, 2)
    })
    .await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_on_a_process_node_replaces_the_processes() {
    let Some(client) = admin_client().await else {
        return;
    };
    let ns = TempNamespace::create(&client, "process-rollout")
        .await
        .unwrap();
    let (deployments, pods) = start_iris(&client, &ns.name).await;
    let old = eventually("2 Ready pods", Duration::from_secs(90), || {
        ready_pods(&pods, 2)
    })
    .await;
    let old_pids: Vec<i32> = old.iter().map(ferry_testbed_e2e::pod_pid).collect();
    let old_names: Vec<String> = old.iter().filter_map(|p| p.metadata.name.clone()).collect();

    // A client calls whatever the API says is Ready, during the whole update.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let pods = pods.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(list) = pods.list(&ListParams::default().labels("app=iris")).await else {
                    continue;
                };
                for pod in list.items.iter().filter(|p| ready(p)) {
                    match infer(&http, &pod_ip(pod)).await {
                        Ok(200) => ok += 1,
                        _ => failed += 1,
                    }
                }
            }
            (ok, failed)
        })
    };
    let patch = json!({"spec": {"template": {"spec": {"containers": [{
        "name": "server",
        "args": ["server", "--model", format!("iris={}", repo().join("models/iris-v2.onnx").display()),
                 "--http-addr", "$(POD_IP):8000", "--grpc-addr", "$(POD_IP):8001"]
    }]}}}});
    deployments
        .patch("iris", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let new = eventually(
        "the rollout completes with 2 new Ready pods",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            let old_names = old_names.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("app=iris"))
                    .await
                    .ok()?;
                let all_new = list.items.iter().all(|p| {
                    p.metadata
                        .name
                        .as_ref()
                        .is_some_and(|n| !old_names.contains(n))
                });
                let ready: Vec<Pod> = list.items.into_iter().filter(ready).collect();
                (all_new && ready.len() == 2).then_some(ready)
            }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    eprintln!("calls to Ready pods during the update: {ok} answered, {failed} failed");
    assert!(ok > 0);
    eventually(
        "the old processes are gone",
        Duration::from_secs(30),
        || {
            let pids = old_pids.clone();
            async move { pids.iter().all(|p| !alive(*p)).then_some(()) }
        },
    )
    .await;
    let http = reqwest::Client::new();
    for pod in &new {
        assert_eq!(infer(&http, &pod_ip(pod)).await, Ok(200));
        let args = pod.spec.as_ref().unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert!(args.iter().any(|a| a.contains("iris-v2.onnx")), "{args:?}");
    }
    ns.delete().await;
}
