//! Ferry's router numbers as a Kubernetes External metrics API (`external.metrics.k8s.io/
//! v1beta1`), so the cluster's own HPA controller scales on them with no KEDA and no
//! Prometheus (`autoscaling.engine: hpa` on concurrency, rps or queueDepth).
//!
//! The kube-apiserver's aggregation layer proxies the API to every operator replica (an
//! APIService, `deploy/external-metrics.yaml`); each replica collects the router pods'
//! numbers itself ([`crate::collect::Collector`]), so a standby answers as the leader does.
//! TLS with a certificate made at start (as metrics-server does when given none; the
//! APIService skips verifying it), and only clients with a certificate of the cluster's
//! request-header CA (the `kube-system/extension-apiserver-authentication` ConfigMap: the
//! apiserver's proxy) are served — the apiserver authorises each request before it proxies.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ferry_api::ScaleMetric;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResource, APIResourceList};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::collect::Collector;

/// The group and version served.
pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

/// Why the API cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsApiError {
    #[error("cannot read kube-system/extension-apiserver-authentication: {0}")]
    ConfigMap(#[from] kube::Error),
    #[error(
        "kube-system/extension-apiserver-authentication has no requestheader-client-ca-file: the apiserver's aggregation layer is not configured"
    )]
    NoRequestHeaderCa,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// One value of the list the HPA controller reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValue {
    pub metric_name: String,
    pub metric_labels: std::collections::BTreeMap<String, String>,
    pub timestamp: String,
    /// Seconds the value is averaged over.
    pub window: Option<i64>,
    pub value: Quantity,
}

/// `ExternalMetricValueList`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValueList {
    pub kind: String,
    pub api_version: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub items: Vec<ExternalMetricValue>,
}

/// The metric an External metric name stands for (`ferry_concurrency`, `ferry_rps`,
/// `ferry_queue_depth`: what `ferry-render` writes in the HPA).
pub fn metric_of(name: &str) -> Option<ScaleMetric> {
    [
        ScaleMetric::Concurrency,
        ScaleMetric::Rps,
        ScaleMetric::QueueDepth,
    ]
    .into_iter()
    .find(|m| ferry_render::external_metric_name(*m) == name)
}

/// The InferenceService a label selector names (`ferry.dev/inferenceservice=NAME`).
pub fn service_of(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let (key, value) = term.split_once('=')?;
        (key.trim() == ferry_api::LABEL_SERVICE)
            .then(|| value.trim_start_matches('=').trim().to_string())
    })
}

/// The value list for `metric` of `service` in `namespace`.
pub fn values(
    collector: &Collector,
    namespace: &str,
    service: &str,
    metric: ScaleMetric,
    name: &str,
) -> ExternalMetricValueList {
    let value = collector
        .external(namespace, service, metric)
        .unwrap_or(0.0);
    // Milli-units: the HPA divides the total by the target per replica.
    let milli = (value * 1000.0).round().max(0.0) as u64;
    ExternalMetricValueList {
        kind: "ExternalMetricValueList".into(),
        api_version: GROUP_VERSION.into(),
        metadata: serde_json::Map::new(),
        items: vec![ExternalMetricValue {
            metric_name: name.to_string(),
            metric_labels: [(ferry_api::LABEL_SERVICE.to_string(), service.to_string())].into(),
            timestamp: Timestamp::now()
                .round(k8s_openapi::jiff::Unit::Second)
                .unwrap_or(Timestamp::now())
                .to_string(),
            window: Some(crate::collect::EXTERNAL_WINDOW.as_secs() as i64),
            value: Quantity(format!("{milli}m")),
        }],
    }
}

#[derive(Deserialize)]
struct Selector {
    #[serde(rename = "labelSelector", default)]
    label_selector: String,
}

async fn metric(
    State(collector): State<Arc<Collector>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<Selector>,
) -> Response {
    let Some(metric) = metric_of(&name) else {
        return (StatusCode::NOT_FOUND, format!("no external metric {name:?}: Ferry serves ferry_concurrency, ferry_rps and ferry_queue_depth")).into_response();
    };
    let Some(service) = service_of(&query.label_selector) else {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "labelSelector must name {}=<InferenceService>",
                ferry_api::LABEL_SERVICE
            ),
        )
            .into_response();
    };
    axum::Json(values(&collector, &namespace, &service, metric, &name)).into_response()
}

async fn discovery() -> axum::Json<APIResourceList> {
    axum::Json(APIResourceList {
        group_version: GROUP_VERSION.into(),
        resources: vec![APIResource {
            name: "externalmetrics".into(),
            namespaced: true,
            kind: "ExternalMetricValueList".into(),
            verbs: vec!["get".into()],
            ..APIResource::default()
        }],
    })
}

/// The Service the APIService names.
pub const SERVICE: &str = "ferry-external-metrics";

/// Point the APIService's Service (`namespace`/[`SERVICE`]) at this replica: an ExternalName
/// of its pod IP, which the apiserver dials as it is. The leader calls this when it starts
/// leading, so the API follows leadership.
pub async fn advertise(
    client: &Client,
    namespace: &str,
    addr: SocketAddr,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let service = Service {
        metadata: ObjectMeta {
            name: Some(SERVICE.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/name".to_string(),
                    "ferry-operator".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(addr.ip().to_string()),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: i32::from(addr.port()),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    api.patch(
        SERVICE,
        &kube::api::PatchParams::apply("ferry-operator").force(),
        &kube::api::Patch::Apply(&service),
    )
    .await?;
    Ok(())
}

/// The request-header CA the apiserver's proxy certificates are signed by.
async fn request_header_ca(
    client: &Client,
) -> Result<Vec<CertificateDer<'static>>, MetricsApiError> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let map = maps.get("extension-apiserver-authentication").await?;
    let pem = map
        .data
        .and_then(|d| d.get("requestheader-client-ca-file").cloned())
        .ok_or(MetricsApiError::NoRequestHeaderCa)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| MetricsApiError::Tls(format!("request-header CA: {e}")))?;
    Ok(certs)
}

/// Serve the API on `addr` until the process ends; the address it listens on.
pub async fn serve(
    addr: SocketAddr,
    client: Client,
    collector: Arc<Collector>,
) -> Result<SocketAddr, MetricsApiError> {
    let cas = request_header_ca(&client).await?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| MetricsApiError::Tls(format!("request-header CA: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| MetricsApiError::Tls(e.to_string()))?;
    let names = vec![
        "ferry-external-metrics.ferry-system.svc".to_string(),
        addr.ip().to_string(),
    ];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| MetricsApiError::Tls(e.to_string()))?;
    let cert = made.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MetricsApiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(|e| MetricsApiError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsApiError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsApiError::Listen { addr, source })?;
    let app = axum::Router::new()
        .route("/apis/external.metrics.k8s.io/v1beta1", get(discovery))
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            get(metric),
        )
        .with_state(collector);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "external metrics: TLS handshake refused");
                        return;
                    }
                };
                let service = TowerToHyperService::new(app);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_selectors_map_to_a_metric_and_a_service() {
        assert_eq!(
            metric_of("ferry_concurrency"),
            Some(ScaleMetric::Concurrency)
        );
        assert_eq!(
            metric_of("ferry_queue_depth"),
            Some(ScaleMetric::QueueDepth)
        );
        assert_eq!(metric_of("ferry_rps"), Some(ScaleMetric::Rps));
        assert_eq!(metric_of("cpu"), None);
        assert_eq!(
            service_of("ferry.dev/inferenceservice=iris").as_deref(),
            Some("iris")
        );
        assert_eq!(
            service_of("a=b,ferry.dev/inferenceservice==iris").as_deref(),
            Some("iris")
        );
        assert_eq!(service_of("app=iris"), None);
    }

    #[test]
    fn an_unmeasured_service_reads_zero_in_milli_units() {
        let list = values(
            &Collector::default(),
            "ns",
            "iris",
            ScaleMetric::Concurrency,
            "ferry_concurrency",
        );
        assert_eq!(list.items[0].value, Quantity("0m".into()));
        assert_eq!(
            list.items[0].metric_labels["ferry.dev/inferenceservice"],
            "iris"
        );
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["apiVersion"], GROUP_VERSION);
        assert_eq!(json["items"][0]["metricName"], "ferry_concurrency");
    }
}
