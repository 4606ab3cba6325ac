//! The replica supervisor: one task per replica owns its process from start (or adoption after
//! a daemon crash) to stop. It probes readiness (OIP model-ready) and liveness, restarts exits
//! with exponential back-off and reports what it sees; the reconciler reads those observations.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::ReplicaHealth;
use ferry_core::routes::Addresses;
use ferry_router::InFlight;
use nix::sys::signal::Signal;
use tokio::sync::{Notify, watch};

use crate::paths::{Protocol, StateDir};
use crate::process::{self, ENV_REPLICA_ID, ENV_STATE_DIR};
use crate::store::{ReplicaRow, Store};

/// Timings of the supervisor (tests shorten them).
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Probe period while a replica is not ready yet.
    pub startup_probe_period: Duration,
    /// Probe period once ready.
    pub probe_period: Duration,
    /// Consecutive failed liveness probes before the replica is restarted.
    pub liveness_failures: u32,
    /// First restart delay; doubles per restart up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// SIGTERM → SIGKILL.
    pub termination_grace: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            startup_probe_period: Duration::from_millis(25),
            probe_period: Duration::from_secs(1),
            liveness_failures: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            termination_grace: Duration::from_secs(30),
        }
    }
}

/// What a replica runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSpec {
    pub model_name: String,
    pub model_uri: String,
    pub compute_threads: Option<u32>,
    /// A pool server's memory budget: then it has no model of its own (`model_name` is
    /// empty) and is ready when the server is.
    pub memory_budget: Option<u64>,
}

/// What the supervisor last saw of one replica.
#[derive(Debug, Clone)]
pub struct ProcessState {
    pub health: ReplicaHealth,
    /// Where it listens, while it runs.
    pub addrs: Option<Addresses>,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
}

struct Handle {
    observed: Arc<Mutex<ProcessState>>,
    stop: watch::Sender<bool>,
}

struct Ctx {
    store: Arc<Store>,
    dirs: StateDir,
    program: PathBuf,
    http: reqwest::Client,
    inflight: InFlight,
    changed: Arc<Notify>,
    config: SupervisorConfig,
    handles: Mutex<HashMap<String, Handle>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Runs and watches every replica process.
#[derive(Clone)]
pub struct Supervisor {
    ctx: Arc<Ctx>,
}

impl Supervisor {
    pub fn new(
        store: Arc<Store>,
        dirs: StateDir,
        program: PathBuf,
        inflight: InFlight,
        changed: Arc<Notify>,
        config: SupervisorConfig,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("HTTP client");
        Supervisor {
            ctx: Arc::new(Ctx {
                store,
                dirs,
                program,
                http,
                inflight,
                changed,
                config,
                handles: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Run (or adopt, when `row.pid` is still the same live process) the replica `row`.
    pub fn run(&self, row: ReplicaRow, spec: ReplicaSpec) {
        let mut handles = self.ctx.handles.lock().expect("handles poisoned");
        if handles.contains_key(&row.id) {
            return;
        }
        let observed = Arc::new(Mutex::new(ProcessState {
            health: ReplicaHealth::Starting { for_seconds: 0 },
            addrs: None,
            pid: None,
            restarts: 0,
            last_exit: None,
        }));
        let (stop_tx, stop_rx) = watch::channel(row.terminating);
        handles.insert(
            row.id.clone(),
            Handle {
                observed: observed.clone(),
                stop: stop_tx,
            },
        );
        let ctx = self.ctx.clone();
        let task =
            tokio::spawn(async move { replica_task(ctx, row, spec, observed, stop_rx).await });
        self.ctx.tasks.lock().expect("tasks poisoned").push(task);
    }

    /// Drain and stop a replica (its row is already marked terminating and it has left the
    /// route table); its task removes the row when the process is gone.
    pub fn stop(&self, id: &str) {
        if let Some(handle) = self.ctx.handles.lock().expect("handles poisoned").get(id) {
            let _ = handle.stop.send(true);
        }
    }

    /// Observations of every replica the supervisor runs.
    pub fn observed(&self) -> HashMap<String, ProcessState> {
        self.ctx
            .handles
            .lock()
            .expect("handles poisoned")
            .iter()
            .map(|(id, h)| {
                (
                    id.clone(),
                    h.observed.lock().expect("observed poisoned").clone(),
                )
            })
            .collect()
    }

    /// Stop every replica and wait until all processes are gone.
    pub async fn stop_all(&self) {
        for handle in self.ctx.handles.lock().expect("handles poisoned").values() {
            let _ = handle.stop.send(true);
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.ctx.tasks.lock().expect("tasks poisoned"));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Kill process groups of replicas of this state directory that no row describes.
    pub fn kill_leftovers(&self, owned: &std::collections::HashSet<i32>) -> usize {
        let found = process::leftovers(&self.ctx.dirs.root, owned);
        for pid in &found {
            tracing::warn!(pid, "killing a leftover replica of a crashed run");
            process::signal_group(*pid, Signal::SIGKILL);
        }
        found.len()
    }
}

/// The process of a replica: our child, or one adopted after a daemon restart.
enum Proc {
    Child(tokio::process::Child, i32),
    Adopted { pid: i32, start_time: u64 },
}

impl Proc {
    fn pid(&self) -> i32 {
        match self {
            Proc::Child(_, pid) | Proc::Adopted { pid, .. } => *pid,
        }
    }

    /// Wait for the end of the process; cancel-safe.
    async fn wait(&mut self) -> String {
        match self {
            Proc::Child(child, _) => match child.wait().await {
                Ok(status) => process::describe_exit(status),
                Err(e) => format!("wait failed: {e}"),
            },
            Proc::Adopted { pid, start_time } => loop {
                if !process::alive(*pid, *start_time) {
                    return "exited (adopted process: exit status unknown)".to_string();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
        }
    }
}

fn set(observed: &Mutex<ProcessState>, changed: &Notify, update: impl FnOnce(&mut ProcessState)) {
    update(&mut observed.lock().expect("observed poisoned"));
    changed.notify_one();
}

async fn replica_task(
    ctx: Arc<Ctx>,
    row: ReplicaRow,
    spec: ReplicaSpec,
    observed: Arc<Mutex<ProcessState>>,
    mut stop: watch::Receiver<bool>,
) {
    let id = row.id.clone();
    let mut adopted = adoptable(&ctx, &row).await;
    let mut restarts: u32 = 0;
    loop {
        let (mut proc, addrs) = match adopted.take() {
            Some(found) => {
                tracing::info!(replica = %id, pid = found.0.pid(), "adopted a running replica");
                found
            }
            None if *stop.borrow() => {
                finish(&ctx, &id, None).await;
                return;
            }
            None => match launch(&ctx, &id, &spec).await {
                Ok(started) => started,
                Err(reason) => {
                    restarts += 1;
                    if !crash_wait(&ctx, &observed, &mut stop, restarts, reason).await {
                        finish(&ctx, &id, None).await;
                        return;
                    }
                    continue;
                }
            },
        };
        let started = Instant::now();
        set(&observed, &ctx.changed, |o| {
            o.health = ReplicaHealth::Starting { for_seconds: 0 };
            o.addrs = Some(addrs.clone());
            o.pid = Some(proc.pid());
        });
        let mut failed_liveness = 0;
        let mut ready_since: Option<Instant> = None;
        let exit = loop {
            let period = if ready_since.is_some() {
                ctx.config.probe_period
            } else {
                ctx.config.startup_probe_period
            };
            let stopping = tokio::select! {
                exit = proc.wait() => break exit,
                _ = stop.wait_for(|s| *s) => true,
                _ = tokio::time::sleep(period) => false,
            };
            if stopping {
                finish(&ctx, &id, Some(&mut proc)).await;
                return;
            }
            let seconds = started.elapsed().as_secs();
            match probe(&ctx.http, addrs.http, &spec.model_name).await {
                Probe::Ready => {
                    failed_liveness = 0;
                    if ready_since.is_none() {
                        tracing::info!(replica = %id, ready_after_ms = started.elapsed().as_millis() as u64, "replica ready");
                        ready_since = Some(Instant::now());
                        set(&observed, &ctx.changed, |o| o.health = ReplicaHealth::Ready);
                    }
                }
                Probe::NotReady(reason) => {
                    failed_liveness = 0;
                    ready_since = None;
                    let health = match reason {
                        Some(reason) => ReplicaHealth::ModelNotReady {
                            reason,
                            for_seconds: seconds,
                        },
                        None => ReplicaHealth::Starting {
                            for_seconds: seconds,
                        },
                    };
                    set(&observed, &ctx.changed, |o| o.health = health);
                }
                Probe::Dead(why) => {
                    failed_liveness += 1;
                    ready_since = None;
                    set(&observed, &ctx.changed, |o| {
                        o.health = ReplicaHealth::Starting {
                            for_seconds: seconds,
                        }
                    });
                    if failed_liveness >= ctx.config.liveness_failures {
                        tracing::warn!(replica = %id, reason = %why, "liveness probe failed: restarting");
                        process::signal_group(proc.pid(), Signal::SIGKILL);
                        let _ = proc.wait().await;
                        break format!("liveness probe failed {failed_liveness} times: {why}");
                    }
                }
            }
        };
        let last = process::last_lines(&ctx.dirs.log_of(&id), 1).pop();
        let reason = match last {
            Some(line) if !exit.starts_with("liveness") => format!("{exit}: {line}"),
            _ => exit,
        };
        tracing::warn!(replica = %id, reason = %reason, "replica exited");
        // A replica that served for a while starts its back-off afresh.
        if ready_since.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
            restarts = 0;
        }
        restarts += 1;
        if !crash_wait(&ctx, &observed, &mut stop, restarts, reason).await {
            finish(&ctx, &id, None).await;
            return;
        }
    }
}

/// Record a crash and wait out the back-off; `false` when asked to stop meanwhile.
async fn crash_wait(
    ctx: &Ctx,
    observed: &Mutex<ProcessState>,
    stop: &mut watch::Receiver<bool>,
    restarts: u32,
    reason: String,
) -> bool {
    let total = observed.lock().expect("observed poisoned").restarts + 1;
    set(observed, &ctx.changed, |o| {
        o.health = ReplicaHealth::CrashLoop {
            restarts: total,
            last_exit: reason.clone(),
        };
        o.restarts = total;
        o.last_exit = Some(reason);
        o.addrs = None;
        o.pid = None;
    });
    let factor = 2u32.saturating_pow(restarts.saturating_sub(1).min(16));
    let delay = ctx
        .config
        .backoff_base
        .saturating_mul(factor)
        .min(ctx.config.backoff_max);
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// A replica process that outlived the previous daemon: adopt it when it is still the same
/// process (pid + start time) and its addresses are known (from the store, or from the address
/// file it wrote after the daemon died); a live process that cannot be adopted is killed, so a
/// relaunch never leaves an orphan.
async fn adoptable(ctx: &Ctx, row: &ReplicaRow) -> Option<(Proc, Addresses)> {
    let (pid, start_time) = (row.pid?, row.start_time?);
    if !process::alive(pid, start_time) {
        return None;
    }
    let from_row = || -> Option<(SocketAddr, SocketAddr)> {
        Some((
            row.http_addr.as_deref()?.parse().ok()?,
            row.grpc_addr.as_deref()?.parse().ok()?,
        ))
    };
    match from_row().or_else(|| read_addr_file(&ctx.dirs.addr_file_of(&row.id))) {
        Some((http, grpc)) => {
            let _ = ctx.store.set_replica_process(
                &row.id,
                Some(pid),
                Some(start_time),
                Some((&http.to_string(), &grpc.to_string())),
            );
            // It was started with Unix sockets when their files are there.
            let socket = |protocol| ctx.dirs.socket_of(&row.id, protocol).filter(|p| p.exists());
            Some((
                Proc::Adopted { pid, start_time },
                Addresses {
                    http,
                    grpc,
                    http_unix: socket(Protocol::Http),
                    grpc_unix: socket(Protocol::Grpc),
                },
            ))
        }
        None => {
            tracing::warn!(replica = %row.id, pid, "a replica of the previous run never reported its addresses: killing it");
            process::signal_group(pid, Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while process::alive(pid, start_time) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        }
    }
}

fn read_addr_file(path: &Path) -> Option<(SocketAddr, SocketAddr)> {
    let text = std::fs::read_to_string(path).ok()?;
    let addrs: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        addrs["http"].as_str()?.parse().ok()?,
        addrs["grpc"].as_str()?.parse().ok()?,
    ))
}

/// Start the replica's process; returns once it listens.
async fn launch(ctx: &Ctx, id: &str, spec: &ReplicaSpec) -> Result<(Proc, Addresses), String> {
    let addr_file = ctx.dirs.addr_file_of(id);
    let _ = std::fs::remove_file(&addr_file);
    let http_unix = ctx.dirs.prepare_socket(id, Protocol::Http);
    let grpc_unix = ctx.dirs.prepare_socket(id, Protocol::Grpc);
    let mut args = match spec.memory_budget {
        Some(budget) => ferry_core::runtime::pool_server_args(budget, spec.compute_threads),
        None => ferry_core::runtime::server_args(
            &spec.model_name,
            &spec.model_uri,
            spec.compute_threads,
        ),
    };
    args.extend([
        "--http-addr".to_string(),
        "127.0.0.1:0".to_string(),
        "--grpc-addr".to_string(),
        "127.0.0.1:0".to_string(),
        "--addr-file".to_string(),
        addr_file.display().to_string(),
        "--shutdown-grace-seconds".to_string(),
        ctx.config.termination_grace.as_secs().max(1).to_string(),
    ]);
    for (flag, socket) in [("--http-unix", &http_unix), ("--grpc-unix", &grpc_unix)] {
        if let Some(socket) = socket {
            args.extend([flag.to_string(), socket.display().to_string()]);
        }
    }
    // Every replica shares the state dir's model cache: a restart or a second replica of a
    // model fetched from a store downloads nothing. (The store's credentials come from this
    // daemon's environment, which replicas inherit.)
    args.extend([
        "--model-cache".to_string(),
        ctx.dirs.root.join("model-cache").display().to_string(),
    ]);
    let env = [
        (ENV_STATE_DIR, ctx.dirs.root.display().to_string()),
        (ENV_REPLICA_ID, id.to_string()),
        (
            "FERRY_LOG",
            std::env::var("FERRY_REPLICA_LOG").unwrap_or_else(|_| "info".into()),
        ),
        ("NO_COLOR", "1".to_string()),
    ];
    let log = ctx.dirs.log_of(id);
    let spawned = process::spawn(&ctx.program, &args, &env, &log)
        .map_err(|e| format!("cannot start {}: {e}", ctx.program.display()))?;
    // Persist the identity first: a daemon crash from here on finds and adopts (or kills) it.
    ctx.store
        .set_replica_process(id, Some(spawned.pid), spawned.start_time, None)
        .map_err(|e| e.to_string())?;
    let mut child = spawned.child;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The server writes the file once every listener, sockets included, is bound.
        if let Some((http, grpc)) = read_addr_file(&addr_file) {
            ctx.store
                .set_replica_process(
                    id,
                    Some(spawned.pid),
                    spawned.start_time,
                    Some((&http.to_string(), &grpc.to_string())),
                )
                .map_err(|e| e.to_string())?;
            return Ok((
                Proc::Child(child, spawned.pid),
                Addresses {
                    http,
                    grpc,
                    http_unix,
                    grpc_unix,
                },
            ));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let last = process::last_lines(&log, 1).pop().unwrap_or_default();
            return Err(format!("{}: {last}", process::describe_exit(status)));
        }
        if Instant::now() > deadline {
            process::signal_group(spawned.pid, Signal::SIGKILL);
            let _ = child.wait().await;
            return Err("did not listen within 30s".to_string());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

enum Probe {
    Ready,
    /// Up, model not ready; the server's reason when it gave one (the model failed).
    NotReady(Option<String>),
    /// No answer at all.
    Dead(String),
}

async fn probe(client: &reqwest::Client, http: SocketAddr, model: &str) -> Probe {
    // A pool server (no model of its own) is ready when the server is.
    let path = if model.is_empty() {
        "/v2/health/ready".to_string()
    } else {
        format!("/v2/models/{model}/ready")
    };
    match client.get(format!("http://{http}{path}")).send().await {
        Ok(response) if response.status().is_success() => Probe::Ready,
        Ok(response) => {
            // LOADING is progress; UNAVAILABLE / UNLOADED carry the server's reason.
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let failed = matches!(body["state"].as_str(), Some("UNAVAILABLE" | "UNLOADED"));
            let reason = body["reason"]
                .as_str()
                .or(body["error"].as_str())
                .unwrap_or("not ready");
            Probe::NotReady(
                failed
                    .then(|| format!("model {}: {reason}", body["state"].as_str().unwrap_or("?"))),
            )
        }
        Err(e) => Probe::Dead(e.to_string()),
    }
}

/// Drain (wait for the router's outstanding requests), SIGTERM, SIGKILL after the grace, then
/// forget the replica.
async fn finish(ctx: &Ctx, id: &str, proc: Option<&mut Proc>) {
    if let Some(proc) = proc {
        // Requests that picked this backend from the previous table are counted by now.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let deadline = Instant::now() + ctx.config.termination_grace;
        while ctx.inflight.outstanding(id) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pid = proc.pid();
        process::signal_group(pid, Signal::SIGTERM);
        if tokio::time::timeout(ctx.config.termination_grace, proc.wait())
            .await
            .is_err()
        {
            tracing::warn!(replica = %id, pid, "did not stop within the grace period: SIGKILL");
            process::signal_group(pid, Signal::SIGKILL);
            let _ = proc.wait().await;
        }
    }
    let _ = std::fs::remove_file(ctx.dirs.addr_file_of(id));
    for protocol in [Protocol::Http, Protocol::Grpc] {
        if let Some(socket) = ctx.dirs.socket_of(id, protocol) {
            let _ = std::fs::remove_file(socket);
        }
    }
    if let Err(e) = ctx.store.delete_replica(id) {
        tracing::error!(replica = %id, error = %e, "cannot forget a stopped replica");
    }
    ctx.handles.lock().expect("handles poisoned").remove(id);
    ctx.changed.notify_one();
    tracing::info!(replica = %id, "replica stopped");
}

/// Path of the program replicas run: this very binary.
pub fn current_program() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| Path::new("ferry").to_path_buf())
}
