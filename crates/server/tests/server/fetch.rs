//! Models named by http URLs: fetched from a real HTTP server (following a redirect) into the
//! model cache, then served, the fetch counted; a missing one is UNAVAILABLE with the store's
//! answer quoted.

use super::common;

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use common::{TestServer, models_dir};
use ferry_server::ModelConfig;
use serde_json::json;

#[tokio::test]
async fn a_model_url_is_fetched_then_served() {
    let bytes = std::fs::read(models_dir().join("iris-v1.onnx")).unwrap();
    let app = Router::new()
        .route(
            "/models/iris.onnx",
            get(move || async move { bytes.clone() }),
        )
        .route(
            "/latest/iris.onnx",
            get(|| async { Redirect::temporary("/models/iris.onnx") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = TestServer::start(vec![
        ModelConfig::new("iris", format!("{origin}/latest/iris.onnx")),
        ModelConfig::new("gone", format!("{origin}/models/gone.onnx")),
    ])
    .await;
    let ready = server
        .http
        .get(server.url("/v2/models/iris/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let answer = server
        .post_json(
            "/v2/models/iris/infer",
            &json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                "data": [5.1, 3.5, 1.4, 0.2]}]}),
        )
        .await;
    assert!(answer["outputs"].is_array(), "{answer}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("ferry_server_model_fetches_total{model=\"iris\",result=\"miss\"} 1"),
        "{metrics}"
    );

    let gone = server.server.repo.view("gone").unwrap();
    assert_eq!(gone.state.name(), "UNAVAILABLE");
    let reason = gone.state.reason().unwrap_or_default().to_string();
    assert!(
        reason.contains(&format!("ModelFetchFailed: {origin}/models/gone.onnx: 404")),
        "{reason}"
    );
}
