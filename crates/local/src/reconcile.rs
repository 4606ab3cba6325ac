//! The reconcile loop: level-triggered, on every supervisor observation and on a timer. Each
//! pass reads the whole desired state (SQLite) and the whole observed state (supervisor), asks
//! the shared core what to do, persists the decision, then carries it out.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::k8s_openapi::api::core::v1::ResourceQuota;
use ferry_api::k8s_openapi::jiff::Timestamp;
use ferry_core::analysis::Windows;
use ferry_core::autoscale::Autoscalers;
use ferry_core::quota::Usage;
use ferry_core::reason::PlannedEvent;
use ferry_core::routes::{Endpoint, RouteTable, ServiceEndpoints};
use ferry_core::service::{self, EntryPoint, Observation, Signals};
use ferry_core::{ReplicaHealth, ReplicaView};
use tokio::sync::{Notify, watch};

use crate::Result;
use crate::store::{ReplicaRow, ServiceRow, Store};
use crate::supervisor::{ReplicaSpec, Supervisor};

/// A service's traffic as its plan decides it: weights per revision, the revision failed
/// requests are retried on, each revision's experiment variant, the shadow.
#[derive(Default)]
struct Traffic {
    weights: BTreeMap<String, u32>,
    fallback: Option<String>,
    variants: BTreeMap<String, String>,
    shadow: Option<(String, u32)>,
}

/// Drives every service towards its spec.
pub struct Reconciler {
    pub store: Arc<Store>,
    pub supervisor: Supervisor,
    /// Publishes route tables to the router, with the API keys.
    pub keys: Arc<crate::apikeys::KeyRing>,
    pub changed: Arc<Notify>,
    /// The router's address, for `status.url`.
    pub router_addr: SocketAddr,
    /// Whether the router terminates TLS (`status.url` is https).
    pub tls: bool,
    /// The router's per-revision numbers, read in-process for canary analysis.
    pub accounting: ferry_router::Accounting,
    /// Per service: when its analysis window began, and the numbers then.
    pub windows: Mutex<Windows<(String, String)>>,
    /// Per service: Ferry's autoscaler (its samples of the router's load).
    pub autoscalers: Mutex<Autoscalers<(String, String)>>,
    /// Per service: since when a quota has left its latest revision no room.
    pub stalls: Mutex<ferry_core::service::Stalls<(String, String)>>,
    /// Per pool (namespace, name): its servers and placement as the last pool pass left them.
    pub pools: Mutex<HashMap<(String, String), crate::pools::PoolSnapshot>>,
    /// For the pool servers' repository API.
    pub pool_servers: ferry_api::repository::Client,
}

impl Reconciler {
    /// Reconcile until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.reconcile_pools().await {
                tracing::error!(error = %e, "pool reconcile failed; retrying");
            }
            if let Err(e) = self.reconcile() {
                tracing::error!(error = %e, "reconcile failed; retrying");
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// One pass over everything.
    pub fn reconcile(&self) -> Result<()> {
        let mut services = self.store.services()?;
        // No HPA or KEDA here: Ferry's engine scales on the router's metrics in their place.
        for service in services.iter_mut() {
            ferry_core::autoscale::local_stand_in(&mut service.isvc);
        }
        let mut rows = self.store.replicas()?;
        let observed = self.supervisor.observed();
        let by_key: HashMap<(String, String), &ServiceRow> = services
            .iter()
            .map(|s| ((s.namespace(), s.name()), s))
            .collect();

        // Every recorded replica has a task: adopted after a restart, stopped when orphaned.
        for row in rows.iter_mut() {
            // A pool server's: the pool pass keeps it.
            if crate::pools::pool_of(row).is_some() {
                continue;
            }
            let service = by_key.get(&(row.namespace.clone(), row.service.clone()));
            let spec = service.and_then(|s| self.spec_of(s, &row.revision));
            if spec.is_none() && !row.terminating {
                self.store.set_terminating(&row.id)?;
                row.terminating = true;
            }
            if !observed.contains_key(&row.id) {
                let spec = spec.unwrap_or(ReplicaSpec {
                    model_name: String::new(),
                    model_uri: String::new(),
                    compute_threads: None,
                    memory_budget: None,
                });
                self.supervisor.run(row.clone(), spec);
                if row.terminating {
                    self.supervisor.stop(&row.id);
                }
            }
        }

        let view = |row: &ReplicaRow| ReplicaView {
            id: row.id.clone(),
            revision: row.revision.clone(),
            health: observed
                .get(&row.id)
                .map(|o| o.health.clone())
                .unwrap_or(ReplicaHealth::Starting { for_seconds: 0 }),
            terminating: row.terminating,
        };

        let mut to_stop = Vec::new();
        let mut statuses = Vec::new();
        let mut weights = HashMap::new();
        let mut pooled_endpoints = HashMap::new();
        let numbers = self.accounting.snapshot();
        let rewards = self.accounting.rewards();
        let shadows = self.accounting.shadows();
        let loads = self.accounting.loads();
        let at = Timestamp::now();
        // ResourceQuotas per namespace, and what each namespace uses now (updated as this
        // pass starts replicas): a surge is held to the room left.
        let mut quotas: HashMap<String, Vec<ResourceQuota>> = HashMap::new();
        for quota in self.store.quotas(None)? {
            let namespace = quota.metadata.namespace.clone().unwrap_or_default();
            quotas.entry(namespace).or_default().push(quota);
        }
        let mut usage: HashMap<String, Usage> = quotas
            .keys()
            .map(|ns| (ns.clone(), crate::quotas::usage(&services, &rows, ns)))
            .collect();
        for service in &services {
            let (namespace, name) = (service.namespace(), service.name());
            let mine: Vec<&mut ReplicaRow> = rows
                .iter_mut()
                .filter(|r| r.namespace == namespace && r.service == name)
                .collect();
            if service.deleted {
                if mine.is_empty() {
                    self.store.purge(&namespace, &name)?;
                    tracing::info!(namespace, name, "deleted");
                }
                for row in mine.into_iter().filter(|r| !r.terminating) {
                    self.store.set_terminating(&row.id)?;
                    row.terminating = true;
                    to_stop.push(row.id.clone());
                }
                continue;
            }
            if let Some(pool) = service.isvc.spec.predictor.pool.clone() {
                // Its own replicas (from before it moved to the pool) go.
                for row in mine.into_iter().filter(|r| !r.terminating) {
                    self.store.set_terminating(&row.id)?;
                    row.terminating = true;
                    to_stop.push(row.id.clone());
                }
                let (endpoints, status) = self.pooled(service, &pool, at);
                weights.insert(
                    (namespace.clone(), name.clone()),
                    Traffic {
                        weights: [(service.revision.clone(), 100)].into(),
                        ..Traffic::default()
                    },
                );
                pooled_endpoints.insert((namespace.clone(), name.clone()), endpoints);
                if service.status.as_ref() != Some(&status) {
                    let events =
                        ferry_core::status::transition_event(service.status.as_ref(), &status);
                    statuses.push((namespace, name, status, events.into_iter().collect()));
                }
                continue;
            }
            let views: Vec<ReplicaView> = mine.iter().map(|r| view(r)).collect();
            // What each revision is set to: its replicas that are not leaving.
            let mut scale = BTreeMap::new();
            for replica in views.iter().filter(|v| !v.terminating) {
                *scale.entry(replica.revision.clone()).or_insert(0) += 1;
            }
            let history: Vec<String> = self
                .store
                .revisions(&namespace, &name)?
                .into_iter()
                .map(|r| r.name)
                .collect();
            let observation = Observation {
                generation: service.generation,
                previous_status: service.status.as_ref(),
                latest: &service.revision,
                replicas: &views,
                scale: &scale,
                creation_failure: None,
                ingress: None,
                autoscaler: None,
                runtime_problem: None,
                entry: EntryPoint::Local {
                    router_port: self.router_addr.port(),
                    tls: self.tls,
                },
                quota_room: quotas.get(&namespace).and_then(|q| {
                    let used = usage.get(&namespace).cloned().unwrap_or_default();
                    ferry_core::quota::room(q, &used, &Usage::replica(&service.isvc))
                }),
                stalled_since: self
                    .stalls
                    .lock()
                    .expect("stalls poisoned")
                    .since(&(namespace.clone(), name.clone())),
            };
            let key = (namespace.clone(), name.clone());
            let current = numbers.get(&key).cloned().unwrap_or_default();
            let window = self
                .windows
                .lock()
                .expect("windows poisoned")
                .window(&key, &current, at);
            let (load, held) = loads.get(&key).cloned().unwrap_or_default();
            let autoscale = service::autoscale(
                &mut self.autoscalers.lock().expect("autoscalers poisoned"),
                &key,
                &service.isvc,
                &observation,
                &load,
                held,
                at,
            );
            let signals = Signals {
                window: Some(window),
                totals: current.clone(),
                rewards: rewards.get(&key).cloned().unwrap_or_default(),
                shadow: shadows.get(&key).copied().unwrap_or_default(),
                autoscale,
            };
            let plan = service::plan(&service.isvc, &history, &observation, &signals, at);
            self.stalls
                .lock()
                .expect("stalls poisoned")
                .record(key.clone(), plan.stalling, at);
            if plan.analysed {
                self.windows
                    .lock()
                    .expect("windows poisoned")
                    .restart(key, current, at);
            }
            // Persisted before it is carried out: the rollout's state and events, then the
            // count changes, replicas leaving, new replicas.
            let mut decisions = plan.rollout_events.clone();
            if plan.status.rollout.is_some()
                && service.status.as_ref().map(|s| &s.rollout) != Some(&plan.status.rollout)
            {
                for event in decisions.drain(..) {
                    self.record(&namespace, &name, &event)?;
                }
                self.store.set_status(&namespace, &name, &plan.status)?;
            }
            for change in &plan.changes {
                self.record(&namespace, &name, &change.event)?;
            }
            if let Some(event) = &plan.quota_event {
                self.record(&namespace, &name, event)?;
            }
            for row in mine.into_iter().filter(|r| plan.stop.contains(&r.id)) {
                self.store.set_terminating(&row.id)?;
                row.terminating = true;
                to_stop.push(row.id.clone());
            }
            for (revision, count) in plan.start.iter().filter(|(_, n)| **n > 0) {
                let Some(spec) = self.spec_of(service, revision) else {
                    tracing::warn!(namespace, name, revision, "no stored revision to start");
                    continue;
                };
                for _ in 0..*count {
                    let row = ReplicaRow::fresh(&namespace, &name, revision, revision);
                    self.store.insert_replica(&row)?;
                    self.supervisor.run(row.clone(), spec.clone());
                    rows.push(row);
                    if let Some(used) = usage.get_mut(&namespace) {
                        *used = used.clone().plus(&Usage::replica(&service.isvc));
                    }
                }
            }
            weights.insert(
                (namespace.clone(), name.clone()),
                Traffic {
                    weights: plan.weights,
                    fallback: plan.fallback,
                    variants: plan.variants,
                    shadow: plan.shadow,
                },
            );
            if service.status.as_ref() != Some(&plan.status) {
                decisions.extend(plan.autoscale_events);
                decisions.extend(plan.status_event);
                statuses.push((namespace, name, plan.status, decisions));
            }
        }

        // Publish the route table before anything is stopped: a draining replica is out of it.
        self.keys.publish(self.route_table(
            &services,
            &rows,
            &observed,
            &mut weights,
            &mut pooled_endpoints,
        ));
        for id in &to_stop {
            self.supervisor.stop(id);
        }

        for (namespace, name, status, events) in statuses {
            for event in &events {
                self.record(&namespace, &name, event)?;
            }
            self.store.set_status(&namespace, &name, &status)?;
        }
        Ok(())
    }

    /// A pooled service's endpoints (the pool servers holding its model) and status.
    fn pooled(
        &self,
        service: &ServiceRow,
        pool: &str,
        at: Timestamp,
    ) -> (Vec<Endpoint>, ferry_api::InferenceServiceStatus) {
        let snapshots = self.pools.lock().expect("pools poisoned");
        let snapshot = snapshots.get(&(service.namespace(), pool.to_string()));
        let model = service.isvc.model_name();
        let copies = snapshot
            .map(|s| ferry_core::pool::copies(&model, &service.revision, &s.placement, &s.servers))
            .unwrap_or_default();
        let problem = ferry_core::pool::not_placed(
            snapshot.is_some(),
            pool,
            &model,
            snapshot.map(|s| &s.placement),
        );
        let entry = EntryPoint::Local {
            router_port: self.router_addr.port(),
            tls: self.tls,
        };
        let mut isvc = service.isvc.clone();
        isvc.metadata.generation = Some(service.generation);
        let status = ferry_core::pool::service_status(
            &isvc,
            &service.revision,
            &copies,
            problem,
            service.status.as_ref(),
            entry.url(&service.isvc),
            &ferry_core::service::timestamp(at),
        );
        let endpoints = copies
            .into_iter()
            .filter_map(|replica| {
                let addrs = snapshot?.addrs.get(&replica.id)?.clone();
                Some(Endpoint { replica, addrs })
            })
            .collect();
        (endpoints, status)
    }

    fn record(&self, namespace: &str, name: &str, event: &PlannedEvent) -> Result<()> {
        self.store.event(
            namespace,
            name,
            event.type_.as_str(),
            event.reason.as_str(),
            &event.note,
        )
    }

    fn spec_of(&self, service: &ServiceRow, revision: &str) -> Option<ReplicaSpec> {
        let predictor = if revision == service.revision {
            service.isvc.spec.predictor.clone()
        } else {
            self.store
                .revisions(&service.namespace(), &service.name())
                .ok()?
                .into_iter()
                .find(|r| r.name == revision)?
                .predictor
        };
        let threads = predictor.compute_threads();
        Some(ReplicaSpec {
            model_name: predictor.model_name(&service.name()),
            model_uri: predictor.model.uri.clone(),
            compute_threads: threads,
            memory_budget: None,
        })
    }

    fn route_table(
        &self,
        services: &[ServiceRow],
        rows: &[ReplicaRow],
        observed: &HashMap<String, crate::supervisor::ProcessState>,
        weights: &mut HashMap<(String, String), Traffic>,
        pooled: &mut HashMap<(String, String), Vec<Endpoint>>,
    ) -> RouteTable {
        let inputs: Vec<ServiceEndpoints> = services
            .iter()
            .filter(|s| !s.deleted)
            .map(|s| {
                let pooled = pooled.remove(&(s.namespace(), s.name()));
                let endpoints = pooled.unwrap_or_else(|| {
                    rows.iter()
                        .filter(|r| r.namespace == s.namespace() && r.service == s.name())
                        .filter_map(|r| {
                            let o = observed.get(&r.id)?;
                            Some(Endpoint {
                                replica: ReplicaView {
                                    id: r.id.clone(),
                                    revision: r.revision.clone(),
                                    health: o.health.clone(),
                                    terminating: r.terminating,
                                },
                                addrs: o.addrs.clone()?,
                            })
                        })
                        .collect()
                });
                let traffic = weights
                    .remove(&(s.namespace(), s.name()))
                    .unwrap_or_default();
                ServiceEndpoints::of(&s.isvc, endpoints, traffic.weights)
                    .with_fallback(traffic.fallback)
                    .with_variants(traffic.variants)
                    .with_shadow(traffic.shadow)
            })
            .collect();
        ferry_core::routes::build(&inputs)
    }
}
