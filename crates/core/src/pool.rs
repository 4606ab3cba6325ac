//! A ServerPool's whole decision, the same for local mode and the operator: how many servers,
//! which copies of which models go where ([`crate::placement::plan`] on footprints measured by
//! the servers, estimated until then), what to register and unregister on each server, the
//! pool's status, and each pooled InferenceService's status and route endpoints.
//!
//! An estimate is a fixed cost plus a cost per file byte fitted to the models the pool has
//! measured ([`estimate::Estimate`]), the file size times [`DEFAULT_RATIO`] before any model is
//! measured; the status reports each model's prediction beside its measurement.

pub mod estimate;
mod observed;

pub use observed::{
    ready_condition, recorded_copies, recorded_problem, recorded_servers, routable_servers,
    server_models,
};

use std::collections::BTreeMap;

use ferry_api::{
    InferenceService, InferenceServiceStatus, PoolServerStatus, PooledModelStatus, ServerPoolSpec,
    ServerPoolStatus,
};

use crate::placement::{self, Current, Model, Placement, Server};
use crate::reason::{ConditionState, Reason};
use crate::{ReplicaHealth, ReplicaView};
use estimate::Estimate;

/// Footprint per file byte assumed before any model of the pool is measured.
pub const DEFAULT_RATIO: f64 = 2.0;
/// A model whose file size is unknown (fetched from a store, not yet cached) is assumed this
/// large until measured.
pub const UNKNOWN_SIZE: u64 = 64 << 20;

/// One model as a pool server reports it (its repository index).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerModel {
    /// Loaded now (its LRU may evict it later).
    pub resident: bool,
    /// Its footprint measured after load and warm-up, once loaded.
    pub measured: Option<u64>,
    /// Registered but refused (the server's reason): not a copy.
    pub failed: Option<String>,
}

/// A pool server as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolServer {
    pub id: String,
    /// Answering its readiness probe; only ready servers take copies.
    pub ready: bool,
    /// Its memory budget (what it reports, else the pool's).
    pub budget: u64,
    /// Bytes of resident models.
    pub used: u64,
    pub evictions: u64,
    /// Its restarts as the executor saw them (a restarted server starts empty).
    pub restarts: u32,
    /// Its models by name.
    pub models: BTreeMap<String, ServerModel>,
}

/// An InferenceService placed on the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooled {
    /// The InferenceService's name.
    pub service: String,
    /// Its model's name in the inference protocol (unique in the namespace).
    pub model: String,
    /// The model file's size, when it is a local file.
    pub file_bytes: Option<u64>,
    /// Copies wanted (`minReplicas`).
    pub copies: u32,
    /// Its footprint as the pool's status last recorded it: a measurement outlives the copy
    /// that made it (a move, a server's restart).
    pub measured: Option<u64>,
}

impl Pooled {
    /// `isvc` on its pool: its model, copies (`minReplicas`), the file size where the executor
    /// sees the file, and the footprint last recorded (or measured by the caller).
    pub fn of(isvc: &InferenceService, file_bytes: Option<u64>, measured: Option<u64>) -> Pooled {
        Pooled {
            service: isvc.metadata.name.clone().unwrap_or_default(),
            model: isvc.model_name(),
            file_bytes,
            copies: isvc.spec.predictor.replicas().max(1),
            measured,
        }
    }
}

/// What the pool's executor does and writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolDecision {
    pub placement: Placement,
    /// Copies to register, (server, model), in order.
    pub register: Vec<(String, String)>,
    /// Copies to unregister, (server, model).
    pub unregister: Vec<(String, String)>,
    pub status: ServerPoolStatus,
}

/// Servers to start and (ids) to stop so that `want` servers run: the ones not ready go first.
pub fn scale(want: u32, servers: &[ReplicaView]) -> (u32, Vec<String>) {
    let mut live: Vec<&ReplicaView> = servers.iter().filter(|s| !s.terminating).collect();
    let have = live.len() as u32;
    if have <= want {
        return (want - have, Vec::new());
    }
    live.sort_by_key(|s| (s.ready(), std::cmp::Reverse(s.id.clone())));
    let stop = live
        .iter()
        .take((have - want) as usize)
        .map(|s| s.id.clone())
        .collect();
    (0, stop)
}

/// The pool's estimate, fitted to its measured models.
fn seen(servers: &[PoolServer], pooled: &[Pooled]) -> Estimate {
    let points: Vec<(u64, u64)> = pooled
        .iter()
        .filter_map(|p| Some((p.file_bytes?, measured(servers, p)?)))
        .collect();
    Estimate::fit(&points)
}

/// A model's footprint as any server measured it (the largest), else as last recorded.
fn measured(servers: &[PoolServer], pooled: &Pooled) -> Option<u64> {
    servers
        .iter()
        .filter_map(|s| s.models.get(&pooled.model)?.measured)
        .max()
        .or(pooled.measured)
}

/// `model`'s footprint as the pool's recorded status last had it: what an executor puts in
/// [`Pooled::measured`], so that a measurement outlives the copy that made it.
pub fn last_recorded(status: Option<&ServerPoolStatus>, model: &str) -> Option<u64> {
    status?
        .models
        .iter()
        .find(|m| m.model == model)?
        .measured_bytes
}

/// The footprint the planner would use for `pooled` before it is measured.
fn estimate(pooled: &Pooled, fit: Estimate) -> u64 {
    match pooled.file_bytes {
        Some(bytes) => fit.of(bytes),
        None => UNKNOWN_SIZE,
    }
}

/// The pool's decision.
pub fn decide(spec: &ServerPoolSpec, servers: &[PoolServer], pooled: &[Pooled]) -> PoolDecision {
    let overcommit = spec.overcommit_percent();
    let ready: Vec<&PoolServer> = servers.iter().filter(|s| s.ready).collect();
    let planned: Vec<Server> = ready
        .iter()
        .map(|s| Server {
            id: s.id.clone(),
            capacity: placement::capacity(s.budget, overcommit),
        })
        .collect();
    let fit = seen(servers, pooled);
    let largest_budget = ready.iter().map(|s| s.budget).max();
    let models: Vec<Model> = pooled
        .iter()
        .map(|p| Model {
            id: p.model.clone(),
            // A model of unknown size (its file is not where the executor can see it) is not
            // refused for a guess: it is placed as at most a server's budget until measured.
            bytes: measured(servers, p).unwrap_or_else(|| match p.file_bytes {
                Some(_) => estimate(p, fit),
                None => UNKNOWN_SIZE.min(largest_budget.unwrap_or(UNKNOWN_SIZE)),
            }),
            copies: p.copies.max(1),
            busy: true,
        })
        .collect();
    // A registered model is a copy on that server (its LRU loads it on demand).
    let mut current = Current::new();
    for server in &ready {
        for (model, state) in &server.models {
            if state.failed.is_none() {
                current
                    .entry(model.clone())
                    .or_default()
                    .insert(server.id.clone(), true);
            }
        }
    }
    // A model larger than a server's budget can never be resident, whatever the overcommit
    // lets be registered: it is refused with the numbers, not placed.
    let (models, too_large): (Vec<Model>, Vec<Model>) = models
        .into_iter()
        .partition(|m| largest_budget.is_none_or(|b| m.bytes <= b));
    let mut placement = placement::plan(&planned, &models, &current);
    // While servers are still starting, what does not fit yet waits for them.
    let want = spec.replicas();
    if (ready.len() as u32) < want {
        for reason in placement.unplaced.values_mut() {
            if !matches!(reason, placement::Unplaced::TooLarge { .. }) {
                *reason = placement::Unplaced::ServersStarting {
                    ready: ready.len() as u32,
                    want,
                };
            }
        }
    }
    for model in too_large {
        placement.unplaced.insert(
            model.id,
            placement::Unplaced::TooLarge {
                bytes: model.bytes,
                largest: largest_budget.unwrap_or(0),
            },
        );
    }

    let mut register = Vec::new();
    for (model, on) in &placement.servers {
        for server in on {
            if !current.get(model).is_some_and(|c| c.contains_key(server)) {
                register.push((server.clone(), model.clone()));
            }
        }
    }
    let wanted = |model: &str, server: &str| {
        placement
            .servers
            .get(model)
            .is_some_and(|on| on.iter().any(|s| s == server))
            || placement.draining.get(model).map(String::as_str) == Some(server)
    };
    let mut unregister = Vec::new();
    for server in &ready {
        for (model, state) in &server.models {
            // A refused registration goes too, so that it can be tried again elsewhere.
            if state.failed.is_some() || !wanted(model, &server.id) {
                unregister.push((server.id.clone(), model.clone()));
            }
        }
    }

    let status = pool_status(servers, pooled, &placement, fit);
    PoolDecision {
        placement,
        register,
        unregister,
        status,
    }
}

fn pool_status(
    servers: &[PoolServer],
    pooled: &[Pooled],
    placement: &Placement,
    fit: Estimate,
) -> ServerPoolStatus {
    let server_status: Vec<PoolServerStatus> = servers
        .iter()
        .map(|s| PoolServerStatus {
            name: s.id.clone(),
            ready: s.ready,
            registered_models: s.models.values().filter(|m| m.failed.is_none()).count() as u32,
            resident_models: s.models.values().filter(|m| m.resident).count() as u32,
            memory_used_bytes: s.used,
            memory_budget_bytes: s.budget,
            evictions: s.evictions,
            restarts: s.restarts,
        })
        .collect();
    let models = pooled
        .iter()
        .map(|p| PooledModelStatus {
            service: p.service.clone(),
            model: p.model.clone(),
            servers: placement.servers.get(&p.model).cloned().unwrap_or_default(),
            predicted_bytes: Some(estimate(p, fit)),
            measured_bytes: measured(servers, p),
            reason: placement
                .unplaced
                .get(&p.model)
                .map(ToString::to_string)
                .unwrap_or_default(),
            condition: placement
                .unplaced
                .get(&p.model)
                .and_then(|why| {
                    condition_of(why, placement.servers.get(&p.model).map_or(0, Vec::len))
                })
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
        })
        .collect();
    let ready: Vec<&PoolServerStatus> = server_status.iter().filter(|s| s.ready).collect();
    ServerPoolStatus {
        observed_generation: None,
        ready_servers: ready.len() as u32,
        registered_models: placement.servers.len() as u32,
        resident_models: ready.iter().map(|s| s.resident_models).sum(),
        memory_used_bytes: ready.iter().map(|s| s.memory_used_bytes).sum(),
        memory_budget_bytes: ready.iter().map(|s| s.memory_budget_bytes).sum(),
        evictions: server_status.iter().map(|s| s.evictions).sum(),
        servers: server_status,
        models,
        conditions: Vec::new(),
    }
}

impl PoolDecision {
    /// The status to record for `pool`: the decision's, at the pool's generation, with the
    /// `Ready` condition of its `servers` (those not being stopped).
    pub fn status_for(
        &self,
        pool: &ferry_api::ServerPool,
        servers: &[ReplicaView],
        now: &str,
    ) -> ServerPoolStatus {
        let mut status = self.status.clone();
        status.observed_generation = pool.metadata.generation;
        status.conditions = vec![ready_condition(
            pool.spec.replicas(),
            servers,
            pool.status.as_ref(),
            now,
        )];
        status
    }
}

/// The copies of `model` as replica views of revision `revision`, one per server it is placed
/// on: ready where the server is ready and holds the registration. The route table and the
/// status take them as they take a service's own replicas.
pub fn copies(
    model: &str,
    revision: &str,
    placement: &Placement,
    servers: &[PoolServer],
) -> Vec<ReplicaView> {
    let on = placement.servers.get(model).into_iter().flatten();
    let draining = placement.draining.get(model).into_iter();
    on.chain(draining)
        .filter_map(|id| servers.iter().find(|s| &s.id == id))
        .map(|s| {
            let registered = s.models.get(model).is_some_and(|m| m.failed.is_none());
            copy_view(&s.id, revision, s.ready && registered)
        })
        .collect()
}

/// A copy on server `id` as a replica of `revision`: ready, or starting.
fn copy_view(id: &str, revision: &str, ready: bool) -> ReplicaView {
    ReplicaView {
        id: id.to_string(),
        revision: revision.to_string(),
        health: if ready {
            ReplicaHealth::Ready
        } else {
            ReplicaHealth::Starting { for_seconds: 0 }
        },
        terminating: false,
    }
}

/// Why a pooled service has no copy, when it has none: its pool is missing, or the planner's
/// reason. `None` while it is placed.
pub fn not_placed(
    pool_exists: bool,
    pool: &str,
    model: &str,
    placement: Option<&Placement>,
) -> Option<ConditionState> {
    if !pool_exists {
        return Some(ConditionState::new(
            false,
            Reason::PoolNotFound,
            format!("ServerPool {pool} not found in the namespace"),
        ));
    }
    let placement = placement?;
    let reason = placement.unplaced.get(model)?;
    let placed = placement.servers.get(model).map_or(0, Vec::len);
    let why = condition_of(reason, placed)?;
    Some(ConditionState::new(
        false,
        why,
        format!("{model} on pool {pool}: {reason}"),
    ))
}

/// The reason a pooled service with `placed` copies is not Ready for, when it is not.
fn condition_of(why: &placement::Unplaced, placed: usize) -> Option<Reason> {
    match why {
        placement::Unplaced::TooLarge { .. } => Some(Reason::ModelTooLarge),
        placement::Unplaced::NoServers | placement::Unplaced::ServersStarting { .. } => {
            Some(Reason::PoolServersStarting)
        }
        _ if placed == 0 => Some(Reason::NotPlaced),
        _ => None,
    }
}

/// The status of a pooled service: its revision's copies as its replicas, Ready while one copy
/// is ready, the planner's reason when it is not placed.
pub fn service_status(
    isvc: &InferenceService,
    revision: &str,
    copies: &[ReplicaView],
    problem: Option<ConditionState>,
    previous: Option<&InferenceServiceStatus>,
    url: String,
    now: &str,
) -> InferenceServiceStatus {
    let target = crate::rollout::Target::with_replicas(
        revision,
        &isvc.spec,
        isvc.spec.predictor.replicas().max(1),
    );
    let ready = copies.iter().any(ReplicaView::ready);
    let traffic: BTreeMap<String, u32> = if ready {
        [(revision.to_string(), 100)].into()
    } else {
        BTreeMap::new()
    };
    let order = [revision.to_string()];
    let inputs = crate::status::StatusInputs {
        generation: isvc.metadata.generation.unwrap_or(0),
        target: &target,
        replicas: copies,
        traffic_percent: &traffic,
        startup_timeout_seconds: u64::from(isvc.spec.predictor.startup_timeout_seconds()),
        url,
        revision_order: &order,
        creation_failure: None,
        ingress: None,
        autoscaler: None,
        runtime_problem: None,
        rollout: None,
        wakes_on_request: false,
    };
    let mut status = crate::status::derive(&inputs, previous, now);
    if let Some(problem) = problem {
        for condition in status.conditions.iter_mut() {
            let is_latest = condition.type_ == crate::status::LATEST_REVISION_READY;
            if is_latest || (condition.type_ == crate::status::READY && !ready) {
                if condition.status != "False" || condition.reason != problem.reason.as_str() {
                    condition.last_transition_time = Some(now.to_string());
                }
                condition.status = "False".into();
                condition.reason = problem.reason.as_str().into();
                condition.message = problem.message.clone();
            }
        }
    }
    status
}

#[cfg(test)]
mod tests;
