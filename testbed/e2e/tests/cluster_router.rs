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

fn latest_ready(ns: &str) -> Option<String> {
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
    let first = eventually("v1 ready", Duration::from_secs(90), || {
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

/// `iris_manifest(model)` with a progressive `rollout` instead of the rolling bounds.
fn canary_manifest(model: &str, rollout: &str) -> String {
    let base = manifest(model);
    let cut = base.find("  rollout:").expect("a rollout");
    format!("{}  rollout:\n{rollout}", &base[..cut])
}

/// `status.rollout` of `iris` in `ns` (as `kubectl get -o json` shows it).
fn rollout_state(ns: &str) -> Option<Value> {
    let out = kubectl(&["get", "isvc", "iris", "-n", ns, "-o", "json"], None);
    let object: Value = serde_json::from_slice(&out.stdout).ok()?;
    let rollout = object["status"]["rollout"].clone();
    (!rollout.is_null()).then_some(rollout)
}

/// Continuous load through the router pod: (sent, status, revision) per request.
struct RouterLoad {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<(Instant, u16, String)>>>,
}

impl RouterLoad {
    fn start(router_ip: &str, ns: &str) -> RouterLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::new();
        let workers = (0..4)
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

    async fn finish(self) -> Vec<(Instant, u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for worker in self.workers {
            samples.extend(worker.await.unwrap());
        }
        samples
    }
}

/// v1 applied and answering through the router pod; returns its revision.
async fn serving_v1(router_ip: &str, ns: &str) -> String {
    let applied = kubectl(
        &["apply", "--server-side", "-n", ns, "-f", "-"],
        Some(&manifest("iris-v1.onnx")),
    );
    assert!(applied.status.success());
    let first = eventually("v1 ready", Duration::from_secs(90), || {
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
async fn follow(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_through_the_cluster_router_follows_its_steps_and_is_promoted() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "canary").await.unwrap();
    let stable = serving_v1(&router_ip, &ns.name).await;
    let load = RouterLoad::start(&router_ip, &ns.name);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&canary_manifest(
            "iris-v2.onnx",
            "    strategy: canary\n    steps: [{weight: 10, pause: 8s}, {weight: 50, pause: 8s}, {weight: 70, pause: untilPromoted}]\n    analysis: {interval: 3s, minRequests: 10, maxErrorPercent: 1}\n",
        )),
    );
    assert!(applied.status.success());
    let mut timeline = follow(&ns.name, Duration::from_secs(120), |s| {
        s["phase"] == "WaitingForPromotion"
    })
    .await;
    // The split shows in `kubectl get isvc -o wide` (the CRD's printer columns).
    let wide = String::from_utf8_lossy(
        &kubectl(&["get", "isvc", "-n", &ns.name, "-o", "wide"], None).stdout,
    )
    .into_owned();
    assert!(
        wide.contains("ROLLOUT") && wide.contains("WaitingForPromotion") && wide.contains("70"),
        "{wide}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Promoted the way a user would: `ferry rollout promote --kubeconfig`, an annotation.
    let ferry = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../run/bin/ferry");
    let kubeconfig = std::env::var("FERRY_TESTBED_KUBECONFIG").unwrap();
    let promoted = std::process::Command::new(ferry)
        .args([
            "rollout",
            "promote",
            "iris",
            "-n",
            &ns.name,
            "--kubeconfig",
            &kubeconfig,
        ])
        .output()
        .unwrap();
    assert!(
        promoted.status.success(),
        "{}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    timeline.extend(
        follow(&ns.name, Duration::from_secs(120), |s| {
            s["phase"] == "Succeeded"
        })
        .await,
    );
    let done = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        "the stable revision retired",
        Duration::from_secs(60),
        || {
            let (deployments, stable) = (deployments.clone(), stable.clone());
            async move {
                deployments
                    .get_opt(&stable)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = load.finish().await;
    let failed: Vec<_> = samples.iter().filter(|s| s.1 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        samples.len(),
        failed.first()
    );
    let canary = samples
        .iter()
        .rev()
        .find(|s| s.0 > done + Duration::from_secs(1))
        .unwrap()
        .2
        .clone();
    assert_ne!(canary, stable);
    for weight in [10u64, 50] {
        let seen: Vec<Instant> = timeline
            .iter()
            .filter(|t| t.1 == weight)
            .map(|t| t.0)
            .collect();
        let (from, to) = (seen[0] + Duration::from_secs(1), *seen.last().unwrap());
        let during: Vec<_> = samples
            .iter()
            .filter(|s| s.0 >= from && s.0 <= to)
            .collect();
        let share = during.iter().filter(|s| s.2 == canary).count() as f64 * 100.0
            / during.len().max(1) as f64;
        eprintln!(
            "cluster canary at {weight}%: {share:.1}% of {} answers",
            during.len()
        );
        assert!(during.len() >= 150, "{} answers at {weight}%", during.len());
        assert!(
            (share - weight as f64).abs() <= 3.0,
            "{share:.1}% at {weight}%"
        );
    }
    assert!(
        samples
            .iter()
            .filter(|s| s.0 > done + Duration::from_secs(1))
            .all(|s| s.2 == canary)
    );
}

/// A canary to `model` under load through the router pod, judged by `analysis`: rolled back
/// within failureLimit + 1 intervals, no client failure (retryOnStable), only stable answers
/// after; the rollout's last state.
async fn rolled_back_in_cluster(prefix: &str, model: &str, analysis: &str, rule: &str) -> Value {
    let client = admin_client().await.expect("the test bed");
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, prefix).await.unwrap();
    let stable = serving_v1(&router_ip, &ns.name).await;
    let load = RouterLoad::start(&router_ip, &ns.name);
    let applied = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&canary_manifest(
            model,
            &format!(
                "    strategy: canary\n    steps: [{{weight: 50, pause: 1h}}]\n    analysis: {analysis}\n"
            ),
        )),
    );
    assert!(applied.status.success());
    let timeline = follow(&ns.name, Duration::from_secs(120), |s| {
        s["phase"] == "Aborted"
    })
    .await;
    let took = timeline
        .iter()
        .find(|t| t.1 > 0)
        .map(|t| t.0)
        .expect("the canary took traffic");
    let judged = timeline.last().unwrap().0 - took;
    assert!(
        judged <= Duration::from_secs(3 * 3 + 3),
        "rolled back {judged:?} after taking traffic"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = load.finish().await;
    let failed = samples.iter().filter(|s| s.1 != 200).count();
    eprintln!(
        "{model} cluster canary: {failed} of {} requests failed, rolled back {judged:?} after taking traffic",
        samples.len()
    );
    assert_eq!(
        failed, 0,
        "retryOnStable: the stable revision answered for the canary"
    );
    assert!(
        samples
            .iter()
            .filter(|s| s.0 > after)
            .all(|s| s.2 == stable)
    );
    let state = rollout_state(&ns.name).unwrap();
    assert_eq!(state["reason"], "RolledBackAutomatically", "{state}");
    assert!(
        state["lastAnalysis"]["message"]
            .as_str()
            .unwrap()
            .contains(rule),
        "{state}"
    );
    let events = String::from_utf8_lossy(&kubectl(&["get", "events", "-n", &ns.name], None).stdout)
        .into_owned();
    assert!(
        events.contains("AnalysisFailed") && events.contains("RolledBackAutomatically"),
        "{events}"
    );
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_faulty_canary_in_the_cluster_is_rolled_back_and_no_client_sees_it() {
    if admin_client().await.is_none() {
        return;
    }
    rolled_back_in_cluster(
        "canary-faulty",
        "faulty.onnx",
        "{interval: 3s, minRequests: 10, maxErrorPercent: 1, failureLimit: 2}",
        "maxErrorPercent",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_canary_in_the_cluster_is_rolled_back_by_the_latency_rule() {
    if admin_client().await.is_none() {
        return;
    }
    let state = rolled_back_in_cluster(
        "canary-slow",
        "iris-slow.onnx",
        "{interval: 3s, minRequests: 10, maxP99LatencyRatio: 2.0, failureLimit: 2}",
        "maxP99LatencyRatio",
    )
    .await;
    let analysis = &state["lastAnalysis"];
    eprintln!(
        "slow cluster canary: p99 {} ms vs stable {} ms",
        analysis["p99LatencyMs"], analysis["stableP99LatencyMs"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_in_the_cluster_switches_without_a_failed_request() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "blue-green").await.unwrap();
    let blue = serving_v1(&router_ip, &ns.name).await;
    let load = RouterLoad::start(&router_ip, &ns.name);
    let applied = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&canary_manifest(
            "iris-v2.onnx",
            "    strategy: blueGreen\n    blueGreen: {autoPromoteSeconds: 3, scaleDownDelaySeconds: 600}\n",
        )),
    );
    assert!(applied.status.success());
    let timeline = follow(&ns.name, Duration::from_secs(120), |s| {
        s["phase"] == "Succeeded"
    })
    .await;
    let switched = timeline.last().unwrap().0;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = load.finish().await;
    let failed = samples.iter().filter(|s| s.1 != 200).count();
    let green = samples.last().unwrap().2.clone();
    eprintln!(
        "cluster blue-green: {} requests, {failed} failed",
        samples.len()
    );
    assert_eq!(failed, 0);
    assert_ne!(green, blue);
    assert!(
        samples
            .iter()
            .filter(|s| s.0 < switched - Duration::from_secs(1))
            .all(|s| s.2 == blue)
    );
    assert!(
        samples
            .iter()
            .filter(|s| s.0 > switched + Duration::from_secs(1))
            .all(|s| s.2 == green)
    );
    // The old revision stays warm at full size for scaleDownDelaySeconds.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let warm = deployments.get(&blue).await.unwrap();
    assert_eq!(warm.spec.unwrap().replicas, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kserve_canary_traffic_percent_in_the_cluster_splits_promotes_and_pins() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "canary-percent")
        .await
        .unwrap();
    serving_v1(&router_ip, &ns.name).await;
    let with_percent = |model: &str, percent: Option<u32>| {
        let text = manifest(model);
        match percent {
            Some(p) => text.replace(
                "    minReplicas: 2\n",
                &format!("    minReplicas: 2\n    canaryTrafficPercent: {p}\n"),
            ),
            None => text,
        }
    };
    let apply = |text: String| {
        let applied = kubectl(
            &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
            Some(&text),
        );
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
    };
    let load = RouterLoad::start(&router_ip, &ns.name);
    apply(with_percent("iris-v2.onnx", Some(10)));
    follow(&ns.name, Duration::from_secs(90), |s| s["weight"] == 10).await;
    let ten = (
        Instant::now() + Duration::from_secs(1),
        Instant::now() + Duration::from_secs(6),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let v2 = rollout_state(&ns.name).unwrap()["canaryRevision"]
        .as_str()
        .unwrap()
        .to_string();
    apply(with_percent("iris-v2.onnx", None));
    follow(&ns.name, Duration::from_secs(90), |s| {
        s["phase"] == "Succeeded"
    })
    .await;
    let all = (
        Instant::now() + Duration::from_secs(2),
        Instant::now() + Duration::from_secs(5),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    apply(with_percent("iris-v1.onnx", Some(0)));
    follow(&ns.name, Duration::from_secs(90), |s| {
        s["canaryRevision"] != v2.as_str() && s["phase"] == "WaitingForPromotion"
    })
    .await;
    let pinned = (
        Instant::now() + Duration::from_secs(2),
        Instant::now() + Duration::from_secs(5),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let samples = load.finish().await;
    assert!(samples.iter().all(|s| s.1 == 200), "no failed request");
    let share = |(from, to): (Instant, Instant)| {
        let during: Vec<_> = samples
            .iter()
            .filter(|s| s.0 >= from && s.0 <= to)
            .collect();
        let hits = during.iter().filter(|s| s.2 == v2).count();
        (
            hits as f64 * 100.0 / during.len().max(1) as f64,
            during.len(),
        )
    };
    let (at_ten, n) = share(ten);
    eprintln!("cluster canaryTrafficPercent 10: {at_ten:.1}% of {n} from {v2}");
    assert!(
        (at_ten - 10.0).abs() <= 3.0 && n >= 150,
        "{at_ten:.1}% of {n}"
    );
    assert_eq!(share(all).0, 100.0, "removing the field promotes");
    assert_eq!(
        share(pinned).0,
        100.0,
        "0 keeps every request on the previous revision"
    );
}

/// POST the iris request through the router pod with `headers`: (status, variant, request id).
async fn ask_router(
    http: &reqwest::Client,
    router_ip: &str,
    ns: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut request = http
        .post(format!("http://{router_ip}:8080/v2/models/iris/infer"))
        .header("ferry-namespace", ns)
        .json(&ferry_testbed_e2e::iris_body());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let Ok(response) = request.send().await else {
        return (0, String::new(), String::new());
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    (
        response.status().as_u16(),
        header("ferry-variant"),
        header("ferry-request-id"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_experiment_through_the_cluster_router_keeps_callers_sticky_and_counts_feedback() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "experiment").await.unwrap();
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let models = models.canonicalize().unwrap_or(models);
    let text = format!(
        "{}  experiment:\n    variants: [{{name: mlp, weight: 50, model: {{format: onnx, uri: {}}}}}]\n    sticky: {{header: x-user-id}}\n",
        manifest("iris-v1.onnx"),
        models.join("iris-v2.onnx").display()
    );
    let applied = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&text),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let http = reqwest::Client::new();
    eventually(
        "both variants answer through the router",
        Duration::from_secs(120),
        || {
            let (http, router_ip, ns) = (http.clone(), router_ip.clone(), ns.name.clone());
            async move {
                let a = ask_router(&http, &router_ip, &ns, &[("ferry-variant", "mlp")]).await;
                let b = ask_router(&http, &router_ip, &ns, &[("ferry-variant", "control")]).await;
                (a.0 == 200 && a.1 == "mlp" && b.0 == 200 && b.1 == "control").then_some(())
            }
        },
    )
    .await;
    let mut seen: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut sent: std::collections::BTreeMap<String, (u64, f64)> = Default::default();
    for round in 0..20 {
        for caller in 0..50 {
            let user = format!("user-{caller}");
            let (status, variant, id) =
                ask_router(&http, &router_ip, &ns.name, &[("x-user-id", &user)]).await;
            assert_eq!(status, 200, "round {round}, {user}");
            seen.entry(user).or_default().insert(variant.clone());
            let reward = if variant == "mlp" { 0.25 } else { 0.75 };
            let response = http
                .post(format!("http://{router_ip}:8080/v2/models/iris/feedback"))
                .header("ferry-namespace", &ns.name)
                .json(&serde_json::json!({"requestId": id, "reward": reward}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let entry = sent.entry(variant).or_default();
            entry.0 += 1;
            entry.1 += reward;
        }
    }
    assert!(
        seen.values().all(|v| v.len() == 1),
        "a caller changed variant: {seen:?}"
    );
    assert_eq!(sent.len(), 2, "{sent:?}");
    // The operator collects the rewards from the router pods into status.experiment.
    let figures = eventually(
        "the feedback in status.experiment",
        Duration::from_secs(60),
        || {
            let ns = ns.name.clone();
            async move {
                let out = kubectl(&["get", "isvc", "iris", "-n", &ns, "-o", "json"], None);
                let object: Value = serde_json::from_slice(&out.stdout).ok()?;
                let variants = object["status"]["experiment"]["variants"]
                    .as_array()?
                    .clone();
                let feedback: u64 = variants
                    .iter()
                    .map(|v| v["feedback"].as_u64().unwrap_or(0))
                    .sum();
                (feedback == 1000).then_some(variants)
            }
        },
    )
    .await;
    for variant in &figures {
        let name = variant["name"].as_str().unwrap();
        let (count, sum) = sent[name];
        assert_eq!(variant["feedback"].as_u64(), Some(count), "{variant}");
        let mean = variant["meanReward"].as_f64().unwrap();
        assert!((mean - sum / count as f64).abs() < 1e-3, "{variant}");
        assert!(variant["requests"].as_u64().unwrap() >= count, "{variant}");
    }
    let ferry = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../run/bin/ferry");
    let kubeconfig = std::env::var("FERRY_TESTBED_KUBECONFIG").unwrap();
    let printed = std::process::Command::new(ferry)
        .args([
            "experiment",
            "status",
            "iris",
            "-n",
            &ns.name,
            "--kubeconfig",
            &kubeconfig,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&printed.stdout).into_owned();
    eprintln!("{text}");
    assert!(
        printed.status.success() && text.contains("mlp") && text.contains("control"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_in_the_cluster_gets_its_share_of_copies_and_never_answers() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "shadow").await.unwrap();
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let models = models.canonicalize().unwrap_or(models);
    let text = format!(
        "{}  shadow: {{percent: 20, model: {{format: onnx, uri: {}}}}}\n",
        manifest("iris-v1.onnx"),
        models.join("iris-v2.onnx").display()
    );
    let applied = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&text),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let shadow_of = |ns: String| async move {
        let out = kubectl(&["get", "isvc", "iris", "-n", &ns, "-o", "json"], None);
        let object: Value = serde_json::from_slice(&out.stdout).ok()?;
        let shadow = object["status"]["shadow"].clone();
        (!shadow.is_null()).then_some(shadow)
    };
    let http = reqwest::Client::new();
    // Not `serving_v1`: it applies v1 without the shadow.
    let live = eventually("v1 ready", Duration::from_secs(90), || {
        let ns = ns.name.clone();
        async move { latest_ready(&ns) }
    })
    .await;
    let revision = eventually(
        "the shadow answers when pinned",
        Duration::from_secs(120),
        || {
            let (http, router_ip, ns) = (http.clone(), router_ip.clone(), ns.name.clone());
            async move {
                let shadow = shadow_of(ns.clone()).await?;
                let revision = shadow["revision"].as_str()?.to_string();
                let (status, ..) =
                    ask_router(&http, &router_ip, &ns, &[("ferry-revision", &revision)]).await;
                (status == 200).then_some(revision)
            }
        },
    )
    .await;
    assert_ne!(revision, live);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = shadow_of(ns.name.clone()).await.unwrap();
    for _ in 0..1000 {
        let (status, ..) = ask_router(&http, &router_ip, &ns.name, &[]).await;
        assert_eq!(status, 200);
    }
    let load = RouterLoad::start(&router_ip, &ns.name);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = load.finish().await;
    assert!(
        samples.iter().all(|s| s.1 == 200 && s.2 == live),
        "only the live revision answers"
    );
    let sent = 1000 + samples.len() as u64;
    let after = eventually(
        "the copies counted in status.shadow",
        Duration::from_secs(60),
        || {
            let (ns, before) = (ns.name.clone(), before.clone());
            async move {
                let after = shadow_of(ns).await?;
                let delta =
                    |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
                let judged = delta("agreed") + delta("disagreed") + delta("failed");
                (delta("live") >= sent && judged == delta("mirrored")).then_some(after)
            }
        },
    )
    .await;
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    let share = delta("mirrored") as f64 * 100.0 / delta("live") as f64;
    let agreement = after["agreementPercent"].as_f64().unwrap();
    eprintln!(
        "cluster shadow: {} of {} live requests copied ({share:.1}%), agreement {agreement:.1}%, {} dropped",
        delta("mirrored"),
        delta("live"),
        delta("dropped")
    );
    assert!((share - 20.0).abs() <= 3.0, "{share:.1}%");
    assert!((0.0..=100.0).contains(&agreement));
    assert_eq!(delta("failed"), 0);
}
