//! A pool server (`ferry server --memory-budget`) end to end, on the models `models/many.py`
//! generates: models registered to load on demand, loaded by their first request (held, one
//! load for any number of concurrent requests), the least recently used evicted so that the
//! resident models' measured footprints stay within the budget, every answer scikit-learn's.
//! Real `ferry server` processes (a process of its own measures its models without another
//! test's allocations), a real HTTP client.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::local::harness::{FERRY, repo};

/// The generated models and their expected answers (`make -C models many`).
pub(crate) fn many() -> (PathBuf, BTreeMap<String, Value>) {
    let dir = repo().join("models/many");
    let text = std::fs::read_to_string(dir.join("expected.json"))
        .expect("models/many/expected.json: run `make -C models many` (make test does)");
    (dir, serde_json::from_str(&text).unwrap())
}

/// A `ferry server` process with no model and a memory budget.
pub(crate) struct PoolServer {
    child: Child,
    pub(crate) http: String,
    pub(crate) client: reqwest::Client,
    dir: PathBuf,
}

impl PoolServer {
    pub(crate) async fn start(budget: &str) -> PoolServer {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ferry-pool-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let addr_file = dir.join("addr.json");
        let child = Command::new(FERRY)
            .args([
                "server",
                "--http-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ])
            .args(["--compute-threads", "2", "--memory-budget", budget])
            .arg("--addr-file")
            .arg(&addr_file)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                let addrs: Value = serde_json::from_str(&text).unwrap();
                break addrs["http"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "ferry server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        PoolServer {
            child,
            http,
            client: reqwest::Client::new(),
            dir,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("http://{}{path}", self.http))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn register(&self, name: &str, path: &std::path::Path) -> (u16, Value) {
        let body = json!({ "parameters": { "path": path.display().to_string() } });
        self.post(&format!("/v2/repository/models/{name}/register"), &body)
            .await
    }

    pub(crate) async fn index(&self) -> Vec<Value> {
        let (status, index) = self.post("/v2/repository/index", &json!({})).await;
        assert_eq!(status, 200);
        index.as_array().unwrap().clone()
    }

    pub(crate) async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.http);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for PoolServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sum of a metric's samples whose line contains every one of `labels`.
pub(crate) fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asks `model` for its expected rows; panics unless the answer is scikit-learn's.
pub(crate) async fn check_answer(
    client: &reqwest::Client,
    http: &str,
    model: &str,
    expected: &Value,
) {
    let rows = &expected["input"];
    let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [4, 4],
                                    "data": rows }] });
    let response = client
        .post(format!("http://{http}/v2/models/{model}/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{model}: {answer}");
    let outputs = answer["outputs"].as_array().unwrap();
    let output = |name: &str| {
        outputs
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("{model}: no output {name}: {answer}"))["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect::<Vec<f64>>()
    };
    let labels: Vec<f64> = expected["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(output("label"), labels, "{model}");
    let probabilities: Vec<f64> = expected["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    for (got, want) in output("probabilities").iter().zip(&probabilities) {
        assert!((got - want).abs() < 1e-4, "{model}: {got} vs {want}");
    }
}

/// `n` requests for `model` at once, from the server (or router) at `http`; panics unless
/// every answer is the expected one.
pub(crate) async fn at_once(
    client: &reqwest::Client,
    http: &str,
    model: &str,
    expected: &Value,
    n: usize,
) {
    let held: Vec<_> = (0..n)
        .map(|_| {
            let (client, http) = (client.clone(), http.to_string());
            let (model, expected) = (model.to_string(), expected.clone());
            tokio::spawn(async move { check_answer(&client, &http, &model, &expected).await })
        })
        .collect();
    for request in held {
        request.await.unwrap();
    }
}

/// Every model once, `workers` at a time, from the server (or router) at `http`; panics on any
/// answer that is not the expected one.
pub(crate) async fn sweep(
    client: &reqwest::Client,
    http: &str,
    models: &BTreeMap<String, Value>,
    workers: usize,
) {
    let names: Vec<String> = models.keys().cloned().collect();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (client, http) = (client.clone(), http.to_string());
        let mine: Vec<(String, Value)> = names
            .iter()
            .skip(worker)
            .step_by(workers)
            .map(|n| (n.clone(), models[n].clone()))
            .collect();
        tasks.push(tokio::spawn(async move {
            for (name, expected) in mine {
                check_answer(&client, &http, &name, &expected).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_server_serves_more_models_than_fit_within_its_budget() {
    let (dir, models) = many();
    let file = |name: &str| dir.join(format!("{name}.onnx"));

    // Measure: with room for all, each model loads once on its first request and stays.
    let roomy = PoolServer::start("1Gi").await;
    for name in models.keys() {
        let (status, body) = roomy.register(name, &file(name)).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    let index = roomy.index().await;
    assert_eq!(index.len(), models.len());
    assert!(
        index
            .iter()
            .all(|m| m["state"] == "UNLOADED" && m["onDemand"] == true),
        "registered models are not loaded before a request: {index:?}"
    );
    sweep(&roomy.client, &roomy.http, &models, 4).await;
    let measured: BTreeMap<String, u64> = roomy
        .index()
        .await
        .iter()
        .map(|m| {
            assert_eq!(m["state"], "READY", "{m}");
            let bytes = m["memoryBytes"].as_u64().unwrap_or_else(|| panic!("{m}"));
            (m["name"].as_str().unwrap().to_string(), bytes)
        })
        .collect();
    let total: u64 = measured.values().sum();
    let metrics = roomy.metrics().await;
    assert_eq!(
        metric(&metrics, "ferry_server_model_loads_total", &[]),
        models.len() as f64,
        "one load per model"
    );
    assert_eq!(
        metric(&metrics, "ferry_server_model_evictions_total", &[]),
        0.0
    );
    drop(roomy);

    // A budget for about a quarter of them.
    let budget = total / 4;
    let largest = *measured.values().max().unwrap();
    assert!(
        largest < budget,
        "the largest model ({largest} B) fits in {budget} B"
    );
    let pool = PoolServer::start(&budget.to_string()).await;
    for name in models.keys() {
        let (status, body) = pool.register(name, &file(name)).await;
        assert_eq!(status, 200, "{name}: {body}");
    }

    // 20 concurrent requests to one cold model: held, all answered, one load.
    let cold = models.keys().nth(7).unwrap().clone();
    at_once(&pool.client, &pool.http, &cold, &models[&cold], 20).await;
    let label = format!("model=\"{cold}\"");
    let metrics = pool.metrics().await;
    assert_eq!(
        metric(&metrics, "ferry_server_model_loads_total", &[&label]),
        1.0,
        "20 concurrent requests to a cold model share one load"
    );

    // Every model, twice, through a budget that holds a quarter: evictions, no failure.
    for _ in 0..2 {
        sweep(&pool.client, &pool.http, &models, 4).await;
        let index = pool.index().await;
        let resident: Vec<&Value> = index.iter().filter(|m| m["state"] == "READY").collect();
        let used: u64 = resident
            .iter()
            .map(|m| m["memoryBytes"].as_u64().unwrap())
            .sum();
        assert!(
            used <= budget,
            "{used} B resident over the budget of {budget} B"
        );
        assert!(
            resident.len() < models.len() / 2,
            "{} of {} resident",
            resident.len(),
            models.len()
        );
    }
    let metrics = pool.metrics().await;
    let evictions = metric(&metrics, "ferry_server_model_evictions_total", &[]);
    let loads = metric(&metrics, "ferry_server_model_loads_total", &[]);
    assert!(evictions >= models.len() as f64, "{evictions} evictions");
    assert!(loads >= 2.0 * models.len() as f64 - 1.0, "{loads} loads");
    assert!(metric(&metrics, "ferry_server_memory_used_bytes", &[]) <= budget as f64);
    assert_eq!(
        metric(&metrics, "ferry_server_memory_budget_bytes", &[]),
        budget as f64
    );
    // The same figures without /metrics' per-model series, for a pool's executor.
    let residency: Value = pool
        .client
        .get(format!("http://{}/v2/repository/residency", pool.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(residency["evictions"], evictions as u64, "{residency}");
    assert_eq!(residency["budgetBytes"], budget, "{residency}");
    assert_eq!(
        residency["usedBytes"].as_u64().unwrap() as f64,
        metric(&metrics, "ferry_server_memory_used_bytes", &[]),
        "{residency}"
    );
    assert_eq!(residency["registeredModels"], models.len(), "{residency}");
    // An evicted model keeps its measurement, and says why it is not resident.
    let evicted = pool
        .index()
        .await
        .into_iter()
        .find(|m| m["state"] == "UNLOADED")
        .expect("an evicted model");
    assert!(evicted["memoryBytes"].as_u64().is_some(), "{evicted}");
    assert!(
        evicted["reason"].as_str().unwrap().contains("evicted"),
        "{evicted}"
    );
    println!(
        "pool server: {} models, {total} B measured in all, budget {budget} B: {evictions} evictions, {loads} loads",
        models.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_can_never_fit_is_refused_with_the_numbers() {
    let small = PoolServer::start("100Ki").await;
    let big = repo().join("models/iris-slow.onnx");
    let (status, body) = small.register("big", &big).await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    let file_bytes = std::fs::metadata(&big).unwrap().len();
    assert!(
        error.contains("big")
            && error.contains(&file_bytes.to_string())
            && error.contains("102400"),
        "{error}"
    );
    // Nothing was registered under the name; a model that fits still is.
    let (status, _) = small
        .post("/v2/models/big/infer", &json!({"inputs": []}))
        .await;
    assert_eq!(status, 404);
    let (status, body) = small
        .register("iris", &repo().join("models/iris-v1.onnx"))
        .await;
    assert_eq!(status, 200, "{body}");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/expected.json")).unwrap(),
    )
    .unwrap();
    check_answer(&small.client, &small.http, "iris", &expected["iris-v1"]).await;
}
