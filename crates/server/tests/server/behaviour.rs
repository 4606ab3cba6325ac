//! End-to-end behaviour of `ferry server` beyond the conformance cases: answers equal to
//! scikit-learn's, batching equivalence, readiness, the repository API, KServe v1, metrics and
//! graceful shutdown (refusals are in `refusals.rs`). Real sockets, real clients.

use super::common;

use std::time::Duration;

use common::{TestServer, model, shipped_models};
use ferry_server::config::BatchWindow;
use ferry_server::grpc::pb;
use serde_json::{Value, json};

fn expected() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(common::models_dir().join("expected.json")).unwrap(),
    )
    .unwrap()
}

pub(super) fn infer_body(rows: &Value) -> Value {
    let n = rows.as_array().unwrap().len();
    let width = rows[0].as_array().unwrap().len();
    json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [n, width], "data": rows }] })
}

pub(super) async fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let r = server
        .http
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_equal_scikit_learn() {
    let server = TestServer::start(shipped_models()).await;
    let expected = expected();
    for name in ["iris-v1", "iris-v2", "digits"] {
        let e = &expected[name];
        let (status, body) = post(
            &server,
            &format!("/v2/models/{name}/infer"),
            &infer_body(&e["input"]),
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        let outputs = body["outputs"].as_array().unwrap();
        let label = outputs.iter().find(|o| o["name"] == "label").unwrap();
        assert_eq!(label["data"], e["label"], "{name} labels");
        let probabilities = outputs
            .iter()
            .find(|o| o["name"] == "probabilities")
            .unwrap();
        let got: Vec<f64> = serde_json::from_value(probabilities["data"].clone()).unwrap();
        let want: Vec<f64> = e["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-4,
                "{name}: probability {g} vs scikit-learn {w}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_metadata_and_failed_model_reason() {
    let server = TestServer::start(shipped_models()).await;
    let get = |path: &str| {
        let url = server.url(path);
        let http = server.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(get("/v2/health/live").await.0, 200);
    // One model failed its warm-up, so the server as a whole is not ready...
    assert_eq!(get("/v2/health/ready").await.0, 503);
    // ...but the others are, and serve.
    let (status, body) = get("/v2/models/iris-v1/ready").await;
    assert_eq!((status, body["ready"].clone()), (200, json!(true)));
    let (status, body) = get("/v2/models/broken/ready").await;
    assert_eq!(status, 503);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("warm-up inference failed"),
        "{body}"
    );
    let (status, body) = get("/v2/models/broken").await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "UNAVAILABLE");
    let (status, body) = get("/v2/models/iris-v1").await;
    assert_eq!(status, 200);
    assert_eq!(body["platform"], "onnx");
    assert_eq!(
        body["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 4]})
    );
    assert_eq!(body["outputs"].as_array().unwrap().len(), 2);
    assert_eq!(get("/v2/models/iris-v1/versions/1").await.0, 200);
    assert_eq!(get("/v2/models/iris-v1/versions/2").await.0, 404);
    assert_eq!(get("/v2/models/nope").await.0, 404);
    assert_eq!(get("/v2/no/such/route").await.0, 404);
    let (status, body) = get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "ferry");

    // gRPC sees the same.
    let mut grpc = server.grpc().await;
    assert!(
        grpc.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        !grpc
            .server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: String::new(),
    };
    assert!(
        grpc.model_ready(ready("iris-v1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !grpc
            .model_ready(ready("broken"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert_eq!(
        grpc.model_ready(ready("nope")).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let meta = grpc
        .model_metadata(pb::ModelMetadataRequest {
            name: "digits".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs[0].shape, vec![-1, 64]);
    let err = grpc
        .model_metadata(pb::ModelMetadataRequest {
            name: "broken".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("warm-up"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_results_equal_unbatched_ones() {
    let mut batched = model("batched", "iris-v2.onnx");
    batched.max_batch_size = 32;
    batched.max_queue_delay = Duration::from_millis(50);
    // A fixed window, so that batches surely form; the adaptive window is exercised by the
    // MiniLM test (text.rs), whose answers must not depend on how batches formed.
    batched.batch_window = BatchWindow::Fixed;
    let plain = model("plain", "iris-v2.onnx");
    let server = TestServer::start(vec![batched, plain]).await;
    // 24 distinct single-row requests at once (plus one of 3 rows), against both models.
    let mut rows: Vec<Value> = (0..24)
        .map(|i| {
            let f = i as f64;
            json!([[
                4.3 + f * 0.15,
                2.0 + (f * 0.37) % 2.4,
                1.0 + f * 0.24,
                0.1 + f * 0.1
            ]])
        })
        .collect();
    rows.push(json!([
        [5.0, 3.4, 1.5, 0.2],
        [6.1, 2.8, 4.7, 1.2],
        [7.7, 3.0, 6.1, 2.3]
    ]));
    let run = |name: &'static str| {
        let rows = rows.clone();
        let http = server.http.clone();
        let url = server.url(&format!("/v2/models/{name}/infer"));
        async move {
            let tasks: Vec<_> = rows
                .into_iter()
                .map(|r| {
                    let http = http.clone();
                    let url = url.clone();
                    tokio::spawn(async move {
                        let v: Value = http
                            .post(url)
                            .json(&infer_body(&r))
                            .send()
                            .await
                            .unwrap()
                            .json()
                            .await
                            .unwrap();
                        v["outputs"].clone()
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    let batched_answers = run("batched").await;
    let plain_answers = run("plain").await;
    assert_eq!(batched_answers.len(), 25);
    for (b, p) in batched_answers.iter().zip(&plain_answers) {
        assert_eq!(b[0]["data"], p[0]["data"], "labels");
        assert_eq!(b[0]["shape"], p[0]["shape"]);
        let bp: Vec<f64> = serde_json::from_value(b[1]["data"].clone()).unwrap();
        let pp: Vec<f64> = serde_json::from_value(p[1]["data"].clone()).unwrap();
        for (x, y) in bp.iter().zip(&pp) {
            assert!((x - y).abs() <= 1e-6, "batched {x} vs unbatched {y}");
        }
    }
    // And batching really happened: some executed batch held more than one request.
    let metrics = server.metrics().await;
    let count_line = metrics
        .lines()
        .find(|l| l.starts_with("ferry_server_batch_size_count{model=\"batched\""))
        .unwrap();
    let batches: f64 = count_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        batches < 25.0,
        "25 requests ran as {batches} batches: nothing was batched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_load_unload_and_index() {
    let server = TestServer::start(vec![model("iris-v1", "iris-v1.onnx")]).await;
    let (status, index) = post(&server, "/v2/repository/index", &json!({})).await;
    assert_eq!(status, 200);
    let entry = &index[0];
    assert_eq!(index.as_array().unwrap().len(), 1, "{index}");
    assert_eq!(
        (&entry["name"], &entry["version"], &entry["state"]),
        (&json!("iris-v1"), &json!("1"), &json!("READY")),
        "{index}"
    );
    // Ferry's extension: the memory it measured at load (a tiny model: a number, no more).
    assert!(entry["memoryBytes"].is_u64(), "{index}");
    assert!(entry["peakMemoryBytes"].is_u64(), "{index}");
    // Unload: 503 on infer, listed as UNLOADED.
    let (status, _) = post(&server, "/v2/repository/models/iris-v1/unload", &json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = post(
        &server,
        "/v2/models/iris-v1/infer",
        &infer_body(&json!([[1, 2, 3, 4]])),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let (_, index) = post(&server, "/v2/repository/index", &json!({"ready": true})).await;
    assert_eq!(index, json!([]));
    // Load again; and load a new model from a path.
    let (status, _) = post(&server, "/v2/repository/models/iris-v1/load", &json!({})).await;
    assert_eq!(status, 200);
    let path = common::models_dir().join("digits.onnx");
    let (status, body) = post(
        &server,
        "/v2/repository/models/digits/load",
        &json!({"parameters": {"path": path.to_str().unwrap()}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(
        &server,
        "/v2/models/digits/infer",
        &infer_body(&json!([vec![0; 64]])),
    )
    .await;
    assert_eq!(status, 200);
    // A path that is not a model: the load fails with the reason, the others keep serving.
    let (status, body) = post(
        &server,
        "/v2/repository/models/junk/load",
        &json!({"parameters": {"path": "/nonexistent/model.onnx"}}),
    )
    .await;
    assert_eq!(status, 500);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot read ONNX file"),
        "{body}"
    );
    assert_eq!(
        post(&server, "/v2/repository/models/nope/load", &json!({}))
            .await
            .0,
        404
    );
    let (status, _) = post(
        &server,
        "/v2/models/iris-v1/infer",
        &infer_body(&json!([[1, 2, 3, 4]])),
    )
    .await;
    assert_eq!(status, 200);
    // gRPC index agrees.
    let mut grpc = server.grpc().await;
    let index = grpc
        .repository_index(pb::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    let states: Vec<(String, String)> = index
        .models
        .iter()
        .map(|m| (m.name.clone(), m.state.clone()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("digits".into(), "READY".into()),
            ("iris-v1".into(), "READY".into()),
            ("junk".into(), "UNAVAILABLE".into())
        ]
    );
    grpc.repository_model_unload(pb::RepositoryModelUnloadRequest {
        model_name: "digits".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        post(
            &server,
            "/v2/models/digits/infer",
            &infer_body(&json!([vec![0; 64]]))
        )
        .await
        .0,
        503
    );
    // gRPC load takes the same options as REST (and `--model`), and rejects unknown ones by name.
    let param = |v: &str| pb::ModelRepositoryParameter {
        parameter_choice: Some(
            pb::model_repository_parameter::ParameterChoice::StringParam(v.into()),
        ),
    };
    let path = common::models_dir().join("iris-v2.onnx");
    let load = |extra: Option<(&str, &str)>| {
        let mut parameters = std::collections::HashMap::new();
        parameters.insert("path".to_string(), param(path.to_str().unwrap()));
        if let Some((k, v)) = extra {
            parameters.insert(k.to_string(), param(v));
        }
        pb::RepositoryModelLoadRequest {
            model_name: "mlp".into(),
            parameters,
            ..Default::default()
        }
    };
    let err = grpc
        .repository_model_load(load(Some(("colour", "red"))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("colour=red"), "{err}");
    grpc.repository_model_load(load(Some(("version", "7"))))
        .await
        .unwrap();
    let meta: Value = server.get_json("/v2/models/mlp/versions/7").await;
    assert_eq!(meta["state"], "READY", "{meta}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_v1_predict() {
    let server = TestServer::start(vec![model("iris-v1", "iris-v1.onnx")]).await;
    let (status, body) = post(
        &server,
        "/v1/models/iris-v1:predict",
        &json!({"instances": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"predictions": [0, 2]}));
    let (status, body) = post(
        &server,
        "/v1/models/iris-v1:predict",
        &json!({"instances": [[1, 2, 3]]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        post(
            &server,
            "/v1/models/nope:predict",
            &json!({"instances": [[1, 2, 3, 4]]})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        post(
            &server,
            "/v1/models/iris-v1:explain",
            &json!({"instances": []})
        )
        .await
        .0,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_latency_and_load_time() {
    let server = TestServer::start(vec![model("iris-v1", "iris-v1.onnx")]).await;
    for _ in 0..3 {
        post(
            &server,
            "/v2/models/iris-v1/infer",
            &infer_body(&json!([[1, 2, 3, 4]])),
        )
        .await;
    }
    post(&server, "/v2/models/iris-v1/infer", &json!({"inputs": []})).await;
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"ferry_server_requests_total{model="iris-v1",version="1",protocol="rest",status="200"} 3"#,
        r#"ferry_server_requests_total{model="iris-v1",version="1",protocol="rest",status="400"} 1"#,
        r#"ferry_server_request_duration_seconds_count{model="iris-v1",version="1",protocol="rest"} 4"#,
        r#"ferry_server_queue_depth{model="iris-v1",version="1"} 0"#,
        r#"ferry_server_model_ready{model="iris-v1",version="1"} 1"#,
        "ferry_server_model_load_seconds{model=\"iris-v1\"",
        "ferry_server_batch_size",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_requests_in_flight() {
    let mut slow = model("iris-v1", "iris-v1.onnx");
    slow.max_batch_size = 8;
    slow.max_queue_delay = Duration::from_millis(700);
    slow.batch_window = BatchWindow::Fixed;
    let server = TestServer::start(vec![slow]).await;
    let url = server.url("/v2/models/iris-v1/infer");
    let http = server.http.clone();
    let in_flight = tokio::spawn(async move {
        let r = http
            .post(url)
            .json(&infer_body(&json!([[5.1, 3.5, 1.4, 0.2]])))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.server.shutdown();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([0]));
    let addr = server.server.http_addr;
    tokio::time::timeout(Duration::from_secs(10), server.server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}
