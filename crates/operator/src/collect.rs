//! The router's numbers in a cluster, for canary analysis and Ferry's autoscaler: every half
//! second (while a rollout, an experiment, a shadow or the autoscaler wants them) the
//! operator lists the router pods and calls each at its pod IP for its per-revision counters
//! (`ferry_router::REVISION_METRICS_PATH`). Each pod's counters are turned into increments (a
//! restarted router pod starts again from zero) and added to one running total per service:
//! the sum of every router replica. Its gauges (requests in flight, held) are each pod's
//! latest, summed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_core::analysis::{self, ServiceMetrics};
use ferry_core::autoscale::Load;
use ferry_core::experiment::{Rewards, ShadowCounts};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;

/// Where the router pods are.
#[derive(Debug, Clone)]
pub struct RouterPods {
    pub namespace: String,
    /// Label selector of the router pods.
    pub selector: String,
    /// The port their REST listener is on.
    pub port: u16,
    /// The routers' admin token (`FERRY_ROUTER_ADMIN_TOKEN`, from the same Secret in both
    /// Deployments): their numbers need it while namespaces have API keys.
    pub token: Option<String>,
}

impl Default for RouterPods {
    fn default() -> Self {
        RouterPods {
            namespace: "ferry-system".into(),
            selector: "app.kubernetes.io/name=ferry-router".into(),
            port: 8080,
            token: std::env::var("FERRY_ROUTER_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        }
    }
}

type ServiceKey = (String, String);

/// A service's numbers per revision, rewards per variant and shadow counters.
type Numbers = (ServiceMetrics, Rewards, ShadowCounts);

#[derive(Deserialize)]
struct ServiceNumbers {
    namespace: String,
    service: String,
    revisions: ServiceMetrics,
    #[serde(default)]
    rewards: Rewards,
    #[serde(default)]
    shadow: ShadowCounts,
    #[serde(default)]
    load: BTreeMap<String, Load>,
    #[serde(default)]
    held: u64,
}

/// (when, requests in flight + held, arrivals so far), oldest first.
type History = std::collections::VecDeque<(Instant, u64, u64)>;

/// One pod's load of one service: per revision, and held.
type PodLoad = (BTreeMap<String, Load>, u64);

/// The running totals, and what each router pod said last.
#[derive(Default)]
pub struct Collector {
    totals: Mutex<HashMap<ServiceKey, Numbers>>,
    last: Mutex<HashMap<String, BTreeMap<ServiceKey, Numbers>>>,
    /// Each pod's latest load per service, and the arrivals counted so far per service
    /// and revision (increments summed, as the totals).
    loads: Mutex<HashMap<String, BTreeMap<ServiceKey, PodLoad>>>,
    arrivals: Mutex<HashMap<ServiceKey, BTreeMap<String, u64>>>,
    /// When a reconcile last asked for numbers: the collector sleeps when nobody does.
    wanted: Mutex<Option<Instant>>,
    /// Per service, after each collection: (when, in flight + held, arrivals so far) — what
    /// the External metrics are averaged over.
    history: Mutex<HashMap<ServiceKey, History>>,
}

/// How far back an External metric looks (the HPA reads it every 15 s).
pub const EXTERNAL_WINDOW: Duration = Duration::from_secs(5);

impl Collector {
    /// The totals of one service (every router pod's numbers and rewards added), asking for
    /// collection.
    pub fn totals(&self, namespace: &str, service: &str) -> Numbers {
        *self.wanted.lock().expect("poisoned") = Some(Instant::now());
        self.totals
            .lock()
            .expect("poisoned")
            .get(&(namespace.to_string(), service.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// The load of one service: requests in flight per revision and held, as every router
    /// pod said last, and the arrivals counted, asking for collection.
    pub fn load(&self, namespace: &str, service: &str) -> (BTreeMap<String, Load>, u64) {
        *self.wanted.lock().expect("poisoned") = Some(Instant::now());
        self.current(&(namespace.to_string(), service.to_string()))
    }

    fn current(&self, key: &ServiceKey) -> (BTreeMap<String, Load>, u64) {
        let key = key.clone();
        let mut per_revision: BTreeMap<String, Load> = BTreeMap::new();
        let mut held = 0;
        for pods in self.loads.lock().expect("poisoned").values() {
            if let Some((revisions, pod_held)) = pods.get(&key) {
                held += pod_held;
                for (revision, load) in revisions {
                    per_revision.entry(revision.clone()).or_default().in_flight += load.in_flight;
                }
            }
        }
        if let Some(arrivals) = self.arrivals.lock().expect("poisoned").get(&key) {
            for (revision, n) in arrivals {
                per_revision.entry(revision.clone()).or_default().arrivals = *n;
            }
        }
        (per_revision, held)
    }

    /// One of the router's metrics for a service as an HPA's External metric reads it: the
    /// whole service's value averaged over [`EXTERNAL_WINDOW`] — requests in flight and held
    /// (`concurrency`), arriving per second (`rps`), held (`queueDepth`). Asks for
    /// collection; `None` before two collections.
    pub fn external(
        &self,
        namespace: &str,
        service: &str,
        metric: ferry_api::ScaleMetric,
    ) -> Option<f64> {
        *self.wanted.lock().expect("poisoned") = Some(Instant::now());
        let history = self.history.lock().expect("poisoned");
        let samples = history.get(&(namespace.to_string(), service.to_string()))?;
        let last = samples.back()?;
        let window: Vec<&(Instant, u64, u64)> = samples
            .iter()
            .filter(|(at, _, _)| last.0.duration_since(*at) <= EXTERNAL_WINDOW)
            .collect();
        let first = window.first()?;
        match metric {
            ferry_api::ScaleMetric::Concurrency => {
                Some(window.iter().map(|s| s.1 as f64).sum::<f64>() / window.len() as f64)
            }
            ferry_api::ScaleMetric::Rps => {
                let span = last.0.duration_since(first.0).as_secs_f64();
                (span > 0.0).then(|| last.2.saturating_sub(first.2) as f64 / span)
            }
            ferry_api::ScaleMetric::QueueDepth => Some(
                self.current(&(namespace.to_string(), service.to_string()))
                    .1 as f64,
            ),
            _ => None,
        }
    }

    /// After a collection: one history sample per service.
    fn sample(&self) {
        let keys: Vec<ServiceKey> = self
            .arrivals
            .lock()
            .expect("poisoned")
            .keys()
            .cloned()
            .collect();
        let now = Instant::now();
        for key in keys {
            let (load, held) = self.current(&key);
            let demand = load.values().map(|l| l.in_flight).sum::<u64>() + held;
            let arrivals = load.values().map(|l| l.arrivals).sum::<u64>();
            let mut history = self.history.lock().expect("poisoned");
            let samples = history.entry(key).or_default();
            samples.push_back((now, demand, arrivals));
            while samples
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) > EXTERNAL_WINDOW * 2)
            {
                samples.pop_front();
            }
        }
    }

    fn wanted(&self) -> bool {
        self.wanted
            .lock()
            .expect("poisoned")
            .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
    }

    /// Add what `pod` reports now beyond what it reported last.
    fn observe(&self, pod: &str, now: Vec<ServiceNumbers>) {
        let loads: BTreeMap<ServiceKey, PodLoad> = now
            .iter()
            .map(|n| {
                (
                    (n.namespace.clone(), n.service.clone()),
                    (n.load.clone(), n.held),
                )
            })
            .collect();
        self.observe_load(pod, loads);
        let now: BTreeMap<ServiceKey, Numbers> = now
            .into_iter()
            .map(|n| ((n.namespace, n.service), (n.revisions, n.rewards, n.shadow)))
            .collect();
        let mut last = self.last.lock().expect("poisoned");
        let before = last.remove(pod).unwrap_or_default();
        let mut totals = self.totals.lock().expect("poisoned");
        for (key, (metrics, rewards, shadow)) in &now {
            let shadow_delta = before.get(key).map_or(*shadow, |b| shadow.since(&b.2));
            let (delta, reward_delta) = match before.get(key) {
                Some((previous, previous_rewards, _)) => (
                    analysis::since(metrics, previous),
                    rewards
                        .iter()
                        .map(|(variant, r)| {
                            let d = previous_rewards.get(variant).map_or(*r, |p| r.since(p));
                            (variant.clone(), d)
                        })
                        .collect::<Rewards>(),
                ),
                None => (metrics.clone(), rewards.clone()),
            };
            let total = totals.entry(key.clone()).or_default();
            analysis::merge(&mut total.0, &delta);
            for (variant, r) in reward_delta {
                total.1.entry(variant).or_default().merge(&r);
            }
            total.2.merge(&shadow_delta);
        }
        last.insert(pod.to_string(), now);
    }

    /// `pod`'s load now: its gauges replace what it said before, its arrivals beyond what it
    /// counted before are added.
    fn observe_load(&self, pod: &str, now: BTreeMap<ServiceKey, PodLoad>) {
        let mut loads = self.loads.lock().expect("poisoned");
        let before = loads.remove(pod).unwrap_or_default();
        let mut arrivals = self.arrivals.lock().expect("poisoned");
        for (key, (revisions, _)) in &now {
            let total = arrivals.entry(key.clone()).or_default();
            for (revision, load) in revisions {
                let previous = before
                    .get(key)
                    .and_then(|(r, _)| r.get(revision))
                    .map_or(0, |l| l.arrivals);
                // A counter that went down restarted: all it says now is new.
                let delta = if load.arrivals >= previous {
                    load.arrivals - previous
                } else {
                    load.arrivals
                };
                *total.entry(revision.clone()).or_default() += delta;
            }
        }
        loads.insert(pod.to_string(), now);
    }

    /// Forget pods that are gone.
    fn keep(&self, pods: &[String]) {
        self.last
            .lock()
            .expect("poisoned")
            .retain(|uid, _| pods.contains(uid));
        self.loads
            .lock()
            .expect("poisoned")
            .retain(|uid, _| pods.contains(uid));
    }

    /// Collect every half second while numbers are wanted, until the process ends.
    pub async fn run(&self, client: Client, routers: RouterPods) {
        let pods: Api<Pod> = Api::namespaced(client, &routers.namespace);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(400))
            .no_proxy()
            .build()
            .expect("an HTTP client builds");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.wanted() {
                continue;
            }
            let list = match pods
                .list(&ListParams::default().labels(&routers.selector))
                .await
            {
                Ok(list) => list,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list the router pods");
                    continue;
                }
            };
            let mut seen = Vec::new();
            for pod in list.items {
                let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                    continue;
                };
                let uid = pod.uid().unwrap_or_else(|| pod.name_any());
                let url = format!("http://{ip}:{}{}", routers.port, analysis::NUMBERS_PATH);
                let mut request = http.get(&url);
                if let Some(token) = &routers.token {
                    request = request.bearer_auth(token);
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        match response.json::<Vec<ServiceNumbers>>().await {
                            Ok(numbers) => {
                                self.observe(&uid, numbers);
                                seen.push(uid);
                            }
                            Err(e) => tracing::debug!(%url, error = %e, "bad router numbers"),
                        }
                    }
                    Ok(response) => {
                        tracing::debug!(%url, status = %response.status(), "router numbers refused")
                    }
                    Err(e) => tracing::debug!(%url, error = %e, "router pod unreachable"),
                }
            }
            self.keep(&seen);
            self.sample();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::analysis::RevisionMetrics;

    fn numbers(requests: u64) -> Vec<ServiceNumbers> {
        vec![ServiceNumbers {
            namespace: "ns".into(),
            service: "iris".into(),
            revisions: BTreeMap::from([(
                "iris-a".to_string(),
                RevisionMetrics {
                    requests,
                    errors: 0,
                    unreachable: 0,
                    latency: vec![requests],
                },
            )]),
            rewards: Rewards::new(),
            shadow: ShadowCounts::default(),
            load: BTreeMap::from([(
                "iris-a".to_string(),
                Load {
                    in_flight: requests % 7,
                    held: 0,
                    arrivals: requests,
                    gpu_percent: None,
                },
            )]),
            held: 1,
        }]
    }

    #[test]
    fn totals_add_every_router_pod_and_survive_a_router_restart() {
        let collector = Collector::default();
        collector.observe("router-1", numbers(10));
        collector.observe("router-2", numbers(5));
        collector.observe("router-1", numbers(25));
        assert_eq!(collector.totals("ns", "iris").0["iris-a"].requests, 30);
        // router-2 restarted: its counters began again at 3, which are all new.
        collector.observe("router-2", numbers(3));
        assert_eq!(collector.totals("ns", "iris").0["iris-a"].requests, 33);
        collector.keep(&["router-1".to_string()]);
        collector.observe("router-2", numbers(4));
        assert_eq!(collector.totals("ns", "iris").0["iris-a"].requests, 37);
        // Arrivals add up as the requests do; the gauges are each pod's latest, summed.
        let (load, held) = collector.load("ns", "iris");
        assert_eq!(load["iris-a"].arrivals, 37);
        assert_eq!((load["iris-a"].in_flight, held), (25 % 7 + 4, 2));
    }
}
