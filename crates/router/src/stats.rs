//! Per-revision accounting for canary analysis: requests, errors and latency bucket counts,
//! kept as plain counters so that the numbers of several router replicas add up
//! (`ferry_core::analysis`). A few relaxed atomic increments per attempt.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::analysis::{BUCKETS, RevisionMetrics, ServiceMetrics, bucket_of};
use ferry_core::autoscale::Load;
use ferry_core::experiment::{RewardStats, Rewards, ShadowCounts};

use crate::shadow::ShadowCounters;
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// Where the router serves [`ServiceNumbers`] as JSON.
pub const PATH: &str = ferry_core::analysis::NUMBERS_PATH;

/// One revision's counters.
pub struct RevisionStats {
    /// Attempts begun (a counter) and not yet ended (a gauge): the autoscaler's load.
    arrivals: AtomicU64,
    in_flight: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    unreachable: AtomicU64,
    latency: [AtomicU64; BUCKETS + 1],
}

impl Default for RevisionStats {
    fn default() -> Self {
        RevisionStats {
            arrivals: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unreachable: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One attempt in flight; it ends on drop.
pub(crate) struct Attempt<'a>(&'a RevisionStats);

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RevisionStats {
    /// An attempt begins: counted as arrived and in flight until the guard drops.
    pub(crate) fn begin(&self) -> Attempt<'_> {
        self.arrivals.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Attempt(self)
    }

    /// Arrivals and requests in flight now.
    pub fn load(&self) -> Load {
        Load {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            held: 0,
            arrivals: self.arrivals.load(Ordering::Relaxed),
            gpu_percent: None,
        }
    }

    /// One attempt: `status` `None` when the replica failed before answering.
    pub fn record(&self, status: Option<StatusCode>, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match status {
            Some(status) => {
                if status.is_server_error() {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
                self.latency[bucket_of(elapsed.as_secs_f64())].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.unreachable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> RevisionMetrics {
        RevisionMetrics {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            unreachable: self.unreachable.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// What the web console plots (`/v1/console/metrics`, both modes): every service's numbers,
/// summed over the router replicas, and the latency buckets' upper bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleMetrics {
    /// `local` or `cluster`.
    pub mode: String,
    /// Upper bound of each latency bucket but the last (unbounded), in seconds.
    pub bounds_seconds: Vec<f64>,
    pub services: Vec<ServiceNumbers>,
}

impl ConsoleMetrics {
    pub fn new(mode: &str, services: Vec<ServiceNumbers>) -> Self {
        ConsoleMetrics {
            mode: mode.to_string(),
            bounds_seconds: (0..ferry_core::analysis::BUCKETS)
                .map(ferry_core::analysis::bucket_bound)
                .collect(),
            services,
        }
    }

    /// Several router replicas' numbers as one: counters and gauges summed per service.
    pub fn merged(mode: &str, replicas: Vec<Vec<ServiceNumbers>>) -> Self {
        let mut by_service: BTreeMap<ServiceKey, ServiceNumbers> = BTreeMap::new();
        for numbers in replicas.into_iter().flatten() {
            let key = (numbers.namespace.clone(), numbers.service.clone());
            match by_service.get_mut(&key) {
                None => {
                    by_service.insert(key, numbers);
                }
                Some(sum) => {
                    for (revision, metrics) in numbers.revisions {
                        sum.revisions.entry(revision).or_default().merge(&metrics);
                    }
                    for (revision, load) in numbers.load {
                        let entry = sum.load.entry(revision).or_default();
                        entry.in_flight += load.in_flight;
                        entry.held += load.held;
                        entry.arrivals += load.arrivals;
                    }
                    sum.held += numbers.held;
                }
            }
        }
        ConsoleMetrics::new(mode, by_service.into_values().collect())
    }
}

/// One service's numbers, as the JSON endpoint lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceNumbers {
    pub namespace: String,
    pub service: String,
    pub revisions: ServiceMetrics,
    /// Rewards per experiment variant (`POST /v2/models/{model}/feedback`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rewards: Rewards,
    /// The shadow's counters.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shadow: ShadowCounts,
    /// Arrivals and requests in flight per revision (the autoscaler's load).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub load: BTreeMap<String, Load>,
    /// Requests held now while no replica is ready (cold start).
    #[serde(default, skip_serializing_if = "is_nothing")]
    pub held: u64,
}

fn is_nothing(n: &u64) -> bool {
    *n == 0
}

fn is_zero(counts: &ShadowCounts) -> bool {
    *counts == ShadowCounts::default()
}

/// (namespace, service, revision).
type RevisionKey = (String, String, String);

/// (namespace, service).
type ServiceKey = (String, String);

/// Every revision's counters, living across route-table changes.
#[derive(Clone, Default)]
pub struct Accounting {
    registry: Arc<Mutex<HashMap<RevisionKey, Arc<RevisionStats>>>>,
    /// Rewards by (namespace, service, variant); feedback is off the request path.
    rewards: Arc<Mutex<HashMap<RevisionKey, RewardStats>>>,
    /// Shadow counters by (namespace, service).
    shadows: Arc<Mutex<HashMap<ServiceKey, Arc<ShadowCounters>>>>,
    /// Requests held (cold start) by (namespace, service).
    held: Arc<Mutex<HashMap<ServiceKey, Arc<AtomicU64>>>>,
}

impl Accounting {
    /// The counters of one revision (created at first use).
    pub(crate) fn handle(
        &self,
        namespace: &str,
        service: &str,
        revision: &str,
    ) -> Arc<RevisionStats> {
        self.registry
            .lock()
            .expect("accounting poisoned")
            .entry((
                namespace.to_string(),
                service.to_string(),
                revision.to_string(),
            ))
            .or_default()
            .clone()
    }

    /// The held-request gauge of a service (created at first use).
    pub(crate) fn held(&self, namespace: &str, service: &str) -> Arc<AtomicU64> {
        self.held
            .lock()
            .expect("accounting poisoned")
            .entry((namespace.to_string(), service.to_string()))
            .or_default()
            .clone()
    }

    /// Every service's load per revision and its held requests, by (namespace, service).
    pub fn loads(&self) -> BTreeMap<(String, String), (BTreeMap<String, Load>, u64)> {
        let mut out: BTreeMap<(String, String), (BTreeMap<String, Load>, u64)> = BTreeMap::new();
        for ((namespace, service, revision), stats) in
            self.registry.lock().expect("accounting poisoned").iter()
        {
            out.entry((namespace.clone(), service.clone()))
                .or_default()
                .0
                .insert(revision.clone(), stats.load());
        }
        for (key, held) in self.held.lock().expect("accounting poisoned").iter() {
            out.entry(key.clone()).or_default().1 = held.load(Ordering::Relaxed);
        }
        out
    }

    /// Every service's numbers since the router started, by (namespace, service).
    pub fn snapshot(&self) -> BTreeMap<(String, String), ServiceMetrics> {
        let registry = self.registry.lock().expect("accounting poisoned");
        let mut out: BTreeMap<(String, String), ServiceMetrics> = BTreeMap::new();
        for ((namespace, service, revision), stats) in registry.iter() {
            out.entry((namespace.clone(), service.clone()))
                .or_default()
                .insert(revision.clone(), stats.snapshot());
        }
        out
    }

    /// The shadow counters of a service (created at first use).
    pub(crate) fn shadow(&self, namespace: &str, service: &str) -> Arc<ShadowCounters> {
        self.shadows
            .lock()
            .expect("accounting poisoned")
            .entry((namespace.to_string(), service.to_string()))
            .or_default()
            .clone()
    }

    /// Every service's shadow counters since the router started, by (namespace, service).
    pub fn shadows(&self) -> BTreeMap<(String, String), ShadowCounts> {
        self.shadows
            .lock()
            .expect("accounting poisoned")
            .iter()
            .map(|(key, counters)| (key.clone(), counters.snapshot()))
            .collect()
    }

    /// Record one reward for `variant` of a service.
    pub(crate) fn reward(&self, namespace: &str, service: &str, variant: &str, reward: f64) {
        self.rewards
            .lock()
            .expect("accounting poisoned")
            .entry((
                namespace.to_string(),
                service.to_string(),
                variant.to_string(),
            ))
            .or_default()
            .add(reward);
    }

    /// Every service's rewards per variant since the router started, by (namespace, service).
    pub fn rewards(&self) -> BTreeMap<(String, String), Rewards> {
        let rewards = self.rewards.lock().expect("accounting poisoned");
        let mut out: BTreeMap<(String, String), Rewards> = BTreeMap::new();
        for ((namespace, service, variant), stats) in rewards.iter() {
            out.entry((namespace.clone(), service.clone()))
                .or_default()
                .insert(variant.clone(), *stats);
        }
        out
    }

    /// [`Accounting::snapshot`] and [`Accounting::rewards`] as the JSON endpoint serves them.
    pub fn numbers(&self) -> Vec<ServiceNumbers> {
        let mut rewards = self.rewards();
        let mut shadows = self.shadows();
        let mut loads = self.loads();
        let mut snapshot = self.snapshot();
        // A service with requests held and none answered yet is listed too.
        for key in loads.keys() {
            snapshot.entry(key.clone()).or_default();
        }
        snapshot
            .into_iter()
            .map(|((namespace, service), revisions)| {
                let (load, held) = loads
                    .remove(&(namespace.clone(), service.clone()))
                    .unwrap_or_default();
                ServiceNumbers {
                    load,
                    held,
                    rewards: rewards
                        .remove(&(namespace.clone(), service.clone()))
                        .unwrap_or_default(),
                    shadow: shadows
                        .remove(&(namespace.clone(), service.clone()))
                        .unwrap_or_default(),
                    namespace,
                    service,
                    revisions,
                }
            })
            .collect()
    }
}
