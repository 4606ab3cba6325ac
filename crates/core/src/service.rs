//! The whole-service decision: one [`plan`] per service per reconcile, the same in both modes.
//!
//! An executor observes (replicas and their health, how many replicas each revision is set
//! to, what keeps a revision from being created), calls [`plan`], persists what it must and
//! carries the plan out: local mode starts and stops processes by the plan's `start` and
//! `stop`; the operator writes each revision's Deployment replica count from `scale` and
//! deletes what `retire` names. Both publish the plan's `weights` to the router, write its
//! status and record its events, so both speak one vocabulary ([`crate::reason::Reason`]).

use std::collections::BTreeMap;

use ferry_api::{InferenceService, InferenceServiceStatus};
use k8s_openapi::jiff::{Timestamp, Unit};
use serde::{Deserialize, Serialize};

use crate::ReplicaView;
use crate::experiment;
use crate::reason::{ConditionState, PlannedEvent};
use crate::rollout::{self, Target};
use crate::runtime::RuntimeProblem;
use crate::status::{self, StatusInputs};

/// Where clients reach a service: its `status.url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// Local mode's router on loopback: `default` by path, other namespaces by host; https
    /// when the router terminates TLS.
    Local { router_port: u16, tls: bool },
    /// In a cluster: the stable Service's DNS name.
    Cluster,
}

impl EntryPoint {
    /// The URL of `isvc`'s model behind this entry point.
    pub fn url(self, isvc: &InferenceService) -> String {
        let namespace = isvc.namespace_or_default();
        let name = isvc.metadata.name.clone().unwrap_or_default();
        let model = isvc.model_name();
        match self {
            EntryPoint::Local { router_port, tls } => {
                let scheme = if tls { "https" } else { "http" };
                if namespace == "default" {
                    format!("{scheme}://127.0.0.1:{router_port}/v2/models/{model}")
                } else {
                    format!(
                        "{scheme}://{name}.{namespace}.localhost:{router_port}/v2/models/{model}"
                    )
                }
            }
            EntryPoint::Cluster => format!("http://{name}.{namespace}.svc/v2/models/{model}"),
        }
    }
}

/// What the executor saw of one service.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The spec's generation the executor acts on (`metadata.generation` in a cluster).
    pub generation: i64,
    /// The status as last written.
    pub previous_status: Option<&'a InferenceServiceStatus>,
    /// The revision the spec resolves to now.
    pub latest: &'a str,
    /// Every replica of the service, leaving ones included.
    pub replicas: &'a [ReplicaView],
    /// The replicas each revision is set to now: a cluster's Deployment `spec.replicas`, local
    /// mode's replicas that are not leaving. A revision absent here has no objects (never
    /// created, or retired).
    pub scale: &'a BTreeMap<String, u32>,
    /// Why replicas of the latest revision cannot even be created (a ReplicaSet's
    /// `FailedCreate`: a ResourceQuota, an admission webhook).
    pub creation_failure: Option<String>,
    /// The IngressReady condition, when the spec asks for an external entry point.
    pub ingress: Option<ConditionState>,
    /// The AutoscalerReady condition, when an engine outside Ferry scales the predictor
    /// (`KEDAMissing` where the cluster has no KEDA).
    pub autoscaler: Option<ConditionState>,
    /// Why no server can run the latest revision: nothing changes until that is fixed.
    pub runtime_problem: Option<RuntimeProblem>,
    pub entry: EntryPoint,
    /// How many more replicas the namespace's ResourceQuotas leave room for, and the tightest
    /// quota's name (local mode from what its replicas take, a cluster from the quotas'
    /// status): a step's starts (surge, scale-up, canary) are held to it.
    pub quota_room: Option<(String, u32)>,
    /// Since when this executor's plans have seen the latest revision stalled by a quota
    /// ([`ServicePlan::stalling`], kept in [`Stalls`]): the status says so once it held a while.
    pub stalled_since: Option<Timestamp>,
}

/// What the router measured, for decisions beyond rolling updates: the numbers per revision
/// since the executor's last analysis window began (canary analysis reads them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    pub window: Option<crate::analysis::Window>,
    /// The router's totals per revision since it started counting, and the rewards per
    /// experiment variant: an experiment's figures.
    pub totals: crate::analysis::ServiceMetrics,
    pub rewards: crate::experiment::Rewards,
    /// The shadow's counters since the router started counting.
    pub shadow: crate::experiment::ShadowCounts,
    /// Ferry's autoscaler's decision on the router's load ([`autoscale_inputs`] says what it
    /// is asked with), when its engine scales the predictor.
    pub autoscale: Option<crate::autoscale::Decision>,
}

/// One revision's replica count changing (or its objects going), with the event it is worth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionChange {
    pub revision: String,
    /// Its count before; `None`: it had no objects yet.
    pub before: Option<u32>,
    /// Its count after (0 when retired).
    pub after: u32,
    /// The revision is retired: its objects go (its replicas are all leaving).
    pub retire: bool,
    pub event: PlannedEvent,
}

/// The decision for one service.
#[derive(Debug, Clone)]
pub struct ServicePlan {
    pub target: Target,
    /// Replicas per revision after this step: every revision that keeps its objects.
    pub scale: BTreeMap<String, u32>,
    /// Replicas to start per revision: the latest one's, and the stable one's that a rolled
    /// back canary gives back (local mode creates them; in a cluster the Deployment's count
    /// in `scale` covers them).
    pub start: BTreeMap<String, u32>,
    /// Replicas to drain (out of the route table first) and stop. Local mode stops exactly
    /// these; in a cluster a ReplicaSet picks which pods go, `scale` says how many.
    pub stop: Vec<String>,
    /// Count changes and retirements, each with its event: record an event when its change
    /// is carried out.
    pub changes: Vec<RevisionChange>,
    /// Whether a server runs the latest revision, so its objects can be rendered; when not,
    /// nothing of the service changes until that is fixed.
    pub render_latest: bool,
    /// Traffic weight per revision: the route table's input.
    pub weights: BTreeMap<String, u32>,
    /// The status to write, derived from this observation.
    pub status: InferenceServiceStatus,
    /// The event the status transition is worth: record it when the status is written.
    pub status_event: Option<PlannedEvent>,
    /// A generation not observed before: `SpecChanged`, naming its change cause (the
    /// cluster's audit trail; local mode records who changed what, with the diff, in the
    /// same transaction as the change).
    pub spec_event: Option<PlannedEvent>,
    /// Nothing changes in the status but progress (counts, messages): it may be written lazily.
    pub progress_only: bool,
    /// The rollout is complete and no other revision is left: check again only rarely.
    pub settled: bool,
    /// A canary's decisions (steps, analysis, rollback): record each when the status with
    /// `status.rollout` is written.
    pub rollout_events: Vec<PlannedEvent>,
    /// The autoscaler's decisions (panic on / off, scaled to zero, a cold start): record each
    /// when the status is written.
    pub autoscale_events: Vec<PlannedEvent>,
    /// A step held to the room the namespace's quotas leave (`QuotaHeld`, naming the quota):
    /// record it with the step's count changes.
    pub quota_event: Option<PlannedEvent>,
    /// An analysis was judged: the executor's next metric window starts now.
    pub analysed: bool,
    /// A quota leaves the latest revision no room and nothing is under way: record it in the
    /// executor's [`Stalls`] (the status says `FailedCreate` once it held a while).
    pub stalling: bool,
    /// The revision the router retries a request on when another revision failed it: the
    /// stable one while a canary with `retryOnStable` takes traffic.
    pub fallback: Option<String>,
    /// Revision → experiment variant, for the route table.
    pub variants: BTreeMap<String, String>,
    /// The shadow revision and the percent of live requests mirrored to it.
    pub shadow: Option<(String, u32)>,
    /// The experiment variants' (and the shadow's) revisions and the predictor each runs (cluster mode renders
    /// their objects from it, as it renders the latest revision's from the spec's).
    pub companions: BTreeMap<String, ferry_api::PredictorSpec>,
}

impl ServicePlan {
    /// The revisions to retire.
    pub fn retired(&self) -> impl Iterator<Item = &str> {
        self.changes
            .iter()
            .filter(|c| c.retire)
            .map(|c| c.revision.as_str())
    }
}

/// Plan `isvc`: `history` names its revisions newest first, `observed` is what the executor
/// saw, `now` stamps transitions.
pub fn plan(
    isvc: &InferenceService,
    history: &[String],
    all: &Observation<'_>,
    signals: &Signals,
    now: Timestamp,
) -> ServicePlan {
    let latest = all.latest;
    let predictor = &isvc.spec.predictor;
    let decision = signals
        .autoscale
        .as_ref()
        .filter(|_| predictor.ferry_autoscaled());
    let wanted = match decision {
        Some(decision) => decision.desired,
        None => rollout::desired_replicas(predictor, all.scale.get(latest).copied()),
    };
    // An experiment's variants run beside the predictor's revisions: the rollout plans the
    // predictor's (the control's) alone.
    let companions = if all.runtime_problem.is_none() {
        experiment::companions(isvc, wanted)
    } else {
        Vec::new()
    };
    let is_companion = |revision: &str| companions.iter().any(|c| c.revision == revision);
    let control_replicas: Vec<ReplicaView> = all
        .replicas
        .iter()
        .filter(|r| !is_companion(&r.revision))
        .cloned()
        .collect();
    let control_scale: BTreeMap<String, u32> = all
        .scale
        .iter()
        .filter(|(r, _)| !is_companion(r))
        .map(|(r, n)| (r.clone(), *n))
        .collect();
    let control = Observation {
        replicas: &control_replicas,
        scale: &control_scale,
        ..all.clone()
    };
    let observed = &control;
    let progressive = progressive_decision(isvc, history, observed, signals, wanted, now);
    let target = Target::with_replicas(
        latest,
        &isvc.spec,
        progressive
            .as_ref()
            .map_or(wanted, |d| d.replicas.get(latest).copied().unwrap_or(0)),
    );
    let mut quota_event = None;
    let (start, stop, scale, changes) = if observed.runtime_problem.is_some() {
        // Nothing of the new revision can run: what serves keeps serving, unchanged.
        (
            BTreeMap::new(),
            Vec::new(),
            observed.scale.clone(),
            Vec::new(),
        )
    } else if let Some(decision) = &progressive {
        let (mut start, stop, scale, changes) =
            desired::scale_to(latest, &decision.replicas, observed);
        let held = room::hold_starts(&mut start, latest, observed);
        quota_event = room::held_event(held, latest, &changes);
        (start, stop, scale, changes)
    } else {
        let mut step = rollout::plan(&target, observed.replicas);
        let held = room::hold_to_room(&mut step, observed);
        let (scale, changes) = scale_after(&target, observed, step.start, &step.stop);
        quota_event = room::held_event(held, &target.revision, &changes);
        let start = BTreeMap::from([(latest.to_string(), step.start)]);
        (start, step.stop, scale, changes)
    };
    let (mut start, mut stop, mut scale, mut changes) = (start, stop, scale, changes);
    if !companions.is_empty() {
        let companion_replicas: Vec<ReplicaView> = all
            .replicas
            .iter()
            .filter(|r| is_companion(&r.revision))
            .cloned()
            .collect();
        let companion_scale: BTreeMap<String, u32> = all
            .scale
            .iter()
            .filter(|(r, _)| is_companion(r))
            .map(|(r, n)| (r.clone(), *n))
            .collect();
        let desired: BTreeMap<String, u32> = companions
            .iter()
            .map(|c| (c.revision.clone(), c.replicas))
            .collect();
        let (more_start, more_stop, more_scale, more_changes) = desired::scale_to(
            "",
            &desired,
            &Observation {
                replicas: &companion_replicas,
                scale: &companion_scale,
                ..all.clone()
            },
        );
        start.extend(more_start);
        stop.extend(more_stop);
        scale.extend(more_scale);
        changes.extend(more_changes);
    }
    let ready = ready_weights(observed.replicas, &stop);
    let weights = match &progressive {
        // The rollout's weights, on revisions that have a ready replica to take them.
        Some(decision) => decision
            .weights
            .iter()
            .filter(|(revision, _)| ready.get(*revision).is_some_and(|n| *n > 0))
            .map(|(r, w)| (r.clone(), *w))
            .collect(),
        None => ready,
    };
    let (weights, variants) = if companions.is_empty() {
        (weights, BTreeMap::new())
    } else {
        let ready_all = ready_weights(all.replicas, &stop);
        let mut split = experiment::weights(&companions, &weights);
        split.retain(|revision, _| ready_all.get(revision).is_some_and(|n| *n > 0));
        let names = if isvc.spec.experiment.is_some() {
            experiment::variant_names(&companions, &split)
        } else {
            BTreeMap::new()
        };
        (split, names)
    };
    let traffic = percent(&weights);
    let mut order: Vec<String> = history.to_vec();
    if !order.iter().any(|r| r == latest) {
        order.insert(0, latest.to_string());
    }
    // A finished progressive rollout of the latest revision stays in the status until the next.
    let finished = observed
        .previous_status
        .and_then(|s| s.rollout.as_ref())
        .filter(|r| {
            progressive.is_none()
                && r.canary_revision == latest
                && r.phase == ferry_api::RolloutPhase::Succeeded
        });
    let (stalling, stalled) = room::stalled(observed, latest, target.replicas, &start, &stop, now);
    let inputs = StatusInputs {
        generation: observed.generation,
        target: &target,
        replicas: observed.replicas,
        traffic_percent: &traffic,
        startup_timeout_seconds: u64::from(isvc.spec.predictor.startup_timeout_seconds()),
        url: observed.entry.url(isvc),
        revision_order: &order,
        creation_failure: observed.creation_failure.clone().or(stalled),
        ingress: observed.ingress.clone(),
        autoscaler: observed.autoscaler.clone(),
        runtime_problem: observed.runtime_problem.clone(),
        rollout: progressive.as_ref().map(|d| &d.status).or(finished),
        wakes_on_request: predictor.ferry_autoscaled() && predictor.replicas() == 0,
    };
    let previous = observed.previous_status;
    let mut status = status::derive(&inputs, previous, &timestamp(now));
    if !companions.is_empty() {
        for companion in &companions {
            let mine = all
                .replicas
                .iter()
                .filter(|r| r.revision == companion.revision && !r.terminating);
            let (count, ready) = mine.fold((0, 0), |(n, k), r| (n + 1, k + u32::from(r.ready())));
            status.revisions.push(ferry_api::RevisionStatus {
                name: companion.revision.clone(),
                replicas: count,
                ready_replicas: ready,
                traffic_percent: traffic.get(&companion.revision).copied().unwrap_or(0),
            });
        }
        if isvc.spec.experiment.is_some() {
            status.experiment = Some(experiment::figures(
                &companions,
                &variants,
                &signals.totals,
                &signals.rewards,
            ));
        }
        if let Some((percent, _, revision)) = isvc.shadow() {
            status.shadow = Some(experiment::shadow_status(
                &revision,
                percent,
                &signals.shadow,
            ));
        }
    }
    let mut autoscale_events = Vec::new();
    if predictor.scale_metric.is_some() {
        let (ready, _) = autoscale_inputs(isvc, &control);
        let now_status = autoscaling_status(predictor, decision, wanted, ready);
        autoscale_events =
            autoscaling_events(previous.and_then(|s| s.autoscaling.as_ref()), &now_status);
        if let Some(decision) = decision {
            for change in changes
                .iter_mut()
                .filter(|c| c.revision == latest && !c.retire)
            {
                change.event.note =
                    format!("{} (autoscaler: {})", change.event.note, decision.message);
            }
        }
        status.autoscaling = Some(now_status);
    }
    let status_event = if previous == Some(&status) {
        None
    } else {
        status::transition_event(previous, &status)
    };
    let progress_only = status::progress_only(previous, &status);
    let spec_event = status::spec_changed_event(isvc, previous);
    let settled = rollout::complete(&target, observed.replicas)
        && scale.keys().all(|revision| revision == latest);
    let fallback = progressive
        .as_ref()
        .and_then(|d| fallback_revision(isvc, &d.status));
    let companions = isvc
        .variants()
        .into_iter()
        .map(|(_, _, predictor, revision)| (revision, predictor))
        .chain(
            isvc.shadow()
                .map(|(_, predictor, revision)| (revision, predictor)),
        )
        .filter(|(revision, _)| scale.contains_key(revision))
        .collect();
    let shadow = isvc
        .shadow()
        .filter(|(_, _, revision)| scale.contains_key(revision))
        .map(|(percent, _, revision)| (revision, percent));
    let (rollout_events, analysed) = progressive
        .map(|d| (d.events, d.analysed))
        .unwrap_or_default();
    ServicePlan {
        target,
        scale,
        start,
        stop,
        changes,
        render_latest: observed.runtime_problem.is_none(),
        weights,
        status,
        status_event,
        spec_event,
        progress_only,
        settled,
        rollout_events,
        autoscale_events,
        quota_event,
        analysed,
        stalling,
        fallback,
        variants,
        shadow,
        companions,
    }
}

/// The revision the router retries a failed request on during `rollout`: its stable one,
/// while it is in progress and the spec keeps `retryOnStable` (the default). The plan and the
/// cluster router's feed (which reads the state from the status) both ask this.
pub fn fallback_revision(
    isvc: &InferenceService,
    rollout: &ferry_api::RolloutStatus,
) -> Option<String> {
    let retry = isvc
        .spec
        .rollout
        .as_ref()
        .is_none_or(|r| r.retry_on_stable());
    (retry && !rollout.phase.is_finished()).then(|| rollout.stable_revision.clone())
}

/// Whether the plan of `isvc` reads the router's numbers (a progressive rollout's analysis,
/// an experiment's or a shadow's figures): an executor collects them only then.
pub fn needs_router_numbers(isvc: &InferenceService) -> bool {
    crate::progressive::is_progressive(isvc.spec.rollout.as_ref())
        || isvc
            .spec
            .predictor
            .scale_metric
            .is_some_and(|m| m.from_router())
        || isvc.spec.predictor.canary_traffic_percent.is_some()
        || isvc.spec.experiment.is_some()
        || isvc.spec.shadow.is_some()
}

/// Traffic weights of a rolling update: each revision weighs its ready replicas that stay
/// (spreading traffic evenly over every ready replica, as a Service spreads over a
/// Deployment's pods); leaving, unready and `stop`ped replicas weigh nothing. The router's
/// cluster feed calls it too.
pub fn ready_weights(replicas: &[ReplicaView], stop: &[String]) -> BTreeMap<String, u32> {
    let mut weights = BTreeMap::new();
    for replica in replicas
        .iter()
        .filter(|r| r.ready() && !stop.contains(&r.id))
    {
        *weights.entry(replica.revision.clone()).or_insert(0) += 1;
    }
    weights
}

/// Weights as percentages of their sum, rounded down.
pub fn percent(weights: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
    let total: u32 = weights.values().sum();
    weights
        .iter()
        .map(|(revision, weight)| {
            (
                revision.clone(),
                (weight * 100).checked_div(total).unwrap_or(0),
            )
        })
        .collect()
}

/// `now` as status and events write it: RFC 3339, whole seconds.
pub fn timestamp(now: Timestamp) -> String {
    now.round(Unit::Second).unwrap_or(now).to_string()
}

mod autoscaling;
mod counts;
mod desired;
mod room;
pub use autoscaling::{autoscale, autoscale_inputs, predictor_load};
use autoscaling::{autoscaling_events, autoscaling_status};
use counts::scale_after;
use desired::progressive_decision;
pub use room::{STALL_CONFIRM_SECONDS, Stalls};

#[cfg(test)]
mod tests;
