//! The canary state machine through `service::plan`, replayed by a simulated executor: replicas
//! the plan starts turn ready a pass later, stopped ones go, the router's numbers follow the
//! weights, and the persisted status is fed back as a restarted executor would read it.

use std::collections::BTreeMap;

use ferry_api::{
    ANNOTATION_ABORT, ANNOTATION_PAUSE, ANNOTATION_PROMOTE, InferenceService, RolloutPhase,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use crate::analysis::{BUCKETS, RevisionMetrics, Window, bucket_of};
use crate::reason::Reason;
use crate::service::{self, EntryPoint, Observation, ServicePlan, Signals};
use crate::{ReplicaHealth, ReplicaView};

const V1: &str = "iris-v1";
const V2: &str = "iris-v2";

fn isvc(rollout: &str) -> InferenceService {
    crate::testing::isvc(&format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: iris, namespace: default}}\nspec:\n  predictor:\n    minReplicas: 4\n    model: {{format: onnx, uri: /m/iris.onnx}}\n  rollout:\n{rollout}"
    ))
}

const CANARY: &str = "    strategy: canary\n    steps: [{weight: 10, pause: 30s}, {weight: 50, pause: 30s}]\n    analysis: {interval: 10s, minRequests: 20, maxErrorPercent: 1, maxP99LatencyRatio: 2.0, failureLimit: 2}\n";

/// How the simulated replicas of the new revision answer.
#[derive(Clone, Copy)]
struct Behaviour {
    error_percent: u64,
    latency_ms: f64,
}

const HEALTHY: Behaviour = Behaviour {
    error_percent: 0,
    latency_ms: 2.0,
};

fn metrics(requests: u64, behaviour: Behaviour) -> RevisionMetrics {
    let errors = requests * behaviour.error_percent / 100;
    let mut latency = vec![0; BUCKETS + 1];
    latency[bucket_of(behaviour.latency_ms / 1e3)] = requests - errors;
    RevisionMetrics {
        requests,
        errors,
        unreachable: 0,
        latency,
    }
}

struct Sim {
    isvc: InferenceService,
    /// The revision the spec resolves to (an undo sets it back to V1).
    latest: &'static str,
    replicas: Vec<ReplicaView>,
    now: Timestamp,
    window: Window,
    canary: Behaviour,
    next_id: u32,
    history: Vec<(RolloutPhase, u32)>,
    reasons: Vec<Reason>,
}

impl Sim {
    fn new(rollout: &str, canary: Behaviour) -> Sim {
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let replicas = (0..4)
            .map(|i| ReplicaView {
                id: format!("v1-{i}"),
                revision: V1.into(),
                health: ReplicaHealth::Ready,
                terminating: false,
            })
            .collect();
        Sim {
            isvc: isvc(rollout),
            latest: V2,
            replicas,
            now,
            window: Window {
                started: now,
                revisions: BTreeMap::new(),
            },
            canary,
            next_id: 0,
            history: Vec::new(),
            reasons: Vec::new(),
        }
    }

    fn annotate(&mut self, key: &str, value: &str) {
        self.isvc
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
    }

    /// One reconcile, then one second of traffic (100 requests split by the plan's weights).
    fn pass(&mut self) -> ServicePlan {
        let mut scale = BTreeMap::new();
        for r in self.replicas.iter().filter(|r| !r.terminating) {
            *scale.entry(r.revision.clone()).or_insert(0) += 1;
        }
        let previous = self.isvc.status.clone();
        let observed = Observation {
            generation: 2,
            previous_status: previous.as_ref(),
            latest: self.latest,
            replicas: &self.replicas,
            scale: &scale,
            creation_failure: None,
            ingress: None,
            autoscaler: None,
            runtime_problem: None,
            entry: EntryPoint::Local {
                router_port: 8080,
                tls: false,
            },
            quota_room: None,
            stalled_since: None,
        };
        let signals = Signals {
            window: Some(self.window.clone()),
            ..Signals::default()
        };
        let history = [V2.to_string(), V1.to_string()];
        let plan = service::plan(&self.isvc, &history, &observed, &signals, self.now);
        check_invariants(&plan, &self.replicas, self.isvc.spec.rollout.as_ref());
        self.reasons
            .extend(plan.rollout_events.iter().map(|e| e.reason));
        self.isvc.status = Some(plan.status.clone());
        if let Some(r) = &plan.status.rollout {
            self.history.push((r.phase, r.weight));
        }
        if plan.analysed {
            self.window = Window {
                started: self.now,
                revisions: BTreeMap::new(),
            };
        }
        // Carry it out: started replicas come up ready at the next pass, stopped ones go.
        for r in &mut self.replicas {
            r.health = ReplicaHealth::Ready;
        }
        self.replicas.retain(|r| !plan.stop.contains(&r.id));
        for (revision, count) in &plan.start {
            for _ in 0..*count {
                self.next_id += 1;
                self.replicas.push(ReplicaView {
                    id: format!("{revision}-{}", self.next_id),
                    revision: revision.clone(),
                    health: ReplicaHealth::Starting { for_seconds: 0 },
                    terminating: false,
                });
            }
        }
        for (revision, weight) in &plan.weights {
            let behaviour = if revision == V2 { self.canary } else { HEALTHY };
            self.window
                .revisions
                .entry(revision.clone())
                .or_default()
                .merge(&metrics(u64::from(*weight), behaviour));
        }
        self.now += SignedDuration::from_secs(1);
        plan
    }

    fn run_until(&mut self, seconds: u32, done: impl Fn(&ServicePlan) -> bool) -> ServicePlan {
        for _ in 0..seconds {
            let plan = self.pass();
            if done(&plan) {
                return plan;
            }
        }
        panic!("not done after {seconds} s: {:?}", self.history.last());
    }
}

fn phase(plan: &ServicePlan) -> Option<RolloutPhase> {
    plan.status.rollout.as_ref().map(|r| r.phase)
}

/// What every plan must satisfy: weights sum to 100 over revisions that have a ready replica
/// that stays, and the fleet stays within its bound.
fn check_invariants(
    plan: &ServicePlan,
    replicas: &[ReplicaView],
    rollout: Option<&ferry_api::RolloutSpec>,
) {
    let total: u32 = service::percent(&plan.weights).values().sum();
    assert!(
        plan.weights.is_empty() || (97..=100).contains(&total),
        "weights {:?}",
        plan.weights
    );
    for revision in plan.weights.keys() {
        assert!(
            replicas
                .iter()
                .any(|r| &r.revision == revision && r.ready() && !plan.stop.contains(&r.id)),
            "{revision} gets traffic without a ready replica: {:?}",
            plan.weights
        );
    }
    let wanted: u32 = plan.scale.values().sum();
    // Blue-green runs both at full size; a canary the fleet plus maxSurge, and while traffic
    // goes back to the stable revision its replicas come first (one share more).
    let blue_green = rollout.is_some_and(|r| r.strategy() == ferry_api::RolloutStrategy::BlueGreen);
    let most = if blue_green { 2 * 4 } else { 4 + 2 };
    assert!(wanted <= most, "at most {most} replicas: {:?}", plan.scale);
}

#[test]
fn a_healthy_canary_moves_step_by_step_and_is_promoted() {
    let mut sim = Sim::new(CANARY, HEALTHY);
    let plan = sim.run_until(200, |p| phase(p) == Some(RolloutPhase::Succeeded));
    assert_eq!(plan.weights, BTreeMap::from([(V2.to_string(), 100)]));
    let mut weights: Vec<u32> = sim.history.iter().map(|(_, w)| *w).collect();
    weights.dedup();
    assert_eq!(
        weights,
        vec![0, 10, 25, 50, 75, 100],
        "25 % and 75 %: as far as the ready replicas carry on the way to the next step"
    );
    // 30 s at each step at least: 10 % from the first ready canary replica on.
    let at = |w: u32| sim.history.iter().filter(|(_, x)| *x == w).count();
    assert!(
        at(10) >= 30 && at(50) >= 30,
        "{} s at 10 %, {} s at 50 %",
        at(10),
        at(50)
    );
    assert_eq!(
        sim.reasons,
        vec![
            Reason::CanaryStarted,
            Reason::TrafficShifted,
            Reason::TrafficShifted,
            Reason::TrafficShifted,
            Reason::TrafficShifted,
            Reason::RolloutPromoted
        ]
    );
    // The stable revision is retired and the new one has the whole fleet.
    let plan = sim.run_until(5, |p| p.settled);
    assert_eq!(plan.scale, BTreeMap::from([(V2.to_string(), 4)]));
    // The finished rollout stays in the status until the next one.
    for _ in 0..3 {
        let plan = sim.pass();
        assert_eq!(phase(&plan), Some(RolloutPhase::Succeeded));
        assert_eq!(plan.status.rollout.as_ref().unwrap().weight, 100);
    }
}

#[test]
fn replicas_follow_the_weight_rounded_up() {
    let mut sim = Sim::new(CANARY, HEALTHY);
    let plan = sim.pass();
    assert_eq!(
        plan.scale,
        BTreeMap::from([(V1.to_string(), 4), (V2.to_string(), 1)])
    );
    assert_eq!(
        plan.weights,
        BTreeMap::from([(V1.to_string(), 100)]),
        "no traffic before ready"
    );
    sim.pass();
    let plan = sim.pass();
    assert_eq!(plan.weights.get(V2), Some(&10), "{:?}", plan.status.rollout);
    assert_eq!(plan.scale[V1], 4, "ceil(4 × 90 %) = 4");
    let plan = sim.run_until(100, |p| p.weights.get(V2) == Some(&50));
    assert_eq!(
        plan.scale,
        BTreeMap::from([(V1.to_string(), 2), (V2.to_string(), 2)])
    );
}

#[test]
fn failing_analyses_roll_back_within_the_failure_limit() {
    let mut sim = Sim::new(
        CANARY,
        Behaviour {
            error_percent: 50,
            latency_ms: 2.0,
        },
    );
    let plan = sim.run_until(60, |p| phase(p) == Some(RolloutPhase::Aborted));
    assert_eq!(plan.weights, BTreeMap::from([(V1.to_string(), 100)]));
    assert_eq!(
        plan.scale,
        BTreeMap::from([(V1.to_string(), 4), (V2.to_string(), 0)])
    );
    let seconds_with_traffic = sim.history.iter().filter(|(_, w)| *w > 0).count();
    assert!(
        seconds_with_traffic <= 2 * 10 + 1,
        "rolled back within failureLimit intervals: {seconds_with_traffic} s"
    );
    assert_eq!(
        sim.reasons
            .iter()
            .filter(|r| **r == Reason::AnalysisFailed)
            .count(),
        2
    );
    assert!(sim.reasons.contains(&Reason::RolledBackAutomatically));
    let latest = &plan.status.conditions[1];
    assert_eq!(
        (latest.status.as_str(), latest.reason.as_str()),
        ("False", "RolledBackAutomatically")
    );
    assert!(
        latest.message.contains("maxErrorPercent"),
        "{}",
        latest.message
    );
    // It stays rolled back, and the stable revision gets its replicas back.
    for _ in 0..5 {
        let plan = sim.pass();
        assert_eq!(phase(&plan), Some(RolloutPhase::Aborted));
        assert_eq!(plan.weights, BTreeMap::from([(V1.to_string(), 100)]));
    }
    assert_eq!(sim.replicas.iter().filter(|r| r.revision == V1).count(), 4);
    assert!(sim.replicas.iter().all(|r| r.revision == V1));
}

#[test]
fn a_slow_canary_fails_the_latency_ratio() {
    let mut sim = Sim::new(
        CANARY,
        Behaviour {
            error_percent: 0,
            latency_ms: 12.0,
        },
    );
    let plan = sim.run_until(60, |p| phase(p) == Some(RolloutPhase::Aborted));
    let analysis = plan.status.rollout.unwrap().last_analysis.unwrap();
    assert!(
        analysis.message.contains("maxP99LatencyRatio"),
        "{}",
        analysis.message
    );
    assert!(analysis.p99_latency_ms.unwrap() > 5.0 * analysis.stable_p99_latency_ms.unwrap() / 1.5);
}

#[test]
fn pause_holds_promote_skips_and_abort_returns_traffic() {
    let steps = "    strategy: canary\n    steps: [{weight: 25, pause: untilPromoted}, {weight: 50, pause: 1h}]\n";
    let mut sim = Sim::new(steps, HEALTHY);
    let plan = sim.run_until(10, |p| phase(p) == Some(RolloutPhase::WaitingForPromotion));
    assert_eq!(plan.weights[V2], 25);
    for _ in 0..20 {
        assert_eq!(sim.pass().weights[V2], 25, "untilPromoted holds");
    }
    sim.annotate(ANNOTATION_PROMOTE, &format!("{V2}@0"));
    let plan = sim.run_until(10, |p| p.weights.get(V2) == Some(&50));
    assert_eq!(phase(&plan), Some(RolloutPhase::Progressing));
    sim.annotate(ANNOTATION_PAUSE, V2);
    sim.annotate(ANNOTATION_PROMOTE, V2);
    for _ in 0..5 {
        let plan = sim.pass();
        assert_eq!(
            (phase(&plan), plan.weights[V2]),
            (Some(RolloutPhase::Paused), 50)
        );
    }
    sim.annotate(ANNOTATION_ABORT, V2);
    let plan = sim.pass();
    assert_eq!(phase(&plan), Some(RolloutPhase::Aborted));
    assert_eq!(plan.weights, BTreeMap::from([(V1.to_string(), 100)]));
    assert!(sim.reasons.contains(&Reason::RolloutPaused));
    assert!(sim.reasons.contains(&Reason::RolloutAborted));
}

#[test]
fn a_full_promote_goes_to_all_traffic_without_waiting() {
    let steps = "    strategy: canary\n    steps: [{weight: 10, pause: 1h}]\n";
    let mut sim = Sim::new(steps, HEALTHY);
    sim.run_until(10, |p| p.weights.get(V2) == Some(&10));
    sim.annotate(ANNOTATION_PROMOTE, V2);
    let plan = sim.run_until(10, |p| phase(p) == Some(RolloutPhase::Succeeded));
    assert_eq!(plan.weights, BTreeMap::from([(V2.to_string(), 100)]));
}

#[test]
fn a_restarted_executor_resumes_at_the_same_step() {
    let mut sim = Sim::new(CANARY, HEALTHY);
    sim.run_until(100, |p| p.weights.get(V2) == Some(&50));
    let persisted = sim.isvc.status.clone().unwrap().rollout.unwrap();
    // The executor restarts: its metric window begins again, the persisted state is read back.
    sim.window = Window {
        started: sim.now,
        revisions: BTreeMap::new(),
    };
    let plan = sim.pass();
    let resumed = plan.status.rollout.unwrap();
    assert_eq!(
        (resumed.step, resumed.weight, &resumed.step_started),
        (persisted.step, persisted.weight, &persisted.step_started),
        "same step, same start: the pause is not served twice"
    );
    assert!(plan.rollout_events.is_empty(), "{:?}", plan.rollout_events);
}

#[test]
fn a_new_revision_that_cannot_start_is_rolled_back_at_once() {
    let mut sim = Sim::new(CANARY, HEALTHY);
    sim.pass();
    for r in sim.replicas.iter_mut().filter(|r| r.revision == V2) {
        r.health = ReplicaHealth::CrashLoop {
            restarts: 3,
            last_exit: "exit status 1".into(),
        };
    }
    let mut scale = BTreeMap::new();
    for r in &sim.replicas {
        *scale.entry(r.revision.clone()).or_insert(0) += 1;
    }
    let previous = sim.isvc.status.clone();
    let observed = Observation {
        generation: 2,
        previous_status: previous.as_ref(),
        latest: V2,
        replicas: &sim.replicas,
        scale: &scale,
        creation_failure: None,
        ingress: None,
        autoscaler: None,
        runtime_problem: None,
        entry: EntryPoint::Local {
            router_port: 8080,
            tls: false,
        },
        quota_room: None,
        stalled_since: None,
    };
    let history = [V2.to_string(), V1.to_string()];
    let plan = service::plan(&sim.isvc, &history, &observed, &Signals::default(), sim.now);
    assert_eq!(phase(&plan), Some(RolloutPhase::Aborted));
    assert!(
        plan.status
            .rollout
            .unwrap()
            .message
            .contains("CrashLoopBackOff")
    );
}

proptest! {
    /// Whatever the replicas, the numbers and the controls do, the weights sum to 100 over
    /// ready revisions and the fleet stays within its surge (checked in every pass), and an
    /// abort returns all traffic to the stable revision.
    #[test]
    fn invariants_hold_under_any_history(
        events in proptest::collection::vec((0u8..8, 0u64..100, 1u32..30), 1..40)
    ) {
        let mut sim = Sim::new(CANARY, HEALTHY);
        for (what, errors, seconds) in events {
            match what {
                0 => sim.canary.error_percent = errors,
                1 => sim.annotate(ANNOTATION_PAUSE, V2),
                2 => { sim.isvc.metadata.annotations = None; }
                3 => sim.annotate(ANNOTATION_PROMOTE, V2),
                4 => {
                    // A replica of either revision is lost.
                    if let Some(i) = (!sim.replicas.is_empty()).then(|| errors as usize % sim.replicas.len()) {
                        sim.replicas.remove(i);
                    }
                }
                5 => sim.annotate(ANNOTATION_ABORT, V2),
                _ => {}
            }
            for _ in 0..seconds {
                let plan = sim.pass();
                if phase(&plan) == Some(RolloutPhase::Aborted) {
                    prop_assert!(plan.weights.keys().all(|r| r == V1), "{:?}", plan.weights);
                }
            }
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_decision(seconds in 1u32..120) {
        let mut sim = Sim::new(CANARY, HEALTHY);
        for _ in 0..seconds {
            sim.pass();
        }
        let spec = sim.isvc.spec.rollout.clone().unwrap();
        let previous = sim.isvc.status.clone().unwrap().rollout;
        let ready = BTreeMap::from([(V1.to_string(), 3), (V2.to_string(), 1)]);
        let inputs = crate::progressive::RolloutInputs {
            spec: &spec,
            total: 4,
            surge: 1,
            previous: previous.as_ref(),
            latest: V2,
            stable: V1,
            ready: &ready,
            window: Some(&sim.window),
            controls: Default::default(),
            canary_failure: None,
            now: sim.now,
        };
        prop_assert_eq!(crate::progressive::decide(&inputs), crate::progressive::decide(&inputs));
    }
}

/// KServe's manual canary on the same simulation: the predictor's `canaryTrafficPercent`.
fn manual(percent: Option<u32>, sim: &mut Sim) {
    sim.isvc.spec.rollout = None;
    sim.isvc.spec.predictor.canary_traffic_percent = percent;
}

#[test]
fn kserve_canary_traffic_percent_holds_its_share_and_removing_it_promotes() {
    let mut sim = Sim::new("    maxSurge: 1\n", HEALTHY);
    manual(Some(10), &mut sim);
    let plan = sim.run_until(10, |p| phase(p) == Some(RolloutPhase::WaitingForPromotion));
    assert_eq!(
        plan.weights,
        BTreeMap::from([(V1.to_string(), 90), (V2.to_string(), 10)])
    );
    for _ in 0..10 {
        assert_eq!(sim.pass().weights[V2], 10, "held until the field changes");
    }
    manual(None, &mut sim);
    let plan = sim.run_until(20, |p| phase(p) == Some(RolloutPhase::Succeeded));
    assert_eq!(plan.weights, BTreeMap::from([(V2.to_string(), 100)]));
}

#[test]
fn kserve_canary_traffic_percent_zero_keeps_all_traffic_on_the_previous_revision() {
    let mut sim = Sim::new("    maxSurge: 1\n", HEALTHY);
    manual(Some(30), &mut sim);
    sim.run_until(10, |p| p.weights.get(V2) == Some(&30));
    manual(Some(0), &mut sim);
    let plan = sim.run_until(10, |p| !p.weights.contains_key(V2));
    assert_eq!(plan.weights, BTreeMap::from([(V1.to_string(), 100)]));
    let plan = sim.pass();
    assert_eq!(plan.scale[V2], 1, "the 0 % canary stays warm");
    assert_eq!(plan.scale[V1], 4);
}

const BLUE_GREEN: &str =
    "    strategy: blueGreen\n    blueGreen: {autoPromoteSeconds: 5, scaleDownDelaySeconds: 20}\n";

#[test]
fn blue_green_switches_all_at_once_and_keeps_the_old_revision_warm() {
    let mut sim = Sim::new(BLUE_GREEN, HEALTHY);
    let plan = sim.pass();
    assert_eq!(
        plan.scale,
        BTreeMap::from([(V1.to_string(), 4), (V2.to_string(), 4)])
    );
    let plan = sim.run_until(30, |p| p.weights.contains_key(V2));
    assert_eq!(
        plan.weights,
        BTreeMap::from([(V2.to_string(), 100)]),
        "no split: one switch"
    );
    let mut weights: Vec<u32> = sim.history.iter().map(|(_, w)| *w).collect();
    weights.dedup();
    assert_eq!(weights, vec![0, 100]);
    let before_switch = sim.history.iter().filter(|(_, w)| *w == 0).count();
    assert!(
        before_switch >= 5,
        "autoPromoteSeconds after ready: {before_switch} s"
    );
    // The old revision stays at full size for the delay, then goes.
    for _ in 0..15 {
        assert_eq!(sim.pass().scale[V1], 4);
    }
    let plan = sim.run_until(10, |p| !p.scale.contains_key(V1));
    assert_eq!(plan.scale, BTreeMap::from([(V2.to_string(), 4)]));
    assert!(sim.reasons.contains(&Reason::BlueGreenStarted));
}

#[test]
fn blue_green_waits_for_promote_and_an_undo_in_the_window_switches_back_at_once() {
    let mut sim = Sim::new("    strategy: blueGreen\n", HEALTHY);
    sim.run_until(10, |p| phase(p) == Some(RolloutPhase::WaitingForPromotion));
    for _ in 0..10 {
        assert_eq!(sim.pass().weights, BTreeMap::from([(V1.to_string(), 100)]));
    }
    sim.annotate(ANNOTATION_PROMOTE, V2);
    sim.run_until(3, |p| p.weights.contains_key(V2));
    // `ferry rollout undo`: the spec is V1's again; V1 still runs at full size.
    sim.latest = V1;
    let plan = sim.pass();
    assert_eq!(
        plan.weights.keys().collect::<Vec<_>>(),
        vec![V1],
        "one decision switches back"
    );
    assert!(plan.stop.iter().all(|id| id.starts_with(V2)) && plan.stop.len() == 4);
}
