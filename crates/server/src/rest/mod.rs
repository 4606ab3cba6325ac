//! The REST front end: OIP v2 (health, metadata, infer, repository extension), KServe v1
//! `:predict`, and `/metrics`. Built by [`app`] so tests can drive it without a socket.

pub mod codec;
pub mod linger;
mod v1;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::json;

use crate::backend::TensorSpec;
use crate::config::ModelConfig;
use crate::error::Error;
use crate::protocol::Protocol;
use crate::repository::{ModelState, ModelView, Repository};

/// Shared state of the REST handlers.
#[derive(Clone)]
pub struct AppState {
    pub repo: Arc<Repository>,
    pub max_body_bytes: usize,
}

/// An [`Error`] as a REST response: its status and `{"error": "..."}`.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.http_status();
        let body = serde_json::to_vec(&json!({ "error": self.0.to_string() })).unwrap_or_default();
        json_response(status, body)
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_value(status: StatusCode, value: serde_json::Value) -> Response {
    json_response(status, serde_json::to_vec(&value).unwrap_or_default())
}

/// The REST application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_version),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_version),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/residency", get(repository_residency))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/register",
            post(repository_register),
        )
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/v1/models/{model}", get(v1::status).post(v1::predict))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    json_value(
        StatusCode::NOT_FOUND,
        json!({ "error": format!("no route for {method} {}", uri.path()) }),
    )
}

/// Reads a body up to `limit` bytes; a declared or actual larger body is 413 before it is read
/// (the rest is then read and dropped in the background, so that the client gets the answer:
/// [`linger`]).
pub async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Bytes, Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        linger::linger(body);
        return Err(Error::PayloadTooLarge { limit_bytes: limit });
    }
    match Limited::new(&mut body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            linger::linger(body);
            Err(Error::PayloadTooLarge { limit_bytes: limit })
        }
        Err(e) => Err(Error::invalid(format!("cannot read request body: {e}"))),
    }
}

async fn live() -> Response {
    json_value(StatusCode::OK, json!({ "live": true }))
}

async fn ready(State(s): State<AppState>) -> Response {
    let ready = s.repo.all_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_value(status, json!({ "ready": ready }))
}

async fn server_metadata() -> Response {
    json_value(StatusCode::OK, server_metadata_json())
}

/// The protocol extensions this server implements (REST `GET /v2` and gRPC ServerMetadata).
pub const EXTENSIONS: [&str; 3] = [
    "binary_tensor_data",
    "model_repository",
    "statistics_metrics",
];

/// `GET /v2` body.
pub fn server_metadata_json() -> serde_json::Value {
    json!({
        "name": "ferry",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    })
}

fn specs_json(specs: &[TensorSpec]) -> serde_json::Value {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "datatype": s.datatype.name(), "shape": s.shape }))
        .collect()
}

fn metadata_json(view: &ModelView) -> serde_json::Value {
    let mut body = json!({
        "name": view.config.name,
        "versions": [view.config.version],
        "state": view.state.name(),
    });
    if let ModelState::Ready(model) = &view.state {
        body["platform"] = json!(model.platform());
        body["inputs"] = specs_json(&model.signature().inputs);
        body["outputs"] = specs_json(&model.signature().outputs);
    } else {
        body["platform"] = json!("onnx");
        body["inputs"] = json!([]);
        body["outputs"] = json!([]);
    }
    if let Some(reason) = view.state.reason() {
        body["reason"] = json!(reason);
    }
    body
}

async fn model_metadata(State(s): State<AppState>, Path(model): Path<String>) -> ApiResult {
    let view = s.repo.resident_view(&model, None).await?;
    Ok(json_value(StatusCode::OK, metadata_json(&view)))
}

async fn model_metadata_version(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    let view = s.repo.resident_view(&model, Some(&version)).await?;
    Ok(json_value(StatusCode::OK, metadata_json(&view)))
}

fn ready_response(view: &ModelView) -> Response {
    // A model standing by answers its next request (it loads first): ready to serve.
    let ready = view.state.servable();
    let mut body = json!({ "name": view.config.name, "ready": ready, "state": view.state.name() });
    if let Some(reason) = view.state.reason() {
        body["reason"] = json!(reason);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_value(status, body)
}

async fn model_ready(State(s): State<AppState>, Path(model): Path<String>) -> ApiResult {
    Ok(ready_response(&s.repo.known(&model, None)?))
}

async fn model_ready_version(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    Ok(ready_response(&s.repo.known(&model, Some(&version))?))
}

async fn infer(State(s): State<AppState>, Path(model): Path<String>, request: Request) -> Response {
    infer_common(s, model, None, request).await
}

async fn infer_version(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    infer_common(s, model, Some(version), request).await
}

async fn infer_common(
    s: AppState,
    model: String,
    version: Option<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let decoded = async {
        let json_length = match headers.get(codec::HEADER_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        Error::invalid("Inference-Header-Content-Length must be a byte count")
                    })?,
            ),
        };
        let bytes = read_body(headers, body, s.max_body_bytes).await?;
        codec::decode_request(&bytes, json_length)
    }
    .await;
    let decoded = match decoded {
        Ok(d) => d,
        Err(e) => {
            // Count requests that never reached the model, too.
            s.repo
                .count_rejected(&model, version.as_deref().unwrap_or(""), Protocol::Rest, &e);
            return ApiError(e).into_response();
        }
    };
    let requested = decoded.request.outputs.clone();
    match s
        .repo
        .infer(
            &model,
            version.as_deref(),
            decoded.request,
            Protocol::Rest,
            &ferry_trace::Remote::from_headers(headers),
        )
        .await
    {
        Ok(response) => {
            let encoded =
                codec::encode_response(&response, &requested, decoded.binary_output_default);
            let mut http = json_response(StatusCode::OK, encoded.body);
            if let Some(n) = encoded.json_length {
                http.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                http.headers_mut()
                    .insert(codec::HEADER_LENGTH, HeaderValue::from(n));
            }
            http
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// Ferry's extension for a pool's executor: what the server holds against its budget, without
/// scraping /metrics (every model's series) on each pass.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ResidencyResponse {
    /// 0: no budget.
    budget_bytes: u64,
    used_bytes: u64,
    resident_models: usize,
    registered_models: usize,
    evictions: u64,
}

async fn repository_residency(State(s): State<AppState>) -> Response {
    let r = s.repo.residency();
    let body = ResidencyResponse {
        budget_bytes: r.budget.unwrap_or(0),
        used_bytes: r.used,
        resident_models: r.resident,
        registered_models: r.registered,
        evictions: r.evictions,
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[derive(Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(State(s): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult {
    let bytes = read_body(&headers, body, s.max_body_bytes).await?;
    let request: IndexRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("invalid repository index request: {e}")))?
    };
    let models: Vec<serde_json::Value> = s
        .repo
        .list()
        .into_iter()
        .filter(|v| !request.ready || matches!(v.state, ModelState::Ready(_)))
        .map(|v| {
            let mut entry = json!({
                "name": v.config.name,
                "version": v.config.version,
                "state": v.state.name(),
            });
            if let Some(reason) = v.state.reason() {
                entry["reason"] = json!(reason);
            }
            // Ferry's extension: what the model measured at load, for a pool's planner (kept
            // while a pool server's model is evicted), and whether it loads on demand.
            if let ModelState::Ready(model) = &v.state
                && let Some(footprint) = model.footprint
            {
                entry["memoryBytes"] = json!(footprint.resident_bytes);
                entry["peakMemoryBytes"] = json!(footprint.peak_bytes);
            } else if let Some(measured) = v.measured {
                entry["memoryBytes"] = json!(measured);
            }
            if v.on_demand {
                entry["onDemand"] = json!(true);
            }
            entry
        })
        .collect();
    Ok(json_value(StatusCode::OK, json!(models)))
}

#[derive(Deserialize, Default)]
struct LoadRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

/// A load request's `parameters` as `(key, value)` strings for [`ModelConfig::for_load`].
fn load_parameters(
    parameters: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(String, String)>, Error> {
    parameters
        .iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(v) => Ok((key.clone(), v.clone())),
            serde_json::Value::Number(n) => Ok((key.clone(), n.to_string())),
            _ => Err(Error::invalid(format!(
                "parameters.{key} must be a string or a number"
            ))),
        })
        .collect()
}

/// The model a load or register request names, with the configuration its parameters give
/// (`None`: as registered).
async fn load_target(
    s: &AppState,
    model: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Option<ModelConfig>, Error> {
    let bytes = read_body(headers, body, s.max_body_bytes).await?;
    let request: LoadRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        LoadRequest::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("invalid load request: {e}")))?
    };
    if !crate::config::valid_name(model) {
        return Err(Error::invalid(format!("model name '{model}' is not valid")));
    }
    let known = s.repo.view(model).map(|v| v.config);
    ModelConfig::for_load(
        model,
        known.as_ref(),
        &load_parameters(&request.parameters)?,
    )
}

async fn repository_load(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let config = load_target(&s, &model, &headers, body).await?;
    s.repo.load(&model, config).await?;
    Ok(json_value(StatusCode::OK, json!({})))
}

/// Ferry's extension for pool servers: registers a model to load on its first request (held
/// until loaded), within the server's memory budget; 409 when it can never fit.
async fn repository_register(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let config = match load_target(&s, &model, &headers, body).await? {
        Some(config) => config,
        None => s.repo.known(&model, None)?.config,
    };
    s.repo.register_on_demand(config)?;
    Ok(json_value(StatusCode::OK, json!({})))
}

async fn repository_unload(State(s): State<AppState>, Path(model): Path<String>) -> ApiResult {
    s.repo.unload(&model)?;
    Ok(json_value(StatusCode::OK, json!({})))
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut response = Response::new(Body::from(s.repo.metrics().encode()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
