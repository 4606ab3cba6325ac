//! The reconciler of InferenceServices.
//!
//! Reads come from reflector caches (Deployments, Services and Pods labelled
//! `app.kubernetes.io/managed-by=ferry`), so a reconcile costs no API call unless something has
//! to change: every object Ferry applies carries a hash of what was applied
//! ([`APPLIED_HASH`]), and an object whose cached hash matches is not sent again. A second
//! reconcile of a settled InferenceService writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::{InferenceService, LABEL_REVISION, LABEL_SERVICE, ServingRuntime};
use ferry_core::render::{RenderOptions, render, render_service};
use ferry_core::rollout::{Target, desired_replicas, plan};
use ferry_core::routes::{Addresses, Endpoint, ServiceEndpoints, build};
use ferry_core::{ReplicaHealth, ReplicaView, status};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::owned::Owned;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "ferry-operator";

/// Annotation on every applied object: a hash of the object as Ferry applied it.
pub const APPLIED_HASH: &str = "ferry.dev/applied-hash";

/// Annotation on the stable Service: the optional objects that exist for the service
/// (`autoscaler`, `ingress`, `httproute`), so the ones the spec no longer asks for are deleted.
pub const EXTRAS: &str = "ferry.dev/objects";

const MANAGED: &str = "app.kubernetes.io/managed-by=ferry";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub render: RenderOptions,
    pub metrics: Arc<crate::probes::Metrics>,
    /// Who reports events (`ferry-operator`, and the pod's name as instance).
    pub reporter: Reporter,
}

/// The caches and helpers of a running controller.
struct Shared {
    context: Context,
    recorder: Recorder,
    deployments: Store<Deployment>,
    services: Store<Service>,
    pods: Store<Pod>,
    /// Every namespace's ServingRuntimes.
    runtimes: Store<ServingRuntime>,
    /// The names of each InferenceService's cached Deployments and Pods.
    owned_deployments: Arc<Owned>,
    owned_pods: Arc<Owned>,
    /// Whether the cluster serves HTTPRoutes, and when that was last asked.
    gateway_api: Mutex<Option<(Instant, Option<ApiResource>)>>,
    /// When each InferenceService's objects were last applied in full, hash or not: changes
    /// made to them by hand are undone within [`REAPPLY_EVERY`].
    applied_in_full: Mutex<std::collections::HashMap<ObjectRef<InferenceService>, Instant>>,
    /// Hashes applied in the last [`RECENT`], by `kind/namespace/name`: a reconcile that runs
    /// before the watch delivered the operator's own write does not write again.
    recent: Mutex<std::collections::HashMap<String, (String, Instant)>>,
}

/// How long a write of the operator's own is remembered (watch delivery is far quicker).
const RECENT: Duration = Duration::from_secs(30);

/// How often every object is re-applied even when its hash says nothing changed.
pub const REAPPLY_EVERY: Duration = Duration::from_secs(300);

/// The shortest time between two status writes of one InferenceService that only report
/// progress (condition transitions are written at once).
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// Run the controller until the process is asked to stop.
pub async fn run(context: Context) {
    let client = context.client.clone();
    let managed = watcher::Config::default().labels(MANAGED);
    let (deployments, deployments_writer) = reflector::store::<Deployment>();
    let (services, services_writer) = reflector::store::<Service>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let owned_deployments = Arc::new(Owned::default());
    let owned_pods = Arc::new(Owned::default());
    // The caches keep only what reconciles read (labels, the applied hash, replica counts,
    // status): a thousand InferenceServices' pod specs and templates would be most of the
    // operator's memory.
    let deployment_events = watcher(Api::<Deployment>::all(client.clone()), managed.clone())
        .default_backoff()
        .modify(|d| {
            slim_metadata(&mut d.metadata);
            if let Some(spec) = d.spec.as_mut() {
                spec.template = Default::default();
            }
        })
        .reflect(deployments_writer)
        .inspect_ok({
            let owned = owned_deployments.clone();
            move |event| owned.observe(event)
        })
        .touched_objects();
    let service_events = watcher(Api::<Service>::all(client.clone()), managed.clone())
        .default_backoff()
        .modify(|s| {
            slim_metadata(&mut s.metadata);
            s.spec = None;
            s.status = None;
        })
        .reflect(services_writer)
        .touched_objects();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), managed)
        .default_backoff()
        .modify(|p| {
            slim_metadata(&mut p.metadata);
            p.spec = None;
            if let Some(status) = p.status.as_mut() {
                status.init_container_statuses = None;
                status.ephemeral_container_statuses = None;
                status.host_ips = None;
                status.pod_ips = None;
                for c in status.container_statuses.iter_mut().flatten() {
                    c.image = String::new();
                    c.image_id = String::new();
                    c.resources = None;
                    c.volume_mounts = None;
                    c.allocated_resources = None;
                }
            }
        })
        .reflect(pods_writer)
        .inspect_ok({
            let owned = owned_pods.clone();
            move |event| owned.observe(event)
        })
        .touched_objects();
    tokio::spawn(service_events.for_each(|_| async {}));
    let (runtimes, runtimes_writer) = reflector::store::<ServingRuntime>();
    let runtime_events = watcher(
        Api::<ServingRuntime>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|r| r.managed_fields_mut().clear())
    .reflect(runtimes_writer)
    .touched_objects();
    let recorder = Recorder::new(client.clone(), context.reporter.clone());
    let shared = Arc::new(Shared {
        context,
        recorder,
        deployments,
        services,
        pods,
        runtimes,
        owned_deployments,
        owned_pods,
        gateway_api: Mutex::new(None),
        applied_in_full: Mutex::default(),
        recent: Mutex::default(),
    });
    // The controller is triggered by the very streams that fill the caches (a reflector updates
    // its store before it passes an object on): a reconcile never reads a cache older than its
    // trigger.
    let (isvcs, isvcs_writer) = reflector::store::<InferenceService>();
    let isvc_events = watcher(
        Api::<InferenceService>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|i| i.managed_fields_mut().clear())
    .reflect(isvcs_writer)
    .touched_objects();
    let users = isvcs.clone();
    Controller::for_stream(isvc_events, isvcs)
        .watches_stream(deployment_events, owner)
        .watches_stream(pod_events, owner)
        .watches_stream(runtime_events, move |runtime| {
            runtime_users(&users, &runtime)
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, shared)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// The InferenceServices a change of `runtime` may concern: those of its namespace that name
/// it, or that name no runtime and have a format Ferry's own server does not run.
fn runtime_users(
    isvcs: &Store<InferenceService>,
    runtime: &ServingRuntime,
) -> Vec<ObjectRef<InferenceService>> {
    let namespace = runtime.namespace();
    let name = runtime.name_any();
    isvcs
        .state()
        .iter()
        .filter(|isvc| isvc.namespace() == namespace)
        .filter(|isvc| {
            let predictor = &isvc.spec.predictor;
            predictor.needs_serving_runtime()
                && predictor
                    .runtime
                    .as_deref()
                    .is_none_or(|named| named == name)
        })
        .map(|isvc| ObjectRef::from_obj(isvc.as_ref()))
        .collect()
}

/// Drop what no reconcile reads from a cached object's metadata.
fn slim_metadata(metadata: &mut kube::api::ObjectMeta) {
    metadata.managed_fields = None;
    metadata.owner_references = None;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.retain(|key, _| {
            key == APPLIED_HASH
                || key == EXTRAS
                || key == ferry_core::render::ANNOTATION_HTTP_PORT
                || key == ferry_core::render::ANNOTATION_GRPC_PORT
        });
    }
}

/// The InferenceService a managed object belongs to.
fn owner<K: Resource>(object: K) -> Option<ObjectRef<InferenceService>> {
    let name = object.labels().get(LABEL_SERVICE)?.clone();
    Some(ObjectRef::new(&name).within(&object.namespace()?))
}

fn error_policy(isvc: Arc<InferenceService>, error: &Error, _: Arc<Shared>) -> Action {
    if namespace_terminating(error) {
        // Nothing can be created there any more, and the InferenceService goes with it.
        tracing::debug!(name = %isvc.name_any(), "namespace is being deleted; waiting");
        return Action::await_change();
    }
    tracing::warn!(name = %isvc.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Whether the apiserver refused a write because the namespace is being deleted.
fn namespace_terminating(error: &Error) -> bool {
    matches!(error, Error::Kube(kube::Error::Api(e))
        if e.code == 403 && e.message.contains("because it is being terminated"))
}

pub(crate) fn pod_view(pod: &Pod) -> Option<(ReplicaView, Option<Addresses>)> {
    let revision = pod.labels().get(LABEL_REVISION)?.clone();
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let containers = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let crash = containers.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        (waiting.reason.as_deref() == Some("CrashLoopBackOff")).then(|| {
            let last = c.last_state.as_ref().and_then(|l| l.terminated.as_ref());
            (
                c.restart_count as u32,
                last.map(|t| {
                    let message = t.message.clone().unwrap_or_default();
                    let message = message.trim();
                    if message.is_empty() {
                        format!("exit code {}", t.exit_code)
                    } else {
                        format!("exit code {}: {message}", t.exit_code)
                    }
                })
                .unwrap_or_default(),
            )
        })
    });
    let container_failure = containers.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        ferry_core::observe::CONTAINER_FAILURES
            .contains(&reason)
            .then(|| {
                (
                    reason.to_string(),
                    waiting.message.clone().unwrap_or_default(),
                )
            })
    });
    let unschedulable = status.and_then(|s| s.conditions.as_ref()).and_then(|c| {
        c.iter()
            .find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .map(|c| c.message.clone().unwrap_or_default())
    });
    let health = match (ready, crash, container_failure, unschedulable) {
        (true, ..) => ReplicaHealth::Ready,
        (false, Some((restarts, last_exit)), ..) => ReplicaHealth::CrashLoop {
            restarts,
            last_exit,
        },
        (false, None, Some((reason, message)), _) => {
            ReplicaHealth::ContainerFailed { reason, message }
        }
        (false, None, None, Some(message)) => ReplicaHealth::Unschedulable { message },
        (false, None, None, None) => ReplicaHealth::Starting { for_seconds: 0 },
    };
    // Where its model server answers: the pod IP (none yet, or one that does not parse: none),
    // on Ferry's server's ports or those a ServingRuntime's pod is annotated with.
    let addrs = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| {
            let (http, grpc) = ferry_core::render::pod_ports(pod.annotations());
            Addresses::tcp((ip, http).into(), (ip, grpc).into())
        });
    Some((
        ReplicaView {
            id: pod.name_any(),
            revision,
            health,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        },
        addrs,
    ))
}

async fn reconcile(isvc: Arc<InferenceService>, shared: Arc<Shared>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&isvc, &shared).await;
    shared
        .context
        .metrics
        .record(result.is_ok(), started.elapsed());
    if let Err(Error::Invalid(message)) = &result {
        shared
            .event(&isvc, EventType::Warning, "InvalidSpec", message.clone())
            .await;
    }
    result
}

/// Hash of an object as it is about to be applied (without the hash annotation itself).
fn applied_hash<T: Serialize>(object: &T) -> String {
    let text = serde_json::to_string(object).expect("objects serialize");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Put `object`'s hash on it ([`APPLIED_HASH`]); returns the hash.
fn stamp<K: Resource + Serialize>(object: &mut K) -> String {
    let hash = applied_hash(object);
    object
        .annotations_mut()
        .insert(APPLIED_HASH.to_string(), hash.clone());
    hash
}

/// The hash an object in a cache carries.
fn cached_hash<K: Resource>(cached: Option<&K>) -> Option<&String> {
    cached.and_then(|c| c.annotations().get(APPLIED_HASH))
}

impl Shared {
    /// Publish an event about `isvc`. Awaited, not spawned: a graceful shutdown lets running
    /// reconciles finish, and a spawned publish would be lost with the process (the next
    /// leader sees the status already written and has no transition to report).
    async fn event(&self, isvc: &InferenceService, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &isvc.object_ref(&())).await {
            tracing::warn!(name = %isvc.name_any(), error = %e, "cannot publish an event");
        }
    }

    /// Whether `hash` is what the object `key` holds already: its cached copy carries it, or
    /// this operator applied it within [`RECENT`] (the cache may not show its own write yet).
    fn known(&self, key: &str, cached: Option<&String>, hash: &str) -> bool {
        if cached.is_some_and(|c| c == hash) {
            return true;
        }
        let recent = self.recent.lock().expect("poisoned");
        recent
            .get(key)
            .is_some_and(|(h, at)| h == hash && at.elapsed() < RECENT)
    }

    /// How long ago this operator wrote `key`, when it did within [`RECENT`].
    fn since_written(&self, key: &str) -> Option<Duration> {
        let recent = self.recent.lock().expect("poisoned");
        recent
            .get(key)
            .map(|(_, at)| at.elapsed())
            .filter(|e| *e < RECENT)
    }

    fn remember(&self, key: String, hash: String) {
        let mut recent = self.recent.lock().expect("poisoned");
        if recent.len() > 4096 {
            recent.retain(|_, (_, at)| at.elapsed() < RECENT);
        }
        recent.insert(key, (hash, Instant::now()));
    }

    fn cached<K>(&self, store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        store.get(&ObjectRef::new(name).within(namespace))
    }

    /// The HTTPRoute resource, when the cluster serves the Gateway API (asked at most every 30 s).
    async fn http_route_api(&self) -> Option<ApiResource> {
        if let Some((at, known)) = self.gateway_api.lock().expect("poisoned").as_ref()
            && at.elapsed() < Duration::from_secs(30)
        {
            return known.clone();
        }
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
        let found = kube::discovery::pinned_kind(&self.context.client, &gvk)
            .await
            .ok()
            .map(|(resource, _)| resource);
        *self.gateway_api.lock().expect("poisoned") = Some((Instant::now(), found.clone()));
        found
    }
}

async fn reconcile_inner(isvc: &InferenceService, shared: &Shared) -> Result<Action, Error> {
    let ctx = &shared.context;
    if isvc.metadata.deletion_timestamp.is_some() {
        // Being deleted (foreground): the garbage collector removes the children; a reconcile
        // would only put them back.
        return Ok(Action::await_change());
    }
    // Decisions need complete caches (after a restart, a missing Deployment would look like a
    // rollout that has not started).
    let filled = tokio::time::timeout(Duration::from_secs(60), async {
        let _ = shared.deployments.wait_until_ready().await;
        let _ = shared.services.wait_until_ready().await;
        let _ = shared.pods.wait_until_ready().await;
        // Only a service on a ServingRuntime waits for that cache: one where the runtime CRD
        // is missing (its watch never lists) still serves everything on Ferry's own server.
        if isvc.spec.predictor.needs_serving_runtime() {
            let _ = shared.runtimes.wait_until_ready().await;
        }
    })
    .await;
    if filled.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let namespace = isvc
        .namespace()
        .ok_or_else(|| Error::Invalid("InferenceService without namespace".into()))?;
    let name = isvc.name_any();
    let errors = ferry_api::validate::validate(isvc);
    if !errors.is_empty() {
        return Err(Error::Invalid(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    // Which server runs the model; without one, nothing of the new revision is rendered and
    // what serves keeps serving, while the status names the problem.
    let runtimes = shared.runtimes.state();
    let (runtime, runtime_problem) =
        match ferry_core::runtime::resolve(isvc, runtimes.iter().map(AsRef::as_ref)) {
            Ok(runtime) => (runtime, None),
            Err(problem) => (None, Some(problem)),
        };
    let revision = ferry_core::runtime::revision(isvc, runtime);
    let key = ObjectRef::from_obj(isvc);
    let force = shared
        .applied_in_full
        .lock()
        .expect("poisoned")
        .get(&key)
        .is_none_or(|at| at.elapsed() >= REAPPLY_EVERY);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing: Vec<Arc<Deployment>> = shared
        .owned_deployments
        .names(&namespace, &name)
        .iter()
        .filter_map(|n| shared.cached(&shared.deployments, &namespace, n))
        .collect();
    let pod_list: Vec<Arc<Pod>> = shared
        .owned_pods
        .names(&namespace, &name)
        .iter()
        .filter_map(|n| shared.cached(&shared.pods, &namespace, n))
        .collect();
    let seen: Vec<(ReplicaView, Option<Addresses>)> =
        pod_list.iter().filter_map(|p| pod_view(p)).collect();
    let views: Vec<ReplicaView> = seen.iter().map(|(v, _)| v.clone()).collect();

    // The core decides the next step over pods; the step becomes Deployment replica counts.
    let mut replicas: BTreeMap<String, i32> = existing
        .iter()
        .filter_map(|d| {
            Some((
                d.labels().get(LABEL_REVISION)?.clone(),
                d.spec.as_ref()?.replicas.unwrap_or(0),
            ))
        })
        .collect();
    let before = replicas.clone();
    // With an autoscaler, the latest revision's size is the autoscaler's last choice.
    let wanted = desired_replicas(
        &isvc.spec.predictor,
        replicas.get(&revision).map(|r| (*r).max(0) as u32),
    );
    let target = Target::with_replicas(&revision, &isvc.spec, wanted);
    let step = plan(&target, &views);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let ingress = if runtime_problem.is_some() {
        None
    } else {
        let current_new = replicas.get(&revision).copied().unwrap_or(0);
        let live_new = views
            .iter()
            .filter(|v| v.revision == revision && !v.terminating)
            .count() as i32;
        let new_count = if current_new >= target.replicas as i32 {
            target.replicas as i32
        } else {
            current_new
                .max(live_new + step.start as i32)
                .min(target.replicas as i32)
        };
        replicas.insert(revision.clone(), new_count);
        for stopped in &step.stop {
            if let Some(view) = views.iter().find(|v| &v.id == stopped)
                && view.revision != revision
                && let Some(count) = replicas.get_mut(&view.revision)
            {
                *count = (*count - 1).max(0);
            }
        }

        let mut revision_service = None;
        for (rev, count) in &replicas {
            let cached = existing
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(rev.as_str()));
            if rev != &revision
                && *count == 0
                && !views.iter().any(|v| &v.revision == rev && !v.terminating)
            {
                // A drained revision: its objects go.
                let _ = deployments.delete(rev, &DeleteParams::default()).await;
                let _ = services.delete(rev, &DeleteParams::default()).await;
                shared
                    .event(
                        isvc,
                        EventType::Normal,
                        "RevisionRetired",
                        format!("deleted revision {rev}: no replica left"),
                    )
                    .await;
                continue;
            }
            if rev != &revision {
                // Older revisions keep their template: only their replica count changes (a merge
                // patch: an apply of just `replicas` would drop the template this manager owns).
                if before.get(rev) != Some(count) {
                    let patch = json!({"spec": {"replicas": count}});
                    deployments
                        .patch(rev, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    shared
                        .event(
                            isvc,
                            EventType::Normal,
                            "ScaledDown",
                            format!("revision {rev}: {} → {count} replicas", before[rev]),
                        )
                        .await;
                }
                continue;
            }
            let mut objects = render(isvc, rev, *count as u32, &ctx.render, runtime);
            let key = format!("deployment/{namespace}/{rev}");
            let hash = stamp(&mut objects.deployment);
            // A periodic re-apply of an unchanged object is no decision: no event.
            let decided = !shared.known(&key, cached_hash(cached.map(|d| d.as_ref())), &hash);
            if decided || force {
                deployments
                    .patch(rev, &params, &Patch::Apply(&objects.deployment))
                    .await?;
                shared.remember(key, hash);
            }
            if decided {
                let (reason, note) = match before.get(rev) {
                    None => (
                        "RevisionCreated",
                        format!("created revision {rev} with {count} replicas"),
                    ),
                    Some(old) if old < count => (
                        "ScaledUp",
                        format!("revision {rev}: {old} → {count} replicas"),
                    ),
                    Some(old) if old > count => (
                        "ScaledDown",
                        format!("revision {rev}: {old} → {count} replicas"),
                    ),
                    Some(_) => ("Updated", format!("revision {rev}: applied")),
                };
                shared.event(isvc, EventType::Normal, reason, note).await;
            }
            let cached_service = shared.cached(&shared.services, &namespace, rev);
            let key = format!("service/{namespace}/{rev}");
            let hash = stamp(&mut objects.service);
            if force || !shared.known(&key, cached_hash(cached_service.as_deref()), &hash) {
                revision_service = Some((key, hash, objects.service));
            }
        }

        // The revision's Service and the service-wide objects do not depend on each other.
        let apply_revision_service = async {
            if let Some((key, hash, service)) = &revision_service {
                apply_recreating(&services, &revision, service, &params).await?;
                shared.remember(key.clone(), hash.clone());
            }
            Ok::<_, Error>(())
        };
        let ((), ingress) = tokio::try_join!(
            apply_revision_service,
            apply_service_objects(isvc, &revision, shared, &params, force)
        )?;
        if force {
            shared
                .applied_in_full
                .lock()
                .expect("poisoned")
                .insert(key, Instant::now());
        }
        ingress
    };

    // Status from the same pods, through the core.
    let endpoints: Vec<Endpoint> = seen
        .iter()
        .filter_map(|(view, addrs)| {
            Some(Endpoint {
                replica: view.clone(),
                addrs: addrs.clone()?,
            })
        })
        .collect();
    let table = build(&[ServiceEndpoints::of(isvc, endpoints)]);
    let mut order: Vec<String> = vec![revision.clone()];
    order.extend(replicas.keys().filter(|r| **r != revision).cloned());
    let observed = status::Observed {
        generation: isvc.metadata.generation.unwrap_or(0),
        target: &target,
        replicas: &views,
        route: table.lookup(&namespace, &isvc.model_name()),
        startup_timeout_seconds: u64::from(isvc.spec.predictor.startup_timeout_seconds()),
        url: format!(
            "http://{name}.{namespace}.svc/v2/models/{}",
            isvc.model_name()
        ),
        revision_order: &order,
        creation_failure: existing
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(revision.as_str()))
            .and_then(|d| d.status.as_ref()?.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                    .map(|c| {
                        c.message
                            .clone()
                            .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
                    })
            }),
        ingress,
        runtime_problem,
    };
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let next = status::derive(&observed, isvc.status.as_ref(), &now);
    let status_key = format!("status/{namespace}/{name}");
    let status_hash = {
        // Transition times follow the (possibly stale) previous status: not part of the identity.
        let mut timeless = next.clone();
        for c in &mut timeless.conditions {
            c.last_transition_time = None;
        }
        applied_hash(&timeless)
    };
    // The cached InferenceService may not show the status this operator wrote a moment ago.
    let written = shared.known(&status_key, None, &status_hash);
    if isvc.status.as_ref() != Some(&next) && !written {
        // Progress alone is written at most every PROGRESS_EVERY: a thousand services starting
        // at once would otherwise each write a status for every pod that appears.
        if status::progress_only(isvc.status.as_ref(), &next)
            && let Some(since) = shared.since_written(&status_key)
            && since < PROGRESS_EVERY
        {
            return Ok(Action::requeue(PROGRESS_EVERY - since));
        }
        let isvcs: Api<InferenceService> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({"apiVersion": ferry_api::API_VERSION, "kind": "InferenceService", "status": next});
        isvcs
            .patch_status(&name, &params, &Patch::Apply(&patch))
            .await?;
        shared.remember(status_key, status_hash);
        if let Some(event) = status::transition_event(isvc.status.as_ref(), &next) {
            let type_ = if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            shared.event(isvc, type_, &event.reason, event.note).await;
        }
    }
    let settled = ferry_core::rollout::complete(&target, &views) && replicas.len() == 1;
    Ok(Action::requeue(if settled {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(2)
    }))
}

/// The stable Service, and the autoscaler, Ingress or HTTPRoute the spec asks for (deleting the
/// ones it no longer asks for). Returns the IngressReady condition when the spec asks for one.
async fn apply_service_objects(
    isvc: &InferenceService,
    latest: &str,
    shared: &Shared,
    params: &PatchParams,
    force: bool,
) -> Result<Option<(bool, String, String)>, Error> {
    let client = &shared.context.client;
    let namespace = isvc.namespace().unwrap_or_default();
    let name = isvc.name_any();
    let mut objects = render_service(isvc, latest);
    let mut extras = BTreeSet::new();
    let mut condition = None;
    if let Some(hpa) = &mut objects.autoscaler {
        extras.insert("autoscaler");
        // No cache of autoscalers: apply only when the service's own hash changes.
        stamp(hpa);
    }
    if let Some(ingress) = &mut objects.ingress {
        extras.insert("ingress");
        stamp(ingress);
        condition = Some((
            true,
            "IngressCreated".to_string(),
            format!(
                "Ingress {name} routes {} to Service {name}",
                ingress_host(isvc)
            ),
        ));
    }
    let route_api = if objects.http_route.is_some() {
        let found = shared.http_route_api().await;
        match &found {
            Some(_) => {
                extras.insert("httproute");
                condition = Some((
                    true,
                    "HTTPRouteCreated".to_string(),
                    format!(
                        "HTTPRoute {name} routes {} to Service {name}",
                        ingress_host(isvc)
                    ),
                ));
            }
            None => {
                condition = Some((
                    false,
                    "GatewayAPIMissing".to_string(),
                    "spec.ingress asks for an HTTPRoute but this cluster does not serve gateway.networking.k8s.io/v1 HTTPRoute: install the Gateway API CRDs, or use kind Ingress".to_string(),
                ));
            }
        }
        found
    } else {
        None
    };
    // The Service's hash covers every optional object, so a change of any re-applies them all.
    let everything = json!({
        "service": &objects.service,
        "autoscaler": &objects.autoscaler,
        "ingress": &objects.ingress,
        "route": route_api.as_ref().and(objects.http_route.as_ref()),
    });
    let hash = applied_hash(&everything);
    let cached = shared.cached(&shared.services, &namespace, &name);
    let key = format!("service/{namespace}/{name}");
    if !force && shared.known(&key, cached_hash(cached.as_deref()), &hash) {
        return Ok(condition);
    }
    let had: BTreeSet<String> = cached
        .as_ref()
        .and_then(|c| c.annotations().get(EXTRAS))
        .map(|list| {
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &namespace);
    apply_or_remove(
        &hpas,
        &name,
        objects.autoscaler.as_ref(),
        had.contains("autoscaler"),
        params,
    )
    .await?;
    let ingresses = Api::<Ingress>::namespaced(client.clone(), &namespace);
    apply_or_remove(
        &ingresses,
        &name,
        objects.ingress.as_ref(),
        had.contains("ingress"),
        params,
    )
    .await?;
    // Without the Gateway API there is no HTTPRoute to apply, nor one to remove.
    if let Some(resource) = match &route_api {
        Some(resource) => Some(resource.clone()),
        None if had.contains("httproute") => shared.http_route_api().await,
        None => None,
    } {
        let routes = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource);
        let route: Option<DynamicObject> = route_api
            .as_ref()
            .and(objects.http_route.as_ref())
            .map(|r| serde_json::from_value(r.clone()).expect("a rendered HTTPRoute is an object"));
        apply_or_remove(
            &routes,
            &name,
            route.as_ref(),
            had.contains("httproute"),
            params,
        )
        .await?;
    }
    let annotations = objects.service.annotations_mut();
    annotations.insert(APPLIED_HASH.to_string(), hash.clone());
    annotations.insert(
        EXTRAS.to_string(),
        extras.into_iter().collect::<Vec<_>>().join(","),
    );
    // A stable Service from before it was an alias of the router has a cluster IP, which an
    // update cannot drop: recreated.
    apply_recreating(
        &Api::<Service>::namespaced(client.clone(), &namespace),
        &name,
        &objects.service,
        params,
    )
    .await?;
    shared.remember(key, hash);
    Ok(condition)
}

/// Apply a Service; when the apiserver refuses it as invalid because a field it cannot change
/// differs (a revision Service from before revisions were headless keeps its cluster IP),
/// delete it and apply again.
async fn apply_recreating(
    api: &Api<Service>,
    name: &str,
    service: &Service,
    params: &PatchParams,
) -> Result<(), kube::Error> {
    match api.patch(name, params, &Patch::Apply(service)).await {
        Err(kube::Error::Api(e)) if e.code == 422 => {
            tracing::info!(%name, reason = %e.message, "recreating a Service the apiserver cannot update");
            api.delete(name, &DeleteParams::default()).await?;
            api.patch(name, params, &Patch::Apply(service)).await?;
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// Apply `desired` as `name`, or delete the object when the spec no longer asks for it and it
/// was there (`had`).
async fn apply_or_remove<K>(
    api: &Api<K>,
    name: &str,
    desired: Option<&K>,
    had: bool,
    params: &PatchParams,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match desired {
        Some(object) => api
            .patch(name, params, &Patch::Apply(object))
            .await
            .map(drop),
        None if had => match api.delete(name, &DeleteParams::default()).await {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => other.map(drop),
        },
        None => Ok(()),
    }
}

fn ingress_host(isvc: &InferenceService) -> String {
    isvc.spec
        .ingress
        .as_ref()
        .map(|i| i.host.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "iris-abc123-x", "labels": {LABEL_REVISION: "iris-abc123"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn pods_say_what_keeps_them_from_serving() {
        let waiting = |reason: &str, message: &str| {
            pod(json!({"containerStatuses": [{
                "name": "server", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": reason, "message": message}},
                "lastState": {"terminated": {"exitCode": 3, "message": "ferry server: model iris failed to load\n"}}
            }]}))
        };
        let health = |p: &Pod| pod_view(p).unwrap().0.health;
        assert_eq!(
            health(&waiting("CrashLoopBackOff", "back-off 8s")),
            ReplicaHealth::CrashLoop {
                restarts: 4,
                last_exit: "exit code 3: ferry server: model iris failed to load".into()
            }
        );
        assert_eq!(
            health(&waiting(
                "ImagePullBackOff",
                "Back-off pulling image \"ferry:nope\""
            )),
            ReplicaHealth::ContainerFailed {
                reason: "ImagePullBackOff".into(),
                message: "Back-off pulling image \"ferry:nope\"".into()
            }
        );
        assert_eq!(
            health(&waiting("ContainerCreating", "")),
            ReplicaHealth::Starting { for_seconds: 0 }
        );
        let unscheduled = pod(json!({"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/5 nodes are available: 2 Insufficient nvidia.com/gpu."
        }]}));
        assert!(
            matches!(health(&unscheduled), ReplicaHealth::Unschedulable { message } if message.contains("nvidia.com/gpu"))
        );
        let ready =
            pod(json!({"podIP": "127.2.0.5", "conditions": [{"type": "Ready", "status": "True"}]}));
        let (view, addrs) = pod_view(&ready).unwrap();
        let addrs = addrs.unwrap();
        assert_eq!(view.health, ReplicaHealth::Ready);
        assert_eq!(
            (addrs.http.to_string(), addrs.grpc.to_string()),
            ("127.2.0.5:8080".into(), "127.2.0.5:9000".into())
        );
        // A ServingRuntime's pod says where it serves.
        let mut runtime_pod = ready.clone();
        runtime_pod.metadata.annotations = Some(
            [
                ("ferry.dev/http-port".to_string(), "8500".to_string()),
                ("ferry.dev/grpc-port".to_string(), "9500".to_string()),
            ]
            .into(),
        );
        let addrs = pod_view(&runtime_pod).unwrap().1.unwrap();
        assert_eq!(
            (addrs.http.to_string(), addrs.grpc.to_string()),
            ("127.2.0.5:8500".into(), "127.2.0.5:9500".into())
        );
        let mut no_ip = ready.clone();
        no_ip.status.as_mut().unwrap().pod_ip = Some("not-an-ip".into());
        assert!(pod_view(&no_ip).unwrap().1.is_none());
    }
}
