//! Scale from zero at the router: requests for a service with no ready replica and a
//! cold-start buffer are held, the executor is told at once, they are answered when a replica
//! appears; beyond the buffer or past the timeout the answer is 503 with Retry-After.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use ferry_core::routes::ColdStart;

fn at_zero(endpoints: Vec<Endpoint>, cold: ColdStart) -> Arc<RouteTable> {
    let replicas: Vec<_> = endpoints.iter().map(|e| e.replica.clone()).collect();
    Arc::new(build(&[ServiceEndpoints {
        namespace: "default".into(),
        service: "iris".into(),
        model: "iris".into(),
        endpoints,
        hosts: vec![],
        weights: ferry_core::service::ready_weights(&replicas, &[]),
        fallback: None,
        variants: BTreeMap::new(),
        sticky: None,
        shadow: None,
        cold_start: Some(cold),
        rate_limit: None,
    }]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_answered_when_a_replica_appears_and_refused_past_the_buffer() {
    let cold = ColdStart {
        requests: 40,
        timeout_seconds: 30,
    };
    let (tx, rx) = watch::channel(at_zero(vec![], cold));
    let router = Router::new(rx, RouterConfig::default());
    let demands = Arc::new(AtomicUsize::new(0));
    {
        let demands = demands.clone();
        router.on_demand(Arc::new(move |namespace, service| {
            assert_eq!((namespace, service), ("default", "iris"));
            demands.fetch_add(1, Ordering::SeqCst);
        }));
    }
    let accounting = router.accounting();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let running = serve(tokio::net::TcpListener::from_std(listener).unwrap(), router).unwrap();
    let client = reqwest::Client::new();

    // 50 requests arrive together at zero: 40 are held, 10 are refused at once.
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            let addr = running.addr;
            tokio::spawn(async move {
                let response = infer(&client, addr).await;
                let retry = response.headers().get("retry-after").cloned();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, retry, body)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while accounting
        .loads()
        .get(&("default".to_string(), "iris".to_string()))
        .map_or(0, |(_, held)| *held)
        < 40
    {
        assert!(Instant::now() < deadline, "requests never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        demands.load(Ordering::SeqCst) >= 40,
        "every held request signals demand"
    );
    let numbers = serde_json::to_value(accounting.numbers()).unwrap();
    assert_eq!(numbers[0]["held"], 40, "{numbers}");

    // A replica becomes ready: every held request is answered by it.
    let server = replica("iris-v1.onnx").await;
    tx.send(at_zero(
        vec![endpoint("a", "iris-1", server.http_addr, server.grpc_addr)],
        cold,
    ))
    .unwrap();
    let mut answered = 0;
    let mut refused = 0;
    for request in requests {
        let (status, retry, body) = request.await.unwrap();
        match status {
            200 => {
                answered += 1;
                assert_eq!(body["outputs"][0]["name"], "label", "{body}");
            }
            503 => {
                refused += 1;
                assert_eq!(retry.unwrap(), "5");
                let error = body["error"].as_str().unwrap();
                assert!(error.contains("coldStartBuffer.requests"), "{error}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((answered, refused), (40, 10));
    let (loads, held) = accounting.loads()[&("default".to_string(), "iris".to_string())].clone();
    assert_eq!(held, 0);
    assert_eq!(loads["iris-1"].arrivals, 40);
    assert_eq!(loads["iris-1"].in_flight, 0);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_past_the_timeout_gets_503_with_retry_after() {
    let cold = ColdStart {
        requests: 8,
        timeout_seconds: 1,
    };
    let (_tx, rx) = watch::channel(at_zero(vec![], cold));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let running = serve(
        tokio::net::TcpListener::from_std(listener).unwrap(),
        Router::new(rx, RouterConfig::default()),
    )
    .unwrap();
    let started = Instant::now();
    let response = infer(&reqwest::Client::new(), running.addr).await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert!(waited >= Duration::from_millis(950), "held {waited:?}");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no replica ready after 1s"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_is_answered_by_a_starting_replica_its_own_probe_finds_ready() {
    let cold = ColdStart {
        requests: 8,
        timeout_seconds: 30,
    };
    // The table knows the replica only as starting (its readiness has not reached the
    // executor yet); the held request probes it and is answered by it.
    let server = replica("iris-v1.onnx").await;
    let mut starting = endpoint("a", "iris-1", server.http_addr, server.grpc_addr);
    starting.replica.health = ReplicaHealth::Starting { for_seconds: 0 };
    let (_tx, rx) = watch::channel(at_zero(vec![starting], cold));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let running = serve(
        tokio::net::TcpListener::from_std(listener).unwrap(),
        Router::new(rx, RouterConfig::default()),
    )
    .unwrap();
    let sent = Instant::now();
    let response = infer(&reqwest::Client::new(), running.addr).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["ferry-revision"], "iris-1");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
}
