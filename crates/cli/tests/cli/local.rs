//! Local mode end to end: the real `ferry up`, the real CLI, real replicas (`ferry server`
//! processes), real HTTP traffic through the router, SQLite state across a kill -9.

#[path = "local/harness.rs"]
pub(crate) mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Apply `v1`, then `v2` under continuous load: no failed request, at least 2,000 requests,
/// every request sent after the rollout finished is answered by v2, and exactly the desired
/// number of replica processes remain.
async fn rolling_update_under_load(test: &str, v1: &str, v2: &str) {
    let daemon = Daemon::start(test);
    let applied = daemon.apply(v1, &["--wait"]);
    assert!(
        applied.status.success(),
        "{}{}",
        stdout(&applied),
        stderr(&applied)
    );
    let rev1 = revision_of(&applied);

    let load = Load::start(&daemon.router, "iris", 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let applied = daemon.apply(v2, &["--wait"]);
    assert!(
        applied.status.success(),
        "{}{}\n{}",
        stdout(&applied),
        stderr(&applied),
        daemon.log()
    );
    let rolled_out = Instant::now();
    let rev2 = revision_of(&applied);
    assert_ne!(rev1, rev2);
    // Keep the load on until 2,000 requests in all, and at least 1 s after the rollout.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let enough = load.count() >= 2000 && rolled_out.elapsed() > Duration::from_secs(1);
        if enough || Instant::now() > deadline {
            break;
        }
    }
    let samples = load.finish().await;
    let (failures, by_revision) = summarize(&samples);
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        samples.len() >= 2000,
        "only {} requests across the update",
        samples.len()
    );
    assert!(
        by_revision.contains_key(&rev1) && by_revision.contains_key(&rev2),
        "{by_revision:?}"
    );
    let late: Vec<&Sample> = samples.iter().filter(|s| s.sent > rolled_out).collect();
    assert!(!late.is_empty());
    assert!(
        late.iter().all(|s| s.revision == rev2),
        "a request after the rollout was answered by the old revision"
    );

    // Exactly two replica processes remain, both of v2.
    let pids = replica_pids(&daemon.dir);
    assert_eq!(pids.len(), 2, "replica processes: {pids:?}");
    let replicas = replicas(&daemon, "iris").await;
    assert_eq!(replicas.len(), 2);
    assert!(replicas.iter().all(|r| r["revision"] == rev2.as_str()));
    eprintln!(
        "{test}: {} requests, {by_revision:?}, 0 failed",
        samples.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_has_no_failed_requests() {
    rolling_update_under_load(
        "rolling",
        &manifest("iris", "iris-v1.onnx", 2),
        &manifest("iris", "iris-v2.onnx", 2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_of_a_kserve_manifest_has_no_failed_requests() {
    rolling_update_under_load(
        "kserve",
        &kserve_manifest("iris", "iris-v1.onnx", 2),
        &kserve_manifest("iris", "iris-v2.onnx", 2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_revision_never_takes_traffic_and_describe_says_why() {
    let daemon = Daemon::start("broken");
    let applied = daemon.apply(&manifest("iris", "iris-v1.onnx", 2), &["--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let rev1 = revision_of(&applied);

    let applied = daemon.apply(
        &manifest("iris", "broken.onnx", 2),
        &["--wait", "--timeout", "60"],
    );
    assert!(
        !applied.status.success(),
        "the rollout of a broken model must fail"
    );
    assert!(
        stderr(&applied).contains("ModelNotReady"),
        "{}",
        stderr(&applied)
    );

    let load = Load::start(&daemon.router, "iris", 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.finish().await;
    let (failures, by_revision) = summarize(&samples);
    assert!(failures.is_empty(), "{:?}", failures.first());
    assert_eq!(
        by_revision.keys().collect::<Vec<_>>(),
        vec![&rev1],
        "only v1 serves"
    );

    let describe = daemon.ferry(&["describe", "isvc", "iris"]);
    let text = stdout(&describe);
    assert!(
        text.contains("LatestRevisionReady   False    ModelNotReady"),
        "{text}"
    );
    assert!(
        text.contains("warm-up"),
        "describe names the failure: {text}"
    );
    assert!(text.contains(&format!("serving {rev1} (100%)")), "{text}");

    // Roll back: the broken replica goes away, v1 stays.
    let undo = daemon.ferry(&["rollout", "undo", "iris"]);
    assert!(undo.status.success(), "{}", stderr(&undo));
    assert!(stdout(&undo).contains(&rev1), "{}", stdout(&undo));
    let status = daemon.ferry(&["rollout", "status", "iris", "--timeout", "60"]);
    assert!(
        status.status.success(),
        "{}{}",
        stdout(&status),
        stderr(&status)
    );
    eventually(
        "the broken replica is stopped",
        Duration::from_secs(20),
        || async { replica_pids(&daemon.dir).len() == 2 },
    )
    .await;
    let history = stdout(&daemon.ferry(&["rollout", "history", "iris"]));
    assert_eq!(
        history.lines().count(),
        3,
        "header + two revisions: {history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_costs_no_request_and_is_replaced() {
    let daemon = Daemon::start("kill-replica");
    let applied = daemon.apply(&manifest("iris", "iris-v1.onnx", 2), &["--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let before = replicas(&daemon, "iris").await;
    // The router reaches each replica's REST over its Unix socket.
    for replica in &before {
        for key in ["httpUnix", "grpcUnix"] {
            let socket = replica[key].as_str().expect("a replica socket");
            assert!(Path::new(socket).exists(), "{socket}");
        }
    }
    let victim = before[0]["pid"].as_i64().unwrap() as i32;
    let victim_id = before[0]["id"].as_str().unwrap().to_string();

    let load = Load::start(&daemon.router, "iris", 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let samples = load.finish().await;
    let (failures, _) = summarize(&samples);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        samples.len(),
        failures.first()
    );

    eventually(
        "the killed replica restarts and is ready again",
        Duration::from_secs(30),
        || async {
            let now = replicas(&daemon, "iris").await;
            now.iter().any(|r| {
                // The relaunch replaced the socket file the killed process left.
                r["id"] == victim_id.as_str()
                    && r["restarts"] == 1
                    && r["ready"] == true
                    && r["httpUnix"].as_str().is_some()
                    && r["grpcUnix"].as_str().is_some()
            }) && now.iter().filter(|r| r["ready"] == true).count() == 2
        },
    )
    .await;
    let describe = stdout(&daemon.ferry(&["describe", "isvc", "iris"]));
    assert!(describe.contains("killed by signal SIGKILL"), "{describe}");
    assert_eq!(replica_pids(&daemon.dir).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_killed_mid_rollout_finishes_it_after_restart() {
    let mut daemon = Daemon::start("kill-daemon");
    let applied = daemon.apply(&manifest("iris", "iris-v1.onnx", 3), &["--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let applied = daemon.apply(&manifest("iris", "iris-v2.onnx", 3), &[]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let rev2 = revision_of(&applied);
    // Mid-rollout: a v2 replica exists, v1 replicas are still there.
    eventually(
        "a v2 replica was started",
        Duration::from_secs(20),
        || async {
            replicas(&daemon, "iris")
                .await
                .iter()
                .any(|r| r["revision"] == rev2.as_str())
        },
    )
    .await;
    daemon.kill9();
    let survivors = replica_pids(&daemon.dir);
    assert!(
        survivors.len() >= 3,
        "replicas outlive the daemon: {survivors:?}"
    );

    let dir = daemon.dir.clone();
    let daemon = Daemon::start_in(dir);
    let status = daemon.ferry(&["rollout", "status", "iris", "--timeout", "60"]);
    assert!(
        status.status.success(),
        "{}{}\n{}",
        stdout(&status),
        stderr(&status),
        daemon.log()
    );
    eventually(
        "exactly the 3 v2 replicas run",
        Duration::from_secs(30),
        || async {
            let reps = replicas(&daemon, "iris").await;
            reps.len() == 3
                && reps.iter().all(|r| r["revision"] == rev2.as_str())
                && replica_pids(&daemon.dir).len() == 3
        },
    )
    .await;
    // The survivors that still belong to the spec were adopted, not restarted.
    let pids_now: Vec<i64> = replicas(&daemon, "iris")
        .await
        .iter()
        .filter_map(|r| r["pid"].as_i64())
        .collect();
    assert!(
        daemon.log().contains("adopted a running replica"),
        "nothing was adopted: {}",
        daemon.log()
    );
    let response = reqwest::Client::new()
        .post(format!("http://{}/v2/models/iris/infer", daemon.router))
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["ferry-revision"], rev2.as_str());
    assert_eq!(pids_now.len(), 3);
    // Adopted replicas keep their Unix sockets.
    for replica in replicas(&daemon, "iris").await {
        for key in ["httpUnix", "grpcUnix"] {
            let socket = replica[key].as_str().expect("a replica socket");
            assert!(Path::new(socket).exists(), "{socket}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_refused_with_field_paths_and_change_nothing() {
    let daemon = Daemon::start("invalid");
    let applied = daemon.apply(&manifest("iris", "iris-v1.onnx", 1), &["--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));

    let bad = format!(
        "{}---\n{}",
        manifest("other", "iris-v2.onnx", 1),
        r#"apiVersion: ferry.dev/v1alpha1
kind: InferenceService
metadata:
  name: Bad_Name
  colour: blue
spec:
  predictor:
    model:
      format: tensorflow
      uri: ftp://models/x
    runtime: triton
    minReplicas: 3
    maxReplicas: 1
    startupTimeoutSeconds: 0
    resources:
      requests: {cpu: plenty, nvidia.com/gpu: "0.5", tpu: "1"}
  rollout:
    maxSurge: "150%"
    maxUnavailable: abc
"#
    );
    let refused = daemon.apply(&bad, &[]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("metadata.colour: unknown field"),
        "{message}"
    );
    // Structure fixed: every semantic mistake at once.
    let refused = daemon.apply(&bad.replace("  colour: blue\n", ""), &[]);
    let message = stderr(&refused);
    let expected = [
        "metadata.name",
        "spec.predictor.model.format",
        "spec.predictor.model.uri",
        "spec.predictor.runtime",
        "spec.predictor.maxReplicas",
        "spec.predictor.startupTimeoutSeconds",
        "spec.predictor.resources.requests.cpu",
        "spec.predictor.resources.requests.nvidia.com/gpu",
        "spec.predictor.resources.requests.tpu",
        "spec.rollout.maxSurge",
        "spec.rollout.maxUnavailable",
    ];
    for path in expected {
        assert!(
            message.contains(&format!("{path}: ")),
            "{path} missing from: {message}"
        );
    }
    assert!(
        message.contains("ServingRuntimes run in cluster mode"),
        "{message}"
    );
    assert!(message.contains("nothing was applied"), "{message}");

    // Model name claimed by another service in the namespace: refused too.
    let clash = manifest("iris-two", "iris-v2.onnx", 1).replace(
        "      format: onnx\n",
        "      format: onnx\n      name: iris\n",
    );
    let refused = daemon.apply(&clash, &[]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("spec.predictor.model.name"),
        "{}",
        stderr(&refused)
    );

    // Nothing changed: one service, generation 1, the valid document of the set not applied.
    let list = stdout(&daemon.ferry(&["get", "isvc"]));
    assert_eq!(list.lines().count(), 2, "{list}");
    let object: serde_json::Value =
        serde_json::from_slice(&daemon.ferry(&["get", "isvc", "iris", "-o", "json"]).stdout)
            .unwrap();
    assert_eq!(object["metadata"]["generation"], 1);
    let missing = daemon.ferry(&["get", "isvc", "other"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("not found"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_prints_a_curl_that_works_and_delete_cleans_up() {
    // README's main command: `ferry up -f examples/`.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("local-quickstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let daemon = Daemon::start_with(dir, &["-f", "examples/"]);
    let mut curl = String::new();
    eventually("the quick start prints a curl", Duration::from_secs(60), || {
        let log = daemon.log();
        curl = log.lines().find(|l| l.trim_start().starts_with("curl ")).unwrap_or("").trim().to_string();
        async move { !log.is_empty() && log.lines().any(|l| l.trim_start().starts_with("curl ")) }
    })
    .await;
    let ran = std::process::Command::new("sh")
        .args(["-c", &curl])
        .output()
        .expect("sh runs");
    assert!(ran.status.success(), "{curl}: {}", stderr(&ran));
    let answer: serde_json::Value = serde_json::from_slice(&ran.stdout)
        .unwrap_or_else(|_| panic!("{curl} printed {}", stdout(&ran)));
    assert_eq!(answer["model_name"], "iris", "{answer}");

    let predicted = daemon.ferry(&[
        "predict",
        "iris",
        "--data",
        "[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]",
    ]);
    assert!(predicted.status.success(), "{}", stderr(&predicted));
    // The default is a table: a row per input row, the label column, the revision.
    let table = stdout(&predicted);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ROW") && lines[0].contains("LABEL"),
        "{table}"
    );
    assert!(
        lines[0].ends_with("REVISION") && lines[1].contains("iris-"),
        "{table}"
    );
    let label_column = lines[0].find("LABEL").unwrap();
    let labels: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l[label_column..].split_whitespace().next().unwrap())
        .collect();
    assert_eq!(labels, ["0", "2"], "{table}");
    let predicted = daemon.ferry(&[
        "predict",
        "iris",
        "-o",
        "json",
        "--data",
        "[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]",
    ]);
    assert!(predicted.status.success(), "{}", stderr(&predicted));
    let answer: serde_json::Value = serde_json::from_slice(&predicted.stdout).unwrap();
    let labels = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap();
    assert_eq!(labels["data"], serde_json::json!([0, 2]));

    let table = stdout(&daemon.ferry(&["get", "isvc"]));
    assert!(table.contains("True") && table.contains("2/2"), "{table}");
    let logs = stdout(&daemon.ferry(&["logs", "iris"]));
    assert!(logs.contains("iris-"), "{logs}");

    // OIP gRPC through the router too (to the replicas' gRPC Unix sockets).
    use ferry_server::grpc::GrpcInferenceServiceClient;
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{}", daemon.router))
        .await
        .unwrap();
    let answer = grpc.model_infer(iris_grpc_request()).await.unwrap();
    assert!(answer.metadata().get("ferry-revision").is_some());
    assert_eq!(answer.into_inner().model_name, "iris");

    let deleted = daemon.ferry(&["delete", "isvc", "iris"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    eventually("every replica stopped", Duration::from_secs(20), || async {
        replica_pids(&daemon.dir).is_empty()
    })
    .await;
    let sockets: Vec<_> = std::fs::read_dir(daemon.dir.join("run"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(
        sockets.is_empty(),
        "stopped replicas left sockets: {sockets:?}"
    );
    let response = reqwest::Client::new()
        .post(format!("http://{}/v2/models/iris/infer", daemon.router))
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

/// The reasons a rolling update of two replicas records, in both modes: the plan's decisions
/// (`ferry_core::service` replays the same scenario in its unit tests) and the status
/// transitions. testbed/e2e/tests/operator_spec.rs expects the very same set from the operator.
const ROLLING_UPDATE_REASONS: [&str; 6] = [
    "RevisionCreated",
    "RevisionReady",
    "RevisionRetired",
    "ScaledDown",
    "ScaledUp",
    "Serving",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_records_the_plans_event_reasons() {
    let daemon = Daemon::start("events");
    for model in ["iris-v1.onnx", "iris-v2.onnx"] {
        let applied = daemon.apply(&manifest("iris", model, 2), &["--wait"]);
        assert!(applied.status.success(), "{}", stderr(&applied));
    }
    let client = daemon.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reasons = loop {
        let events = client.events("default", "iris").await.unwrap();
        // `Applied` records the user's apply (the control API's audit, not a decision).
        let reasons: std::collections::BTreeSet<String> = events
            .into_iter()
            .map(|e| e.reason)
            .filter(|r| r != "Applied")
            .collect();
        if reasons.contains("RevisionRetired") || Instant::now() > deadline {
            break reasons;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        reasons.iter().map(String::as_str).collect::<Vec<_>>(),
        ROLLING_UPDATE_REASONS,
        "the same vocabulary as the operator's"
    );
}
