//! The model repository: which models exist, their state, how they load; the inference path
//! the REST and gRPC front ends share is `infer.rs`.
//!
//! A model is READY only after it loaded AND a warm-up inference on a synthetic input succeeded.
//! A model that fails either is kept as UNAVAILABLE with the reason; the others keep serving.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{info, warn};

mod build;
mod infer;
mod lru;
mod on_demand;
pub use on_demand::Residency;

pub use crate::backend::BackendFailure;
use crate::backend::{Backend, Signature};
use crate::batcher::{self, BatchJob};
use crate::config::{BackendKind, BatchWindow, ModelConfig};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, ModelMetrics};
use crate::protocol::{InferRequest, InferResponse, Protocol};
use crate::signature::select_outputs;
pub use crate::signature::{order_inputs, synthetic_inputs};
use crate::tensor::Tensor;

/// Models cheaper than this per warm-up call run on the async worker itself: a hop to the
/// blocking pool would cost more than the inference.
const INLINE_BUDGET: Duration = Duration::from_micros(150);
/// ...and only for requests of a few rows: a large batch still goes to the bounded pool.
const INLINE_MAX_ROWS: usize = 16;

/// Runs the backend, turning a panic into a failure: no input may take the server down.
pub fn call_backend(
    backend: &dyn Backend,
    inputs: Vec<Tensor>,
) -> std::result::Result<Vec<Tensor>, BackendFailure> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| backend.infer(inputs))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "backend panicked".into());
            Err(BackendFailure::Failed(format!(
                "backend panicked: {message}"
            )))
        }
    }
}

/// The lifecycle state of a model, as the repository index reports it.
#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<LoadedModel>),
    Unavailable(String),
    Unloaded,
    /// Registered to load on demand (a pool server's model) and not resident now: the next
    /// request loads it (the reason says whether it was evicted).
    Standby(String),
}

impl ModelState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Loading => "LOADING",
            Self::Ready(_) => "READY",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Unloaded | Self::Standby(_) => "UNLOADED",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Loading => Some("loading"),
            Self::Unavailable(reason) => Some(reason),
            Self::Unloaded => Some("unloaded"),
            Self::Standby(reason) => Some(reason),
            Self::Ready(_) => None,
        }
    }

    /// A request would be answered: the model is resident, or loads on demand.
    pub fn servable(&self) -> bool {
        matches!(self, Self::Ready(_) | Self::Standby(_))
    }
}

/// A model that passed load and warm-up.
pub struct LoadedModel {
    pub config: ModelConfig,
    backend: Arc<dyn Backend>,
    admission: Arc<Semaphore>,
    batcher: Option<mpsc::Sender<BatchJob>>,
    inline: bool,
    metrics: ModelMetrics,
    /// Host memory it took, measured while it loaded (`None` where it cannot be measured).
    pub footprint: Option<crate::footprint::Footprint>,
    /// The bytes a memory budget counts for it: the measured footprint, else the estimate.
    accounted: u64,
    /// When a request last used it (nanoseconds since the repository began): LRU order.
    last_used: AtomicU64,
}

impl LoadedModel {
    pub fn signature(&self) -> &Signature {
        self.backend.signature()
    }

    pub fn platform(&self) -> &'static str {
        self.backend.platform()
    }

    /// Requests in flight or queued on it.
    fn in_flight(&self) -> usize {
        self.config
            .max_queue
            .saturating_sub(self.admission.available_permits())
    }
}

struct Entry {
    config: ModelConfig,
    state: ModelState,
    /// Bumped by every load/unload so a slow load cannot overwrite a newer decision.
    generation: u64,
    /// Loaded by the first request when not resident (registered, or evicted).
    on_demand: bool,
    /// Its footprint when it was last resident, kept across evictions: the next load's estimate.
    measured: Option<u64>,
    /// Held by whoever loads it on demand: concurrent requests for a cold model share one load.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Entry {
    fn new(config: ModelConfig, state: ModelState) -> Self {
        Self {
            config,
            state,
            generation: 0,
            on_demand: false,
            measured: None,
            gate: Arc::default(),
        }
    }
}

/// What the repository knows of one model.
#[derive(Clone)]
pub struct ModelView {
    pub config: ModelConfig,
    pub state: ModelState,
    /// Loads on its first request (a pool server's model).
    pub on_demand: bool,
    /// The bytes it was accounted for when last resident (kept while evicted).
    pub measured: Option<u64>,
}

impl ModelView {
    fn of(e: &Entry) -> Self {
        Self {
            config: e.config.clone(),
            state: e.state.clone(),
            on_demand: e.on_demand,
            measured: e.measured,
        }
    }
}

/// All models of this server.
pub struct Repository {
    entries: RwLock<HashMap<String, Entry>>,
    compute: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    fetcher: crate::fetch::Fetcher,
    /// A pool server's memory budget: resident models' accounted bytes stay within it.
    budget: Option<u64>,
    /// Loads (and the evictions that make room for them) run one at a time, on their own path:
    /// inference never waits for this.
    loads: Semaphore,
    epoch: Instant,
    /// Models evicted to make room, since start.
    evictions: std::sync::atomic::AtomicU64,
}

impl Repository {
    /// `fetcher` brings remote models (s3://, oci://, ...) into the node's cache.
    pub fn new(
        compute_threads: usize,
        metrics: Arc<Metrics>,
        fetcher: crate::fetch::Fetcher,
    ) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            compute: Arc::new(Semaphore::new(compute_threads.max(1))),
            metrics,
            fetcher,
            budget: None,
            evictions: std::sync::atomic::AtomicU64::new(0),
            loads: Semaphore::new(1),
            epoch: Instant::now(),
        }
    }

    /// Keeps resident models within `budget` bytes, evicting the least recently used.
    pub fn with_memory_budget(mut self, budget: Option<u64>) -> Self {
        self.budget = budget;
        // The budget is in /metrics from the start: a pool's executor plans on it before the
        // first load.
        self.metrics.residency(self.residency());
        self
    }

    pub fn memory_budget(&self) -> Option<u64> {
        self.budget
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Registers a model without loading it (state LOADING until [`Repository::load`] runs).
    pub fn register(&self, config: ModelConfig) {
        let mut entries = self.entries.write().expect("repository lock");
        entries.insert(config.name.clone(), Entry::new(config, ModelState::Loading));
    }

    pub fn view(&self, name: &str) -> Option<ModelView> {
        let entries = self.entries.read().expect("repository lock");
        entries.get(name).map(ModelView::of)
    }

    /// Every model, sorted by name.
    pub fn list(&self) -> Vec<ModelView> {
        let entries = self.entries.read().expect("repository lock");
        let mut views: Vec<ModelView> = entries.values().map(ModelView::of).collect();
        views.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        views
    }

    /// True when every registered (not unloaded) model is ready.
    pub fn all_ready(&self) -> bool {
        let entries = self.entries.read().expect("repository lock");
        // A model registered to load on demand is the pool's business, loading or evicted: a
        // pool server stays ready while its LRU works.
        entries
            .values()
            .all(|e| e.on_demand || e.state.servable() || matches!(e.state, ModelState::Unloaded))
    }

    /// Looks a model up for a request, checking the version and readiness.
    pub fn ready_model(&self, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>> {
        let entries = self.entries.read().expect("repository lock");
        let entry = entries.get(name).ok_or_else(|| Error::ModelNotFound {
            model: name.to_string(),
        })?;
        if let Some(v) = version
            && v != entry.config.version
        {
            return Err(Error::VersionNotFound {
                model: name.to_string(),
                version: v.to_string(),
            });
        }
        match &entry.state {
            ModelState::Ready(model) => Ok(model.clone()),
            other => Err(Error::NotReady {
                model: name.to_string(),
                reason: other.reason().unwrap_or("not ready").to_string(),
            }),
        }
    }

    /// Checks that `name` (and `version`, if given) exist, whatever their state.
    pub fn known(&self, name: &str, version: Option<&str>) -> Result<ModelView> {
        let view = self.view(name).ok_or_else(|| Error::ModelNotFound {
            model: name.to_string(),
        })?;
        if let Some(v) = version
            && v != view.config.version
        {
            return Err(Error::VersionNotFound {
                model: name.to_string(),
                version: v.to_string(),
            });
        }
        Ok(view)
    }

    /// Loads (or reloads) a registered model, or a new one when `config` is given, and warms it
    /// up. Returns when the model is READY or has failed; the failure is also kept as its state.
    pub async fn load(&self, name: &str, config: Option<ModelConfig>) -> Result<()> {
        let (config, generation) = {
            let mut entries = self.entries.write().expect("repository lock");
            let config = match (config, entries.get(name)) {
                (Some(c), _) => c,
                (None, Some(e)) => e.config.clone(),
                (None, None) => {
                    return Err(Error::ModelNotFound {
                        model: name.to_string(),
                    });
                }
            };
            let entry = entries
                .entry(name.to_string())
                .or_insert_with(|| Entry::new(config.clone(), ModelState::Loading));
            if entry.config.path != config.path {
                entry.measured = None;
            }
            entry.generation += 1;
            entry.config = config.clone();
            entry.state = ModelState::Loading;
            (config, entry.generation)
        };
        let started = Instant::now();
        let outcome = async {
            let mut local = config.clone();
            let resolved = self.fetcher.resolve(&config.path).await?;
            if let Some((cache_hit, bytes)) = resolved.fetched {
                self.metrics
                    .model_fetched(name, &config.version, cache_hit, bytes);
            }
            local.path = resolved.file;
            if local.tokenizer.is_none() {
                local.tokenizer = resolved.tokenizer;
            }
            let _load_path = self.loads.acquire().await.map_err(|e| e.to_string())?;
            let need = self.make_room(name, &local)?;
            let pool_server = self.budget.is_some();
            tokio::task::spawn_blocking(move || {
                let native = local.backend != BackendKind::Tract;
                // A backend's first load in a process also sets up what it keeps for good
                // (operator registries, kernel tables: ~30 KB for tract). On a pool server,
                // whose placement runs on these figures, that first model is built once
                // unmeasured first, so that it is not charged for them.
                static PRIMED: [std::sync::Once; 2] =
                    [std::sync::Once::new(), std::sync::Once::new()];
                if pool_server {
                    PRIMED[usize::from(native)]
                        .call_once(|| drop(build::build_and_warm_up(&local)));
                }
                let (built, footprint) =
                    crate::footprint::measure(native, || build::build_and_warm_up(&local));
                built.map(|(backend, warm_up)| (backend, warm_up, footprint, need))
            })
            .await
            .unwrap_or_else(|e| Err(format!("loader task failed: {e}")))
            .and_then(|loaded| self.admit(name, loaded))
        }
        .await;
        let load_time = started.elapsed();
        let (state, result) = match outcome {
            Ok((backend, warm_up_time, footprint, accounted)) => {
                let model =
                    self.activate(config.clone(), backend, warm_up_time, footprint, accounted);
                if let Some(footprint) = footprint {
                    self.metrics
                        .model_footprint(name, &config.version, footprint);
                }
                info!(model = %name, version = %config.version, load_ms = load_time.as_millis() as u64,
                      inline = model.inline, batching = config.batching(),
                      memory_bytes = footprint.map(|f| f.resident_bytes),
                      peak_memory_bytes = footprint.map(|f| f.peak_bytes), "model ready");
                (ModelState::Ready(model), Ok(()))
            }
            Err(reason) => {
                warn!(model = %name, version = %config.version, error = %reason, "model failed to load");
                (
                    ModelState::Unavailable(reason.clone()),
                    Err(Error::LoadFailed {
                        model: name.to_string(),
                        message: reason,
                    }),
                )
            }
        };
        self.metrics.model_loaded(
            name,
            &config.version,
            load_time,
            matches!(state, ModelState::Ready(_)),
        );
        let mut entries = self.entries.write().expect("repository lock");
        if let Some(entry) = entries.get_mut(name)
            && entry.generation == generation
        {
            if let ModelState::Ready(model) = &state {
                entry.measured = Some(model.accounted);
            }
            entry.state = state;
        }
        drop(entries);
        self.metrics.model_load_counted(name, &config.version);
        self.metrics.residency(self.residency());
        result
    }

    fn activate(
        &self,
        config: ModelConfig,
        backend: Arc<dyn Backend>,
        warm_up_time: Duration,
        footprint: Option<crate::footprint::Footprint>,
        accounted: u64,
    ) -> Arc<LoadedModel> {
        let metrics = self.metrics.for_model(&config.name, &config.version);
        let batcher = (config.batching() && backend.signature().batchable()).then(|| {
            batcher::spawn(
                backend.clone(),
                self.compute.clone(),
                config.max_batch_size,
                config.max_queue_delay,
                config.batch_window == BatchWindow::Adaptive,
                metrics.batch_size.clone(),
                config.max_queue,
            )
        });
        if config.batching() && batcher.is_none() {
            warn!(model = %config.name, "batching asked for, but the model has no dynamic leading dimension on every tensor; serving unbatched");
        }
        Arc::new(LoadedModel {
            admission: Arc::new(Semaphore::new(config.max_queue)),
            inline: batcher.is_none() && warm_up_time < INLINE_BUDGET,
            batcher,
            backend,
            metrics,
            config,
            footprint,
            accounted,
            last_used: AtomicU64::new(self.now()),
        })
    }

    /// Unloads a model: it stays listed as UNLOADED and answers 503 until loaded again.
    pub fn unload(&self, name: &str) -> Result<()> {
        let mut entries = self.entries.write().expect("repository lock");
        let entry = entries.get_mut(name).ok_or_else(|| Error::ModelNotFound {
            model: name.to_string(),
        })?;
        entry.generation += 1;
        entry.state = ModelState::Unloaded;
        entry.on_demand = false;
        self.metrics
            .ready
            .get_or_create(&crate::metrics::ModelLabels {
                model: name.into(),
                version: entry.config.version.clone(),
            })
            .set(0);
        info!(model = %name, "model unloaded");
        Ok(())
    }
}
