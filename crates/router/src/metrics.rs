//! Router metrics (`GET /metrics` on the router): requests and latency per namespace, service
//! and revision; errors the router answered itself; retries.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub namespace: String,
    pub service: String,
    pub revision: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub namespace: String,
    pub service: String,
    pub revision: String,
    pub code: u16,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    ok: Family<RevisionLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<RevisionLabels, Histogram, fn() -> Histogram>,
    pub router_errors: Family<ErrorLabels, Counter>,
    pub retries: Family<RevisionLabels, Counter>,
    /// Requests that waited for their namespace's fair share of the slots.
    pub fair_queued: Family<NamespaceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_router");
        let ok = Family::<RevisionLabels, Counter>::default();
        let responses = Family::<ResponseLabels, Counter>::default();
        let latency = Family::<RevisionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let router_errors = Family::<ErrorLabels, Counter>::default();
        let retries = Family::<RevisionLabels, Counter>::default();
        let fair_queued = Family::<NamespaceLabels, Counter>::default();
        registry.register(
            "requests_ok",
            "Requests answered 2xx by a replica",
            ok.clone(),
        );
        registry.register(
            "responses",
            "Non-2xx responses from replicas, by status code",
            responses.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the replica's full answer",
            latency.clone(),
        );
        registry.register(
            "errors",
            "Requests the router answered itself, by reason",
            router_errors.clone(),
        );
        registry.register(
            "retries",
            "Requests retried on another replica",
            retries.clone(),
        );
        registry.register(
            "fair_queued",
            "Requests that waited for their namespace's fair share of the shared slots",
            fair_queued.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            ok,
            responses,
            latency,
            router_errors,
            retries,
            fair_queued,
        }
    }
}

impl Metrics {
    pub fn ok_counter(&self, labels: &RevisionLabels) -> Counter {
        self.ok.get_or_create(labels).clone()
    }

    pub fn latency(&self, labels: &RevisionLabels) -> Histogram {
        self.latency.get_or_create(labels).clone()
    }

    pub fn response(&self, labels: &RevisionLabels, code: u16) {
        self.responses
            .get_or_create(&ResponseLabels {
                namespace: labels.namespace.clone(),
                service: labels.service.clone(),
                revision: labels.revision.clone(),
                code,
            })
            .inc();
    }

    /// What `/metrics` serves once every family has a sample: every series name the router
    /// can expose (a dashboard's queries are checked against it).
    pub fn every_series() -> String {
        let metrics = Metrics::default();
        let labels = RevisionLabels::default();
        metrics.ok_counter(&labels);
        metrics.latency(&labels);
        metrics.response(&labels, 500);
        let _ = metrics.router_errors.get_or_create(&ErrorLabels::default());
        let _ = metrics.retries.get_or_create(&labels);
        let _ = metrics
            .fair_queued
            .get_or_create(&NamespaceLabels::default());
        metrics.encode()
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry poisoned");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding to a String");
        out
    }
}
