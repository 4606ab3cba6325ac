//! A noisy neighbour in local mode, through the real router of `ferry up`: namespace `noisy`
//! sends far more to its slow model than its replica can serve while namespace `quiet` sends
//! a steady low rate to its own. The router gives each its share of the machine's slots:
//! `noisy` waits behind its own requests (and past its queue gets 503 + Retry-After), `quiet`
//! is never queued nor refused. Its p99 alone and beside the noise is printed; the ratio's
//! target lives in the benchmark (bench/tenancy.sh), not in a timed test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::local::harness::*;

/// `rate` requests per second to `quiet`'s iris for `seconds`: the latency of each (all must
/// be answered 200).
async fn steady(http: &reqwest::Client, router: &str, rate: u32, seconds: u32) -> Vec<Duration> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut sent = Vec::new();
    for _ in 0..rate * seconds {
        ticks.tick().await;
        let (http, router) = (http.clone(), router.to_string());
        sent.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = http
                .post(format!("http://{router}/v2/models/iris/infer"))
                .header("ferry-namespace", "quiet")
                .json(&iris_request())
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            (started.elapsed(), status.as_u16(), body)
        }));
    }
    let mut latencies = Vec::new();
    for request in sent {
        let (latency, status, body) = request.await.unwrap();
        assert_eq!(status, 200, "quiet was refused: {body}");
        latencies.push(latency);
    }
    latencies
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99).div_ceil(100) - 1]
}

/// `noisy`'s closed-loop clients; on a 503 they check Retry-After and come back after 20 ms.
/// (answered, refused) per client.
fn flood(
    http: &reqwest::Client,
    router: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u32, u32)>> {
    (0..clients)
        .map(|_| {
            let (http, router, stop) = (http.clone(), router.to_string(), stop.clone());
            tokio::spawn(async move {
                let (mut answered, mut refused) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let response = http
                        .post(format!("http://{router}/v2/models/slow/infer"))
                        .header("ferry-namespace", "noisy")
                        .json(&iris_request())
                        .send()
                        .await
                        .unwrap();
                    match response.status().as_u16() {
                        200 => answered += 1,
                        503 => {
                            assert_eq!(response.headers()["retry-after"], "1");
                            let body: Value = response.json().await.unwrap();
                            let error = body["error"].as_str().unwrap();
                            assert!(
                                error.contains("\"noisy\"") && error.contains("fair share"),
                                "{error}"
                            );
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!("noisy got {other}"),
                    }
                }
                (answered, refused)
            })
        })
        .collect()
}

/// The most requests in flight at `noisy`'s revision seen by polling the router's numbers.
fn watch_noisy(router: &str, stop: &Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let (router, stop) = (router.to_string(), stop.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut most = 0;
        while !stop.load(Ordering::Relaxed) {
            let numbers: Value = http
                .get(format!(
                    "http://{router}{}",
                    ferry_router::REVISION_METRICS_PATH
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for service in numbers.as_array().unwrap() {
                if service["namespace"] == "noisy" {
                    for load in service["load"]
                        .as_object()
                        .into_iter()
                        .flat_map(|l| l.values())
                    {
                        most = most.max(load["in_flight"].as_u64().unwrap_or(0));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        most
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_namespace_waits_behind_itself_and_the_quiet_one_is_never_refused() {
    let _cpu = CPU_HUNGRY.lock().await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("local-noisy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let daemon = Daemon::start_with(dir, &["--fair-slots", "2", "--fair-queue", "16"]);
    for (namespace, name, model) in [
        ("noisy", "slow", "iris-slow.onnx"),
        ("quiet", "iris", "iris-v1.onnx"),
    ] {
        let applied = daemon.apply(
            &manifest(name, model, 1),
            &["-n", namespace, "--wait", "--timeout", "300"],
        );
        assert!(applied.status.success(), "{}", stderr(&applied));
    }
    let router = daemon.router.clone();
    let http = reqwest::Client::new();
    let alone = p99(&mut steady(&http, &router, 20, 4).await);

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_noisy(&router, &stop);
    let noisy = flood(&http, &router, 24, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let beside = p99(&mut steady(&http, &router, 20, 6).await);
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut refused) = (0, 0);
    for client in noisy {
        let (a, r) = client.await.unwrap();
        answered += a;
        refused += r;
    }
    let most_in_flight = watcher.await.unwrap();
    eprintln!(
        "quiet p99 alone {alone:?}, beside the noise {beside:?} ({:.2}x); noisy: {answered} answered, {refused} refused (503), at most {most_in_flight} in flight",
        beside.as_secs_f64() / alone.as_secs_f64()
    );
    // noisy had its share (one of the two slots) in flight, never more, and queued the rest.
    assert!(answered > 0, "noisy was never served");
    assert!(
        refused > 0,
        "24 clients on a queue of 16 were never refused"
    );
    assert_eq!(most_in_flight, 1, "noisy over its share of one slot");

    let token = std::fs::read_to_string(daemon.dir.join("token")).unwrap();
    let metrics = http
        .get(format!("http://{router}/metrics"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let queued = |namespace: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "ferry_router_fair_queued_total{{namespace=\"{namespace}\"}}"
                ))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .unwrap_or(0.0)
    };
    assert!(queued("noisy") > 0.0, "{metrics}");
    assert_eq!(queued("quiet"), 0.0, "quiet waited for a slot");
    assert!(
        metrics.contains("ferry_router_errors_total{reason=\"overloaded\"}"),
        "{metrics}"
    );

    // Alone again (past the active window), noisy is not capped: both slots and more.
    tokio::time::sleep(ferry_core::fairness::ACTIVE_WINDOW * 2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_noisy(&router, &stop);
    let noisy = flood(&http, &router, 4, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for client in noisy {
        refused += client.await.unwrap().1;
    }
    assert_eq!(refused, 0, "alone, noisy was refused");
    assert!(watcher.await.unwrap() > 1, "alone, noisy was still capped");
}
