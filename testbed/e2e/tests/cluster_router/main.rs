//! The router in the cluster: installed from deploy/router.yaml, running as a pod with its own
//! ServiceAccount, it routes by the same route table local mode uses. A model update under
//! continuous load through the router pod: at least 2,000 requests, none failed, every request
//! after the rollout answered by the new revision (`ferry-revision`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry_testbed_e2e::{
    TempNamespace, admin_client, apply_deploy, eventually, infer_via_router, install_crds,
    install_router, iris_manifest as manifest, kubectl,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

pub(crate) fn latest_ready(ns: &str) -> Option<String> {
    let out = kubectl(&["get", "isvc", "iris", "-n", ns, "-o", "json"], None);
    let object: Value = serde_json::from_slice(&out.stdout).ok()?;
    let ready = object["status"]["conditions"]
        .as_array()?
        .iter()
        .any(|c| c["type"] == "LatestRevisionReady" && c["status"] == "True");
    ready.then(|| {
        object["status"]["latestRevision"]
            .as_str()
            .unwrap_or("")
            .to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_update_through_the_cluster_router_fails_no_request() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;

    let ns = TempNamespace::create(&client, "cluster-router")
        .await
        .unwrap();
    let applied = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&manifest("iris-v1.onnx")),
    );
    assert!(applied.status.success());
    let first =
        ferry_testbed_e2e::eventually_in(&ns.name, "v1 ready", Duration::from_secs(150), || {
            let ns = ns.name.clone();
            async move { latest_ready(&ns) }
        })
        .await;
    let http = reqwest::Client::new();
    eventually("the router routes to v1", Duration::from_secs(30), || {
        let (http, router_ip, ns) = (http.clone(), router_ip.clone(), ns.name.clone());
        async move {
            let (status, ..) = infer_via_router(&http, &router_ip, &ns, "iris").await?;
            (status == 200).then_some(())
        }
    })
    .await;

    // Continuous load through the router pod across the update.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (http, router_ip, ns, stop, count) = (
                http.clone(),
                router_ip.clone(),
                ns.name.clone(),
                stop.clone(),
                sent.clone(),
            );
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let sample = match infer_via_router(&http, &router_ip, &ns, "iris").await {
                        Some((status, revision, _)) => (sent, status, revision),
                        None => (sent, 0, String::new()),
                    };
                    samples.push(sample);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                samples
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&manifest("iris-v2.onnx")),
    );
    assert!(applied.status.success());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let second = eventually("v2 rolled out, v1 gone", Duration::from_secs(120), || {
        let (ns, deployments, first) = (ns.name.clone(), deployments.clone(), first.clone());
        async move {
            let latest = latest_ready(&ns)?;
            let gone = deployments.get_opt(&first).await.ok()?.is_none();
            (latest != first && gone).then_some(latest)
        }
    })
    .await;
    // The last old pods may still be terminating: wait until none is left, then keep loading.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    eventually("old pods gone", Duration::from_secs(60), || {
        let (pods, first) = (pods.clone(), first.clone());
        async move {
            let list = pods
                .list(&ListParams::default().labels(&format!("ferry.dev/revision={first}")))
                .await
                .ok()?;
            list.items.is_empty().then_some(())
        }
    })
    .await;
    let settled = Instant::now();
    let deadline = settled + Duration::from_secs(60);
    while (sent.load(Ordering::Relaxed) < 2000 || settled.elapsed() < Duration::from_secs(1))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await.unwrap());
    }
    let failed: Vec<_> = samples.iter().filter(|s| s.1 != 200).collect();
    eprintln!(
        "{} requests through the cluster router, {} failed",
        samples.len(),
        failed.len()
    );
    assert!(samples.len() >= 2000, "only {} requests", samples.len());
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    let late: Vec<_> = samples.iter().filter(|s| s.0 > settled).collect();
    assert!(!late.is_empty());
    assert!(
        late.iter().all(|s| s.2 == second),
        "after the rollout only {second} answers"
    );
    ns.delete().await;
}

mod autoscale;
mod canary;
mod console;
mod experiment;
mod pools;
mod tenancy;
mod tls;

/// `iris_manifest(model)` with a progressive `rollout` instead of the rolling bounds.
pub(crate) fn canary_manifest(model: &str, rollout: &str) -> String {
    let base = manifest(model);
    let cut = base.find("  rollout:").expect("a rollout");
    format!("{}  rollout:\n{rollout}", &base[..cut])
}

/// `status.rollout` of `iris` in `ns` (as `kubectl get -o json` shows it).
pub(crate) fn rollout_state(ns: &str) -> Option<Value> {
    let out = kubectl(&["get", "isvc", "iris", "-n", ns, "-o", "json"], None);
    let object: Value = serde_json::from_slice(&out.stdout).ok()?;
    let rollout = object["status"]["rollout"].clone();
    (!rollout.is_null()).then_some(rollout)
}

/// Continuous load through the router pod: (sent, status, revision) per request.
pub(crate) struct RouterLoad {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<(Instant, u16, String)>>>,
}

impl RouterLoad {
    pub(crate) fn start(router_ip: &str, ns: &str) -> RouterLoad {
        RouterLoad::start_with(router_ip, ns, 4)
    }

    /// `clients` concurrent closed-loop clients.
    pub(crate) fn start_with(router_ip: &str, ns: &str, clients: usize) -> RouterLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::new();
        let workers = (0..clients)
            .map(|_| {
                let (http, router_ip, ns, stop) = (
                    http.clone(),
                    router_ip.to_string(),
                    ns.to_string(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        samples.push(
                            match infer_via_router(&http, &router_ip, &ns, "iris").await {
                                Some((status, revision, _)) => (sent, status, revision),
                                None => (sent, 0, String::new()),
                            },
                        );
                    }
                    samples
                })
            })
            .collect();
        RouterLoad { stop, workers }
    }

    pub(crate) async fn finish(self) -> Vec<(Instant, u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for worker in self.workers {
            samples.extend(worker.await.unwrap());
        }
        samples
    }
}

/// v1 applied and answering through the router pod; returns its revision.
pub(crate) async fn serving_v1(router_ip: &str, ns: &str) -> String {
    let applied = kubectl(
        &["apply", "--server-side", "-n", ns, "-f", "-"],
        Some(&manifest("iris-v1.onnx")),
    );
    assert!(applied.status.success());
    let first = ferry_testbed_e2e::eventually_in(ns, "v1 ready", Duration::from_secs(150), || {
        let ns = ns.to_string();
        async move { latest_ready(&ns) }
    })
    .await;
    let http = reqwest::Client::new();
    eventually("the router routes to v1", Duration::from_secs(30), || {
        let (http, router_ip, ns) = (http.clone(), router_ip.to_string(), ns.to_string());
        async move {
            let (status, ..) = infer_via_router(&http, &router_ip, &ns, "iris").await?;
            (status == 200).then_some(())
        }
    })
    .await;
    first
}

/// Poll `status.rollout` every 200 ms until `done`: the (when, weight, phase) seen.
pub(crate) async fn follow(
    ns: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Vec<(Instant, u64, String)> {
    let deadline = Instant::now() + timeout;
    let mut timeline = Vec::new();
    loop {
        if let Some(state) = rollout_state(ns) {
            let weight = state["weight"].as_u64().unwrap_or(0);
            timeline.push((
                Instant::now(),
                weight,
                state["phase"].as_str().unwrap_or("").to_string(),
            ));
            if done(&state) {
                return timeline;
            }
        }
        if Instant::now() >= deadline {
            let events = kubectl(
                &[
                    "get",
                    "events",
                    "-n",
                    ns,
                    "-o",
                    "custom-columns=R:.reason,N:.message",
                ],
                None,
            );
            let object = kubectl(&["get", "isvc", "iris", "-n", ns, "-o", "yaml"], None);
            panic!(
                "rollout not done: {:?}\n{}\n{}",
                timeline.last(),
                String::from_utf8_lossy(&events.stdout),
                String::from_utf8_lossy(&object.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
