//! Scale from zero: a request for a service with no ready replica whose route has a
//! cold-start buffer ([`ferry_core::routes::ColdStart`]) is held here until the route table
//! gives the service a ready replica. The executor is told at once ([`Demand`]; no poll
//! interval on this path) and sees the held count in the router's numbers, so a replica that
//! takes long to schedule is kept while requests wait. A full buffer or the timeout answers
//! 503 with `Retry-After`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_core::routes::ColdStart;

use super::{Router, lookup};
use crate::error::RouterError;
use crate::hooks::RequestInfo;
use crate::table::{BackendState, Compiled, ServiceState};

/// How often a held request probes the replicas still starting.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// What a held request goes on with: the table that gave its service a ready replica, or a
/// starting replica its own probe found ready (revision, replica) before the table did.
pub(crate) struct Released {
    pub table: Arc<Compiled>,
    pub warm: Option<(Arc<str>, Arc<BackendState>)>,
}

/// Called with (namespace, service) each time a request is held.
pub type Demand = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// One held request; released on drop.
struct Held(Arc<AtomicU64>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Router {
    /// Hold `request` for `service` until a route table gives it a ready replica, or a
    /// starting replica answers its model-ready probe.
    pub(crate) async fn hold(
        &self,
        request: &RequestInfo<'_>,
        service: &ServiceState,
        cold: ColdStart,
    ) -> Result<Released, RouterError> {
        let gauge = self
            .inner
            .accounting
            .held(&service.namespace, &service.service);
        let before = gauge.fetch_add(1, Ordering::Relaxed);
        let _held = Held(gauge);
        if before >= u64::from(cold.requests) {
            return Err(RouterError::ColdStartBufferFull {
                namespace: service.namespace.clone(),
                service: service.service.clone(),
                held: before,
            });
        }
        tracing::debug!(namespace = %service.namespace, service = %service.service, held = before + 1, "holding a request: no ready replica");
        if let Some(demand) = self.inner.demand.get() {
            demand(&service.namespace, &service.service);
        }
        let mut tables = self.inner.compiled.clone();
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(u64::from(cold.timeout_seconds));
        loop {
            let table = tables.borrow_and_update().clone();
            let now = lookup(&table, request)?;
            if now.has_backends() {
                return Ok(Released { table, warm: None });
            }
            // The replicas still starting: the first whose model is ready takes the request.
            let mut warming = false;
            if let Some(model) = request.model {
                for revision in &now.revisions {
                    for backend in &revision.warming {
                        warming = true;
                        if self.model_ready(backend, model).await {
                            tracing::debug!(replica = %backend.backend.id, "a starting replica is ready: answering from it");
                            let warm = Some((revision.revision.clone(), backend.clone()));
                            return Ok(Released { table, warm });
                        }
                    }
                }
            }
            let wake = if warming {
                (tokio::time::Instant::now() + PROBE_EVERY).min(deadline)
            } else {
                deadline
            };
            match tokio::time::timeout_at(wake, tables.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(RouterError::NoReadyReplica {
                        namespace: service.namespace.clone(),
                        service: service.service.clone(),
                    });
                }
                Err(_) if tokio::time::Instant::now() < deadline => {}
                Err(_) => {
                    return Err(RouterError::ColdStartTimeout {
                        namespace: service.namespace.clone(),
                        service: service.service.clone(),
                        seconds: cold.timeout_seconds,
                    });
                }
            }
        }
    }

    /// `GET /v2/models/{model}/ready` on a starting replica: 200 within a moment.
    async fn model_ready(&self, backend: &BackendState, model: &str) -> bool {
        let path = format!("/v2/models/{model}/ready");
        let build = || {
            let mut request = http::Request::new(http_body_util::Full::new(bytes::Bytes::new()));
            *request.uri_mut() =
                http::Uri::try_from(path.as_str()).unwrap_or_else(|_| http::Uri::from_static("/"));
            request
        };
        let addrs = &backend.backend.addrs;
        let pool = backend.pool();
        let sent = pool.send_http1(
            addrs.http,
            addrs.http_unix.as_deref(),
            PROBE_EVERY * 5,
            build,
        );
        match tokio::time::timeout(PROBE_EVERY * 10, sent).await {
            Ok(Ok((response, lease))) => {
                let ready = response.status() == http::StatusCode::OK;
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                pool.release(lease);
                ready
            }
            _ => false,
        }
    }
}
