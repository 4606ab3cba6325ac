//! Where a server pool's models go: copies of models assigned to pool servers by footprint
//! (a ServerPool's planner, the same for local mode and the operator).
//!
//! Packs instead of spreading: best fit, largest models first, so whole servers stay free for
//! large models. A model's copies land on different servers. What is placed and still fits
//! stays where it is (a change moves only what it must), and the last ready copy of a model
//! with traffic is kept (`draining`) until another copy of it is ready. Same input, same plan.
//!
//! A server's capacity is what may be *placed* on it: its memory budget raised by the pool's
//! overcommit; which placed models are resident at a moment is the server's LRU's business.

use std::collections::{BTreeMap, BTreeSet};

/// A pool server as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub id: String,
    /// Bytes of models that may be placed on it ([`capacity`]).
    pub capacity: u64,
}

/// A model to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub id: String,
    /// Its footprint: measured once loaded, estimated until then.
    pub bytes: u64,
    /// Copies wanted, each on a different server.
    pub copies: u32,
    /// Whether it has traffic: its last ready copy is never dropped before another is ready.
    pub busy: bool,
}

/// Where copies are now: model → server → ready (loaded and answering).
pub type Current = BTreeMap<String, BTreeMap<String, bool>>;

/// Why a model has fewer copies than it asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unplaced {
    /// Larger than any server's capacity: it can never be placed (refused at apply).
    #[error("needs {bytes} bytes, more than any server of the pool may hold ({largest} bytes)")]
    TooLarge { bytes: u64, largest: u64 },
    /// No server of the pool is ready yet (or any more): nothing can be placed for now.
    #[error("no server of the pool is ready")]
    NoServers,
    /// Not placed while the pool still starts servers (`ready` of `want`): placed once they
    /// are ready, or then named for what it lacks.
    #[error("waiting for the pool's servers: {ready} of {want} ready")]
    ServersStarting { ready: u32, want: u32 },
    /// More copies than the pool has servers.
    #[error("asks for {copies} copies on {servers} servers")]
    FewerServers { copies: u32, servers: u32 },
    /// The servers that could take another copy are full.
    #[error("{placed} of {copies} copies placed: no server has {bytes} bytes left")]
    NoRoom {
        bytes: u64,
        copies: u32,
        placed: u32,
    },
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Model → the servers its copies are placed on (sorted).
    pub servers: BTreeMap<String, Vec<String>>,
    /// Copies that are no longer placed but stay until another copy of their model is ready
    /// (the model has traffic and no other ready copy): model → server.
    pub draining: BTreeMap<String, String>,
    /// Models with fewer copies than they ask for, and why.
    pub unplaced: BTreeMap<String, Unplaced>,
    /// Bytes placed on each server (draining copies included).
    pub used: BTreeMap<String, u64>,
}

impl Placement {
    /// This placement as a [`Current`] with every copy ready: a pool settled on it.
    pub fn settled(&self) -> Current {
        self.servers
            .iter()
            .map(|(m, on)| (m.clone(), on.iter().map(|s| (s.clone(), true)).collect()))
            .collect()
    }

    /// Copies placed now that `current` does not have (loads to do).
    pub fn added(&self, current: &Current) -> usize {
        self.servers
            .iter()
            .flat_map(|(model, servers)| servers.iter().map(move |s| (model, s)))
            .filter(|(model, server)| !current.get(*model).is_some_and(|c| c.contains_key(*server)))
            .count()
    }

    /// Copies of `current` that are neither placed nor draining (unloads to do).
    pub fn removed(&self, current: &Current) -> usize {
        current
            .iter()
            .flat_map(|(model, servers)| servers.keys().map(move |s| (model, s)))
            .filter(|(model, server)| {
                !self.servers.get(*model).is_some_and(|s| s.contains(server))
                    && self.draining.get(*model) != Some(server)
            })
            .count()
    }
}

/// What may be placed on a server with `budget` bytes when the pool overcommits by
/// `overcommit_percent` (100: registered models may take twice the budget).
pub fn capacity(budget: u64, overcommit_percent: u32) -> u64 {
    let raised = u128::from(budget) * (100 + u128::from(overcommit_percent)) / 100;
    u64::try_from(raised).unwrap_or(u64::MAX)
}

/// Place `models` on `servers`, starting from `current`.
pub fn plan(servers: &[Server], models: &[Model], current: &Current) -> Placement {
    let index: BTreeMap<&str, usize> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut free: Vec<u64> = servers.iter().map(|s| s.capacity).collect();
    let mut used: Vec<u64> = vec![0; servers.len()];
    let mut placed: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    let mut dropped: Vec<(&Model, usize)> = Vec::new();
    let mut models: Vec<&Model> = models.iter().collect();
    models.sort_by(|a, b| a.id.cmp(&b.id));

    // Keep what is placed and still fits: ready copies first, then by server.
    for model in &models {
        let wanted = model.copies.min(servers.len() as u32) as usize;
        let mut copies: Vec<(bool, usize)> = current
            .get(&model.id)
            .into_iter()
            .flatten()
            .filter_map(|(server, ready)| Some((*ready, *index.get(server.as_str())?)))
            .collect();
        copies.sort_by_key(|(ready, i)| (!ready, servers[*i].id.as_str()));
        let kept = placed.entry(model.id.as_str()).or_default();
        for (ready, i) in copies {
            if kept.len() < wanted && free[i] >= model.bytes {
                free[i] -= model.bytes;
                used[i] += model.bytes;
                kept.insert(i);
            } else if ready {
                dropped.push((model, i));
            }
        }
    }

    // Place the missing copies, largest models first, each on the fullest server it fits on.
    let mut by_free: BTreeSet<(u64, usize)> =
        free.iter().enumerate().map(|(i, f)| (*f, i)).collect();
    let mut unplaced = BTreeMap::new();
    let largest = servers.iter().map(|s| s.capacity).max().unwrap_or(0);
    let mut order = models.clone();
    order.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.id.cmp(&b.id)));
    for model in order {
        let kept = placed
            .get_mut(model.id.as_str())
            .expect("every model has an entry");
        if servers.is_empty() {
            unplaced.insert(model.id.clone(), Unplaced::NoServers);
            continue;
        }
        if model.bytes > largest {
            unplaced.insert(
                model.id.clone(),
                Unplaced::TooLarge {
                    bytes: model.bytes,
                    largest,
                },
            );
            continue;
        }
        let wanted = model.copies.min(servers.len() as u32) as usize;
        while kept.len() < wanted {
            let fit = by_free
                .range((model.bytes, 0)..)
                .find(|(_, i)| !kept.contains(i))
                .copied();
            let Some((left, i)) = fit else { break };
            by_free.remove(&(left, i));
            by_free.insert((left - model.bytes, i));
            free[i] = left - model.bytes;
            used[i] += model.bytes;
            kept.insert(i);
        }
        if kept.len() < wanted {
            unplaced.insert(
                model.id.clone(),
                Unplaced::NoRoom {
                    bytes: model.bytes,
                    copies: model.copies,
                    placed: kept.len() as u32,
                },
            );
        } else if (model.copies as usize) > wanted {
            unplaced.insert(
                model.id.clone(),
                Unplaced::FewerServers {
                    copies: model.copies,
                    servers: servers.len() as u32,
                },
            );
        }
    }

    // A busy model's last ready copy stays until a placed copy of it is ready.
    let mut draining = BTreeMap::new();
    for (model, i) in dropped {
        let ready_elsewhere = placed[model.id.as_str()].iter().any(|kept| {
            current
                .get(&model.id)
                .and_then(|c| c.get(&servers[*kept].id))
                .copied()
                .unwrap_or(false)
        });
        if model.busy && !ready_elsewhere && !draining.contains_key(&model.id) {
            draining.insert(model.id.clone(), servers[i].id.clone());
            used[i] += model.bytes;
        }
    }

    let servers_of = placed
        .into_iter()
        .filter(|(_, on)| !on.is_empty())
        .map(|(model, on)| {
            let mut ids: Vec<String> = on.iter().map(|i| servers[*i].id.clone()).collect();
            ids.sort();
            (model.to_string(), ids)
        })
        .collect();
    let used = servers
        .iter()
        .zip(used)
        .map(|(s, u)| (s.id.clone(), u))
        .collect();
    Placement {
        servers: servers_of,
        draining,
        unplaced,
        used,
    }
}

/// The fewest servers of `capacity` bytes each that hold every copy of `models`, packed as
/// [`plan`] packs them (`None` when a model is larger than a server may hold): what `ferry plan`
/// sets against one server per copy.
pub fn servers_needed(capacity: u64, models: &[Model]) -> Option<u32> {
    if models.iter().any(|m| m.bytes > capacity) {
        return None;
    }
    let most = models.iter().map(|m| m.copies.max(1)).sum::<u32>() as usize;
    let servers: Vec<Server> = (0..most)
        .map(|i| Server {
            id: format!("{i:06}"),
            capacity,
        })
        .collect();
    let placement = plan(&servers, models, &Current::new());
    let used: BTreeSet<&String> = placement.servers.values().flatten().collect();
    let copies_wanted = models
        .iter()
        .map(|m| m.copies.max(1) as usize)
        .sum::<usize>();
    let copies_placed = placement.servers.values().map(Vec::len).sum::<usize>();
    (copies_placed == copies_wanted).then_some(used.len() as u32)
}

#[cfg(test)]
mod tests;
