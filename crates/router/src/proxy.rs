//! The request path, as named phases over one request ([`RequestInfo`]):
//!
//! 1. **classify** — REST path or gRPC message → model; `ferry-namespace` header or host →
//!    namespace; the router's own health and metrics endpoints answer here;
//! 2. **authorize / limit** — before the body is read: the namespace's API key (401 / 403),
//!    the key's and the service's token buckets (429 + `Retry-After`); `access.rs`;
//! 3. **pick revision** — weighted by the plan's traffic weights;
//! 4. **pick replica** — power of two choices on outstanding requests; when the service has
//!    no replica to take the request, the [`Hooks::on_no_backend`] hook decides (today: 503);
//!    with [`RouterConfig::fair`], the request first takes its namespace's fair share of the
//!    shared slots (`fair.rs`: queued past it, 503 + `Retry-After` past the queue);
//! 5. **forward** — to the replica, over its Unix socket when the table gives one;
//! 6. **on error / retry** — once, on another replica, when the replica failed before
//!    answering;
//! 7. **record** — per-revision metrics, then the [`Hooks::on_response`] hook.
//!
//! Replica answers are read whole before they are returned, so a replica that dies mid-answer
//! is retried like one that refused the connection (inference calls are pure functions of
//! their input, which makes the retry safe), and the outstanding-request count of a draining
//! replica is exact.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::routes::RouteTable;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::access;
use crate::body::{Buffered, error_response, json};
use crate::classify::{RequestKind, classify, grpc_model_name, namespace};
use crate::error::RouterError;
use crate::fair::{Fair, FairConfig};
use crate::hooks::{Hooks, MAX_HOLDS, NoBackend, NoHooks, RequestInfo};
use crate::metrics::{ErrorLabels, Metrics, RevisionLabels};
use crate::stats::Accounting;
use crate::table::{Compiled, InFlight, RevisionState, ServiceState};

mod admit;
mod attempt;
mod feedback;
mod forward;
mod hold;
mod linger;
mod mirror;
pub(crate) mod pick;

use admit::service_bucket;
pub use hold::Demand;
use pick::{pinned, sticky_key, variant_of};

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Largest request body forwarded, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Connect timeout towards a replica.
    pub connect_timeout: Duration,
    /// Router threads [`crate::serve_threads`] runs (upstream connections are pooled per thread).
    pub worker_threads: usize,
    /// A client must send its whole request head within this (slow clients are dropped).
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers), in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// The bearer token that reads the router's own numbers (`/metrics`, the per-revision
    /// JSON) while any namespace has API keys: they name every tenant's services. Without
    /// one, they are refused (403) then.
    pub admin_token: Option<String>,
    /// Slots shared fairly among namespaces ([`ferry_core::fairness`]); `None`: first come,
    /// first served.
    pub fair: Option<FairConfig>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_body_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(1),
            worker_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            admin_token: None,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            fair: None,
        }
    }
}

/// The router: cheap to clone, one per process.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    compiled: watch::Receiver<Arc<Compiled>>,
    /// The executor's latest table (what [`Router::caught_up`] waits for).
    tables: watch::Receiver<Arc<RouteTable>>,
    inflight: InFlight,
    metrics: Arc<Metrics>,
    accounting: Accounting,
    /// Shadow copies in flight at most ([`crate::shadow::IN_FLIGHT`]).
    shadow_limit: Arc<tokio::sync::Semaphore>,
    config: RouterConfig,
    hooks: Arc<dyn Hooks>,
    /// Told at once when a request is held for a service at zero (scale from zero).
    demand: std::sync::OnceLock<Demand>,
    fair: Option<Arc<Fair>>,
}

impl Router {
    /// A router reading its table from `table`; compiles every new table in a background task.
    pub fn new(table: watch::Receiver<Arc<RouteTable>>, config: RouterConfig) -> Router {
        Router::with_hooks(table, config, Arc::new(NoHooks))
    }

    /// As [`Router::new`], with `hooks` called at their phases.
    pub fn with_hooks(
        mut table: watch::Receiver<Arc<RouteTable>>,
        config: RouterConfig,
        hooks: Arc<dyn Hooks>,
    ) -> Router {
        let metrics = Arc::new(Metrics::default());
        let accounting = Accounting::default();
        let inflight = InFlight::default();
        let limiters = crate::limit::Limiters::default();
        let workers = config.worker_threads.max(1);
        let first = inflight.compile(
            &table.borrow_and_update(),
            &metrics,
            &accounting,
            &limiters,
            workers,
        );
        let (compiled_tx, compiled) = watch::channel(Arc::new(first));
        let tables = table.clone();
        {
            let inflight = inflight.clone();
            let metrics = metrics.clone();
            let accounting = accounting.clone();
            let limiters = limiters.clone();
            tokio::spawn(async move {
                while table.changed().await.is_ok() {
                    let next = inflight.compile(
                        &table.borrow_and_update(),
                        &metrics,
                        &accounting,
                        &limiters,
                        workers,
                    );
                    if compiled_tx.send(Arc::new(next)).is_err() {
                        break;
                    }
                }
            });
        }
        Router {
            inner: Arc::new(Inner {
                compiled,
                tables,
                inflight,
                metrics,
                accounting,
                shadow_limit: crate::shadow::limit(),
                fair: config.fair.map(Fair::new),
                config,
                hooks,
                demand: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Call `demand` (namespace, service) whenever a request is held for a service with no
    /// ready replica: the executor starts one at once. Set once; later calls are ignored.
    pub fn on_demand(&self, demand: Demand) {
        let _ = self.inner.demand.set(demand);
    }

    /// Wait (up to 2 s) until the router routes by the latest table its executor published:
    /// a revoked API key is refused once this returns.
    pub async fn caught_up(&self) {
        let mut compiled = self.inner.compiled.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let latest = self.inner.tables.borrow().clone();
            if Arc::ptr_eq(&compiled.borrow_and_update().source, &latest) {
                return;
            }
            if tokio::time::timeout_at(deadline, compiled.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// The per-revision numbers since the router started (canary analysis reads them).
    pub fn accounting(&self) -> Accounting {
        self.inner.accounting.clone()
    }

    /// Outstanding requests per backend, for draining.
    pub fn in_flight(&self) -> InFlight {
        self.inner.inflight.clone()
    }

    /// The table requests are routed by now.
    pub(crate) fn compiled(&self) -> Arc<Compiled> {
        self.inner.compiled.borrow().clone()
    }

    /// The router's settings.
    pub(crate) fn config(&self) -> &RouterConfig {
        &self.inner.config
    }

    /// Threads [`crate::serve_threads`] runs (the count its connection pools are made for).
    pub(crate) fn worker_threads(&self) -> usize {
        self.inner.config.worker_threads.max(1)
    }

    /// Handle one request; never fails (router errors become responses).
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Buffered> {
        if request
            .uri()
            .path_and_query()
            .map_or(0, |p| p.as_str().len())
            > MAX_URI_BYTES
        {
            let error = RouterError::UriTooLong {
                limit: MAX_URI_BYTES,
            };
            return error_response(&error, false);
        }
        let kind = classify(request.uri(), request.headers());
        let grpc = matches!(kind, RequestKind::Grpc { .. });
        // A model request's span: child of the trace it came with (nothing while tracing is
        // off; the router's own endpoints make none).
        let trace = match kind {
            RequestKind::Rest { .. } | RequestKind::Grpc { .. } | RequestKind::Feedback { .. } => {
                ferry_trace::Span::server(
                    "route",
                    &ferry_trace::Remote::from_headers(request.headers()),
                )
            }
            _ => ferry_trace::Span::none(),
        };
        match self.route(request, kind, &trace).await {
            Ok(response) => {
                trace.attribute(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                );
                response
            }
            Err(error) => {
                trace.attribute("error.type", error.label());
                trace.error(&error);
                self.inner
                    .metrics
                    .router_errors
                    .get_or_create(&ErrorLabels {
                        reason: error.label().to_string(),
                    })
                    .inc();
                tracing::debug!(error = %error, "router answered with an error");
                error_response(&error, grpc)
            }
        }
    }

    /// The phases, in order.
    async fn route(
        &self,
        request: Request<Incoming>,
        kind: RequestKind,
        trace: &ferry_trace::Span,
    ) -> Result<Response<Buffered>, RouterError> {
        // 1. classify: the router's own endpoints answer here; a gRPC call names its model in
        //    the message, so the body is read first.
        let classified = trace.child("classify", ferry_trace::Kind::Internal);
        let feedback = matches!(kind, RequestKind::Feedback { .. });
        let model = match kind {
            RequestKind::Health => {
                return Ok(json(StatusCode::OK, r#"{"live":true,"ready":true}"#.into()));
            }
            RequestKind::Metrics | RequestKind::RevisionMetrics
                if self.inner.compiled.borrow().access.any() =>
            {
                access::admin(self.inner.config.admin_token.as_deref(), request.headers())?;
                return Ok(self.own_numbers(&kind));
            }
            RequestKind::Metrics | RequestKind::RevisionMetrics => {
                return Ok(self.own_numbers(&kind));
            }
            RequestKind::Unknown => {
                return Err(RouterError::NoRoute(request.uri().path().to_string()));
            }
            RequestKind::Rest { model } | RequestKind::Feedback { model } => Some(model),
            RequestKind::Grpc { .. } => None,
        };
        let grpc = model.is_none();
        let (mut parts, body) = request.into_parts();
        let mut compiled = self.inner.compiled.borrow().clone();
        let namespace = namespace(&parts.headers, &compiled);

        // 2. authorize / limit, before the body is read: the API key, its bucket, and (REST
        //    names its model in the path) the service's bucket.
        if let Err(refused) = self.admit(&compiled, &namespace, model.as_deref(), &mut parts) {
            linger::linger(body);
            return Err(refused);
        }
        let body = self.read_body(&parts, body).await?;
        let model = match model {
            Some(model) => Some(model),
            None => {
                // gRPC names its model in the message: the service's bucket now.
                let model = grpc_model_name(&body);
                if let Some(model) = &model {
                    service_bucket(&compiled, &namespace, model)?;
                }
                model
            }
        };
        classified.text("ferry.namespace", &namespace);
        if let Some(model) = &model {
            classified.text("ferry.model", model);
        }
        classified.attribute("rpc.grpc", grpc);
        drop(classified);
        let info = RequestInfo {
            namespace: &namespace,
            model: model.as_deref(),
            grpc,
            headers: &parts.headers,
        };
        if feedback {
            return self.feedback(&compiled, &info, &body);
        }

        // 3. pick a revision, 4. pick a replica; with none, the `on_no_backend` hook decides.
        let picked = trace.child("pick", ferry_trace::Kind::Internal);
        let mut holds = 0;
        let mut warm = None;
        loop {
            let service = lookup(&compiled, &info)?;
            if service.has_backends() {
                break;
            }
            // A service that scales to zero holds the request until a replica is ready.
            if let Some(cold) = service.cold_start {
                let released = self.hold(&info, service, cold).await?;
                compiled = released.table;
                warm = released.warm;
                if warm.is_some() {
                    break;
                }
                continue;
            }
            match self
                .inner
                .hooks
                .on_no_backend(info, no_replica(service))
                .await
            {
                NoBackend::Retry if holds < MAX_HOLDS => {
                    holds += 1;
                    compiled = self.inner.compiled.borrow().clone();
                }
                NoBackend::Retry => return Err(no_replica(service)),
                NoBackend::Fail(error) => return Err(error),
            }
        }
        let service = lookup(&compiled, &info)?;
        // Its namespace's fair share of the shared slots, held until the answer is in.
        let _slot = match &self.inner.fair {
            Some(fair) => Some(
                fair.acquire(&namespace, || {
                    self.inner
                        .metrics
                        .fair_queued
                        .get_or_create(&crate::metrics::NamespaceLabels {
                            namespace: namespace.clone(),
                        })
                        .inc();
                })
                .await?,
            ),
            None => None,
        };
        let answered = async {
        let pin = pinned(&parts.headers);
        // A held request whose own probe found a starting replica ready goes there.
        let warm = warm.and_then(|(name, backend)| {
            let revision = service.revisions.iter().find(|r| r.revision == name)?;
            Some((revision, backend))
        });
        let (revision, backend) = if let Some(found) = warm {
            found
        } else {
        let revision =
            match pin {
                // `ferry-revision: REV` pins the revision (a blue-green preview, a canary's debug).
                Some(name) => {
                    service
                        .revision(name)
                        .ok_or_else(|| RouterError::RevisionNotServing {
                            namespace: service.namespace.clone(),
                            service: service.service.clone(),
                            revision: name.to_string(),
                        })?
                }
                None => match variant_of(&parts.headers) {
                    // `ferry-variant: NAME` chooses an experiment's variant explicitly.
                    Some(name) => service.pick_variant(name).ok_or_else(|| {
                        RouterError::VariantNotServing {
                            namespace: service.namespace.clone(),
                            service: service.service.clone(),
                            variant: name.to_string(),
                        }
                    })?,
                    None => match sticky_key(service.sticky.as_ref(), &parts.headers) {
                        Some(key) => service.pick_sticky(key.as_bytes()),
                        None => service.pick_revision(),
                    }
                    .ok_or_else(|| no_replica(service))?,
                },
            };
        let backend = revision
            .pick_replica(None)
            .ok_or_else(|| no_replica(service))?;
        (revision, backend)
        };
        picked.text("ferry.revision", &revision.revision);
        picked.text("ferry.replica", &backend.backend.id);
        drop(picked);

        // 5. forward, 6. on error: retry once on another replica (the replica failed before
        //    answering, and inference calls are pure functions of their input); 7. record.
        let first = self
            .attempt(&parts, &body, service, revision, &backend, grpc, 0, trace)
            .await;
        // A canary's failure (no answer, or a 5xx) goes to the stable revision once.
        let failed = match &first {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        };
        if failed
            && pin.is_none()
            && let Some((stable, other)) = service.fallback_for(&revision.revision)
        {
            tracing::debug!(failed = %revision.revision, retry = %stable.revision, "retrying on the stable revision");
            self.inner
                .metrics
                .retries
                .get_or_create(&labels(service, stable))
                .inc();
            return self
                .attempt(&parts, &body, service, stable, &other, grpc, 1, trace)
                .await;
        }
        // A replica that says it does not know the model the route table has it serve has lost
        // it (a pool server restarted empty, before its pool registered the copy again):
        // another replica answers, as for one that did not answer at all.
        let lost = matches!(&first, Ok(r) if !grpc && r.status() == StatusCode::NOT_FOUND);
        if !lost && first.is_ok() {
            return first;
        }
        let Some((revision, other)) = service.pick_other(&backend.backend.id) else {
            return first;
        };
        let first = match first {
            Ok(response) => format!("answered {}", response.status()),
            Err(e) => e.to_string(),
        };
        tracing::debug!(failed = %backend.backend.id, retry = %other.backend.id, error = %first, "retrying on another replica");
        self.inner
            .metrics
            .retries
            .get_or_create(&labels(service, revision))
            .inc();
        self.attempt(&parts, &body, service, revision, &other, grpc, 1, trace)
            .await
        }
        .await;
        if let Ok(response) = &answered {
            self.mirror(service, &parts, &body, response, grpc);
        }
        answered
    }

    /// `/metrics` or the per-revision JSON.
    fn own_numbers(&self, kind: &RequestKind) -> Response<Buffered> {
        if *kind == RequestKind::RevisionMetrics {
            let numbers =
                serde_json::to_string(&self.inner.accounting.numbers()).unwrap_or_default();
            return json(StatusCode::OK, numbers);
        }
        self.metrics_response()
    }

    fn metrics_response(&self) -> Response<Buffered> {
        let mut response = Response::new(Buffered::data(self.inner.metrics.encode().into()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        response
    }

    /// The whole request body, refused with 413 past the limit (before reading it when its
    /// length says so; the rest is then read and dropped in the background, so that the client
    /// gets the answer: [`linger`]).
    async fn read_body(
        &self,
        parts: &http::request::Parts,
        mut body: Incoming,
    ) -> Result<Bytes, RouterError> {
        let limit = self.inner.config.max_body_bytes;
        if parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|len| len > limit)
        {
            linger::linger(body);
            return Err(RouterError::TooLarge { limit });
        }
        match Limited::new(&mut body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                linger::linger(body);
                Err(RouterError::TooLarge { limit })
            }
            Err(e) => Err(RouterError::BadRequest(format!(
                "cannot read the request body: {e}"
            ))),
        }
    }
}

/// The service a request addresses: its model in its namespace, or (server-level gRPC calls)
/// any service, whose replicas answer for the server.
fn lookup<'a>(
    compiled: &'a Compiled,
    request: &RequestInfo<'_>,
) -> Result<&'a Arc<ServiceState>, RouterError> {
    match request.model {
        Some(model) => {
            compiled
                .lookup(request.namespace, model)
                .ok_or_else(|| RouterError::ModelNotFound {
                    namespace: request.namespace.to_string(),
                    model: model.to_string(),
                })
        }
        None => compiled
            .any(request.namespace)
            .ok_or_else(|| RouterError::NoReadyReplica {
                namespace: request.namespace.to_string(),
                service: "any service".into(),
            }),
    }
}

fn no_replica(service: &ServiceState) -> RouterError {
    RouterError::NoReadyReplica {
        namespace: service.namespace.clone(),
        service: service.service.clone(),
    }
}

fn labels(service: &ServiceState, revision: &RevisionState) -> RevisionLabels {
    RevisionLabels {
        namespace: service.namespace.clone(),
        service: service.service.clone(),
        revision: revision.revision.to_string(),
    }
}

/// Longest path + query the router reads (414 beyond): model names are DNS labels.
const MAX_URI_BYTES: usize = 8 << 10;

const REVISION_HEADER: HeaderName = HeaderName::from_static(ferry_api::HEADER_REVISION);
const VARIANT_HEADER: HeaderName = HeaderName::from_static(ferry_api::HEADER_VARIANT);
