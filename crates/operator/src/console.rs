//! `ferry console --kubeconfig`: the web console's JSON API for a cluster, run on the user's
//! machine with the user's own credentials (as `kubectl argo rollouts dashboard` runs). The
//! same paths local mode's control API serves, so the page is the same in both modes:
//! InferenceServices, their Events, their predictor pods as replicas, a pod's log, rollout
//! controls (the annotations the operator reads, as `ferry rollout --kubeconfig` writes them),
//! and the router pods' per-revision numbers summed (at each pod's IP, else through the
//! apiserver's pod proxy). Every call needs the console's own bearer token, made at start.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_api::{InferenceService, LABEL_REVISION, LABEL_SERVICE};
use ferry_core::progressive::{Control, control_annotations};
use ferry_router::{ConsoleMetrics, ServiceNumbers};
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::collect::RouterPods;

/// What can go wrong answering the page, with its HTTP status (the one mapping).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("unauthorized: missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::Unauthorized => StatusCode::UNAUTHORIZED,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::Unavailable(_) => StatusCode::BAD_GATEWAY,
            ConsoleError::Kube(kube::Error::Api(e)) => {
                StatusCode::from_u16(e.code).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ConsoleError::Kube(_) => StatusCode::BAD_GATEWAY,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

type Result<T> = std::result::Result<T, ConsoleError>;

#[derive(Clone)]
struct Console {
    client: Client,
    token: Arc<str>,
    http: reqwest::Client,
    routers: RouterPods,
}

/// The console's app for the cluster `client` reaches: the page (`ferry_console::routes`) and
/// its API, which answers only `token`.
pub fn app(client: Client, token: &str) -> Router {
    let state = Console {
        client,
        token: Arc::from(token),
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .expect("an HTTP client"),
        routers: RouterPods::default(),
    };
    let object = "/v1/namespaces/{namespace}/inferenceservices/{name}";
    Router::new()
        .route("/v1/inferenceservices", get(list))
        .route(&format!("{object}/events"), get(events))
        .route(&format!("{object}/replicas"), get(replicas))
        .route(&format!("{object}/logs"), get(logs))
        .route(&format!("{object}/rollout"), post(rollout))
        .route("/v1/history", get(history))
        .route(ferry_console::METRICS_PATH, get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .merge(ferry_console::routes())
        .with_state(state)
}

async fn authenticate(State(state): State<Console>, request: Request, next: Next) -> Response {
    if !ferry_console::bearer_matches(request.headers(), &state.token) {
        return ConsoleError::Unauthorized.into_response();
    }
    next.run(request).await
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

async fn list(
    State(state): State<Console>,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Value>> {
    let api: Api<InferenceService> = match &query.namespace {
        Some(ns) => Api::namespaced(state.client.clone(), ns),
        None => Api::all(state.client.clone()),
    };
    let mut items = api.list(&ListParams::default()).await?.items;
    items.sort_by_key(|i| (i.namespace(), i.name_any()));
    Ok(Json(json!({ "items": items })))
}

/// The service's Events (the operator's, through the core/v1 view), newest first.
async fn events(
    State(state): State<Console>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let api: Api<Event> = Api::namespaced(state.client.clone(), &namespace);
    let selector = format!("involvedObject.kind=InferenceService,involvedObject.name={name}");
    let mut events = api
        .list(&ListParams::default().fields(&selector))
        .await?
        .items;
    let when = event_time;
    events.sort_by_key(|e| std::cmp::Reverse(when(e)));
    let items: Vec<Value> = events
        .iter()
        .take(50)
        .map(|e| {
            json!({
                "at": when(e),
                "type": e.type_.clone().unwrap_or_default(),
                "reason": e.reason.clone().unwrap_or_default(),
                "message": e.message.clone().unwrap_or_default(),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// The service's predictor pods, as the page lists replicas.
async fn replicas(
    State(state): State<Console>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let api: Api<Pod> = Api::namespaced(state.client.clone(), &namespace);
    let pods = api
        .list(&ListParams::default().labels(&format!("{LABEL_SERVICE}={name}")))
        .await?
        .items;
    let items: Vec<Value> = pods
        .iter()
        .map(|pod| {
            let status = pod.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let restarts: i32 = status
                .and_then(|s| s.container_statuses.as_ref())
                .map(|c| c.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            json!({
                "id": pod.name_any(),
                "revision": pod.labels().get(LABEL_REVISION).cloned().unwrap_or_default(),
                "ready": ready,
                "restarts": restarts,
                "terminating": pod.metadata.deletion_timestamp.is_some(),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<i64>,
    replica: Option<String>,
}

/// One predictor pod's last lines (the kubelet's log, through the apiserver).
async fn logs(
    State(state): State<Console>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> Result<Response> {
    let pod = query
        .replica
        .ok_or_else(|| ConsoleError::NotFound("logs: name a replica (?replica=POD)".into()))?;
    let api: Api<Pod> = Api::namespaced(state.client.clone(), &namespace);
    let found = api.get(&pod).await?;
    if found.labels().get(LABEL_SERVICE) != Some(&name) {
        return Err(ConsoleError::NotFound(format!(
            "pod {namespace}/{pod} is not a replica of {name}"
        )));
    }
    let text = api
        .logs(
            &pod,
            &LogParams {
                tail_lines: Some(query.tail.unwrap_or(100)),
                ..Default::default()
            },
        )
        .await?;
    Ok((StatusCode::OK, text).into_response())
}

#[derive(Debug, serde::Serialize)]
struct AnnotationPatch {
    metadata: Annotations,
}

#[derive(Debug, serde::Serialize)]
struct Annotations {
    annotations: BTreeMap<String, Option<String>>,
}

async fn rollout(
    State(state): State<Console>,
    Path((namespace, name)): Path<(String, String)>,
    Json(control): Json<Control>,
) -> Result<Json<InferenceService>> {
    Ok(Json(
        control_rollout(&state.client, &namespace, &name, control).await?,
    ))
}

/// Promote, abort, pause or resume the rollout of `namespace/name`: the annotations the core
/// derives, as a merge patch (what `kubectl annotate` would write). The console's buttons and
/// `ferry rollout --kubeconfig`.
pub async fn control_rollout(
    client: &Client,
    namespace: &str,
    name: &str,
    control: Control,
) -> Result<InferenceService> {
    let api: Api<InferenceService> = Api::namespaced(client.clone(), namespace);
    let isvc = api.get(name).await?;
    let changes = control_annotations(control, &isvc).map_err(ConsoleError::Conflict)?;
    let patch = AnnotationPatch {
        metadata: Annotations {
            annotations: changes
                .into_iter()
                .map(|(key, value)| (key.to_string(), value))
                .collect(),
        },
    };
    Ok(api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// When an Event happened: its event time, else its last time, else its creation.
pub fn event_time(e: &Event) -> String {
    e.event_time
        .as_ref()
        .map(|t| t.0.to_string())
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0.to_string()))
        .or_else(|| {
            e.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
        })
        .unwrap_or_default()
}

/// A cluster keeps its audit trail in the apiserver's audit log, not here.
async fn history() -> ConsoleError {
    ConsoleError::NotFound(
        "a cluster's change history is the apiserver's audit log (and the Events)".into(),
    )
}

/// Every router pod's numbers, summed: at the pod's IP when this machine reaches it, else
/// through the apiserver's pod proxy.
async fn metrics(State(state): State<Console>) -> Result<Json<ConsoleMetrics>> {
    let pods: Api<Pod> = Api::namespaced(state.client.clone(), &state.routers.namespace);
    let list = pods
        .list(&ListParams::default().labels(&state.routers.selector))
        .await?;
    let token = router_token(&state).await;
    let mut replicas = Vec::new();
    for pod in list.items {
        if let Some(numbers) = pod_numbers(&state, &pod, token.as_deref()).await {
            replicas.push(numbers);
        }
    }
    if replicas.is_empty() {
        return Err(ConsoleError::Unavailable(format!(
            "no router pod in {} answered ({})",
            state.routers.namespace, state.routers.selector
        )));
    }
    Ok(Json(ConsoleMetrics::merged("cluster", replicas)))
}

/// The routers' admin token: the operator's (FERRY_ROUTER_ADMIN_TOKEN) or the Secret both
/// Deployments read, where these credentials may read it; their numbers need it only while
/// namespaces have API keys.
async fn router_token(state: &Console) -> Option<String> {
    if let Some(token) = &state.routers.token {
        return Some(token.clone());
    }
    let secrets: Api<Secret> = Api::namespaced(state.client.clone(), &state.routers.namespace);
    let secret = secrets.get_opt("ferry-router-admin").await.ok().flatten()?;
    let bytes = secret.data?.get("token")?.0.clone();
    String::from_utf8(bytes).ok()
}

async fn pod_numbers(
    state: &Console,
    pod: &Pod,
    token: Option<&str>,
) -> Option<Vec<ServiceNumbers>> {
    let path = ferry_core::analysis::NUMBERS_PATH;
    if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
        let mut request = state
            .http
            .get(format!("http://{ip}:{}{path}", state.routers.port));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Ok(response) = request.send().await
            && response.status().is_success()
            && let Ok(numbers) = response.json().await
        {
            return Some(numbers);
        }
    }
    let url = format!(
        "/api/v1/namespaces/{}/pods/{}:{}/proxy{path}",
        state.routers.namespace,
        pod.name_any(),
        state.routers.port
    );
    // The apiserver's proxy does not pass a bearer token on: through it, a router's numbers
    // are readable while no namespace has API keys.
    let request = axum::http::Request::get(url).body(Vec::new()).ok()?;
    match state.client.request_text(request).await {
        Ok(text) => serde_json::from_str(&text).ok(),
        Err(e) => {
            tracing::debug!(pod = %pod.name_any(), error = %e, "router numbers unreachable");
            None
        }
    }
}
