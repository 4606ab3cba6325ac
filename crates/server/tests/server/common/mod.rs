//! Test harness: a real server on loopback ports, real HTTP and gRPC clients.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_server::grpc::GrpcInferenceServiceClient;
use ferry_server::{ModelConfig, RunningServer, ServerConfig};
use tonic::transport::Channel;

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

pub fn model(name: &str, file: &str) -> ModelConfig {
    ModelConfig::new(name, models_dir().join(file))
}

/// The shipped models: iris-v1, iris-v2, digits and broken.
pub fn shipped_models() -> Vec<ModelConfig> {
    vec![
        model("iris-v1", "iris-v1.onnx"),
        model("iris-v2", "iris-v2.onnx"),
        model("digits", "digits.onnx"),
        model("broken", "broken.onnx"),
    ]
}

pub struct TestServer {
    pub server: RunningServer,
    pub http: reqwest::Client,
    pub base: String,
}

impl TestServer {
    pub async fn start(models: Vec<ModelConfig>) -> Self {
        Self::start_with(ServerConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            models,
            ..ServerConfig::default()
        })
        .await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        let expected: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
        let server = ferry_server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.http_addr);
        let this = Self {
            server,
            http: reqwest::Client::new(),
            base,
        };
        // Wait until every model has left LOADING (ready or failed).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let settled = expected.iter().all(|name| {
                this.server
                    .repo
                    .view(name)
                    .is_some_and(|v| v.state.name() != "LOADING")
            });
            if settled {
                break;
            }
            assert!(Instant::now() < deadline, "models did not settle in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        this
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs `body` as JSON to `path` and returns the JSON answer, whatever its status.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let response = self.http.post(self.url(path)).json(body).send().await;
        response
            .expect("request sent")
            .json()
            .await
            .expect("JSON answer")
    }

    /// The server's Prometheus text (`/metrics`).
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await;
        response
            .expect("request sent")
            .text()
            .await
            .expect("a text answer")
    }

    /// GETs `path` and returns the JSON answer, whatever its status.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.http.get(self.url(path)).send().await;
        response
            .expect("request sent")
            .json()
            .await
            .expect("JSON answer")
    }

    pub async fn grpc(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::connect(format!("http://{}", self.server.grpc_addr))
            .await
            .expect("grpc connects")
            .max_decoding_message_size(usize::MAX)
    }
}
