//! Bad input at the edge, each with a clear answer: a slow client's unfinished request head
//! (dropped after the header read timeout), an oversized head (431), an overlong path (414),
//! a request that names no model (404 naming the path), a host that maps to nothing (404
//! naming the namespace and model).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_at_the_edge_get_clear_answers() {
    let (_tx, rx) = watch::channel(table("default", vec![]));
    let running = serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Router::new(
            rx,
            RouterConfig {
                header_read_timeout: Duration::from_millis(500),
                max_header_bytes: 16 << 10,
                ..RouterConfig::default()
            },
        ),
    )
    .unwrap();
    let addr = running.addr;

    // A slow client: half a request head, then nothing. Dropped once the timeout passes.
    let started = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the slow client was never dropped");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // A head larger than the limit: 431.
    let big = format!(
        "GET /v2/health/ready HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(32 << 10)
    );
    let answer = raw(addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");

    // An overlong path: 414, with the limit.
    let long = format!(
        "GET /v2/models/{}/infer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        "m".repeat(9 << 10)
    );
    let answer = raw(addr, long.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer:.200}");
    assert!(answer.contains("longer than 8192 bytes"), "{answer:.400}");

    let client = reqwest::Client::new();
    // No model named: 404 naming the path.
    let response = client
        .post(format!("http://{addr}/v2/models//infer"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("/v2/models//infer"),
        "{body}"
    );
    // A host that maps to no service: 404 naming the namespace it means and the model.
    let response = client
        .post(format!("http://{addr}/v2/models/iris/infer"))
        .header("host", "iris.nowhere.example.com")
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("\"nowhere\""),
        "{body}"
    );
    running.shutdown(Duration::from_secs(1)).await;
}
