//! One container as a local process: start, probe (startup, readiness, liveness: httpGet and
//! tcpSocket against the pod IP), restart per the pod's restartPolicy with back-off, stop with
//! SIGTERM → grace → SIGKILL. What it sees is published as a `ContainerView`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{Notify, watch};

/// What the agent reports of a container.
#[derive(Debug, Clone, Default)]
pub struct ContainerView {
    pub running_since: Option<String>,
    pub waiting: Option<(String, String)>,
    pub terminated: Option<Terminated>,
    pub last_terminated: Option<Terminated>,
    pub restarts: i32,
    pub started: bool,
    pub ready: bool,
    pub pid: Option<i32>,
}

#[derive(Debug, Clone)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub started_at: String,
    pub finished_at: String,
}

/// How to run a container.
pub struct Launch {
    pub container: Container,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub log: PathBuf,
    pub pod_ip: String,
    pub restart_policy: String,
    pub grace: Duration,
    pub node: String,
}

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn update(view: &Mutex<ContainerView>, changed: &Notify, f: impl FnOnce(&mut ContainerView)) {
    f(&mut view.lock().expect("view poisoned"));
    changed.notify_one();
}

/// Run the container until `stop` turns true; then stop its process.
pub async fn run(
    launch: Launch,
    view: Arc<Mutex<ContainerView>>,
    changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("HTTP client");
    let mut failures_in_a_row: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let started_at = now();
        let mut child = match spawn(&launch) {
            Ok(child) => child,
            Err(e) => {
                update(&view, &changed, |v| {
                    v.waiting = Some(("RunContainerError".into(), e.to_string()))
                });
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let pid = child.id().map(|p| p as i32);
        update(&view, &changed, |v| {
            v.running_since = Some(started_at.clone());
            v.waiting = None;
            v.terminated = None;
            v.started = launch.container.startup_probe.is_none();
            v.ready = false;
            v.pid = pid;
        });
        let spawned = Instant::now();
        let mut prober = Prober::new(&launch);
        let outcome = loop {
            let stopping = tokio::select! {
                status = child.wait() => break Exit::Exited(status.ok()),
                _ = stop.changed() => true,
                _ = tokio::time::sleep(Duration::from_millis(100)) => false,
            };
            if stopping {
                break Exit::Stopped;
            }
            match prober.tick(&http, spawned).await {
                ProbeOutcome::Nothing => {}
                ProbeOutcome::Started => update(&view, &changed, |v| v.started = true),
                ProbeOutcome::Ready(ready) => update(&view, &changed, |v| v.ready = ready),
                ProbeOutcome::Kill(why) => break Exit::Unhealthy(why),
            }
        };
        let (code, reason, message) = match outcome {
            Exit::Stopped => {
                terminate(pid, &mut child, launch.grace).await;
                return;
            }
            Exit::Unhealthy(why) => {
                terminate(pid, &mut child, launch.grace).await;
                tracing::warn!(container = %launch.container.name, %why, "liveness/startup probe failed: restarting");
                (137, "Error".to_string(), why)
            }
            Exit::Exited(status) => {
                let (code, reason, mut message) = describe(status);
                // The kubelet's FallbackToLogsOnError: a failed container's message is the tail
                // of its log (no termination-message file exists here).
                if code != 0
                    && launch.container.termination_message_policy.as_deref()
                        == Some("FallbackToLogsOnError")
                {
                    message = log_tail(&launch.log, 2048).unwrap_or(message);
                }
                (code, reason, message)
            }
        };
        let terminated = Terminated {
            exit_code: code,
            reason,
            message,
            started_at,
            finished_at: now(),
        };
        let restart = match launch.restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if !restart {
            update(&view, &changed, |v| {
                v.running_since = None;
                v.ready = false;
                v.pid = None;
                v.terminated = Some(terminated);
            });
            let _ = stop.wait_for(|s| *s).await;
            return;
        }
        failures_in_a_row = if spawned.elapsed() > Duration::from_secs(60) {
            1
        } else {
            failures_in_a_row + 1
        };
        // Kubelet-like back-off, shortened for the test bed: at once, then 1 s doubling to 30 s.
        let delay = if failures_in_a_row <= 1 {
            Duration::ZERO
        } else {
            Duration::from_secs(1 << (failures_in_a_row - 2).min(5)).min(Duration::from_secs(30))
        };
        update(&view, &changed, |v| {
            v.running_since = None;
            v.ready = false;
            v.started = false;
            v.pid = None;
            v.restarts += 1;
            v.last_terminated = Some(terminated);
            if !delay.is_zero() {
                v.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container {}",
                        delay.as_secs(),
                        launch.container.name
                    ),
                ));
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

enum Exit {
    Exited(Option<std::process::ExitStatus>),
    Unhealthy(String),
    Stopped,
}

/// The last `max` bytes of a log file, from a line start.
fn log_tail(path: &std::path::Path, max: usize) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let start = bytes.len().saturating_sub(max);
    let mut tail = &bytes[start..];
    if start > 0
        && let Some(newline) = tail.iter().position(|b| *b == b'\n')
    {
        tail = &tail[newline + 1..];
    }
    let text = String::from_utf8_lossy(tail).trim_end().to_string();
    (!text.is_empty()).then_some(text)
}

fn describe(status: Option<std::process::ExitStatus>) -> (i32, String, String) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) if s.code() == Some(0) => (0, "Completed".into(), String::new()),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code, "Error".into(), format!("exit code {code}")),
            (None, Some(signal)) => (
                128 + signal,
                "Error".into(),
                format!("killed by signal {signal}"),
            ),
            _ => (1, "Error".into(), String::new()),
        },
        None => (1, "Error".into(), "wait failed".into()),
    }
}

fn spawn(launch: &Launch) -> std::io::Result<tokio::process::Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)?;
    let err = out.try_clone()?;
    let mut command = tokio::process::Command::new(&launch.program);
    command
        .args(&launch.args)
        .env_clear()
        .envs(&launch.env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FERRY_TESTBED_NODE", &launch.node)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &launch.container.working_dir {
        command.current_dir(dir);
    }
    command.spawn()
}

/// SIGTERM to the process group, SIGKILL after `grace`.
async fn terminate(pid: Option<i32>, child: &mut tokio::process::Child, grace: Duration) {
    let Some(pid) = pid else { return };
    let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

enum ProbeOutcome {
    Nothing,
    Started,
    Ready(bool),
    Kill(String),
}

struct ProbeState {
    probe: Probe,
    next: Instant,
    successes: i32,
    failures: i32,
}

impl ProbeState {
    fn new(probe: &Probe, spawned: Instant) -> Self {
        ProbeState {
            probe: probe.clone(),
            next: spawned
                + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            successes: 0,
            failures: 0,
        }
    }
    fn period(&self) -> Duration {
        Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64)
    }
}

struct Prober {
    pod_ip: String,
    ports: BTreeMap<String, i32>,
    startup: Option<ProbeState>,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    started: bool,
    ready: bool,
}

impl Prober {
    fn new(launch: &Launch) -> Self {
        let now = Instant::now();
        let c = &launch.container;
        Prober {
            pod_ip: launch.pod_ip.clone(),
            ports: c
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Some((p.name.clone()?, p.container_port)))
                .collect(),
            startup: c.startup_probe.as_ref().map(|p| ProbeState::new(p, now)),
            readiness: c.readiness_probe.as_ref().map(|p| ProbeState::new(p, now)),
            liveness: c.liveness_probe.as_ref().map(|p| ProbeState::new(p, now)),
            started: c.startup_probe.is_none(),
            ready: false,
        }
    }

    async fn tick(&mut self, http: &reqwest::Client, _spawned: Instant) -> ProbeOutcome {
        let now = Instant::now();
        if !self.started {
            let Some(state) = self.startup.as_mut() else {
                return ProbeOutcome::Nothing;
            };
            if now < state.next {
                return ProbeOutcome::Nothing;
            }
            state.next = now + state.period();
            let result = check(http, &state.probe, &self.pod_ip, &self.ports).await;
            match result {
                Ok(()) => {
                    self.started = true;
                    return ProbeOutcome::Started;
                }
                Err(e) => {
                    state.failures += 1;
                    if state.failures >= state.probe.failure_threshold.unwrap_or(3) {
                        return ProbeOutcome::Kill(format!("startup probe failed: {e}"));
                    }
                    return ProbeOutcome::Nothing;
                }
            }
        }
        if let Some(state) = self.liveness.as_mut()
            && now >= state.next
        {
            state.next = now + state.period();
            match check(http, &state.probe, &self.pod_ip, &self.ports).await {
                Ok(()) => state.failures = 0,
                Err(e) => {
                    state.failures += 1;
                    if state.failures >= state.probe.failure_threshold.unwrap_or(3) {
                        return ProbeOutcome::Kill(format!("liveness probe failed: {e}"));
                    }
                }
            }
        }
        match self.readiness.as_mut() {
            None => {
                if !self.ready {
                    self.ready = true;
                    return ProbeOutcome::Ready(true);
                }
            }
            Some(state) if now >= state.next => {
                state.next = now + state.period();
                let ok = check(http, &state.probe, &self.pod_ip, &self.ports)
                    .await
                    .is_ok();
                if ok {
                    state.successes += 1;
                    state.failures = 0;
                } else {
                    state.failures += 1;
                    state.successes = 0;
                }
                let ready = if ok {
                    self.ready || state.successes >= state.probe.success_threshold.unwrap_or(1)
                } else {
                    self.ready && state.failures < state.probe.failure_threshold.unwrap_or(3)
                };
                if ready != self.ready {
                    self.ready = ready;
                    return ProbeOutcome::Ready(ready);
                }
            }
            Some(_) => {}
        }
        ProbeOutcome::Nothing
    }
}

fn port(value: &IntOrString, ports: &BTreeMap<String, i32>) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(name) => ports
            .get(name)
            .copied()
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

async fn check(
    http: &reqwest::Client,
    probe: &Probe,
    pod_ip: &str,
    ports: &BTreeMap<String, i32>,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(get) = &probe.http_get {
        let host = get.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let port = port(&get.port, ports)?;
        let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        let path = get.path.clone().unwrap_or_else(|| "/".into());
        let url = format!("{scheme}://{host}:{port}{path}");
        let response = http
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        return if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("GET {url}: HTTP {status}"))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let port = port(&tcp.port, ports)?;
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port as u16)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect {host}:{port}: {e}")),
            Err(_) => Err(format!("connect {host}:{port}: timed out")),
        };
    }
    if let Some(grpc) = &probe.grpc {
        // The OIP server's readiness over gRPC: a plain connect to the port (no grpc.health.v1).
        let addr = format!("{pod_ip}:{}", grpc.port);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!("gRPC port {addr} not reachable")),
        };
    }
    Err("only httpGet, tcpSocket and grpc probes are supported on process nodes".into())
}
