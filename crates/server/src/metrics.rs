//! Prometheus metrics of the model server (`GET /metrics`).
//!
//! Families are labelled by model, version, protocol and status. The hot path does not hash label
//! sets: each loaded model caches the handles of its success counters and latency histograms.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::protocol::Protocol;

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    pub version: String,
    pub protocol: String,
    pub status: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub model: String,
    pub version: String,
    pub protocol: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub version: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~13 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

/// All metric families, registered once.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub queue_depth: Family<ModelLabels, Gauge>,
    pub batch_size: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub load_seconds: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    pub ready: Family<ModelLabels, Gauge>,
    /// Model fetches by model and result (`hit`: found in the node's cache, `miss`: downloaded).
    pub fetches: Family<FetchLabels, Counter>,
    pub fetch_bytes: Family<ModelLabels, Counter>,
    /// Host memory each model took, measured while it loaded ([`crate::footprint`]).
    pub memory_bytes: Family<ModelLabels, Gauge>,
    pub peak_memory_bytes: Family<ModelLabels, Gauge>,
    /// Loads (explicit, at start, or on demand) and evictions, per model.
    pub loads: Family<ModelLabels, Counter>,
    pub evictions: Family<ModelLabels, Counter>,
    /// A pool server's budget and the accounted bytes of its resident models.
    pub budget_bytes: Gauge,
    pub used_bytes: Gauge,
    pub resident_models: Gauge,
}

#[derive(
    Clone, Debug, Default, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet,
)]
pub struct FetchLabels {
    pub model: String,
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry_server");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        let batch_size = Family::<ModelLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            batch_histogram,
        );
        let load_seconds = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
        let ready = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "requests",
            "Inference requests by model, version, protocol and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Inference latency inside the server, from decoded request to encoded answer",
            latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests admitted for a model and not yet answered (queued or running)",
            queue_depth.clone(),
        );
        registry.register(
            "batch_size",
            "Rows per executed batch (dynamic batching)",
            batch_size.clone(),
        );
        registry.register(
            "model_load_seconds",
            "Time to load and warm up the model",
            load_seconds.clone(),
        );
        registry.register("model_ready", "1 when the model is ready", ready.clone());
        let fetches = Family::<FetchLabels, Counter>::default();
        let fetch_bytes = Family::<ModelLabels, Counter>::default();
        registry.register(
            "model_fetches",
            "Model fetches from a store, by result: hit (the node's cache had it) or miss (downloaded)",
            fetches.clone(),
        );
        registry.register(
            "model_fetch_bytes",
            "Bytes downloaded from a store for a model",
            fetch_bytes.clone(),
        );
        let memory_bytes = Family::<ModelLabels, Gauge>::default();
        let peak_memory_bytes = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "model_memory_bytes",
            "Host memory the model added and holds once ready, measured at load",
            memory_bytes.clone(),
        );
        registry.register(
            "model_peak_memory_bytes",
            "Most host memory above the start while the model loaded and warmed up",
            peak_memory_bytes.clone(),
        );
        let loads = Family::<ModelLabels, Counter>::default();
        let evictions = Family::<ModelLabels, Counter>::default();
        registry.register(
            "model_loads",
            "Loads of the model: at start, through the repository API, or on demand by a request",
            loads.clone(),
        );
        registry.register(
            "model_evictions",
            "Times the model was evicted (least recently used) to make room within the memory budget",
            evictions.clone(),
        );
        let budget_bytes = Gauge::default();
        let used_bytes = Gauge::default();
        let resident_models = Gauge::default();
        registry.register(
            "memory_budget_bytes",
            "The memory budget resident models are kept within (0: none)",
            budget_bytes.clone(),
        );
        registry.register(
            "memory_used_bytes",
            "Accounted memory of the resident models (their measured footprints)",
            used_bytes.clone(),
        );
        registry.register(
            "resident_models",
            "Models loaded and ready now",
            resident_models.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            queue_depth,
            batch_size,
            load_seconds,
            ready,
            fetches,
            fetch_bytes,
            memory_bytes,
            peak_memory_bytes,
            loads,
            evictions,
            budget_bytes,
            used_bytes,
            resident_models,
        }
    }

    /// What `/metrics` serves once every family has a sample: every series name a server can
    /// expose (a dashboard's queries are checked against it).
    pub fn every_series() -> String {
        let metrics = Metrics::new();
        let model = ModelLabels::default();
        let _ = metrics.requests.get_or_create(&RequestLabels::default());
        let _ = metrics.latency.get_or_create(&LatencyLabels::default());
        let _ = metrics.queue_depth.get_or_create(&model);
        let _ = metrics.batch_size.get_or_create(&model);
        let _ = metrics.load_seconds.get_or_create(&model);
        let _ = metrics.ready.get_or_create(&model);
        let _ = metrics.fetches.get_or_create(&FetchLabels::default());
        let _ = metrics.fetch_bytes.get_or_create(&model);
        let _ = metrics.memory_bytes.get_or_create(&model);
        let _ = metrics.peak_memory_bytes.get_or_create(&model);
        let _ = metrics.loads.get_or_create(&model);
        let _ = metrics.evictions.get_or_create(&model);
        metrics.encode()
    }

    /// One load of a model finished (ready or not).
    pub fn model_load_counted(&self, model: &str, version: &str) {
        self.loads
            .get_or_create(&ModelLabels {
                model: model.into(),
                version: version.into(),
            })
            .inc();
    }

    /// A model was evicted to make room.
    pub fn model_evicted(&self, model: &str, version: &str) {
        let labels = ModelLabels {
            model: model.into(),
            version: version.into(),
        };
        self.evictions.get_or_create(&labels).inc();
        self.ready.get_or_create(&labels).set(0);
    }

    /// What the server holds against its budget.
    pub fn residency(&self, residency: crate::repository::Residency) {
        let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        self.budget_bytes.set(gauge(residency.budget.unwrap_or(0)));
        self.used_bytes.set(gauge(residency.used));
        self.resident_models.set(residency.resident as i64);
    }

    /// What a model's load measured.
    pub fn model_footprint(
        &self,
        model: &str,
        version: &str,
        footprint: crate::footprint::Footprint,
    ) {
        let labels = ModelLabels {
            model: model.into(),
            version: version.into(),
        };
        let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        self.memory_bytes
            .get_or_create(&labels)
            .set(gauge(footprint.resident_bytes));
        self.peak_memory_bytes
            .get_or_create(&labels)
            .set(gauge(footprint.peak_bytes));
    }

    /// One fetch of a model from its store.
    pub fn model_fetched(&self, model: &str, version: &str, cache_hit: bool, bytes: u64) {
        let result = if cache_hit { "hit" } else { "miss" };
        self.fetches
            .get_or_create(&FetchLabels {
                model: model.into(),
                result: result.into(),
            })
            .inc();
        self.fetch_bytes
            .get_or_create(&ModelLabels {
                model: model.into(),
                version: version.into(),
            })
            .inc_by(bytes);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a request that ended with `status` (an HTTP status or a gRPC code name).
    pub fn count(&self, model: &str, version: &str, protocol: Protocol, status: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_string(),
                version: version.to_string(),
                protocol: protocol.label().to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    /// Handles for one model, cached so the success path does no label hashing.
    pub fn for_model(&self, model: &str, version: &str) -> ModelMetrics {
        let ok = |protocol: Protocol, status: &str| {
            self.requests
                .get_or_create(&RequestLabels {
                    model: model.into(),
                    version: version.into(),
                    protocol: protocol.label().into(),
                    status: status.into(),
                })
                .clone()
        };
        let latency = |protocol: Protocol| {
            self.latency
                .get_or_create(&LatencyLabels {
                    model: model.into(),
                    version: version.into(),
                    protocol: protocol.label().into(),
                })
                .clone()
        };
        let labels = ModelLabels {
            model: model.into(),
            version: version.into(),
        };
        ModelMetrics {
            ok_rest: ok(Protocol::Rest, "200"),
            ok_grpc: ok(Protocol::Grpc, "OK"),
            latency_rest: latency(Protocol::Rest),
            latency_grpc: latency(Protocol::Grpc),
            queue_depth: self.queue_depth.get_or_create(&labels).clone(),
            batch_size: self.batch_size.get_or_create(&labels).clone(),
        }
    }

    pub fn model_loaded(&self, model: &str, version: &str, load_time: Duration, ready: bool) {
        let labels = ModelLabels {
            model: model.into(),
            version: version.into(),
        };
        self.load_seconds
            .get_or_create(&labels)
            .set(load_time.as_secs_f64());
        self.ready.get_or_create(&labels).set(i64::from(ready));
    }
}

/// Cached metric handles of one loaded model.
#[derive(Clone, Debug)]
pub struct ModelMetrics {
    ok_rest: Counter,
    ok_grpc: Counter,
    latency_rest: Histogram,
    latency_grpc: Histogram,
    pub queue_depth: Gauge,
    pub batch_size: Histogram,
}

impl ModelMetrics {
    pub fn observe_ok(&self, protocol: Protocol, elapsed: Duration) {
        let (counter, histogram) = match protocol {
            Protocol::Rest => (&self.ok_rest, &self.latency_rest),
            Protocol::Grpc => (&self.ok_grpc, &self.latency_grpc),
        };
        counter.inc();
        histogram.observe(elapsed.as_secs_f64());
    }

    pub fn observe_latency(&self, protocol: Protocol, elapsed: Duration) {
        match protocol {
            Protocol::Rest => &self.latency_rest,
            Protocol::Grpc => &self.latency_grpc,
        }
        .observe(elapsed.as_secs_f64());
    }
}
