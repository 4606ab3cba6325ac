//! Shadow traffic in local mode, end to end: a share of live requests copied to another model,
//! its answers never reaching a client, agreement counted.

use std::time::Duration;

use serde_json::json;

use crate::local::harness::*;

/// Iris rows around the versicolor / virginica boundary, where two models may disagree.
fn inputs() -> Vec<[f32; 4]> {
    let mut rows = Vec::new();
    for i in 0..9 {
        for j in 0..5 {
            rows.push([5.9, 3.0, 4.6 + 0.1 * i as f32, 1.4 + 0.1 * j as f32]);
        }
    }
    rows.truncate(40);
    rows
}

/// (status, revision that answered, label) of `row`, pinned to `revision` when given.
async fn label(
    http: &reqwest::Client,
    router: &str,
    row: [f32; 4],
    revision: Option<&str>,
) -> (u16, String, i64) {
    let mut request = http
        .post(format!("http://{router}/v2/models/iris/infer"))
        .json(&json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row}]}));
    if let Some(revision) = revision {
        request = request.header("ferry-revision", revision);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let answered = response
        .headers()
        .get("ferry-revision")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let label = body["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["name"] == "label"))
        .and_then(|o| o["data"][0].as_i64())
        .unwrap_or(-1);
    (status, answered, label)
}

async fn shadow_status(daemon: &Daemon) -> ferry_api::ShadowStatus {
    daemon
        .client()
        .get("default", "iris")
        .await
        .unwrap()
        .status
        .and_then(|s| s.shadow)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_gets_its_share_of_copies_and_its_agreement_is_counted() {
    let daemon = Daemon::start("shadow");
    let text = format!(
        "{}  shadow: {{percent: 20, model: {{format: onnx, uri: {}}}}}\n",
        manifest("iris", "iris-v1.onnx", 2),
        model("iris-v2.onnx")
    );
    let applied = daemon.apply(&text, &["--wait"]);
    assert!(
        applied.status.success(),
        "{}{}",
        stdout(&applied),
        stderr(&applied)
    );
    let live_revision = revision_of(&applied);
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let shadow = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the shadow never answered\n{}",
            daemon.log()
        );
        let revision = shadow_status(&daemon).await.revision;
        if !revision.is_empty()
            && label(&http, &daemon.router, inputs()[0], Some(&revision))
                .await
                .0
                == 200
        {
            break revision;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // What the test itself computes: per input, do the two models give the same label?
    let mut agree = 0;
    for row in inputs() {
        let live = label(&http, &daemon.router, row, Some(&live_revision)).await;
        let other = label(&http, &daemon.router, row, Some(&shadow)).await;
        assert_eq!(
            (live.0, other.0, other.1.as_str()),
            (200, 200, shadow.as_str())
        );
        agree += usize::from(live.2 == other.2);
    }
    let expected = agree as f64 * 100.0 / inputs().len() as f64;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = shadow_status(&daemon).await;

    // Live traffic: 2,000 requests over the same inputs; every answer is the live revision's.
    let rows = inputs();
    for i in 0..2000 {
        let answer = label(&http, &daemon.router, rows[i % rows.len()], None).await;
        assert_eq!((answer.0, answer.1.as_str()), (200, live_revision.as_str()));
    }
    let mut after = shadow_status(&daemon).await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        after = shadow_status(&daemon).await;
        let judged = after.agreed + after.disagreed + after.failed;
        if after.live - before.live >= 2000 && judged == after.mirrored {
            break;
        }
    }
    let live = after.live - before.live;
    let mirrored = after.mirrored - before.mirrored;
    let (agreed, disagreed) = (
        after.agreed - before.agreed,
        after.disagreed - before.disagreed,
    );
    let share = mirrored as f64 * 100.0 / live as f64;
    let agreement = agreed as f64 * 100.0 / (agreed + disagreed) as f64;
    eprintln!(
        "shadow: {mirrored} of {live} live requests copied ({share:.1}%), agreement {agreement:.1}% \
         (the test computes {expected:.1}% over the same inputs), {} failed, {} dropped",
        after.failed, after.dropped
    );
    assert_eq!(live, 2000);
    assert!((share - 20.0).abs() <= 3.0, "{share:.1}% copied");
    assert_eq!((after.failed, after.dropped), (0, 0));
    assert!((0.0..=100.0).contains(&agreement));
    assert!(
        (agreement - expected).abs() <= 8.0,
        "{agreement:.1}% vs {expected:.1}%"
    );
}
