//! A pool server's models: registered to load on demand, kept resident within a memory budget
//! by evicting the least recently used ([`super::lru`]), one load at a time on the load path.
//!
//! A request for a model that is not resident waits on the model's gate; the first waiter loads
//! it, the others find it READY when the gate opens (one load for any number of concurrent
//! requests). Room is made before the load, by the model's last measured footprint or, never
//! measured, an estimate from its file size; a model that came out larger than estimated evicts
//! more after the load, and one larger than the whole budget is refused with the numbers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::info;

use super::lru::{self, Resident};
use super::{Entry, LoadedModel, ModelState, Repository};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::footprint::Footprint;

/// What a build hands to [`Repository::admit`]: the backend, its warm-up time, the measured
/// footprint and the bytes room was made for.
pub(super) type Built = (Arc<dyn Backend>, Duration, Option<Footprint>, u64);

/// A model's estimated footprint before it was ever measured: its files once more than their
/// size (a graph's optimized plan and buffers), plus a fixed part for the session.
fn estimate(file_bytes: u64) -> u64 {
    file_bytes + file_bytes / 2 + (256 << 10)
}

/// The least a model is accounted for, however small its measurement (noise can read 0).
const FLOOR_BYTES: u64 = 16 << 10;

/// Bytes of a model's files: a file, or a directory model's files.
fn file_bytes(path: &std::path::Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return Some(meta.len());
    }
    let total = std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    Some(total)
}

/// The memory a pool server holds and may hold, for its index and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Residency {
    pub budget: Option<u64>,
    /// Accounted bytes of the resident models.
    pub used: u64,
    pub resident: usize,
    pub registered: usize,
    /// Models evicted to make room, since the server started.
    pub evictions: u64,
}

impl Repository {
    pub(super) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Registers a model to load on its first request (a pool's placement), replacing what
    /// was registered under the name unless it is the same model, which stays as it is.
    /// Refused when its files alone exceed the memory budget, or its measured footprint does.
    pub fn register_on_demand(&self, config: ModelConfig) -> Result<()> {
        let mut entries = self.entries.write().expect("repository lock");
        let same = entries
            .get(&config.name)
            .filter(|e| e.config == config)
            .map(|e| e.measured);
        if let Some(budget) = self.budget {
            let need = same
                .flatten()
                .or_else(|| file_bytes(&config.path))
                .unwrap_or(0);
            if need > budget {
                return Err(Error::TooLarge {
                    model: config.name.clone(),
                    need,
                    budget,
                });
            }
        }
        match entries.get_mut(&config.name) {
            Some(entry) if same.is_some() => {
                entry.on_demand = true;
                if matches!(entry.state, ModelState::Unloaded) {
                    entry.generation += 1;
                    entry.state = standby("registered: loads on the first request");
                }
            }
            _ => {
                let mut entry = Entry::new(
                    config.clone(),
                    standby("registered: loads on the first request"),
                );
                entry.on_demand = true;
                if let Some(old) = entries.insert(config.name.clone(), entry) {
                    entries.get_mut(&config.name).expect("inserted").generation =
                        old.generation + 1;
                }
            }
        }
        info!(model = %config.name, "model registered to load on demand");
        Ok(())
    }

    /// The model a request runs on: resident, or loaded now when it loads on demand.
    pub async fn serving(&self, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>> {
        let model = match self.ready_model(name, version) {
            Ok(model) => model,
            Err(Error::NotReady { .. }) if self.standing_by(name) => {
                let gate = self.gate(name);
                let _one_load = gate.lock().await;
                match self.ready_model(name, version) {
                    Ok(model) => model,
                    Err(Error::NotReady { .. }) if self.standing_by(name) => {
                        self.load(name, None).await?;
                        self.ready_model(name, version)?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        model.last_used.store(self.now(), Ordering::Relaxed);
        Ok(model)
    }

    /// A model's view for metadata: a model standing by is loaded first, so that the answer
    /// has its tensors (clients read metadata before they infer).
    pub async fn resident_view(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<super::ModelView> {
        self.known(name, version)?;
        if self.standing_by(name) {
            self.serving(name, version).await?;
        }
        self.known(name, version)
    }

    /// Loads on demand and is not resident: standing by, or being loaded by another request
    /// (whose load the caller waits for on the gate).
    fn standing_by(&self, name: &str) -> bool {
        let entries = self.entries.read().expect("repository lock");
        entries.get(name).is_some_and(|e| {
            e.on_demand && matches!(e.state, ModelState::Standby(_) | ModelState::Loading)
        })
    }

    fn gate(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let entries = self.entries.read().expect("repository lock");
        entries
            .get(name)
            .map(|e| e.gate.clone())
            .unwrap_or_default()
    }

    /// Before loading `name` (on the load path): evicts what must go for it to fit, and
    /// returns the bytes it is expected to take.
    pub(super) fn make_room(&self, name: &str, local: &ModelConfig) -> Result<u64, String> {
        let measured = {
            let entries = self.entries.read().expect("repository lock");
            entries.get(name).and_then(|e| e.measured)
        };
        let need = measured
            .unwrap_or_else(|| estimate(file_bytes(&local.path).unwrap_or(0)))
            .max(FLOOR_BYTES);
        if let Some(budget) = self.budget {
            // An estimate above the budget is not a refusal: the measurement decides.
            self.evict_for(name, budget, need.min(budget));
        }
        Ok(need)
    }

    /// After the build: the bytes the model is accounted for, more evictions where it came
    /// out larger than room was made for, or the refusal of a model larger than the budget.
    pub(super) fn admit(&self, name: &str, built: Built) -> Result<Built, String> {
        let (backend, warm_up, footprint, need) = built;
        let accounted = footprint.map_or(need, |f| f.resident_bytes.max(FLOOR_BYTES));
        if let Some(budget) = self.budget {
            if accounted > budget {
                let mut entries = self.entries.write().expect("repository lock");
                if let Some(entry) = entries.get_mut(name) {
                    entry.measured = Some(accounted);
                }
                return Err(format!(
                    "needs {accounted} bytes of memory (measured), more than this server's memory budget of {budget} bytes"
                ));
            }
            if accounted > need {
                self.evict_for(name, budget, accounted);
            }
        }
        Ok((backend, warm_up, footprint, accounted))
    }

    /// Evicts the least recently used models other than `name` until `need` more bytes fit.
    fn evict_for(&self, name: &str, budget: u64, need: u64) {
        let mut entries = self.entries.write().expect("repository lock");
        let resident: Vec<Resident> = entries
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .filter_map(|(n, e)| match &e.state {
                ModelState::Ready(model) => Some(Resident {
                    name: n.clone(),
                    bytes: model.accounted,
                    last_used: model.last_used.load(Ordering::Relaxed),
                    busy: model.in_flight() > 0,
                }),
                _ => None,
            })
            .collect();
        let Ok(evict) = lru::to_evict(&resident, budget, need) else {
            return;
        };
        for victim in evict {
            let Some(entry) = entries.get_mut(&victim) else {
                continue;
            };
            entry.generation += 1;
            entry.on_demand = true;
            entry.state = standby("evicted (least recently used): loads on the next request");
            self.metrics.model_evicted(&victim, &entry.config.version);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            info!(model = %victim, for_model = %name, "model evicted to make room");
        }
        drop(entries);
        self.metrics.residency(self.residency());
    }

    /// What this server holds against its budget.
    pub fn residency(&self) -> Residency {
        let entries = self.entries.read().expect("repository lock");
        let mut residency = Residency {
            budget: self.budget,
            evictions: self.evictions.load(Ordering::Relaxed),
            ..Residency::default()
        };
        for entry in entries.values() {
            if let ModelState::Ready(model) = &entry.state {
                residency.used += model.accounted;
                residency.resident += 1;
            }
            if entry.state.servable() {
                residency.registered += 1;
            }
        }
        residency
    }
}

fn standby(reason: &str) -> ModelState {
    ModelState::Standby(reason.into())
}
