//! The test bed's process-node agent: a small kubelet for processes.
//!
//! It registers its Node (label `ferry.dev/process-node=true`), keeps it Ready and renews its
//! Lease in `kube-node-lease`; for every pod bound to it, allocates a loopback pod IP from
//! 127.2.N.0/24, runs each container's command as a local process (the image `ferry` maps to the
//! workspace's `ferry` binary) with kubelet's environment and `$(VAR)` expansion, runs the
//! pod's real startup/readiness/liveness probes against the pod IP, reports status, restarts per
//! restartPolicy with back-off, and deletes gracefully. Processes of an earlier run of the same
//! node are killed at start; none survive the agent's shutdown.
//!
//! Not shipped: a workspace member under testbed/ for tests only.

mod container;
mod env;
mod pod;
mod serviceaccount;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::sync::watch;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Node name.
    #[arg(long, default_value = "process-0")]
    node: String,
    /// Pod IPs are 127.2.INDEX.2 ... 127.2.INDEX.254.
    #[arg(long, default_value_t = 0)]
    index: u8,
    /// The `ferry` binary that the image `ferry` stands for.
    #[arg(long)]
    ferry_bin: PathBuf,
    /// Directory for container logs.
    #[arg(long)]
    logs: PathBuf,
    /// Directory for per-pod files (projected ServiceAccount credentials).
    #[arg(long)]
    pods_dir: PathBuf,
    /// The cluster CA, handed to pods as `ca.crt`.
    #[arg(long)]
    ca_file: PathBuf,
}

const FIELD_MANAGER: &str = "ferry-testbed-agent";

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    std::fs::create_dir_all(&args.logs)?;
    kill_leftovers(&args.node);
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let apiserver = (
        config.cluster_url.host().unwrap_or("127.0.0.1").to_string(),
        config.cluster_url.port_u16().unwrap_or(6443),
    );
    let client = Client::try_from(config)?;
    register(&client, &args.node)
        .await
        .context("register the node")?;
    tokio::spawn(heartbeat(client.clone(), args.node.clone()));

    let ctx = Arc::new(pod::Ctx {
        client: client.clone(),
        node: args.node.clone(),
        ferry_bin: std::fs::canonicalize(&args.ferry_bin).context("--ferry-bin")?,
        logs: args.logs.clone(),
        pods_dir: args.pods_dir.clone(),
        ca_file: args.ca_file.clone(),
        apiserver,
    });
    let pods: Api<Pod> = Api::all(client.clone());
    let selector = ListParams::default().fields(&format!("spec.nodeName={}", args.node));
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut free: BTreeSet<u8> = (2..=254).collect();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(node = %args.node, "process node ready");
    loop {
        match pods.list(&selector).await {
            Ok(list) => {
                let mut seen = BTreeSet::new();
                for pod in list.items {
                    let Some(uid) = pod.metadata.uid.clone() else {
                        continue;
                    };
                    seen.insert(uid.clone());
                    if let Some(worker) = workers.get(&uid) {
                        let _ = worker.updates.send(pod);
                        continue;
                    }
                    if pod.metadata.deletion_timestamp.is_some()
                        && pod
                            .status
                            .as_ref()
                            .and_then(|s| s.pod_ip.as_ref())
                            .is_none()
                    {
                        // Never started here: nothing to stop, finish the deletion.
                        let api: Api<Pod> = Api::namespaced(
                            client.clone(),
                            pod.metadata.namespace.as_deref().unwrap_or("default"),
                        );
                        let _ = api
                            .delete(
                                pod.metadata.name.as_deref().unwrap_or(""),
                                &kube::api::DeleteParams::default().grace_period(0),
                            )
                            .await;
                        continue;
                    }
                    let Some(octet) = free.pop_first() else {
                        tracing::error!("no pod IP left on this node");
                        continue;
                    };
                    let ip = format!("127.2.{}.{octet}", args.index);
                    let (updates, updates_rx) = watch::channel(pod);
                    let (gone, gone_rx) = watch::channel(false);
                    let task = tokio::spawn(pod::run(ctx.clone(), ip, updates_rx, gone_rx));
                    workers.insert(
                        uid,
                        Worker {
                            updates,
                            gone,
                            task,
                            octet,
                        },
                    );
                }
                // Finished workers give their IP back; pods that vanished are stopped.
                let mut done = Vec::new();
                for (uid, worker) in &workers {
                    if !seen.contains(uid) {
                        let _ = worker.gone.send(true);
                    }
                    if worker.task.is_finished() {
                        done.push(uid.clone());
                    }
                }
                for uid in done {
                    if let Some(worker) = workers.remove(&uid) {
                        free.insert(worker.octet);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing pods failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping every pod process");
    for worker in workers.values() {
        let _ = worker.gone.send(true);
    }
    for (_, worker) in workers {
        let _ = worker.task.await;
    }
    Ok(())
}

struct Worker {
    updates: watch::Sender<Pod>,
    gone: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    octet: u8,
}

/// Kill process groups an earlier run of this node left behind (found by their environment).
fn kill_leftovers(node: &str) {
    let wanted = format!("FERRY_TESTBED_NODE={node}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes()) {
            tracing::warn!(pid, "killing a pod process of an earlier run of this node");
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn node_status() -> serde_json::Value {
    let now = container::now();
    let condition = |type_: &str, status: &str, reason: &str| json!({"type": type_, "status": status, "reason": reason, "message": "ferry test bed process node", "lastHeartbeatTime": now, "lastTransitionTime": now});
    json!({
        "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
        "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "localhost"}],
        "conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "nodeInfo": {
            "architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "v1.34.4-ferry-process",
            "kubeProxyVersion": "", "containerRuntimeVersion": "process://", "kernelVersion": "", "osImage": "",
            "machineID": "", "systemUUID": "", "bootID": ""
        }
    })
}

async fn register(client: &Client, node: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let object = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": {
                "ferry.dev/process-node": "true",
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64"
            }
        }
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    nodes.patch(node, &params, &Patch::Apply(&object)).await?;
    nodes
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": node_status()})),
        )
        .await?;
    Ok(())
}

/// Renew the node's Lease every 10 s and refresh its Ready condition every 20 s.
async fn heartbeat(client: Client, node: String) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut beat: u64 = 0;
    loop {
        let now = k8s_openapi::jiff::Timestamp::now();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}
        });
        if let Err(e) = leases
            .patch(
                &node,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            tracing::warn!(error = %e, "lease renewal failed");
        }
        if beat % 2 == 1 {
            let _ = nodes
                .patch_status(
                    &node,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": node_status()})),
                )
                .await;
        }
        beat += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
