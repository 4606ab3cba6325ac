//! The operator's own endpoints: `GET /healthz` (liveness/readiness) and `GET /metrics`
//! (reconciles by result, reconcile duration, whether this replica leads), on `--metrics-addr`.
//! `/healthz` answers on standby replicas too: waiting for the Lease is healthy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Metrics of the reconciler.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub reconciles: Family<ResultLabels, Counter>,
    pub duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconciles",
            "Reconciles of InferenceServices, by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles",
            leader.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            reconciles,
            duration,
            leader,
        }
    }
}

impl Metrics {
    pub fn record(&self, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// What `/metrics` serves once every family has a sample: every series name the operator
    /// can expose (a dashboard's queries are checked against it).
    pub fn every_series() -> String {
        let metrics = Metrics::default();
        metrics.record(true, Duration::ZERO);
        metrics.encode()
    }

    /// The metrics in the Prometheus text format, as `/metrics` serves them.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("registry poisoned");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding to a String");
        out
    }
}

/// One service's value of a router metric, as KEDA's `metrics-api` trigger reads it.
#[derive(serde::Serialize)]
struct MetricValue {
    value: f64,
}

/// Serve `/healthz`, `/metrics` and (for KEDA) `/ferry/v1/metrics/{namespace}/{service}/
/// {concurrency|rps|queueDepth}` on `addr` (in the background).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    collector: Arc<crate::collect::Collector>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/ferry/v1/metrics/{namespace}/{service}/{metric}",
            get(
                move |axum::extract::Path((namespace, service, metric)): axum::extract::Path<(
                    String,
                    String,
                    String,
                )>| {
                    let collector = collector.clone();
                    async move {
                        let metric = match metric.as_str() {
                            "concurrency" => ferry_api::ScaleMetric::Concurrency,
                            "rps" => ferry_api::ScaleMetric::Rps,
                            "queueDepth" => ferry_api::ScaleMetric::QueueDepth,
                            other => {
                                return (
                                    axum::http::StatusCode::NOT_FOUND,
                                    format!("no metric {other:?}: concurrency, rps or queueDepth"),
                                )
                                    .into_response();
                            }
                        };
                        let value = collector
                            .external(&namespace, &service, metric)
                            .unwrap_or(0.0);
                        axum::Json(MetricValue { value }).into_response()
                    }
                },
            ),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                        .into_response()
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}
