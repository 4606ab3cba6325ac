//! ServerPools in local mode: each pool is N `ferry server --memory-budget` processes under the
//! supervisor (replica rows whose service is `serverpool/<name>`), started with no model and
//! driven through their repository API. Every pass observes the servers (their repository
//! index and residency), asks the core for the pool's decision ([`ferry_core::pool::decide`]),
//! registers and unregisters copies, records the pool's status and keeps what the service
//! reconcile needs: where each pooled model's copies are.

use std::collections::HashMap;

use ferry_api::ServerPool;
use ferry_core::pool::{self, PoolServer, Pooled, ServerModel};
use ferry_core::routes::Addresses;
use ferry_core::{ReplicaHealth, ReplicaView};

use crate::Result;
use crate::reconcile::Reconciler;
use crate::store::ReplicaRow;
use crate::supervisor::ReplicaSpec;

/// The `service` column of a pool server's replica row: `serverpool/<pool>` (a `/` never
/// appears in an InferenceService's name).
pub const SERVICE_PREFIX: &str = "serverpool/";

/// A pool as the last pass left it, for the service reconcile.
#[derive(Debug, Clone, Default)]
pub struct PoolSnapshot {
    pub servers: Vec<PoolServer>,
    pub addrs: HashMap<String, Addresses>,
    pub placement: ferry_core::placement::Placement,
}

/// The pool a replica row serves, when it is a pool server's.
pub fn pool_of(row: &ReplicaRow) -> Option<&str> {
    row.service.strip_prefix(SERVICE_PREFIX)
}

fn spec_of(pool: &ServerPool) -> ReplicaSpec {
    ReplicaSpec {
        model_name: String::new(),
        model_uri: String::new(),
        compute_threads: pool
            .spec
            .resources
            .as_ref()
            .and_then(|r| r.limits.get("cpu"))
            .and_then(|cpu| ferry_api::quantity::parse(cpu))
            .map(|cpu| cpu.ceil().max(1.0) as u32),
        memory_budget: pool.spec.memory_budget_bytes(),
    }
}

impl Reconciler {
    /// One pass over every pool: servers started and stopped, observed, models placed.
    pub async fn reconcile_pools(&self) -> Result<()> {
        let pools = self.store.pools(None)?;
        let services = self.store.services()?;
        let rows = self.store.replicas()?;
        let observed = self.supervisor.observed();
        let mut snapshots = HashMap::new();

        // Servers of pools that are gone stop; every server has a task (adopted after a
        // restart).
        for row in rows.iter().filter(|r| pool_of(r).is_some()) {
            let pool = pools.iter().find(|p| {
                p.metadata.namespace.as_deref() == Some(row.namespace.as_str())
                    && p.metadata.name.as_deref() == pool_of(row)
            });
            match pool {
                None if !row.terminating => {
                    self.store.set_terminating(&row.id)?;
                    self.supervisor.stop(&row.id);
                }
                Some(pool) if !observed.contains_key(&row.id) => {
                    self.supervisor.run(row.clone(), spec_of(pool));
                    if row.terminating {
                        self.supervisor.stop(&row.id);
                    }
                }
                _ => {}
            }
        }

        for pool in &pools {
            let namespace = pool.metadata.namespace.clone().unwrap_or_default();
            let name = pool.metadata.name.clone().unwrap_or_default();
            let service = format!("{SERVICE_PREFIX}{name}");
            let mine: Vec<&ReplicaRow> = rows
                .iter()
                .filter(|r| r.namespace == namespace && r.service == service)
                .collect();
            let views: Vec<ReplicaView> = mine
                .iter()
                .map(|r| ReplicaView {
                    id: r.id.clone(),
                    revision: service.clone(),
                    health: observed
                        .get(&r.id)
                        .map(|o| o.health.clone())
                        .unwrap_or(ReplicaHealth::Starting { for_seconds: 0 }),
                    terminating: r.terminating,
                })
                .collect();
            let (start, stop) = pool::scale(pool.spec.replicas(), &views);
            for id in &stop {
                self.store.set_terminating(id)?;
                self.supervisor.stop(id);
            }
            for _ in 0..start {
                let row = ReplicaRow::fresh(
                    &namespace,
                    &service,
                    &format!("{name}-server"),
                    &format!("{name}-server"),
                );
                self.store.insert_replica(&row)?;
                self.supervisor.run(row, spec_of(pool));
            }

            // Observe the servers that run.
            let budget = pool.spec.memory_budget_bytes().unwrap_or(0);
            let mut servers = Vec::new();
            let mut addrs = HashMap::new();
            for view in views
                .iter()
                .filter(|v| !v.terminating && !stop.contains(&v.id))
            {
                let restarts = observed.get(&view.id).map_or(0, |o| o.restarts);
                let mut server = PoolServer {
                    id: view.id.clone(),
                    budget,
                    restarts,
                    ..Default::default()
                };
                if let Some(a) = observed.get(&view.id).and_then(|o| o.addrs.clone())
                    && view.ready()
                {
                    match self.pool_servers.observe(a.http).await {
                        Ok((entries, residency)) => {
                            server = PoolServer {
                                restarts,
                                ..PoolServer::observed(&view.id, budget, &entries, &residency)
                            };
                        }
                        Err(e) => {
                            tracing::debug!(server = %view.id, error = %e, "pool server not observed")
                        }
                    }
                    addrs.insert(view.id.clone(), a);
                }
                servers.push(server);
            }

            let pooled: Vec<(&crate::store::ServiceRow, Pooled)> = services
                .iter()
                .filter(|s| !s.deleted && s.namespace() == namespace)
                .filter(|s| s.isvc.spec.predictor.pool.as_deref() == Some(name.as_str()))
                .map(|s| {
                    let model = &s.isvc.spec.predictor.model;
                    let measured = pool::last_recorded(pool.status.as_ref(), &s.isvc.model_name());
                    (s, Pooled::of(&s.isvc, model.local_file_bytes(), measured))
                })
                .collect();
            let models: Vec<Pooled> = pooled.iter().map(|(_, p)| p.clone()).collect();
            let mut decision = pool::decide(&pool.spec, &servers, &models);

            // Carry it out: new copies first, then what is no longer placed.
            for (server_id, model) in &decision.register.clone() {
                let Some((row, _)) = pooled.iter().find(|(_, p)| &p.model == model) else {
                    continue;
                };
                let Some(a) = addrs.get(server_id) else {
                    continue;
                };
                let path = row.isvc.spec.predictor.model.reader_path();
                match self.pool_servers.register(a.http, model, path).await {
                    Ok(()) => {
                        tracing::debug!(pool = %name, server = %server_id, model, "copy registered");
                        if let Some(s) = servers.iter_mut().find(|s| &s.id == server_id) {
                            s.models.insert(model.clone(), ServerModel::default());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pool = %name, server = %server_id, model, error = %e, "register failed");
                        decision.registration_failed(server_id, model);
                    }
                }
            }
            for (server_id, model) in &decision.unregister {
                if let Some(a) = addrs.get(server_id) {
                    match self.pool_servers.unregister(a.http, model).await {
                        Ok(()) => {
                            tracing::debug!(pool = %name, server = %server_id, model, "copy unregistered");
                            if let Some(s) = servers.iter_mut().find(|s| &s.id == server_id) {
                                s.models.remove(model);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(pool = %name, server = %server_id, model, error = %e, "unregister failed")
                        }
                    }
                }
            }
            let live: Vec<ReplicaView> = views
                .iter()
                .filter(|v| !stop.contains(&v.id))
                .cloned()
                .collect();
            let now =
                ferry_core::service::timestamp(ferry_api::k8s_openapi::jiff::Timestamp::now());
            let status = decision.status_for(pool, &live, &now);
            if pool.status.as_ref() != Some(&status) {
                self.store.set_pool_status(&namespace, &name, &status)?;
            }
            snapshots.insert(
                (namespace, name),
                PoolSnapshot {
                    servers,
                    addrs,
                    placement: decision.placement,
                },
            );
        }
        *self.pools.lock().expect("pools poisoned") = snapshots;
        Ok(())
    }
}
