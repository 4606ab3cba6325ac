//! The plan over scenarios both modes test end to end, replayed with a simulated executor.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::ReplicaHealth;
use crate::reason::Reason;

const V1: &str = "iris-v1";
const V2: &str = "iris-v2";

fn isvc(extra: &str) -> InferenceService {
    crate::testing::isvc(&format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: iris, namespace: default}}\nspec:\n  predictor:\n    minReplicas: 2\n{extra}    model: {{format: onnx, uri: /m/iris.onnx}}\n"
    ))
}

fn replica(id: &str, revision: &str, health: ReplicaHealth) -> ReplicaView {
    ReplicaView {
        id: id.into(),
        revision: revision.into(),
        health,
        terminating: false,
    }
}

fn now() -> Timestamp {
    "2026-12-01T10:00:00.400Z".parse().unwrap()
}

fn observation<'a>(
    latest: &'a str,
    replicas: &'a [ReplicaView],
    scale: &'a BTreeMap<String, u32>,
) -> Observation<'a> {
    Observation {
        generation: 1,
        previous_status: None,
        latest,
        replicas,
        scale,
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
    }
}

/// Local mode's way: replicas the plan starts exist at once (starting), come up ready one
/// pass later, and stopped ones are gone; `scale` is what is not leaving. Returns the event
/// reasons of every pass until the plan settles.
fn replay(
    isvc: &mut InferenceService,
    latest: &str,
    replicas: &mut Vec<ReplicaView>,
) -> Vec<Reason> {
    let mut reasons = Vec::new();
    for pass in 0..20 {
        for r in replicas.iter_mut() {
            r.health = ReplicaHealth::Ready;
        }
        let mut scale = BTreeMap::new();
        for r in replicas.iter().filter(|r| !r.terminating) {
            *scale.entry(r.revision.clone()).or_insert(0) += 1;
        }
        let history = vec![V2.to_string(), V1.to_string()];
        let previous = isvc.status.clone();
        let mut observed = observation(latest, replicas, &scale);
        observed.previous_status = previous.as_ref();
        let plan = super::plan(isvc, &history, &observed, &Signals::default(), now());
        reasons.extend(plan.changes.iter().map(|c| c.event.reason));
        reasons.extend(plan.status_event.iter().map(|e| e.reason));
        isvc.status = Some(plan.status.clone());
        if plan.settled {
            return reasons;
        }
        replicas.retain(|r| !plan.stop.contains(&r.id));
        for i in 0..plan.start.get(latest).copied().unwrap_or(0) {
            replicas.push(replica(
                &format!("{latest}-{pass}-{i}"),
                latest,
                ReplicaHealth::Starting { for_seconds: 0 },
            ));
        }
    }
    panic!("no settled plan after 20 passes: {reasons:?}");
}

#[test]
fn a_first_rollout_creates_the_revision_and_turns_ready() {
    let mut service = isvc("");
    let mut replicas = Vec::new();
    let reasons = replay(&mut service, V1, &mut replicas);
    assert_eq!(reasons, vec![Reason::RevisionCreated, Reason::Serving]);
    let status = service.status.unwrap();
    assert_eq!(
        status.url.as_deref(),
        Some("http://127.0.0.1:8080/v2/models/iris")
    );
    assert_eq!(
        status.conditions[0].last_transition_time.as_deref(),
        Some("2026-12-01T10:00:00Z")
    );
    assert_eq!(replicas.len(), 2);
}

#[test]
fn a_rolling_update_scales_both_revisions_and_retires_the_old_one() {
    let mut service = isvc("");
    let mut replicas = Vec::new();
    replay(&mut service, V1, &mut replicas);
    let reasons = replay(&mut service, V2, &mut replicas);
    // maxSurge 25% of 2 = 1: one new; once it is ready the second new and one old out in the
    // same step; then the last old out.
    assert_eq!(
        reasons,
        vec![
            Reason::RevisionCreated,
            Reason::ScaledUp,
            Reason::ScaledDown,
            Reason::RevisionRetired,
            Reason::RevisionReady,
        ],
        "Ready stays True throughout; LatestRevisionReady turns True again at the end"
    );
    assert!(replicas.iter().all(|r| r.revision == V2));
    let status = service.status.unwrap();
    assert_eq!(status.revisions.len(), 1);
    assert_eq!(status.revisions[0].traffic_percent, 100);
}

#[test]
fn the_cluster_arithmetic_gives_the_same_counts() {
    // A Deployment set to 2 whose second pod is not created yet: the count is kept, the
    // rollout step starts nothing more, no event.
    let service = isvc("");
    let replicas = [replica("a", V1, ReplicaHealth::Ready)];
    let scale: BTreeMap<String, u32> = [(V1.to_string(), 2)].into();
    let plan = super::plan(
        &service,
        &[],
        &observation(V1, &replicas, &scale),
        &Signals::default(),
        now(),
    );
    assert_eq!(plan.scale, scale);
    assert!(plan.changes.is_empty());
    assert_eq!(
        plan.start.values().sum::<u32>(),
        1,
        "local mode would start the missing replica"
    );
    // An autoscaler set it to 5 (scaleMetric, maxReplicas 4): clamped to 4, a ScaledDown.
    let service =
        isvc("    scaleMetric: cpu\n    maxReplicas: 4\n    resources: {requests: {cpu: \"1\"}}\n");
    let scale: BTreeMap<String, u32> = [(V1.to_string(), 5)].into();
    let plan = super::plan(
        &service,
        &[],
        &observation(V1, &replicas, &scale),
        &Signals::default(),
        now(),
    );
    assert_eq!(plan.target.replicas, 4);
    assert_eq!(plan.scale[V1], 4);
    assert_eq!(plan.changes[0].event.reason, Reason::ScaledDown);
    // Within bounds, the autoscaler's choice stands in both modes.
    let scale: BTreeMap<String, u32> = [(V1.to_string(), 3)].into();
    let plan = super::plan(
        &service,
        &[],
        &observation(V1, &replicas, &scale),
        &Signals::default(),
        now(),
    );
    assert_eq!((plan.target.replicas, plan.scale[V1]), (3, 3));
}

#[test]
fn an_old_revision_is_retired_only_when_nothing_of_it_stays() {
    let service = isvc("");
    let replicas = [
        replica("a", V1, ReplicaHealth::Ready),
        replica("b", V2, ReplicaHealth::Ready),
        replica("c", V2, ReplicaHealth::Ready),
    ];
    // The Deployment of V1 says 0 already but a pod of it still runs: it is stopped by this
    // step (everything of V2 is ready), so the revision goes.
    let scale: BTreeMap<String, u32> = [(V1.to_string(), 0), (V2.to_string(), 2)].into();
    let plan = super::plan(
        &service,
        &[],
        &observation(V2, &replicas, &scale),
        &Signals::default(),
        now(),
    );
    assert_eq!(plan.stop, vec!["a".to_string()]);
    assert_eq!(plan.retired().collect::<Vec<_>>(), vec![V1]);
    assert_eq!(
        plan.weights,
        [(V2.to_string(), 2)].into(),
        "a stopped replica takes no traffic"
    );
    assert!(!plan.scale.contains_key(V1));
}

#[test]
fn a_runtime_problem_changes_nothing_and_is_named() {
    let service = isvc("");
    let replicas = [
        replica("a", V1, ReplicaHealth::Ready),
        replica("b", V1, ReplicaHealth::Ready),
    ];
    let scale: BTreeMap<String, u32> = [(V1.to_string(), 2)].into();
    let mut observed = observation(V2, &replicas, &scale);
    observed.runtime_problem = Some(RuntimeProblem {
        reason: Reason::RuntimeNotFound,
        message: "ServingRuntime \"triton\" not found".into(),
    });
    observed.entry = EntryPoint::Cluster;
    let plan = super::plan(&service, &[], &observed, &Signals::default(), now());
    assert_eq!(
        (
            plan.start.values().sum::<u32>(),
            plan.stop.len(),
            plan.changes.len()
        ),
        (0, 0, 0)
    );
    assert_eq!(plan.scale, scale);
    assert_eq!(plan.status.conditions[1].reason, "RuntimeNotFound");
    assert_eq!(
        plan.status_event.unwrap().type_,
        crate::reason::EventType::Warning
    );
    assert_eq!(
        plan.status.url.as_deref(),
        Some("http://iris.default.svc/v2/models/iris")
    );
}

#[test]
fn a_replica_loading_past_its_deadline_is_named_once() {
    let service = isvc("    startupTimeoutSeconds: 10\n");
    let scale: BTreeMap<String, u32> = [(V1.to_string(), 2)].into();
    let loading = |for_seconds| {
        [
            replica("a", V1, ReplicaHealth::Starting { for_seconds }),
            replica("b", V1, ReplicaHealth::Starting { for_seconds }),
        ]
    };
    let replicas = loading(5);
    let first = super::plan(
        &service,
        &[],
        &observation(V1, &replicas, &scale),
        &Signals::default(),
        now(),
    );
    assert_eq!(first.status.conditions[1].reason, "RolloutInProgress");
    assert!(first.status_event.is_none(), "progress is no event");
    let replicas = loading(11);
    let mut observed = observation(V1, &replicas, &scale);
    observed.previous_status = Some(&first.status);
    let late = super::plan(&service, &[], &observed, &Signals::default(), now());
    assert_eq!(late.status.conditions[1].reason, "ProgressDeadlineExceeded");
    let event = late.status_event.unwrap();
    assert_eq!(
        (event.reason, event.type_),
        (
            Reason::ProgressDeadlineExceeded,
            crate::reason::EventType::Warning
        )
    );
    let replicas = loading(12);
    let mut observed = observation(V1, &replicas, &scale);
    observed.previous_status = Some(&late.status);
    let again = super::plan(&service, &[], &observed, &Signals::default(), now());
    assert!(again.progress_only && again.status_event.is_none());
}

#[test]
fn entry_points_name_the_namespace() {
    let mut service = isvc("");
    service.metadata.namespace = Some("team-a".into());
    assert_eq!(
        EntryPoint::Local {
            router_port: 9090,
            tls: false
        }
        .url(&service),
        "http://iris.team-a.localhost:9090/v2/models/iris"
    );
    assert_eq!(timestamp(now()), "2026-12-01T10:00:00Z");
    let weights: BTreeMap<String, u32> = [(V1.to_string(), 1), (V2.to_string(), 2)].into();
    assert_eq!(
        percent(&weights),
        [(V1.to_string(), 33), (V2.to_string(), 66)].into()
    );
}

#[test]
fn a_broken_new_revision_never_replaces_the_serving_one() {
    let service = isvc("");
    let crashing = ReplicaHealth::CrashLoop {
        restarts: 3,
        last_exit: "exit code 3: model failed to load".into(),
    };
    let replicas = [
        replica("a", V1, ReplicaHealth::Ready),
        replica("b", V1, ReplicaHealth::Ready),
        replica("c", V2, crashing),
    ];
    // v1 serves, settled.
    let settled_scale: BTreeMap<String, u32> = [(V1.to_string(), 2)].into();
    let before = super::plan(
        &service,
        &[],
        &observation(V1, &replicas[..2], &settled_scale),
        &Signals::default(),
        now(),
    );
    assert!(before.settled);
    let scale: BTreeMap<String, u32> = [(V1.to_string(), 2), (V2.to_string(), 1)].into();
    let mut observed = observation(V2, &replicas, &scale);
    observed.previous_status = Some(&before.status);
    let plan = super::plan(&service, &[], &observed, &Signals::default(), now());
    assert!(
        plan.stop.is_empty(),
        "no ready old replica goes: {:?}",
        plan.stop
    );
    assert_eq!(
        (plan.start.values().sum::<u32>(), plan.changes.len()),
        (0, 0),
        "surge used up, nothing changes"
    );
    assert_eq!(
        plan.weights,
        [(V1.to_string(), 2)].into(),
        "only v1 takes traffic"
    );
    let latest = &plan.status.conditions[1];
    assert_eq!(
        (latest.status.as_str(), latest.reason.as_str()),
        ("False", "CrashLoopBackOff")
    );
    assert_eq!(plan.status.conditions[0].status, "True", "v1 still serves");
    let event = plan.status_event.unwrap();
    assert_eq!(
        (event.reason, event.type_),
        (Reason::CrashLoopBackOff, crate::reason::EventType::Warning)
    );
    assert!(!plan.settled);
}

#[test]
fn a_replica_that_vanished_is_replaced_and_traffic_avoids_the_leaving() {
    let service = isvc("");
    // Local mode after a kill -9 of a replica: its row is gone, one is left.
    let mut replicas = vec![replica("a", V1, ReplicaHealth::Ready)];
    let scale: BTreeMap<String, u32> = [(V1.to_string(), 1)].into();
    let plan = super::plan(
        &service,
        &[],
        &observation(V1, &replicas, &scale),
        &Signals::default(),
        now(),
    );
    assert_eq!(plan.start.values().sum::<u32>(), 1);
    assert_eq!(plan.changes[0].event.reason, Reason::ScaledUp);
    // A leaving replica is no backend and no weight.
    replicas.push(ReplicaView {
        terminating: true,
        ..replica("b", V1, ReplicaHealth::Ready)
    });
    assert_eq!(ready_weights(&replicas, &[]), [(V1.to_string(), 1)].into());
}

#[test]
fn during_a_canary_the_autoscaler_sizes_the_pool_as_a_whole_and_the_weight_splits_it() {
    // Stable v1 at 2 ready replicas; a canary of v2 at 25 %; the autoscaler asks for 8.
    let service = crate::testing::isvc(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: iris, namespace: default}\nspec:\n  predictor:\n    minReplicas: 2\n    maxReplicas: 8\n    scaleMetric: concurrency\n    scaleTarget: 2\n    model: {format: onnx, uri: /m/iris.onnx}\n  rollout: {strategy: canary, steps: [{weight: 25, pause: untilPromoted}]}\n",
    );
    let replicas = vec![
        replica("a", V1, ReplicaHealth::Ready),
        replica("b", V1, ReplicaHealth::Ready),
    ];
    let scale = BTreeMap::from([(V1.to_string(), 2)]);
    let observed = observation(V2, &replicas, &scale);
    let decision = crate::autoscale::Decision {
        desired: 8,
        value: Some(16.0),
        panic: true,
        scaled_to_zero: false,
        held: 0,
        message: "panic: 16.0 requests in flight".into(),
    };
    let signals = Signals {
        autoscale: Some(decision),
        ..Signals::default()
    };
    let history = vec![V2.to_string(), V1.to_string()];
    let plan = super::plan(&service, &history, &observed, &signals, now());
    // The whole pool is 8: the stable revision carries it all until the canary is ready, and
    // the canary's 25 % (2 replicas) start beside it.
    assert_eq!(plan.scale.get(V1), Some(&8), "{:?}", plan.scale);
    assert_eq!(plan.scale.get(V2), Some(&2), "{:?}", plan.scale);
    // The next look: 8 + 2 ready, the canary at 25 % of the traffic: the stable revision
    // gives up its share (6 of 8).
    let replicas: Vec<ReplicaView> = (0..8)
        .map(|i| replica(&format!("s{i}"), V1, ReplicaHealth::Ready))
        .chain((0..2).map(|i| replica(&format!("c{i}"), V2, ReplicaHealth::Ready)))
        .collect();
    let scale = BTreeMap::from([(V1.to_string(), 8), (V2.to_string(), 2)]);
    let mut second = observation(V2, &replicas, &scale);
    second.previous_status = Some(&plan.status);
    let next = super::plan(&service, &history, &second, &signals, now());
    assert_eq!(next.weights.get(V2), Some(&25), "{:?}", next.weights);
    assert_eq!(next.scale.get(V1), Some(&6), "{:?}", next.scale);
    assert_eq!(next.scale.get(V2), Some(&2), "{:?}", next.scale);
    let status = plan.status.autoscaling.expect("status.autoscaling");
    assert_eq!((status.desired_replicas, status.panic), (8, true));
    assert!(
        plan.autoscale_events
            .iter()
            .any(|e| e.reason == Reason::PanicMode && e.note.starts_with("panic on")),
        "{:?}",
        plan.autoscale_events
    );
}

#[test]
fn a_canary_step_starts_only_what_the_quota_has_room_for() {
    // Stable v1 at 8 ready replicas; a canary of v2 at 50 % wants replicas beside them.
    let service = crate::testing::isvc(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: iris, namespace: default}\nspec:\n  predictor:\n    minReplicas: 8\n    model: {format: onnx, uri: /m/iris.onnx}\n  rollout: {strategy: canary, steps: [{weight: 50, pause: untilPromoted}]}\n",
    );
    let replicas: Vec<ReplicaView> = (0..8)
        .map(|i| replica(&format!("s{i}"), V1, ReplicaHealth::Ready))
        .collect();
    let scale = BTreeMap::from([(V1.to_string(), 8)]);
    let history = vec![V2.to_string(), V1.to_string()];
    let unheld = super::plan(
        &service,
        &history,
        &observation(V2, &replicas, &scale),
        &Signals::default(),
        now(),
    );
    let wanted = unheld.start.get(V2).copied().unwrap_or(0);
    assert!(wanted >= 2, "{:?}", unheld.start);
    for room in [0, 1] {
        let mut observed = observation(V2, &replicas, &scale);
        observed.quota_room = Some(("pods-cap".to_string(), room));
        let plan = super::plan(&service, &history, &observed, &Signals::default(), now());
        let started: u32 = plan.start.values().sum();
        assert_eq!(started, room, "{:?}", plan.start);
        assert_eq!(plan.start.get(V2).copied().unwrap_or(0), room);
        // The canary's revision is created (its objects) even with no room: the event says
        // how much room there is.
        let event = plan.quota_event.as_ref().expect("the held step says so");
        assert_eq!(event.reason, crate::reason::Reason::QuotaHeld);
        assert!(
            event.note.contains(&format!(
                "held by ResourceQuota pods-cap: room for {room} more"
            )),
            "{event:?}"
        );
    }
}

#[test]
fn a_revision_a_quota_leaves_no_room_for_says_so_and_a_moving_rollout_does_not() {
    let service = isvc("");
    let scale = BTreeMap::new();
    let mut observed = observation(V1, &[], &scale);
    observed.quota_room = Some(("no-pods".to_string(), 0));
    // A first look with no room is not yet a failure: a cluster's quota status lags.
    let plan = super::plan(&service, &[], &observed, &Signals::default(), now());
    assert!(plan.stalling);
    assert_eq!(plan.start.get(V1).copied().unwrap_or(0), 0);
    assert_ne!(latest_condition(&plan).reason, "FailedCreate");
    let mut stalls = super::Stalls::default();
    stalls.record("iris", plan.stalling, now());
    let later = |seconds: i64| {
        now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
            .unwrap()
    };
    // Still no room a moment later: not yet.
    observed.stalled_since = stalls.since(&"iris");
    let plan = super::plan(&service, &[], &observed, &Signals::default(), later(2));
    assert_ne!(latest_condition(&plan).reason, "FailedCreate");
    stalls.record("iris", plan.stalling, later(2));
    assert_eq!(
        stalls.since(&"iris"),
        Some(now()),
        "the stall's start is kept"
    );
    // It held: the status says so.
    let plan = super::plan(
        &service,
        &[],
        &observed,
        &Signals::default(),
        later(super::STALL_CONFIRM_SECONDS),
    );
    let latest = latest_condition(&plan);
    assert_eq!(latest.reason, "FailedCreate", "{latest:?}");
    assert!(
        latest
            .message
            .contains("exceeded quota: no-pods: no room for another replica"),
        "{latest:?}"
    );
    // A rolling update waiting for its new replica to come up is held, not failed.
    let replicas = vec![
        replica("a", V1, ReplicaHealth::Ready),
        replica("b", V1, ReplicaHealth::Ready),
        replica("c", V2, ReplicaHealth::Starting { for_seconds: 1 }),
    ];
    let scale = BTreeMap::from([(V1.to_string(), 2), (V2.to_string(), 1)]);
    let mut observed = observation(V2, &replicas, &scale);
    observed.quota_room = Some(("pods".to_string(), 0));
    let history = vec![V2.to_string(), V1.to_string()];
    observed.stalled_since = Some(now());
    let plan = super::plan(
        &service,
        &history,
        &observed,
        &Signals::default(),
        later(60),
    );
    let latest = latest_condition(&plan);
    assert_ne!(latest.reason, "FailedCreate", "{latest:?}");
    assert!(!plan.stalling);
    // Room again: the stall is forgotten.
    stalls.record("iris", plan.stalling, later(60));
    assert_eq!(stalls.since(&"iris"), None);
}

fn latest_condition(plan: &super::ServicePlan) -> &ferry_api::Condition {
    plan.status
        .conditions
        .iter()
        .find(|c| c.type_ == "LatestRevisionReady")
        .expect("a LatestRevisionReady condition")
}
