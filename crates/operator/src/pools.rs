//! ServerPools in a cluster: each pool is a Deployment of `ferry server --memory-budget` pods
//! (`ferry_render::pool`), started with no model and driven by this reconcile through their
//! repository API at the pod IPs. Every reconcile (a change of the pool or of its pods, and
//! every second: servers evict and measure on their own) observes the ready servers (their
//! repository index and residency), asks the core for the pool's decision
//! ([`ferry_core::pool::decide`], the call local mode makes), registers and unregisters
//! copies, and writes the pool's status: where each pooled model's copies are. The pooled
//! InferenceServices' reconciles and the router read that status.

use std::sync::Arc;
use std::time::Duration;

use ferry_api::{InferenceService, LABEL_POOL, ServerPool, ServerPoolStatus};
use ferry_core::ReplicaView;
use ferry_core::pool::{self, PoolServer, Pooled};
use ferry_core::reason::{PlannedEvent, Reason};
use ferry_core::routes::Addresses;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::apply::{cached_hash, stamp};
use crate::controller::{Error, FIELD_MANAGER, Shared};
use crate::observe::{pod_view_as, restarts};

/// How often a pool is observed when nothing changes.
const OBSERVE_EVERY: Duration = Duration::from_secs(1);
/// Repository calls in flight at once per pool.
const CALLS_AT_ONCE: usize = 16;

/// The apply document of a pool's status subresource.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a> {
    api_version: &'a str,
    kind: &'a str,
    status: &'a ServerPoolStatus,
}

pub(crate) async fn reconcile(pool: Arc<ServerPool>, shared: Arc<Shared>) -> Result<Action, Error> {
    if pool.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = shared.pool_pods.wait_until_ready().await;
    let _ = shared.deployments.wait_until_ready().await;
    let Some(namespace) = pool.namespace() else {
        return Err(Error::Invalid("ServerPool without namespace".into()));
    };
    let name = pool.name_any();
    let errors = ferry_api::validate_pool(&pool);
    if !errors.is_empty() {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        shared
            .event(
                pool.as_ref(),
                &PlannedEvent::new(Reason::InvalidSpec, message.clone()),
            )
            .await;
        return Err(Error::Invalid(message));
    }
    let client = &shared.context.client;

    // The servers' Deployment, applied when what Ferry would apply changed.
    let mut deployment = ferry_render::pool::render(&pool, &shared.context.render);
    let deployment_name = ferry_render::pool::deployment_name(&name);
    let hash = stamp(&mut deployment);
    let key = format!("deployment/{namespace}/{deployment_name}");
    let cached = shared.cached(&shared.deployments, &namespace, &deployment_name);
    if !shared.known(&key, cached_hash(cached.as_deref()), &hash) {
        Api::<Deployment>::namespaced(client.clone(), &namespace)
            .patch(
                &deployment_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&deployment),
            )
            .await?;
        shared.remember(key, hash);
    }

    // Observe the servers: each ready pod's index and residency, at its pod IP.
    let now = Timestamp::now();
    let views: Vec<_> = shared
        .pool_pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| p.labels().get(LABEL_POOL) == Some(&name))
        .map(|p| {
            let (view, addrs) = pod_view_as(p, now, name.clone());
            (view, addrs, restarts(p))
        })
        .collect();
    let budget = pool.spec.memory_budget_bytes().unwrap_or(0);
    let mut servers = Vec::new();
    let live: Vec<_> = views
        .iter()
        .filter(|(view, ..)| !view.terminating)
        .cloned()
        .collect();
    for chunk in live.chunks(CALLS_AT_ONCE) {
        let observing = chunk.iter().cloned().map(|(view, addrs, restarts)| {
            observe_one(shared.http.clone(), view, addrs, restarts, budget)
        });
        servers.extend(futures_util::future::join_all(observing).await);
    }

    // The pooled services, the decision, and carrying it out: new copies first.
    let pooled: Vec<(Arc<InferenceService>, Pooled)> = shared
        .isvcs
        .state()
        .into_iter()
        .filter(|i| i.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .filter(|i| i.spec.predictor.pool.as_deref() == Some(name.as_str()))
        .map(|isvc| {
            let measured = pool::last_recorded(pool.status.as_ref(), &isvc.model_name());
            let pooled = Pooled::of(
                &isvc,
                isvc.spec.predictor.model.local_file_bytes(),
                measured,
            );
            (isvc, pooled)
        })
        .collect();
    let models: Vec<Pooled> = pooled.iter().map(|(_, p)| p.clone()).collect();
    let mut decision = pool::decide(&pool.spec, &servers, &models);
    let address = |server: &str| {
        views
            .iter()
            .find(|(v, ..)| v.id == server)
            .and_then(|(_, a, _)| a.as_ref())
            .map(|a| a.http)
    };
    let registrations: Vec<_> = decision
        .register
        .iter()
        .filter_map(|(server, model)| {
            let (isvc, _) = pooled.iter().find(|(_, p)| &p.model == model)?;
            let path = isvc.spec.predictor.model.reader_path().to_string();
            Some((server.clone(), model.clone(), address(server)?, path))
        })
        .collect();
    let mut failed = Vec::new();
    for chunk in registrations.chunks(CALLS_AT_ONCE) {
        let calls = chunk.iter().cloned().map(|(server, model, at, path)| {
            register(shared.http.clone(), name.clone(), server, model, at, path)
        });
        failed.extend(
            futures_util::future::join_all(calls)
                .await
                .into_iter()
                .flatten(),
        );
    }
    for (server, model) in &failed {
        decision.registration_failed(server, model);
    }
    let unregistrations: Vec<_> = decision
        .unregister
        .iter()
        .filter_map(|(server, model)| Some((server.clone(), model.clone(), address(server)?)))
        .collect();
    for chunk in unregistrations.chunks(CALLS_AT_ONCE) {
        let calls = chunk.iter().cloned().map(|(server, model, at)| {
            unregister(shared.http.clone(), name.clone(), server, model, at)
        });
        futures_util::future::join_all(calls).await;
    }

    // The status: what the pooled services' reconciles and the router read.
    let server_views: Vec<_> = views.iter().map(|(v, ..)| v.clone()).collect();
    let status = decision.status_for(&pool, &server_views, &ferry_core::service::timestamp(now));
    if pool.status.as_ref() != Some(&status) {
        let apply = StatusApply {
            api_version: ferry_api::API_VERSION,
            kind: "ServerPool",
            status: &status,
        };
        Api::<ServerPool>::namespaced(client.clone(), &namespace)
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&apply),
            )
            .await?;
    }
    Ok(Action::requeue(OBSERVE_EVERY))
}

/// A server as observed: its index and residency when it is ready and answers.
async fn observe_one(
    http: ferry_api::repository::Client,
    view: ReplicaView,
    addrs: Option<Addresses>,
    restarts: u32,
    budget: u64,
) -> PoolServer {
    let unobserved = PoolServer {
        id: view.id.clone(),
        budget,
        restarts,
        ..PoolServer::default()
    };
    let Some(addrs) = addrs.filter(|_| view.ready()) else {
        return unobserved;
    };
    match http.observe(addrs.http).await {
        Ok((entries, residency)) => PoolServer {
            restarts,
            ..PoolServer::observed(&view.id, budget, &entries, &residency)
        },
        Err(e) => {
            tracing::debug!(server = %view.id, error = %e, "pool server not observed");
            unobserved
        }
    }
}

/// Register a copy of `model` (its file or URI at `path`) on `server`: the copy when it failed.
async fn register(
    http: ferry_api::repository::Client,
    pool: String,
    server: String,
    model: String,
    at: std::net::SocketAddr,
    path: String,
) -> Option<(String, String)> {
    match http.register(at, &model, &path).await {
        Ok(()) => {
            tracing::debug!(%pool, %server, %model, "copy registered");
            None
        }
        Err(e) => {
            tracing::warn!(%pool, %server, %model, error = %e, "register failed");
            Some((server, model))
        }
    }
}

async fn unregister(
    http: ferry_api::repository::Client,
    pool: String,
    server: String,
    model: String,
    at: std::net::SocketAddr,
) {
    match http.unregister(at, &model).await {
        Ok(()) => tracing::debug!(%pool, %server, %model, "copy unregistered"),
        Err(e) => tracing::warn!(%pool, %server, %model, error = %e, "unregister failed"),
    }
}

pub(crate) fn error_policy(pool: Arc<ServerPool>, error: &Error, _: Arc<Shared>) -> Action {
    tracing::warn!(name = %pool.name_any(), error = %error, "pool reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
