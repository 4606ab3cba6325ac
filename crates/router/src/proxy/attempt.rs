//! Phases 5 and 7 around one try: forward to a replica under its own span, then record the
//! outcome (the revision's stats and latency, the error counters, the `on_response` hook).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Response;

use super::{Router, labels};
use crate::body::Buffered;
use crate::error::RouterError;
use crate::hooks::Outcome;
use crate::table::{BackendState, RevisionState, ServiceState};

impl Router {
    /// Forward to `backend` and record the outcome (metrics, then the `on_response` hook).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempt(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        service: &ServiceState,
        revision: &RevisionState,
        backend: &Arc<BackendState>,
        grpc: bool,
        attempt: u32,
        trace: &ferry_trace::Span,
    ) -> Result<Response<Buffered>, RouterError> {
        let span = trace.child("forward", ferry_trace::Kind::Client);
        span.text("ferry.revision", &revision.revision);
        span.text("ferry.replica", &backend.backend.id);
        span.attribute("ferry.attempt", i64::from(attempt));
        let started = Instant::now();
        let in_flight = revision.stats.begin();
        let result = self
            .forward(parts, body, revision, backend, grpc, &span)
            .await;
        match &result {
            Ok(response) => {
                span.attribute(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                );
                if response.status().is_server_error() {
                    span.error(format_args!("answered {}", response.status()));
                }
            }
            Err(e) => span.error(e),
        }
        drop(span);
        drop(in_flight);
        let elapsed = started.elapsed();
        let status = result.as_ref().ok().map(Response::status);
        revision.stats.record(status, elapsed);
        if let Some(status) = status {
            revision.latency.observe(elapsed.as_secs_f64());
            if status.is_success() {
                revision.ok.inc();
            } else {
                self.inner
                    .metrics
                    .response(&labels(service, revision), status.as_u16());
            }
        }
        self.inner.hooks.on_response(&Outcome {
            namespace: &service.namespace,
            service: &service.service,
            revision: &revision.revision,
            backend: &backend.backend.id,
            status,
            elapsed,
            attempt,
        });
        result
    }
}
