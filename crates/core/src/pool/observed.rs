//! A pool as its executors see it, the same in both modes: a server from what it answers
//! ([`PoolServer::observed`]: its repository index and residency), and a pooled service from
//! its pool's recorded status ([`recorded_copies`], [`recorded_problem`]) where the service's
//! reconcile and the router read it (the operator) rather than share the pool pass's memory
//! (local mode).

use std::collections::BTreeMap;

use ferry_api::repository::{RepositoryEntry, Residency};
use ferry_api::{Condition, ServerPool, ServerPoolStatus};

use super::{PoolDecision, PoolServer, ServerModel};
use crate::reason::{ConditionState, Reason};
use crate::{ReplicaHealth, ReplicaView};

/// A server's models from its repository index: registered copies (on demand), resident ones,
/// measurements, refusals. A model it serves of its own (not on demand) is no pool's copy.
pub fn server_models(entries: &[RepositoryEntry]) -> BTreeMap<String, ServerModel> {
    entries
        .iter()
        .filter_map(|entry| {
            let failed = entry.state == "UNAVAILABLE";
            if !entry.on_demand && !failed {
                return None;
            }
            let reason = if entry.reason.is_empty() {
                "failed".to_string()
            } else {
                entry.reason.clone()
            };
            Some((
                entry.name.clone(),
                ServerModel {
                    resident: entry.state == "READY",
                    measured: entry.memory_bytes,
                    failed: failed.then_some(reason),
                },
            ))
        })
        .collect()
}

impl PoolServer {
    /// A ready server as it answered: `budget` is the pool's, unless the server reports one
    /// of its own.
    pub fn observed(
        id: &str,
        budget: u64,
        entries: &[RepositoryEntry],
        residency: &Residency,
    ) -> PoolServer {
        PoolServer {
            id: id.to_string(),
            ready: true,
            restarts: 0,
            // 0 says "no budget": the pool's figure stands.
            budget: if residency.budget_bytes > 0 {
                residency.budget_bytes
            } else {
                budget
            },
            used: residency.used_bytes,
            evictions: residency.evictions,
            models: server_models(entries),
        }
    }
}

impl PoolDecision {
    /// A registration the executor could not carry out: the copy is not on `server`, in the
    /// placement nor in the status (the next pass places it again).
    pub fn registration_failed(&mut self, server: &str, model: &str) {
        if let Some(on) = self.placement.servers.get_mut(model) {
            on.retain(|s| s != server);
        }
        for entry in self.status.models.iter_mut().filter(|m| m.model == model) {
            entry.servers.retain(|s| s != server);
        }
    }
}

/// The copies of `model` as the pool's recorded status places them, as replica views of
/// `revision`: ready where the status has the server ready.
pub fn recorded_copies(status: &ServerPoolStatus, model: &str, revision: &str) -> Vec<ReplicaView> {
    let Some(entry) = status.models.iter().find(|m| m.model == model) else {
        return Vec::new();
    };
    entry
        .servers
        .iter()
        .map(|id| {
            let ready = status.servers.iter().any(|s| &s.name == id && s.ready);
            super::copy_view(id, revision, ready)
        })
        .collect()
}

/// The servers the pool's recorded status places `model` on.
pub fn recorded_servers<'a>(status: &'a ServerPoolStatus, model: &str) -> &'a [String] {
    status
        .models
        .iter()
        .find(|m| m.model == model)
        .map_or(&[], |m| m.servers.as_slice())
}

/// The servers the pool's recorded status places `model` on that are still the processes it
/// observed: `restarts` says how often each has restarted now (`None`: gone). A server that
/// restarted since came back empty, and takes the model's requests again once the pool has
/// registered its copy and recorded so.
pub fn routable_servers<'a>(
    status: &'a ServerPoolStatus,
    model: &str,
    restarts: impl Fn(&str) -> Option<u32>,
) -> Vec<&'a String> {
    recorded_servers(status, model)
        .iter()
        .filter(|id| {
            let recorded = status.servers.iter().find(|s| &s.name == *id);
            recorded.is_some_and(|s| restarts(id) == Some(s.restarts))
        })
        .collect()
}

/// Why a pooled service has no copy, from its pool (`None`: not found) as recorded: the
/// condition the pool's decision gave it. `None` while it is placed.
pub fn recorded_problem(
    pool: Option<&ServerPool>,
    name: &str,
    model: &str,
) -> Option<ConditionState> {
    let Some(pool) = pool else {
        return super::not_placed(false, name, model, None);
    };
    let entry = pool
        .status
        .as_ref()
        .and_then(|s| s.models.iter().find(|m| m.model == model));
    let Some(entry) = entry else {
        return Some(ConditionState::new(
            false,
            Reason::PoolServersStarting,
            format!("{model} on pool {name}: not yet placed by the pool"),
        ));
    };
    let reason = Reason::parse(&entry.condition)?;
    Some(ConditionState::new(
        false,
        reason,
        format!("{model} on pool {name}: {}", entry.reason),
    ))
}

/// A pool's `Ready` condition from its servers (`want` of them asked for): True once that
/// many are ready; else why not, the scheduler's words first (a pool asking for more GPUs, or
/// GPU slices, than any node has stays Pending: `Unschedulable`, and the resource named), then
/// a server that cannot run, then "starting". The transition time is kept while the
/// condition's status and reason stay.
pub fn ready_condition(
    want: u32,
    servers: &[ReplicaView],
    previous: Option<&ServerPoolStatus>,
    now: &str,
) -> Condition {
    let live: Vec<&ReplicaView> = servers.iter().filter(|s| !s.terminating).collect();
    let ready = live.iter().filter(|s| s.ready()).count() as u32;
    let problem = live.iter().find_map(|s| match &s.health {
        ReplicaHealth::Unschedulable { message } => Some((
            Reason::Unschedulable,
            format!("server {} cannot be scheduled: {message}", s.id),
        )),
        ReplicaHealth::CrashLoop {
            restarts,
            last_exit,
        } => Some((
            Reason::CrashLoopBackOff,
            format!("server {} restarted {restarts} times: {last_exit}", s.id),
        )),
        ReplicaHealth::ContainerFailed { reason, message } => {
            Some((*reason, format!("server {}: {message}", s.id)))
        }
        _ => None,
    });
    let (ok, reason, message) = if ready >= want {
        (
            true,
            Reason::ServersReady,
            format!("{ready} of {want} servers ready"),
        )
    } else if let Some((reason, message)) = problem {
        (
            false,
            reason,
            format!("{ready} of {want} servers ready; {message}"),
        )
    } else {
        (
            false,
            Reason::PoolServersStarting,
            format!("{ready} of {want} servers ready"),
        )
    };
    let status = if ok { "True" } else { "False" };
    let kept = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == status && c.reason == reason.as_str())
        .and_then(|c| c.last_transition_time.clone());
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message,
        last_transition_time: Some(kept.unwrap_or_else(|| now.to_string())),
    }
}
