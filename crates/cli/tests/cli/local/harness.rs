//! Harness for local-mode tests: a real `ferry up` process on a fresh state directory (router on
//! an ephemeral loopback port), the real CLI, a real HTTP load client, and /proc to count
//! processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry_local::client::Client;
use ferry_local::paths::StateDir;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn model(file: &str) -> String {
    repo().join("models").join(file).display().to_string()
}

/// An InferenceService manifest in Ferry's form.
pub fn manifest(name: &str, model_file: &str, replicas: u32) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata:\n  name: {name}\nspec:\n  predictor:\n    model:\n      format: onnx\n      uri: {}\n    minReplicas: {replicas}\n  rollout:\n    maxSurge: 1\n    maxUnavailable: 0\n",
        model(model_file)
    )
}

/// The same in KServe's form.
pub fn kserve_manifest(name: &str, model_file: &str, replicas: u32) -> String {
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: {name}\nspec:\n  predictor:\n    minReplicas: {replicas}\n    model:\n      modelFormat:\n        name: onnx\n      storageUri: file://{}\n",
        model(model_file)
    )
}

pub struct Daemon {
    pub dir: PathBuf,
    pub child: Child,
    pub router: String,
}

impl Daemon {
    /// `ferry up` on a new state directory.
    pub fn start(test: &str) -> Daemon {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("local-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Daemon::start_in(dir)
    }

    /// `ferry up` on an existing state directory (a restart).
    pub fn start_in(dir: PathBuf) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    /// `ferry up EXTRA...` on `dir`, run from the repository root.
    pub fn start_with(dir: PathBuf, extra: &[&str]) -> Daemon {
        Daemon::start_env(dir, extra, &[])
    }

    /// As [`Daemon::start_with`], with `env` added to the daemon's (and so its replicas')
    /// environment.
    pub fn start_env(dir: PathBuf, extra: &[&str], env: &[(String, String)]) -> Daemon {
        let dirs = StateDir::new(&dir);
        let _ = std::fs::remove_file(dirs.api_file());
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .unwrap();
        let child = Command::new(FERRY)
            .args([
                "up",
                "--router-addr",
                "127.0.0.1:0",
                "--termination-grace-seconds",
                "5",
                "--restart-backoff-ms",
                "200",
            ])
            .arg("--state-dir")
            .arg(&dir)
            .args(extra)
            .current_dir(repo())
            .env("FERRY_LOG", "info,ferry_local=debug")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("ferry up starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        let router = loop {
            if let Ok(text) = std::fs::read_to_string(dirs.api_file())
                && let Ok(api) = serde_json::from_str::<Value>(&text)
            {
                break api["router"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "ferry up did not start: {}",
                std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Daemon { dir, child, router }
    }

    pub fn client(&self) -> Client {
        Client::connect(&StateDir::new(&self.dir)).unwrap()
    }

    /// Run the `ferry` CLI against this daemon.
    pub fn ferry(&self, args: &[&str]) -> Output {
        Command::new(FERRY)
            .args(args)
            .env("FERRY_STATE_DIR", &self.dir)
            .env("NO_COLOR", "1")
            .output()
            .expect("ferry runs")
    }

    /// `ferry apply -f -` with `manifest` on stdin.
    pub fn apply(&self, manifest: &str, extra: &[&str]) -> Output {
        let args: Vec<&str> = ["apply", "-f", "-"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        ferry_with_stdin(
            &args,
            &[("FERRY_STATE_DIR", self.dir.as_os_str())],
            manifest,
        )
    }

    /// Applies `manifest` with `--wait`, asserting that the rollout completes.
    pub fn apply_and_wait(&self, manifest: &str) {
        let applied = self.apply(manifest, &["--wait", "--timeout", "300"]);
        assert!(
            applied.status.success(),
            "{}{}",
            stdout(&applied),
            stderr(&applied)
        );
    }

    pub fn kill9(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the daemon drains and stops its replicas.
    pub fn stop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ferry up did not stop within 30s of SIGTERM");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        // Whatever a failed test left behind.
        for pid in replica_pids(&self.dir) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Live `ferry server` processes started for the state directory `dir`.
pub fn replica_pids(dir: &Path) -> Vec<i32> {
    ferry_local::process::replica_processes(dir)
}

/// Wait until `check` holds, or fail with `what`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn iris_request() -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]})
}

/// The iris request of [`iris_request`] as an OIP gRPC message.
pub fn iris_grpc_request() -> ferry_server::grpc::pb::ModelInferRequest {
    use ferry_server::grpc::pb::{ModelInferRequest, model_infer_request::InferInputTensor};
    ModelInferRequest {
        model_name: "iris".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            contents: Some(ferry_server::grpc::pb::InferTensorContents {
                fp32_contents: vec![5.1, 3.5, 1.4, 0.2],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One response seen by the load client.
#[derive(Debug, Clone)]
pub struct Sample {
    pub sent: Instant,
    pub status: u16,
    pub revision: String,
    #[allow(dead_code, reason = "shown by the Debug output of failures")]
    pub error: Option<String>,
}

/// A closed-loop HTTP client (`workers` concurrent requests) through the router.
pub struct Load {
    stop: Arc<AtomicBool>,
    returned: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(router: &str, model: &str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let returned = Arc::new(AtomicUsize::new(0));
        let url = format!("http://{router}/v2/models/{model}/infer");
        let tasks = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                let returned = returned.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let sample = match client.post(&url).json(&iris_request()).send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let revision = response
                                    .headers()
                                    .get("ferry-revision")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let body = response.text().await.unwrap_or_default();
                                Sample {
                                    sent,
                                    status,
                                    revision,
                                    error: (status != 200).then_some(body),
                                }
                            }
                            Err(e) => Sample {
                                sent,
                                status: 0,
                                revision: String::new(),
                                error: Some(e.to_string()),
                            },
                        };
                        samples.push(sample);
                        returned.fetch_add(1, Ordering::Relaxed);
                    }
                    samples
                })
            })
            .collect();
        Load {
            stop,
            returned,
            tasks,
        }
    }

    /// How many requests have come back so far, answered or failed.
    pub fn count(&self) -> usize {
        self.returned.load(Ordering::Relaxed)
    }

    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all
    }
}

/// Failures, and how many answers each revision gave.
pub fn summarize(samples: &[Sample]) -> (Vec<&Sample>, BTreeMap<String, usize>) {
    let failures: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    let mut by_revision = BTreeMap::new();
    for s in samples.iter().filter(|s| s.status == 200) {
        *by_revision.entry(s.revision.clone()).or_insert(0) += 1;
    }
    (failures, by_revision)
}

/// The `ferry` CLI with `input` on its stdin.
pub fn ferry_with_stdin(args: &[&str], env: &[(&str, &std::ffi::OsStr)], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(FERRY)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The replicas the control API reports for a service.
pub async fn replicas(daemon: &Daemon, name: &str) -> Vec<Value> {
    let replicas = daemon.client().replicas("default", name).await.unwrap();
    replicas
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

pub fn revision_of(output: &Output) -> String {
    let text = stdout(output);
    text.split("(revision ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no revision in {text:?}"))
        .to_string()
}

/// Held by the tests that load every core on purpose (the browser run, the trace tests' Jaeger)
/// and by those whose verdict depends on the CPU they get (fair sharing, the autoscaler's
/// reaction to a spike): they never overlap.
pub static CPU_HUNGRY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
