//! A/B experiments and shadow traffic through the router pod.

use super::*;

/// POST the iris request through the router pod with `headers`: (status, variant, request id).
pub(crate) async fn ask_router(
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
