//! Pooled InferenceServices in local mode end to end: the real `ferry up` runs a ServerPool of
//! two `ferry server` processes whose budgets hold about a quarter of 200 models
//! (`models/many.py`), places the 200 services' models on them by measured footprint, and the
//! router sends each model's requests to the server that holds it. Every answer is
//! scikit-learn's, evictions happen and are counted in the pool's status, a cold model's 20
//! concurrent requests cost one load, and a service naming a missing pool says so.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ferry_local::paths::StateDir;
use serde_json::Value;

use crate::local::harness::*;
use crate::pools::{PoolServer, at_once, many, metric, sweep};

/// Every model's footprint as a roomy server of its own measures it after its first request.
async fn measure(dir: &std::path::Path, models: &BTreeMap<String, Value>) -> BTreeMap<String, u64> {
    let roomy = PoolServer::start("1Gi").await;
    for name in models.keys() {
        let (status, body) = roomy
            .register(name, &dir.join(format!("{name}.onnx")))
            .await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    sweep(&roomy.client, &roomy.http, models, 4).await;
    roomy
        .index()
        .await
        .iter()
        .map(|m| {
            let bytes = m["memoryBytes"].as_u64().unwrap_or_else(|| panic!("{m}"));
            (m["name"].as_str().unwrap().to_string(), bytes)
        })
        .collect()
}

/// The HTTP address of the daemon's pool server `id` (its addr file, rewritten at each start).
fn server_http(daemon: &Daemon, id: &str) -> Option<String> {
    let text = std::fs::read_to_string(StateDir::new(&daemon.dir).addr_file_of(id)).ok()?;
    let addrs: Value = serde_json::from_str(&text).ok()?;
    Some(addrs["http"].as_str()?.to_string())
}

/// Pool server `id`'s /metrics text.
async fn server_metrics(client: &reqwest::Client, daemon: &Daemon, id: &str) -> String {
    let http = server_http(daemon, id).unwrap_or_else(|| panic!("no address for {id}"));
    let url = format!("http://{http}/metrics");
    client.get(url).send().await.unwrap().text().await.unwrap()
}

fn pool_manifest(budget: u64, overcommit: u32) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: ServerPool\nmetadata:\n  name: small\nspec:\n  replicas: 2\n  memoryBudget: \"{budget}\"\n  overcommitPercent: {overcommit}\n"
    )
}

fn pooled_manifest(name: &str, pool: &str, file: &std::path::Path) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata:\n  name: {name}\nspec:\n  predictor:\n    pool: {pool}\n    model:\n      format: onnx\n      uri: {}\n",
        file.display()
    )
}

fn json_of(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "{}{}",
        stdout(output),
        stderr(output)
    );
    serde_json::from_str(&stdout(output)).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

fn condition<'a>(isvc: &'a Value, type_: &str) -> &'a Value {
    isvc["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_pooled_services_answer_through_the_router_from_a_pool_a_quarter_their_size() {
    let (dir, models) = many();
    let file = |name: &str| dir.join(format!("{name}.onnx"));
    let measured = measure(&dir, &models).await;
    let total: u64 = measured.values().sum();
    let files: u64 = models
        .keys()
        .map(|n| std::fs::metadata(file(n)).unwrap().len())
        .sum();
    // Two servers whose budgets together hold a quarter of the models' measured bytes; the
    // overcommit lets every model be registered (on either server, by the estimate the planner
    // starts from or by what it measures) without room for all of them on one.
    let budget = total / 8;
    let largest = *measured.values().max().unwrap();
    assert!(
        largest < budget,
        "the largest model ({largest} B) fits in {budget} B"
    );
    let planned = total.max(files * 2) as f64;
    let overcommit = ((planned * 0.6 / budget as f64 - 1.0) * 100.0).ceil() as u32;
    let overcommit = overcommit.clamp(100, 1000);

    let daemon = Daemon::start("pooled");
    let mut manifest = pool_manifest(budget, overcommit);
    for name in models.keys() {
        manifest.push_str("---\n");
        manifest.push_str(&pooled_manifest(name, "small", &file(name)));
    }
    let applied = daemon.apply(&manifest, &["--wait", "--timeout", "300"]);
    assert!(
        applied.status.success(),
        "{}{}\n{}",
        stdout(&applied),
        stderr(&applied),
        daemon.log()
    );
    assert!(stdout(&applied).contains("serverpool.ferry.dev/small created"));
    // Two pool servers and no replica of any service's own.
    assert_eq!(replica_pids(&daemon.dir).len(), 2, "{}", daemon.log());

    // Nothing has been asked yet, so every model is cold: 20 concurrent requests to one are
    // held by its server, answered, and cost exactly one load.
    let pool = json_of(&daemon.ferry(&["get", "serverpool", "small", "-o", "json"]));
    let cold = models.keys().nth(7).unwrap().clone();
    let holder = pool["status"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == cold.as_str())
        .and_then(|m| m["servers"][0].as_str())
        .unwrap_or_else(|| panic!("{cold} is not placed: {pool}"))
        .to_string();
    let client = reqwest::Client::new();
    at_once(&client, &daemon.router, &cold, &models[&cold], 20).await;
    let text = server_metrics(&client, &daemon, &holder).await;
    let label = format!("model=\"{cold}\"");
    assert_eq!(
        metric(&text, "ferry_server_model_loads_total", &[&label]),
        1.0,
        "20 concurrent requests to a cold model through the router share one load"
    );

    // Every model, twice, through the router: each answers with its own answers (a failed
    // request fails the sweep), and the servers evict to stay within their budgets.
    for _ in 0..2 {
        sweep(&client, &daemon.router, &models, 4).await;
    }

    // The pool's status (refreshed by the passes after the sweeps) counts the evictions and
    // has every model's measurement.
    let mut pool = Value::Null;
    let want = models.len();
    eventually(
        "the pool's status has evictions and every model measured",
        Duration::from_secs(30),
        || {
            let got = json_of(&daemon.ferry(&["get", "serverpool", "small", "-o", "json"]));
            let status = &got["status"];
            let measured = status["models"].as_array().is_some_and(|models| {
                models.len() == want && models.iter().all(|m| m["measuredBytes"].is_u64())
            });
            let done = measured && status["evictions"].as_u64().unwrap_or(0) > 0;
            pool = got;
            async move { done }
        },
    )
    .await;
    let status = &pool["status"];
    assert_eq!(status["readyServers"], 2, "{status}");
    assert_eq!(status["registeredModels"], models.len(), "{status}");
    let used = status["memoryUsedBytes"].as_u64().unwrap();
    assert_eq!(status["memoryBudgetBytes"], 2 * budget, "{status}");
    assert!(used <= 2 * budget, "{used} B resident over {}", 2 * budget);
    let resident = status["residentModels"].as_u64().unwrap() as usize;
    assert!(
        resident < models.len() / 2,
        "{resident} of {} resident",
        models.len()
    );
    // Neither server ever left readiness while its LRU loaded and evicted (a server that did
    // would have had its models moved to the other): two "replica ready" lines in all.
    let log = daemon.log();
    assert_eq!(log.matches("replica ready").count(), 2, "{log}");
    let servers = status["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert!(
        servers
            .iter()
            .all(|s| s["registeredModels"].as_u64().unwrap() > 0),
        "both servers hold models: {servers:?}"
    );
    // Each model: placed once, measured, and predicted from what the pool measured.
    let mut errors = Vec::new();
    for model in status["models"].as_array().unwrap() {
        assert_eq!(model["servers"].as_array().unwrap().len(), 1, "{model}");
        let measured = model["measuredBytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{model}"));
        let predicted = model["predictedBytes"].as_u64().unwrap() as f64;
        errors.push((predicted - measured as f64).abs() / measured as f64);
    }
    errors.sort_by(f64::total_cmp);
    let evictions = status["evictions"].as_u64().unwrap();

    // Per server, the metrics agree with the status: loads beyond one per model.
    let mut loads = 0.0;
    for server in servers {
        let text = server_metrics(&client, &daemon, server["name"].as_str().unwrap()).await;
        loads += metric(&text, "ferry_server_model_loads_total", &[]);
    }
    assert!(
        loads > models.len() as f64,
        "{loads} loads for {} models",
        models.len()
    );

    // A pooled service is Ready, with its copy's server as its replica.
    let isvc = json_of(&daemon.ferry(&["get", "isvc", &cold, "-o", "json"]));
    assert_eq!(condition(&isvc, "Ready")["status"], "True", "{isvc}");
    let table = stdout(&daemon.ferry(&["get", "serverpool"]));
    assert!(table.contains("small") && table.contains("2/2"), "{table}");

    // A service naming a pool that does not exist is not Ready, and says why.
    let lost = pooled_manifest("lost", "nope", &file(&cold));
    let applied = daemon.apply(&lost, &[]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    eventually("lost says PoolNotFound", Duration::from_secs(20), || {
        let isvc = json_of(&daemon.ferry(&["get", "isvc", "lost", "-o", "json"]));
        let ready = condition(&isvc, "Ready").clone();
        async move { ready["status"] == "False" && ready["reason"] == "PoolNotFound" }
    })
    .await;

    // Deleting the pool stops its servers.
    let deleted = daemon.ferry(&["delete", "serverpool", "small"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    eventually("the pool servers stop", Duration::from_secs(30), || {
        let left = replica_pids(&daemon.dir).len();
        async move { left == 0 }
    })
    .await;
    println!(
        "pooled: {} services on 2 servers of {budget} B each ({total} B measured in all, overcommit {overcommit}%): {evictions} evictions, {loads} loads, estimate error p50 {:.1}% p95 {:.1}%",
        models.len(),
        errors[errors.len() / 2] * 100.0,
        errors[errors.len() * 95 / 100] * 100.0,
    );
}

#[test]
fn ferry_plan_measures_each_model_and_packs_them() {
    let (dir, _) = many();
    let tmp =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plan-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut manifest = pool_manifest(300 * 1024, 300);
    let names: Vec<String> = (0..20).map(|i| format!("m-{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        manifest.push_str("---\n");
        let one = pooled_manifest(name, "small", &dir.join(format!("{name}.onnx")));
        // The first three want two copies.
        let copies = if i < 3 { "    minReplicas: 2\n" } else { "" };
        manifest.push_str(&one.replace("    pool: small\n", &format!("    pool: small\n{copies}")));
    }
    // Another service, not on the pool: not planned.
    manifest.push_str("---\n");
    manifest.push_str(&manifest_of_own("own"));
    let file = tmp.join("all.yaml");
    std::fs::write(&file, &manifest).unwrap();
    let run = |extra: &[&str]| {
        let output = std::process::Command::new(FERRY)
            .args(["plan", "-f"])
            .arg(&file)
            .args(extra)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        output
    };

    let plan = json_of(&run(&["-o", "json"]));
    let models = plan["models"].as_array().unwrap();
    assert_eq!(models.len(), 20, "only the pool's services: {plan}");
    // Each measured as a pool server measures it: a fixed cost of tens of KB and more for a
    // larger file.
    let bytes = |m: &Value| m["measuredBytes"].as_u64().unwrap();
    assert!(models.iter().all(|m| bytes(m) > 20_000), "{plan}");
    let by_file = |a: &Value, b: &Value| a["fileBytes"].as_u64().cmp(&b["fileBytes"].as_u64());
    let smallest = models.iter().min_by(|a, b| by_file(a, b)).unwrap();
    let largest = models.iter().max_by(|a, b| by_file(a, b)).unwrap();
    assert!(
        bytes(largest) > bytes(smallest) + 100_000,
        "{smallest} {largest}"
    );
    // The largest is over a server's 300 KiB budget: never placed, named with the numbers.
    assert!(bytes(largest) > 300 * 1024, "{largest}");
    assert!(
        largest["servers"].as_array().unwrap().is_empty(),
        "{largest}"
    );
    assert!(
        largest["reason"].as_str().unwrap().contains("307200"),
        "{largest}"
    );
    assert!(plan["serversNeededResident"].is_null(), "{plan}");
    assert_eq!(plan["serversOnePerCopy"], 23);
    // Placed copies are on distinct servers of the two.
    for m in models {
        let on = m["servers"].as_array().unwrap();
        let distinct: std::collections::BTreeSet<&str> =
            on.iter().filter_map(Value::as_str).collect();
        assert_eq!(distinct.len(), on.len(), "{m}");
        assert!(on.len() <= m["copies"].as_u64().unwrap() as usize, "{m}");
    }

    // With room: everything on one server resident, each two-copy model on two.
    let roomy = json_of(&run(&["--memory", "8Mi", "--servers", "3", "-o", "json"]));
    assert_eq!(
        roomy["models"].as_array().unwrap().len(),
        21,
        "every service"
    );
    assert_eq!(roomy["placed"], 21, "{roomy}");
    assert_eq!(roomy["serversNeededResident"], 2, "{roomy}");
    assert_eq!(roomy["serversOnePerCopy"], 24);
    // The table says the same.
    let table = stdout(&run(&["--memory", "8Mi", "--servers", "3"]));
    assert!(
        table.contains("MEASURED") && table.contains("m-019"),
        "{table}"
    );
    assert!(
        table.contains("2 with every copy resident")
            && table.contains("24 with one server per copy"),
        "{table}"
    );

    // A pool that is not in the manifests is named.
    let missing = std::process::Command::new(FERRY)
        .args(["plan", "--pool", "nope", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("\"nope\"") && stderr(&missing).contains("small"),
        "{}",
        stderr(&missing)
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A service with a replica of its own (iris).
fn manifest_of_own(name: &str) -> String {
    manifest(name, "iris-v1.onnx", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_server_killed_under_load_fails_no_request_and_its_copies_come_back() {
    let (dir, models) = many();
    let hot: Vec<String> = models.keys().take(10).cloned().collect();
    let daemon = Daemon::start("pool-kill");
    // Room for all: every hot model has a copy on each of the two servers.
    let mut manifest = pool_manifest(64 << 20, 0);
    for name in &hot {
        let one = pooled_manifest(name, "small", &dir.join(format!("{name}.onnx")));
        manifest.push_str("---\n");
        manifest
            .push_str(&one.replace("    pool: small\n", "    pool: small\n    minReplicas: 2\n"));
    }
    daemon.apply_and_wait(&manifest);
    let both = |pool: &Value| {
        pool["status"]["models"].as_array().is_some_and(|models| {
            models.len() == hot.len()
                && models
                    .iter()
                    .all(|m| m["servers"].as_array().map_or(0, Vec::len) == 2)
        }) && pool["status"]["servers"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["registeredModels"] == hot.len()))
    };
    eventually(
        "two copies of every hot model",
        Duration::from_secs(30),
        || {
            let pool = json_of(&daemon.ferry(&["get", "serverpool", "small", "-o", "json"]));
            async move { both(&pool) }
        },
    )
    .await;

    // Load on every hot model through the router, checked answers, failures counted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (stop, router) = (stop.clone(), daemon.router.clone());
        let mine: Vec<(String, Value)> =
            hot.iter().map(|n| (n.clone(), models[n].clone())).collect();
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = worker;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (name, expected) = &mine[i % mine.len()];
                let body = serde_json::json!({ "inputs": [{ "name": "input", "datatype": "FP32",
                    "shape": [4, 4], "data": expected["input"] }] });
                let answer = client
                    .post(format!("http://{router}/v2/models/{name}/infer"))
                    .json(&body)
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap();
                        let label = v["outputs"]
                            .as_array()
                            .and_then(|o| o.iter().find(|o| o["name"] == "label"))
                            .map(|o| o["data"].clone());
                        if label.as_ref() == Some(&expected["label"]) {
                            ok += 1;
                        } else {
                            failed.push(format!("{name}: wrong answer {v}"));
                        }
                    }
                    Ok(r) => failed.push(format!(
                        "{name}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failed.push(format!("{name}: {e}")),
                }
                i += 1;
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = replica_pids(&daemon.dir)[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The supervisor restarts it empty; the pool registers the copies on it again: both
    // server processes (one of them new) hold every hot model, as each one's own index says.
    eventually(
        "the killed server is back with its copies",
        Duration::from_secs(60),
        || {
            let pids = replica_pids(&daemon.dir);
            let pool = json_of(&daemon.ferry(&["get", "serverpool", "small", "-o", "json"]));
            let https: Option<Vec<String>> = pool["status"]["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| server_http(&daemon, s["name"].as_str()?))
                .collect();
            let restarted = pids.len() == 2 && !pids.contains(&victim);
            async move {
                let Some(https) = https.filter(|h| h.len() == 2 && restarted) else {
                    return false;
                };
                let client = reqwest::Client::new();
                for http in https {
                    let url = format!("http://{http}/v2/repository/index");
                    let Ok(r) = client.post(url).json(&serde_json::json!({})).send().await else {
                        return false;
                    };
                    let index: Value = r.json().await.unwrap_or_default();
                    let held = index
                        .as_array()
                        .map_or(0, |i| i.iter().filter(|m| m["onDemand"] == true).count());
                    if held != 10 {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for worker in workers {
        let (o, f) = worker.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 200, "only {ok} requests");
    println!("pool kill -9: {ok} requests, 0 failed, copies re-placed");
}
