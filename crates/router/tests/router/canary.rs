//! A canary at the router: the per-revision numbers it serves for analysis, the retry of a
//! canary's failure on the stable revision, and requests pinned to a revision.

use super::*;

/// A router over stable `iris-v1` and canary `iris-b` (the faulty model: ready, then every real inference
/// fails), half the traffic each, retrying on `fallback`.
async fn canary_router(
    fallback: Option<&str>,
) -> (
    watch::Sender<Arc<RouteTable>>,
    ferry_router::RunningRouter,
    Vec<RunningServer>,
) {
    let stable = replica("iris-v1.onnx").await;
    let faulty = replica("faulty.onnx").await;
    let table = Arc::new(build(&[ServiceEndpoints {
        namespace: "default".into(),
        service: "iris".into(),
        model: "iris".into(),
        endpoints: vec![
            endpoint("s", "iris-v1", stable.http_addr, stable.grpc_addr),
            endpoint("b", "iris-b", faulty.http_addr, faulty.grpc_addr),
        ],
        hosts: vec![],
        weights: [("iris-v1".to_string(), 50), ("iris-b".to_string(), 50)].into(),
        fallback: fallback.map(String::from),
        variants: BTreeMap::new(),
        sticky: None,
        shadow: None,
        cold_start: None,
        rate_limit: None,
    }]));
    let (tx, rx) = watch::channel(table);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let running = serve(
        tokio::net::TcpListener::from_std(listener).unwrap(),
        Router::new(rx, RouterConfig::default()),
    )
    .unwrap();
    (tx, running, vec![stable, faulty])
}

async fn numbers(client: &reqwest::Client, addr: SocketAddr) -> Vec<ferry_router::ServiceNumbers> {
    client
        .get(format!(
            "http://{addr}{}",
            ferry_router::REVISION_METRICS_PATH
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_retried_on_stable_and_counted_for_analysis() {
    let (_tx, running, _servers) = canary_router(Some("iris-v1")).await;
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let response = infer(&client, running.addr).await;
        assert_eq!(
            response.status(),
            200,
            "the stable revision answers for the canary"
        );
        assert_eq!(response.headers()["ferry-revision"], "iris-v1");
    }
    let numbers = numbers(&client, running.addr).await;
    assert_eq!(numbers.len(), 1);
    let revisions = &numbers[0].revisions;
    let canary = &revisions["iris-b"];
    let stable = &revisions["iris-v1"];
    // Half the traffic went to the canary first (binomial: 100 ± 5σ of 7), every attempt failed.
    assert!((65..=135).contains(&canary.requests), "{canary:?}");
    assert_eq!(canary.errors, canary.requests);
    assert_eq!(
        canary.unreachable, 0,
        "the faulty model answers 500: no unanswered attempt"
    );
    // The stable revision answered everything: its own share and every retry.
    assert_eq!(stable.requests, 200);
    assert_eq!(stable.errors, 0);
    assert_eq!(stable.latency.iter().sum::<u64>(), 200);
    assert!(stable.quantile_ms(0.99).is_some_and(|p| p > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fallback_the_canary_failures_reach_the_client() {
    let (_tx, running, _servers) = canary_router(None).await;
    let client = reqwest::Client::new();
    let mut failed = 0;
    for _ in 0..100 {
        if infer(&client, running.addr)
            .await
            .status()
            .is_server_error()
        {
            failed += 1;
        }
    }
    assert!(
        (20..=80).contains(&failed),
        "{failed} of 100 reached the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_can_pin_a_revision() {
    let (_tx, running, _servers) = canary_router(Some("iris-v1")).await;
    let client = reqwest::Client::new();
    let pinned = |revision: &'static str| {
        client
            .post(format!("http://{}/v2/models/iris/infer", running.addr))
            .header("ferry-revision", revision)
            .json(&iris_request())
            .send()
    };
    for _ in 0..10 {
        let response = pinned("iris-v1").await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ferry-revision"], "iris-v1");
    }
    // Pinned to the canary, its failure is the answer (no fallback for a pinned request).
    let response = pinned("iris-b").await.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["ferry-revision"], "iris-b");
    let response = pinned("iris-zzz").await.unwrap();
    assert_eq!(response.status(), 404);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("iris-zzz") && body.contains("ferry-revision"),
        "{body}"
    );
}
