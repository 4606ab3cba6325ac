//! One pod on the process node: a loopback IP, one process per container, status reported to the
//! apiserver, graceful deletion (SIGTERM, grace period, SIGKILL, then the final delete).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::container::{self, ContainerView, Launch, now};
use crate::env::{PodFacts, environment, expand};

/// What every pod worker shares.
pub struct Ctx {
    pub client: kube::Client,
    pub node: String,
    pub ferry_bin: PathBuf,
    pub logs: PathBuf,
    pub pods_dir: PathBuf,
    pub ca_file: PathBuf,
    pub apiserver: (String, u16),
}

/// The image name without registry and tag: `ghcr.io/x/ferry:1.2` → `ferry`.
fn image_name(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(['@', ':']).next().unwrap_or(last)
}

/// Program and arguments of a container: the image `ferry` (any registry; tag `latest` or the
/// workspace's version) is the workspace's `ferry` binary; its entrypoint is the binary itself.
/// The directories `container`'s volume mounts bind: an emptyDir is a directory of the pod's
/// own (removed with the pod's directory), a hostPath the node's path (created for
/// `DirectoryOrCreate`), a Secret a directory of the pod's holding a file per key (or per
/// `items` entry), written once when the pod starts (text Secrets: certificates, keys).
/// Other volume kinds are not mounted on a process node.
fn volume_binds(
    ctx: &Ctx,
    uid: &str,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    container: &Container,
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Vec<(PathBuf, String)>, String> {
    let mut binds = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(volume) = spec.volumes.iter().flatten().find(|v| v.name == mount.name) else {
            return Err(format!("volume mount {:?} names no volume", mount.name));
        };
        let own = ctx.pods_dir.join(uid).join("volumes").join(&volume.name);
        let source = if volume.empty_dir.is_some() || volume.secret.is_some() {
            own
        } else if let Some(host) = &volume.host_path {
            PathBuf::from(&host.path)
        } else {
            continue;
        };
        let failed =
            |e: std::io::Error| format!("volume {:?} at {}: {e}", volume.name, source.display());
        std::fs::create_dir_all(&source).map_err(failed)?;
        if let Some(from) = &volume.secret {
            let name = from.secret_name.clone().unwrap_or_default();
            let data = match secrets.get(&name) {
                Some(data) => data.clone(),
                None if from.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(format!(
                        "volume {:?}: secret {name:?} not found",
                        volume.name
                    ));
                }
            };
            let files: Vec<(String, String)> = match &from.items {
                Some(items) => items
                    .iter()
                    .map(|item| match data.get(&item.key) {
                        Some(value) => Ok((item.path.clone(), value.clone())),
                        None => Err(format!(
                            "volume {:?}: secret {name:?} has no key {:?}",
                            volume.name, item.key
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                None => data.into_iter().collect(),
            };
            for (path, value) in files {
                std::fs::write(source.join(&path), value).map_err(failed)?;
            }
        }
        binds.push((source, mount.mount_path.clone()));
    }
    Ok(binds)
}

fn program(
    ctx: &Ctx,
    container: &Container,
    vars: &BTreeMap<String, String>,
) -> Result<(PathBuf, Vec<String>), String> {
    let image = container.image.clone().unwrap_or_default();
    if image_name(&image) != "ferry" {
        return Err(format!(
            "image {image:?} cannot run on a process node: only images named `ferry` (any registry or tag) map to the workspace's ferry binary"
        ));
    }
    // As a registry would: tags that were never pushed cannot be pulled.
    let version = env!("CARGO_PKG_VERSION");
    let tag = image
        .rsplit('/')
        .next()
        .and_then(|last| last.split_once(':'))
        .map(|(_, tag)| tag);
    if let Some(tag) = tag
        && tag != "latest"
        && tag != version
    {
        return Err(format!(
            "failed to pull image {image:?}: manifest unknown: the process node has the ferry tags \"latest\" and \"{version}\""
        ));
    }
    let mut argv: Vec<String> = container.command.clone().unwrap_or_default();
    if let Some(first) = argv.first()
        && Path::new(first).file_name().is_some_and(|n| n == "ferry")
    {
        argv.remove(0);
    } else if !argv.is_empty() {
        return Err(format!(
            "command {:?}: only the ferry binary runs on a process node",
            argv[0]
        ));
    }
    argv.extend(container.args.clone().unwrap_or_default());
    Ok((
        ctx.ferry_bin.clone(),
        argv.iter().map(|a| expand(a, vars)).collect(),
    ))
}

/// Run `pod` until it is deleted (or vanished: `gone`).
pub async fn run(
    ctx: Arc<Ctx>,
    pod_ip: String,
    mut updates: watch::Receiver<Pod>,
    mut gone: watch::Receiver<bool>,
) {
    let pod = updates.borrow().clone();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let grace =
        Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
    let secrets = pod_secrets(&ctx.client, &namespace, &spec).await;
    let facts = PodFacts {
        pod: &pod,
        pod_ip: &pod_ip,
        host_ip: "127.0.0.1",
        secrets: &secrets,
    };
    let start_time = now();
    let changed = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    // ServiceAccount credentials first: a container must find them when it starts.
    let credentials_dir = ctx.pods_dir.join(&uid).join("serviceaccount");
    let mut refresher = None;
    let mut credentials_error = None;
    if crate::serviceaccount::wanted(&pod) {
        match crate::serviceaccount::project(
            ctx.client.clone(),
            pod.clone(),
            ctx.ca_file.clone(),
            credentials_dir.clone(),
        )
        .await
        {
            Ok(task) => refresher = Some(task),
            Err(e) => credentials_error = Some(format!("{e:#}")),
        }
    }
    let launch_of = |container: &Container, restart_policy: &str| -> Result<Launch, String> {
        let ((program, args), env) = match &credentials_error {
            Some(e) => Err(format!("ServiceAccount credentials: {e}")),
            None => environment(container, &facts, (&ctx.apiserver.0, ctx.apiserver.1))
                .map_err(|e| e.to_string())
                .and_then(|vars| program(&ctx, container, &vars).map(|p| (p, vars))),
        }?;
        let mut binds = volume_binds(&ctx, &uid, &spec, container, &secrets)?;
        if refresher.is_some() {
            binds.push((
                credentials_dir.clone(),
                crate::serviceaccount::MOUNT_PATH.to_string(),
            ));
        }
        let (program, args) = if binds.is_empty() {
            (program, args)
        } else {
            crate::serviceaccount::wrap(&program, &args, &binds)
        };
        Ok(Launch {
            container: container.clone(),
            program,
            args,
            env,
            log: ctx
                .logs
                .join(format!("{namespace}_{name}_{}.log", container.name)),
            pod_ip: pod_ip.clone(),
            restart_policy: restart_policy.to_string(),
            grace,
            node: ctx.node.clone(),
        })
    };
    // Init containers run one after the other to completion (restarted on failure unless the
    // pod's policy is Never), then the containers start.
    let init_policy = if restart_policy == "Never" {
        "Never"
    } else {
        "OnFailure"
    };
    let mut init_views = Vec::new();
    let mut init = Vec::new();
    for container in spec.init_containers.iter().flatten() {
        let view = Arc::new(Mutex::new(ContainerView::default()));
        init_views.push((container.clone(), view.clone()));
        init.push((launch_of(container, init_policy), view));
    }
    let mut views = Vec::new();
    let mut main = Vec::new();
    for container in &spec.containers {
        let view = Arc::new(Mutex::new(ContainerView::default()));
        views.push((container.clone(), view.clone()));
        main.push((launch_of(container, &restart_policy), view));
    }
    let starter = tokio::spawn(start(init, main, changed.clone(), stop_rx.clone()));
    let mut last_status = Value::Null;
    let mut ready_since: Option<(bool, String)> = None;
    loop {
        let status = pod_status(
            &init_views,
            &views,
            &pod_ip,
            &start_time,
            &restart_policy,
            &mut ready_since,
        );
        if status != last_status {
            let patch = json!({ "status": status });
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => last_status = status,
                Err(e) => tracing::debug!(pod = %name, error = %e, "status patch failed; retrying"),
            }
        }
        let deleting = updates.borrow().metadata.deletion_timestamp.is_some();
        if deleting || *gone.borrow() {
            break;
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = updates.changed() => {}
            _ = gone.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    // Graceful deletion: every container gets SIGTERM, SIGKILL after the grace period.
    let _ = stop_tx.send(true);
    let _ = starter.await;
    if let Some(refresher) = refresher {
        refresher.abort();
    }
    let _ = std::fs::remove_dir_all(ctx.pods_dir.join(&uid));
    if !*gone.borrow() {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(e) = api.delete(&name, &params).await {
            tracing::debug!(pod = %name, error = %e, "final delete failed (already gone?)");
        }
    }
    tracing::info!(pod = %name, namespace = %namespace, "pod stopped");
}

/// The Secrets the pod's containers take `envFrom` or `secretKeyRef`, and its Secret volumes,
/// decoded (those that cannot be read are left out: the container that needs one fails to
/// start, naming it).
async fn pod_secrets(
    client: &kube::Client,
    namespace: &str,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    let mut secrets = BTreeMap::new();
    let names = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .flat_map(|c| {
            let from = c
                .env_from
                .iter()
                .flatten()
                .filter_map(|f| f.secret_ref.as_ref().map(|s| s.name.clone()));
            let keys = c.env.iter().flatten().filter_map(|v| {
                let from = v.value_from.as_ref()?.secret_key_ref.as_ref()?;
                Some(from.name.clone())
            });
            from.chain(keys).collect::<Vec<_>>()
        })
        .chain(
            spec.volumes
                .iter()
                .flatten()
                .filter_map(|v| v.secret.as_ref()?.secret_name.clone()),
        );
    for name in names {
        if secrets.contains_key(&name) {
            continue;
        }
        if let Ok(secret) = api.get(&name).await {
            let data = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .chain(secret.string_data.unwrap_or_default())
                .collect();
            secrets.insert(name, data);
        }
    }
    secrets
}

type Planned = Vec<(Result<Launch, String>, Arc<Mutex<ContainerView>>)>;

/// Runs the init containers in order, each to a successful exit, then every container; returns
/// once all have stopped (after `stop`).
async fn start(init: Planned, main: Planned, changed: Arc<Notify>, stop: watch::Receiver<bool>) {
    let mut tasks = Vec::new();
    let run = |launch: Result<Launch, String>, view: Arc<Mutex<ContainerView>>| match launch {
        Ok(launch) => Some(tokio::spawn(container::run(
            launch,
            view,
            changed.clone(),
            stop.clone(),
        ))),
        Err(reason) => {
            tracing::warn!(%reason, "cannot run container");
            view.lock().expect("view poisoned").waiting = Some(("ErrImagePull".into(), reason));
            changed.notify_one();
            None
        }
    };
    for (launch, view) in init {
        let Some(task) = run(launch, view.clone()) else {
            let _ = stop.clone().wait_for(|s| *s).await;
            return;
        };
        tasks.push(task);
        loop {
            if *stop.borrow() {
                for task in tasks {
                    let _ = task.await;
                }
                return;
            }
            let done = view
                .lock()
                .expect("view poisoned")
                .terminated
                .as_ref()
                .map(|t| t.exit_code == 0);
            match done {
                Some(true) => break,
                // Failed for good (restartPolicy Never): the pod goes no further.
                Some(false) => {
                    let _ = stop.clone().wait_for(|s| *s).await;
                    for task in tasks {
                        let _ = task.await;
                    }
                    return;
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    for (launch, view) in main {
        tasks.extend(run(launch, view));
    }
    for task in tasks {
        let _ = task.await;
    }
}

fn container_status(container: &Container, v: &ContainerView, waiting: &str) -> Value {
    let state = if let Some(since) = &v.running_since {
        json!({"running": {"startedAt": since}})
    } else if let Some(t) = &v.terminated {
        json!({"terminated": terminated(t)})
    } else {
        let (reason, message) = v.waiting.clone().unwrap_or((waiting.into(), String::new()));
        json!({"waiting": {"reason": reason, "message": message}})
    };
    let mut status = json!({
        "name": container.name,
        "image": container.image.clone().unwrap_or_default(),
        "imageID": "",
        "ready": v.ready,
        "started": v.started,
        "restartCount": v.restarts,
        "state": state,
        "lastState": v.last_terminated.as_ref().map_or(json!({}), |t| json!({"terminated": terminated(t)})),
    });
    if let Some(pid) = v.pid {
        status["containerID"] = json!(format!("process://{pid}"));
    }
    status
}

fn pod_status(
    init_views: &[(Container, Arc<Mutex<ContainerView>>)],
    views: &[(Container, Arc<Mutex<ContainerView>>)],
    pod_ip: &str,
    start_time: &str,
    restart_policy: &str,
    ready_since: &mut Option<(bool, String)>,
) -> Value {
    let mut init_statuses = Vec::new();
    let mut initialized = true;
    for (container, view) in init_views {
        let v = view.lock().expect("view poisoned").clone();
        initialized &= v.terminated.as_ref().is_some_and(|t| t.exit_code == 0);
        init_statuses.push(container_status(container, &v, "PodInitializing"));
    }
    let waiting = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let mut statuses = Vec::new();
    let mut all_ready = !views.is_empty();
    let mut any_running = false;
    let mut all_terminated = true;
    let mut all_succeeded = true;
    for (container, view) in views {
        let v = view.lock().expect("view poisoned").clone();
        if v.running_since.is_some() {
            any_running = true;
            all_terminated = false;
        } else if let Some(t) = &v.terminated {
            all_succeeded &= t.exit_code == 0;
        } else {
            all_terminated = false;
        }
        all_ready &= v.ready;
        statuses.push(container_status(container, &v, waiting));
    }
    let phase = if any_running {
        "Running"
    } else if all_terminated && restart_policy != "Always" {
        if all_succeeded { "Succeeded" } else { "Failed" }
    } else {
        "Pending"
    };
    let ready = all_ready && any_running;
    if ready_since.as_ref().is_none_or(|(r, _)| *r != ready) {
        *ready_since = Some((ready, now()));
    }
    let since = ready_since
        .as_ref()
        .map(|(_, t)| t.clone())
        .unwrap_or_default();
    let bool_text = |b: bool| if b { "True" } else { "False" };
    json!({
        "phase": phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": start_time},
            {"type": "Initialized", "status": bool_text(initialized), "lastTransitionTime": start_time},
            {"type": "ContainersReady", "status": bool_text(ready), "lastTransitionTime": since},
            {"type": "Ready", "status": bool_text(ready), "lastTransitionTime": since},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": start_time},
        ],
        "containerStatuses": statuses,
        "initContainerStatuses": init_statuses,
    })
}

fn terminated(t: &container::Terminated) -> Value {
    json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "message": t.message,
        "startedAt": t.started_at,
        "finishedAt": t.finished_at,
    })
}
