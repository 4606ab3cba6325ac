//! The running controller: the watches that fill its caches and trigger reconciles, the
//! state shared by every reconcile ([`Shared`]: caches, the event recorder, what this
//! operator wrote recently), and the error policy.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::{
    COMPONENT_POOL_SERVER, ClusterServingRuntime, InferenceService, LABEL_POOL, LABEL_SERVICE,
    ServerPool, ServingRuntime,
};
use ferry_core::reason::PlannedEvent;
use ferry_render::RenderOptions;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Service};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::owned::Owned;
use crate::reconcile::reconcile;

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
    #[error("cannot serialize an object: {0}")]
    Json(#[from] serde_json::Error),
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub render: RenderOptions,
    pub metrics: Arc<crate::probes::Metrics>,
    /// Who reports events (`ferry-operator`, and the pod's name as instance).
    pub reporter: Reporter,
    /// The router pods' numbers (its task runs beside the controller, see
    /// [`crate::collect::Collector::run`]).
    pub collector: Arc<crate::collect::Collector>,
}

/// The caches and helpers of a running controller.
pub(crate) struct Shared {
    pub(crate) context: Context,
    pub(crate) recorder: Recorder,
    pub(crate) deployments: Store<Deployment>,
    pub(crate) services: Store<Service>,
    pub(crate) pods: Store<Pod>,
    /// Every namespace's ServingRuntimes.
    pub(crate) runtimes: Store<ServingRuntime>,
    /// The ClusterServingRuntimes.
    pub(crate) cluster_runtimes: Store<ClusterServingRuntime>,
    /// Every namespace's ResourceQuotas: a step starts only what their status leaves room for.
    pub(crate) quotas: Store<ResourceQuota>,
    /// The names of each InferenceService's cached Deployments and Pods.
    pub(crate) owned_deployments: Arc<Owned>,
    pub(crate) owned_pods: Arc<Owned>,
    /// Whether the cluster serves HTTPRoutes, and when that was last asked.
    pub(crate) gateway_api: Mutex<Option<(Instant, Option<ApiResource>)>>,
    /// Whether the cluster serves KEDA's ScaledObject, and when that was last asked.
    pub(crate) keda_api: Mutex<Option<(Instant, Option<ApiResource>)>>,
    /// When each InferenceService's objects were last applied in full, hash or not: changes
    /// made to them by hand are undone within [`REAPPLY_EVERY`].
    pub(crate) applied_in_full:
        Mutex<std::collections::HashMap<ObjectRef<InferenceService>, Instant>>,
    /// Hashes applied in the last [`RECENT`], by `kind/namespace/name`: a reconcile that runs
    /// before the watch delivered the operator's own write does not write again.
    pub(crate) recent: Mutex<std::collections::HashMap<String, (String, Instant)>>,
    /// The router pods' numbers, and each service's analysis window.
    pub(crate) collector: Arc<crate::collect::Collector>,
    pub(crate) windows: Mutex<ferry_core::analysis::Windows<(String, String)>>,
    /// Ferry's autoscaler per service (samples of the collected load).
    pub(crate) autoscalers: Mutex<ferry_core::autoscale::Autoscalers<(String, String)>>,
    /// Per service: since when a quota has left its latest revision no room.
    pub(crate) stalls: Mutex<ferry_core::service::Stalls<(String, String)>>,
    /// Every InferenceService (a pool's reconcile finds its pooled services here).
    pub(crate) isvcs: Store<InferenceService>,
    /// Every ServerPool, and the pods of their servers.
    pub(crate) pools: Store<ServerPool>,
    pub(crate) pool_pods: Store<Pod>,
    /// For the pool servers' repository API.
    pub(crate) http: ferry_api::repository::Client,
}

/// How long a write of the operator's own is remembered (watch delivery is far quicker).
pub(crate) const RECENT: Duration = Duration::from_secs(30);

/// How often every object is re-applied even when its hash says nothing changed.
pub const REAPPLY_EVERY: Duration = Duration::from_secs(300);

/// The shortest time between two status writes of one InferenceService that only report
/// progress (condition transitions are written at once).
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_secs(3);

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
    // A pool server's pods are the pool reconcile's (their own watch, below).
    let predictor_pods = watcher::Config::default().labels(&format!(
        "{MANAGED},app.kubernetes.io/component!={COMPONENT_POOL_SERVER}"
    ));
    let pod_events = watcher(Api::<Pod>::all(client.clone()), predictor_pods)
        .default_backoff()
        .modify(slim_pod)
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
    let (cluster_runtimes, cluster_runtimes_writer) = reflector::store::<ClusterServingRuntime>();
    let cluster_runtime_events = watcher(
        Api::<ClusterServingRuntime>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|r| r.managed_fields_mut().clear())
    .reflect(cluster_runtimes_writer)
    .touched_objects();
    let (quotas, quotas_writer) = reflector::store::<ResourceQuota>();
    let quota_events = watcher(
        Api::<ResourceQuota>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|q| q.managed_fields_mut().clear())
    .reflect(quotas_writer)
    .touched_objects();
    // ServerPools: one watch, shared by the pools' controller and the pooled services'
    // reconciles (a pool's status change is theirs too); the pool servers' pods.
    let (pools, pools_writer) = reflector::store_shared::<ServerPool>(256);
    let pool_subscriber = pools_writer.subscribe().expect("a shared store");
    let pool_service_subscriber = pools_writer.subscribe().expect("a shared store");
    let pool_events = watcher(
        Api::<ServerPool>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|p| p.managed_fields_mut().clear())
    .reflect_shared(pools_writer)
    .touched_objects();
    tokio::spawn(pool_events.for_each(|_| async {}));
    let (pool_pods, pool_pods_writer) = reflector::store::<Pod>();
    let pool_pod_events = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(&format!(
            "{MANAGED},app.kubernetes.io/component={COMPONENT_POOL_SERVER}"
        )),
    )
    .default_backoff()
    .modify(slim_pod)
    .reflect(pool_pods_writer)
    .touched_objects();
    let (isvcs, isvcs_writer) = reflector::store::<InferenceService>();
    let recorder = Recorder::new(client.clone(), context.reporter.clone());
    let collector = context.collector.clone();
    let shared = Arc::new(Shared {
        context,
        recorder,
        deployments,
        services,
        pods,
        runtimes,
        cluster_runtimes,
        quotas,
        owned_deployments,
        owned_pods,
        gateway_api: Mutex::new(None),
        keda_api: Mutex::new(None),
        applied_in_full: Mutex::default(),
        recent: Mutex::default(),
        collector,
        windows: Mutex::default(),
        autoscalers: Mutex::default(),
        stalls: Mutex::default(),
        isvcs: isvcs.clone(),
        pools: pools.clone(),
        pool_pods: pool_pods.clone(),
        http: ferry_api::repository::Client::default(),
    });
    // The controller is triggered by the very streams that fill the caches (a reflector updates
    // its store before it passes an object on): a reconcile never reads a cache older than its
    // trigger.
    let isvc_events = watcher(
        Api::<InferenceService>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|i| i.managed_fields_mut().clear())
    .reflect(isvcs_writer)
    .touched_objects();
    let users = isvcs.clone();
    let pool_controller = Controller::for_shared_stream(pool_subscriber, pools)
        .watches_stream(pool_pod_events, |pod| {
            let pool = pod.labels().get(LABEL_POOL)?.clone();
            Some(ObjectRef::<ServerPool>::new(&pool).within(&pod.namespace()?))
        })
        .shutdown_on_signal()
        .run(
            crate::pools::reconcile,
            crate::pools::error_policy,
            shared.clone(),
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "pool reconcile failed");
            }
        });
    let service_controller = Controller::for_stream(isvc_events, isvcs)
        .watches_shared_stream(pool_service_subscriber, {
            let users = users.clone();
            move |pool: Arc<ServerPool>| pool_users(&users, &pool)
        })
        .watches_stream(deployment_events, owner)
        .watches_stream(pod_events, owner)
        .watches_stream(runtime_events, {
            let users = users.clone();
            move |runtime| {
                runtime_users(&users, runtime.namespace().as_deref(), &runtime.name_any())
            }
        })
        .watches_stream(cluster_runtime_events, {
            let users = users.clone();
            move |runtime| runtime_users(&users, None, &runtime.name_any())
        })
        // A quota's status changes as pods come and go: a step held by it may go on.
        .watches_stream(quota_events, move |quota| {
            namespace_services(&users, quota.namespace().as_deref())
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, shared)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile failed");
            }
        });
    tokio::join!(service_controller, pool_controller);
}

/// The InferenceServices placed on `pool`.
fn pool_users(
    isvcs: &Store<InferenceService>,
    pool: &ServerPool,
) -> Vec<ObjectRef<InferenceService>> {
    isvcs
        .state()
        .iter()
        .filter(|isvc| isvc.namespace() == pool.namespace())
        .filter(|isvc| isvc.spec.predictor.pool.as_deref() == pool.metadata.name.as_deref())
        .map(|isvc| ObjectRef::from_obj(isvc.as_ref()))
        .collect()
}

/// The InferenceServices a change of a runtime named `name` may concern: those of its
/// namespace (of every namespace for a ClusterServingRuntime: `namespace` None) that name it,
/// or that name no runtime and have a format Ferry's own server does not run.
fn runtime_users(
    isvcs: &Store<InferenceService>,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<InferenceService>> {
    isvcs
        .state()
        .iter()
        .filter(|isvc| namespace.is_none() || isvc.namespace().as_deref() == namespace)
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

/// The InferenceServices of `namespace`.
fn namespace_services(
    isvcs: &Store<InferenceService>,
    namespace: Option<&str>,
) -> Vec<ObjectRef<InferenceService>> {
    isvcs
        .state()
        .iter()
        .filter(|isvc| isvc.namespace().as_deref() == namespace)
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
                || key == ferry_render::ANNOTATION_HTTP_PORT
                || key == ferry_render::ANNOTATION_GRPC_PORT
        });
    }
}

/// Drop what no reconcile reads from a cached pod.
fn slim_pod(p: &mut Pod) {
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
}

/// The longest note the API server accepts on an Event.
const MAX_NOTE_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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

#[cfg(test)]
#[test]
fn long_event_notes_are_cut_to_what_the_api_server_accepts() {
    let long = "é".repeat(800);
    let cut = truncated(&long, MAX_NOTE_BYTES);
    assert!(
        cut.len() <= MAX_NOTE_BYTES && cut.ends_with('…'),
        "{}",
        cut.len()
    );
    assert_eq!(truncated("short", MAX_NOTE_BYTES), "short");
}

/// Whether the apiserver refused a write because the namespace is being deleted.
fn namespace_terminating(error: &Error) -> bool {
    matches!(error, Error::Kube(kube::Error::Api(e))
        if e.code == 403 && e.message.contains("because it is being terminated"))
}

impl Shared {
    /// Publish an event about `isvc`. Awaited, not spawned: a graceful shutdown lets running
    /// reconciles finish, and a spawned publish would be lost with the process (the next
    /// leader sees the status already written and has no transition to report).
    pub(crate) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        isvc: &K,
        event: &PlannedEvent,
    ) {
        let type_ = match event.type_ {
            ferry_core::reason::EventType::Normal => EventType::Normal,
            ferry_core::reason::EventType::Warning => EventType::Warning,
        };
        let event = Event {
            type_,
            reason: event.reason.as_str().to_string(),
            note: Some(truncated(&event.note, MAX_NOTE_BYTES)),
            action: event
                .action
                .clone()
                .unwrap_or_else(|| "Reconcile".to_string()),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &isvc.object_ref(&())).await {
            tracing::warn!(name = %isvc.name_any(), error = %e, "cannot publish an event");
        }
    }

    /// Whether `hash` is what the object `key` holds already: its cached copy carries it, or
    /// this operator applied it within [`RECENT`] (the cache may not show its own write yet).
    pub(crate) fn known(&self, key: &str, cached: Option<&String>, hash: &str) -> bool {
        if cached.is_some_and(|c| c == hash) {
            return true;
        }
        let recent = self.recent.lock().expect("poisoned");
        recent
            .get(key)
            .is_some_and(|(h, at)| h == hash && at.elapsed() < RECENT)
    }

    /// Whether `isvc`'s objects are due to be applied in full, hashes or not (hand edits are
    /// undone every [`REAPPLY_EVERY`]).
    pub(crate) fn due_in_full(&self, isvc: &InferenceService) -> bool {
        self.applied_in_full
            .lock()
            .expect("poisoned")
            .get(&ObjectRef::from_obj(isvc))
            .is_none_or(|at| at.elapsed() >= REAPPLY_EVERY)
    }

    /// `isvc`'s objects were just applied in full.
    pub(crate) fn applied_fully(&self, isvc: &InferenceService) {
        self.applied_in_full
            .lock()
            .expect("poisoned")
            .insert(ObjectRef::from_obj(isvc), Instant::now());
    }

    /// How long ago this operator wrote `key`, when it did within [`RECENT`].
    pub(crate) fn since_written(&self, key: &str) -> Option<Duration> {
        let recent = self.recent.lock().expect("poisoned");
        recent
            .get(key)
            .map(|(_, at)| at.elapsed())
            .filter(|e| *e < RECENT)
    }

    pub(crate) fn remember(&self, key: String, hash: String) {
        let mut recent = self.recent.lock().expect("poisoned");
        if recent.len() > 4096 {
            recent.retain(|_, (_, at)| at.elapsed() < RECENT);
        }
        recent.insert(key, (hash, Instant::now()));
    }

    pub(crate) fn cached<K>(&self, store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        store.get(&ObjectRef::new(name).within(namespace))
    }

    /// The HTTPRoute resource, when the cluster serves the Gateway API (asked at most every 30 s).
    pub(crate) async fn http_route_api(&self) -> Option<ApiResource> {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
        self.discover(&self.gateway_api, &gvk).await
    }

    /// KEDA's ScaledObject resource, where the cluster serves it (asked at most every 30 s).
    pub(crate) async fn scaled_object_api(&self) -> Option<ApiResource> {
        let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
        self.discover(&self.keda_api, &gvk).await
    }

    async fn discover(
        &self,
        cache: &Mutex<Option<(Instant, Option<ApiResource>)>>,
        gvk: &GroupVersionKind,
    ) -> Option<ApiResource> {
        if let Some((at, known)) = cache.lock().expect("poisoned").as_ref()
            && at.elapsed() < Duration::from_secs(30)
        {
            return known.clone();
        }
        let found = kube::discovery::pinned_kind(&self.context.client, gvk)
            .await
            .ok()
            .map(|(resource, _)| resource);
        *cache.lock().expect("poisoned") = Some((Instant::now(), found.clone()));
        found
    }
}
