//! The control API of `ferry up`, on loopback, every call with `Authorization: Bearer <token>`
//! (the token is in the state directory, mode 0600). `ferry apply/get/describe/...` call it.
//!
//! | method | path | does |
//! |---|---|---|
//! | POST | `/v1/apply` | `{"manifests": YAML, "namespace": NS}`: validate all, store all or nothing |
//! | GET | `/v1/inferenceservices[?namespace=NS]` | list with status |
//! | GET / DELETE | `/v1/namespaces/{ns}/inferenceservices/{name}` | one / delete |
//! | GET | `.../{name}/events`, `/revisions`, `/replicas`, `/logs?tail=N` | details |
//! | GET | `/v1/console/metrics` | the router's per-revision numbers, for the web console (`/console/`, no token: the page asks for it) |
//! | POST | `/v1/apply` with `"dryRun": true` | what the apply would change, with diffs; nothing kept |
//! | GET | `/v1/history?kind=K&namespace=NS&name=N` | the audit trail of one object: who, when, what, the diff |
//! | POST | `.../{name}/rollback` | `{"revision": NAME?}`: the predictor of an earlier revision |
//! | POST | `.../{name}/rollout` | `{"promote": {"full": B}}`, `"abort"`, `"pause"`, `"resume"`: control a canary |
//! | GET / POST | `/v1/namespaces/{ns}/apikeys` | list (never the keys) / create (`{"name", "rate", "expires"}`: the key, shown once) |
//! | GET / DELETE | `/v1/namespaces/{ns}/quotas[/{name}]` | ResourceQuotas (applied with `/v1/apply`): used / hard |
//! | DELETE | `/v1/namespaces/{ns}/apikeys/{id}` | revoke: refused by the router when this returns |

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_api::InferenceService;
use ferry_core::reason::{EventType, Reason};
use serde::Deserialize;

use crate::paths::StateDir;
use crate::process;
use crate::store::Store;
use crate::supervisor::Supervisor;
use crate::wire::{
    Deleted, ErrorBody, EventRow, Items, ReplicaInfo, RevisionInfo, RollbackRequest, RolledBack,
};
use crate::{Error, Result};

mod apply;
use apply::{apply, history};

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub supervisor: Supervisor,
    pub dirs: StateDir,
    pub token: Arc<str>,
    /// Who holds the control token: the audit trail's `who` for every change made with it.
    pub user: Arc<str>,
    pub changed: Arc<tokio::sync::Notify>,
    /// API keys, published to the router with every table.
    pub keys: Arc<crate::apikeys::KeyRing>,
    pub router: ferry_router::Router,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.to_string(),
            documents: match &self {
                Error::Invalid(parse) => parse.0.clone(),
                _ => Vec::new(),
            },
        };
        (self.http_status(), Json(body)).into_response()
    }
}

pub fn app(state: ApiState) -> Router {
    let ns = "/v1/namespaces/{namespace}/inferenceservices/{name}";
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .route("/v1/apply", post(apply))
        .route("/v1/history", get(history))
        .route(ferry_console::METRICS_PATH, get(console_metrics))
        .route("/v1/inferenceservices", get(list))
        .route(ns, get(show).delete(delete))
        .route(&format!("{ns}/events"), get(events))
        .route(&format!("{ns}/revisions"), get(revisions))
        .route(&format!("{ns}/replicas"), get(replicas))
        .route(&format!("{ns}/logs"), get(logs))
        .route(&format!("{ns}/rollback"), post(rollback))
        .route(&format!("{ns}/rollout"), post(control_rollout))
        .route("/v1/namespaces/{namespace}/quotas", get(list_quotas))
        .route(
            "/v1/namespaces/{namespace}/quotas/{name}",
            axum::routing::delete(delete_quota),
        )
        .route("/v1/namespaces/{namespace}/serverpools", get(list_pools))
        .route(
            "/v1/namespaces/{namespace}/serverpools/{name}",
            axum::routing::delete(delete_pool),
        )
        .route(
            "/v1/namespaces/{namespace}/apikeys",
            get(list_keys).post(create_key),
        )
        .route(
            "/v1/namespaces/{namespace}/apikeys/{id}",
            axum::routing::delete(revoke_key),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        // The console's page and assets carry no data: served without the token.
        .merge(ferry_console::routes())
        .with_state(state)
}

/// The router's per-revision numbers for the console's plots.
async fn console_metrics(State(state): State<ApiState>) -> Json<ferry_router::ConsoleMetrics> {
    Json(ferry_router::ConsoleMetrics::new(
        "local",
        state.router.accounting().numbers(),
    ))
}

async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if !ferry_console::bearer_matches(request.headers(), &state.token) {
        return Error::Unauthorized.into_response();
    }
    next.run(request).await
}

async fn list_keys(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
) -> Result<Json<Items<crate::wire::ApiKeyInfo>>> {
    let items = state.store.api_keys(Some(&namespace))?;
    Ok(Json(Items {
        items: items.into_iter().map(|k| k.info).collect(),
    }))
}

async fn create_key(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
    Json(request): Json<crate::wire::CreateApiKey>,
) -> Result<Json<crate::wire::CreatedApiKey>> {
    let created = crate::apikeys::create(&state.store, &namespace, request)?;
    state.keys.reload(&state.store)?;
    state.router.caught_up().await;
    Ok(Json(created))
}

async fn revoke_key(
    State(state): State<ApiState>,
    Path((namespace, id)): Path<(String, String)>,
) -> Result<Json<Deleted>> {
    if !state.store.revoke_api_key(&namespace, &id)? {
        return Err(Error::NotFound {
            kind: "API key",
            namespace,
            name: id,
        });
    }
    state.keys.reload(&state.store)?;
    state.router.caught_up().await;
    tracing::info!(namespace = %namespace, id = %id, "API key revoked");
    Ok(Json(Deleted {
        deleted: format!("apikey {namespace}/{id}"),
    }))
}

impl ApiState {
    /// The control token's holder, doing `cause`.
    fn actor(&self, cause: &str) -> crate::store::Actor {
        crate::store::Actor::new(&self.user, cause)
    }
}

async fn list_quotas(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
) -> Result<Json<Items<crate::wire::QuotaInfo>>> {
    Ok(Json(Items {
        items: crate::quotas::info(&state.store, &namespace)?,
    }))
}

async fn delete_quota(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Deleted>> {
    if !state
        .store
        .delete_quota(&state.actor("delete"), &namespace, &name)?
    {
        return Err(Error::NotFound {
            kind: "ResourceQuota",
            namespace,
            name,
        });
    }
    state.changed.notify_one();
    Ok(Json(Deleted {
        deleted: format!("resourcequota {namespace}/{name}"),
    }))
}

async fn list_pools(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
) -> Result<Json<Items<ferry_api::ServerPool>>> {
    Ok(Json(Items {
        items: state.store.pools(Some(&namespace))?,
    }))
}

async fn delete_pool(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Deleted>> {
    if !state
        .store
        .delete_pool(&state.actor("delete"), &namespace, &name)?
    {
        return Err(Error::NotFound {
            kind: "ServerPool",
            namespace,
            name,
        });
    }
    state.changed.notify_one();
    Ok(Json(Deleted {
        deleted: format!("serverpool {namespace}/{name}"),
    }))
}

#[derive(Deserialize)]
struct ListQuery {
    namespace: Option<String>,
}

async fn list(
    State(state): State<ApiState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Items<InferenceService>>> {
    let items: Vec<InferenceService> = state
        .store
        .services()?
        .into_iter()
        .filter(|s| !s.deleted)
        .filter(|s| {
            query
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == s.namespace())
        })
        .map(|s| s.to_object())
        .collect();
    Ok(Json(Items { items }))
}

fn find(store: &Store, namespace: &str, name: &str) -> Result<crate::store::ServiceRow> {
    store
        .service(namespace, name)?
        .ok_or_else(|| Error::NotFound {
            kind: "InferenceService",
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
}

async fn show(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<InferenceService>> {
    let row = find(&state.store, &namespace, &name)?;
    Ok(Json(row.to_object()))
}

async fn delete(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Deleted>> {
    find(&state.store, &namespace, &name)?;
    state
        .store
        .delete(&state.actor("delete"), &namespace, &name)?;
    state.changed.notify_one();
    Ok(Json(Deleted {
        deleted: format!("{namespace}/{name}"),
    }))
}

async fn events(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Items<EventRow>>> {
    find(&state.store, &namespace, &name)?;
    Ok(Json(Items {
        items: state.store.events(&namespace, &name, 50)?,
    }))
}

async fn revisions(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Items<RevisionInfo>>> {
    let row = find(&state.store, &namespace, &name)?;
    let items = state
        .store
        .revisions(&namespace, &name)?
        .into_iter()
        .map(|revision| RevisionInfo {
            current: revision.name == row.revision,
            revision,
        })
        .collect();
    Ok(Json(Items { items }))
}

async fn replicas(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Items<ReplicaInfo>>> {
    find(&state.store, &namespace, &name)?;
    let observed = state.supervisor.observed();
    let items = state
        .store
        .replicas()?
        .into_iter()
        .filter(|r| r.namespace == namespace && r.service == name)
        .map(|r| {
            let o = observed.get(&r.id);
            let addrs = o.and_then(|o| o.addrs.as_ref());
            let ready = o.is_some_and(|o| o.health == ferry_core::ReplicaHealth::Ready);
            let path = |p: Option<&std::path::PathBuf>| p.map(|p| p.display().to_string());
            ReplicaInfo {
                revision: r.revision,
                pid: o.and_then(|o| o.pid),
                http: addrs.map(|a| a.http.to_string()),
                grpc: addrs.map(|a| a.grpc.to_string()),
                http_unix: path(addrs.and_then(|a| a.http_unix.as_ref())),
                grpc_unix: path(addrs.and_then(|a| a.grpc_unix.as_ref())),
                health: o.map(|o| o.health.clone()),
                ready,
                restarts: o.map_or(0, |o| o.restarts),
                last_exit: o.and_then(|o| o.last_exit.clone()),
                terminating: r.terminating,
                last_log_lines: if ready {
                    Vec::new()
                } else {
                    process::last_lines(&state.dirs.log_of(&r.id), 5)
                },
                id: r.id,
            }
        })
        .collect();
    Ok(Json(Items { items }))
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
    /// Only this replica's lines.
    replica: Option<String>,
}

async fn logs(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> Result<Response> {
    find(&state.store, &namespace, &name)?;
    let mut out = String::new();
    for replica in state
        .store
        .replicas()?
        .into_iter()
        .filter(|r| r.namespace == namespace && r.service == name)
        .filter(|r| query.replica.as_ref().is_none_or(|id| *id == r.id))
    {
        for line in process::last_lines(&state.dirs.log_of(&replica.id), query.tail.unwrap_or(100))
        {
            out.push_str(&format!("[{}] {line}\n", replica.id));
        }
    }
    Ok((StatusCode::OK, out).into_response())
}

async fn rollback(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    body: Option<Json<RollbackRequest>>,
) -> Result<Json<RolledBack>> {
    let row = find(&state.store, &namespace, &name)?;
    let wanted = body.map(|b| b.0).unwrap_or_default().revision;
    let history = state.store.revisions(&namespace, &name)?;
    let target = match &wanted {
        Some(revision) => history
            .iter()
            .find(|r| &r.name == revision)
            .ok_or_else(|| Error::NotFound {
                kind: "revision",
                namespace: namespace.clone(),
                name: revision.clone(),
            })?,
        // The newest revision other than the current one, its variants and its shadow.
        None => history
            .iter()
            .find(|r| {
                r.name != row.revision
                    && !row.isvc.variants().iter().any(|(_, _, _, v)| *v == r.name)
                    && row.isvc.shadow().is_none_or(|(_, _, v)| v != r.name)
            })
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "InferenceService {namespace}/{name} has no earlier revision to roll back to"
                ))
            })?,
    };
    let mut isvc = row.isvc.clone();
    isvc.spec.predictor = target.predictor.clone();
    state.store.apply_all(
        &state.actor(&format!("rollout undo (to revision {})", target.name)),
        std::slice::from_ref(&isvc),
    )?;
    state.store.event(
        &namespace,
        &name,
        EventType::Normal.as_str(),
        Reason::RolledBack.as_str(),
        &format!("predictor set to revision {}", target.name),
    )?;
    state.changed.notify_one();
    Ok(Json(RolledBack {
        revision: target.name.clone(),
    }))
}

/// `ferry rollout promote|abort|pause|resume`: the rollout-control annotations the core
/// derives, stored on the object (as `kubectl annotate` does in a cluster).
async fn control_rollout(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    Json(control): Json<ferry_core::progressive::Control>,
) -> Result<Json<InferenceService>> {
    let row = find(&state.store, &namespace, &name)?;
    let object = row.to_object();
    let changes =
        ferry_core::progressive::control_annotations(control, &object).map_err(Error::Conflict)?;
    let mut annotations = row.isvc.metadata.annotations.clone().unwrap_or_default();
    for (key, value) in changes {
        match value {
            Some(value) => annotations.insert(key.to_string(), value),
            None => annotations.remove(key),
        };
    }
    state.store.set_annotations(
        &state.actor(&format!("rollout {}", control.verb())),
        &namespace,
        &name,
        &annotations,
    )?;
    state.changed.notify_one();
    Ok(Json(find(&state.store, &namespace, &name)?.to_object()))
}
