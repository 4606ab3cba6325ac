//! ResourceQuotas in local mode, end to end: `ferry apply` takes the Kubernetes document; an
//! apply over `requests.cpu`, over `count/inferenceservices.ferry.dev` or over `pods` is
//! refused with the quota's name and used / asked / hard, and nothing of it is applied; a
//! rolling update whose surge would exceed `pods` proceeds one replica at a time and says so;
//! `ferry get quota` shows used / hard.

use std::time::{Duration, Instant};

use crate::local::harness::*;

fn service(name: &str, model_file: &str, replicas: u32, cpu: &str, surge: &str) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata:\n  name: {name}\nspec:\n  predictor:\n    model:\n      format: onnx\n      uri: {}\n    minReplicas: {replicas}\n    resources:\n      requests: {{cpu: \"{cpu}\"}}\n  rollout:\n    maxSurge: {surge}\n    maxUnavailable: 0\n",
        model(model_file)
    )
}

const QUOTA: &str = "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: compute\nspec:\n  hard:\n    requests.cpu: \"1\"\n    pods: \"3\"\n    count/inferenceservices.ferry.dev: \"2\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_applies_by_name_and_hold_a_rollouts_surge() {
    let daemon = Daemon::start("quota");
    let applied = daemon.apply(
        &format!(
            "{QUOTA}---\n{}",
            service("iris", "iris-v1.onnx", 1, "500m", "1")
        ),
        &["-n", "q", "--wait", "--timeout", "300"],
    );
    assert!(
        applied.status.success(),
        "{}{}",
        stdout(&applied),
        stderr(&applied)
    );
    assert!(
        stdout(&applied).contains("resourcequota/compute created"),
        "{}",
        stdout(&applied)
    );

    let refused = |manifest: String| {
        let output = daemon.apply(&manifest, &["-n", "q"]);
        assert!(!output.status.success(), "{}", stdout(&output));
        stderr(&output)
    };
    // requests.cpu: 500m used, 600m asked, 1 hard.
    let error = refused(service("other", "iris-v2.onnx", 1, "600m", "1"));
    assert!(
        error.contains("exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=500m, limited: requests.cpu=1"),
        "{error}"
    );
    // count/inferenceservices.ferry.dev: two more in one apply, where one fits; neither applied.
    let error = refused(format!(
        "{}---\n{}",
        service("two", "iris-v2.onnx", 1, "100m", "1"),
        service("three", "iris-v2.onnx", 1, "100m", "1")
    ));
    assert!(
        error.contains("count/inferenceservices.ferry.dev=2"),
        "{error}"
    );
    // pods: 1 used, 3 asked, 3 hard.
    let error = refused(service("wide", "iris-v2.onnx", 3, "100m", "1"));
    assert!(
        error.contains("requested: pods=3, used: pods=1, limited: pods=3"),
        "{error}"
    );
    let names: Vec<String> = daemon
        .client()
        .list(Some("q"))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["iris"], "nothing of a refused apply was applied");

    // used / hard.
    let listed = daemon.ferry(&["get", "quota", "-n", "q"]);
    let text = stdout(&listed);
    assert!(text.starts_with("NAME"), "{text}");
    let row = |resource: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(resource))
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(row("pods").as_deref(), Some("1 3"), "{text}");
    assert_eq!(row("requests.cpu").as_deref(), Some("500m 1"), "{text}");
    assert_eq!(
        row("count/inferenceservices.ferry.dev").as_deref(),
        Some("1 2"),
        "{text}"
    );

    // A rolling update of 2 replicas with maxSurge 2 under pods: 3 goes one at a time.
    let pods_only = "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: pods\nspec:\n  hard:\n    pods: \"3\"\n";
    let applied = daemon.apply(
        &format!(
            "{pods_only}---\n{}",
            service("iris", "iris-v1.onnx", 2, "100m", "2")
        ),
        &["-n", "surge", "--wait", "--timeout", "300"],
    );
    assert!(
        applied.status.success(),
        "{}{}",
        stdout(&applied),
        stderr(&applied)
    );
    let update = daemon.apply(
        &service("iris", "iris-v2.onnx", 2, "100m", "2"),
        &["-n", "surge"],
    );
    assert!(update.status.success(), "{}", stderr(&update));
    let new_revision = revision_of(&update);
    let client = daemon.client();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut most = 0;
    loop {
        let replicas = client.replicas("surge", "iris").await.unwrap();
        most = most.max(replicas.len());
        if replicas.len() == 2
            && replicas
                .iter()
                .all(|r| r.revision == new_revision && r.ready)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the update never finished: {replicas:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = client.events("surge", "iris").await.unwrap();
    assert!(
        most <= 3,
        "{most} replicas at once under pods: 3: {events:#?}"
    );
    let events = client.events("surge", "iris").await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("held by ResourceQuota pods")),
        "{events:?}"
    );
}
