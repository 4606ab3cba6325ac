//! Tenancy in local mode, end to end through the real router of `ferry up`: API keys that
//! wall namespaces off from each other (and from the control API), revoked at once, expired
//! on time; a service's rate limit holding its rate while other services are untouched.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::local::harness::*;

fn key_of(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        stdout(output),
        stderr(output)
    );
    let key = stdout(output).trim().to_string();
    assert!(key.starts_with("fry_"), "{key}");
    key
}

async fn infer(
    http: &reqwest::Client,
    router: &str,
    namespace: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .post(format!("http://{router}/v2/models/iris/infer"))
        .header("ferry-namespace", namespace)
        .json(&iris_request());
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_wall_namespaces_off_through_the_router_and_the_control_api() {
    let mut daemon = Daemon::start("apikeys");
    for namespace in ["a", "b"] {
        let applied = daemon.apply(
            &manifest("iris", "iris-v1.onnx", 1),
            &["-n", namespace, "--wait", "--timeout", "300"],
        );
        assert!(
            applied.status.success(),
            "{}{}",
            stdout(&applied),
            stderr(&applied)
        );
    }
    let router = daemon.router.clone();
    let http = reqwest::Client::new();
    // Open until a namespace has a key.
    assert_eq!(infer(&http, &router, "a", None).await.status(), 200);

    let a1 = key_of(&daemon.ferry(&["apikey", "create", "-n", "a", "--name", "ci"]));
    let a2 = key_of(&daemon.ferry(&[
        "apikey", "create", "-n", "a", "--name", "backup", "--rate", "600/m",
    ]));
    let b = key_of(&daemon.ferry(&["apikey", "create", "-n", "b"]));

    assert_eq!(infer(&http, &router, "a", Some(&a1)).await.status(), 200);
    let bearer = http
        .post(format!("http://{router}/v2/models/iris/infer"))
        .header("ferry-namespace", "a")
        .bearer_auth(&a2)
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let missing = infer(&http, &router, "a", None).await;
    assert_eq!(missing.status(), 401);
    assert!(missing.headers().contains_key("www-authenticate"));
    let other = infer(&http, &router, "b", Some(&a1)).await;
    assert_eq!(other.status(), 403);
    assert_eq!(infer(&http, &router, "b", Some(&b)).await.status(), 200);

    // Nothing of b through the router with a's key: its metrics need the control token.
    let metrics = |token: &str| {
        http.get(format!("http://{router}/metrics"))
            .bearer_auth(token.to_string())
            .send()
    };
    assert_eq!(metrics(&a1).await.unwrap().status(), 403);
    let token = std::fs::read_to_string(daemon.dir.join("token")).unwrap();
    let all = metrics(token.trim()).await.unwrap();
    assert_eq!(all.status(), 200);
    assert!(all.text().await.unwrap().contains("namespace=\"b\""));
    // Nor through the control API: an API key is no control credential.
    let api: Value =
        serde_json::from_str(&std::fs::read_to_string(daemon.dir.join("api.json")).unwrap())
            .unwrap();
    let control = http
        .get(format!(
            "http://{}/v1/inferenceservices",
            api["api"].as_str().unwrap()
        ))
        .bearer_auth(&a1)
        .send()
        .await
        .unwrap();
    assert_eq!(control.status(), 401);

    // The listing: ID first, never a key.
    let listed = daemon.ferry(&["apikey", "list", "-n", "a"]);
    let text = stdout(&listed);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("RATE") && lines[0].contains("EXPIRES"),
        "{text}"
    );
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        text.contains("ci") && text.contains("10/s") && !text.contains("fry_"),
        "{text}"
    );
    let a1_id = ferry_api::api_key_id(&a1).unwrap().to_string();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&a1_id) && l.contains(" ci ")),
        "{text}"
    );

    // Revoked: refused as soon as the command returns; the other key of a still works.
    let revoked = daemon.ferry(&["apikey", "revoke", "-n", "a", &a1_id]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert_eq!(infer(&http, &router, "a", Some(&a1)).await.status(), 401);
    assert_eq!(infer(&http, &router, "a", Some(&a2)).await.status(), 200);
    let again = daemon.ferry(&["apikey", "revoke", "-n", "a", &a1_id]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("not found"), "{}", stderr(&again));

    // Expired on time.
    let brief = key_of(&daemon.ferry(&["apikey", "create", "-n", "a", "--expires", "2s"]));
    assert_eq!(infer(&http, &router, "a", Some(&brief)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let expired = infer(&http, &router, "a", Some(&brief)).await;
    assert_eq!(expired.status(), 401);
    let body: Value = expired.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    // Bad input, by field.
    let bad = daemon.ferry(&["apikey", "create", "-n", "a", "--rate", "5/d"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("unknown unit"),
        "{}",
        stderr(&bad)
    );
    let bad = daemon.ferry(&[
        "apikey",
        "create",
        "-n",
        "a",
        "--expires",
        "2020-01-01T00:00:00Z",
    ]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("expires: Invalid value"),
        "{}",
        stderr(&bad)
    );
    let bad = daemon.ferry(&["apikey", "create", "-n", "Not_A_Namespace"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("namespace: Invalid value"),
        "{}",
        stderr(&bad)
    );

    // Keys outlive a restart (only their hashes are stored).
    daemon.stop();
    let mut db = std::fs::read(daemon.dir.join("state.db")).unwrap_or_default();
    db.extend(std::fs::read(daemon.dir.join("state.db-wal")).unwrap_or_default());
    assert!(
        !String::from_utf8_lossy(&db).contains(&a2[4..]),
        "a key in the store"
    );
    let daemon = Daemon::start_in(daemon.dir.clone());
    let router = daemon.router.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while infer(&http, &router, "a", Some(&a2)).await.status() != 200 {
        assert!(Instant::now() < deadline, "a's service never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(infer(&http, &router, "a", None).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_its_rate_and_leaves_other_services_alone() {
    let daemon = Daemon::start("ratelimit");
    let limited = format!(
        "{}  rateLimit:\n    requestsPerSecond: 50\n    burst: 10\n",
        manifest("iris", "iris-v1.onnx", 1)
    );
    daemon.apply_and_wait(&limited);
    let applied = daemon.apply(
        &manifest("iris", "iris-v1.onnx", 1),
        &["-n", "other", "--wait", "--timeout", "300"],
    );
    assert!(applied.status.success(), "{}", stderr(&applied));
    let router = daemon.router.clone();
    let http = reqwest::Client::new();

    // 200 requests per second for 10 s to the limited service, 20 per second to the other.
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(5));
    let mut requests = Vec::new();
    let send = |namespace: &'static str| {
        let http = http.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let response = infer(&http, &router, namespace, None).await;
            let retry = response.headers().get("retry-after").is_some();
            (namespace == "other", response.status().as_u16(), retry)
        })
    };
    for i in 0..2_000u32 {
        ticks.tick().await;
        requests.push(send("default"));
        if i % 10 == 0 {
            requests.push(send("other"));
        }
    }
    let mut limited_ok = 0;
    let mut limited_refused = 0;
    let mut other = Vec::new();
    for request in requests {
        let (is_other, status, retry) = request.await.unwrap();
        if is_other {
            other.push(status);
        } else if status == 200 {
            limited_ok += 1;
        } else {
            assert_eq!(status, 429);
            assert!(retry, "429 without Retry-After");
            limited_refused += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = f64::from(limited_ok) / seconds;
    assert!(
        (45.0..=55.0).contains(&rate),
        "{limited_ok} accepted in {seconds:.1}s = {rate:.1}/s; {limited_refused} refused"
    );
    assert!(limited_refused > 1_000, "{limited_refused}");
    assert!(
        other.iter().all(|s| *s == 200),
        "the other namespace's service: {other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_rate_limit_is_shared_by_its_services_and_leaves_others_alone() {
    let daemon = Daemon::start("nslimit");
    let namespace_doc = |annotations: &str| {
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n{annotations}")
    };
    // Refused by the annotation's path, nothing applied.
    let bad = daemon.apply(
        &format!(
            "{}---\n{}",
            namespace_doc("  annotations: {ferry.dev/rate-limit: 20/day}\n"),
            manifest("iris", "iris-v1.onnx", 1)
        ),
        &["-n", "team"],
    );
    assert!(
        !bad.status.success()
            && stderr(&bad).contains("metadata.annotations[ferry.dev/rate-limit]"),
        "{}",
        stderr(&bad)
    );
    let listed = daemon.ferry(&["get", "isvc", "-n", "team"]);
    assert!(!stdout(&listed).contains("iris"), "{}", stdout(&listed));

    let limited = namespace_doc(
        "  annotations:\n    ferry.dev/rate-limit: 20/s\n    ferry.dev/rate-limit-burst: \"5\"\n",
    );
    let applied = daemon.apply(&limited, &[]);
    assert!(
        stdout(&applied).contains("namespace/team created"),
        "{}{}",
        stdout(&applied),
        stderr(&applied)
    );
    for (name, namespace) in [("iris", "team"), ("second", "team"), ("iris", "other")] {
        let applied = daemon.apply(
            &manifest(name, "iris-v1.onnx", 1),
            &["-n", namespace, "--wait", "--timeout", "300"],
        );
        assert!(applied.status.success(), "{}", stderr(&applied));
    }
    let router = daemon.router.clone();
    let http = reqwest::Client::new();
    let call = |namespace: &'static str, model: &'static str| {
        let (http, router) = (http.clone(), router.clone());
        tokio::spawn(async move {
            let response = http
                .post(format!("http://{router}/v2/models/{model}/infer"))
                .header("ferry-namespace", namespace)
                .json(&iris_request())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry = response.headers().contains_key("retry-after");
            let body = response.text().await.unwrap_or_default();
            (status, retry, body)
        })
    };
    // 100 requests per second for 3 s, alternating the namespace's two services, and 10 per
    // second to the other namespace.
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let (mut team, mut other) = (Vec::new(), Vec::new());
    for i in 0..300u32 {
        ticks.tick().await;
        team.push(call("team", if i % 2 == 0 { "iris" } else { "second" }));
        if i % 10 == 0 {
            other.push(call("other", "iris"));
        }
    }
    let mut accepted = 0u32;
    for request in team {
        let (status, retry, body) = request.await.unwrap();
        if status == 200 {
            accepted += 1;
        } else {
            assert_eq!(status, 429, "{body}");
            assert!(retry, "429 without Retry-After");
            assert!(body.contains("namespace team"), "{body}");
        }
    }
    let expected = 5.0 + 20.0 * started.elapsed().as_secs_f64();
    assert!(
        (f64::from(accepted) - expected).abs() <= expected * 0.15,
        "{accepted} accepted, about {expected:.0} expected"
    );
    for request in other {
        assert_eq!(
            request.await.unwrap().0,
            200,
            "the other namespace was limited"
        );
    }

    // Applied again without the annotation: no limit, at once.
    let applied = daemon.apply(&namespace_doc(""), &[]);
    assert!(
        stdout(&applied).contains("namespace/team configured"),
        "{}",
        stdout(&applied)
    );
    let burst: Vec<_> = (0..30).map(|_| call("team", "iris")).collect();
    for request in burst {
        assert_eq!(request.await.unwrap().0, 200);
    }
}
