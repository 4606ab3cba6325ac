//! The request path, in the order of its phases: classify → route → pick → forward (retry once)
//! → record. Replica answers are read whole before they are returned, so a replica that dies
//! mid-answer is retried like one that refused the connection (inference calls are pure
//! functions of their input, which makes the retry safe), and the outstanding-request count of
//! a draining replica is exact.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::routes::RouteTable;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::RouterError;
use crate::metrics::{ErrorLabels, Metrics, RevisionLabels};
use crate::pool::error_chain;
use crate::table::{BackendState, Compiled, InFlight, InFlightGuard, RevisionState, ServiceState};
use crate::target::{Target, classify, grpc_model_name, namespace};

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Largest request body forwarded, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Connect timeout towards a replica.
    pub connect_timeout: Duration,
    /// Router threads [`serve_threads`] runs (upstream connections are pooled per thread).
    pub worker_threads: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_body_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(1),
            worker_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
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
    inflight: InFlight,
    metrics: Arc<Metrics>,
    config: RouterConfig,
}

impl Router {
    /// A router reading its table from `table`; compiles every new table in a background task.
    pub fn new(mut table: watch::Receiver<Arc<RouteTable>>, config: RouterConfig) -> Router {
        let metrics = Arc::new(Metrics::default());
        let inflight = InFlight::default();
        let workers = config.worker_threads.max(1);
        let first = inflight.compile(&table.borrow_and_update(), &metrics, workers);
        let (compiled_tx, compiled) = watch::channel(Arc::new(first));
        {
            let inflight = inflight.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                while table.changed().await.is_ok() {
                    let next = inflight.compile(&table.borrow_and_update(), &metrics, workers);
                    if compiled_tx.send(Arc::new(next)).is_err() {
                        break;
                    }
                }
            });
        }
        Router {
            inner: Arc::new(Inner {
                compiled,
                inflight,
                metrics,
                config,
            }),
        }
    }

    /// Outstanding requests per backend, for draining.
    pub fn in_flight(&self) -> InFlight {
        self.inner.inflight.clone()
    }

    /// Handle one request; never fails (router errors become responses).
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Buffered> {
        let target = classify(request.uri(), request.headers());
        let grpc = matches!(target, Target::Grpc { .. });
        match self.route(request, target).await {
            Ok(response) => response,
            Err(error) => {
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

    async fn route(
        &self,
        request: Request<Incoming>,
        target: Target,
    ) -> Result<Response<Buffered>, RouterError> {
        let model = match target {
            Target::Health => {
                return Ok(json(StatusCode::OK, r#"{"live":true,"ready":true}"#.into()));
            }
            Target::Metrics => {
                let mut response =
                    Response::new(Buffered::data(self.inner.metrics.encode().into()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                return Ok(response);
            }
            Target::Unknown => return Err(RouterError::NoRoute(request.uri().path().to_string())),
            Target::Rest { model } => Some(model),
            Target::Grpc { .. } => None,
        };
        let grpc = model.is_none();
        let (parts, body) = request.into_parts();
        let limit = self.inner.config.max_body_bytes;
        if parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|len| len > limit)
        {
            return Err(RouterError::TooLarge { limit });
        }
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(RouterError::TooLarge { limit });
            }
            Err(e) => {
                return Err(RouterError::BadRequest(format!(
                    "cannot read the request body: {e}"
                )));
            }
        };
        let model = match model {
            Some(model) => Some(model),
            None => grpc_model_name(&body),
        };
        let compiled = self.inner.compiled.borrow().clone();
        let namespace = namespace(&parts.headers, &compiled);
        let service: &Arc<ServiceState> =
            match &model {
                Some(model) => compiled.lookup(&namespace, model).ok_or_else(|| {
                    RouterError::ModelNotFound {
                        namespace: namespace.clone(),
                        model: model.clone(),
                    }
                })?,
                // Server-level gRPC calls (ServerLive, ...): any replica answers for the server.
                None => compiled.any().ok_or_else(|| RouterError::NoReadyReplica {
                    namespace: namespace.clone(),
                    service: "any service".into(),
                })?,
            };
        let no_replica = || RouterError::NoReadyReplica {
            namespace: service.namespace.clone(),
            service: service.service.clone(),
        };
        let (revision, backend) = service.pick(None).ok_or_else(no_replica)?;
        match self
            .forward(&parts, &body, service, revision, backend.clone(), grpc)
            .await
        {
            Ok(response) => Ok(response),
            Err(first) => {
                let Some((revision, other)) = service.pick(Some(&backend.backend.id)) else {
                    return Err(first);
                };
                tracing::debug!(failed = %backend.backend.id, retry = %other.backend.id, error = %first, "retrying on another replica");
                self.inner
                    .metrics
                    .retries
                    .get_or_create(&labels(service, revision))
                    .inc();
                self.forward(&parts, &body, service, revision, other, grpc)
                    .await
            }
        }
    }

    async fn forward(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        service: &ServiceState,
        revision: &RevisionState,
        backend: Arc<BackendState>,
        grpc: bool,
    ) -> Result<Response<Buffered>, RouterError> {
        let started = Instant::now();
        let _outstanding = InFlightGuard::new(backend.clone());
        let upstream_error = |cause: String| RouterError::Upstream {
            backend: backend.backend.id.clone(),
            cause,
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let build = |version: Version| {
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = parts.method.clone();
            // HTTP/1.1 in origin form; HTTP/2 needs scheme and authority for its pseudo-headers.
            let uri = if version == Version::HTTP_2 {
                http::Uri::try_from(format!("http://{}{path}", backend.backend.addrs.grpc))
            } else {
                http::Uri::try_from(path)
            };
            *request.uri_mut() = uri.unwrap_or_else(|_| http::Uri::from_static("/"));
            *request.version_mut() = version;
            copy_end_to_end(&parts.headers, request.headers_mut(), grpc);
            request
        };
        let timeout = self.inner.config.connect_timeout;
        let pool = backend.pool();
        let (response, lease) = if grpc {
            let response = pool
                .send_http2(
                    backend.backend.addrs.grpc,
                    backend.backend.addrs.grpc_unix.as_deref(),
                    timeout,
                    build(Version::HTTP_2),
                )
                .await
                .map_err(|e| upstream_error(e.0))?;
            (response, None)
        } else {
            let (response, lease) = pool
                .send_http1(
                    backend.backend.addrs.http,
                    backend.backend.addrs.http_unix.as_deref(),
                    timeout,
                    || build(Version::HTTP_11),
                )
                .await
                .map_err(|e| upstream_error(e.0))?;
            (response, Some(lease))
        };
        let (mut head, upstream_body) = response.into_parts();
        let collected = upstream_body
            .collect()
            .await
            .map_err(|e| upstream_error(error_chain(&e)))?;
        if let Some(lease) = lease {
            pool.release(lease);
        }
        let trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        strip_hop_by_hop(&mut head.headers);
        head.version = Version::HTTP_11;
        if let Some(value) = &revision.header {
            head.headers.insert(REVISION_HEADER, value.clone());
        }
        revision.latency.observe(started.elapsed().as_secs_f64());
        if head.status.is_success() {
            revision.ok.inc();
        } else {
            self.inner
                .metrics
                .response(&labels(service, revision), head.status.as_u16());
        }
        Ok(Response::from_parts(
            head,
            Buffered {
                data: Some(data),
                trailers,
            },
        ))
    }
}

fn labels(service: &ServiceState, revision: &RevisionState) -> RevisionLabels {
    RevisionLabels {
        namespace: service.namespace.clone(),
        service: service.service.clone(),
        revision: revision.revision.to_string(),
    }
}

const REVISION_HEADER: HeaderName = HeaderName::from_static(ferry_api::HEADER_REVISION);

/// Typed names, not strings: a `&str` key is parsed into a header name on every lookup.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap, grpc: bool) {
    to.reserve(from.len() + 1);
    for (name, value) in from {
        if name == header::HOST || HOP_BY_HOP.contains(name) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    if grpc {
        to.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn json(status: StatusCode, body: String) -> Response<Buffered> {
    let mut response = Response::new(Buffered::data(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The one place router errors become responses: OIP's `{"error": ...}` for REST, a
/// trailers-only gRPC status for gRPC.
fn error_response(error: &RouterError, grpc: bool) -> Response<Buffered> {
    if grpc {
        let mut response = Response::new(Buffered::data(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(error.grpc_code()));
        if let Ok(message) = HeaderValue::from_str(
            &error
                .to_string()
                .replace(|c: char| !c.is_ascii() || c.is_ascii_control(), " "),
        ) {
            headers.insert("grpc-message", message);
        }
        return response;
    }
    json(
        error.http_status(),
        serde_json::json!({ "error": error.to_string() }).to_string(),
    )
}

/// A whole response body, with the replica's trailers (gRPC status) when it sent any.
pub struct Buffered {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Buffered {
    fn data(data: Bytes) -> Self {
        Buffered {
            data: Some(data),
            trailers: None,
        }
    }
}

impl hyper::body::Body for Buffered {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take().filter(|d| !d.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(Bytes::is_empty) && self.trailers.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let len = self.data.as_ref().map_or(0, |d| d.len() as u64);
        if self.trailers.is_some() {
            let mut hint = hyper::body::SizeHint::new();
            hint.set_lower(len);
            hint
        } else {
            hyper::body::SizeHint::with_exact(len)
        }
    }
}

/// A running router; stop with [`RunningRouter::shutdown`].
pub struct RunningRouter {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl RunningRouter {
    /// Stop accepting, let open requests finish (up to `grace`), return.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for done in self.done {
            let _ = tokio::time::timeout_at(deadline, done).await;
        }
    }
}

/// Serve `router` on `listener` (HTTP/1.1 and h2c on one port) on the current runtime.
pub fn serve(listener: TcpListener, router: Router) -> std::io::Result<RunningRouter> {
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        accept_loop(listener, router, stop_rx).await;
        let _ = done_tx.send(());
    });
    Ok(RunningRouter {
        addr,
        stop,
        done: vec![done],
    })
}

/// Serve `router` on `addr` with its `worker_threads` OS threads (the count its connection pools
/// are made for), each a single-threaded runtime with its own `SO_REUSEPORT` listener (the
/// kernel spreads connections): a connection, its upstream connections and its requests stay
/// on one thread, as in nginx's worker model.
pub fn serve_threads(addr: SocketAddr, router: Router) -> std::io::Result<RunningRouter> {
    let threads = router.inner.config.worker_threads.max(1);
    // A socket bound to `at`; with SO_REUSEPORT for the threads' listeners.
    let socket = |at: SocketAddr, reuse_port: bool| -> std::io::Result<tokio::net::TcpSocket> {
        let socket = if at.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(reuse_port)?;
        socket.set_nodelay(true)?;
        socket.bind(at)?;
        Ok(socket)
    };
    if addr.port() != 0 {
        // SO_REUSEPORT would let these sockets share a port another router of the same user
        // already listens on (two daemons splitting traffic, silently): a plain bind fails then.
        drop(socket(addr, false)?);
    }
    let first = socket(addr, true)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..threads {
        sockets.push(socket(bound, true)?);
    }
    let (stop, stop_rx) = watch::channel(false);
    let mut done = Vec::new();
    // Listening before any thread starts: a failure leaves nothing running, and the port is
    // taken (for the check above) once this returns.
    let mut listening = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            socket.listen(4096)?
        };
        listening.push((runtime, listener));
    }
    for (index, (runtime, listener)) in listening.into_iter().enumerate() {
        let router = router.clone();
        let stop_rx = stop_rx.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        done.push(done_rx);
        std::thread::Builder::new()
            .name(format!("ferry-router-{index}"))
            .spawn(move || {
                crate::pool::set_worker(index);
                runtime.block_on(accept_loop(listener, router, stop_rx));
                let _ = done_tx.send(());
            })?;
    }
    Ok(RunningRouter {
        addr: bound,
        stop,
        done,
    })
}

async fn accept_loop(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let service = hyper::service::service_fn(move |request| {
                    let router = router.clone();
                    async move { Ok::<_, Infallible>(router.handle(request).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
