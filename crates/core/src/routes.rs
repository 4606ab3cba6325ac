//! The route table: for each (namespace, model name), the revisions that take traffic, their
//! weights and their ready backends. Built here, read by the router from a `watch` channel.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ReplicaView;

/// Where a replica listens: REST and gRPC on TCP, and on Unix sockets when it shares the
/// router's machine (local mode; the router prefers them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_unix: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_unix: Option<PathBuf>,
}

impl Addresses {
    /// TCP only (a pod, or a replica without sockets).
    pub fn tcp(http: SocketAddr, grpc: SocketAddr) -> Self {
        Addresses {
            http,
            grpc,
            http_unix: None,
            grpc_unix: None,
        }
    }
}

/// One replica the router may call (a "backend" in the router's words; not the server's inference
/// `Backend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub id: String,
    #[serde(flatten)]
    pub addrs: Addresses,
}

/// One revision's share of a service's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRoute {
    pub revision: String,
    /// Relative weight among the service's revisions (0 = no traffic).
    pub weight: u32,
    pub backends: Vec<Upstream>,
    /// The experiment variant it serves (`control` for the predictor's own revisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Replicas still starting (not ready, not leaving), of a service that scales to zero: a
    /// router holding requests probes them itself and answers from the first whose model is
    /// ready, before its readiness reaches the table (a kubelet probes every second at best).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warming: Vec<Upstream>,
}

/// Where one service's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoute {
    pub namespace: String,
    pub service: String,
    pub revisions: Vec<RevisionRoute>,
    /// The revision a request another revision failed (no answer, or 5xx) is retried on:
    /// the stable revision of a canary with `retryOnStable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// What keeps a caller on one variant of an experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<ferry_api::StickySpec>,
    /// The revision live requests are mirrored to, and the percent mirrored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<(String, u32)>,
    /// Hold requests while no replica is ready (a service that scales to zero), up to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<ColdStart>,
    /// The service's own rate limit (`spec.rateLimit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Limit>,
}

/// A token bucket as the router keeps it: one request per `interval_nanos`, `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub interval_nanos: u64,
    pub burst: u32,
    /// The limit as its owner wrote it (`50/s (burst 5)`), for the 429's message.
    pub text: String,
    /// Requests per second, rounded up (the `RateLimit-Limit` header).
    pub per_second: u64,
}

impl Limit {
    /// The bucket `spec` describes, with its share of `routers` router replicas (each keeps
    /// its own bucket: the limit is divided among them).
    pub fn of(spec: &ferry_api::RateLimitSpec, routers: u32) -> Limit {
        let routers = f64::from(routers.max(1));
        let rate = spec.requests_per_second / routers;
        let burst = (f64::from(spec.burst()) / routers).ceil().max(1.0) as u32;
        Limit {
            interval_nanos: (1e9 / rate).round().clamp(1.0, u64::MAX as f64) as u64,
            burst,
            text: spec.to_string(),
            per_second: rate.ceil() as u64,
        }
    }
}

/// One API key as the router checks it: never the key itself, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// The key's public ID (`fry_<id>_…`).
    pub id: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// SHA-256 of the whole key, lower-case hex ([`ferry_api::api_key_hash`]).
    pub hash: String,
    /// The key's own rate limit (`--rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Limit>,
    /// Unix seconds after which the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix: Option<i64>,
}

impl ApiKey {
    /// The router's view of a stored key, its rate divided among `routers` router replicas.
    pub fn of(record: &ferry_api::ApiKeyRecord, routers: u32) -> ApiKey {
        ApiKey {
            id: record.id.clone(),
            namespace: record.namespace.clone(),
            name: record.name.clone(),
            hash: record.hash.clone(),
            rate_limit: record.rate.as_ref().map(|r| Limit::of(r, routers)),
            expires_unix: record
                .expires
                .as_deref()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .map(|t| t.as_second()),
        }
    }
}

/// How many requests a router holds for a service with no ready replica, and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdStart {
    pub requests: u32,
    pub timeout_seconds: u32,
}

impl ColdStart {
    /// The buffer of `isvc`: only a predictor Ferry's autoscaler may take to zero has one.
    pub fn of(isvc: &ferry_api::InferenceService) -> Option<ColdStart> {
        let predictor = &isvc.spec.predictor;
        if !predictor.ferry_autoscaled() || predictor.replicas() > 0 {
            return None;
        }
        let buffer = predictor.autoscaling().cold_start_buffer();
        Some(ColdStart {
            requests: buffer.requests(),
            timeout_seconds: buffer.timeout_seconds(),
        })
    }
}

impl ServiceRoute {
    /// Share of traffic per revision, in percent (rounded down; empty when nothing serves).
    pub fn traffic_percent(&self) -> BTreeMap<String, u32> {
        let total: u32 = self.revisions.iter().map(|r| r.weight).sum();
        self.revisions
            .iter()
            .map(|r| {
                let pct = (r.weight * 100).checked_div(total).unwrap_or(0);
                (r.revision.clone(), pct)
            })
            .collect()
    }
}

/// The whole table: namespace → model name → route.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RouteTable {
    pub namespaces: BTreeMap<String, BTreeMap<String, ServiceRoute>>,
    /// External hosts (`spec.ingress.host`) → the namespace of the service that claims them:
    /// traffic an Ingress or HTTPRoute hands the router keeps its own Host, which names no
    /// namespace. A host claimed in several namespaces goes to the first by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, String>,
    /// API keys by namespace: a namespace listed here takes only requests with one of its keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, Vec<ApiKey>>,
    /// Namespaces' own rate limits (annotation `ferry.dev/rate-limit`), shared by all their
    /// requests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_limits: BTreeMap<String, Limit>,
}

impl RouteTable {
    /// With these namespaces' rate limits, from their annotations (a namespace whose
    /// annotation does not parse keeps no limit: its documents are checked when applied);
    /// each of `routers` router replicas keeps its share.
    pub fn with_namespace_limits<'a>(
        mut self,
        namespaces: impl IntoIterator<Item = &'a k8s_openapi::api::core::v1::Namespace>,
        routers: u32,
    ) -> Self {
        self.namespace_limits = namespaces
            .into_iter()
            .filter_map(|namespace| {
                let annotations = namespace.metadata.annotations.as_ref();
                let spec = ferry_api::namespace::namespace_rate_limit(annotations).ok()??;
                Some((namespace.metadata.name.clone()?, Limit::of(&spec, routers)))
            })
            .collect();
        self
    }

    /// With these API keys (each under its namespace).
    pub fn with_keys(mut self, keys: impl IntoIterator<Item = ApiKey>) -> Self {
        for key in keys {
            self.keys
                .entry(key.namespace.clone())
                .or_default()
                .push(key);
        }
        for keys in self.keys.values_mut() {
            keys.sort_by(|a, b| a.id.cmp(&b.id));
        }
        self
    }

    pub fn lookup(&self, namespace: &str, model: &str) -> Option<&ServiceRoute> {
        self.namespaces.get(namespace)?.get(model)
    }
}

/// A replica and the addresses it listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub replica: ReplicaView,
    #[serde(flatten)]
    pub addrs: Addresses,
}

/// Everything the table needs to know about one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    pub namespace: String,
    pub service: String,
    /// The model's name in the inference protocol: the key requests are routed by.
    pub model: String,
    pub endpoints: Vec<Endpoint>,
    /// The external hosts its Ingress or HTTPRoute serves (`spec.ingress.host`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Traffic weight per revision, as the service plan decides it
    /// ([`crate::service::ServicePlan::weights`]); a revision not named weighs nothing.
    pub weights: BTreeMap<String, u32>,
    /// [`ServiceRoute::fallback`], as the plan decides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Revision → experiment variant, as the plan decides it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, String>,
    /// [`ServiceRoute::sticky`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<ferry_api::StickySpec>,
    /// [`ServiceRoute::shadow`], as the plan decides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<(String, u32)>,
    /// [`ServiceRoute::cold_start`], from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<ColdStart>,
    /// [`ServiceRoute::rate_limit`], from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Limit>,
}

impl ServiceEndpoints {
    /// The entry of `isvc` with `endpoints` and the plan's `weights`: namespace, name, model
    /// name and external hosts all read from the InferenceService, the same way in both modes.
    pub fn of(
        isvc: &ferry_api::InferenceService,
        endpoints: Vec<Endpoint>,
        weights: BTreeMap<String, u32>,
    ) -> Self {
        ServiceEndpoints {
            namespace: isvc.namespace_or_default(),
            service: isvc.metadata.name.clone().unwrap_or_default(),
            model: isvc.model_name(),
            endpoints,
            hosts: isvc.external_hosts(),
            weights,
            fallback: None,
            variants: BTreeMap::new(),
            sticky: isvc.spec.experiment.as_ref().and_then(|e| e.sticky.clone()),
            shadow: None,
            cold_start: ColdStart::of(isvc),
            rate_limit: isvc.spec.rate_limit.as_ref().map(|l| Limit::of(l, 1)),
        }
    }

    /// With the rate limit divided among `routers` router replicas (each keeps its own bucket).
    pub fn shared_by(mut self, routers: u32, isvc: &ferry_api::InferenceService) -> Self {
        self.rate_limit = isvc.spec.rate_limit.as_ref().map(|l| Limit::of(l, routers));
        self
    }

    /// With the shadow revision and its percent.
    pub fn with_shadow(mut self, shadow: Option<(String, u32)>) -> Self {
        self.shadow = shadow;
        self
    }

    /// With each revision's experiment variant.
    pub fn with_variants(mut self, variants: BTreeMap<String, String>) -> Self {
        self.variants = variants;
        self
    }

    /// With the revision failed requests are retried on.
    pub fn with_fallback(mut self, fallback: Option<String>) -> Self {
        self.fallback = fallback;
        self
    }
}

/// Build the table: each revision with ready replicas that stay gets them as backends and
/// the weight the plan gave it; terminating and unready replicas are no backends.
pub fn build(services: &[ServiceEndpoints]) -> RouteTable {
    let mut table = RouteTable::default();
    for service in services {
        for host in &service.hosts {
            let claimed = table
                .hosts
                .entry(host.to_ascii_lowercase())
                .or_insert_with(|| service.namespace.clone());
            if service.namespace < *claimed {
                claimed.clone_from(&service.namespace);
            }
        }
        let mut revisions: BTreeMap<&str, (Vec<Upstream>, Vec<Upstream>)> = BTreeMap::new();
        for endpoint in &service.endpoints {
            let upstream = || Upstream {
                id: endpoint.replica.id.clone(),
                addrs: endpoint.addrs.clone(),
            };
            let replica = &endpoint.replica;
            if replica.ready() {
                revisions
                    .entry(replica.revision.as_str())
                    .or_default()
                    .0
                    .push(upstream());
            } else if service.cold_start.is_some()
                && !replica.terminating
                && matches!(replica.health, crate::ReplicaHealth::Starting { .. })
            {
                revisions
                    .entry(replica.revision.as_str())
                    .or_default()
                    .1
                    .push(upstream());
            }
        }
        let revisions = revisions
            .into_iter()
            .map(|(revision, (mut backends, mut warming))| {
                backends.sort_by(|a, b| a.id.cmp(&b.id));
                warming.sort_by(|a, b| a.id.cmp(&b.id));
                RevisionRoute {
                    revision: revision.to_string(),
                    weight: service.weights.get(revision).copied().unwrap_or(0),
                    backends,
                    variant: service.variants.get(revision).cloned(),
                    warming,
                }
            })
            .collect();
        table
            .namespaces
            .entry(service.namespace.clone())
            .or_default()
            .insert(
                service.model.clone(),
                ServiceRoute {
                    namespace: service.namespace.clone(),
                    service: service.service.clone(),
                    revisions,
                    fallback: service.fallback.clone(),
                    sticky: service.sticky.clone(),
                    shadow: service.shadow.clone(),
                    cold_start: service.cold_start,
                    rate_limit: service.rate_limit.clone(),
                },
            );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReplicaHealth;
    use std::path::Path;

    fn endpoint(
        id: &str,
        revision: &str,
        health: ReplicaHealth,
        terminating: bool,
        port: u16,
    ) -> Endpoint {
        Endpoint {
            replica: ReplicaView {
                id: id.into(),
                revision: revision.into(),
                health,
                terminating,
            },
            addrs: Addresses {
                http: SocketAddr::from(([127, 0, 0, 1], port)),
                grpc: SocketAddr::from(([127, 0, 0, 1], port + 1)),
                http_unix: (port == 9004).then(|| PathBuf::from("/run/c.http.sock")),
                grpc_unix: (port == 9004).then(|| PathBuf::from("/run/c.grpc.sock")),
            },
        }
    }

    #[test]
    fn only_ready_and_staying_replicas_take_traffic() {
        let starting = ReplicaHealth::Starting { for_seconds: 3 };
        let service = ServiceEndpoints {
            namespace: "default".into(),
            service: "iris".into(),
            model: "iris".into(),
            endpoints: vec![
                endpoint("a", "iris-1", ReplicaHealth::Ready, false, 9000),
                endpoint("b", "iris-1", ReplicaHealth::Ready, true, 9002),
                endpoint("c", "iris-2", ReplicaHealth::Ready, false, 9004),
                endpoint("d", "iris-2", ReplicaHealth::Ready, false, 9006),
                endpoint("e", "iris-2", starting, false, 9008),
            ],
            hosts: vec![],
            weights: [("iris-1".to_string(), 1), ("iris-2".to_string(), 2)].into(),
            fallback: None,
            variants: BTreeMap::new(),
            sticky: None,
            shadow: None,
            cold_start: None,
            rate_limit: None,
        };
        let table = build(&[service]);
        let route = table.lookup("default", "iris").unwrap();
        let ids: Vec<Vec<&str>> = route
            .revisions
            .iter()
            .map(|r| r.backends.iter().map(|b| b.id.as_str()).collect())
            .collect();
        assert_eq!(ids, vec![vec!["a"], vec!["c", "d"]]);
        let sockets: Vec<Option<&Path>> = route.revisions[1]
            .backends
            .iter()
            .map(|b| b.addrs.grpc_unix.as_deref())
            .collect();
        assert_eq!(sockets, vec![Some(Path::new("/run/c.grpc.sock")), None]);
        assert_eq!(
            route.revisions[1].backends[0].addrs.http_unix.as_deref(),
            Some(Path::new("/run/c.http.sock"))
        );
        let pct = route.traffic_percent();
        assert_eq!((pct["iris-1"], pct["iris-2"]), (33, 66));
        assert!(table.lookup("other", "iris").is_none());
    }

    #[test]
    fn external_hosts_name_the_namespace_that_claims_them() {
        let service = |namespace: &str, hosts: &[&str]| ServiceEndpoints {
            namespace: namespace.into(),
            service: "iris".into(),
            model: "iris".into(),
            endpoints: vec![],
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            weights: BTreeMap::new(),
            fallback: None,
            variants: BTreeMap::new(),
            sticky: None,
            shadow: None,
            cold_start: None,
            rate_limit: None,
        };
        let table = build(&[
            service("team-b", &["shared.example.com", "b.example.com"]),
            service("team-a", &["Shared.Example.com"]),
            service("team-c", &[]),
        ]);
        assert_eq!(table.hosts["shared.example.com"], "team-a", "first by name");
        assert_eq!(table.hosts["b.example.com"], "team-b");
        assert_eq!(table.hosts.len(), 2);
    }
}
