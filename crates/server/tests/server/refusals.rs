//! What `ferry server` refuses, and how: malformed bodies get 400 with the reason (a 60 MiB one
//! too, without a crash), oversized ones 413 before they are read, a full queue 429 /
//! RESOURCE_EXHAUSTED at once. Real sockets, real clients.

use std::time::Duration;

use super::behaviour::{infer_body, post};
use super::common::{TestServer, model};
use ferry_server::ServerConfig;
use ferry_server::config::BatchWindow;
use ferry_server::grpc::pb;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_400_with_the_reason() {
    let server = TestServer::start(vec![model("iris-v1", "iris-v1.onnx")]).await;
    let url = server.url("/v2/models/iris-v1/infer");
    let deep = format!(
        "{{\"inputs\":[{{\"name\":\"input\",\"datatype\":\"FP32\",\"shape\":[1,4],\"data\":{}1{}}}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "invalid inference request JSON"),
        (b"".to_vec(), "invalid inference request JSON"),
        (br#"{"inputs": 3}"#.to_vec(), "invalid inference request JSON"),
        (br#"{"inputs":[{"name":"input","datatype":"FP99","shape":[1,4],"data":[1,2,3,4]}]}"#.to_vec(), "unknown datatype 'FP99'"),
        (br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,-4],"data":[1,2,3,4]}]}"#.to_vec(), "negative dimension"),
        (br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":[1,"a",3,4]}]}"#.to_vec(), "input 'input': data"),
        (br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4]}]}"#.to_vec(), "neither 'data' nor"),
        (br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[4294967296,4294967296,4294967296],"data":[1]}]}"#.to_vec(), "too large"),
        (deep.into_bytes(), "input 'input': data"),
        (vec![0xff, 0xfe, 0x00, 0x01], "invalid inference request JSON"),
    ];
    for (body, needle) in cases {
        let r = server
            .http
            .post(&url)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            400,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        let v: Value = r.json().await.unwrap();
        let message = v["error"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{message:?} should contain {needle:?}"
        );
    }
    // A bad Inference-Header-Content-Length is 400 too.
    let r = server
        .http
        .post(&url)
        .header("Inference-Header-Content-Length", "999")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // The server is still fine afterwards.
    let (status, _) = post(
        &server,
        "/v2/models/iris-v1/infer",
        &infer_body(&json!([[1, 2, 3, 4]])),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_mib_malformed_body_is_a_400_not_a_crash() {
    // The kind of input that crashes Triton 2.51 (SIGSEGV on a 64 MiB malformed JSON body).
    let server = TestServer::start(vec![model("iris-v1", "iris-v1.onnx")]).await;
    let url = server.url("/v2/models/iris-v1/infer");
    let mut body =
        br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":["#.to_vec();
    while body.len() < 60 << 20 {
        body.extend_from_slice(b"1.5e999999,[[-],");
    }
    let r = server.http.post(&url).body(body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let error = r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("invalid inference request JSON"), "{error}");
    let (status, _) = post(
        &server,
        "/v2/models/iris-v1/infer",
        &infer_body(&json!([[1, 2, 3, 4]])),
    )
    .await;
    assert_eq!(status, 200, "the server still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_before_being_read() {
    let server = TestServer::start_with(ServerConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        models: vec![model("iris-v1", "iris-v1.onnx")],
        max_body_bytes: 64 * 1024,
        ..ServerConfig::default()
    })
    .await;
    let url = server.url("/v2/models/iris-v1/infer");
    // Declared length over the limit.
    let r = server
        .http
        .post(&url)
        .body(vec![b' '; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("65536 bytes")
    );
    // Chunked body without a length: cut off at the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..100).map(|_| Ok(vec![b' '; 4096])).collect();
    let r = server
        .http
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures_stream(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // gRPC: tonic refuses a message over the limit while decoding it, with OUT_OF_RANGE.
    let mut grpc = server.grpc().await;
    let err = grpc
        .model_infer(pb::ModelInferRequest {
            model_name: "iris-v1".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![20_000, 4],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0u8; 320_000].into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(err.message().contains("65536"), "{err}");
}

/// What urllib, requests and tritonclient do: write the whole request, body included, and only
/// then read the answer. A body over the limit (8 MiB here, more than the socket buffers hold)
/// still gets its 413, not a reset connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_its_whole_oversized_body_first_still_gets_the_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(ServerConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        models: vec![model("iris-v1", "iris-v1.onnx")],
        max_body_bytes: 64 * 1024,
        ..ServerConfig::default()
    })
    .await;
    let addr = server
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    for chunked in [false, true] {
        let body = vec![b' '; 8 << 20];
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = if chunked {
            "POST /v2/models/iris-v1/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
        } else {
            format!(
                "POST /v2/models/iris-v1/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
        };
        stream.write_all(head.as_bytes()).await.unwrap();
        if chunked {
            for piece in body.chunks(64 * 1024) {
                stream
                    .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await
                    .unwrap();
                stream.write_all(piece).await.unwrap();
                stream.write_all(b"\r\n").await.unwrap();
            }
            stream.write_all(b"0\r\n\r\n").await.unwrap();
        } else {
            stream.write_all(&body).await.unwrap();
        }
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "chunked={chunked}: {text}"
        );
        assert!(text.contains("65536 bytes"), "{text}");
    }
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    tokio_stream::iter(chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_and_resource_exhausted_at_once() {
    // A batching window of 1.5 s holds admitted requests; the queue admits 2.
    let mut slow = model("iris-v1", "iris-v1.onnx");
    slow.max_batch_size = 64;
    slow.max_queue_delay = Duration::from_millis(1500);
    slow.batch_window = BatchWindow::Fixed;
    slow.max_queue = 2;
    let server = TestServer::start(vec![slow]).await;
    let body = infer_body(&json!([[5.1, 3.5, 1.4, 0.2]]));
    let held: Vec<_> = (0..2)
        .map(|_| {
            let http = server.http.clone();
            let url = server.url("/v2/models/iris-v1/infer");
            let body = body.clone();
            tokio::spawn(async move {
                http.post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let (status, reply) = post(&server, "/v2/models/iris-v1/infer", &body).await;
    assert_eq!(status, 429, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("at capacity"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "429 must not wait for the queue"
    );
    let mut grpc = server.grpc().await;
    let mut raw = Vec::new();
    for v in [5.1f32, 3.5, 1.4, 0.2] {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    let err = grpc
        .model_infer(pb::ModelInferRequest {
            model_name: "iris-v1".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, 4],
                ..Default::default()
            }],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    for h in held {
        assert_eq!(h.await.unwrap(), 200, "admitted requests are answered");
    }
    let metrics = server.metrics().await;
    assert!(metrics.contains(r#"ferry_server_requests_total{model="iris-v1",version="1",protocol="rest",status="429"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"protocol="grpc",status="ResourceExhausted"} 1"#),
        "{metrics}"
    );
}
