//! KServe's shapes as a suite (`tests/kserve/`): every manifest gives the outcome its header
//! names, in local mode (the daemon's own validation, then a real `ferry up` serving what it
//! must run) and in cluster mode (the real `ferry render`). Rendered KServe runtimes keep their
//! security context and ports.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::local::harness::*;

#[derive(Debug)]
enum Expect {
    Run,
    Render,
    Refuse(String),
}

struct Shape {
    file: String,
    text: String,
    local: Expect,
    cluster: Expect,
}

fn expectation(text: &str, mode: &str) -> Expect {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("# {mode}: ")))
        .unwrap_or_else(|| panic!("no '# {mode}:' line"));
    match line.trim() {
        "run" => Expect::Run,
        "render" => Expect::Render,
        other => Expect::Refuse(
            other
                .strip_prefix("refuse ")
                .unwrap_or_else(|| panic!("unknown expectation {other:?}"))
                .to_string(),
        ),
    }
}

fn shapes() -> Vec<Shape> {
    let dir = repo().join("tests/kserve");
    let models = repo().join("models").canonicalize().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("${MODELS}", &models.display().to_string());
            Shape {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                local: expectation(&text, "local"),
                cluster: expectation(&text, "cluster"),
                text,
            }
        })
        .collect()
}

fn render(text: &str) -> std::process::Output {
    ferry_with_stdin(&["render", "-f", "-"], &[], text)
}

/// Every document of a YAML stream, as JSON.
fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .filter_map(|d| serde_json::to_value(serde_norway::Value::deserialize(d).ok()?).ok())
        .collect()
}

/// The containers of the rendered runtime pods, by the runtime's container name.
fn runtime_containers(yaml: &str) -> Vec<Value> {
    documents(yaml)
        .into_iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c["name"] == "kserve-container")
        .collect()
}

use serde::Deserialize;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kserve_shape_gives_its_outcome_in_both_modes() {
    let shapes = shapes();
    assert!(shapes.len() >= 15, "only {} shapes", shapes.len());
    let mut to_run = Vec::new();
    for shape in &shapes {
        let file = &shape.file;
        // Local mode: the daemon's own validation.
        let local = ferry_api::parse_manifests(&shape.text, "default");
        match (&shape.local, &local) {
            (Expect::Run, Ok(manifests)) => to_run.push((file.clone(), manifests.clone())),
            (Expect::Refuse(field), Err(e)) => {
                let fields: Vec<&str> =
                    e.0.iter()
                        .flat_map(|d| &d.errors)
                        .map(|f| f.path.as_str())
                        .collect();
                assert!(
                    fields.contains(&field.as_str()),
                    "{file}: local refusal names {fields:?}, not {field}: {e}"
                );
                assert!(
                    e.0.iter()
                        .flat_map(|d| &d.errors)
                        .all(|f| !f.message.is_empty())
                );
            }
            (expect, got) => panic!("{file}: local: expected {expect:?}, got {got:?}"),
        }
        // Cluster mode: the real `ferry render`.
        let rendered = render(&shape.text);
        let (stdout, stderr) = (stdout(&rendered), stderr(&rendered));
        match &shape.cluster {
            Expect::Render | Expect::Run => {
                assert!(rendered.status.success(), "{file}: ferry render: {stderr}");
                assert!(stdout.contains("kind: Deployment"), "{file}: {stdout}");
            }
            Expect::Refuse(field) => {
                assert!(!rendered.status.success(), "{file}: rendered: {stdout}");
                assert!(stderr.contains(&format!("{field}: ")), "{file}: {stderr}");
            }
        }
        // KServe runtimes keep their own security context, and listen where KServe's do.
        if matches!(shape.cluster, Expect::Render) && shape.text.contains("ServingRuntime") {
            let containers = runtime_containers(&stdout);
            assert!(
                !containers.is_empty(),
                "{file}: no runtime container in {stdout}"
            );
            let sources = documents(&shape.text);
            for c in &containers {
                let source = sources
                    .iter()
                    .filter(|d| {
                        d["kind"]
                            .as_str()
                            .is_some_and(|k| k.ends_with("ServingRuntime"))
                    })
                    .map(|d| &d["spec"]["containers"][0])
                    .find(|s| s["image"] == c["image"])
                    .map(|s| s["securityContext"].clone())
                    .unwrap_or(Value::Null);
                if !source.is_null() {
                    assert_eq!(
                        c["securityContext"], source,
                        "{file}: the runtime's security context"
                    );
                }
                let ports: Vec<i64> = c["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["containerPort"].as_i64().unwrap())
                    .collect();
                assert!(ports.contains(&8080), "{file}: {ports:?}");
                if shape.text.contains("grpc-v2") {
                    assert!(ports.contains(&9000), "{file}: {ports:?}");
                }
                assert!(
                    !c.to_string().contains("{{"),
                    "{file}: a placeholder left: {c}"
                );
            }
        }
    }

    // What local mode must run, it runs: one daemon, each model asked through the router.
    assert!(to_run.len() >= 4, "{to_run:?}");
    let daemon = Daemon::start("kserve-shapes");
    for (file, manifests) in &to_run {
        let text = std::fs::read_to_string(repo().join("tests/kserve").join(file))
            .unwrap()
            .replace(
                "${MODELS}",
                &repo()
                    .join("models")
                    .canonicalize()
                    .unwrap()
                    .display()
                    .to_string(),
            );
        daemon.apply_and_wait(&text);
        for manifest in manifests {
            let name = manifest.isvc.metadata.name.clone().unwrap();
            let response = reqwest::Client::new()
                .post(format!("http://{}/v2/models/{name}/infer", daemon.router))
                .json(&iris_request())
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{file}: {name}");
        }
    }
}
