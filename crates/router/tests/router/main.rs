//! The router end to end in one process: real model servers, the real router on a loopback
//! port, real HTTP and gRPC clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::routes::{Addresses, Endpoint, RouteTable, ServiceEndpoints, build};
use ferry_core::{ReplicaHealth, ReplicaView};
use ferry_router::{Router, RouterConfig, serve};
use ferry_server::grpc::GrpcInferenceServiceClient;
use ferry_server::grpc::pb::{ModelInferRequest, model_infer_request::InferInputTensor};
use ferry_server::{ModelConfig, RunningServer, ServerConfig};
use serde_json::{Value, json};
use tokio::sync::watch;

mod canary;
mod coldstart;
mod edge;
mod tenancy;

fn model_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(file)
}

async fn replica(file: &str) -> RunningServer {
    replica_with_sockets(file, None, None).await
}

/// A replica serving `file`, ready; REST and gRPC also on the Unix sockets given.
async fn replica_with_sockets(
    file: &str,
    http_unix: Option<PathBuf>,
    grpc_unix: Option<PathBuf>,
) -> RunningServer {
    let server = ferry_server::start(ServerConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_unix,
        grpc_unix,
        models: vec![ModelConfig::new("iris", model_path(file))],
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("http://{}/v2/models/iris/ready", server.http_addr);
    while client
        .get(&url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "replica never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

fn endpoint(id: &str, revision: &str, http: SocketAddr, grpc: SocketAddr) -> Endpoint {
    Endpoint {
        replica: ReplicaView {
            id: id.into(),
            revision: revision.into(),
            health: ReplicaHealth::Ready,
            terminating: false,
        },
        addrs: Addresses::tcp(http, grpc),
    }
}

/// The iris row as an OIP gRPC request (raw contents, as tritonclient sends).
fn iris_grpc_request() -> ModelInferRequest {
    let values = [5.1f32, 3.5, 1.4, 0.2];
    ModelInferRequest {
        model_name: "iris".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ],
        ..Default::default()
    }
}

fn table(namespace: &str, endpoints: Vec<Endpoint>) -> Arc<RouteTable> {
    let replicas: Vec<_> = endpoints.iter().map(|e| e.replica.clone()).collect();
    Arc::new(build(&[ServiceEndpoints {
        namespace: namespace.into(),
        service: "iris".into(),
        model: "iris".into(),
        endpoints,
        hosts: vec!["iris.example.com".into()],
        weights: ferry_core::service::ready_weights(&replicas, &[]),
        fallback: None,
        variants: BTreeMap::new(),
        sticky: None,
        shadow: None,
        cold_start: None,
        rate_limit: None,
    }]))
}

fn iris_request() -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]})
}

/// The router on a loopback port over the table `endpoints` make; keep the sender alive.
fn router_over(
    endpoints: Vec<Endpoint>,
) -> (watch::Sender<Arc<RouteTable>>, ferry_router::RunningRouter) {
    let (tx, rx) = watch::channel(table("default", endpoints));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let running = serve(
        tokio::net::TcpListener::from_std(listener).unwrap(),
        Router::new(rx, RouterConfig::default()),
    )
    .unwrap();
    (tx, running)
}

/// POST the iris request to `/v2/models/iris/infer` at `addr`.
async fn infer(client: &reqwest::Client, addr: SocketAddr) -> reqwest::Response {
    client
        .post(format!("http://{addr}/v2/models/iris/infer"))
        .json(&iris_request())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_refused_even_by_thread_per_core_serving() {
    let (_tx, rx) = watch::channel(table("default", vec![]));
    let router = Router::new(
        rx,
        RouterConfig {
            worker_threads: 2,
            ..RouterConfig::default()
        },
    );
    let first =
        ferry_router::serve_threads("127.0.0.1:0".parse().unwrap(), router.clone()).unwrap();
    // Its SO_REUSEPORT sockets must not let a second router share the port.
    let second = ferry_router::serve_threads(first.addr, router.clone());
    assert_eq!(
        second.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::AddrInUse)
    );
    // Nor may anything else listening there.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = other.local_addr().unwrap();
    assert!(ferry_router::serve_threads(taken, router).is_err());
    first.shutdown(Duration::from_secs(1)).await;
}

/// A loopback port with nothing listening (bound, then released).
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_model_and_namespace_and_names_the_revision() {
    let v1 = replica("iris-v1.onnx").await;
    let v2 = replica("iris-v2.onnx").await;
    let (tx, rx) = watch::channel(table(
        "default",
        vec![
            endpoint("v1-a", "iris-aaaaaa", v1.http_addr, v1.grpc_addr),
            endpoint("v2-a", "iris-bbbbbb", v2.http_addr, v2.grpc_addr),
        ],
    ));
    let router = Router::new(
        rx,
        RouterConfig {
            max_body_bytes: 4096,
            ..RouterConfig::default()
        },
    );
    let running = serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        router.clone(),
    )
    .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();

    let mut seen = BTreeMap::new();
    for _ in 0..200 {
        let response = client
            .post(format!("{base}/v2/models/iris/infer"))
            .json(&iris_request())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let revision = response.headers()["ferry-revision"]
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model_name"], "iris");
        *seen.entry(revision).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both revisions take traffic: {seen:?}");
    assert!(seen.values().all(|n| *n > 40), "weights 1:1: {seen:?}");

    // v1 protocol through the router too.
    let response = client
        .post(format!("{base}/v1/models/iris:predict"))
        .json(&json!({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Unknown model, other namespace (header and host): 404 naming both.
    let response = client
        .post(format!("{base}/v2/models/nope/infer"))
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("\"nope\""),
        "{error}"
    );
    let response = client
        .post(format!("{base}/v2/models/iris/infer"))
        .header("ferry-namespace", "team-a")
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = client
        .post(format!("{base}/v2/models/iris/infer"))
        .header("host", "iris.team-a.example.com")
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // The service's external host (what an Ingress or HTTPRoute passes on) names its namespace,
    // though its labels name another ("example").
    let response = client
        .post(format!("{base}/v2/models/iris/infer"))
        .header("host", "iris.example.com")
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Too large: 413 before the replica sees it.
    let response = client
        .post(format!("{base}/v2/models/iris/infer"))
        .body(vec![b' '; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // And delivered to a client that writes its whole body (8 MiB: more than the socket
    // buffers hold) before it reads, as urllib and tritonclient do: not a reset connection.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        let body = vec![b' '; 8 << 20];
        let head = format!(
            "POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    }

    // The table moves: team-a now serves iris, default has it with no ready replica → 503.
    let mut unready = endpoint("v2-a", "iris-bbbbbb", v2.http_addr, v2.grpc_addr);
    unready.replica.health = ReplicaHealth::Starting { for_seconds: 1 };
    let mut both = (*table(
        "team-a",
        vec![endpoint("v2-a", "iris-bbbbbb", v2.http_addr, v2.grpc_addr)],
    ))
    .clone();
    both.namespaces
        .extend(table("default", vec![unready]).namespaces.clone());
    tx.send(Arc::new(both)).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let response = client
        .post(format!("{base}/v2/models/iris/infer"))
        .header("host", "iris.team-a.example.com:8080")
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["ferry-revision"], "iris-bbbbbb");
    let response = client
        .post(format!("{base}/v2/models/iris/infer"))
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);

    // Metrics per revision.
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"ferry_router_requests_ok_total{namespace="default",service="iris",revision="iris-aaaaaa"}"#), "{metrics}");
    assert!(
        metrics.contains(r#"reason="no_ready_replica""#),
        "{metrics}"
    );
    assert_eq!(router.in_flight().outstanding("v1-a"), 0);
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_go_over_the_replica_unix_sockets_when_it_has_them() {
    let dir = std::env::temp_dir().join(format!("ferry-router-uds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("replica.http.sock");
    let grpc_socket = dir.join("replica.grpc.sock");
    // A stale file where the socket goes (a crashed run) is replaced.
    std::fs::write(&socket, b"stale").unwrap();
    let server = replica_with_sockets(
        "iris-v1.onnx",
        Some(socket.clone()),
        Some(grpc_socket.clone()),
    )
    .await;
    // The TCP addresses given to the router are dead: only the sockets can answer.
    let mut only_unix = endpoint("uds", "iris-aaaaaa", dead_addr(), dead_addr());
    only_unix.addrs.http_unix = Some(socket.clone());
    only_unix.addrs.grpc_unix = Some(grpc_socket.clone());
    let (_tx, running) = router_over(vec![only_unix]);
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let response = infer(&client, running.addr).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model_name"], "iris");
    }
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    for _ in 0..5 {
        let answer = grpc.model_infer(iris_grpc_request()).await.unwrap();
        assert_eq!(answer.into_inner().model_name, "iris");
    }
    // A socket file that is gone: the replica's TCP address answers instead, no error.
    let mut gone = endpoint("gone", "iris-aaaaaa", server.http_addr, server.grpc_addr);
    gone.addrs.http_unix = Some(dir.join("gone.sock"));
    let (_tx2, fallback) = router_over(vec![gone]);
    for _ in 0..5 {
        assert_eq!(infer(&client, fallback.addr).await.status(), 200);
    }
    server.shutdown();
    server.wait().await.unwrap();
    assert!(!socket.exists(), "the socket file is removed on shutdown");
    assert!(
        !grpc_socket.exists(),
        "the gRPC socket file is removed on shutdown"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_retried_on_another() {
    let live = replica("iris-v1.onnx").await;
    let dead = dead_addr();
    let (_tx, running) = router_over(vec![
        endpoint("dead", "iris-aaaaaa", dead, dead),
        endpoint("live", "iris-aaaaaa", live.http_addr, live.grpc_addr),
    ]);
    let client = reqwest::Client::new();
    for _ in 0..50 {
        assert_eq!(infer(&client, running.addr).await.status(), 200);
    }
    let metrics = client
        .get(format!("http://{}/metrics", running.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retries: f64 = metrics
        .lines()
        .find(|l| l.starts_with("ferry_router_retries_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        retries >= 5.0,
        "the dead replica was picked and retried: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_the_model_is_retried_on_another() {
    // A server that restarted empty (a pool server before its copy is registered again)
    // answers 404 for the model the route table has it serve.
    let empty = ferry_server::start(ServerConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let live = replica("iris-v1.onnx").await;
    let client = reqwest::Client::new();
    let direct = client
        .post(format!("http://{}/v2/models/iris/infer", empty.http_addr))
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 404);
    let (_tx, running) = router_over(vec![
        endpoint("empty", "iris-aaaaaa", empty.http_addr, empty.grpc_addr),
        endpoint("live", "iris-aaaaaa", live.http_addr, live.grpc_addr),
    ]);
    for _ in 0..50 {
        assert_eq!(infer(&client, running.addr).await.status(), 200);
    }
    // With no other replica, the 404 is the answer.
    let (_tx, alone) = router_over(vec![endpoint(
        "empty",
        "iris-aaaaaa",
        empty.http_addr,
        empty.grpc_addr,
    )]);
    assert_eq!(infer(&client, alone.addr).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_goes_through_the_router() {
    let v1 = replica("iris-v1.onnx").await;
    let (_tx, running) = router_over(vec![endpoint(
        "v1-a",
        "iris-aaaaaa",
        v1.http_addr,
        v1.grpc_addr,
    )]);
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    let request = iris_grpc_request();
    let response = client.model_infer(request.clone()).await.unwrap();
    assert_eq!(
        response.metadata().get("ferry-revision").unwrap(),
        "iris-aaaaaa"
    );
    let answer = response.into_inner();
    assert_eq!(answer.model_name, "iris");
    assert!(!answer.outputs.is_empty());

    let live = client
        .server_live(ferry_server::grpc::pb::ServerLiveRequest {})
        .await
        .unwrap();
    assert!(live.into_inner().live);
    let status = client
        .model_infer(ModelInferRequest {
            model_name: "nope".into(),
            ..request
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

/// A table to publish, and where.
type Publish = (watch::Sender<Arc<RouteTable>>, Arc<RouteTable>);

/// Hooks that hold a request without replica until they publish one, and see every answer.
struct Holding {
    table: std::sync::Mutex<Option<Publish>>,
    outcomes: std::sync::Mutex<Vec<(String, Option<u16>, u32)>>,
}

impl ferry_router::Hooks for Holding {
    fn on_no_backend<'a>(
        &'a self,
        request: ferry_router::RequestInfo<'a>,
        error: ferry_router::RouterError,
    ) -> ferry_router::HookFuture<'a, ferry_router::NoBackend> {
        assert_eq!(
            (request.namespace, request.model),
            ("default", Some("iris"))
        );
        let publish = self.table.lock().unwrap().take();
        Box::pin(async move {
            let Some((tx, next)) = publish else {
                return ferry_router::NoBackend::Fail(error);
            };
            tx.send(next).unwrap();
            // The router compiles a new table in its own task.
            tokio::time::sleep(Duration::from_millis(100)).await;
            ferry_router::NoBackend::Retry
        })
    }

    fn on_response(&self, outcome: &ferry_router::Outcome<'_>) {
        self.outcomes.lock().unwrap().push((
            outcome.revision.to_string(),
            outcome.status.map(|s| s.as_u16()),
            outcome.attempt,
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_hold_a_request_until_a_replica_appears_and_see_every_answer() {
    let server = replica("iris-v1.onnx").await;
    let empty = Arc::new(build(&[ServiceEndpoints {
        namespace: "default".into(),
        service: "iris".into(),
        model: "iris".into(),
        endpoints: vec![],
        hosts: vec![],
        weights: BTreeMap::new(),
        fallback: None,
        variants: BTreeMap::new(),
        sticky: None,
        shadow: None,
        cold_start: None,
        rate_limit: None,
    }]));
    let (tx, rx) = watch::channel(empty);
    // The plan's weights decide, not the replica counts: two ready replicas of iris-1 weigh
    // nothing, one of iris-2 takes everything; a dead one of iris-2 is retried.
    let serving = Arc::new(build(&[ServiceEndpoints {
        namespace: "default".into(),
        service: "iris".into(),
        model: "iris".into(),
        endpoints: vec![
            endpoint("a", "iris-1", server.http_addr, server.grpc_addr),
            endpoint("b", "iris-1", server.http_addr, server.grpc_addr),
            endpoint("c", "iris-2", server.http_addr, server.grpc_addr),
            endpoint("d", "iris-2", dead_addr(), dead_addr()),
        ],
        hosts: vec![],
        weights: [("iris-1".to_string(), 0), ("iris-2".to_string(), 1)].into(),
        fallback: None,
        variants: BTreeMap::new(),
        sticky: None,
        shadow: None,
        cold_start: None,
        rate_limit: None,
    }]));
    let hooks = Arc::new(Holding {
        table: std::sync::Mutex::new(Some((tx.clone(), serving))),
        outcomes: std::sync::Mutex::new(Vec::new()),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let running = serve(
        tokio::net::TcpListener::from_std(listener).unwrap(),
        Router::with_hooks(rx, RouterConfig::default(), hooks.clone()),
    )
    .unwrap();
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let response = infer(&client, running.addr).await;
        assert_eq!(response.status(), 200, "held, then served");
        assert_eq!(response.headers()["ferry-revision"], "iris-2");
    }
    let outcomes = hooks.outcomes.lock().unwrap().clone();
    assert!(outcomes.iter().all(|(revision, _, _)| revision == "iris-2"));
    let answered = outcomes.iter().filter(|(_, s, _)| *s == Some(200)).count();
    assert_eq!(answered, 20, "one answer per request: {outcomes:?}");
    // Every failure of the dead replica was a first attempt, retried on the live one.
    for (_, status, attempt) in &outcomes {
        assert!(status.is_some() || *attempt == 0, "{outcomes:?}");
    }
    // Without a replica and with nothing more to publish, the hook fails the request: 503.
    tx.send(Arc::new(build(&[ServiceEndpoints {
        namespace: "default".into(),
        service: "iris".into(),
        model: "iris".into(),
        endpoints: vec![],
        hosts: vec![],
        weights: BTreeMap::new(),
        fallback: None,
        variants: BTreeMap::new(),
        sticky: None,
        shadow: None,
        cold_start: None,
        rate_limit: None,
    }])))
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(infer(&client, running.addr).await.status(), 503);
    drop(tx);
}
