//! The OTLP/gRPC exporter: configured from OpenTelemetry's own environment variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the SDK reads
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` and `OTEL_RESOURCE_ATTRIBUTES` itself), so a `ferry serve`
//! that local mode starts inherits its daemon's.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT {endpoint:?}: {cause}")]
    Exporter { endpoint: String, cause: String },
}

/// Keeps the exporter running; dropping it sends what is still queued.
#[derive(Debug)]
pub struct Guard {
    provider: SdkTracerProvider,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Off the async runtime's threads: shutting down waits for the last export.
        let provider = self.provider.clone();
        let _ = std::thread::spawn(move || provider.shutdown()).join();
    }
}

/// The receiver's address, when one is configured.
fn endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// Export this process's spans as `service` (its `service.name`), when a receiver is
/// configured; `Ok(None)` when none is. Call inside the Tokio runtime (the exporter's
/// connection lives on it).
pub fn init(service: &'static str) -> Result<Option<Guard>, InitError> {
    let Some(endpoint) = endpoint() else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| InitError::Exporter {
            endpoint: endpoint.clone(),
            cause: e.to_string(),
        })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    crate::install(provider.tracer(service));
    tracing::info!(endpoint, service, "exporting traces over OTLP");
    Ok(Some(Guard { provider }))
}
