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
use crate::table::{Compiled, ServiceState};

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
    /// Hold `request` for `service` until a route table gives it a ready replica; that table.
    pub(crate) async fn hold(
        &self,
        request: &RequestInfo<'_>,
        service: &ServiceState,
        cold: ColdStart,
    ) -> Result<Arc<Compiled>, RouterError> {
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
            match lookup(&table, request) {
                Ok(now) if now.has_backends() => return Ok(table),
                Ok(_) => {}
                Err(error) => return Err(error),
            }
            match tokio::time::timeout_at(deadline, tables.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(RouterError::NoReadyReplica {
                        namespace: service.namespace.clone(),
                        service: service.service.clone(),
                    });
                }
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
}
