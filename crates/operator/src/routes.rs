//! The cluster feed of the router: InferenceServices, their predictor Pods (podIP, Ready,
//! deletionTimestamp), ServerPools and their servers' Pods (a pooled service's endpoints are
//! the servers its pool's status places its model on), the API key Secrets (label `ferry.dev/api-key`) and the Namespaces
//! (annotation `ferry.dev/rate-limit`) watched through reflectors; on every change the route
//! table is rebuilt by the same `ferry_core::routes::build` local mode uses. EndpointSlices are not used: they refuse
//! loopback pod IPs on the test bed, and Pods carry everything the table needs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::{COMPONENT_POOL_SERVER, InferenceService, LABEL_POOL, LABEL_SERVICE, ServerPool};
use ferry_core::routes::{ApiKey, Endpoint, RouteTable, ServiceEndpoints, build};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::observe::{pod_view, pod_view_as, restarts};

fn table(
    isvcs: &Store<InferenceService>,
    pods: &Store<Pod>,
    pools: &Store<ServerPool>,
    secrets: &Store<Secret>,
    namespaces: &Store<Namespace>,
    routers: u32,
) -> RouteTable {
    // One pass over the pods, grouped by (namespace, InferenceService) and, for pool servers,
    // by (namespace, pod): linear in the objects, not their product.
    let mut by_service: HashMap<(String, String), Vec<Endpoint>> = HashMap::new();
    let mut pool_servers: HashMap<(String, String), (Endpoint, u32)> = HashMap::new();
    let now = k8s_openapi::jiff::Timestamp::now();
    for pod in pods.state() {
        if let (Some(namespace), Some(pool)) = (pod.namespace(), pod.labels().get(LABEL_POOL)) {
            if let (replica, Some(addrs)) = pod_view_as(&pod, now, pool.clone()) {
                let endpoint = Endpoint { replica, addrs };
                pool_servers.insert((namespace, pod.name_any()), (endpoint, restarts(&pod)));
            }
            continue;
        }
        let (Some(namespace), Some(name)) = (pod.namespace(), pod.labels().get(LABEL_SERVICE))
        else {
            continue;
        };
        let Some((replica, Some(addrs))) = pod_view(&pod, now) else {
            continue;
        };
        by_service
            .entry((namespace, name.clone()))
            .or_default()
            .push(Endpoint { replica, addrs });
    }
    let services: Vec<ServiceEndpoints> = isvcs
        .state()
        .iter()
        .filter_map(|isvc| {
            let namespace = isvc.namespace()?;
            let name = isvc.name_any();
            if let Some(pool) = &isvc.spec.predictor.pool {
                // The pool servers its pool's status places its model on, as its revision.
                let revision = ferry_core::runtime::revision(isvc, None);
                let pool = pools.get(&ObjectRef::new(pool).within(&namespace));
                let status = pool.as_ref().and_then(|p| p.status.as_ref());
                let server = |id: &str| pool_servers.get(&(namespace.clone(), id.to_string()));
                let servers = status.map_or(Vec::new(), |s| {
                    ferry_core::pool::routable_servers(s, &isvc.model_name(), |id| {
                        server(id).map(|(_, restarts)| *restarts)
                    })
                });
                let endpoints: Vec<Endpoint> = servers
                    .iter()
                    .filter_map(|id| server(id))
                    .map(|(e, _)| {
                        let mut endpoint = e.clone();
                        endpoint.replica.revision = revision.clone();
                        endpoint
                    })
                    .collect();
                let weights = [(revision, 100)].into();
                return Some(
                    ServiceEndpoints::of(isvc, endpoints, weights).shared_by(routers, isvc),
                );
            }
            let endpoints = by_service
                .remove(&(namespace.clone(), name.clone()))
                .unwrap_or_default();
            // The same weights the operator's plan gives the revisions: a progressive
            // rollout's from the status the operator wrote first, else by ready replicas.
            let (weights, fallback) = match planned_traffic(isvc) {
                Some(planned) => planned,
                None => {
                    let replicas: Vec<_> = endpoints.iter().map(|e| e.replica.clone()).collect();
                    (ferry_core::service::ready_weights(&replicas, &[]), None)
                }
            };
            let variants = variant_names(isvc, &weights);
            let shadow = isvc
                .shadow()
                .map(|(percent, _, revision)| (revision, percent));
            Some(
                ServiceEndpoints::of(isvc, endpoints, weights)
                    .shared_by(routers, isvc)
                    .with_fallback(fallback)
                    .with_variants(variants)
                    .with_shadow(shadow),
            )
        })
        .collect();
    // API keys: one Secret each, labelled for Ferry, in the key's namespace.
    let keys = secrets
        .state()
        .iter()
        .filter_map(|secret| ferry_api::ApiKeyRecord::from_secret(secret))
        .map(|record| ApiKey::of(&record, routers))
        .collect::<Vec<_>>();
    let namespaces = namespaces.state();
    build(&services)
        .with_keys(keys)
        .with_namespace_limits(namespaces.iter().map(|n| &**n), routers)
}

/// A progressive rollout's traffic as the operator's plan decided it (`status.revisions[]
/// .trafficPercent`), and the revision failed requests are retried on (the stable one, with
/// `retryOnStable`, while the rollout is in progress).
fn planned_traffic(isvc: &InferenceService) -> Option<(BTreeMap<String, u32>, Option<String>)> {
    let status = isvc.status.as_ref()?;
    if (isvc.spec.experiment.is_some() && status.experiment.is_some())
        || (isvc.spec.shadow.is_some() && status.shadow.is_some())
    {
        // An experiment's split (a shadow takes none), as the operator's plan wrote it.
        let weights = status
            .revisions
            .iter()
            .filter(|r| r.traffic_percent > 0)
            .map(|r| (r.name.clone(), r.traffic_percent))
            .collect();
        return Some((weights, None));
    }
    let rollout = status.rollout.as_ref()?;
    let weights = status
        .revisions
        .iter()
        .filter(|r| r.traffic_percent > 0)
        .map(|r| (r.name.clone(), r.traffic_percent))
        .collect();
    Some((
        weights,
        ferry_core::service::fallback_revision(isvc, rollout),
    ))
}

/// Each weighted revision's experiment variant: the variants' own, `control` for the rest.
fn variant_names(
    isvc: &InferenceService,
    weights: &BTreeMap<String, u32>,
) -> BTreeMap<String, String> {
    if isvc.spec.experiment.is_none() {
        return BTreeMap::new();
    }
    let variants = isvc.variants();
    weights
        .keys()
        .map(|revision| {
            let name = variants
                .iter()
                .find(|(_, _, _, r)| r == revision)
                .map_or(ferry_api::CONTROL_VARIANT.to_string(), |(v, ..)| v.clone());
            (revision.clone(), name)
        })
        .collect()
}

/// Keep `routes` current until the watches end. Rate limits are divided among `routers`
/// router replicas: each keeps its own buckets.
pub async fn feed(client: Client, routes: watch::Sender<Arc<RouteTable>>, routers: u32) {
    let (isvc_store, isvc_writer) = reflector::store::<InferenceService>();
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let (pool_store, pool_writer) = reflector::store::<ServerPool>();
    let (secret_store, secret_writer) = reflector::store::<Secret>();
    let (namespace_store, namespace_writer) = reflector::store::<Namespace>();
    let namespace_events = reflector::reflector(
        namespace_writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .inspect_ok(|namespace| {
        // A limit that does not parse is not enforced: say so where the operator of the
        // cluster looks (local mode refuses such an apply outright).
        if let Err(error) = ferry_api::namespace::namespace_rate_limit(namespace.metadata.annotations.as_ref()) {
            tracing::warn!(namespace = %namespace.name_any(), %error, "namespace rate limit ignored");
        }
    })
    .map(|_| ());
    let secret_events = reflector::reflector(
        secret_writer,
        watcher(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().labels(ferry_api::LABEL_API_KEY),
        ),
    )
    .default_backoff()
    .touched_objects()
    .map(|_| ());
    let isvc_events = reflector::reflector(
        isvc_writer,
        watcher(
            Api::<InferenceService>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .map(|_| ());
    let predictor_pods = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by=ferry,app.kubernetes.io/component in (predictor,{COMPONENT_POOL_SERVER})"
    ));
    let pool_events = reflector::reflector(
        pool_writer,
        watcher(
            Api::<ServerPool>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .map(|_| ());
    let pod_events =
        reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client), predictor_pods))
            .default_backoff()
            .touched_objects()
            .map(|_| ());
    let mut events = std::pin::pin!(futures_util::stream::select(
        futures_util::stream::select(
            futures_util::stream::select(isvc_events, pod_events),
            pool_events
        ),
        futures_util::stream::select(secret_events, namespace_events)
    ));
    while events.next().await.is_some() {
        // Coalesce a burst (a rollout, a relist): rebuild once it pauses for 10 ms, at the
        // latest 50 ms after its first event.
        let burst = tokio::time::Instant::now() + Duration::from_millis(50);
        while tokio::time::Instant::now() < burst {
            match tokio::time::timeout(Duration::from_millis(10), events.next()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let next = Arc::new(table(
            &isvc_store,
            &pod_store,
            &pool_store,
            &secret_store,
            &namespace_store,
            routers,
        ));
        routes.send_if_modified(|current| {
            if **current == *next {
                false
            } else {
                *current = next.clone();
                true
            }
        });
    }
}
