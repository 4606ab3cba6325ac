//! ServerPools on the test bed: the operator renders a pool as a Deployment of `ferry server`
//! pods (real processes on the process node), places the pooled InferenceServices' models on
//! them through their repository API at the pod IPs, and the in-cluster router sends each
//! model's requests to the servers the pool's status names. Every model answers with
//! scikit-learn's answers (`models/many`); kill -9 of a pool server under load, with 2 copies of
//! each model, fails no request and its copies are registered again when it restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_testbed_e2e::{
    TempNamespace, admin_client, apply_deploy, apply_in, condition, eventually_in, install_crds,
    install_router, isvc_json, kubectl, pod_pid,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

const MODELS: usize = 10;

fn many() -> (std::path::PathBuf, BTreeMap<String, Value>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/many");
    let dir = dir.canonicalize().unwrap_or(dir);
    let text = std::fs::read_to_string(dir.join("expected.json"))
        .expect("models/many/expected.json: run `make -C models many` (make test does)");
    let all: BTreeMap<String, Value> = serde_json::from_str(&text).unwrap();
    (dir, all.into_iter().take(MODELS).collect())
}

/// One request for `model` through the router: `Ok(())` when the answer is the expected one,
/// else what came back.
async fn check(
    http: &reqwest::Client,
    router_ip: &str,
    ns: &str,
    model: &str,
    expected: &Value,
) -> Result<(), String> {
    let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [4, 4],
                                    "data": expected["input"] }] });
    let response = http
        .post(format!("http://{router_ip}:8080/v2/models/{model}/infer"))
        .header("ferry-namespace", ns)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{model}: {e}"))?;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return Err(format!("{model}: {status} {answer}"));
    }
    let labels = answer["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["name"] == "label"))
        .map(|o| o["data"].clone())
        .unwrap_or(Value::Null);
    let want: Vec<i64> = serde_json::from_value(expected["label"].clone()).unwrap();
    let got: Option<Vec<i64>> = serde_json::from_value(labels).ok();
    if got.as_ref() != Some(&want) {
        return Err(format!(
            "{model}: labels {got:?}, expected {want:?}: {answer}"
        ));
    }
    Ok(())
}

fn pool_json(ns: &str) -> Value {
    let out = kubectl(
        &["get", "serverpool", "small", "-n", ns, "-o", "json"],
        None,
    );
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Each server's (ready, registered models, restarts) as the pool's status has them.
fn servers_of(pool: &Value) -> BTreeMap<String, (bool, u64, u64)> {
    pool["status"]["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                (
                    s["ready"].as_bool().unwrap_or(false),
                    s["registeredModels"].as_u64().unwrap_or(0),
                    s["restarts"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pooled_services_through_the_cluster_router_survive_a_killed_server() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "pools").await.unwrap();
    let (dir, models) = many();

    apply_in(
        &ns.name,
        "apiVersion: ferry.dev/v1alpha1\nkind: ServerPool\nmetadata: {name: small}\nspec:\n  replicas: 2\n  memoryBudget: 256Mi\n  resources: {limits: {cpu: \"1\", memory: 512Mi}}\n",
    );
    let mut manifests = String::new();
    for name in models.keys() {
        manifests.push_str(&format!(
            "---\napiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: {name}}}\nspec:\n  predictor:\n    pool: small\n    minReplicas: 2\n    model: {{format: onnx, uri: {}}}\n",
            dir.join(format!("{name}.onnx")).display()
        ));
    }
    // And one naming a pool that does not exist.
    manifests.push_str("---\napiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: orphan}\nspec:\n  predictor:\n    pool: missing\n    model: {format: onnx, uri: /nowhere.onnx}\n");
    apply_in(&ns.name, &manifests);

    // Every pooled service Ready, its 2 copies on the 2 servers.
    eventually_in(
        &ns.name,
        "every pooled service Ready",
        Duration::from_secs(150),
        || {
            let (ns, models) = (ns.name.clone(), models.clone());
            async move {
                models
                    .keys()
                    .all(|name| condition(&isvc_json(&ns, name), "Ready").0 == "True")
                    .then_some(())
            }
        },
    )
    .await;
    let pool = pool_json(&ns.name);
    let servers = servers_of(&pool);
    assert_eq!(servers.len(), 2, "{pool}");
    for (name, (ready, registered, _)) in &servers {
        assert!(*ready, "{name}: {pool}");
        assert_eq!(*registered, MODELS as u64, "{name}: {pool}");
    }
    for model in pool["status"]["models"].as_array().unwrap() {
        assert_eq!(model["servers"].as_array().unwrap().len(), 2, "{model}");
    }
    let (status, reason, message) = condition(&isvc_json(&ns.name, "orphan"), "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "PoolNotFound"),
        "{message}"
    );
    let (status, reason, _) = {
        let pool = pool_json(&ns.name);
        let c = pool["status"]["conditions"][0].clone();
        (c["status"].clone(), c["reason"].clone(), c)
    };
    assert_eq!((status, reason), (json!("True"), json!("ServersReady")));

    // Every model answers its own answers through the router, twice (loaded, then resident),
    // and each was measured by the server that loaded it.
    let http = reqwest::Client::new();
    for _ in 0..2 {
        for (name, expected) in &models {
            check(&http, &router_ip, &ns.name, name, expected)
                .await
                .unwrap();
        }
    }
    eventually_in(
        &ns.name,
        "every model measured",
        Duration::from_secs(30),
        || {
            let ns = ns.name.clone();
            async move {
                let pool = pool_json(&ns);
                let all = pool["status"]["models"].as_array()?;
                all.iter()
                    .all(|m| m["measuredBytes"].as_u64().is_some_and(|b| b > 0))
                    .then_some(())
            }
        },
    )
    .await;
    // kubectl's table of pools.
    let table = kubectl(&["get", "serverpools", "-n", &ns.name], None);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(table.contains("small"), "{table}");

    // Load on every model while one server is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (http, router_ip, ns, stop) = (
                http.clone(),
                router_ip.clone(),
                ns.name.clone(),
                stop.clone(),
            );
            let mine: Vec<(String, Value)> = models
                .iter()
                .skip(worker)
                .step_by(4)
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect();
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0usize, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    for (name, expected) in &mine {
                        sent += 1;
                        if let Err(e) = check(&http, &router_ip, &ns, name, expected).await {
                            failed.push(e);
                        }
                    }
                }
                (sent, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let list = pods
        .list(&ListParams::default().labels("ferry.dev/serverpool=small"))
        .await
        .unwrap();
    let victim = list.items[0].clone();
    let victim_name = victim.metadata.name.clone().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pod_pid(&victim)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    // It restarts empty, and the pool registers its copies again.
    eventually_in(
        &ns.name,
        "the killed server restarted and holds its copies again",
        Duration::from_secs(90),
        || {
            let (ns, victim) = (ns.name.clone(), victim_name.clone());
            async move {
                let servers = servers_of(&pool_json(&ns));
                let (ready, registered, restarts) = servers.get(&victim)?;
                (*ready && *registered == MODELS as u64 && *restarts >= 1).then_some(())
            }
        },
    )
    .await;
    let recovered = killed.elapsed();
    // Requests go on to both servers for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed) = (0, Vec::new());
    for worker in workers {
        let (s, f) = worker.await.unwrap();
        sent += s;
        failed.extend(f);
    }
    eprintln!(
        "{sent} checked requests across kill -9 of {victim_name}; copies back after {recovered:?}; {} failed",
        failed.len()
    );
    assert!(sent >= 200, "only {sent} requests");
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    ns.delete().await;
}

/// Each pod of pool `name` in `ns`: (node, phase, the scheduler's message when unschedulable).
async fn pool_pods(client: &kube::Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("ferry.dev/serverpool={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.iter()
        .map(|p| {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let status = p.status.as_ref();
            let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
            let unschedulable = status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| {
                    c.iter().find(|c| {
                        c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
                .and_then(|c| c.message.clone())
                .unwrap_or_default();
            (node, phase, unschedulable)
        })
        .collect()
}

fn gpu_pool(name: &str, resource: &str, count: u32, selector: &str) -> String {
    format!(
        "---\napiVersion: ferry.dev/v1alpha1\nkind: ServerPool\nmetadata: {{name: {name}}}\nspec:\n  replicas: 2\n  memoryBudget: 1Gi\n  gpuMemoryBudget: 9Gi\n  resources: {{limits: {{cpu: \"1\", memory: 2Gi, {resource}: \"{count}\"}}}}\n  nodeSelector: {{{selector}}}\n  tolerations: [{{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}}]\n"
    )
}

#[tokio::test]
async fn gpu_pools_land_on_time_sliced_and_mig_nodes_and_an_over_ask_stays_pending_with_the_reason()
{
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let ns = TempNamespace::create(&client, "gpu-pools").await.unwrap();
    let manifests = [
        gpu_pool(
            "sliced",
            "nvidia.com/gpu.shared",
            1,
            "nvidia.com/gpu.sharing-strategy: time-slicing",
        ),
        gpu_pool(
            "mig",
            "nvidia.com/mig-1g.10gb",
            1,
            "nvidia.com/mig.strategy: mixed",
        ),
        // 3 slices of 3g.40gb per server: no node has more than 2.
        gpu_pool(
            "greedy",
            "nvidia.com/mig-3g.40gb",
            3,
            "nvidia.com/mig.strategy: mixed",
        ),
    ]
    .concat();
    apply_in(&ns.name, &manifests);

    for (pool, node) in [
        ("sliced", "kwok-gpu-l4-shared-0"),
        ("mig", "kwok-gpu-h100-mig-0"),
    ] {
        let what = format!("both servers of {pool} running on {node}");
        // A new operator may wait for the leader lease first.
        eventually_in(&ns.name, &what, Duration::from_secs(150), || {
            let (client, ns) = (client.clone(), ns.name.clone());
            async move {
                let pods = pool_pods(&client, &ns, pool).await;
                (pods.len() == 2
                    && pods
                        .iter()
                        .all(|(n, phase, _)| n == node && phase == "Running"))
                .then_some(())
            }
        })
        .await;
    }
    // The over-ask: kube-scheduler's reason on the pods and in the pool's Ready condition.
    let message = eventually_in(
        &ns.name,
        "the greedy pool Unschedulable, the resource named",
        Duration::from_secs(60),
        || {
            let ns = ns.name.clone();
            async move {
                let out = kubectl(
                    &["get", "serverpool", "greedy", "-n", &ns, "-o", "json"],
                    None,
                );
                let pool: Value = serde_json::from_slice(&out.stdout).ok()?;
                let ready = pool["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")?
                    .clone();
                (ready["status"] == "False" && ready["reason"] == "Unschedulable")
                    .then(|| ready["message"].as_str().unwrap_or("").to_string())
            }
        },
    )
    .await;
    assert!(message.contains("nvidia.com/mig-3g.40gb"), "{message}");
    let pods = pool_pods(&client, &ns.name, "greedy").await;
    assert!(
        pods.iter().all(|(node, phase, why)| node.is_empty()
            && phase == "Pending"
            && why.contains("Insufficient nvidia.com/mig-3g.40gb")),
        "{pods:?}"
    );
    ns.delete().await;
}
