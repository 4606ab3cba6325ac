//! A/B experiments in local mode, end to end: sticky callers, explicit variants, feedback and
//! the per-variant figures `ferry experiment status` prints.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::local::harness::*;

fn experiment_manifest() -> String {
    format!(
        "{}  experiment:\n    variants:\n      - {{name: mlp, weight: 50, model: {{format: onnx, uri: {}}}}}\n    sticky: {{header: x-user-id}}\n",
        manifest("iris", "iris-v1.onnx", 2),
        model("iris-v2.onnx")
    )
}

/// One answer: (status, variant, revision, request id).
async fn ask(
    http: &reqwest::Client,
    router: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, String) {
    let mut request = http
        .post(format!("http://{router}/v2/models/iris/infer"))
        .json(&iris_request());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let out = (
        response.status().as_u16(),
        header("ferry-variant"),
        header("ferry-revision"),
        header("ferry-request-id"),
    );
    let _ = response.bytes().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_experiment_keeps_sticky_callers_on_one_variant_and_reports_their_feedback() {
    let daemon = Daemon::start("experiment");
    let applied = daemon.apply(&experiment_manifest(), &["--wait"]);
    assert!(
        applied.status.success(),
        "{}{}",
        stdout(&applied),
        stderr(&applied)
    );
    let http = reqwest::Client::new();
    eventually("both variants answer", Duration::from_secs(60), || async {
        let a = ask(&http, &daemon.router, &[("ferry-variant", "mlp")]).await;
        let b = ask(&http, &daemon.router, &[("ferry-variant", "control")]).await;
        a.0 == 200 && b.0 == 200
    })
    .await;
    // The figures so far (the status is rewritten every reconcile pass, 500 ms).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = daemon.client().get("default", "iris").await.unwrap();
    let counted_before: BTreeMap<String, u64> = before
        .status
        .and_then(|s| s.experiment)
        .map(|e| {
            e.variants
                .into_iter()
                .map(|v| (v.name, v.requests))
                .collect()
        })
        .unwrap_or_default();

    // 50 sticky callers, 20 requests each.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut answers = Vec::new();
    for round in 0..20 {
        for caller in 0..50 {
            let user = format!("user-{caller}");
            let answer = ask(&http, &daemon.router, &[("x-user-id", &user)]).await;
            assert_eq!(answer.0, 200, "round {round}, {user}");
            seen.entry(user).or_default().insert(answer.1.clone());
            answers.push(answer);
        }
    }
    assert!(
        seen.values().all(|v| v.len() == 1),
        "a caller changed variant: {seen:?}"
    );
    let per_variant: BTreeMap<String, usize> = seen.values().fold(BTreeMap::new(), |mut m, v| {
        *m.entry(v.iter().next().unwrap().clone()).or_default() += 1;
        m
    });
    eprintln!("sticky callers per variant: {per_variant:?}");
    assert_eq!(
        per_variant.len(),
        2,
        "both variants get callers: {per_variant:?}"
    );

    // Explicit choice, and a variant that does not exist.
    let mlp_revision = answers.iter().find(|a| a.1 == "mlp").unwrap().2.clone();
    for _ in 0..5 {
        let answer = ask(
            &http,
            &daemon.router,
            &[("x-user-id", "user-0"), ("ferry-variant", "mlp")],
        )
        .await;
        assert_eq!(
            (answer.0, answer.1.as_str(), answer.2.as_str()),
            (200, "mlp", mlp_revision.as_str())
        );
    }
    assert_eq!(
        ask(&http, &daemon.router, &[("ferry-variant", "nope")])
            .await
            .0,
        404
    );

    // Feedback: control's answers are worth 1, mlp's alternately 0 and 1.
    let feedback = |body: serde_json::Value| {
        http.post(format!("http://{}/v2/models/iris/feedback", daemon.router))
            .json(&body)
            .send()
    };
    let mut sent: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for (i, (_, variant, _, id)) in answers.iter().enumerate() {
        let reward = if variant == "mlp" {
            (i % 2) as f64
        } else {
            1.0
        };
        let response = feedback(serde_json::json!({"requestId": id, "reward": reward}))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        let entry = sent.entry(variant.clone()).or_default();
        entry.0 += 1;
        entry.1 += reward;
    }
    let bad = feedback(serde_json::json!({"requestId": answers[0].3}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("reward"));
    let unknown = feedback(serde_json::json!({"requestId": "zzz.123", "reward": 1}))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // The figures per variant match what was sent.
    let answered: BTreeMap<String, u64> = answers.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.1.clone()).or_default() += 1;
        m
    });
    let figures = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let isvc = daemon.client().get("default", "iris").await.unwrap();
        let experiment = isvc.status.and_then(|s| s.experiment).unwrap();
        if experiment.variants.iter().map(|v| v.feedback).sum::<u64>() == answers.len() as u64 {
            break experiment;
        }
    };
    for variant in &figures.variants {
        let (count, sum) = sent[&variant.name];
        assert_eq!(variant.feedback, count, "{variant:?}");
        let mean = sum / count as f64;
        assert!(
            (variant.mean_reward.unwrap() - mean).abs() < 1e-3,
            "{variant:?} vs {mean}"
        );
        let explicit = if variant.name == "mlp" { 5 } else { 0 };
        let before = counted_before.get(&variant.name).copied().unwrap_or(0);
        assert_eq!(
            variant.requests - before,
            answered[&variant.name] + explicit,
            "{variant:?}"
        );
        assert_eq!(variant.errors, 0);
    }
    let mlp = figures.variants.iter().find(|v| v.name == "mlp").unwrap();
    let (low, mean, high) = (
        mlp.reward_low.unwrap(),
        mlp.mean_reward.unwrap(),
        mlp.reward_high.unwrap(),
    );
    assert!(
        low < mean && mean < high && high - low < 0.3,
        "a 95 % interval around the mean: {mlp:?}"
    );
    let printed = daemon.ferry(&["experiment", "status", "iris"]);
    let text = stdout(&printed);
    eprintln!("{text}");
    assert!(
        printed.status.success() && text.contains("mlp") && text.contains("control"),
        "{text}"
    );
}
