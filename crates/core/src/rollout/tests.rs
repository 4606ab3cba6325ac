//! Rollout decisions: worked examples, then a simulation under random readiness (proptest)
//! checking the surge and availability bounds at every step.

use proptest::prelude::*;

use super::*;
use crate::ReplicaHealth;

fn replica(id: &str, revision: &str, ready: bool) -> ReplicaView {
    ReplicaView {
        id: id.into(),
        revision: revision.into(),
        health: if ready {
            ReplicaHealth::Ready
        } else {
            ReplicaHealth::Starting { for_seconds: 1 }
        },
        terminating: false,
    }
}

fn target(replicas: u32, surge: u32, unavailable: u32) -> Target {
    Target {
        revision: "v2".into(),
        replicas,
        max_surge: surge,
        max_unavailable: unavailable,
    }
}

#[test]
fn fresh_service_starts_all_replicas() {
    assert_eq!(
        plan(&target(3, 1, 0), &[]),
        Step {
            start: 3,
            stop: vec![]
        }
    );
}

#[test]
fn surge_one_starts_one_new_and_keeps_old_until_it_is_ready() {
    let t = target(2, 1, 0);
    let old = [replica("a", "v1", true), replica("b", "v1", true)];
    assert_eq!(
        plan(&t, &old),
        Step {
            start: 1,
            stop: vec![]
        }
    );
    let mut with_new = old.to_vec();
    with_new.push(replica("c", "v2", false));
    assert!(plan(&t, &with_new).is_empty(), "wait for the new replica");
    with_new[2] = replica("c", "v2", true);
    assert_eq!(
        plan(&t, &with_new),
        Step {
            start: 1,
            stop: vec!["a".into()]
        }
    );
}

#[test]
fn broken_new_revision_never_removes_ready_old_replicas() {
    let t = target(2, 1, 0);
    let mut replicas = vec![replica("a", "v1", true), replica("b", "v1", true)];
    replicas.push(ReplicaView {
        health: ReplicaHealth::CrashLoop {
            restarts: 4,
            last_exit: "exit code 1".into(),
        },
        ..replica("c", "v2", false)
    });
    assert!(plan(&t, &replicas).is_empty());
    assert!(!complete(&t, &replicas));
}

#[test]
fn unready_old_replicas_go_first_when_unavailability_is_allowed() {
    let t = target(2, 0, 1);
    let replicas = [replica("a", "v1", true), replica("b", "v1", false)];
    assert_eq!(
        plan(&t, &replicas),
        Step {
            start: 1,
            stop: vec!["b".into()]
        }
    );
}

#[test]
fn scale_down_of_the_same_revision_stops_unready_first() {
    let t = target(1, 1, 0);
    let replicas = [replica("a", "v2", true), replica("b", "v2", false)];
    assert_eq!(
        plan(&t, &replicas),
        Step {
            start: 0,
            stop: vec!["b".into()]
        }
    );
}

#[test]
fn terminating_replicas_are_not_counted() {
    let t = target(1, 1, 0);
    let mut leaving = replica("a", "v1", true);
    leaving.terminating = true;
    let replicas = [leaving, replica("b", "v2", true)];
    assert!(plan(&t, &replicas).is_empty());
    assert!(complete(&t, &replicas));
}

#[test]
fn target_from_spec_resolves_percentages_like_a_deployment() {
    let text = r#"
apiVersion: ferry.dev/v1alpha1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    model: {format: onnx, uri: /m.onnx}
    minReplicas: 10
  rollout: {maxSurge: "25%", maxUnavailable: "25%"}
"#;
    let isvc = &ferry_api::parse_manifests(text, "default").unwrap()[0].isvc;
    let t = Target::from_spec("iris-1", &isvc.spec);
    assert_eq!((t.replicas, t.max_surge, t.max_unavailable), (10, 3, 2));
}

proptest! {
    /// Drive a rollout to completion with random readiness; at every step the surge bound and
    /// the availability bound hold, and the rollout always finishes.
    #[test]
    fn rollout_respects_bounds_and_finishes(
        replicas in 1u32..6,
        surge in 0u32..3,
        unavailable in 0u32..3,
        seed in proptest::collection::vec(any::<bool>(), 200),
    ) {
        let surge = if surge == 0 && unavailable == 0 { 1 } else { surge };
        let unavailable = unavailable.min(replicas);
        let t = target(replicas, surge, unavailable);
        let mut state: Vec<ReplicaView> =
            (0..replicas).map(|i| replica(&format!("old{i}"), "v1", true)).collect();
        let min_available = replicas - unavailable;
        let mut next_id = 0;
        let mut coin = seed.iter().cycle();
        for _ in 0..200 {
            let step = plan(&t, &state);
            state.retain(|r| !step.stop.contains(&r.id));
            for _ in 0..step.start {
                state.push(replica(&format!("new{next_id}"), "v2", false));
                next_id += 1;
            }
            prop_assert!(state.len() as u32 <= replicas + surge, "surge bound broken: {state:?}");
            let ready = state.iter().filter(|r| r.ready()).count() as u32;
            prop_assert!(ready >= min_available, "availability bound broken: {state:?}");
            // Some starting replicas become ready.
            for r in state.iter_mut() {
                if !r.ready() && *coin.next().unwrap() {
                    r.health = ReplicaHealth::Ready;
                }
            }
            if complete(&t, &state) {
                return Ok(());
            }
        }
        prop_assert!(false, "rollout did not finish: {state:?}");
    }

    /// A new revision that never becomes ready leaves every ready old replica in place when
    /// maxUnavailable is 0.
    #[test]
    fn stuck_rollout_keeps_all_old_replicas(replicas in 1u32..6, surge in 1u32..4) {
        let t = target(replicas, surge, 0);
        let mut state: Vec<ReplicaView> =
            (0..replicas).map(|i| replica(&format!("old{i}"), "v1", true)).collect();
        for round in 0..10 {
            let step = plan(&t, &state);
            prop_assert!(step.stop.is_empty(), "round {round} stopped {:?}", step.stop);
            for i in 0..step.start {
                state.push(replica(&format!("new{round}-{i}"), "v2", false));
            }
        }
        let old_ready = state.iter().filter(|r| r.revision == "v1" && r.ready()).count() as u32;
        prop_assert_eq!(old_ready, replicas);
    }
}
