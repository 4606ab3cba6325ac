//! Authorize / limit at the router: API keys per namespace (401 / 403, revoked and expired
//! keys, never forwarded), token buckets per service and per key (429 + Retry-After +
//! RateLimit-*), over REST and gRPC, and the router's own numbers closed to tenants.

use super::*;
use ferry_core::routes::{ApiKey, Limit};

/// An upstream that records the headers of every request and answers 200 `{}`: what a
/// replica sees (a real server does not tell which headers it got).
async fn recording_upstream() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buffer.len() < end + 4 + length {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    record.lock().unwrap().push(head);
                    buffer.drain(..end + 4 + length);
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn service(namespace: &str, model: &str, at: SocketAddr, limit: Option<Limit>) -> ServiceEndpoints {
    ServiceEndpoints {
        namespace: namespace.into(),
        service: model.into(),
        model: model.into(),
        endpoints: vec![endpoint(
            &format!("{namespace}-{model}"),
            &format!("{model}-1"),
            at,
            at,
        )],
        hosts: vec![],
        weights: [(format!("{model}-1"), 1)].into(),
        fallback: None,
        variants: BTreeMap::new(),
        sticky: None,
        shadow: None,
        cold_start: None,
        rate_limit: limit,
    }
}

fn limit(per_second: f64, burst: u32) -> Limit {
    Limit::of(
        &ferry_api::RateLimitSpec {
            requests_per_second: per_second,
            burst: Some(burst),
        },
        1,
    )
}

/// A key of `namespace`: (the key, its record).
fn new_key(
    n: u8,
    namespace: &str,
    rate: Option<Limit>,
    expires_unix: Option<i64>,
) -> (String, ApiKey) {
    let id = format!("{n:016x}");
    let key = format!("fry_{id}_{}", format!("{n:02x}").repeat(32));
    let record = ApiKey {
        id,
        namespace: namespace.into(),
        name: format!("key-{n}"),
        hash: ferry_api::api_key_hash(&key),
        rate_limit: rate,
        expires_unix,
    };
    (key, record)
}

async fn post(
    client: &reqwest::Client,
    addr: SocketAddr,
    namespace: &str,
    model: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let mut request = client
        .post(format!("http://{addr}/v2/models/{model}/infer"))
        .header("ferry-namespace", namespace)
        .json(&iris_request());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_with_keys_take_only_their_own_keys_and_never_forward_them() {
    let (upstream, seen) = recording_upstream().await;
    let (a_key, a_record) = new_key(1, "a", None, None);
    let (b_key, b_record) = new_key(2, "b", None, None);
    let (old_key, old_record) = new_key(3, "a", None, Some(1_000_000_000));
    let services = [
        service("a", "m", upstream, None),
        service("b", "m", upstream, None),
        service("open", "m", upstream, None),
    ];
    let keyed = |keys: Vec<ApiKey>| Arc::new(build(&services).with_keys(keys));
    let (tx, rx) = watch::channel(keyed(vec![a_record.clone(), b_record, old_record]));
    let running = serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Router::new(
            rx,
            RouterConfig {
                admin_token: Some("admin-secret".into()),
                ..RouterConfig::default()
            },
        ),
    )
    .unwrap();
    let addr = running.addr;
    let client = reqwest::Client::new();

    assert_eq!(
        post(&client, addr, "a", "m", Some(&a_key)).await.status(),
        200
    );
    let response = client
        .post(format!("http://{addr}/v2/models/m/infer"))
        .header("ferry-namespace", "a")
        .header("x-api-key", &a_key)
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "x-api-key works too");
    // The replica never saw a key.
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        for head in seen.iter() {
            assert!(
                !head.contains("authorization")
                    && !head.contains("x-api-key")
                    && !head.contains("fry_"),
                "{head}"
            );
        }
    }
    let missing = post(&client, addr, "a", "m", None).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.headers()["www-authenticate"],
        r#"Bearer realm="ferry""#
    );
    let body: Value = missing.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("requires an API key"),
        "{body}"
    );
    let other = post(&client, addr, "b", "m", Some(&a_key)).await;
    assert_eq!(other.status(), 403);
    let body: Value = other.json().await.unwrap();
    assert!(
        !body.to_string().contains(&a_key),
        "the key is not echoed: {body}"
    );
    let expired = post(&client, addr, "a", "m", Some(&old_key)).await;
    assert_eq!(expired.status(), 401);
    assert!(
        expired.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("expired")
    );
    assert_eq!(
        post(&client, addr, "b", "m", Some(&b_key)).await.status(),
        200
    );
    assert_eq!(
        post(&client, addr, "open", "m", None).await.status(),
        200,
        "no keys, open"
    );
    // A's key finds nothing of B's: B's model in A's namespace is simply not there.
    assert_eq!(
        post(&client, addr, "a", "nope", Some(&a_key))
            .await
            .status(),
        404
    );

    // gRPC: the same answers as status codes.
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(iris_grpc_request());
    request
        .metadata_mut()
        .insert("ferry-namespace", "a".parse().unwrap());
    let status = grpc.model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // The router's own numbers name every tenant: only with the admin token now.
    let metrics = |token: Option<&str>| {
        let mut request = client.get(format!("http://{addr}/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(metrics(None).await.unwrap().status(), 403);
    assert_eq!(metrics(Some(&a_key)).await.unwrap().status(), 403);
    let allowed = metrics(Some("admin-secret")).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert!(allowed.text().await.unwrap().contains("namespace=\"b\""));

    // Revoked: gone from the table, refused at once.
    tx.send(keyed(vec![new_key(2, "b", None, None).1])).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let revoked = post(&client, addr, "a", "m", Some(&a_key)).await;
    assert_eq!(revoked.status(), 200, "a has no keys left: open again");
    tx.send(keyed(vec![new_key(4, "a", None, None).1])).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let revoked = post(&client, addr, "a", "m", Some(&a_key)).await;
    assert_eq!(revoked.status(), 401);
    assert!(
        revoked.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_buckets_refuse_with_429_and_say_when_to_retry() {
    let (upstream, _seen) = recording_upstream().await;
    let (key, record) = new_key(7, "k", Some(limit(1.0, 3)), None);
    let table = build(&[
        service("default", "limited", upstream, Some(limit(1.0, 10))),
        service("default", "free", upstream, None),
        service("k", "m", upstream, None),
    ])
    .with_keys([record]);
    let (_tx, rx) = watch::channel(Arc::new(table));
    let running = serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Router::new(rx, RouterConfig::default()),
    )
    .unwrap();
    let addr = running.addr;
    let client = reqwest::Client::new();

    // 30 at once on a bucket of 10 (1/s): exactly 10 pass.
    let answers = futures_join(
        (0..30)
            .map(|_| {
                let client = client.clone();
                async move { post(&client, addr, "default", "limited", None).await }
            })
            .collect(),
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        20,
        "{statuses:?}"
    );
    let refused = answers.iter().find(|r| r.status() == 429).unwrap();
    let retry: u32 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(refused.headers()["ratelimit-limit"], "1");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    let reset: u32 = refused.headers()["ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((9..=11).contains(&reset), "{reset}");
    // Other services are not touched by it.
    for _ in 0..20 {
        assert_eq!(
            post(&client, addr, "default", "free", None).await.status(),
            200
        );
    }
    // gRPC shares the REST bucket: RESOURCE_EXHAUSTED.
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut request = iris_grpc_request();
    request.model_name = "limited".into();
    let status = grpc.model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("spec.rateLimit"), "{status:?}");

    // A key's own bucket.
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(
                post(&client, addr, "k", "m", Some(&key))
                    .await
                    .status()
                    .as_u16(),
            );
        }
        out
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let body: Value = post(&client, addr, "k", "m", Some(&key))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("API key 0000000000000007"),
        "{body}"
    );
    running.shutdown(Duration::from_secs(1)).await;
}

async fn futures_join<F: std::future::Future<Output = reqwest::Response> + Send + 'static>(
    futures: Vec<F>,
) -> Vec<reqwest::Response> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
