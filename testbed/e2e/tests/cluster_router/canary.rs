//! Canary, blue-green and KServe's canaryTrafficPercent through the router pod.

use super::*;

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
    // Judged by the analyses, not the clock (a loaded 2-core CI machine stretches intervals):
    // the rollback came on the first failureLimit (2) failing analyses in a row, none passed;
    // the wall-clock bound only says it was not left waiting.
    let judged = timeline.last().unwrap().0 - took;
    assert!(
        judged <= Duration::from_secs(3 * 10),
        "rolled back {judged:?} after taking traffic"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = load.finish().await;
    let failures: Vec<String> = samples
        .iter()
        .filter(|s| s.1 != 200)
        .map(|s| {
            let at = s.0.saturating_duration_since(took).as_secs_f64()
                - took.saturating_duration_since(s.0).as_secs_f64();
            format!("{} at {at:+.2} s", s.1)
        })
        .collect();
    eprintln!(
        "{model} cluster canary: {} of {} requests failed, rolled back {judged:?} after taking traffic",
        failures.len(),
        samples.len()
    );
    assert!(
        failures.is_empty(),
        "retryOnStable: the stable revision answers for the canary; failed (status, sent relative to the canary taking traffic): {failures:?}"
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
    assert!(
        events.contains("(1 of 2 in a row)") && events.contains("failed 2 analyses in a row"),
        "{events}"
    );
    assert_eq!(state["consecutiveFailures"], 2, "{state}");
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_faulty_canary_in_the_cluster_is_rolled_back_and_no_client_sees_it() {
    if admin_client().await.is_none() {
        return;
    }
    let state = rolled_back_in_cluster(
        "canary-faulty",
        "faulty.onnx",
        "{interval: 3s, minRequests: 10, maxErrorPercent: 1, failureLimit: 2}",
        "maxErrorPercent",
    )
    .await;
    // Every answer of a faulty model is an error: no analysis of it ever passed.
    assert_eq!(state["passedInStep"], 0, "{state}");
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
