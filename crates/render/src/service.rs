//! The objects of a service as a whole, across its revisions: the stable Service `<name>`
//! (the status URL, an alias of the shared router), and when the spec asks, a
//! HorizontalPodAutoscaler on the latest revision, an Ingress or a Gateway API HTTPRoute.

use std::collections::BTreeMap;

use ferry_api::{AutoscalingEngine, InferenceService, IngressKind, LABEL_REVISION, ScaleMetric};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, NetworkPolicy, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use crate::{HTTP_ROUTE_API_VERSION, ROUTER_PORT, ROUTER_SERVICE_HOST, Result};

/// The objects of a service as a whole.
#[derive(Debug, Clone)]
pub struct ServiceObjects {
    /// `<name>`: the stable in-cluster address (the status URL), every ready predictor pod of
    /// any revision behind it.
    pub service: Service,
    /// When `autoscaling.engine` is `hpa` (the default for cpu / memory): scales the latest
    /// revision's Deployment.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    /// When `autoscaling.engine` is `keda`: KEDA's ScaledObject for the latest revision.
    pub scaled_object: Option<crate::keda::ScaledObject>,
    /// When `spec.ingress` asks for an Ingress.
    pub ingress: Option<Ingress>,
    /// When `spec.ingress` asks for an HTTPRoute.
    pub http_route: Option<HttpRoute>,
    /// `<name>`: only pods of `ferry-system` (the router) may reach the predictor pods.
    pub network_policy: NetworkPolicy,
}

impl ServiceObjects {
    /// Every object as JSON (keys sorted), in apply order.
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>> {
        let mut values = vec![serde_json::to_value(&self.service)?];
        if let Some(hpa) = &self.autoscaler {
            values.push(serde_json::to_value(hpa)?);
        }
        if let Some(scaled) = &self.scaled_object {
            values.push(serde_json::to_value(scaled)?);
        }
        if let Some(ingress) = &self.ingress {
            values.push(serde_json::to_value(ingress)?);
        }
        if let Some(route) = &self.http_route {
            values.push(serde_json::to_value(route)?);
        }
        values.push(serde_json::to_value(&self.network_policy)?);
        Ok(values)
    }
}

/// A Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`; a CRD, so k8s-openapi has no
/// struct for it): the fields Ferry sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: HttpRouteSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

/// The Gateway a route attaches to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<BackendReference>,
}

/// A `RequestHeaderModifier` filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub type_: String,
    pub request_header_modifier: HeaderModifier,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderModifier {
    pub set: Vec<HttpHeader>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendReference {
    pub name: String,
    pub port: u16,
}

/// Render the service-wide objects of `isvc` whose latest revision is `latest`.
pub fn render_service(isvc: &InferenceService, latest: &str) -> ServiceObjects {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let namespace = isvc.namespace_or_default();
    let predictor = &isvc.spec.predictor;
    let mut labels = crate::labels(&name, latest);
    labels.remove(LABEL_REVISION);
    let metadata = crate::metadata(isvc, &name, labels);
    let service = Service {
        metadata: metadata.clone(),
        // The stable name (the status URL, Ingress and HTTPRoute backends) is an alias of the
        // shared router, as KServe's top-level Service is of its gateway: traffic to it is split
        // by revision, drained and labelled by the router, never sent to pods around it. No
        // selector, so no Endpoints to maintain, and no cluster IP to allocate.
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(ROUTER_SERVICE_HOST.into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: ROUTER_PORT.into(),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let autoscaler = predictor
        .scale_metric
        .filter(|_| predictor.autoscaling_engine() == AutoscalingEngine::Hpa)
        .map(|metric| {
            let min = predictor.replicas();
            let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
            HorizontalPodAutoscaler {
                metadata: metadata.clone(),
                spec: Some(HorizontalPodAutoscalerSpec {
                    scale_target_ref: CrossVersionObjectReference {
                        api_version: Some("apps/v1".into()),
                        kind: "Deployment".into(),
                        name: latest.to_string(),
                    },
                    min_replicas: Some(count(min.max(1))),
                    max_replicas: count(predictor.max_replicas.unwrap_or(min).max(min)),
                    metrics: Some(vec![hpa_metric(isvc, metric, predictor.scale_target())]),
                    behavior: None,
                }),
                status: None,
            }
        });
    let scaled_object = crate::keda::scaled_object(isvc, latest, metadata.clone());
    let (mut ingress, mut http_route) = (None, None);
    if let Some(spec) = &isvc.spec.ingress {
        match spec.kind.unwrap_or(IngressKind::Ingress) {
            IngressKind::Ingress => {
                ingress = Some(Ingress {
                    metadata: metadata.clone(),
                    spec: Some(IngressSpec {
                        ingress_class_name: spec.class_name.clone(),
                        rules: Some(vec![IngressRule {
                            host: Some(spec.host.clone()),
                            http: Some(HTTPIngressRuleValue {
                                paths: vec![HTTPIngressPath {
                                    path: Some("/".into()),
                                    path_type: "Prefix".into(),
                                    backend: IngressBackend {
                                        service: Some(IngressServiceBackend {
                                            name: name.clone(),
                                            port: Some(ServiceBackendPort {
                                                name: Some("http".into()),
                                                ..ServiceBackendPort::default()
                                            }),
                                        }),
                                        ..IngressBackend::default()
                                    },
                                }],
                            }),
                        }]),
                        ..IngressSpec::default()
                    }),
                    status: None,
                });
            }
            IngressKind::HttpRoute => {
                let gateway = spec.gateway.clone().unwrap_or_default();
                let parent = match gateway.split_once('/') {
                    Some((ns, gw)) => ParentReference {
                        namespace: Some(ns.into()),
                        name: gw.into(),
                    },
                    None => ParentReference {
                        namespace: None,
                        name: gateway,
                    },
                };
                http_route = Some(HttpRoute {
                    api_version: HTTP_ROUTE_API_VERSION.into(),
                    kind: "HTTPRoute".into(),
                    metadata,
                    spec: HttpRouteSpec {
                        parent_refs: vec![parent],
                        hostnames: vec![spec.host.clone()],
                        // The namespace travels as a header too: the router finds it also
                        // behind a gateway that rewrites the Host.
                        rules: vec![HttpRouteRule {
                            filters: vec![HttpRouteFilter {
                                type_: "RequestHeaderModifier".into(),
                                request_header_modifier: HeaderModifier {
                                    set: vec![HttpHeader {
                                        name: ferry_api::HEADER_NAMESPACE.into(),
                                        value: namespace,
                                    }],
                                },
                            }],
                            backend_refs: vec![BackendReference {
                                name,
                                port: ROUTER_PORT,
                            }],
                        }],
                    },
                });
            }
        }
    }
    ServiceObjects {
        service,
        autoscaler,
        scaled_object,
        ingress,
        http_route,
        network_policy: crate::isolation::network_policy(isvc),
    }
}

/// The HPA's metric for `metric`: utilisation of a resource request, or one of Ferry's router
/// numbers as an External metric (`ferry_concurrency`, ... per replica, selected by the
/// service's namespace and name) that Ferry serves under `external.metrics.k8s.io`.
fn hpa_metric(isvc: &InferenceService, metric: ScaleMetric, target: u32) -> MetricSpec {
    let count = i32::try_from(target).unwrap_or(i32::MAX);
    if metric.is_resource() {
        return MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: metric.as_str().into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(count),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        };
    }
    MetricSpec {
        type_: "External".into(),
        external: Some(ExternalMetricSource {
            metric: MetricIdentifier {
                name: external_metric_name(metric),
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        ferry_api::LABEL_SERVICE.to_string(),
                        isvc.metadata.name.clone().unwrap_or_default(),
                    )])),
                    ..LabelSelector::default()
                }),
            },
            target: MetricTarget {
                type_: "AverageValue".into(),
                average_value: Some(Quantity(target.to_string())),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}

/// The External metric's name for one of the router's metrics.
pub fn external_metric_name(metric: ScaleMetric) -> String {
    match metric {
        ScaleMetric::QueueDepth => "ferry_queue_depth".into(),
        other => format!("ferry_{}", other.as_str().to_ascii_lowercase()),
    }
}
