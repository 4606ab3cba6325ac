//! The route table as the request path uses it: compiled from `ferry_core::routes::RouteTable`
//! whenever the watch channel changes, with per-backend outstanding-request counters that live
//! across table changes (a draining backend keeps counting until its last request ends).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferry_core::routes::{RouteTable, Upstream};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{Metrics, RevisionLabels};

/// One replica and its outstanding requests.
#[derive(Debug)]
pub struct BackendState {
    pub backend: Upstream,
    inflight: AtomicUsize,
    /// Connections to this backend, one pool per router thread; they live as long as the
    /// backend stays known.
    pools: Box<[crate::pool::Pool]>,
}

impl BackendState {
    /// The connection pool of the calling router thread.
    pub fn pool(&self) -> &crate::pool::Pool {
        &self.pools[crate::pool::worker() % self.pools.len()]
    }

    pub fn outstanding(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// Holds one outstanding request on a backend; released on drop.
pub struct InFlightGuard(Arc<BackendState>);

impl InFlightGuard {
    pub fn new(state: Arc<BackendState>) -> Self {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(state)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One revision with its backends and cached metric handles.
pub struct RevisionState {
    pub revision: Arc<str>,
    /// `revision` as the `ferry-revision` response header value, made once per table.
    pub header: Option<http::HeaderValue>,
    pub weight: u32,
    pub backends: Vec<Arc<BackendState>>,
    pub ok: Counter,
    pub latency: Histogram,
    /// Mergeable counters for canary analysis.
    pub stats: Arc<crate::stats::RevisionStats>,
    /// The experiment variant it serves, and that name as a header value.
    pub variant: Option<Arc<str>>,
    pub variant_header: Option<http::HeaderValue>,
    /// Replicas still starting, which a held request probes itself.
    pub warming: Vec<Arc<BackendState>>,
}

/// One service's compiled route.
pub struct ServiceState {
    pub namespace: String,
    pub service: String,
    pub revisions: Vec<RevisionState>,
    total_weight: u32,
    /// Index in `revisions` of the revision a failed request is retried on.
    fallback: Option<usize>,
    /// What keeps a caller on one experiment variant.
    pub sticky: Option<ferry_api::StickySpec>,
    /// The shadow: its index in `revisions`, the percent mirrored, its counters.
    pub shadow: Option<(usize, u32, Arc<crate::shadow::ShadowCounters>)>,
    /// Requests are held while no replica is ready (scale from zero), up to this.
    pub cold_start: Option<ferry_core::routes::ColdStart>,
    /// The service's bucket (`spec.rateLimit`).
    pub limiter: Option<Arc<crate::limit::Limiter>>,
}

impl ServiceState {
    /// Whether any revision that answers clients has a backend to take a request.
    pub fn has_backends(&self) -> bool {
        self.live().any(|r| !r.backends.is_empty())
    }

    /// Weighted choice of a revision that has backends; when no weighted revision has one,
    /// the first revision with backends.
    pub fn pick_revision(&self) -> Option<&RevisionState> {
        self.pick_by(
            self.total_weight
                .checked_sub(1)
                .map(|last| fastrand::u32(0..=last)),
        )
    }

    /// The revision a sticky caller's `key` hashes to (the same in every router replica,
    /// across restarts): a ticket into the weights from a hash of the key.
    pub fn pick_sticky(&self, key: &[u8]) -> Option<&RevisionState> {
        let ticket =
            (self.total_weight > 0).then(|| (fnv1a(key) % u64::from(self.total_weight)) as u32);
        self.pick_by(ticket)
    }

    /// A revision of variant `name` with backends (weighted among them when several).
    pub fn pick_variant(&self, name: &str) -> Option<&RevisionState> {
        let candidates: Vec<&RevisionState> = self
            .revisions
            .iter()
            .filter(|r| r.variant.as_deref() == Some(name) && !r.backends.is_empty())
            .collect();
        let total: u32 = candidates.iter().map(|r| r.weight.max(1)).sum();
        let mut ticket = fastrand::u32(0..total.max(1));
        for revision in &candidates {
            if ticket < revision.weight.max(1) {
                return Some(revision);
            }
            ticket -= revision.weight.max(1);
        }
        candidates.first().copied()
    }

    /// Whether `name` is a variant of this service's experiment.
    pub fn has_variant(&self, name: &str) -> bool {
        self.revisions
            .iter()
            .any(|r| r.variant.as_deref() == Some(name))
    }

    fn pick_by(&self, ticket: Option<u32>) -> Option<&RevisionState> {
        if let Some(mut ticket) = ticket {
            for revision in &self.revisions {
                if ticket < revision.weight {
                    return Some(revision);
                }
                ticket -= revision.weight;
            }
        }
        self.live().find(|r| !r.backends.is_empty())
    }

    /// The revisions that answer clients: all but the shadow.
    fn live(&self) -> impl Iterator<Item = &RevisionState> {
        let shadow = self.shadow.as_ref().map(|s| s.0);
        self.revisions
            .iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != shadow)
            .map(|(_, r)| r)
    }

    /// The revision `name` (a request pinned it with `ferry-revision`), when it has backends.
    pub fn revision(&self, name: &str) -> Option<&RevisionState> {
        self.revisions
            .iter()
            .find(|r| &*r.revision == name && !r.backends.is_empty())
    }

    /// The revision to retry on when `failed` (another revision) failed a request: the
    /// fallback (a canary's stable revision), when it has backends.
    pub fn fallback_for(&self, failed: &str) -> Option<(&RevisionState, Arc<BackendState>)> {
        let revision = &self.revisions[self.fallback?];
        if &*revision.revision == failed {
            return None;
        }
        Some((revision, revision.pick_replica(None)?))
    }

    /// For a retry: another backend than `failed`, of the revision a weighted pick gives, or
    /// else of any revision.
    pub fn pick_other(&self, failed: &str) -> Option<(&RevisionState, Arc<BackendState>)> {
        if let Some(revision) = self.pick_revision()
            && let Some(backend) = revision.pick_replica(Some(failed))
        {
            return Some((revision, backend));
        }
        self.live()
            .find_map(|revision| revision.pick_replica(Some(failed)).map(|b| (revision, b)))
    }
}

impl RevisionState {
    /// The less loaded of two random backends (power of two choices); `avoid` is skipped,
    /// and `None` when it is the only one.
    pub fn pick_replica(&self, avoid: Option<&str>) -> Option<Arc<BackendState>> {
        two_choices(&self.backends, avoid)
    }
}

fn two_choices(backends: &[Arc<BackendState>], avoid: Option<&str>) -> Option<Arc<BackendState>> {
    let candidates: Vec<&Arc<BackendState>> = match avoid {
        Some(id) if backends.iter().any(|b| b.backend.id != id) => {
            backends.iter().filter(|b| b.backend.id != id).collect()
        }
        Some(_) => return None,
        None => backends.iter().collect(),
    };
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].clone()),
        n => {
            let first = fastrand::usize(0..n);
            let mut second = fastrand::usize(0..n - 1);
            if second >= first {
                second += 1;
            }
            let (a, b) = (candidates[first], candidates[second]);
            Some(if b.outstanding() < a.outstanding() {
                b.clone()
            } else {
                a.clone()
            })
        }
    }
}

/// The compiled table: namespace → model → service.
#[derive(Default)]
pub struct Compiled {
    services: HashMap<String, HashMap<String, Arc<ServiceState>>>,
    /// External host → namespace ([`ferry_core::routes::RouteTable::hosts`]).
    hosts: HashMap<String, String>,
    /// API keys by ID, and the namespaces that require one.
    pub access: crate::access::Access,
    /// The table this was compiled from ([`crate::Router::caught_up`] compares it).
    pub source: Arc<RouteTable>,
}

impl Compiled {
    /// A table with external hosts only (tests of namespace resolution, the fuzz target).
    pub(crate) fn with_hosts(hosts: &[(&str, &str)]) -> Self {
        Compiled {
            hosts: hosts
                .iter()
                .map(|(h, ns)| (h.to_string(), ns.to_string()))
                .collect(),
            ..Compiled::default()
        }
    }

    /// The namespace whose service claims the external `host` (lower-case, without port).
    pub fn host_namespace(&self, host: &str) -> Option<&str> {
        self.hosts.get(host).map(String::as_str)
    }

    pub fn lookup(&self, namespace: &str, model: &str) -> Option<&Arc<ServiceState>> {
        self.services.get(namespace)?.get(model)
    }

    /// A service with a ready backend, for server-level gRPC calls: one of `namespace`'s, else
    /// (while no namespace has API keys) any.
    pub fn any(&self, namespace: &str) -> Option<&Arc<ServiceState>> {
        let ready = |s: &&Arc<ServiceState>| s.revisions.iter().any(|r| !r.backends.is_empty());
        let own = self
            .services
            .get(namespace)
            .and_then(|models| models.values().find(ready));
        if own.is_some() || self.access.any() {
            return own;
        }
        self.services
            .values()
            .flat_map(|models| models.values())
            .find(ready)
    }
}

/// Outstanding requests per backend id, shared with the executor that drains replicas.
#[derive(Clone, Default)]
pub struct InFlight {
    registry: Arc<Mutex<HashMap<String, Arc<BackendState>>>>,
}

impl InFlight {
    /// Requests the router still has outstanding on backend `id` (0 for unknown ids).
    pub fn outstanding(&self, id: &str) -> usize {
        self.registry
            .lock()
            .expect("in-flight registry poisoned")
            .get(id)
            .map_or(0, |b| b.outstanding())
    }

    /// Compile `table`, reusing the counters of backends already known.
    pub(crate) fn compile(
        &self,
        table: &Arc<RouteTable>,
        metrics: &Metrics,
        accounting: &crate::stats::Accounting,
        limiters: &crate::limit::Limiters,
        workers: usize,
    ) -> Compiled {
        let mut registry = self.registry.lock().expect("in-flight registry poisoned");
        let mut seen = HashMap::new();
        let mut buckets = HashMap::new();
        let mut compiled = Compiled {
            hosts: table
                .hosts
                .iter()
                .map(|(h, ns)| (h.clone(), ns.clone()))
                .collect(),
            access: crate::access::Access::compile(table, limiters, &mut buckets),
            source: table.clone(),
            ..Compiled::default()
        };
        for (namespace, models) in &table.namespaces {
            for (model, route) in models {
                let revisions: Vec<RevisionState> = route
                    .revisions
                    .iter()
                    .map(|r| {
                        let mut known = |b: &Upstream| {
                            let state = match registry.get(&b.id) {
                                Some(existing) if existing.backend == *b => existing.clone(),
                                _ => Arc::new(BackendState {
                                    backend: b.clone(),
                                    inflight: AtomicUsize::new(0),
                                    pools: (0..workers)
                                        .map(|_| crate::pool::Pool::default())
                                        .collect(),
                                }),
                            };
                            seen.insert(b.id.clone(), state.clone());
                            state
                        };
                        let warming: Vec<Arc<BackendState>> =
                            r.warming.iter().map(&mut known).collect();
                        let backends: Vec<Arc<BackendState>> =
                            r.backends.iter().map(&mut known).collect();
                        let labels = RevisionLabels {
                            namespace: namespace.clone(),
                            service: route.service.clone(),
                            revision: r.revision.clone(),
                        };
                        RevisionState {
                            revision: Arc::from(r.revision.as_str()),
                            header: http::HeaderValue::from_str(&r.revision).ok(),
                            weight: if r.backends.is_empty() { 0 } else { r.weight },
                            backends,
                            ok: metrics.ok_counter(&labels),
                            latency: metrics.latency(&labels),
                            stats: accounting.handle(namespace, &route.service, &r.revision),
                            variant: r.variant.as_deref().map(Arc::from),
                            variant_header: r
                                .variant
                                .as_deref()
                                .and_then(|v| http::HeaderValue::from_str(v).ok()),
                            warming,
                        }
                    })
                    .collect();
                let total_weight = revisions.iter().map(|r| r.weight).sum();
                let fallback = route
                    .fallback
                    .as_ref()
                    .and_then(|f| revisions.iter().position(|r| &*r.revision == f.as_str()));
                let shadow = route.shadow.as_ref().and_then(|(revision, percent)| {
                    let index = revisions
                        .iter()
                        .position(|r| &*r.revision == revision.as_str())?;
                    Some((
                        index,
                        *percent,
                        accounting.shadow(namespace, &route.service),
                    ))
                });
                compiled
                    .services
                    .entry(namespace.clone())
                    .or_default()
                    .insert(
                        model.clone(),
                        Arc::new(ServiceState {
                            namespace: namespace.clone(),
                            service: route.service.clone(),
                            revisions,
                            total_weight,
                            fallback,
                            sticky: route.sticky.clone(),
                            shadow,
                            cold_start: route.cold_start,
                            limiter: route.rate_limit.as_ref().map(|limit| {
                                limiters.get(
                                    &mut buckets,
                                    format!("service/{namespace}/{}", route.service),
                                    limit,
                                )
                            }),
                        }),
                    );
            }
        }
        // Backends that left the table stay while requests are outstanding (draining).
        for (id, state) in registry.drain() {
            if state.outstanding() > 0 {
                seen.entry(id).or_insert(state);
            }
        }
        *registry = seen;
        limiters.retain(buckets);
        compiled
    }
}

/// FNV-1a, 64 bits, with a final avalanche (MurmurHash3's fmix64): a fixed hash, so a sticky
/// key maps to the same variant in every router, and similar keys spread evenly.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn sticky_keys_spread_evenly_and_always_hash_alike() {
        let share = (0..10_000)
            .filter(|i| fnv1a(format!("user-{i}").as_bytes()) % 10_000 < 3_000)
            .count();
        assert!(
            (2_800..=3_200).contains(&share),
            "{share} of 10,000 under a 30 % weight"
        );
        // Fixed across builds and machines (a router replica and a restarted one agree).
        assert_eq!(fnv1a(b"user-7"), 0x5f45893168beb5f);
    }
}
