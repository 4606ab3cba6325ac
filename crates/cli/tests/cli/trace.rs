//! Distributed traces, end to end, against a real OTLP receiver: Jaeger v2 (an OpenTelemetry
//! Collector distribution, built from the Go module proxy by `make trace-tools`) takes OTLP/gRPC
//! from `ferry up` (its router) and from the replicas it starts (servers), and its query API
//! gives the trace back. A client's W3C `traceparent` (curl over REST, tonic over gRPC) is the
//! root; the router's route → classify / pick / forward and the server's infer → queue / batch
//! / compute hang below it, across the two processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::local::harness::*;

/// The Jaeger binary, or `None` (the test is skipped unless FERRY_REQUIRE_JAEGER is set).
fn jaeger_binary() -> Option<PathBuf> {
    let path = std::env::var_os("FERRY_JAEGER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ferry-trace-test/bin/jaeger-v1.75.0")
        });
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("FERRY_REQUIRE_JAEGER").is_none(),
        "FERRY_REQUIRE_JAEGER is set and {} is missing (make trace-tools)",
        path.display()
    );
    eprintln!(
        "skipped: no Jaeger at {} (make trace-tools)",
        path.display()
    );
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Jaeger on loopback ports of its own.
struct Jaeger {
    child: Child,
    otlp: u16,
    query: u16,
}

impl Jaeger {
    async fn start(binary: &PathBuf) -> Jaeger {
        let (otlp, query, query_grpc) = (free_port(), free_port(), free_port());
        let child = Command::new(binary)
            .arg(format!(
                "--config=file:{}",
                repo().join("tests/otlp/jaeger.yaml").display()
            ))
            .env("JAEGER_OTLP_PORT", otlp.to_string())
            .env("JAEGER_QUERY_PORT", query.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", query_grpc.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("jaeger starts");
        let jaeger = Jaeger { child, otlp, query };
        let http = reqwest::Client::new();
        eventually("Jaeger answers", Duration::from_secs(30), || {
            let url = format!("http://127.0.0.1:{}/api/services", jaeger.query);
            let http = http.clone();
            async move { http.get(url).send().await.is_ok() }
        })
        .await;
        jaeger
    }

    /// The environment that points an exporter here (spans sent within 200 ms).
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{}", self.otlp),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ]
    }

    /// The spans of trace `id` once every one of `names` is among them.
    async fn trace(&self, id: &str, names: &[&str]) -> Trace {
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/api/traces/{id}", self.query);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body: Value = match http.get(&url).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let trace = Trace::from_jaeger(&body["data"][0]);
            if names.iter().all(|n| trace.named(n).is_some()) {
                return trace;
            }
            assert!(
                Instant::now() < deadline,
                "trace {id} never had all of {names:?}: {}",
                body
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
struct SpanView {
    id: String,
    name: String,
    parent: Option<String>,
    service: String,
    tags: BTreeMap<String, Value>,
    start: u64,
    duration: u64,
}

#[derive(Debug, Default)]
struct Trace {
    spans: Vec<SpanView>,
}

impl Trace {
    fn from_jaeger(data: &Value) -> Trace {
        let services: BTreeMap<String, String> = data["processes"]
            .as_object()
            .map(|p| {
                p.iter()
                    .map(|(id, process)| {
                        (
                            id.clone(),
                            process["serviceName"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let spans = data["spans"]
            .as_array()
            .map(|spans| {
                spans
                    .iter()
                    .map(|s| SpanView {
                        id: s["spanID"].as_str().unwrap_or("").to_string(),
                        name: s["operationName"].as_str().unwrap_or("").to_string(),
                        parent: s["references"].as_array().and_then(|refs| {
                            refs.iter()
                                .find(|r| r["refType"] == "CHILD_OF")
                                .and_then(|r| r["spanID"].as_str().map(String::from))
                        }),
                        service: services
                            .get(s["processID"].as_str().unwrap_or(""))
                            .cloned()
                            .unwrap_or_default(),
                        tags: s["tags"]
                            .as_array()
                            .map(|tags| {
                                tags.iter()
                                    .map(|t| {
                                        (
                                            t["key"].as_str().unwrap_or("").to_string(),
                                            t["value"].clone(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        start: s["startTime"].as_u64().unwrap_or(0),
                        duration: s["duration"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Trace { spans }
    }

    fn named(&self, name: &str) -> Option<&SpanView> {
        self.spans.iter().find(|s| s.name == name)
    }

    fn span(&self, name: &str) -> &SpanView {
        self.named(name)
            .unwrap_or_else(|| panic!("no {name} span in {self:#?}"))
    }

    /// `child`'s parent is `parent`, and it lies within it in time.
    fn assert_child(&self, child: &str, parent: &str) {
        let (c, p) = (self.span(child), self.span(parent));
        assert_eq!(
            c.parent.as_deref(),
            Some(p.id.as_str()),
            "{child} under {parent}: {self:#?}"
        );
        assert!(
            c.start >= p.start && c.start + c.duration <= p.start + p.duration + 1_000,
            "{child} lies within {parent}: {c:?} {p:?}"
        );
    }
}

/// A fresh W3C trace id and the client's own span id: the trace's root.
fn client_context() -> (String, String, String) {
    let trace = format!("{:032x}", fastrand::u128(1..));
    let span = format!("{:016x}", fastrand::u64(1..));
    let header = format!("00-{trace}-{span}-01");
    (trace, span, header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_traced_across_the_router_and_its_replica_over_rest_and_grpc() {
    let Some(binary) = jaeger_binary() else {
        return;
    };
    // Jaeger and the servers load the cores: not beside the tests timed on them.
    let _cpu = CPU_HUNGRY.lock().await;
    let jaeger = Jaeger::start(&binary).await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("local-trace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut daemon = Daemon::start_env(dir, &[], &jaeger.env());
    daemon.apply_and_wait(&manifest("iris", "iris-v1.onnx", 1));

    // REST, by curl, with the client's traceparent.
    let (trace_id, client_span, traceparent) = client_context();
    let output = Command::new("curl")
        .args(["-sS", "-f", "-H", "content-type: application/json", "-H"])
        .arg(format!("traceparent: {traceparent}"))
        .arg("-d")
        .arg(iris_request().to_string())
        .arg(format!("http://{}/v2/models/iris/infer", daemon.router))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["model_name"], "iris");

    let trace = jaeger
        .trace(
            &trace_id,
            &["route", "classify", "pick", "forward", "infer", "compute"],
        )
        .await;
    // The router's spans, under the client's.
    let route = trace.span("route");
    assert_eq!(route.service, "ferry-router");
    assert_eq!(route.parent.as_deref(), Some(client_span.as_str()));
    assert_eq!(route.tags["http.response.status_code"], 200);
    for phase in ["classify", "pick", "forward"] {
        trace.assert_child(phase, "route");
        assert_eq!(trace.span(phase).service, "ferry-router");
    }
    assert_eq!(trace.span("classify").tags["ferry.model"], "iris");
    let pick = trace.span("pick");
    let revision = pick.tags["ferry.revision"].as_str().unwrap().to_string();
    assert!(revision.starts_with("iris-"), "{pick:?}");
    let forward = trace.span("forward");
    assert_eq!(forward.tags["ferry.revision"], revision.as_str());
    assert_eq!(forward.tags["ferry.replica"], pick.tags["ferry.replica"]);
    // The replica's, under the router's forward: the traceparent crossed the process.
    let infer = trace.span("infer");
    assert_eq!(infer.service, "ferry-server");
    assert_eq!(infer.parent.as_deref(), Some(forward.id.as_str()));
    assert_eq!(infer.tags["ferry.model"], "iris");
    trace.assert_child("compute", "infer");

    // gRPC, by tonic, with the traceparent in the call's metadata.
    use ferry_server::grpc::GrpcInferenceServiceClient;
    let (trace_id, client_span, traceparent) = client_context();
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{}", daemon.router))
        .await
        .unwrap();
    let mut request = tonic::Request::new(iris_grpc_request());
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let answer = grpc.model_infer(request).await.unwrap();
    assert_eq!(answer.into_inner().model_name, "iris");
    let trace = jaeger
        .trace(&trace_id, &["route", "forward", "infer", "compute"])
        .await;
    assert_eq!(
        trace.span("route").parent.as_deref(),
        Some(client_span.as_str())
    );
    assert_eq!(
        trace.span("infer").parent.as_deref(),
        Some(trace.span("forward").id.as_str())
    );
    assert_eq!(trace.span("infer").tags["rpc.system"], "grpc");

    // A request the router refuses is a failed span, with why.
    let (trace_id, _, traceparent) = client_context();
    let output = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("traceparent: {traceparent}"))
        .arg("-d")
        .arg(iris_request().to_string())
        .arg(format!("http://{}/v2/models/nosuch/infer", daemon.router))
        .output()
        .unwrap();
    assert_eq!(stdout(&output), "404");
    let trace = jaeger.trace(&trace_id, &["route"]).await;
    let route = trace.span("route");
    assert_eq!(route.tags["otel.status_code"], "ERROR", "{route:?}");
    assert!(trace.named("forward").is_none(), "{trace:#?}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_request_shows_its_wait_its_batch_and_the_model_call() {
    let Some(binary) = jaeger_binary() else {
        return;
    };
    // Jaeger and the servers load the cores: not beside the tests timed on them.
    let _cpu = CPU_HUNGRY.lock().await;
    let jaeger = Jaeger::start(&binary).await;
    let port = free_port();
    // A fixed window: batches of up to 8 rows gathered for 300 ms, so the concurrent requests
    // below share one.
    let mut server = Command::new(FERRY)
        .args(["server", "--model"])
        .arg(format!(
            "iris={},max_batch_size=8,max_queue_delay_ms=300,batch_window=fixed",
            model("iris-v1.onnx")
        ))
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--grpc-addr", "127.0.0.1:0"])
        .envs(jaeger.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v2/models/iris");
    eventually("the server is ready", Duration::from_secs(30), || {
        let (http, url) = (http.clone(), format!("{url}/ready"));
        async move { http.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let contexts: Vec<_> = (0..3).map(|_| client_context()).collect();
    let sent: Vec<_> = contexts
        .iter()
        .map(|(_, _, traceparent)| {
            tokio::spawn(
                http.post(format!("{url}/infer"))
                    .header("traceparent", traceparent)
                    .json(&iris_request())
                    .send(),
            )
        })
        .collect();
    for answer in sent {
        assert_eq!(answer.await.unwrap().unwrap().status(), 200);
    }
    let mut batch_ids = Vec::new();
    for (trace_id, client_span, _) in &contexts {
        let trace = jaeger
            .trace(trace_id, &["infer", "queue", "batch", "compute"])
            .await;
        let infer = trace.span("infer");
        assert_eq!(infer.service, "ferry-server");
        assert_eq!(infer.parent.as_deref(), Some(client_span.as_str()));
        trace.assert_child("queue", "infer");
        trace.assert_child("batch", "infer");
        trace.assert_child("compute", "batch");
        let (queue, batch) = (trace.span("queue"), trace.span("batch"));
        assert!(
            queue.start + queue.duration <= batch.start + 1_000,
            "{queue:?} {batch:?}"
        );
        let requests = batch.tags["ferry.batch.requests"].as_i64().unwrap();
        assert!((1..=3).contains(&requests), "{batch:?}");
        batch_ids.push((requests, batch.start));
    }
    // The window gathered more than one of them into a batch, and each says so.
    assert!(
        batch_ids.iter().any(|(requests, _)| *requests > 1),
        "{batch_ids:?}"
    );
    let _ = server.kill();
    let _ = server.wait();
}
