//! Models from where users keep them, in local mode end to end: a real MinIO (S3) and a real
//! docker-registry (OCI, the image pushed by skopeo) on loopback, the real `ferry up` with the
//! store's credentials in its environment, answers through the router. Replicas share the state
//! dir's cache: a second replica and a restarted one download nothing (the servers' own
//! `ferry_server_model_fetches_total` counts it). A store's refusal is named in `describe`.

use std::time::Duration;

use ferry_storage::testing::{Minio, Registry};
use serde_json::{Value, json};

use crate::local::harness::*;

fn remote_manifest(name: &str, uri: &str, replicas: u32) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata:\n  name: {name}\nspec:\n  predictor:\n    model:\n      format: onnx\n      uri: {uri}\n    minReplicas: {replicas}\n  rollout:\n    maxSurge: 1\n    maxUnavailable: 0\n"
    )
}

fn state_dir(test: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("storage-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn infer(router: &str, model: &str, body: &Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("http://{router}/v2/models/{model}/infer"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{model}");
    response.json().await.unwrap()
}

/// (hits, misses) of `model`'s fetches in one replica's own metrics.
async fn fetches(http: &str, model: &str) -> (u64, u64) {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |result: &str| {
        let key =
            format!("ferry_server_model_fetches_total{{model=\"{model}\",result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    (count("hit"), count("miss"))
}

async fn ready_replicas(daemon: &Daemon, name: &str) -> Vec<(String, i32)> {
    replicas(daemon, name)
        .await
        .iter()
        .filter(|r| r["ready"] == true && r["terminating"] == false)
        .map(|r| {
            (
                r["http"].as_str().unwrap().to_string(),
                r["pid"].as_i64().unwrap() as i32,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_in_s3_serve_locally_and_other_replicas_or_a_restart_download_nothing() {
    let Some(minio) = Minio::start() else { return };
    minio.make_bucket("models");
    minio.put(
        "models",
        "iris/iris.onnx",
        std::path::Path::new(&model("iris-v1.onnx")),
    );
    let minilm = repo().join("models/minilm");
    let with_minilm = minilm.join("model.onnx").exists();
    assert!(
        with_minilm || std::env::var_os("FERRY_REQUIRE_MINILM").is_none(),
        "models/minilm is missing: run `make minilm`"
    );
    if with_minilm {
        for file in ["model.onnx", "tokenizer.json"] {
            minio.put("models", &format!("minilm/{file}"), &minilm.join(file));
        }
    }
    let daemon = Daemon::start_env(state_dir("s3"), &[], &minio.env());
    daemon.apply_and_wait(&remote_manifest("iris", "s3://models/iris/iris.onnx", 2));
    let answer = infer(&daemon.router, "iris", &iris_request()).await;
    assert_eq!(answer["outputs"][0]["data"], json!([0]), "{answer}");

    // Two replicas, one download: the other found it in the cache.
    let replicas = ready_replicas(&daemon, "iris").await;
    assert_eq!(replicas.len(), 2);
    let mut total = (0, 0);
    for (http, _) in &replicas {
        let (hits, misses) = fetches(http, "iris").await;
        assert_eq!(hits + misses, 1, "{http}");
        total = (total.0 + hits, total.1 + misses);
    }
    assert_eq!(
        total,
        (1, 1),
        "one replica downloaded, the other hit the cache"
    );

    // kill -9 a replica: its replacement loads from the cache.
    let (_, victim) = replicas[0].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (http, _) = loop {
        let now = ready_replicas(&daemon, "iris").await;
        if let Some(r) = now
            .into_iter()
            .find(|(_, pid)| *pid != victim && *pid != replicas[1].1)
        {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replacement replica in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        fetches(&http, "iris").await,
        (1, 0),
        "the restart downloaded nothing"
    );

    // A directory (model + tokenizer) is a sentence-embedding model.
    if with_minilm {
        let applied = daemon.apply(
            &remote_manifest("minilm", "s3://models/minilm/", 1),
            &["--wait", "--timeout", "300"],
        );
        let shown = stdout(&applied);
        assert!(applied.status.success(), "{shown}{}", stderr(&applied));
        // `apply --wait` shows the download's progress, from the replica's own log.
        assert!(
            shown.contains(": fetching ") && shown.contains(" of 90."),
            "{shown}"
        );
        let request = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["models from where users keep them"]}]});
        let answer = infer(&daemon.router, "minilm", &request).await;
        assert_eq!(answer["outputs"][0]["shape"], json!([1, 384]), "{answer}");
    }
}

/// `describe isvc iris` once it names ModelFetchFailed and `words`.
async fn described(daemon: &Daemon, words: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = stdout(&daemon.ferry(&["describe", "isvc", "iris"]));
        if text.contains("ModelFetchFailed") && text.contains(words) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "describe never named ModelFetchFailed and {words:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stores_refusal_is_named_in_describe_while_the_stable_revision_serves() {
    let Some(minio) = Minio::start() else { return };
    minio.make_bucket("models");
    minio.put(
        "models",
        "iris.onnx",
        std::path::Path::new(&model("iris-v1.onnx")),
    );
    let daemon = Daemon::start_env(state_dir("refusal"), &[], &minio.env());
    let applied = daemon.apply(&manifest("iris", "iris-v1.onnx", 1), &["--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));

    // A key that is not there.
    let missing = daemon.apply(&remote_manifest("iris", "s3://models/nope.onnx", 1), &[]);
    assert!(missing.status.success(), "{}", stderr(&missing));
    described(&daemon, "s3://models/nope.onnx: 404").await;
    let answer = infer(&daemon.router, "iris", &iris_request()).await;
    assert_eq!(
        answer["outputs"][0]["data"],
        json!([0]),
        "the stable revision serves"
    );

    // Credentials the store refuses: a daemon whose environment has the wrong secret.
    let mut wrong = minio.env();
    wrong[1].1 = "not-the-secret".into();
    let denied = Daemon::start_env(state_dir("denied"), &[], &wrong);
    let applied = denied.apply(&remote_manifest("iris", "s3://models/iris.onnx", 1), &[]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let text = described(&denied, "s3://models/iris.onnx: 403").await;
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oci_modelcar_pushed_by_skopeo_serves_locally() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let uri = registry.push_modelcar(
        &repo(),
        std::path::Path::new(&model("iris-v2.onnx")),
        "models/iris",
        "v2",
    );
    let daemon = Daemon::start_env(state_dir("oci"), &[], &[]);
    daemon.apply_and_wait(&remote_manifest("iris", &uri, 1));
    let answer = infer(&daemon.router, "iris", &iris_request()).await;
    assert_eq!(answer["outputs"][0]["data"], json!([0]), "{answer}");
    let (http, _) = ready_replicas(&daemon, "iris").await.remove(0);
    assert_eq!(fetches(&http, "iris").await, (0, 1));
}
