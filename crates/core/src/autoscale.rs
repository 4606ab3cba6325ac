//! Ferry's autoscaler: the replicas a service needs from what its router(s) see — requests in
//! flight, held (cold start) and arriving —, the same in both modes. Pure: the executor hands
//! in timestamped [`Load`] samples and `now`, and keeps one [`Autoscaler`] per service in
//! memory (after a restart it begins again, and never scales down before it has seen a
//! whole stable window).
//!
//! The rules (Knative's KPA taught them; the numbers are ours):
//! - the steady size is the stable window's mean of the metric ÷ the per-replica target,
//!   rounded up;
//! - **panic**: when the short (panic) window asks for `panicThresholdPercent` of the ready
//!   replicas or more, the size follows the short window at once and never goes down until a
//!   whole stable window passed without that;
//! - a size is at most `maxScaleUpRate` × the ready replicas (at least 1);
//! - a lower size is taken only once it was asked for all of `scaleDownDelaySeconds`;
//! - with `minReplicas: 0`, no request for `scaleToZeroGraceSeconds` → 0; a held request is
//!   demand, so a revision with requests waiting (a pod Pending for a GPU node) never goes.

use std::collections::{HashMap, VecDeque};

use ferry_api::{PredictorSpec, ScaleMetric};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What the router(s) count of one service's load at one instant, summed over the revisions
/// that serve the predictor (and over router replicas).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Load {
    /// Requests being forwarded to a replica now.
    pub in_flight: u64,
    /// Requests held while no replica is ready (the cold-start buffer).
    pub held: u64,
    /// Requests arrived since counting began (a counter: it only grows, but for a restart).
    pub arrivals: u64,
    /// GPU utilisation in percent summed over the replicas that report one (NVML), when any
    /// does: `gpuUtilization` scales on it; without it that metric is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_percent: Option<f64>,
}

impl Load {
    pub fn merge(&mut self, other: &Load) {
        self.in_flight += other.in_flight;
        self.held += other.held;
        self.arrivals += other.arrivals;
        self.gpu_percent = match (self.gpu_percent, other.gpu_percent) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// The autoscaler's settings, from the predictor.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub metric: ScaleMetric,
    /// Per replica, in the metric's unit.
    pub target: f64,
    pub min: u32,
    pub max: u32,
    /// Inference threads per replica (queueDepth counts what waits beyond them).
    pub slots: u32,
    pub stable_window: f64,
    pub panic_window: f64,
    /// Ratio (2.0 for 200 %).
    pub panic_threshold: f64,
    pub scale_down_delay: f64,
    pub scale_to_zero_grace: f64,
    pub max_scale_up_rate: f64,
}

impl Settings {
    /// The settings of a predictor Ferry's engine scales; `None` for any other.
    pub fn of(predictor: &PredictorSpec) -> Option<Settings> {
        if !predictor.ferry_autoscaled() {
            return None;
        }
        let metric = predictor.scale_metric?;
        let spec = predictor.autoscaling();
        let min = predictor.replicas();
        Some(Settings {
            metric,
            target: f64::from(predictor.scale_target().max(1)),
            min,
            max: predictor.max_replicas.unwrap_or(min).max(min).max(1),
            slots: predictor.compute_threads().unwrap_or(1),
            stable_window: f64::from(spec.stable_window_seconds()),
            panic_window: f64::from(spec.panic_window_seconds()),
            panic_threshold: f64::from(spec.panic_threshold_percent()) / 100.0,
            scale_down_delay: f64::from(spec.scale_down_delay_seconds()),
            scale_to_zero_grace: f64::from(spec.scale_to_zero_grace_seconds()),
            max_scale_up_rate: f64::from(spec.max_scale_up_rate()),
        })
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    /// The metric's value over the window that decided (the whole service), when there was
    /// one.
    pub value: Option<f64>,
    pub panic: bool,
    /// Zero because nothing came for the grace.
    pub scaled_to_zero: bool,
    /// Requests held now.
    pub held: u64,
    pub message: String,
}

/// One service's autoscaler state: the samples of the longest window and the recent sizes.
#[derive(Debug, Clone, Default)]
pub struct Autoscaler {
    samples: VecDeque<(f64, Load)>,
    /// Sizes asked for within the scale-down delay.
    proposals: VecDeque<(f64, u32)>,
    /// When the panic condition last held (panic lasts a stable window beyond it).
    panic_seen: Option<f64>,
    /// The size reached while panicking (never lower until panic ends).
    panic_size: u32,
    last_active: Option<f64>,
    first_seen: Option<f64>,
}

fn seconds(at: Timestamp) -> f64 {
    at.as_millisecond() as f64 / 1000.0
}

fn size_for(value: f64, target: f64) -> u32 {
    // A hair under the boundary stays on it (4.0000001 / 2 asks for 2, not 3).
    ((value / target) - 1e-9).ceil().max(0.0) as u32
}

impl Autoscaler {
    /// A new sample at `at`.
    pub fn observe(&mut self, at: Timestamp, load: Load) {
        let t = seconds(at);
        self.first_seen.get_or_insert(t);
        let arrived = self
            .samples
            .back()
            .is_some_and(|(_, last)| load.arrivals != last.arrivals);
        if load.in_flight > 0 || load.held > 0 || arrived || self.last_active.is_none() {
            self.last_active = Some(t);
        }
        self.samples.push_back((t, load));
    }

    /// The metric over the samples since `since`, with the ready replicas `ready`.
    fn value(&self, settings: &Settings, since: f64, ready: u32) -> Option<f64> {
        let window: Vec<&(f64, Load)> = self.samples.iter().filter(|(t, _)| *t >= since).collect();
        let (first, last) = (window.first()?, window.last()?);
        let mean = |f: &dyn Fn(&Load) -> f64| {
            window.iter().map(|(_, l)| f(l)).sum::<f64>() / window.len() as f64
        };
        match settings.metric {
            ScaleMetric::Concurrency => Some(mean(&|l| (l.in_flight + l.held) as f64)),
            ScaleMetric::QueueDepth => {
                let slots = u64::from(ready * settings.slots);
                Some(mean(&|l| {
                    (l.held + l.in_flight.saturating_sub(slots)) as f64
                }))
            }
            ScaleMetric::Rps => {
                let span = last.0 - first.0;
                if span <= 0.0 {
                    return None;
                }
                // A counter that went down restarted: what it says now all came in the window.
                let arrived = if last.1.arrivals >= first.1.arrivals {
                    last.1.arrivals - first.1.arrivals
                } else {
                    last.1.arrivals
                };
                Some(arrived as f64 / span)
            }
            // The replicas' utilisation summed: ready × mean ÷ target per replica, as an HPA
            // sizes on utilisation; unavailable while no replica reports one.
            ScaleMetric::GpuUtilization => {
                let reported: Vec<f64> = window.iter().filter_map(|(_, l)| l.gpu_percent).collect();
                (!reported.is_empty()).then(|| reported.iter().sum::<f64>() / reported.len() as f64)
            }
            // Not the router's: an HPA scales on them.
            ScaleMetric::Cpu | ScaleMetric::Memory => None,
        }
    }

    /// The size now: `ready` replicas of the predictor are ready, `current` is what it is set
    /// to (the last decision).
    pub fn decide(
        &mut self,
        settings: &Settings,
        ready: u32,
        current: u32,
        now: Timestamp,
    ) -> Decision {
        let t = seconds(now);
        let keep = settings.stable_window.max(settings.panic_window) + 1.0;
        while self.samples.len() > 2 && self.samples.front().is_some_and(|(s, _)| *s < t - keep) {
            self.samples.pop_front();
        }
        let held = self.samples.back().map_or(0, |(_, l)| l.held);
        let demand = self.samples.back().map_or(0, |(_, l)| l.in_flight + l.held);
        let stable = self.value(settings, t - settings.stable_window, ready);
        let short = self.value(settings, t - settings.panic_window, ready);
        let (Some(stable), Some(short)) = (stable, short) else {
            return Decision {
                desired: current.clamp(settings.min, settings.max),
                value: None,
                panic: false,
                scaled_to_zero: false,
                held,
                message: if settings.metric == ScaleMetric::GpuUtilization {
                    "gpuUtilization is unavailable (no replica reports an NVML GPU): holding the current size".into()
                } else {
                    "no numbers from the router yet: holding the current size".into()
                },
            };
        };
        let steady = size_for(stable, settings.target);
        let burst = size_for(short, settings.target);

        // Panic: the short window asks for threshold × the ready replicas.
        if ready > 0 && f64::from(burst) >= settings.panic_threshold * f64::from(ready) {
            self.panic_seen = Some(t);
        }
        let panic = self
            .panic_seen
            .is_some_and(|seen| t - seen < settings.stable_window);
        if !panic {
            self.panic_seen = None;
            self.panic_size = 0;
        }
        let (mut desired, value) = if panic {
            let size = burst.max(steady).max(self.panic_size).max(current);
            self.panic_size = size;
            (size, short)
        } else {
            (steady, stable)
        };
        // Demand now (a held request, one in flight) needs one replica at least.
        if demand > 0 {
            desired = desired.max(1);
        }
        let ceiling = (f64::from(ready.max(1)) * settings.max_scale_up_rate).floor() as u32;
        desired = desired.min(ceiling.max(current));

        // Lower only once asked for all of the delay; and not before a whole window was seen.
        self.proposals.push_back((t, desired));
        while self
            .proposals
            .front()
            .is_some_and(|(s, _)| *s < t - settings.scale_down_delay)
        {
            self.proposals.pop_front();
        }
        if desired < current {
            let recent = self
                .proposals
                .iter()
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(desired);
            desired = recent.min(current);
        }
        let seen_for = self.first_seen.map_or(0.0, |f| t - f);
        if seen_for < settings.stable_window {
            desired = desired.max(current);
        }

        let idle_for = self.last_active.map_or(0.0, |a| t - a);
        let idle = demand == 0 && idle_for >= settings.scale_to_zero_grace;
        let floor = if settings.min == 0 && !idle {
            1
        } else {
            settings.min
        };
        let scaled_to_zero = settings.min == 0 && idle;
        let desired = if scaled_to_zero {
            self.proposals.clear();
            0
        } else {
            desired.clamp(floor, settings.max)
        };
        let unit = match settings.metric {
            ScaleMetric::Concurrency => "requests in flight",
            ScaleMetric::Rps => "requests/s",
            ScaleMetric::QueueDepth => "requests queued",
            ScaleMetric::GpuUtilization => "% GPU (summed over replicas)",
            _ => "",
        };
        let message = if scaled_to_zero {
            format!(
                "scaled to zero: no request for {:.0}s (grace {:.0}s)",
                idle_for, settings.scale_to_zero_grace
            )
        } else if held > 0 {
            format!("cold start: {held} requests held, {desired} replicas asked for")
        } else if panic {
            format!(
                "panic: {value:.1} {unit} over {:.0}s for a target of {} per replica → {desired} replicas",
                settings.panic_window, settings.target
            )
        } else {
            format!(
                "{value:.1} {unit} over {:.0}s for a target of {} per replica → {desired} replicas",
                settings.stable_window, settings.target
            )
        };
        Decision {
            desired,
            value: Some(value),
            panic,
            scaled_to_zero,
            held,
            message,
        }
    }
}

/// Local mode has no HPA and no KEDA: there Ferry's engine stands in for them on the router's
/// metrics (the same manifest scales in both modes). cpu and memory stay an HPA's, so do
/// nothing locally.
pub fn local_stand_in(isvc: &mut ferry_api::InferenceService) {
    let predictor = &mut isvc.spec.predictor;
    if predictor.scale_metric.is_some_and(|m| m.from_router())
        && predictor.autoscaling_engine() != ferry_api::AutoscalingEngine::Ferry
    {
        predictor
            .autoscaling
            .get_or_insert_with(Default::default)
            .engine = Some(ferry_api::AutoscalingEngine::Ferry);
    }
}

/// The executors' autoscalers, one per service key, kept in memory.
#[derive(Debug, Default)]
pub struct Autoscalers<K> {
    scalers: HashMap<K, Autoscaler>,
}

impl<K: std::hash::Hash + Eq + Clone> Autoscalers<K> {
    /// Observe `load` of `key`'s service and decide its size, when Ferry's engine scales
    /// `predictor`: `ready` replicas of it are ready, `current` is its size now.
    pub fn decide(
        &mut self,
        key: &K,
        predictor: &PredictorSpec,
        load: Load,
        ready: u32,
        current: u32,
        now: Timestamp,
    ) -> Option<Decision> {
        let Some(settings) = Settings::of(predictor) else {
            self.scalers.remove(key);
            return None;
        };
        let scaler = self.scalers.entry(key.clone()).or_default();
        scaler.observe(now, load);
        Some(scaler.decide(&settings, ready, current, now))
    }

    /// Forget the services not in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.scalers.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests;
